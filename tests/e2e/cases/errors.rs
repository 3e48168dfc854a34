//! Every error has its status, stable code, OpenAI-shaped body, request id and usage record.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, chat_body, expect_error, http, mock, request_id, standard_policy};

async fn post(gw: &Gateway, secret: &str, body: reqwest::Body) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn json_body(value: &Value) -> reqwest::Body {
    reqwest::Body::from(value.to_string())
}

#[tokio::test]
async fn bad_requests_get_400_invalid_request_and_are_recorded() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (key_id, secret) = gw.create_key("*");
    let cases: Vec<(reqwest::Body, &str)> = vec![
        (
            reqwest::Body::from("{\"model\": \"chat\", "),
            "invalid_request",
        ),
        (reqwest::Body::from("[1, 2]"), "invalid_request"),
        (
            json_body(&json!({"model": 5, "messages": []})),
            "invalid_request",
        ),
        (json_body(&json!({"messages": []})), "invalid_request"),
        (
            json_body(&json!({"model": "chat", "stream": "yes"})),
            "invalid_request",
        ),
        (
            json_body(&json!({"model": "chat", "stream": true, "stream_options": 3})),
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let id = expect_error(post(&gw, &secret, body).await, 400, code).await;
        let row = gw.row_for(&id).await;
        assert_eq!(row["status"], 400);
        assert_eq!(row["error_code"], code);
        assert_eq!(row["denied_stage"], "authorize");
        assert_eq!(row["key_id"], key_id.as_str());
    }
    assert_eq!(mock.count(), 0, "nothing reached the provider");
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let big =
        json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let id = expect_error(
        post(&gw, &secret, json_body(&big)).await,
        413,
        "request_too_large",
    )
    .await;
    assert_eq!(gw.row_for(&id).await["status"], 413);
    // Just under the limit is fine.
    let fits =
        json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(60_000)}]});
    assert_eq!(post(&gw, &secret, json_body(&fits)).await.status(), 200);
}

#[tokio::test]
async fn model_and_provider_checks_have_their_codes() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("chat,disabled,keyless");
    let cases = [
        ("no-such-model", 400, "model_not_found"),
        ("other", 403, "model_not_allowed"),
        ("disabled", 403, "provider_disabled"),
        ("keyless", 400, "provider_api_key_not_configured"),
    ];
    for (model, status, code) in cases {
        let id = expect_error(
            post(&gw, &secret, json_body(&chat_body(model))).await,
            status,
            code,
        )
        .await;
        let row = gw.row_for(&id).await;
        assert_eq!(row["requested_model"], model);
        assert_eq!(row["denied_stage"], "authorize");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let cases = [
        ("unreachable", 502, "upstream_error"),
        ("fail-500", 502, "upstream_error"),
        ("slow", 504, "upstream_timeout"),
    ];
    for (model, status, code) in cases {
        let id = expect_error(
            post(&gw, &secret, json_body(&chat_body(model))).await,
            status,
            code,
        )
        .await;
        let row = gw.row_for(&id).await;
        assert_eq!(row["status"], status);
        assert_eq!(row["denied_stage"], "call");
        assert_eq!(row["cost_nanos"], 0);
    }
}

#[tokio::test]
async fn upstream_client_errors_are_passed_through_with_their_status() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = post(&gw, &secret, json_body(&chat_body("fail-400"))).await;
    assert_eq!(response.status(), 400);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "mock_bad_param");
    assert_eq!(body["error"]["param"], "temperature");
    let row = gw.row_for(&id).await;
    assert_eq!(row["status"], 400);
    assert_eq!(row["error_code"], "upstream_rejected");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors_with_request_ids() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let response = http().get(gw.url("/v1/nope")).send().await.unwrap();
    expect_error(response, 404, "not_found").await;
    let response = http()
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(request_id(&response).len(), 32);
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401_unauthorized() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let no_key = http()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    let id = expect_error(no_key, 401, "unauthorized").await;
    let row = gw.row_for(&id).await;
    assert_eq!(row["denied_stage"], "authenticate");
    assert_eq!(row["key_id"], Value::Null);
    for bad in ["sk-not-ours", "tg_0000000000000000000000000000000000000000"] {
        expect_error(
            post(&gw, bad, json_body(&chat_body("chat"))).await,
            401,
            "unauthorized",
        )
        .await;
    }
    let basic = http()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    expect_error(basic, 401, "unauthorized").await;
}
