//! Logs every request and response header; answers `GET /hello` with its own local reply.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HeaderLog { id }))
    }
}

struct HeaderLog {
    id: u32,
}

impl Context for HeaderLog {}

impl HttpContext for HeaderLog {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        for (k, v) in self.get_http_request_headers() {
            info!("[{}] request {k}={v}", self.id);
        }
        if self.get_http_request_header(":path").as_deref() == Some("/hello") {
            self.send_http_response(
                200,
                vec![("greeting", "hello"), ("x-answered-by", "headers-module")],
                Some(b"hello from the filter\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (k, v) in self.get_http_response_headers() {
            info!("[{}] response {k}={v}", self.id);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        info!("[{}] done", self.id);
    }
}
