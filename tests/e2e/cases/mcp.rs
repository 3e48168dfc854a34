//! The MCP gateway over Streamable HTTP and legacy SSE, against the real
//! `@modelcontextprotocol/server-everything` (npm) driven by the official `mcp` Python SDK, plus
//! a header-recording upstream for what crosses the gateway. `scripts/test` installs both.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::SqlitePoolOptions;

use crate::common::{Gateway, http, repo_root, skip};

/// Where `scripts/test` installs the npm packages (overridable for other layouts).
pub fn node_modules() -> PathBuf {
    std::env::var_os("TOLLGATE_MCP_NODE_MODULES").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/tollgate-mcp/node/node_modules")
        },
        PathBuf::from,
    )
}

/// The server-everything entry point, if installed.
pub fn everything_js() -> Option<PathBuf> {
    let path = node_modules().join("@modelcontextprotocol/server-everything/dist/index.js");
    path.is_file().then_some(path)
}

/// Whether the `mcp` Python SDK is importable.
pub fn python_sdk() -> bool {
    Command::new("python3")
        .args(["-c", "import mcp"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Checks the real MCP servers and clients are installed, or prints why the test is skipped.
pub fn have_real_mcp(test: &str) -> bool {
    if everything_js().is_none() {
        skip(
            test,
            "@modelcontextprotocol/server-everything is not installed (./scripts/test installs it)",
        );
        return false;
    }
    if !python_sdk() {
        skip(
            test,
            "the mcp Python SDK is not installed (./scripts/test installs it)",
        );
        return false;
    }
    true
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// server-everything running in `mode` (`streamableHttp` or `sse`) on its own port.
pub struct NodeServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl NodeServer {
    /// Starts it and waits until it accepts connections.
    pub fn start(mode: &str) -> NodeServer {
        let port = free_port();
        let child = Command::new("node")
            .arg(everything_js().expect("server-everything"))
            .arg(mode)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server-everything");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            assert!(Instant::now() < deadline, "server-everything did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        NodeServer { child, port }
    }

    /// Stops it (the upstream "dies").
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `examples/mcp/python_client.py URL CALLS...` with `key`; its JSON lines.
pub fn python_client(url: &str, key: &str, calls: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(repo_root().join("examples/mcp/python_client.py"))
        .arg(url)
        .args(calls)
        .env("TOLLGATE_API_KEY", key)
        .envs(env.iter().copied())
        .output()
        .expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The MCP columns of every usage row with `provider = mcp`, oldest first.
pub async fn mcp_rows(db_url: &str) -> Vec<Value> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await
        .expect("open store");
    let rows = sqlx::query(
        "SELECT request_id, key_id, method, endpoint, provider, status, error_code, denied_stage, \
         mcp_server, mcp_transport, mcp_method, mcp_tool, mcp_tool_calls, bytes_in, bytes_out, \
         cost_nanos, mcp_pricing, stream_status, decisions FROM usage_records \
         WHERE provider = 'mcp' OR endpoint LIKE '/v1/mcp%' ORDER BY received_at_ms, id",
    )
    .fetch_all(&pool)
    .await
    .expect("query usage");
    pool.close().await;
    rows.iter()
        .map(|r| {
            let text = |n: &str| {
                r.try_get::<Option<String>, _>(n)
                    .expect(n)
                    .map_or(Value::Null, Value::String)
            };
            let int = |n: &str| {
                r.try_get::<Option<i64>, _>(n)
                    .expect(n)
                    .map_or(Value::Null, Value::from)
            };
            json!({
                "request_id": text("request_id"), "key_id": text("key_id"), "method": text("method"),
                "endpoint": text("endpoint"), "provider": text("provider"), "status": int("status"),
                "error_code": text("error_code"), "denied_stage": text("denied_stage"),
                "server": text("mcp_server"), "transport": text("mcp_transport"),
                "rpc_method": text("mcp_method"), "tool": text("mcp_tool"), "tool_calls": int("mcp_tool_calls"),
                "bytes_in": int("bytes_in"), "bytes_out": int("bytes_out"), "cost_nanos": int("cost_nanos"),
                "pricing": text("mcp_pricing"), "stream_status": text("stream_status"),
                "decisions": text("decisions"),
            })
        })
        .collect()
}

/// Waits until `pred` holds for the MCP rows (the usage writer is asynchronous).
pub async fn wait_mcp_rows(gw: &Gateway, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = mcp_rows(&gw.db_url).await;
        if pred(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "usage rows never matched: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JSON-RPC request body.
pub fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The `initialize` params of a 2025-06-18 client.
pub fn init_params(version: &str) -> Value {
    json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}})
}

/// POSTs a JSON-RPC body to the gateway; returns the response.
/// Sends `initialize` at protocol `version` and returns the session id the gateway handed out.
pub async fn initialize(url: &str, key: &str, version: &str) -> String {
    let init = post(url, key, None, &rpc(1, "initialize", init_params(version))).await;
    assert_eq!(init.status().as_u16(), 200);
    init.headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_string()
}

pub async fn post(url: &str, key: &str, session: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(s) = session {
        request = request.header("mcp-session-id", s);
    }
    request.send().await.expect("post")
}

/// The JSON-RPC message of an answer that is either JSON or a one-event SSE stream.
pub async fn rpc_answer(response: reqwest::Response) -> Value {
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let text = response.text().await.expect("body");
    if !is_sse {
        return serde_json::from_str(&text).expect("JSON answer");
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .expect("an answer event")
}

pub fn everything_policy(port: u16, extra: &str) -> String {
    format!(
        r#"
[mcp_servers.everything]
transport = "streamable_http"
url = "http://127.0.0.1:{port}/mcp"
blocked_tools = ["get-env"]
blocked_keywords = ["private key"]
pricing = {{ call_nanos = 1000, input_byte_nanos = 50, output_byte_nanos = 50 }}
{extra}
"#
    )
}

#[tokio::test]
async fn the_python_sdk_lists_and_calls_tools_through_streamable_http_and_each_request_is_recorded()
{
    let test = "the_python_sdk_lists_and_calls_tools_through_streamable_http";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let gw = Gateway::start(&everything_policy(node.port, ""));
    let (key_id, key) = gw.create_key_with(&["--mcp", "everything"]);
    let url = gw.url("/v1/mcp/everything");
    let lines = python_client(
        &url,
        &key,
        &[
            r#"echo={"message": "hello through the gate"}"#,
            r#"get-sum={"a": 2, "b": 3}"#,
        ],
        &[],
    );
    // The 2.x SDK probes server/discover; the upstream refuses it and the SDK falls back.
    assert_eq!(lines[0]["protocol"], "2025-11-25", "{lines:?}");
    let tools: Vec<&str> = lines[1]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"get-sum"),
        "{tools:?}"
    );
    assert!(
        !tools.contains(&"get-env"),
        "a blocked tool is never advertised: {tools:?}"
    );
    assert_eq!(lines[2]["text"], "Echo: hello through the gate");
    assert_eq!(lines[3]["text"], "The sum of 2 and 3 is 5.");

    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .filter(|r| r["rpc_method"] == "tools/call")
            .count()
            == 2
            && rows.iter().any(|r| r["method"] == "DELETE")
    })
    .await;
    for row in &rows {
        assert_eq!(row["provider"], "mcp");
        assert_eq!(row["server"], "everything");
        assert_eq!(row["transport"], "streamable_http");
        assert_eq!(row["key_id"], key_id.as_str());
        assert_eq!(row["endpoint"], "/v1/mcp/everything");
    }
    let discover = rows
        .iter()
        .find(|r| r["rpc_method"] == "server/discover")
        .expect("the discover probe is recorded");
    assert_eq!(
        discover["status"], 400,
        "the upstream's refusal is relayed as is"
    );
    let call = rows
        .iter()
        .find(|r| r["tool"] == "echo")
        .expect("the echo call is recorded");
    assert_eq!(call["status"], 200);
    assert_eq!(call["tool_calls"], 1);
    let (bytes_in, bytes_out) = (
        call["bytes_in"].as_i64().expect("in"),
        call["bytes_out"].as_i64().expect("out"),
    );
    assert!(bytes_in > 0 && bytes_out > 0, "{call}");
    assert_eq!(
        call["cost_nanos"].as_i64(),
        Some(1000 + 50 * bytes_in + 50 * bytes_out),
        "calls x call price + bytes x byte prices: {call}"
    );
    let pricing: Value =
        serde_json::from_str(call["pricing"].as_str().expect("pricing")).expect("json");
    assert_eq!(pricing["call_nanos"], 1000);
    let init = rows
        .iter()
        .find(|r| r["rpc_method"] == "initialize")
        .expect("initialize is recorded");
    assert_eq!(init["tool_calls"], 0);
    assert_eq!(
        init["cost_nanos"].as_i64(),
        Some(
            50 * init["bytes_in"].as_i64().expect("in")
                + 50 * init["bytes_out"].as_i64().expect("out")
        )
    );
}

#[tokio::test]
async fn a_blocked_tool_and_a_keyword_filtered_argument_are_refused_as_json_rpc_errors() {
    let test = "a_blocked_tool_and_a_keyword_filtered_argument_are_refused_as_json_rpc_errors";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let gw = Gateway::start(&everything_policy(node.port, ""));
    let (_, key) = gw.create_key_with(&["--mcp", "*"]);
    let lines = python_client(
        &gw.url("/v1/mcp/everything"),
        &key,
        &[
            "get-env={}",
            r#"echo={"message": "here is my PRIVATE KEY"}"#,
            r#"echo={"message": "harmless"}"#,
        ],
        &[("MCP_MODE", "legacy")],
    );
    assert_eq!(lines[2]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    assert_eq!(lines[2]["data"]["status"], 403);
    assert!(
        lines[2]["message"]
            .as_str()
            .expect("msg")
            .contains("'get-env' is blocked")
    );
    assert_eq!(lines[3]["data"]["code"], "mcp_guardrail_block", "{lines:?}");
    assert!(
        lines[3]["message"]
            .as_str()
            .expect("msg")
            .contains("'private key'")
    );
    assert_eq!(lines[4]["text"], "Echo: harmless", "the session goes on");
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter()
            .filter(|r| r["rpc_method"] == "tools/call")
            .count()
            == 3
    })
    .await;
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r["error_code"] == "mcp_guardrail_block")
        .collect();
    assert_eq!(refused.len(), 2, "{rows:#?}");
    for r in refused {
        assert_eq!(r["status"], 403);
        assert_eq!(r["denied_stage"], "inspect");
        assert_eq!(
            r["cost_nanos"], 0,
            "nothing went upstream, nothing is billed"
        );
    }
}

#[tokio::test]
async fn keys_are_checked_before_anything_reaches_a_server() {
    let gw = Gateway::start(&everything_policy(
        free_port(),
        "\n[mcp_servers.off]\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\nenabled = false\n",
    ));
    let url = gw.url("/v1/mcp/everything");
    let body = rpc(1, "tools/list", json!({}));
    let missing = http().post(&url).json(&body).send().await.expect("post");
    crate::common::expect_error(missing, 401, "unauthorized").await;
    let bad = post(&url, "tg_not_a_real_key", None, &body).await;
    crate::common::expect_error(bad, 401, "unauthorized").await;
    let (_, all) = gw.create_key_with(&["--mcp", "*"]);
    let (no_mcp_id, no_mcp) = gw.create_key("*");
    let denied = post(&url, &no_mcp, None, &body).await;
    crate::common::expect_error(denied, 403, "mcp_not_allowed").await;
    let unknown = post(&gw.url("/v1/mcp/nope"), &all, None, &body).await;
    crate::common::expect_error(unknown, 404, "mcp_not_found").await;
    let disabled = post(&gw.url("/v1/mcp/off"), &all, None, &body).await;
    crate::common::expect_error(disabled, 404, "mcp_not_found").await;
    let no_ref = post(&gw.url("/v1/mcp/"), &all, None, &body).await;
    crate::common::expect_error(no_ref, 400, "invalid_mcp_ref").await;
    let (_, other) = gw.create_key_with(&["--mcp", "someone-else"]);
    let scoped = post(&url, &other, None, &body).await;
    crate::common::expect_error(scoped, 403, "mcp_not_allowed").await;
    assert!(gw.keys(&["revoke", &no_mcp_id]).status.success());
    let revoked = post(&url, &no_mcp, None, &body).await;
    crate::common::expect_error(revoked, 401, "api_key_revoked").await;
    let rows = wait_mcp_rows(&gw, |rows| rows.len() >= 7).await;
    assert!(rows.iter().all(|r| {
        r["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("/v1/mcp"))
    }));
    assert!(
        rows.iter().all(|r| r["status"].as_i64() >= Some(400)),
        "{rows:#?}"
    );
}

#[tokio::test]
async fn a_budget_runs_out_on_mcp_cost_and_a_rate_limit_answers_429() {
    let test = "a_budget_runs_out_on_mcp_cost_and_a_rate_limit_answers_429";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let policy = format!(
        r#"
[mcp_servers.priced]
transport = "streamable_http"
url = "http://127.0.0.1:{port}/mcp"
pricing = {{ call_nanos = 1000 }}

[mcp_servers.limited]
transport = "streamable_http"
url = "http://127.0.0.1:{port}/mcp"
limits = {{ requests_per_minute = 2 }}

[[budgets]]
scope = "organization"
window = "lifetime"
limit_usd = 0.000002
"#,
        port = node.port
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "*"]);
    let lines = python_client(
        &gw.url("/v1/mcp/priced"),
        &key,
        &[
            r#"echo={"message": "one"}"#,
            r#"echo={"message": "two"}"#,
            r#"echo={"message": "three"}"#,
        ],
        &[("MCP_MODE", "legacy")],
    );
    assert_eq!(lines[2]["text"], "Echo: one", "{lines:?}");
    assert_eq!(lines[3]["text"], "Echo: two", "{lines:?}");
    assert_eq!(lines[4]["data"]["code"], "budget_exceeded", "{lines:?}");
    assert_eq!(lines[4]["data"]["status"], 402);
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().any(|r| r["error_code"] == "budget_exceeded")
    })
    .await;
    let refused = rows
        .iter()
        .find(|r| r["error_code"] == "budget_exceeded")
        .expect("row");
    assert_eq!(refused["status"], 402);
    assert_eq!(refused["denied_stage"], "reserve");

    let url = gw.url("/v1/mcp/limited");
    for id in 0..2 {
        let ok = post(
            &url,
            &key,
            None,
            &rpc(id, "initialize", init_params("2025-06-18")),
        )
        .await;
        assert_eq!(ok.status().as_u16(), 200);
    }
    let limited = post(
        &url,
        &key,
        None,
        &rpc(9, "initialize", init_params("2025-06-18")),
    )
    .await;
    assert_eq!(limited.status().as_u16(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    let body = rpc_answer(limited).await;
    assert_eq!(
        body["error"]["data"]["code"], "rate_limit_exceeded",
        "{body}"
    );
}

#[tokio::test]
async fn an_upstream_that_dies_mid_session_answers_502_and_is_recorded() {
    let test = "an_upstream_that_dies_mid_session_answers_502_and_is_recorded";
    if everything_js().is_none() {
        skip(
            test,
            "@modelcontextprotocol/server-everything is not installed",
        );
        return;
    }
    let mut node = NodeServer::start("streamableHttp");
    let gw = Gateway::start(&everything_policy(node.port, ""));
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    let url = gw.url("/v1/mcp/everything");
    let session = initialize(&url, &key, "2025-06-18").await;
    node.kill();
    let dead = post(
        &url,
        &key,
        Some(&session),
        &rpc(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "x"}}),
        ),
    )
    .await;
    assert_eq!(dead.status().as_u16(), 502);
    let answer = rpc_answer(dead).await;
    assert_eq!(answer["id"], 2);
    assert_eq!(
        answer["error"]["data"]["code"], "mcp_upstream_error",
        "{answer}"
    );
    let rows = wait_mcp_rows(&gw, |rows| rows.iter().any(|r| r["status"] == 502)).await;
    let row = rows.iter().find(|r| r["status"] == 502).expect("row");
    assert_eq!(row["error_code"], "mcp_upstream_error");
    assert_eq!(row["tool"], "echo");
    assert_eq!(row["cost_nanos"], 0);
}

#[tokio::test]
async fn three_concurrent_sessions_each_get_their_own_answers() {
    let test = "three_concurrent_sessions_each_get_their_own_answers";
    if !have_real_mcp(test) {
        return;
    }
    let node = NodeServer::start("streamableHttp");
    let gw = Gateway::start(&everything_policy(node.port, ""));
    let (_, key) = gw.create_key_with(&["--mcp", "everything"]);
    let url = gw.url("/v1/mcp/everything");
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || {
                let call = format!(r#"echo={{"message": "session {i}"}}"#);
                python_client(&url, &key, &[&call, &call], &[])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let lines = h.join().expect("client thread");
        assert_eq!(lines[2]["text"], format!("Echo: session {i}"));
        assert_eq!(lines[3]["text"], format!("Echo: session {i}"));
    }
}

/// The server and virtual-server examples of `docs/mcp.md` load with `tollgate check` (the
/// virtual example names a second server, `search`, which the test supplies).
#[test]
fn the_mcp_guide_server_examples_pass_check() {
    let guide = std::fs::read_to_string(repo_root().join("docs/mcp.md")).expect("guide");
    let mut tables = Vec::new();
    let mut current: Option<String> = None;
    for line in guide.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == "toml" => current = Some(String::new()),
            (Some(_), Some(_)) => tables.extend(current.take()),
            (Some(body), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    let examples: Vec<&String> = tables
        .iter()
        .filter(|t| t.starts_with("[mcp_servers.") || t.starts_with("[mcp_virtual."))
        .collect();
    assert!(examples.len() >= 2, "{tables:?}");
    let dir = tempfile::tempdir().expect("dir");
    let mut gateway = examples
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    gateway.push_str("\n[mcp_servers.search]\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:3002/mcp\"\n");
    std::fs::write(dir.path().join("gateway.toml"), &gateway).expect("write");
    let out = Command::new(crate::common::bin())
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{gateway}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Team Scope and API Key Scope (reference spec 3.4 step 6): a server scoped to a team serves
/// that team's keys and the keys listed, and refuses every other key with 403 `mcp_not_allowed`
/// even when its MCP Access grant names the server.
#[tokio::test]
async fn a_scoped_server_serves_only_the_teams_and_keys_in_its_scope() {
    // Nothing listens upstream: a key in scope gets past authorize and fails at the call (502),
    // a key out of scope never gets that far (403).
    let gw = Gateway::start(&everything_policy(
        free_port(),
        "\n[mcp_servers.scoped]\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\nteams = [\"blue\"]\n",
    ));
    let teams = Command::new(crate::common::bin())
        .args([
            "teams",
            "create",
            "--id",
            "blue",
            "--name",
            "Blue",
            "--database",
            &gw.db_url,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tollgate");
    assert!(teams.status.success(), "{teams:?}");
    let (_, blue) = gw.create_key_with(&["--mcp", "*", "--team", "blue"]);
    let (_, other) = gw.create_key_with(&["--mcp", "*"]);
    let url = gw.url("/v1/mcp/scoped");
    let body = rpc(1, "tools/list", json!({}));
    let refused = post(&url, &other, None, &body).await;
    crate::common::expect_error(refused, 403, "mcp_not_allowed").await;
    // Inside a JSON-RPC exchange the failure is a JSON-RPC error carrying the gateway's code.
    let admitted = post(&url, &blue, None, &body).await;
    assert_eq!(admitted.status(), 502);
    let answer: Value = admitted.json().await.expect("JSON-RPC error");
    assert_eq!(
        answer["error"]["data"]["code"], "mcp_upstream_error",
        "{answer}"
    );
    let rows = wait_mcp_rows(&gw, |rows| rows.len() >= 2).await;
    let denied = rows
        .iter()
        .find(|r| r["error_code"] == "mcp_not_allowed")
        .expect("the refusal is recorded");
    assert_eq!(denied["denied_stage"], "authorize");
    assert!(
        denied["decisions"].to_string().contains("mcp_scope"),
        "{denied}"
    );
}
