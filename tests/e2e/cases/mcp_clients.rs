//! MCP clients and transports beyond the Python SDK over Streamable HTTP: the legacy SSE
//! transport and the official TypeScript SDK, against the real server-everything.

use std::process::Command;

use serde_json::Value;

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
