//! Request scanner over arbitrary bodies, for every API; a successful scan must return prompt
//! bytes that lie inside the body and a model within the length bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use picker_core::scan::{scan, Api, MAX_NAME_LEN};

fuzz_target!(|body: &[u8]| {
    for api in [Api::Completions, Api::ChatCompletions, Api::Responses, Api::Embeddings] {
        if let Ok(s) = scan(body, api) {
            assert!(!s.model.is_empty() && s.model.len() <= MAX_NAME_LEN);
            assert!(s.prompt.len() <= body.len());
            // Hashing what the scan returned must not panic either.
            let _ = picker_core::prefix::hash_prompt(&s.model, s.cache_salt.as_deref(), s.prompt, 64, 256);
        }
    }
});
