//! Holds each request while it asks cluster `authz`; the first byte of the answer decides:
//! even lets the request through, odd answers 403. No root context of its own (the SDK's
//! `set_http_context` form).

use std::time::Duration;

use log::info;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Gate) });
}}

struct Gate;

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // An unknown cluster is a host error (BadArgument); this module treats it as fatal so
        // the host's failure policy can be seen at work.
        let token = self
            .dispatch_http_call(
                "authz",
                vec![(":method", "GET"), (":path", "/decide"), (":authority", "authz.local")],
                None,
                vec![],
                Duration::from_millis(500),
            )
            .expect("dispatch to authz");
        info!("asked authz, token {token}");
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-auth", Some("checked"));
        Action::Continue
    }
}

impl Context for Gate {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        match body.first() {
            Some(b) if b % 2 == 0 => {
                info!("allowed");
                self.resume_http_request();
            }
            _ => {
                info!("denied");
                self.send_http_response(403, vec![("x-auth", "denied")], Some(b"denied\n"));
            }
        }
    }
}
