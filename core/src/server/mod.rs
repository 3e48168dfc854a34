//! The HTTP server: the router, the request-id middleware and graceful shutdown.

pub mod admin;
pub mod anthropic;
pub mod client_ip;
pub mod gemini;
pub mod listener;
pub mod mcp;
pub mod openai;
pub mod ops;
pub mod threads;
pub mod unified;
pub mod vllm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin_auth::AdminAuth;
use crate::error::{ErrorDetail, Family, GatewayError};
use crate::health::HealthRegistry;
use crate::policy::Policies;
use crate::policy::watch::{self as policy_watch, Trigger};
use crate::spend::ledger::Ledger;
use crate::state::{AppState, RequestId};
use crate::store::Store;
use crate::store::key_cache::KeyCache;
use crate::store::usage_writer;

/// Builds the router.
pub fn router(app: Arc<AppState>) -> Router {
    let admin_v1 = crate::admin::router(app.clone());
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/llm/chat", post(unified::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/responses", post(openai::responses))
        .route("/v1/images/generations", post(openai::images_generations))
        .route("/v1/models", get(openai::list_models))
        // GET is OpenAI's model lookup, POST Gemini's `{model}:{method}` (google-genai 3.x).
        .route(
            "/v1/models/{target}",
            get(openai::get_model).post(gemini::dispatch),
        )
        .route("/v1beta/models/{target}", post(gemini::dispatch))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/vllm/{*rest}", any(vllm::dispatch))
        .route("/v1/mcp", any(mcp::no_server))
        .route("/v1/mcp/", any(mcp::no_server))
        .route(
            "/v1/mcp/{slug}",
            get(mcp::server).post(mcp::server).delete(mcp::server),
        )
        .route(
            "/v1/mcp/{slug}/{*path}",
            get(mcp::server_path)
                .post(mcp::server_path)
                .delete(mcp::server_path),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/key/info", get(ops::key_info))
        .route("/v1/validate-key", get(ops::key_info))
        .route("/admin/policies", get(admin::policies))
        .route("/admin/policies/reload", post(admin::reload))
        .route(
            "/admin/budgets",
            get(admin::list_budgets).put(admin::set_budget),
        )
        .route(
            "/admin/budgets/{id}",
            get(admin::show_budget).delete(admin::delete_budget),
        )
        .route("/admin/test/clock", post(admin::test_clock))
        .nest_service("/admin/v1", admin_v1)
        .merge(crate::ui::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(crate::ui::no_store_admin))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

async fn not_found(request: Request) -> Response {
    GatewayError::NotFound(format!("{} {}", request.method(), request.uri().path()))
        .render(Family::OpenAi)
}

async fn method_not_allowed(request: Request) -> Response {
    GatewayError::MethodNotAllowed(format!("{} {}", request.method(), request.uri().path()))
        .render(Family::OpenAi)
}

/// Gives every request an id (32 hex chars), returns it as `x-request-id`, logs the outcome
/// with the error's internal detail (which the client's body does not carry). Time-ordered
/// (UUIDv7), so the usage table's `request_id` index grows at its end instead of at random
/// places (a random id touched a different index page per row).
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let elapsed_us = started.elapsed().as_micros();
    let (code, detail) = match response.extensions_mut().remove::<ErrorDetail>() {
        Some(e) => (e.code, e.detail),
        None => (String::new(), String::new()),
    };
    if status.is_server_error() {
        tracing::warn!(request_id = %id, %method, %path, status = status.as_u16(), elapsed_us, %code, %detail, "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, %path, status = status.as_u16(), elapsed_us, %code, %detail, "request");
    }
    response
}

/// How long shutdown waits for pending usage records (and the settlements they carry) to be
/// written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The store `tollgate serve` starts with.
pub enum StoreSource {
    /// Opened and migrated.
    Open(Store),
    /// A PostgreSQL store that did not answer at start (its URL): the gateway serves `/healthz`,
    /// answers `/readyz` and every other request with 503 (`store_unavailable`), and connects
    /// and migrates in the background, with backoff, until the store answers.
    Connect(String),
}

/// Options of `tollgate serve`.
pub struct ServeOptions {
    /// Policy directory.
    pub policies: Arc<Policies>,
    /// Store.
    pub store: StoreSource,
    /// Listen address.
    pub listen: SocketAddr,
    /// Watch the policy directory for changes (otherwise only SIGHUP and the admin API reload).
    pub watch: bool,
    /// Bearer token for `/admin/*` (at least [`crate::admin_auth::MIN_TOKEN_LEN`] characters).
    pub admin_token: Option<String>,
    /// `/metrics` needs the admin token too.
    pub protect_metrics: bool,
    /// Allow `POST /admin/test/clock` (end-to-end tests of windows only).
    pub test_clock: bool,
    /// Connection and read limits.
    pub http_limits: listener::HttpLimits,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: client_ip::TrustedProxies,
    /// The usage journal (records the store could not take yet).
    pub journal: usage_writer::JournalConfig,
    /// How long shutdown waits for in-flight requests and streams before it ends them.
    pub shutdown_grace: Duration,
}

/// What building the app state needs besides the store.
struct AppParts {
    policies: Arc<Policies>,
    local: SocketAddr,
    /// The admin token (checked when `serve` starts) and whether `/metrics` needs it.
    admin: (Option<String>, bool),
    test_clock: bool,
    journal: usage_writer::JournalConfig,
    streams_end: crate::state::StreamsEnd,
    stop: watch::Receiver<bool>,
}

/// The store-backed half of a serving gateway: its background tasks, stopped in order on
/// shutdown.
struct Running {
    store: Store,
    instance_id: String,
    mcp: Arc<crate::mcp::Runtime>,
    watcher: tokio::task::JoinHandle<()>,
    ledger_watcher: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

/// Builds the app state on an open store (replaying a usage journal a previous run left, then
/// the ledger) and starts its background tasks; returns the router and what shutdown stops.
/// On an error nothing is left running (the usage writer has flushed and let its journal go).
async fn start_app(store: Store, parts: &AppParts) -> anyhow::Result<(Router, Running)> {
    let keys_version = store.keys_version().await?;
    let keys = Arc::new(KeyCache::new(store.clone(), keys_version));
    let instance_id = uuid::Uuid::now_v7().simple().to_string();
    store
        .register_instance(&instance_id, &parts.local.to_string(), keys_version)
        .await?;
    // Before the ledger: a journal left by a previous run carries charges its counters need.
    let (usage, writer) = usage_writer::start(store.clone(), &parts.journal)
        .await
        .map_err(|e| match (e, store.sqlite_path()) {
            (crate::store::journal::JournalError::Locked(_), Some(db)) => anyhow::anyhow!(
                "another tollgate gateway is already serving on {}: SQLite holds budgets in one \
                 gateway's memory, so it serves one gateway; run several replicas on PostgreSQL",
                db.display()
            ),
            (e, _) => e.into(),
        })?;
    let rest = async {
        let http = crate::upstream::client()?;
        let ledger = Ledger::start(store.clone(), http.clone()).await?;
        let mcp = Arc::new(crate::mcp::Runtime::new(
            store.mcp_session_secret().await?.as_bytes(),
        ));
        anyhow::Ok((http, ledger, mcp))
    };
    let (http, ledger, mcp) = match rest.await {
        Ok(parts) => parts,
        Err(e) => {
            // The writer exits once its sink is gone; its journal lock goes with it.
            drop(usage);
            let _ = writer.await;
            return Err(e);
        }
    };
    let admin = match AdminAuth::new(parts.admin.0.as_deref(), parts.admin.1) {
        Ok(admin) => admin,
        Err(e) => {
            drop(usage);
            let _ = writer.await;
            return Err(anyhow::Error::msg(e));
        }
    };
    // The tokenizer is not loaded here: holds take the prompt's byte bound, so it loads on
    // first use (a budget close to its limit, a stream cut before its usage); see
    // `spend::estimate::tokenizer`.
    let app = Arc::new(AppState {
        policies: parts.policies.clone(),
        store: store.clone(),
        keys: keys.clone(),
        usage,
        http,
        health: HealthRegistry::default(),
        admin,
        ledger: ledger.clone(),
        test_clock: parts.test_clock,
        mcp: mcp.clone(),
        metrics: Arc::default(),
        streams_end: parts.streams_end.clone(),
    });
    let watcher = tokio::spawn(keys.watch(instance_id.clone(), parts.stop.clone()));
    let ledger_watcher = tokio::spawn(ledger.clone().watch(parts.stop.clone()));
    drop(ledger);
    tokio::spawn(crate::admin::audit_reloads(app.clone(), parts.stop.clone()));
    Ok((
        router(app),
        Running {
            store,
            instance_id,
            mcp,
            watcher,
            ledger_watcher,
            writer,
        },
    ))
}

impl Running {
    /// After the listener is done (every connection ended, the router gone) and the stop
    /// signal is sent: waits for the background tasks, flushes the usage writer, deregisters.
    async fn finish(self) {
        let Running {
            store,
            instance_id,
            mcp,
            watcher,
            ledger_watcher,
            writer,
        } = self;
        drop(mcp);
        let _ = watcher.await;
        let _ = ledger_watcher.await;
        // Every sink clone lives in the app state and in-flight responses, all gone now; the
        // settlements of the shared store ride with their usage rows.
        let flushed = tokio::time::timeout(SHUTDOWN_GRACE, writer).await;
        if flushed.is_err() {
            tracing::error!("usage writer did not finish flushing within the grace period");
        }
        if let Err(e) = store.deregister_instance(&instance_id).await {
            tracing::warn!(error = %e, "could not deregister this instance");
        }
        store.close().await;
    }
}

/// First and longest wait between attempts to reach a store that did not answer at start.
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(250);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(10);

/// Whether a failure to start on a store is worth retrying (the store is away or busy), rather
/// than a URL, credential, schema or journal problem that needs a person.
fn retryable(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<crate::store::StoreError>()
        .is_some_and(|e| {
            crate::store::is_unreachable(e)
                || crate::store::usage_rows::is_outage(e, crate::store::Backend::Postgres)
        })
}

/// Connects to the store at `url`, migrates it and builds the app with backoff until it
/// answers, then hands the router to `starting` (the gateway is ready from then on). Returns
/// `Ok(None)` if the gateway stops first, and an error that retrying cannot fix (after sending
/// it to `fatal`, which stops the gateway).
async fn connect_in_background(
    url: String,
    parts: AppParts,
    starting: Arc<ops::Starting>,
    fatal: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Option<Running>> {
    let mut stop = parts.stop.clone();
    let mut backoff = CONNECT_RETRY_MIN;
    loop {
        let attempt = async {
            let store = Store::open(&url).await?;
            start_app(store, &parts).await
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
        };
        match outcome {
            Ok((router, running)) => {
                starting.ready(router);
                tracing::info!("the store answered and is migrated: the gateway is ready");
                return Ok(Some(running));
            }
            Err(e) if !retryable(&e) => {
                let _ = fatal.send(());
                return Err(e.context("the store answered but the gateway cannot start on it"));
            }
            Err(e) => {
                let attempts = starting.failed();
                // The error stays in the log (passwords in URLs redacted by the store's errors).
                tracing::warn!(attempts, error = %e, retry_in_ms = backoff.as_millis() as u64, "the store is not reachable yet");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
        }
        backoff = (backoff * 2).min(CONNECT_RETRY_MAX);
    }
}

/// Runs the gateway until SIGTERM / SIGINT, then drains requests and flushes usage records.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        policies,
        store,
        listen,
        watch: watch_files,
        admin_token,
        protect_metrics,
        test_clock,
        http_limits,
        trusted_proxies,
        journal,
        shutdown_grace,
    } = options;
    // A bad admin configuration stops the start here, before anything listens.
    AdminAuth::new(admin_token.as_deref(), protect_metrics).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let (end_streams, streams_end) = crate::state::StreamsEnd::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let parts = AppParts {
        policies: policies.clone(),
        local,
        admin: (admin_token, protect_metrics),
        test_clock,
        journal,
        streams_end,
        stop: stop_rx.clone(),
    };
    // A store that answers at last but cannot be served on stops the gateway.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<()>();
    let (router, running, connecting) = match store {
        StoreSource::Open(store) => {
            let (router, running) = start_app(store, &parts).await?;
            (router, Some(running), None)
        }
        StoreSource::Connect(url) => {
            let backend = if url.starts_with("sqlite:") {
                "sqlite"
            } else {
                "postgres"
            };
            let starting = Arc::new(ops::Starting::new(backend, policies.clone()));
            let router = ops::starting_router(starting.clone());
            tracing::warn!(
                "the store did not answer at start: serving 503 store_unavailable and connecting in the background"
            );
            let task = tokio::spawn(connect_in_background(url, parts, starting, fatal_tx));
            (router, None, Some(task))
        }
    };
    let reloader = tokio::spawn(reload_on_sighup(policies.clone(), stop_rx.clone()));
    let file_watcher = watch_files
        .then(|| tokio::spawn(policy_watch::watch_dir(policies.clone(), stop_rx.clone())));

    let snapshot = policies.snapshot();
    tracing::info!(
        %local,
        generation = snapshot.generation,
        models = snapshot.models.len(),
        providers = snapshot.providers.len(),
        ready = running.is_some(),
        "tollgate serving"
    );
    // A machine-readable line on stdout for scripts and tests.
    println!("tollgate listening on http://{local}");
    tollgate_alloc::serving();

    // Returns once every connection has ended (the last ones cut at the end of the grace
    // period); the router, and with it the app state's usage sink, is gone then.
    let threads = match http_limits.connection_threads {
        0 => None,
        n => Some(Arc::new(threads::ConnectionThreads::start(n)?)),
    };
    threads::publish(threads.clone());
    listener::serve(
        listener,
        threads.as_deref(),
        router,
        http_limits,
        trusted_proxies,
        async {
            tokio::select! {
                () = shutdown_signal() => {}
                Ok(()) = fatal_rx => {}
            }
        },
        shutdown_grace,
        end_streams,
    )
    .await;
    let _ = stop_tx.send(true);
    let mut failed = None;
    let running = match connecting {
        Some(task) => match task.await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                failed = Some(e);
                None
            }
            Err(e) => {
                failed = Some(anyhow::anyhow!("connecting to the store failed: {e}"));
                None
            }
        },
        None => running,
    };
    if let Some(running) = running {
        // Stdio MCP children never outlive the gateway.
        running.mcp.stdio.shutdown();
        running.finish().await;
    }
    let _ = reloader.await;
    if let Some(file_watcher) = file_watcher {
        let _ = file_watcher.await;
    }
    // Connections have ended and usage is flushed: what still runs on the connection threads
    // (nothing, normally) ends with them.
    threads::publish(None);
    if let Some(threads) = threads.and_then(Arc::into_inner) {
        threads.stop().await;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `SIGHUP` reloads the policy directory; a set that fails to load is rejected whole.
async fn reload_on_sighup(policies: Arc<Policies>, mut stop: watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return,
        }
        policy_watch::reload(&policies, Trigger::Signal).await;
    }
}
