//! Virtual MCP servers: several servers' tools behind one endpoint, each call governed by the
//! server it routes to.

use serde_json::Value;

use super::mcp::{NodeServer, have_real_mcp, python_client, wait_mcp_rows};
use crate::common::Gateway;

#[tokio::test]
async fn a_virtual_server_aggregates_tools_and_each_call_follows_its_servers_rules() {
    let test = "a_virtual_server_aggregates_tools_and_each_call_follows_its_servers_rules";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let long = "a_prefix_long_enough_that_some_tool_names_overflow_64_chars_";
    let policy = format!(
        r#"
[mcp_servers.open]
transport = "streamable_http"
url = "http://127.0.0.1:{port}/mcp"
pricing = {{ call_nanos = 1000 }}

[mcp_servers.strict]
transport = "streamable_http"
url = "http://127.0.0.1:{port}/mcp"
allowed_tools = ["echo", "trigger-long-running-operation"]

[mcp_virtual.workbench]
servers = [{{ server = "open", prefix = "open_" }}, {{ server = "strict", prefix = "{long}" }}]
"#,
        port = node.port
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "workbench"]);
    let long_echo = format!("{long}echo");
    let long_tool = format!("{long}trigger-long-running-operation");
    // The deterministic short form the gateway advertises for a name over 64 characters.
    let short = |full: &str| {
        use sha2::Digest;
        let digest = hex::encode(&sha2::Sha256::digest(full.as_bytes())[..4]);
        format!("{}_{digest}", &full[..55])
    };
    let shortened = short(&long_tool);
    let hidden_sum = short(&format!("{long}get-sum"));
    let lines = python_client(
        &gw.url("/v1/mcp/workbench"),
        &key,
        &[
            r#"open_echo={"message": "via open"}"#,
            &format!(r#"{long_echo}={{"message": "via strict"}}"#),
            &format!(r#"{hidden_sum}={{"a": 1, "b": 2}}"#),
            &format!(r#"{shortened}={{"duration": 0.1, "steps": 1}}"#),
        ],
        &[("MCP_MODE", "legacy")],
    );
    let tools: Vec<&str> = lines[1]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"open_echo") && tools.contains(&"open_get-sum"),
        "{tools:?}"
    );
    assert!(tools.contains(&long_echo.as_str()), "{tools:?}");
    assert!(tools.contains(&shortened.as_str()), "{tools:?}");
    assert!(tools.iter().all(|t| t.len() <= 64), "{tools:?}");
    assert!(
        !tools
            .iter()
            .any(|t| t.starts_with(long) && t.contains("get-sum")),
        "the strict member's rules hide its other tools: {tools:?}"
    );
    assert_eq!(lines[2]["text"], "Echo: via open", "{lines:?}");
    assert_eq!(lines[3]["text"], "Echo: via strict", "{lines:?}");
    assert_eq!(lines[4]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    assert!(
        lines[5]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Long running operation completed")),
        "a shortened name maps back exactly: {lines:?}"
    );
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .filter(|r| r["rpc_method"] == "tools/call")
            .count()
            == 4
    })
    .await;
    assert!(
        rows.iter()
            .all(|r| r["server"] == "workbench" && r["transport"] == "virtual")
    );
}
