//! Error envelope goldens: every family's upstream error into every other family's envelope.

use insta::assert_json_snapshot;
use serde_json::{Value, json};

use crate::translate::{Dialect, client_status, error};

const ALL: [Dialect; 3] = [Dialect::OpenAiChat, Dialect::Anthropic, Dialect::Gemini];

fn name(d: Dialect) -> &'static str {
    d.as_str()
}

/// Upstream errors as each family sends them.
fn upstream() -> Vec<(Dialect, u16, Vec<u8>)> {
    vec![
        (Dialect::OpenAiChat, 429, br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.to_vec()),
        (Dialect::OpenAiChat, 401, br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_vec()),
        (Dialect::Anthropic, 529, br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_vec()),
        (Dialect::Anthropic, 400, br#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: text content blocks must be non-empty"}}"#.to_vec()),
        (Dialect::Gemini, 429, br#"[{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}]"#.to_vec()),
        (Dialect::Gemini, 403, br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#.to_vec()),
        (Dialect::OpenAiChat, 502, b"<html>Bad Gateway</html>".to_vec()),
        (Dialect::Anthropic, 500, Vec::new()),
    ]
}

#[test]
fn upstream_errors_become_each_family_envelope_with_the_type_following_the_status() {
    let mut table = Vec::new();
    for (from, status, body) in upstream() {
        for to in ALL {
            if to == from {
                continue;
            }
            table.push(json!({
                "from": name(from), "to": name(to), "status": status,
                "client_status": client_status(from, to, status),
                "body": error(from, to, status, &body),
            }));
        }
    }
    assert_json_snapshot!(Value::Array(table));
}

#[test]
fn error_types_follow_the_status_for_every_client_family() {
    let cases = [
        (
            400,
            "invalid_request_error",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
        (
            401,
            "authentication_error",
            "authentication_error",
            "UNAUTHENTICATED",
        ),
        (
            402,
            "insufficient_quota",
            "billing_error",
            "RESOURCE_EXHAUSTED",
        ),
        (
            403,
            "permission_error",
            "permission_error",
            "PERMISSION_DENIED",
        ),
        (
            429,
            "rate_limit_error",
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
        ),
        (502, "api_error", "api_error", "INTERNAL"),
        (529, "api_error", "overloaded_error", "UNAVAILABLE"),
    ];
    for (status, openai, anthropic, gemini) in cases {
        let body = b"{\"error\":{\"message\":\"m\"}}";
        assert_eq!(
            error(Dialect::Gemini, Dialect::OpenAiChat, status, body)["error"]["type"],
            openai,
            "{status}"
        );
        assert_eq!(
            error(Dialect::OpenAiChat, Dialect::Anthropic, status, body)["error"]["type"],
            anthropic,
            "{status}"
        );
        assert_eq!(
            error(Dialect::Anthropic, Dialect::Gemini, status, body)["error"]["status"],
            gemini,
            "{status}"
        );
        assert_eq!(
            error(Dialect::OpenAiChat, Dialect::Anthropic, status, body)["error"]["message"],
            "m"
        );
    }
    assert_eq!(
        client_status(Dialect::Anthropic, Dialect::OpenAiChat, 529),
        503
    );
    assert_eq!(
        client_status(Dialect::Anthropic, Dialect::Anthropic, 529),
        529
    );
}

#[test]
fn same_family_errors_pass_through() {
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let out = error(Dialect::Anthropic, Dialect::Anthropic, 529, body);
    assert_eq!(out, serde_json::from_slice::<Value>(body).unwrap());
}
