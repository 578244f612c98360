//! The body of the module's local replies.

/// OpenAI-style error body (`{"error": {"message", "type", "code"}}`), as vLLM and OpenAI return.
pub fn error_body(status: u32, message: &str) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        401 | 403 => "authentication_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        _ => "service_unavailable",
    };
    serde_json::json!({"error": {"message": message, "type": kind, "code": status}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_openai_shaped() {
        let v: serde_json::Value = serde_json::from_slice(&error_body(404, "model \"x\" not served")).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["message"], "model \"x\" not served");
    }
}
