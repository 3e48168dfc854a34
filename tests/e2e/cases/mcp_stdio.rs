//! Stdio MCP servers run by the gateway: `mcp-server-time` (PyPI) and server-everything (npm)
//! through the Python SDK, and a small crash-prone server for restarts, the minimal
//! environment, idle timeouts and failing commands.

use serde_json::{Value, json};

use super::mcp::{
    everything_js, have_real_mcp, init_params, initialize, post, python_client, rpc, rpc_answer,
    wait_mcp_rows,
};
use crate::common::{Gateway, skip};

/// A stdio MCP server in plain Python: answers `tools/call pid` with its pid and what it sees
/// of its environment, refuses calls before `initialize`, and dies on `tools/call crash`.
const CRASHY: &str = r#"
import json, os, sys
initialized = False
for line in sys.stdin:
    msg = json.loads(line)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue
    if method == "initialize":
        initialized = True
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "crashy", "version": "1"}}
    elif method == "tools/call" and not initialized:
        print(json.dumps({"jsonrpc": "2.0", "id": mid, "error": {"code": -32002, "message": "not initialized"}}), flush=True)
        continue
    elif method == "tools/call" and msg["params"]["name"] == "crash":
        os._exit(3)
    elif method == "tools/call":
        text = "pid=%d tag=%s provider_key=%s" % (os.getpid(), os.environ.get("CRASHY_TAG", "-"),
                                                  os.environ.get("TG_TEST_PROVIDER_KEY", "absent"))
        result = {"content": [{"type": "text", "text": text}]}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}), flush=True)
"#;

fn crashy_policy(extra: &str) -> String {
    format!(
        r#"
[mcp_servers.crashy]
transport = "stdio"
command = "python3"
args = ["crashy.py"]
cwd = "."
env = {{ CRASHY_TAG = "from-policy" }}
{extra}

[mcp_servers.broken]
transport = "stdio"
command = "/nonexistent/tollgate-test-command"
"#
    )
}

fn call(id: i64, tool: &str) -> Value {
    rpc(id, "tools/call", json!({"name": tool, "arguments": {}}))
}

fn text(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_stdio_server_that_crashes_is_restarted_with_its_session_and_a_minimal_environment() {
    let gw = Gateway::start_with(&crashy_policy(""), &[("crashy.py", CRASHY)], &[]);
    let (_, key) = gw.create_key_with(&["--mcp", "crashy,broken"]);
    let url = gw.url("/v1/mcp/crashy");
    let session = initialize(&url, &key, "2025-06-18").await;
    let initialized = post(
        &url,
        &key,
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(initialized.status().as_u16(), 202);

    let first = text(&rpc_answer(post(&url, &key, Some(&session), &call(2, "pid")).await).await);
    assert!(first.contains("tag=from-policy"), "{first}");
    assert!(
        first.contains("provider_key=absent"),
        "the child never sees the gateway's environment: {first}"
    );

    let crashed = post(&url, &key, Some(&session), &call(3, "crash")).await;
    assert_eq!(crashed.status().as_u16(), 502);
    let answer = rpc_answer(crashed).await;
    assert_eq!(answer["id"], 3);
    assert_eq!(
        answer["error"]["data"]["code"], "mcp_stdio_error",
        "{answer}"
    );

    // The next request restarts the child and replays the session's initialize first.
    let second = text(&rpc_answer(post(&url, &key, Some(&session), &call(4, "pid")).await).await);
    assert!(second.starts_with("pid="), "{second}");
    assert_ne!(
        first.split(' ').next(),
        second.split(' ').next(),
        "a new process"
    );

    let broken = post(
        &gw.url("/v1/mcp/broken"),
        &key,
        None,
        &rpc(1, "initialize", init_params("2025-06-18")),
    )
    .await;
    assert_eq!(broken.status().as_u16(), 502);
    assert_eq!(
        rpc_answer(broken).await["error"]["data"]["code"],
        "mcp_stdio_error"
    );

    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().filter(|r| r["status"] == 502).count() == 2
    })
    .await;
    let crash_row = rows
        .iter()
        .find(|r| r["tool"] == "crash")
        .expect("the crash is recorded");
    assert_eq!(crash_row["error_code"], "mcp_stdio_error");
    assert_eq!(crash_row["transport"], "stdio");
}

#[tokio::test]
async fn an_idle_stdio_session_is_stopped_and_the_client_is_told_to_start_again() {
    let gw = Gateway::start_with(
        &crashy_policy("idle_timeout_secs = 1"),
        &[("crashy.py", CRASHY)],
        &[],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "crashy"]);
    let url = gw.url("/v1/mcp/crashy");
    let session = initialize(&url, &key, "2025-11-25").await;
    assert_eq!(
        post(&url, &key, Some(&session), &call(2, "pid"))
            .await
            .status()
            .as_u16(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let gone = post(&url, &key, Some(&session), &call(3, "pid")).await;
    assert_eq!(gone.status().as_u16(), 404);
    assert_eq!(
        rpc_answer(gone).await["error"]["data"]["code"],
        "mcp_session_not_found"
    );
}

#[tokio::test]
async fn the_python_sdk_uses_mcp_server_time_and_server_everything_over_stdio() {
    let test = "the_python_sdk_uses_mcp_server_time_and_server_everything_over_stdio";
    if !have_real_mcp(test) {
        return;
    }
    let have_time = std::process::Command::new("python3")
        .args(["-c", "import mcp_server_time"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_time {
        skip(
            test,
            "mcp-server-time is not installed (./scripts/test installs it)",
        );
        return;
    }
    let everything = everything_js().expect("installed");
    let policy = format!(
        r#"
[mcp_servers.time]
transport = "stdio"
command = "python3"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]

[mcp_servers.everything]
transport = "stdio"
command = "node"
args = ["{}", "stdio"]
blocked_tools = ["get-env"]
"#,
        everything.display()
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "*"]);
    let time = python_client(
        &gw.url("/v1/mcp/time"),
        &key,
        &[r#"get_current_time={"timezone": "UTC"}"#],
        &[],
    );
    assert!(
        time[1]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .any(|t| t == "get_current_time"),
        "{time:?}"
    );
    assert!(
        time[2]["text"]
            .as_str()
            .is_some_and(|t| t.contains("\"timezone\": \"UTC\"")),
        "{time:?}"
    );
    let everything = python_client(
        &gw.url("/v1/mcp/everything"),
        &key,
        &[r#"echo={"message": "over stdio"}"#, "get-env={}"],
        &[("MCP_MODE", "legacy")],
    );
    assert_eq!(everything[2]["text"], "Echo: over stdio", "{everything:?}");
    assert_eq!(everything[3]["data"]["code"], "mcp_guardrail_block");
    let tools = everything[1]["tools"].as_array().expect("tools");
    assert!(!tools.iter().any(|t| t == "get-env"), "{tools:?}");
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .filter(|r| r["rpc_method"] == "tools/call")
            .count()
            >= 3
    })
    .await;
    assert!(rows.iter().all(|r| r["transport"] == "stdio"));
}
