//! The batched background writer for usage records: never on the request path, never lossy.
//!
//! Requests hand records to a bounded channel ([`UsageSink::record`] never blocks the caller:
//! when the channel is momentarily full the hand-off moves to its own task). One writer task
//! drains whatever has queued (up to [`BATCH`] rows, waiting at most [`LINGER`] for more) into one transaction, retrying with backoff
//! while the database is unavailable. The writer exits after every sink is dropped and the queue
//! is empty, so awaiting its handle on shutdown flushes everything.
//!
//! A record may carry the counter charges of its settlement (the embedded ledger settles in
//! memory): they are written in the same transaction as the record, so the stored spend always
//! equals the sum of the stored usage rows' charges, whatever crashes when.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ledger::Settlement;
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
    tx: mpsc::Sender<Entry>,
    stats: Arc<WriterStats>,
}

/// One record and the counter charges of its settlement.
#[derive(Debug)]
struct Entry {
    record: UsageRecord,
    charges: Vec<Settlement>,
}

impl UsageSink {
    /// Hands a record to the writer without waiting.
    pub fn record(&self, record: UsageRecord) {
        self.record_charged(record, Vec::new());
    }

    /// Hands a record and the counter charges of its settlement to the writer, which commits
    /// them together.
    pub fn record_charged(&self, record: UsageRecord, charges: Vec<Settlement>) {
        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Entry { record, charges }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = tx.send(record).await {
                        tracing::error!(request_id = %e.0.record.request_id, "usage writer stopped before a record could be queued");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(entry)) => {
                tracing::error!(request_id = %entry.record.request_id, "usage writer stopped before a record could be queued");
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

async fn run(store: Store, mut rx: mpsc::Receiver<Entry>, stats: Arc<WriterStats>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = Vec::with_capacity(BATCH);
    let mut charges = Vec::new();
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
        for entry in batch.drain(..) {
            records.push(entry.record);
            charges.extend(entry.charges);
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let written = if charges.is_empty() {
                store.insert_usage(&records).await
            } else {
                store.insert_usage_charged(&records, &charges).await
            };
            match written {
                Ok(()) => {
                    stats
                        .written
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rows = records.len(), error = %e, "usage flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        records.clear();
        charges.clear();
    }
    tracing::debug!(
        written = stats.written.load(Ordering::Relaxed),
        "usage writer drained"
    );
}
