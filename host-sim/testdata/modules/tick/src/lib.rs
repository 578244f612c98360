//! A root context alone: logs at VM start, then every 5 s logs the time (WASI clock through
//! std) and one random byte (WASI random through getrandom).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::info;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Ticker { ticks: 0 }) });
}}

struct Ticker {
    ticks: u64,
}

impl Context for Ticker {}

impl RootContext for Ticker {
    fn on_vm_start(&mut self, _: usize) -> bool {
        info!("ticker started");
        self.set_tick_period(Duration::from_secs(5));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut b = [0u8; 1];
        let random = match getrandom::fill(&mut b) {
            Ok(()) => b[0].to_string(),
            Err(e) => format!("error {e}"),
        };
        info!("tick {} at {secs} random {random}", self.ticks);
    }
}
