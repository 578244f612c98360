//! Loading a module ([`Plugin`]) and running one VM instance of it ([`Vm`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Engine, ExternType, Instance, Linker, Module, Store, TypedFunc, Val};

use crate::abi::{Action, Direction};
use crate::hostcalls::{define_imports, Callback, HostState, StreamIo, ERRNO_NOSYS};
use crate::options::HostOptions;
use crate::shared::VmGroup;
use crate::Error;

fn make_engine() -> Result<Engine, Error> {
    let mut cfg = wasmtime::Config::new();
    // HOST_SIM_OPT=none trades generated-code speed for compile time (debug test builds,
    // where cranelift itself runs unoptimised). Benchmarks keep the default (speed).
    let opt = match std::env::var("HOST_SIM_OPT").as_deref() {
        Ok("none") => wasmtime::OptLevel::None,
        _ => wasmtime::OptLevel::Speed,
    };
    cfg.cranelift_opt_level(opt);
    // HOST_SIM_PROFILE=perfmap writes /tmp/perf-<pid>.map so `perf record` / `perf report` can
    // name the module's functions (build it unstripped to get names). Off by default.
    if std::env::var("HOST_SIM_PROFILE").as_deref() == Ok("perfmap") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // HOST_SIM_FUEL=1 counts the wasm operators each callback executes (wasmtime fuel: about
    // one unit per operator): a deterministic measure of guest work for A/B comparisons on a
    // noisy machine. It slows the guest, so timing figures of such a run mean nothing.
    if fuel_metering() {
        cfg.consume_fuel(true);
    }
    Engine::new(&cfg).map_err(|e| Error::Load(format!("{e:#}")))
}

fn fuel_metering() -> bool {
    std::env::var_os("HOST_SIM_FUEL").is_some_and(|v| v == "1")
}

/// FNV-1a, for content-addressed cache file names (not security relevant).
fn fnv64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A compiled module plus its import set: compile once, instantiate per worker.
#[derive(Clone)]
pub struct Plugin {
    engine: Engine,
    module: Module,
    linker: Arc<Linker<HostState>>,
}

impl Plugin {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Plugin, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Plugin::from_bytes(&bytes)
    }

    /// [`Plugin::from_file_cached`] when `$HOST_SIM_CACHE` names a cache directory, else
    /// [`Plugin::from_file`]. Used by the CLI.
    pub fn from_file_env_cache(path: impl AsRef<Path>) -> Result<Plugin, Error> {
        match std::env::var_os("HOST_SIM_CACHE") {
            Some(dir) => Plugin::from_file_cached(path, Path::new(&dir)),
            None => Plugin::from_file(path),
        }
    }

    /// Accepts a binary module or (for tests) WAT text.
    pub fn from_bytes(bytes: &[u8]) -> Result<Plugin, Error> {
        let engine = make_engine()?;
        let module = Module::new(&engine, bytes).map_err(|e| Error::Load(format!("{e:#}")))?;
        Plugin::assemble(engine, module)
    }

    /// Like [`Plugin::from_file`], keeping the compiled code in `cache_dir` so that the next
    /// process skips cranelift. A cache file this wasmtime build or engine configuration
    /// cannot use is ignored and rewritten.
    pub fn from_file_cached(path: impl AsRef<Path>, cache_dir: &Path) -> Result<Plugin, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let opt = std::env::var("HOST_SIM_OPT").unwrap_or_default();
        let fuel = if fuel_metering() { "-fuel" } else { "" };
        let name = format!("{:016x}-{}-{opt}{fuel}", fnv64(&bytes), bytes.len());
        let file = cache_dir.join(format!("{name}.cwasm"));
        if file.exists() {
            let engine = make_engine()?;
            // SAFETY: the file was written by this function from `Engine::precompile_module`
            // for exactly these bytes (content-addressed name) into a directory the caller
            // owns; wasmtime still rejects artefacts of another version or engine config.
            let module = unsafe { Module::deserialize_file(&engine, &file) };
            if let Ok(module) = module {
                return Plugin::assemble(engine, module);
            }
        }
        let plugin = Plugin::from_bytes(&bytes)?;
        if let Ok(code) = plugin.engine.precompile_module(&bytes) {
            let _ = std::fs::create_dir_all(cache_dir);
            let tmp = cache_dir.join(format!("{name}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, code).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
        Ok(plugin)
    }

    fn assemble(engine: Engine, module: Module) -> Result<Plugin, Error> {
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker).map_err(|e| Error::Load(format!("{e:#}")))?;
        // WASI functions outside the documented subset answer ENOSYS instead of failing to
        // link (cpp-host registers stubs for capabilities it does not grant, docs/proxy-wasm.md#capabilities-and-wasi).
        for imp in module.imports() {
            if imp.module() == "wasi_snapshot_preview1" && !crate::hostcalls::WASI_DEFINED.contains(&imp.name()) {
                if let ExternType::Func(ft) = imp.ty() {
                    linker
                        .func_new(imp.module(), imp.name(), ft.clone(), |_c, _args, results| {
                            if let Some(r) = results.first_mut() {
                                *r = Val::I32(ERRNO_NOSYS);
                            }
                            Ok(())
                        })
                        .map_err(|e| Error::Load(format!("{e:#}")))?;
                }
            }
        }
        Ok(Plugin {
            engine,
            module,
            linker: Arc::new(linker),
        })
    }

    /// Names of the module's imports (`module.name`).
    pub fn imports(&self) -> Vec<String> {
        self.module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }
}

/// Cost of one guest invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub callback: &'static str,
    pub context_id: u32,
    /// Thread CPU time spent in the call. Includes part of the two CPU-clock reads around it
    /// (a syscall each; see [`cpu_clock_overhead_ns`]).
    pub cpu_ns: u64,
    /// Monotonic-clock time spent in the call, measured innermost (a vDSO read, tens of ns),
    /// so it carries almost none of the CPU clock's overhead. It also counts any time the
    /// thread was descheduled during the call, so it is never below the guest's real work.
    pub wall_ns: u64,
    /// Wasm operators executed (fuel used), when `HOST_SIM_FUEL=1`; else 0.
    pub fuel: u64,
}

/// A guest trap (panic with `panic=abort`, `unreachable`, out of memory, …).
#[derive(Debug, Clone, PartialEq)]
pub struct TrapInfo {
    pub callback: &'static str,
    pub message: String,
}

/// One VM instance: a `Store<HostState>` with the instantiated module and its root context.
pub struct Vm {
    pub store: Store<HostState>,
    instance: Instance,
    next_context: u32,
    pub invocations: Vec<Invocation>,
    pub trap: Option<TrapInfo>,
    /// Keep the per-invocation history (off for long-running serve/bench loops).
    pub record_invocations: bool,
    /// The headers and body callbacks of the request, then of the response, looked up once.
    http: [HttpCallbacks; 2],
}

type HttpCallback = TypedFunc<(i32, i32, i32), i32>;

/// The per-chunk callbacks of one direction (`proxy_on_{request,response}_{headers,body}`).
#[derive(Clone)]
struct HttpCallbacks {
    headers: Option<HttpCallback>,
    body: Option<HttpCallback>,
}

/// The module's export names of `dir`'s headers, body and trailers callbacks.
fn callback_names(dir: Direction) -> [&'static str; 3] {
    match dir {
        Direction::Request => [
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
        ],
        Direction::Response => [
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
        ],
    }
}

/// What one invocation's CPU figure includes of the clock reads themselves: the least of many
/// back-to-back read pairs (a syscall on Linux; ~0.6 µs each in a KVM guest).
pub fn cpu_clock_overhead_ns() -> u64 {
    least_read_pair_ns(thread_cpu_ns)
}

/// The same for the monotonic clock that measures [`Invocation::wall_ns`].
pub fn wall_clock_overhead_ns() -> u64 {
    let t0 = Instant::now();
    least_read_pair_ns(|| t0.elapsed().as_nanos() as u64)
}

/// The least difference between two back-to-back readings of `read` (ns) over 1000 tries.
fn least_read_pair_ns(read: impl Fn() -> u64) -> u64 {
    (0..1000)
        .map(|_| {
            let a = read();
            read().saturating_sub(a)
        })
        .min()
        .unwrap_or(0)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported on
    // Linux; the call writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl Vm {
    /// Instantiate, run `_initialize`, create the root context, then `on_vm_start` and
    /// `on_configure`. Either returning false rejects the configuration (Envoy NACKs, docs/proxy-wasm.md#plugin-configuration).
    pub fn start(plugin: &Plugin, opts: Arc<HostOptions>, group: VmGroup, worker: usize) -> Result<Vm, Error> {
        let mut store = Store::new(&plugin.engine, HostState::new(opts.clone(), group, worker));
        store.limiter(|s| &mut s.limiter);
        // An error here only means fuel metering is off (the default).
        let _ = store.set_fuel(u64::MAX);
        let instance = plugin
            .linker
            .instantiate(&mut store, &plugin.module)
            .map_err(|e| Error::Load(format!("instantiate: {e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Error::Load("module exports no memory".into()))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|_| Error::Load("module exports no proxy_on_memory_allocate".into()))?;
        if instance.get_func(&mut store, "proxy_abi_version_0_2_1").is_none() {
            return Err(Error::Load("module does not export proxy_abi_version_0_2_1".into()));
        }
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(Arc::new(alloc));
        let http = Direction::BOTH.map(|dir| {
            let [headers, body, _] = callback_names(dir);
            HttpCallbacks {
                headers: instance.get_typed_func(&mut store, headers).ok(),
                body: instance.get_typed_func(&mut store, body).ok(),
            }
        });
        let mut vm = Vm {
            store,
            instance,
            next_context: 1,
            invocations: Vec::new(),
            trap: None,
            record_invocations: true,
            http,
        };
        for init in ["_initialize", "_start"] {
            if let Ok(f) = vm.instance.get_typed_func::<(), ()>(&mut vm.store, init) {
                vm.store.data_mut().callback = Callback::Init;
                let r = f.call(&mut vm.store, ());
                vm.store.data_mut().callback = Callback::Idle;
                r.map_err(|e| Error::Start(format!("{init} trapped: {e:#}")))?;
                break;
            }
        }
        let root = vm.next_context;
        vm.next_context += 1;
        vm.store.data_mut().root_context = root;
        vm.call_unit2("proxy_on_context_create", Callback::ContextCreate, root, root as i32, 0)
            .map_err(|t| Error::Start(t.message))?;
        let vm_cfg_len = opts.vm_config.len() as i32;
        let ok = vm
            .call_i32_2("proxy_on_vm_start", Callback::VmStart, root, root as i32, vm_cfg_len)
            .map_err(|t| Error::Start(t.message))?;
        if ok == Some(0) {
            return Err(Error::Rejected("on_vm_start returned false".into()));
        }
        let cfg_len = opts.plugin_config.len() as i32;
        let ok = vm
            .call_i32_2("proxy_on_configure", Callback::Configure, root, root as i32, cfg_len)
            .map_err(|t| Error::Start(t.message))?;
        if ok == Some(0) {
            return Err(Error::Rejected("on_configure returned false".into()));
        }
        Ok(vm)
    }

    pub fn root_context(&self) -> u32 {
        self.store.data().root_context
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        match self.store.data().memory {
            Some(m) => m.data_size(&self.store),
            None => 0,
        }
    }

    /// Run `f` as one invocation of the guest export `name`: set the running callback and the
    /// effective context, measure CPU time, and turn a trap into a failed VM.
    fn invoke<R>(
        &mut self,
        name: &'static str,
        callback: Callback,
        context: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, TrapInfo> {
        if let Some(t) = &self.trap {
            return Err(t.clone());
        }
        {
            let st = self.store.data_mut();
            st.callback = callback;
            st.effective = context;
        }
        // The monotonic window is innermost: its reads are cheap (vDSO), while the thread-CPU
        // reads are syscalls whose cost lands partly inside whichever window encloses them.
        let fuel0 = self.store.get_fuel().ok();
        let c0 = thread_cpu_ns();
        let w0 = Instant::now();
        let r = f(&mut self.store);
        let wall_ns = w0.elapsed().as_nanos() as u64;
        let cpu_ns = thread_cpu_ns().saturating_sub(c0);
        let fuel = match (fuel0, self.store.get_fuel().ok()) {
            (Some(a), Some(b)) => a.saturating_sub(b),
            _ => 0,
        };
        if self.record_invocations {
            self.invocations.push(Invocation {
                callback: name,
                context_id: context,
                cpu_ns,
                wall_ns,
                fuel,
            });
        }
        self.store.data_mut().callback = Callback::Idle;
        r.map_err(|e| {
            let mut message = format!("{e:#}");
            if self.store.data().limiter.denied {
                message = format!(
                    "memory limit of {} bytes exceeded: {message}",
                    self.store.data().opts.memory_limit
                );
            }
            let t = TrapInfo {
                callback: name,
                message,
            };
            self.trap = Some(t.clone());
            t
        })
    }

    fn call_unit2(&mut self, name: &'static str, callback: Callback, ctx: u32, a: i32, b: i32) -> Result<(), TrapInfo> {
        let f = self
            .instance
            .get_typed_func::<(i32, i32), ()>(&mut self.store, name)
            .ok();
        match f {
            Some(f) => self.invoke(name, callback, ctx, |s| f.call(s, (a, b))),
            None => Ok(()),
        }
    }

    fn call_unit1(&mut self, name: &'static str, callback: Callback, ctx: u32) -> Result<(), TrapInfo> {
        let f = self.instance.get_typed_func::<i32, ()>(&mut self.store, name).ok();
        match f {
            Some(f) => self.invoke(name, callback, ctx, |s| f.call(s, ctx as i32)),
            None => Ok(()),
        }
    }

    fn call_i32_2(
        &mut self,
        name: &'static str,
        callback: Callback,
        ctx: u32,
        a: i32,
        b: i32,
    ) -> Result<Option<i32>, TrapInfo> {
        let f = self
            .instance
            .get_typed_func::<(i32, i32), i32>(&mut self.store, name)
            .ok();
        match f {
            Some(f) => self.invoke(name, callback, ctx, |s| f.call(s, (a, b))).map(Some),
            None => Ok(None),
        }
    }

    // === lifecycle ===

    /// Create an HTTP stream context (`proxy_on_context_create(id, root)`).
    pub fn create_http_context(&mut self) -> Result<u32, TrapInfo> {
        let id = self.next_context;
        self.next_context += 1;
        let root = self.root_context();
        let now = self.store.data().opts.clock.now_ns();
        self.store.data_mut().streams.insert(
            id,
            StreamIo {
                frozen_ns: now,
                ..StreamIo::default()
            },
        );
        self.call_unit2(
            "proxy_on_context_create",
            Callback::ContextCreate,
            id,
            id as i32,
            root as i32,
        )?;
        Ok(id)
    }

    /// `proxy_on_request_headers` / `proxy_on_response_headers`.
    pub fn on_headers(&mut self, dir: Direction, ctx: u32, n: usize, eos: bool) -> Result<Action, TrapInfo> {
        let f = self.http[dir as usize].headers.clone();
        self.http_cb(f, callback_names(dir)[0], Callback::headers(dir), ctx, n, eos)
    }

    /// `proxy_on_request_body` / `proxy_on_response_body`.
    pub fn on_body(&mut self, dir: Direction, ctx: u32, size: usize, eos: bool) -> Result<Action, TrapInfo> {
        let f = self.http[dir as usize].body.clone();
        self.http_cb(f, callback_names(dir)[1], Callback::body(dir), ctx, size, eos)
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers`.
    pub fn on_trailers(&mut self, dir: Direction, ctx: u32, n: usize) -> Result<Action, TrapInfo> {
        self.trailers_cb(callback_names(dir)[2], Callback::trailers(dir), ctx, n)
    }

    fn http_cb(
        &mut self,
        f: Option<TypedFunc<(i32, i32, i32), i32>>,
        name: &'static str,
        callback: Callback,
        ctx: u32,
        n: usize,
        eos: bool,
    ) -> Result<Action, TrapInfo> {
        match f {
            Some(f) => self
                .invoke(name, callback, ctx, |s| f.call(s, (ctx as i32, n as i32, eos as i32)))
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    fn trailers_cb(&mut self, name: &'static str, callback: Callback, ctx: u32, n: usize) -> Result<Action, TrapInfo> {
        Ok(self
            .call_i32_2(name, callback, ctx, ctx as i32, n as i32)?
            .map(Action::from_raw)
            .unwrap_or(Action::Continue))
    }

    /// `proxy_on_done`: true lets the host delete the context now.
    pub fn on_done(&mut self, ctx: u32) -> Result<bool, TrapInfo> {
        let f = self
            .instance
            .get_typed_func::<i32, i32>(&mut self.store, "proxy_on_done")
            .ok();
        match f {
            Some(f) => self
                .invoke("proxy_on_done", Callback::Done, ctx, |s| f.call(s, ctx as i32))
                .map(|v| v != 0),
            None => Ok(true),
        }
    }

    pub fn on_log(&mut self, ctx: u32) -> Result<(), TrapInfo> {
        self.call_unit1("proxy_on_log", Callback::Log, ctx)
    }

    /// `proxy_on_delete`, then the host forgets the stream.
    pub fn on_delete(&mut self, ctx: u32) -> Result<(), TrapInfo> {
        let r = self.call_unit1("proxy_on_delete", Callback::Delete, ctx);
        self.store.data_mut().streams.remove(&ctx);
        r
    }

    pub fn on_tick(&mut self) -> Result<(), TrapInfo> {
        let root = self.root_context();
        self.call_unit1("proxy_on_tick", Callback::Tick, root)
    }

    pub fn on_queue_ready(&mut self, ctx: u32, token: u32) -> Result<(), TrapInfo> {
        self.call_unit2(
            "proxy_on_queue_ready",
            Callback::QueueReady,
            ctx,
            ctx as i32,
            token as i32,
        )
    }

    /// Deliver an http-call response to the context that dispatched the call.
    pub fn on_http_call_response(
        &mut self,
        ctx: u32,
        token: u32,
        resp: crate::options::CallResponse,
    ) -> Result<(), TrapInfo> {
        let (nh, nb, nt) = if resp.fail {
            (0, 0, 0)
        } else {
            (
                resp.headers.len() as i32,
                resp.body.len() as i32,
                resp.trailers.len() as i32,
            )
        };
        self.store.data_mut().call_response = Some(resp);
        let f = self
            .instance
            .get_typed_func::<(i32, i32, i32, i32, i32), ()>(&mut self.store, "proxy_on_http_call_response")
            .ok();
        let r = match f {
            Some(f) => self.invoke("proxy_on_http_call_response", Callback::HttpCallResponse, ctx, |s| {
                f.call(s, (ctx as i32, token as i32, nh, nb, nt))
            }),
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        r
    }
}
