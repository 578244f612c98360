//! WASI preview1, the subset GCP documents: stdout/stderr, clocks, random. Other WASI imports
//! get an ENOSYS stub when the module is loaded (see [`WASI_DEFINED`]).

use wasmtime::Linker;

use crate::abi::{LogLevel, Status};

use super::guest::{read, write_bytes, write_u32, C};
use super::HostState;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
pub(crate) const ERRNO_NOSYS: i32 = 52;
/// WASI functions defined by [`define`]; others get an ENOSYS stub at load time.
pub(crate) const WASI_DEFINED: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "environ_sizes_get",
    "args_sizes_get",
    "environ_get",
    "args_get",
    "proc_exit",
    "sched_yield",
];

fn wasi_fd_write(c: &mut C<'_>, fd: i32, iovs: i32, n: i32, nwritten: i32) -> Result<i32, Status> {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut total = Vec::new();
    // Bounded: at most 1024 iovecs and 1 MiB per call, so a guest cannot make the host
    // buffer unbounded data.
    if !(0..=1024).contains(&n) {
        return Ok(ERRNO_INVAL);
    }
    for i in 0..n {
        let iov = read(c, iovs + i * 8, 8)?;
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        total.extend(read(c, ptr, len)?);
        if total.len() > 1 << 20 {
            return Ok(ERRNO_INVAL);
        }
    }
    write_u32(c, nwritten, total.len() as u32)?;
    let st = c.data_mut();
    let idx = (fd - 1) as usize;
    st.stdio_partial[idx].extend_from_slice(&total);
    while let Some(pos) = st.stdio_partial[idx].iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = st.stdio_partial[idx].drain(..=pos).collect();
        let msg = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        if st.opts.echo_logs {
            eprintln!("[wasm fd{fd}] {msg}");
        }
        let level = if fd == 1 { LogLevel::Info } else { LogLevel::Error };
        st.push_log(level, msg);
    }
    Ok(ERRNO_SUCCESS)
}

fn wasi_errno(r: Result<i32, Status>) -> i32 {
    match r {
        Ok(v) => v,
        Err(_) => ERRNO_FAULT,
    }
}

pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, nw: i32| -> i32 {
            wasi_errno(wasi_fd_write(&mut c, fd, iovs, n, nw))
        },
    )?;
    l.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _prec: i64, ret: i32| -> i32 {
            // Realtime (0) and monotonic (1) both read the host clock (virtual in tests).
            if !(0..=3).contains(&id) {
                return ERRNO_INVAL;
            }
            let now = c.data().now_ns();
            wasi_errno(write_bytes(&mut c, ret, &now.to_le_bytes()).map(|()| ERRNO_SUCCESS))
        },
    )?;
    l.func_wrap(WASI, "clock_res_get", |mut c: C<'_>, _id: i32, ret: i32| -> i32 {
        wasi_errno(write_bytes(&mut c, ret, &1u64.to_le_bytes()).map(|()| ERRNO_SUCCESS))
    })?;
    l.func_wrap(WASI, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> i32 {
        let size = c.data().memory.map(|m| m.data_size(&c)).unwrap_or(0);
        if (ptr as u32 as usize).saturating_add(len as u32 as usize) > size {
            return ERRNO_FAULT;
        }
        let mut buf = Vec::with_capacity(len.max(0) as usize);
        while buf.len() < len.max(0) as usize {
            let r = c.data_mut().next_random();
            buf.extend_from_slice(&r.to_le_bytes());
        }
        buf.truncate(len.max(0) as usize);
        wasi_errno(write_bytes(&mut c, ptr, &buf).map(|()| ERRNO_SUCCESS))
    })?;
    // No environment and no arguments (Envoy passes environment_variables only when
    // configured; GCP none).
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(WASI, name, |mut c: C<'_>, a: i32, b: i32| -> i32 {
            wasi_errno(
                write_u32(&mut c, a, 0)
                    .and_then(|()| write_u32(&mut c, b, 0))
                    .map(|()| ERRNO_SUCCESS),
            )
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(WASI, name, |_c: C<'_>, _a: i32, _b: i32| -> i32 { ERRNO_SUCCESS })?;
    }
    l.func_wrap(WASI, "proc_exit", |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!("guest called proc_exit({code})")))
    })?;
    l.func_wrap(WASI, "sched_yield", |_c: C<'_>| -> i32 { ERRNO_SUCCESS })?;
    Ok(())
}
