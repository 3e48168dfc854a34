//! The state every request shares: the live policy set, the store, caches, the usage sink, the
//! upstream client, deployment health and the ledger. The server builds it, the pipeline reads
//! it; it imports neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin_auth::AdminAuth;
use crate::health::HealthRegistry;
use crate::policy::Policies;
use crate::spend::ledger::Ledger;
use crate::store::Store;
use crate::store::key_cache::KeyCache;
use crate::store::usage_writer::UsageSink;

/// State shared by every request.
pub struct AppState {
    /// The live policy set.
    pub policies: Arc<Policies>,
    /// The store.
    pub store: Store,
    /// Cached key lookups.
    pub keys: Arc<KeyCache>,
    /// Usage record hand-off.
    pub usage: UsageSink,
    /// The upstream HTTP client.
    pub http: reqwest::Client,
    /// Deployment health, fed by the call stage, read by routing.
    pub health: HealthRegistry,
    /// The admin token (`/admin/*`, and `/metrics` when protected) and its failure backoff;
    /// without a token the admin endpoints are disabled.
    pub admin: AdminAuth,
    /// Budgets and quotas.
    pub ledger: Arc<Ledger>,
    /// Whether `POST /admin/test/clock` may shift the clock (tests only).
    pub test_clock: bool,
    /// The MCP gateway's per-replica state (limits, tokens, session keys, stdio children).
    pub mcp: Arc<crate::mcp::Runtime>,
    /// Request, token, cost and MCP figures for `/metrics`, fed by the record stage.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set when the shutdown grace period is over: open streams end.
    pub streams_end: StreamsEnd,
}

/// Tells the streams still open when the shutdown grace period is over to end: each sends its
/// client a family-native error event, records itself (`stream_status = "shutdown"`) and
/// settles with what was streamed, so the process can exit with nothing lost.
#[derive(Clone, Debug)]
pub struct StreamsEnd(watch::Receiver<bool>);

impl StreamsEnd {
    /// The signal and its sender (`send(true)` ends the streams).
    pub fn channel() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once the streams must end (never, if the sender is gone without signalling).
    pub fn signalled(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.0.clone();
        Box::pin(async move {
            if rx.wait_for(|end| *end).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The gateway request id, set by the middleware on every request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);
