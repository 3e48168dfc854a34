//! Guardrail plugins on MCP tool traffic (WIT 0.2.0 `tool_call` / `tool_result` phases): the
//! first-party `pii-guard` masks an email in the `echo` arguments before the real
//! `@modelcontextprotocol/server-everything` sees it, masks a result on its way back, and in
//! block mode refuses the call with `mcp_guardrail_block`; the usage rows carry the decisions.

use serde_json::Value;

use super::mcp::{
    NodeServer, everything_policy, have_real_mcp, post, python_client, rpc, rpc_answer,
    wait_mcp_rows,
};
use crate::common::{Gateway, repo_root};

/// A `pii-guard` manifest bound to the `everything` server for `phases`, with `config`.
fn pii_manifest(phases: &str, config: &str) -> String {
    format!(
        "wasm = {:?}\nworld = \"guardrail\"\nphases = {phases}\n[applies_to]\nmcp_servers = [\"everything\"]\n[config]\n{config}\n",
        repo_root()
            .join("plugins/dist/pii-guard.wasm")
            .display()
            .to_string()
    )
}

/// The manifest example of `docs/plugins.md` (`plugins/pii-guard-tools.toml`), its component
/// path made absolute.
fn documented_manifest() -> String {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugins.md")).expect("guide");
    let start = guide
        .find("```toml plugins/pii-guard-tools.toml\n")
        .expect("the documented manifest");
    let body = &guide[start..];
    let body = &body[body.find('\n').expect("line") + 1..];
    let body = &body[..body.find("```").expect("end of block")];
    body.replace(
        "\"../plugins/dist/pii-guard.wasm\"",
        &format!(
            "{:?}",
            repo_root()
                .join("plugins/dist/pii-guard.wasm")
                .display()
                .to_string()
        ),
    )
}

fn policy(port: u16) -> String {
    everything_policy(
        port,
        &format!(
            "\n[plugins]\nallowed_dirs = [{:?}]\n",
            repo_root().join("plugins/dist").display().to_string()
        ),
    )
}

/// The plugin decisions of a row's trail.
fn plugin_decisions(row: &Value) -> Vec<Value> {
    let all: Value = serde_json::from_str(row["decisions"].as_str().expect("decisions"))
        .expect("decisions JSON");
    all.as_array()
        .expect("array")
        .iter()
        .filter(|d| d.get("plugin").is_some())
        .cloned()
        .collect()
}

async fn run(manifest: String, message: &str) -> (Vec<Value>, Vec<Value>) {
    let node = NodeServer::start("streamableHttp");
    let gw = Gateway::start_with(
        &policy(node.port),
        &[("plugins/pii-guard.toml", manifest.as_str())],
        &[],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    let call = format!("echo={}", serde_json::json!({ "message": message }));
    let lines = python_client(&gw.url("/v1/mcp/everything"), &key, &[&call], &[]);
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().any(|r| r["rpc_method"] == "tools/call")
    })
    .await;
    (lines, rows)
}

#[tokio::test]
async fn an_email_in_tool_arguments_is_masked_before_the_mcp_server_sees_it() {
    if !have_real_mcp("an_email_in_tool_arguments_is_masked_before_the_mcp_server_sees_it") {
        return;
    }
    let (lines, rows) = run(
        pii_manifest("[\"tool_call\"]", ""),
        "mail jane.doe@example.com",
    )
    .await;
    // The server echoes what it received: the masked argument.
    assert_eq!(lines[2]["text"], "Echo: mail [EMAIL]", "{lines:?}");
    let call = rows
        .iter()
        .find(|r| r["rpc_method"] == "tools/call")
        .expect("call row");
    assert_eq!(call["status"], 200);
    let decisions = plugin_decisions(call);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["plugin"], "pii-guard");
    assert_eq!(decisions[0]["phase"], "tool_call");
    assert_eq!(decisions[0]["outcome"], "rewrite");
    assert_eq!(decisions[0]["tool"], "echo");
    assert_eq!(decisions[0]["findings"]["email"], 1);
    assert!(
        !call.to_string().contains("jane.doe"),
        "no content in records"
    );
}

#[tokio::test]
async fn an_email_in_a_tool_result_is_masked_before_the_client_sees_it() {
    if !have_real_mcp("an_email_in_a_tool_result_is_masked_before_the_client_sees_it") {
        return;
    }
    let (lines, rows) = run(
        pii_manifest("[\"tool_result\"]", ""),
        "mail jane.doe@example.com",
    )
    .await;
    // The server got the address (no tool_call phase) and echoed it; the client sees it masked.
    assert_eq!(lines[2]["text"], "Echo: mail [EMAIL]", "{lines:?}");
    let call = rows
        .iter()
        .find(|r| r["rpc_method"] == "tools/call")
        .expect("call row");
    let decisions = plugin_decisions(call);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["phase"], "tool_result");
    assert_eq!(decisions[0]["outcome"], "rewrite");
    assert_eq!(decisions[0]["findings"]["email"], 1);
}

#[tokio::test]
async fn a_denying_plugin_blocks_the_tool_call_with_mcp_guardrail_block() {
    if !have_real_mcp("a_denying_plugin_blocks_the_tool_call_with_mcp_guardrail_block") {
        return;
    }
    let (lines, rows) = run(
        pii_manifest("[\"tool_call\", \"tool_result\"]", "mode = \"block\""),
        "mail jane.doe@example.com",
    )
    .await;
    assert_eq!(lines[2]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    assert_eq!(lines[2]["data"]["status"], 403);
    let message = lines[2]["message"].as_str().expect("message");
    assert!(message.contains("pii-guard"), "{message}");
    assert!(!message.contains("jane.doe"), "never echo: {message}");
    let call = rows
        .iter()
        .find(|r| r["rpc_method"] == "tools/call")
        .expect("call row");
    assert_eq!(call["status"], 403);
    assert_eq!(call["error_code"], "mcp_guardrail_block");
    assert_eq!(call["denied_stage"], "inspect");
    let decisions = plugin_decisions(call);
    assert_eq!(decisions[0]["phase"], "tool_call");
    assert_eq!(decisions[0]["outcome"], "deny");
}

#[tokio::test]
async fn the_documented_manifest_masks_arguments_and_results() {
    if !have_real_mcp("the_documented_manifest_masks_arguments_and_results") {
        return;
    }
    let (lines, rows) = run(documented_manifest(), "mail jane.doe@example.com").await;
    assert_eq!(lines[2]["text"], "Echo: mail [EMAIL]", "{lines:?}");
    let call = rows
        .iter()
        .find(|r| r["rpc_method"] == "tools/call")
        .expect("call row");
    let phases: Vec<(Value, Value)> = plugin_decisions(call)
        .iter()
        .map(|d| (d["phase"].clone(), d["outcome"].clone()))
        .collect();
    // The argument was masked on the way in; the echoed result had nothing left to mask.
    assert_eq!(
        phases,
        [
            (Value::from("tool_call"), Value::from("rewrite")),
            (Value::from("tool_result"), Value::from("allow"))
        ]
    );
}

#[tokio::test]
async fn a_call_through_a_virtual_server_meets_the_guardrails_of_the_server_it_routes_to() {
    let test = "a_call_through_a_virtual_server_meets_the_guardrails_of_the_server_it_routes_to";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let policy = format!(
        "{}\n[mcp_virtual.workbench]\nservers = [{{ server = \"everything\", prefix = \"ev_\" }}]\n",
        policy(node.port)
    );
    let manifest = pii_manifest("[\"tool_call\"]", "");
    let gw = Gateway::start_with(
        &policy,
        &[("plugins/pii-guard.toml", manifest.as_str())],
        &[],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "workbench"]);
    let lines = python_client(
        &gw.url("/v1/mcp/workbench"),
        &key,
        &[r#"ev_echo={"message": "mail jane.doe@example.com"}"#],
        &[("MCP_MODE", "legacy")],
    );
    assert_eq!(lines[2]["text"], "Echo: mail [EMAIL]", "{lines:?}");
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().any(|r| r["rpc_method"] == "tools/call")
    })
    .await;
    let call = rows
        .iter()
        .find(|r| r["rpc_method"] == "tools/call")
        .expect("call row");
    let decisions = plugin_decisions(call);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["phase"], "tool_call");
    assert_eq!(decisions[0]["outcome"], "rewrite");
}

/// The `everything` server over the legacy SSE transport (2024-11-05), with `manifest` bound.
async fn run_legacy_sse(manifest: String, message: &str) -> (Vec<Value>, Vec<Value>) {
    let node = NodeServer::start("sse");
    let policy = format!(
        "[mcp_servers.everything]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{}/sse\"\n\
         pricing = {{ call_nanos = 1000, input_byte_nanos = 50, output_byte_nanos = 50 }}\n\
         [plugins]\nallowed_dirs = [{:?}]\n",
        node.port,
        repo_root().join("plugins/dist").display().to_string()
    );
    let gw = Gateway::start_with(
        &policy,
        &[("plugins/pii-guard.toml", manifest.as_str())],
        &[],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    let call = format!("echo={}", serde_json::json!({ "message": message }));
    let lines = python_client(
        &gw.url("/v1/mcp/everything"),
        &key,
        &[&call],
        &[("MCP_TRANSPORT", "sse")],
    );
    // The client closed its stream: the stream's row is written too.
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().any(|r| r["rpc_method"] == "tools/call")
            && rows.iter().any(|r| r["method"] == "GET")
    })
    .await;
    (lines, rows)
}

/// The one usage row of the `tools/call` POST (there is exactly one).
fn the_call_row(rows: &[Value]) -> Value {
    let calls: Vec<&Value> = rows
        .iter()
        .filter(|r| r["rpc_method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 1, "one row per call: {rows:#?}");
    calls[0].clone()
}

#[tokio::test]
async fn a_tool_result_on_a_legacy_sse_stream_is_masked_and_billed_to_its_call() {
    let test = "a_tool_result_on_a_legacy_sse_stream_is_masked_and_billed_to_its_call";
    if !have_real_mcp(test) {
        return;
    }
    let (lines, rows) = run_legacy_sse(
        pii_manifest("[\"tool_result\"]", ""),
        "mail jane.doe@example.com",
    )
    .await;
    // The answer came as a `message` event on the GET stream, masked on its way through.
    assert_eq!(lines[2]["text"], "Echo: mail [EMAIL]", "{lines:?}");
    let call = the_call_row(&rows);
    assert_eq!(call["transport"], "sse");
    assert_eq!(call["status"], 202, "the POST's own answer: {call}");
    assert_eq!(call["stream_status"], "result_relayed", "{call}");
    let decisions = plugin_decisions(&call);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["phase"], "tool_result");
    assert_eq!(decisions[0]["outcome"], "rewrite");
    assert_eq!(decisions[0]["findings"]["email"], 1);
    // The result event's bytes and their price are on the call's row, not the stream's.
    let bytes_in = call["bytes_in"].as_i64().expect("bytes_in");
    let bytes_out = call["bytes_out"].as_i64().expect("bytes_out");
    assert!(
        bytes_out > "Echo: mail [EMAIL]".len() as i64,
        "the result event: {call}"
    );
    assert_eq!(call["cost_nanos"], 1000 + 50 * bytes_in + 50 * bytes_out);
    let stream = rows
        .iter()
        .find(|r| r["method"] == "GET")
        .expect("stream row");
    let stream_bytes = stream["bytes_out"].as_i64().expect("stream bytes");
    assert!(stream_bytes >= 0, "{stream}");
    assert_eq!(stream["cost_nanos"], 50 * stream_bytes, "{stream}");
    let others: i64 = rows
        .iter()
        .filter(|r| r["rpc_method"] != "tools/call")
        .map(|r| r["tool_calls"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(others, 0, "{rows:#?}");
}

#[tokio::test]
async fn a_blocking_plugin_refuses_a_tool_result_on_a_legacy_sse_stream() {
    let test = "a_blocking_plugin_refuses_a_tool_result_on_a_legacy_sse_stream";
    if !have_real_mcp(test) {
        return;
    }
    let (lines, rows) = run_legacy_sse(
        pii_manifest("[\"tool_result\"]", "mode = \"block\""),
        "mail jane.doe@example.com",
    )
    .await;
    // The server saw and echoed the address (no tool_call phase); the client never does.
    assert_eq!(lines[2]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    assert_eq!(lines[2]["data"]["status"], 403);
    let text = lines[2].to_string();
    assert!(text.contains("pii-guard"), "{text}");
    assert!(!text.contains("jane.doe"), "never relayed: {text}");
    let call = the_call_row(&rows);
    assert_eq!(call["status"], 403, "{call}");
    assert_eq!(call["error_code"], "mcp_guardrail_block");
    let decisions = plugin_decisions(&call);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["phase"], "tool_result");
    assert_eq!(decisions[0]["outcome"], "deny");
}

#[tokio::test]
async fn a_legacy_post_whose_result_cannot_be_inspected_here_is_refused() {
    let test = "a_legacy_post_whose_result_cannot_be_inspected_here_is_refused";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("sse");
    let policy = format!(
        "[mcp_servers.everything]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{}/sse\"\n\
         [plugins]\nallowed_dirs = [{:?}]\n",
        node.port,
        repo_root().join("plugins/dist").display().to_string()
    );
    let manifest = pii_manifest("[\"tool_result\"]", "");
    let gw = Gateway::start_with(
        &policy,
        &[("plugins/pii-guard.toml", manifest.as_str())],
        &[],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    // No stream of this session is open on this gateway (it lives on another replica, or
    // never was): the result would arrive where no tool_result phase can run.
    let call = rpc(
        5,
        "tools/call",
        serde_json::json!({"name": "echo", "arguments": {"message": "jane.doe@example.com"}}),
    );
    let answer = post(
        &gw.url("/v1/mcp/everything/message?sessionId=elsewhere"),
        &key,
        None,
        &call,
    )
    .await;
    assert_eq!(answer.status().as_u16(), 404);
    let answer = rpc_answer(answer).await;
    assert_eq!(answer["id"], 5);
    assert_eq!(
        answer["error"]["data"]["code"], "mcp_session_not_found",
        "{answer}"
    );
    let rows = wait_mcp_rows(&gw, |rows| rows.iter().any(|r| r["status"] == 404)).await;
    let row = rows.iter().find(|r| r["status"] == 404).expect("row");
    assert_eq!(row["error_code"], "mcp_session_not_found");
    assert_eq!(row["tool"], "echo");
}
