//! Virtual keys: revocation, expiry and rotation through the CLI while the gateway serves.

use std::time::Duration;

use mock_upstream::MockConfig;
use serde_json::Value;

use crate::common::{Gateway, expect_error, mock, post_chat, standard_policy};

#[tokio::test]
async fn revoked_key_is_refused_on_the_next_request() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (id, secret) = gw.create_key("*");
    assert_eq!(
        post_chat(&gw, &secret, "chat").await.status(),
        200,
        "warms the key cache"
    );
    let out = gw.keys(&["revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_error(
        post_chat(&gw, &secret, "chat").await,
        401,
        "api_key_revoked",
    )
    .await;
    let listed: Value = serde_json::from_slice(&gw.keys(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["state"], "revoked");
    assert!(!String::from_utf8_lossy(&gw.keys(&["list"]).stdout).contains(&secret));
}

#[tokio::test]
async fn expired_key_gets_api_key_expired() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (_, secret) = gw.create_key_with(&["--models", "*", "--expires-at", &expires.to_rfc3339()]);
    assert_eq!(post_chat(&gw, &secret, "chat").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    expect_error(
        post_chat(&gw, &secret, "chat").await,
        401,
        "api_key_expired",
    )
    .await;
}

#[tokio::test]
async fn past_expiry_is_rejected_at_creation() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let out = gw.keys(&[
        "create",
        "--name",
        "x",
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the past"));
    let out = gw.keys(&["create", "--name", "x", "--expires-at", "tomorrow"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn rotated_key_keeps_its_id_and_only_the_new_secret_works() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (id, old) = gw.create_key("chat");
    assert_eq!(post_chat(&gw, &old, "chat").await.status(), 200);
    let out = gw.keys(&["rotate", &id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["rotations"], 1);
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, old);
    expect_error(post_chat(&gw, &old, "chat").await, 401, "unauthorized").await;
    let response = post_chat(&gw, new, "chat").await;
    assert_eq!(response.status(), 200);
    let row = gw.row_for(&crate::common::request_id(&response)).await;
    assert_eq!(
        row["key_id"],
        id.as_str(),
        "usage stays attributed to the same key id"
    );
}

#[tokio::test]
async fn unknown_key_ids_and_revoked_rotation_fail_cleanly() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    assert!(!gw.keys(&["revoke", "key_nope"]).status.success());
    assert!(!gw.keys(&["rotate", "key_nope"]).status.success());
    let (id, _) = gw.create_key("*");
    assert!(gw.keys(&["revoke", &id]).status.success());
    let out = gw.keys(&["rotate", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}

#[tokio::test]
async fn the_store_keeps_only_a_hash_of_the_secret() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let db = std::fs::read(gw.dir.path().join("tollgate.db")).unwrap();
    let wal = std::fs::read(gw.dir.path().join("tollgate.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret stored in clear"
        );
    }
}
