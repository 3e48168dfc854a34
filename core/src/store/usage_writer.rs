//! The batched background writer for usage records: never on the request path, never lossy.
//!
//! Requests hand records to a bounded channel ([`UsageSink::record`] never blocks the caller:
//! when the channel is momentarily full the hand-off moves to its own task). One writer task
//! drains whatever has queued (up to [`BATCH`] rows, waiting at most [`LINGER`] for more) into one transaction, retrying with backoff
//! while the database is unavailable. The writer exits after every sink is dropped and the queue
//! is empty, so awaiting its handle on shutdown flushes everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Store, UsageRecord};

/// Rows per transaction at most.
pub const BATCH: usize = 500;
/// How long the writer waits for more rows before committing a partial batch.
pub const LINGER: Duration = Duration::from_millis(50);
/// Queue capacity before hand-offs wait.
const QUEUE: usize = 65_536;

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records handed to the sink.
    pub enqueued: AtomicU64,
    /// Records committed to the store.
    pub written: AtomicU64,
    /// Failed flush attempts (each retried).
    pub failed_flushes: AtomicU64,
}

/// The request-side handle.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageRecord>,
    stats: Arc<WriterStats>,
}

impl UsageSink {
    /// Hands a record to the writer without waiting.
    pub fn record(&self, record: UsageRecord) {
        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = tx.send(record).await {
                        tracing::error!(request_id = %e.0.request_id, "usage writer stopped before a record could be queued");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(record)) => {
                tracing::error!(request_id = %record.request_id, "usage writer stopped before a record could be queued");
            }
        }
    }

    /// Writer counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

/// Starts the writer; await the handle after dropping every sink to flush.
pub fn spawn(store: Store) -> (UsageSink, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(WriterStats::default());
    let handle = tokio::spawn(run(store, rx, stats.clone()));
    (UsageSink { tx, stats }, handle)
}

async fn run(store: Store, mut rx: mpsc::Receiver<UsageRecord>, stats: Arc<WriterStats>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Linger briefly so a moderate rate still writes many rows per transaction.
        let linger = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(linger, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.insert_usage(&batch).await {
                Ok(()) => {
                    stats
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rows = batch.len(), error = %e, "usage flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
    tracing::debug!(
        written = stats.written.load(Ordering::Relaxed),
        "usage writer drained"
    );
}
