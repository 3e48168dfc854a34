//! The end-to-end harness: the real `tollgate` binary on a free loopback port, a mock upstream
//! provider in this process, the CLI for keys, and the SQLite store read back for assertions.

pub mod otlp;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockHandle};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqlitePoolOptions;

/// The admin token every test gateway is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The provider credential the gateway injects (from its environment).
pub const PROVIDER_KEY: &str = "sk-provider-secret-for-tests-0001";

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// An HTTP client for calling the gateway.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Starts a mock upstream with `config`.
pub async fn mock(config: MockConfig) -> MockHandle {
    mock_upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("mock upstream")
}

/// The policy directory most tests use: a mock provider and models steering its behaviour.
pub fn standard_policy(mock: &MockHandle) -> String {
    let base = mock.base_url();
    format!(
        r#"
[server]
max_body_bytes = 65536

[providers.mock]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 10000

# The same mock with a short timeout, for the timeout tests (the mock's slow models take 2 s).
[providers.mock-short]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 1000

[providers.off]
family = "openai"
base_url = "{base}"
enabled = false

[providers.dead]
family = "openai"
base_url = "http://127.0.0.1:1/v1"

[providers.nokey]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_SURELY_UNSET_VARIABLE" }}

[models.chat]
provider = "mock"
upstream_model = "upstream-chat-v1"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}

[models.other]
provider = "mock"
upstream_model = "upstream-other"

[models.embed]
provider = "mock"
upstream_model = "upstream-embed"
pricing = {{ input_per_mtok = 0.02 }}

[models.fail-500]
provider = "mock"
upstream_model = "mock-500"

[models.fail-400]
provider = "mock"
upstream_model = "mock-400"

[models.slow]
provider = "mock-short"
upstream_model = "mock-slow"

[models.stall]
provider = "mock-short"
upstream_model = "mock-stall-stream"

[models.slow-stream]
provider = "mock"
upstream_model = "mock-slow-stream"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}

[models.disabled]
provider = "off"

[models.unreachable]
provider = "dead"

[models.keyless]
provider = "nokey"
"#
    )
}

/// A temp dir holding `policies/gateway.toml` plus `files` (relative path, content).
fn policy_dir(gateway_toml: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    std::fs::write(policies.join("gateway.toml"), gateway_toml).expect("write gateway.toml");
    for (path, content) in files {
        let path = policies.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write policy file");
    }
    (dir, policies)
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The store URL.
    pub db_url: String,
    /// The policy directory and database live here.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway on a policy directory containing `gateway_toml`.
    pub fn start(gateway_toml: &str) -> Gateway {
        Self::start_with(gateway_toml, &[], &[])
    }

    /// Starts the gateway on a policy directory with `gateway_toml` plus `files` (relative path,
    /// content), passing `args` to `serve`.
    pub fn start_with(gateway_toml: &str, files: &[(&str, &str)], args: &[&str]) -> Gateway {
        let (dir, policies) = policy_dir(gateway_toml, files);
        Self::start_on(dir, &policies, args)
    }

    /// Like [`Gateway::start_with`], on the store at `db_url` (e.g. a PostgreSQL database shared
    /// by several gateways).
    pub fn start_db(
        gateway_toml: &str,
        files: &[(&str, &str)],
        args: &[&str],
        db_url: &str,
    ) -> Gateway {
        let (dir, policies) = policy_dir(gateway_toml, files);
        let mut gw = Self::start_on_db(dir, &policies, args, db_url.to_string());
        gw.db_url = db_url.to_string();
        gw
    }

    /// Starts the gateway on an existing policy directory, with its store in a new temp dir.
    pub fn start_dir(policies: &Path) -> Gateway {
        Self::start_on(tempfile::tempdir().expect("tempdir"), policies, &[])
    }

    /// The policy directory of a gateway started with [`Gateway::start_with`].
    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// `GET /admin/policies` with the admin token.
    pub async fn admin_policies(&self) -> Value {
        http()
            .get(self.url("/admin/policies"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    fn start_on(dir: tempfile::TempDir, policies: &Path, args: &[&str]) -> Gateway {
        let db_url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        Self::start_on_db(dir, policies, args, db_url)
    }

    /// Like [`Gateway::start_with`], with extra environment variables for the gateway.
    pub fn start_env(
        gateway_toml: &str,
        files: &[(&str, &str)],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let (dir, policies) = policy_dir(gateway_toml, files);
        let db_url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        Self::start_on_db_env(dir, &policies, args, db_url, env)
    }

    fn start_on_db(
        dir: tempfile::TempDir,
        policies: &Path,
        args: &[&str],
        db_url: String,
    ) -> Gateway {
        Self::start_on_db_env(dir, policies, args, db_url, &[])
    }

    fn start_on_db_env(
        dir: tempfile::TempDir,
        policies: &Path,
        args: &[&str],
        db_url: String,
        env: &[(&str, &str)],
    ) -> Gateway {
        let (child, base) = Self::spawn(dir.path(), policies, args, &db_url, env);
        Gateway {
            child,
            base,
            db_url,
            dir,
        }
    }

    /// Starts the gateway again on the same policy directory, store and data directory (its
    /// usage journal) after the previous process exited.
    pub fn restart(&mut self, args: &[&str]) {
        assert!(
            self.child.try_wait().expect("try_wait").is_some(),
            "the gateway is still running"
        );
        let (child, base) = Self::spawn(self.dir.path(), &self.policies(), args, &self.db_url, &[]);
        self.child = child;
        self.base = base;
    }

    fn spawn(
        data_dir: &Path,
        policies: &Path,
        args: &[&str],
        db_url: &str,
        env: &[(&str, &str)],
    ) -> (Child, String) {
        let mut child = Command::new(bin())
            .args(["serve", "--policies"])
            .arg(policies)
            .args(["--listen", "127.0.0.1:0", "--database", db_url])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("TG_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tollgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            assert!(Instant::now() < deadline, "gateway did not start");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("tollgate listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!("gateway exited before listening"),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        (child, base)
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The text of `/metrics` (unprotected).
    pub async fn metrics_text(&self) -> String {
        let response = http().get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// `/metrics` parsed into `name{labels}` -> value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                (
                    series.to_string(),
                    value.parse::<f64>().expect("sample value"),
                )
            })
            .collect()
    }

    /// Runs `tollgate keys ARGS --database DB`.
    pub fn keys(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("keys")
            .args(args)
            .args(["--database", &self.db_url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tollgate keys")
    }

    /// Creates a key granted `models`; returns (id, secret).
    pub fn create_key(&self, models: &str) -> (String, String) {
        self.create_key_with(&["--models", models])
    }

    /// Creates a key with extra `keys create` arguments; returns (id, secret).
    pub fn create_key_with(&self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["create", "--name", "test", "--json"];
        args.extend_from_slice(extra);
        let out = self.keys(&args);
        assert!(
            out.status.success(),
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("keys create --json output");
        (
            v["id"].as_str().expect("id").to_string(),
            v["secret"].as_str().expect("secret").to_string(),
        )
    }

    /// Runs `tollgate budgets ARGS --database DB`.
    pub fn budgets(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("budgets")
            .args(args)
            .args(["--database", &self.db_url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tollgate budgets")
    }

    /// An admin GET returning JSON.
    pub async fn admin_get(&self, path: &str) -> Value {
        http()
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    /// An admin request with a JSON body, returning (status, JSON).
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let response = http()
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Kills the process without letting it clean up (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every usage record, oldest first, as JSON objects.
    pub async fn usage_rows(&self) -> Vec<Value> {
        read_usage(&self.db_url).await
    }

    /// Waits until at least `n` usage rows exist (the writer is asynchronous), then returns all.
    pub async fn wait_rows(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.usage_rows().await;
            if rows.len() >= n {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} usage rows appeared",
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The usage row of one request id, waiting for it to be written.
    pub async fn row_for(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(row) = self
                .usage_rows()
                .await
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "no usage row for request {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads every usage row of the store at `db_url`.
pub async fn read_usage(db_url: &str) -> Vec<Value> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await
        .expect("open store");
    let rows = sqlx::query(
        "SELECT request_id, key_id, team, method, endpoint, stream, requested_model, served_model, \
         upstream_model, provider, status, error_code, denied_stage, latency_us, ttfb_us, input_tokens, \
         output_tokens, cached_input_tokens, reasoning_tokens, total_tokens, cost_nanos, provider_usage, \
         stream_status, decisions, route, endpoint_family, upstream_family, cache_creation_tokens \
         FROM usage_records ORDER BY received_at_ms, id",
    )
    .fetch_all(&pool)
    .await
    .expect("query usage");
    pool.close().await;
    rows.iter()
        .map(|r| {
            let text = |name: &str| -> Value {
                r.try_get::<Option<String>, _>(name)
                    .expect(name)
                    .map_or(Value::Null, Value::String)
            };
            let int = |name: &str| -> Value {
                r.try_get::<Option<i64>, _>(name)
                    .expect(name)
                    .map_or(Value::Null, Value::from)
            };
            serde_json::json!({
                "request_id": text("request_id"), "key_id": text("key_id"), "team": text("team"),
                "method": text("method"), "endpoint": text("endpoint"), "stream": int("stream"),
                "requested_model": text("requested_model"), "served_model": text("served_model"),
                "upstream_model": text("upstream_model"), "provider": text("provider"),
                "status": int("status"), "error_code": text("error_code"), "denied_stage": text("denied_stage"),
                "latency_us": int("latency_us"), "ttfb_us": int("ttfb_us"),
                "input_tokens": int("input_tokens"), "output_tokens": int("output_tokens"),
                "cached_input_tokens": int("cached_input_tokens"), "reasoning_tokens": int("reasoning_tokens"),
                "total_tokens": int("total_tokens"), "cost_nanos": int("cost_nanos"),
                "provider_usage": text("provider_usage"), "stream_status": text("stream_status"),
                "decisions": text("decisions"), "route": text("route"),
                "endpoint_family": text("endpoint_family"), "upstream_family": text("upstream_family"),
                "cache_creation_tokens": int("cache_creation_tokens"),
            })
        })
        .collect()
}

/// One series of [`Gateway::metrics`]; panics when it is absent.
pub fn sample(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {metrics:#?}"))
}

/// Events POSTed to a webhook receiver on a free loopback port.
pub type WebhookEvents = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// Starts a webhook receiver that keeps every JSON event POSTed to it; its URL and the events.
pub async fn webhook_sink() -> (String, WebhookEvents) {
    let events = WebhookEvents::default();
    let sink = events.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(event): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(event);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hook, events)
}

/// A chat request body for `model`.
pub fn chat_body(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

/// Posts [`chat_body`]`(model)` to the gateway's chat completions endpoint with `secret`.
pub async fn post_chat(gw: &Gateway, secret: &str, model: &str) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&chat_body(model))
        .send()
        .await
        .expect("chat request")
}

/// The request id header of a response.
pub fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// Asserts an OpenAI-shaped gateway error and returns the request id.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status for expected {code}"
    );
    let id = request_id(&response);
    assert_eq!(id.len(), 32, "request id is 32 hex chars");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    id
}

/// Path of the repository root.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Prints a skip notice that `cargo test` shows even for passing tests.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// A fresh PostgreSQL database for `test`, or `None` (the test printed that it was skipped and
/// why) when PostgreSQL is not available.
pub fn postgres_or_skip(test: &str) -> Option<PgDatabase> {
    match PgDatabase::create() {
        Ok(db) => Some(db),
        Err(why) => {
            skip(test, &format!("PostgreSQL is not available: {why}"));
            None
        }
    }
}

/// A PostgreSQL database created for one test and dropped after it.
pub struct PgDatabase {
    /// Connection URL.
    pub url: String,
    name: String,
}

/// The PostgreSQL server the tests use: `TOLLGATE_TEST_PG` (`postgres://USER@HOST:PORT`, no
/// database; default `postgres://postgres@127.0.0.1:5432`). Point it at a closed port to see
/// every PostgreSQL test print `SKIPPED`.
fn pg_server() -> String {
    std::env::var("TOLLGATE_TEST_PG")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The address of [`pg_server`] (for a [`TcpProxy`] in front of it).
pub fn pg_addr() -> SocketAddr {
    let server = pg_server();
    let host = server.rsplit('@').next().unwrap_or(&server);
    let host = host.trim_start_matches("postgres://");
    host.parse()
        .expect("TOLLGATE_TEST_PG names HOST:PORT as an IP address and port")
}

fn psql(sql: &str) -> Result<(), String> {
    let admin = format!("{}/test", pg_server());
    let out = Command::new("psql")
        .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|e| format!("psql is not available: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl PgDatabase {
    /// Creates a fresh database, or explains why PostgreSQL is not usable here.
    pub fn create() -> Result<PgDatabase, String> {
        let name = format!("tg_test_{}", uuid::Uuid::new_v4().simple());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            url: format!("{}/{name}", pg_server()),
            name,
        })
    }

    /// The same database reached through another host:port (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let server = pg_server();
        let user = server
            .rsplit_once('@')
            .map_or("postgres://postgres", |(user, _)| user);
        format!("{user}@{addr}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A TCP proxy that can be cut and restored, to take a store away from a running gateway.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, c) = (down.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        });
        TcpProxy {
            addr,
            down,
            connections,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A policy directory with one provider of every family on `mock` and models steering it:
/// `claude*` (anthropic), `gemini*` (gemini), `vllm-chat` (vllm), `azure-chat` (azure),
/// `gpt` (openai), plus `extra` appended (more models or groups).
pub fn family_policy(mock: &MockHandle, extra: &str) -> String {
    let base = mock.base_url();
    let root = format!("http://{}", mock.addr);
    format!(
        r#"
[providers.anthropic]
family = "anthropic"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[providers.gemini]
family = "gemini"
base_url = "{root}/v1beta"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[providers.vllm]
family = "vllm"
base_url = "{root}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[providers.azure]
family = "azure"
base_url = "{root}"
api_version = "2024-10-21"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[providers.openai]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[models.claude]
provider = "anthropic"
upstream_model = "claude-mock"
pricing = {{ input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3, cache_write_per_mtok = 3.75 }}

[models.claude-cache]
provider = "anthropic"
upstream_model = "mock-cache"
pricing = {{ input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3, cache_write_per_mtok = 3.75 }}

[models.claude-429]
provider = "anthropic"
upstream_model = "mock-429"

[models.claude-500]
provider = "anthropic"
upstream_model = "mock-500"

[models.claude-stream-error]
provider = "anthropic"
upstream_model = "mock-stream-error"
pricing = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}

[models.gemini-flash]
provider = "gemini"
upstream_model = "gemini-mock"
pricing = {{ input_per_mtok = 0.3, output_per_mtok = 2.5, cached_input_per_mtok = 0.075 }}

[models.gemini-429]
provider = "gemini"
upstream_model = "mock-429"

[models.vllm-chat]
provider = "vllm"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"

[models.azure-chat]
provider = "azure"
upstream_model = "my-gpt4o-deployment"

[models.gpt]
provider = "openai"
upstream_model = "upstream-chat-v1"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}

# The built guardrails live outside the test's policy directory.
[plugins]
allowed_dirs = [{dist:?}]
{extra}
"#,
        dist = repo_root().join("plugins/dist").display().to_string()
    )
}

/// Runs a Python script with `env` off the test's runtime (the mock upstream runs on it);
/// returns its stdout, failing the test with both outputs if it fails. `module` must be
/// importable (`./scripts/test` installs the SDKs).
pub async fn run_python(module: &str, script: &str, env: &[(&str, &str)]) -> String {
    let module = module.to_string();
    let script = script.to_string();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || run_python_blocking(&module, &script, &env))
        .await
        .expect("python runner")
}

fn run_python_blocking(module: &str, script: &str, env: &[(String, String)]) -> String {
    let have = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "the Python module '{module}' is missing: run ./scripts/test, which installs it"
    );
    let mut command = Command::new("python3");
    command.args(["-c", script]);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
