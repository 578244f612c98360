//! Reads its plugin configuration (a string) once, and adds it to every response as
//! `x-config`. A configuration that is not UTF-8 is rejected (on_configure returns false).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { value: String::new() }) });
}}

struct Root {
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8(raw) {
            Ok(v) => {
                self.value = v;
                true
            }
            Err(_) => {
                log::error!("configuration is not UTF-8");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddConfig {
            value: self.value.clone(),
        }))
    }
}

struct AddConfig {
    value: String,
}

impl Context for AddConfig {}

impl HttpContext for AddConfig {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.add_http_response_header("x-config", &self.value);
        Action::Continue
    }
}
