use super::*;
// On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[track_caller]
fn ok(body: &str, api: Api) -> Scanned<'_> {
    match scan(body.as_bytes(), api) {
        Ok(s) => s,
        Err(e) => panic!("scan failed: {e} for {body}"),
    }
}

#[track_caller]
fn err(body: &[u8]) -> ScanError {
    scan(body, Api::Completions).expect_err("expected an error")
}

fn prompt_str<'a>(s: &Scanned<'a>) -> alloc::string::String {
    let [a, b] = s.prompt.parts();
    format!(
        "{}|{}",
        core::str::from_utf8(a).unwrap(),
        core::str::from_utf8(b).unwrap()
    )
}

// Request shapes from the OpenAI API reference (platform.openai.com/docs/api-reference:
// chat/create, completions/create, responses/create, embeddings/create) and vLLM's
// OpenAI-compatible server docs (docs.vllm.ai serving/openai_compatible_server: `cache_salt`).
const CHAT: &str = r#"{
  "model": "meta-llama/Llama-3.1-8B-Instruct",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"}
  ],
  "stream": true,
  "stream_options": {"include_usage": true},
  "max_tokens": 256,
  "temperature": 0.7
}"#;

#[test]
fn chat_completion() {
    let s = ok(CHAT, Api::ChatCompletions);
    assert_eq!(s.model, "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(s.stream, Some(true));
    assert_eq!(s.cache_salt, None);
    let [msgs, rest] = s.prompt.parts();
    assert!(msgs.starts_with(b"[") && msgs.ends_with(b"]"));
    assert!(core::str::from_utf8(msgs)
        .unwrap()
        .contains("You are a helpful assistant."));
    assert!(rest.is_empty());
}

#[test]
fn completion_prompt_string_and_array() {
    let s = ok(
        r#"{"prompt":"Say this is a test","model":"gpt-3.5-turbo-instruct","max_tokens":7}"#,
        Api::Completions,
    );
    assert_eq!(s.model, "gpt-3.5-turbo-instruct");
    assert_eq!(prompt_str(&s), "Say this is a test|");
    assert_eq!(s.stream, None);
    let s = ok(r#"{"model":"m","prompt":[1212, 318, 257, 1332]}"#, Api::Completions);
    assert_eq!(prompt_str(&s), "[1212, 318, 257, 1332]|");
}

#[test]
fn responses_instructions_then_input() {
    let s = ok(
        r#"{"input":"Tell me a three sentence bedtime story about a unicorn.","model":"gpt-4.1","instructions":"Talk like a pirate."}"#,
        Api::Responses,
    );
    assert_eq!(
        prompt_str(&s),
        "Talk like a pirate.|Tell me a three sentence bedtime story about a unicorn."
    );
}

#[test]
fn embeddings_input() {
    let s = ok(
        r#"{"input":["The food was delicious", "and the waiter..."],"model":"text-embedding-3-small","encoding_format":"float"}"#,
        Api::Embeddings,
    );
    assert_eq!(prompt_str(&s), r#"["The food was delicious", "and the waiter..."]|"#);
}

#[test]
fn model_escapes_are_decoded_and_last_key_wins() {
    let s = ok(
        r#"{"model":"a\/b\u00e9\ud83d\ude00\u0020c","prompt":"x"}"#,
        Api::Completions,
    );
    assert_eq!(s.model, "a/bé😀 c");
    let body = r#"{"model":"first", "model" : "second" }"#;
    let s = ok(body, Api::Completions);
    assert_eq!(s.model, "second");
    assert_eq!(
        &body[s.model_range.clone()],
        r#""second""#,
        "range of the value that counts"
    );
    // An escaped key is still the key.
    let s = ok(r#"{"mod\u0065l":"escaped-key"}"#, Api::Completions);
    assert_eq!(s.model, "escaped-key");
}

#[test]
fn cache_salt_and_stream_false() {
    let s = ok(
        r#"{"model":"m","cache_salt":"tenant-42","stream":false,"messages":[]}"#,
        Api::ChatCompletions,
    );
    assert_eq!(s.cache_salt.as_deref(), Some("tenant-42"));
    assert_eq!(s.stream, Some(false));
    let s = ok(r#"{"model":"m","stream":null}"#, Api::ChatCompletions);
    assert_eq!(s.stream, None);
}

#[test]
fn field_values_follow_rfc_9110() {
    assert!(is_field_value(b""));
    assert!(is_field_value(b"a"));
    assert!(is_field_value(b"a b\tc"));
    assert!(is_field_value(b"\x80\xff"));
    for bad in [
        &b" a"[..],
        b"a ",
        b"\ta",
        b"a\t",
        b"a\r\nb",
        b"a\nb",
        b"a\0",
        b"a\x7f",
        b"a\x01b",
    ] {
        assert!(!is_field_value(bad), "{bad:?}");
    }
    for c in 0u8..=255 {
        let ok = (0x21..=0x7e).contains(&c) || c >= 0x80;
        assert_eq!(
            is_field_value(&[b'a', c, b'a']),
            ok || c == b' ' || c == b'\t',
            "inner {c:#x}"
        );
        assert_eq!(is_field_value(&[c]), ok, "alone {c:#x}");
    }
}

#[test]
fn typed_errors() {
    assert_eq!(err(b""), ScanError::Empty);
    assert_eq!(err(b"  \n"), ScanError::Empty);
    assert_eq!(err(b"[1,2]"), ScanError::NotAnObject);
    assert_eq!(err(br#"{"prompt":"x"}"#), ScanError::MissingModel);
    assert_eq!(err(br#"{"model":42}"#), ScanError::ModelNotString);
    assert_eq!(err(br#"{"model":""}"#), ScanError::ModelNotString);
    assert_eq!(err(br#"{"model":"m","stream":"yes"}"#), ScanError::StreamNotBool);
    assert_eq!(err(br#"{"model":"m","cache_salt":1}"#), ScanError::SaltNotString);
    let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_NAME_LEN + 1));
    assert_eq!(err(long.as_bytes()), ScanError::NameTooLong);
    let at_limit = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_NAME_LEN));
    assert!(scan(at_limit.as_bytes(), Api::Completions).is_ok());
    // A model that cannot be a header value: JSON escapes for CR LF, NUL, DEL, ESC, and
    // whitespace at either end.
    for m in [
        r"m\r\nx-evil: 1",
        r"m\n",
        r"m\u0000",
        r"\u007fm",
        r"m\u001b",
        r" m",
        r"m\t",
        r"\tm",
    ] {
        let body = format!(r#"{{"model":"{m}"}}"#);
        assert_eq!(err(body.as_bytes()), ScanError::ModelNotFieldValue, "{m}");
    }
    // Inner spaces and tabs, and non-ASCII (obs-text), are valid field values.
    for (raw, m) in [
        ("my model", "my model"),
        (r"a\tb", "a\tb"),
        ("modèle-7b", "modèle-7b"),
        ("模型", "模型"),
    ] {
        let body = format!(r#"{{"model":"{raw}"}}"#);
        assert_eq!(scan(body.as_bytes(), Api::Completions).unwrap().model, m);
    }
    for bad in [
        &br#"{"model":"m""#[..],
        br#"{"model":"m",}"#,
        br#"{"model":"m"} x"#,
        br#"{"model":"m","a":[1,]}"#,
        br#"{"model":"m","a":01}"#,
        br#"{"model":"m","a":1.}"#,
        br#"{"model":"m","a":tru}"#,
        br#"{"model":"m","a":"\x"}"#,
        b"{\"model\":\"m\",\"a\":\"\x01\"}",
        b"{\"model\":\"m\",\"a\":\"\xff\"}",
        b"{\"model\":\"m\",\"a\":\"\xed\xa0\x80\"}", // UTF-8 encoded surrogate
        br#"{"model":"m","a":{"k" 1}}"#,
        br#"{"model":"m","a":{1:2}}"#,
        br#"{"model":"m" "a":1}"#,
    ] {
        assert!(
            matches!(err(bad), ScanError::Malformed { .. }),
            "{:?} -> {:?}",
            core::str::from_utf8(bad),
            err(bad)
        );
    }
}

#[test]
fn offsets_point_at_the_problem() {
    assert_eq!(
        err(br#"{"model":"m", "a": ?}"#),
        ScanError::Malformed {
            offset: 19,
            reason: "expected a JSON value"
        }
    );
}

#[test]
fn depth_limit_matches_serde_json() {
    for depth in [1usize, 100, 126, 127, 128, 129, 200] {
        let body = format!(r#"{{"model":"m","a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let ours = scan(body.as_bytes(), Api::Completions);
        let serde = serde_json::from_str::<serde_json::Value>(&body);
        assert_eq!(ours.is_ok(), serde.is_ok(), "depth {depth}: ours {ours:?}");
        if ours.is_err() {
            assert!(matches!(ours, Err(ScanError::TooDeep { .. })));
        }
    }
}

#[test]
fn api_from_path() {
    assert_eq!(Api::from_path("/v1/chat/completions"), Some(Api::ChatCompletions));
    assert_eq!(Api::from_path("/v1/completions?x=1"), Some(Api::Completions));
    assert_eq!(Api::from_path("/v1/responses/"), Some(Api::Responses));
    assert_eq!(Api::from_path("/v1/embeddings"), Some(Api::Embeddings));
    assert_eq!(Api::from_path("/v1/models"), None);
    assert_eq!(Api::from_path(""), None);
}

#[test]
fn long_prompt_with_every_string_feature() {
    // Exercise the word-at-a-time path across escapes and multi-byte characters at every
    // alignment.
    for pad in 0..9 {
        let content = format!("{}héllo \\\"wörld\\\" 日本語 😀 {}", "a".repeat(pad), "z".repeat(100));
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"m{pad}"}}"#);
        let s = ok(&body, Api::ChatCompletions);
        assert_eq!(s.model, format!("m{pad}"));
        assert!(core::str::from_utf8(s.prompt.parts()[0]).unwrap().contains("日本語"));
    }
}

// === properties ===

/// A JSON value generator biased towards what bodies contain.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        (-1e6f64..1e6).prop_map(|f| serde_json::json!(f)),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body_strategy() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(prop_oneof![
            any::<String>().prop_map(serde_json::Value::String),
            json_value()
        ]),
        prop::option::of(prop_oneof![
            any::<bool>().prop_map(serde_json::Value::Bool),
            json_value()
        ]),
        prop::option::of(json_value()),
        prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..5),
    )
        .prop_map(|(model, stream, prompt, extra)| {
            let mut m: serde_json::Map<String, serde_json::Value> = extra.into_iter().collect();
            if let Some(v) = model {
                m.insert("model".into(), v);
            }
            if let Some(v) = stream {
                m.insert("stream".into(), v);
            }
            if let Some(v) = prompt {
                m.insert("messages".into(), v);
            }
            serde_json::Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The word-at-a-time check agrees with the byte-by-byte definition on any bytes, long
    /// ones included (tabs and invalid bytes placed anywhere, words and remainders alike).
    #[test]
    fn field_value_check_matches_its_definition(
        bytes in prop::collection::vec(prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'\t')], 0..80),
    ) {
        let reference = bytes.iter().all(|&c| (0x21..=0x7e).contains(&c) || c >= 0x80 || c == b' ' || c == b'\t')
            && bytes.first().is_none_or(|&c| c != b' ' && c != b'\t')
            && bytes.last().is_none_or(|&c| c != b' ' && c != b'\t');
        prop_assert_eq!(is_field_value(&bytes), reference);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for api in [Api::Completions, Api::ChatCompletions, Api::Responses, Api::Embeddings] {
            let _ = scan(&bytes, api);
        }
    }

    #[test]
    fn never_panics_on_mutated_json(body in body_strategy(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&body).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = scan(&bytes, Api::ChatCompletions);
        bytes.truncate(i);
        let _ = scan(&bytes, Api::ChatCompletions);
    }

    /// On valid JSON, the scanner agrees with serde_json about model, stream and the prompt,
    /// whether compact or pretty-printed.
    #[test]
    fn agrees_with_serde_json(body in body_strategy(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { serde_json::to_string(&body).unwrap() };
        let ours = scan(text.as_bytes(), Api::ChatCompletions);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        match v.get("model") {
            None => prop_assert_eq!(ours.clone().err(), Some(ScanError::MissingModel)),
            Some(serde_json::Value::String(m)) if !m.is_empty() && m.len() <= MAX_NAME_LEN && !is_field_value(m.as_bytes()) => {
                prop_assert_eq!(ours.clone().err(), Some(ScanError::ModelNotFieldValue));
            }
            Some(serde_json::Value::String(m)) if !m.is_empty() && m.len() <= MAX_NAME_LEN => {
                match v.get("stream") {
                    Some(serde_json::Value::Bool(_)) | Some(serde_json::Value::Null) | None => {
                        let s = ours.unwrap();
                        prop_assert_eq!(&s.model, m);
                        // The range holds exactly the JSON string of the model.
                        let raw: String = serde_json::from_str(&text[s.model_range.clone()]).unwrap();
                        prop_assert_eq!(&raw, m);
                        prop_assert_eq!(s.stream, v.get("stream").and_then(|b| b.as_bool()));
                        match v.get("messages") {
                            None => prop_assert!(s.prompt.is_empty()),
                            Some(serde_json::Value::String(p)) => {
                                // Raw string content decodes to the same text.
                                let raw = core::str::from_utf8(s.prompt.parts()[0]).unwrap();
                                let decoded: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
                                prop_assert_eq!(&decoded, p);
                            }
                            Some(other) => {
                                let raw: serde_json::Value = serde_json::from_slice(s.prompt.parts()[0]).unwrap();
                                prop_assert_eq!(&raw, other);
                            }
                        }
                    }
                    Some(_) => prop_assert_eq!(ours.err(), Some(ScanError::StreamNotBool)),
                }
            }
            Some(_) => prop_assert!(ours.is_err()),
        }
    }

    /// Any byte string that serde_json accepts as an object, we accept or reject only for a
    /// routing reason (never as malformed), and vice versa for malformed input.
    #[test]
    fn validity_matches_serde_json(bytes in prop::collection::vec(prop::sample::select(vec![b'{', b'}', b'[', b']', b'"', b':', b',', b'1', b'-', b'.', b'e', b'a', b'\\', b'u', b' ', b't', b'r', b'e', b'n', b'l']), 0..40)) {
        let serde_ok = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
        let ours = scan(&bytes, Api::Completions);
        let ours_valid = !matches!(ours, Err(ScanError::Malformed { .. }) | Err(ScanError::Empty) | Err(ScanError::TooDeep { .. }));
        prop_assert_eq!(serde_ok, ours_valid, "{:?} -> {:?}", String::from_utf8_lossy(&bytes).to_string(), ours);
    }
}

#[test]
fn hex4_agrees_with_to_digit_on_every_byte() {
    for b in 0..=255u8 {
        let want = (b as char).to_digit(16);
        assert_eq!(hex4(&[b]), want, "byte {b:#04x}");
        assert_eq!(
            hex4(&[b'1', b, b'f', b'A']),
            want.map(|d| 0x1000 | d << 8 | 0xFA),
            "byte {b:#04x}"
        );
    }
    assert_eq!(hex4(b"00e9"), Some(0xE9));
    assert_eq!(hex4(b"D83D"), Some(0xD83D));
    assert_eq!(hex4(b"12g4"), None);
}
