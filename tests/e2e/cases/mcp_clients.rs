//! MCP clients and transports beyond the Python SDK over Streamable HTTP: the legacy SSE
//! transport and the official TypeScript SDK, against the real server-everything.

use std::process::Command;

use serde_json::{Value, json};

use super::mcp::{
    NodeServer, everything_js, everything_policy, have_real_mcp, node_modules, python_client,
    wait_mcp_rows,
};
use crate::common::{Gateway, http, repo_root, skip};

#[tokio::test]
async fn the_legacy_sse_transport_is_governed_and_its_endpoint_points_back_through_the_gateway() {
    let test = "the_legacy_sse_transport_is_governed";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("sse");
    let policy = format!(
        "[mcp_servers.legacy]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{}/sse\"\nblocked_tools = [\"get-env\"]\n",
        node.port
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "legacy"]);
    // The endpoint event names the gateway, not the upstream.
    let mut stream = http()
        .get(gw.url("/v1/mcp/legacy"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    let first = stream.chunk().await.expect("chunk").expect("an event");
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: endpoint"), "{text}");
    assert!(
        text.contains("data: /v1/mcp/legacy/message?sessionId="),
        "{text}"
    );
    assert!(!text.contains(&node.port.to_string()), "{text}");
    drop(stream);

    let lines = python_client(
        &gw.url("/v1/mcp/legacy"),
        &key,
        &[r#"echo={"message": "over sse"}"#, "get-env={}"],
        &[("MCP_TRANSPORT", "sse")],
    );
    let tools = lines[1]["tools"].as_array().expect("tools");
    assert!(tools.iter().any(|t| t == "echo"));
    assert!(!tools.iter().any(|t| t == "get-env"), "{tools:?}");
    assert_eq!(lines[2]["text"], "Echo: over sse");
    assert_eq!(lines[3]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .any(|r| r["tool"] == "echo" && r["status"] == 202)
    })
    .await;
    assert!(rows.iter().all(|r| r["transport"] == "sse"));
}

/// Runs `examples/mcp/ts_client.mjs URL TOOL ARGS` with `key`; its JSON lines.
fn ts_client(url: &str, key: &str, tool: &str, args: &str) -> Vec<Value> {
    let out = Command::new("node")
        .arg(repo_root().join("examples/mcp/ts_client.mjs"))
        .args([url, tool, args])
        .env("TOLLGATE_API_KEY", key)
        .env(
            "MCP_SDK_DIR",
            node_modules().join("@modelcontextprotocol/sdk"),
        )
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ts client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test]
async fn the_typescript_sdk_calls_tools_and_gets_a_denied_tool_as_a_json_rpc_error() {
    let test = "the_typescript_sdk_calls_tools_and_gets_a_denied_tool_as_a_json_rpc_error";
    if !node_modules()
        .join("@modelcontextprotocol/sdk/package.json")
        .is_file()
        || everything_js().is_none()
    {
        skip(
            test,
            "the npm MCP packages are not installed (./scripts/test installs them)",
        );
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let gw = Gateway::start(&everything_policy(node.port, ""));
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    let url = gw.url("/v1/mcp/everything");
    let ok = ts_client(&url, &key, "echo", r#"{"message": "from typescript"}"#);
    assert_eq!(ok[0]["session"], true, "{ok:?}");
    assert!(
        !ok[1]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .any(|t| t == "get-env")
    );
    assert_eq!(ok[2]["text"], "Echo: from typescript");
    let denied = ts_client(&url, &key, "get-env", "{}");
    assert_eq!(denied[2]["error"], -32003, "{denied:?}");
    assert_eq!(
        denied[2]["data"]["code"], "mcp_guardrail_block",
        "{denied:?}"
    );
    assert_eq!(denied[2]["data"]["status"], 403);
    // terminateSession is an HTTP DELETE, forwarded and recorded.
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().filter(|r| r["method"] == "DELETE").count() == 2
    })
    .await;
    assert!(
        rows.iter()
            .filter(|r| r["method"] == "DELETE")
            .all(|r| r["status"] == 200)
    );
}

/// A raw legacy SSE session through the gateway: the GET stream and the POST endpoint its
/// `endpoint` event named.
struct LegacySession {
    stream: reqwest::Response,
    buffer: String,
    endpoint: String,
    key: String,
    base: String,
}

impl LegacySession {
    async fn open(gw: &Gateway, slug: &str, key: &str) -> LegacySession {
        let stream = http()
            .get(gw.url(&format!("/v1/mcp/{slug}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("get");
        let mut session = LegacySession {
            stream,
            buffer: String::new(),
            endpoint: String::new(),
            key: key.to_string(),
            base: gw.base.clone(),
        };
        let event = session.next_event().await;
        session.endpoint = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("the endpoint event")
            .to_string();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
        session.post(&init).await;
        session.answer(1).await;
        session
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        session
    }

    /// The next SSE event's text.
    async fn next_event(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event = self.buffer[..end].to_string();
                self.buffer.drain(..end + 2);
                return event;
            }
            let chunk = self
                .stream
                .chunk()
                .await
                .expect("stream")
                .expect("the stream ended");
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// Every message until the answer with `id`: (messages before it, the answer).
    async fn answer(&mut self, id: i64) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let event = self.next_event().await;
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if message["id"] == id && message.get("method").is_none() {
                return (before, message);
            }
            before.push(message);
        }
    }

    async fn post(&self, message: &Value) {
        let answer = http()
            .post(format!("{}{}", self.base, self.endpoint))
            .bearer_auth(&self.key)
            .json(message)
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status().as_u16(), 202, "{message}");
    }
}

fn long_call(id: i64, seconds: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": seconds, "steps": seconds},
        "_meta": {"progressToken": id}}})
}

#[tokio::test]
async fn a_legacy_sse_result_that_times_out_or_outlives_its_stream_is_still_recorded_once() {
    let test = "a_legacy_sse_result_that_times_out_or_outlives_its_stream_is_still_recorded_once";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("sse");
    let policy = format!(
        "[mcp_servers.short]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{port}/sse\"\ntimeout_ms = 1000\n\
         [mcp_servers.long]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{port}/sse\"\n",
        port = node.port
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "*"]);

    // No result within the server's 1 s: the client is told on its stream, the late result
    // (the operation takes 3 s) is dropped, and the session goes on.
    let mut short = LegacySession::open(&gw, "short", &key).await;
    short.post(&long_call(2, 3)).await;
    let (_, failed) = short.answer(2).await;
    assert_eq!(
        failed["error"]["data"]["code"], "mcp_upstream_error",
        "{failed}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let echo = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "after"}}});
    short.post(&echo).await;
    let (between, answer) = short.answer(3).await;
    assert_eq!(answer["result"]["content"][0]["text"], "Echo: after");
    assert!(
        !between.iter().any(|m| m["id"] == 2),
        "the late result was relayed: {between:?}"
    );

    // The stream ends before the result: the call's row is written all the same.
    let mut long = LegacySession::open(&gw, "long", &key).await;
    long.post(&long_call(4, 30)).await;
    let _ = long.next_event().await; // the first progress notification: the call runs
    drop(long);

    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .any(|r| r["server"] == "short" && r["status"] == 502)
            && rows
                .iter()
                .any(|r| r["server"] == "long" && r["stream_status"] == "stream_closed")
    })
    .await;
    let calls: Vec<&Value> = rows
        .iter()
        .filter(|r| r["tool"] == "trigger-long-running-operation")
        .collect();
    assert_eq!(calls.len(), 2, "one row per call: {rows:#?}");
    let timed_out = calls.iter().find(|r| r["server"] == "short").expect("row");
    assert_eq!(timed_out["error_code"], "mcp_upstream_error");
    assert_eq!(timed_out["stream_status"], "result_timeout");
    let cut = calls.iter().find(|r| r["server"] == "long").expect("row");
    assert_eq!(cut["status"], 202);
    assert_eq!(cut["bytes_out"], 0);
    let echo_row = rows.iter().find(|r| r["tool"] == "echo").expect("echo row");
    assert_eq!(echo_row["stream_status"], "result_relayed");
    assert!(echo_row["bytes_out"].as_i64() > Some(0), "{echo_row}");
}
