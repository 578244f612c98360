//! host-sim probe module. Request header `x-probe: cmd[;cmd...]` selects what to do.
//! Root configuration (plugin config): `tick_ms=N` and/or `queue=NAME`, comma-separated.

use std::time::{Duration, UNIX_EPOCH};

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Default)]
struct ProbeRoot {
    queue: Option<u32>,
    ticks: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        info!("vm start");
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let cfg = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if cfg.contains("reject") {
            return false;
        }
        for item in cfg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(ms) = item.strip_prefix("tick_ms=") {
                let ms: u64 = ms.parse().unwrap_or(0);
                self.set_tick_period(Duration::from_millis(ms));
            } else if let Some(q) = item.strip_prefix("queue=") {
                self.queue = Some(self.register_shared_queue(q));
                info!("registered queue {q}");
            }
        }
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        // CAS increment of a shared counter.
        loop {
            let (cur, cas) = self.get_shared_data("ticks");
            let n: u64 = cur
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match self.set_shared_data("ticks", Some((n + 1).to_string().as_bytes()), cas) {
                Ok(()) => break,
                Err(Status::CasMismatch) => continue,
                Err(e) => panic!("set_shared_data: {e:?}"),
            }
        }
        info!("tick {}", self.ticks);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            let s = String::from_utf8_lossy(&item).into_owned();
            info!("dequeued {s}");
            self.set_shared_data("queue_last", Some(s.as_bytes()), None).unwrap();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            id: context_id,
            cmds: Vec::new(),
            call: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    id: u32,
    cmds: Vec<String>,
    call: Option<u32>,
}

impl Probe {
    fn has(&self, c: &str) -> bool {
        self.cmds.iter().any(|x| x == c)
    }

    fn arg(&self, prefix: &str) -> Option<String> {
        self.cmds
            .iter()
            .find_map(|x| x.strip_prefix(prefix).map(str::to_string))
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, token: u32, nh: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        info!(
            "call {token} answered: headers={nh} status={status} body={}",
            String::from_utf8_lossy(&body)
        );
        self.call = None;
        if nh == 0 {
            self.send_http_response(502, vec![], Some(b"callout failed"));
            return;
        }
        self.set_http_request_header("x-call-status", Some(&status));
        self.resume_http_request();
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, eos: bool) -> Action {
        self.cmds = self
            .get_http_request_header("x-probe")
            .unwrap_or_default()
            .split(';')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        info!("#{} request headers eos={eos} cmds={:?}", self.id, self.cmds);
        // A client must never choose the pod: strip the routing header.
        self.set_http_request_header("x-gateway-destination-endpoint", None);
        if let Some(eps) = self.arg("route:") {
            // The picker's output: an ordered fallback list of ip:port.
            self.set_http_request_header("x-gateway-destination-endpoint", Some(&eps));
        }
        if self.has("panic") {
            panic!("probe asked to panic");
        }
        if let Some(code) = self.arg("local:") {
            let code: u32 = code.parse().unwrap_or(500);
            self.send_http_response(code, vec![("x-local", "yes")], Some(b"local reply"));
            return Action::Pause;
        }
        if let Some(kv) = self.arg("shared_set:") {
            let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
            self.set_shared_data(k, Some(v.as_bytes()), None).unwrap();
        }
        if let Some(k) = self.arg("shared_get:") {
            let (v, cas) = self.get_shared_data(&k);
            let v = v.map(|b| String::from_utf8_lossy(&b).into_owned());
            info!("shared {k} = {v:?} cas={cas:?}");
            self.set_http_request_header("x-shared", v.as_deref());
        }
        if let Some(k) = self.arg("cas_stale:") {
            let (_, cas) = self.get_shared_data(&k);
            let r = self.set_shared_data(&k, Some(b"stale"), cas.map(|c| c.wrapping_add(1)));
            info!("stale cas set -> {r:?}");
        }
        if let Some(kv) = self.arg("enqueue:") {
            let (q, v) = kv.split_once('=').unwrap_or((&kv, ""));
            let vm_id = self
                .get_property(vec!["plugin_vm_id"])
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            match self.resolve_shared_queue(&vm_id, q) {
                Some(id) => {
                    let r = self.enqueue_shared_queue(id, Some(v.as_bytes()));
                    info!("enqueue {q} -> {r:?}");
                }
                None => info!("queue {q} not found"),
            }
        }
        if self.has("metrics") {
            let c = hostcalls::define_metric(MetricType::Counter, "probe_requests").unwrap();
            hostcalls::increment_metric(c, 1).unwrap();
            let h = hostcalls::define_metric(MetricType::Histogram, "probe_size").unwrap();
            hostcalls::record_metric(h, 42).unwrap();
            let g = hostcalls::define_metric(MetricType::Gauge, "probe_gauge").unwrap();
            hostcalls::increment_metric(g, -2).unwrap();
            info!("counter now {}", hostcalls::get_metric(c).unwrap());
        }
        if self.has("metric_zero") {
            let c = hostcalls::define_metric(MetricType::Counter, "probe_requests").unwrap();
            // Envoy rejects a counter delta <= 0 with BadArgument: the SDK panics.
            hostcalls::increment_metric(c, 0).unwrap();
        }
        if let Some(p) = self.arg("property:") {
            let path: Vec<&str> = p.split('.').collect();
            let v = self
                .get_property(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            info!("property {p} = {v:?}");
            self.set_http_request_header("x-property", v.as_deref());
        }
        if let Some(ep) = self.arg("filter_state:") {
            // SetEnvoyFilterStateArguments { path = 1; value = 2; span = 3 } (protobuf).
            let key = b"envoy.network.transport_socket.original_dst_address";
            let mut args = vec![0x0a, key.len() as u8];
            args.extend_from_slice(key);
            args.push(0x12);
            args.push(ep.len() as u8);
            args.extend_from_slice(ep.as_bytes());
            let r = self.call_foreign_function("set_envoy_filter_state", Some(&args));
            info!("set_envoy_filter_state -> {:?}", r.map(|_| ()));
        }
        if self.has("clear_route_cache") {
            let r = self.call_foreign_function("clear_route_cache", None);
            info!("clear_route_cache -> {:?}", r.map(|_| ()));
        }
        if self.has("ffi_unknown") {
            let r = self.call_foreign_function("no_such_function", None);
            info!("no_such_function -> {:?}", r.map(|_| ()));
        }
        if self.has("time") {
            let t = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default();
            self.set_http_request_header("x-time", Some(&t.as_nanos().to_string()));
        }
        if let Some(mib) = self.arg("grow:") {
            let mib: usize = mib.parse().unwrap_or(1);
            let v = vec![7u8; mib << 20];
            info!(
                "grew {} bytes, checksum {}",
                v.len(),
                v.iter().map(|b| *b as u64).sum::<u64>()
            );
        }
        if let Some(cluster) = self.arg("call:") {
            let r = self.dispatch_http_call(
                &cluster,
                vec![(":method", "GET"), (":path", "/check"), (":authority", "authz")],
                None,
                vec![],
                Duration::from_secs(1),
            );
            match r {
                Ok(t) => {
                    info!("dispatched call {t}");
                    self.call = Some(t);
                    return Action::Pause;
                }
                Err(e) => {
                    info!("dispatch failed: {e:?}");
                    self.send_http_response(500, vec![], Some(b"dispatch failed"));
                    return Action::Pause;
                }
            }
        }
        if self.has("pause_headers") || self.has("set_header_in_body") {
            if self.has("pause_headers") {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        info!("#{} request body size={size} eos={eos}", self.id);
        if self.has("body_panic") {
            panic!("panic in body");
        }
        if (self.has("buffer_body") || self.has("pause_headers")) && !eos {
            return Action::Pause;
        }
        if self.has("set_header_in_body") || self.has("pause_headers") {
            // Needs the headers to still be held (allow_on_headers_stop_iteration).
            self.set_http_request_header("x-body-size", Some(&size.to_string()));
        }
        if self.has("upper_body") && eos {
            if let Some(b) = self.get_http_request_body(0, size) {
                let up = b.to_ascii_uppercase();
                self.set_http_request_body(0, size, &up);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let upstream = self
            .get_property(vec!["upstream", "address"])
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        info!("#{} response headers upstream={upstream:?}", self.id);
        if self.has("late_header") {
            // The request headers were held by Pause and continued later: in Envoy the map
            // pointer survives, so this returns Ok but changes nothing upstream.
            self.set_http_request_header("x-late", Some("1"));
        }
        if let Some(u) = upstream {
            self.set_http_response_header("x-served-by", Some(&u));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        info!("#{} response body size={size} eos={eos}", self.id);
        Action::Continue
    }

    fn on_log(&mut self) {
        info!("#{} log", self.id);
    }
}
