//! Buffers the response body until end of stream; a body that mentions "secret" is replaced.

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

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Redactor))
    }
}

struct Redactor;

impl Context for Redactor {}

impl HttpContext for Redactor {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // The body may change length, and response headers cannot be changed after this
        // callback returns Continue, so drop content-length now.
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Keep buffering: the host calls again with the whole body so far.
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        if body.windows(6).any(|w| w == b"secret") {
            let text = format!("[redacted {size} bytes]\n");
            self.set_http_response_body(0, size, text.as_bytes());
        }
        Action::Continue
    }
}
