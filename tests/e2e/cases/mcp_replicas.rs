//! MCP sessions across two gateway replicas on one PostgreSQL store: the signed session id a
//! client got from one replica works on the other.

use serde_json::json;

use super::mcp::{NodeServer, everything_js, initialize, post, rpc, rpc_answer};
use crate::common::{Gateway, PgDatabase, skip};

#[tokio::test]
async fn a_session_started_on_one_replica_continues_on_another() {
    let test = "a_session_started_on_one_replica_continues_on_another";
    if everything_js().is_none() {
        skip(
            test,
            "@modelcontextprotocol/server-everything is not installed",
        );
        return;
    }
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(reason) => {
            skip(test, &format!("PostgreSQL is not available: {reason}"));
            return;
        }
    };
    let node = NodeServer::start("streamableHttp");
    let policy = format!(
        "[mcp_servers.everything]\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:{}/mcp\"\n",
        node.port
    );
    let a = Gateway::start_db(&policy, &[], &[], &db.url);
    let b = Gateway::start_db(&policy, &[], &[], &db.url);
    let (_, key) = a.create_key_with(&["--mcp", "everything"]);
    let session = initialize(&a.url("/v1/mcp/everything"), &key, "2025-06-18").await;
    let answer = rpc_answer(
        post(
            &b.url("/v1/mcp/everything"),
            &key,
            Some(&session),
            &rpc(
                2,
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "on b"}}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "Echo: on b",
        "{answer}"
    );
    let forged = post(
        &b.url("/v1/mcp/everything"),
        &key,
        Some(&session.replace("tg1.", "tg1.00")),
        &rpc(3, "tools/list", json!({})),
    )
    .await;
    assert_eq!(forged.status().as_u16(), 404);
}
