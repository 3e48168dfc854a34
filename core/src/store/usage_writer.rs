//! The batched background writer for usage records: never on the request path, never lossy.
//!
//! Requests hand records to a bounded channel ([`UsageSink::record`] never blocks the caller and
//! never spawns: when the channel is full the record goes to the on-disk [`Journal`] instead).
//! One writer task drains whatever has queued (up to [`BATCH`] rows, waiting at most [`LINGER`],
//! [`LINGER_SHARED`] on PostgreSQL, for more) into one transaction.
//!
//! - **Bad rows**: every record is sanitised first ([`super::sanitize`]). A batch the database
//!   still refuses is split in halves until the refused row is alone; the rest are written, and
//!   the refused row is kept in `usage_dead_letters` (or, if even that fails, in
//!   `dead-letters.jsonl` in the journal directory) with the error.
//! - **Store away**: a batch that fails because the store is unreachable goes to the journal
//!   (one fsync per batch), and so does every later batch while the journal holds anything, so
//!   order is kept. The journal is replayed into the store, oldest first, with backoff until the
//!   store answers, then cleared; rows are idempotent by id, so a replay interrupted at any point
//!   writes each row (and its charges) exactly once. A journal left by a previous run is
//!   replayed before the gateway serves.
//!
//! The writer exits after every sink is dropped and the queue is empty, so awaiting its handle
//! on shutdown flushes everything (to the store, or to the journal when the store is away).
//!
//! A record may carry the counter charges of its settlement (the embedded ledger settles in
//! memory): they are written in the same transaction as the record, so the stored spend always
//! equals the sum of the stored usage rows' charges, whatever crashes when.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::journal::{Journal, JournalError, Next};
use super::ledger::Settlement;
use super::usage_rows::is_outage;
use super::{Store, StoreError, UsageEntry, UsageRecord};

/// Rows per transaction at most.
pub const BATCH: usize = 500;
/// How long the writer waits for more rows before committing a partial batch. It sleeps it out
/// unless a full batch queues first: the sink that queues the [`BATCH`]th record wakes it (once
/// per batch; waiting on the channel would wake it once per record, and looking at the queue
/// every 5 ms, as it did, woke it 200 times a second under any load).
pub const LINGER: Duration = Duration::from_millis(50);
/// [`LINGER`] on the shared store (PostgreSQL): shorter, so each batch is smaller. Where the
/// server shares CPUs with the replicas, 50 ms of rows arrived as one burst of server work
/// (about 15 ms of a core at 6 k rows/s) that the requests in flight waited behind. With 10 ms,
/// two replicas' p99 fell to about 4.5x their p50 from 5-6x (`docs/performance.md`, fourteenth
/// round). The price is more transactions at low rates (a few rows each), each of them six round
/// trips; the load's own batches still hold tens of rows.
pub const LINGER_SHARED: Duration = Duration::from_millis(10);

/// How long the writer lingers for more rows on `backend`.
fn linger(backend: super::Backend) -> Duration {
    match backend {
        super::Backend::Sqlite => LINGER,
        super::Backend::Postgres => LINGER_SHARED,
    }
}
/// Queue capacity; beyond it records go to the journal.
const QUEUE: usize = 65_536;
/// First and longest wait between attempts to replay the journal into a store that is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the journal lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory (`usage.log`, `lock`, `dead-letters.jsonl`).
    pub dir: PathBuf,
    /// Size limit in bytes; records beyond it are lost (counted and logged).
    pub max_bytes: u64,
}

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records handed to the sink.
    pub enqueued: AtomicU64,
    /// Records committed to the store (replayed ones included).
    pub written: AtomicU64,
    /// Failed write attempts (each retried, isolated or journaled).
    pub failed_flushes: AtomicU64,
    /// Records in the queue now (shared with the embedded store's rows connection, which yields
    /// its CPU only while fewer than a batch wait).
    pub queued: Arc<AtomicI64>,
    /// Records appended to the journal (store away or queue full).
    pub journaled: AtomicU64,
    /// Journaled records written to the store afterwards.
    pub replayed: AtomicU64,
    /// Bytes in the journal now.
    pub journal_bytes: AtomicU64,
    /// Records with repaired fields (NUL, length, JSON).
    pub sanitized: AtomicU64,
    /// Records the store refused, kept as dead letters.
    pub dead_letters: AtomicU64,
    /// Records that could be kept nowhere (journal full or unwritable): logged in full.
    pub lost: AtomicU64,
    /// Whether the last write found the store away.
    pub store_down: AtomicBool,
    /// How long each write of a batch (or of a part of one) to the store took.
    pub batch_time: crate::metrics::Histogram,
}

impl WriterStats {
    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> u64 {
        u64::try_from(self.queued.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// State shared by the sinks and the writer task.
#[derive(Debug)]
struct Shared {
    stats: Arc<WriterStats>,
    journal: Journal,
    /// Raised when the queue reaches a full batch: ends the writer's linger.
    full: tokio::sync::Notify,
}

impl Shared {
    /// Appends to the journal (no fsync); what does not fit is counted lost and logged whole.
    fn keep(&self, entries: Vec<UsageEntry>) {
        if entries.is_empty() {
            return;
        }
        let (kept, error) = self.journal.append(&entries);
        self.stats
            .journaled
            .fetch_add(kept as u64, Ordering::Relaxed);
        self.stats
            .journal_bytes
            .store(self.journal.len(), Ordering::Relaxed);
        if let Some(error) = error {
            for entry in &entries[kept..] {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    request_id = %entry.record.request_id,
                    error = %error,
                    entry = %serde_json::to_string(entry).unwrap_or_default(),
                    "usage record lost: the store is away and the journal cannot take it"
                );
            }
        }
    }

    fn sync(&self) {
        if let Err(e) = self.journal.sync() {
            tracing::error!(error = %e, "usage journal fsync failed");
        }
    }
}

/// The request-side handle.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEntry>,
    shared: Arc<Shared>,
}

impl UsageSink {
    /// Hands a record to the writer without waiting.
    pub fn record(&self, record: UsageRecord) {
        self.record_charged(record, Vec::new());
    }

    /// Hands a record and the counter charges of its settlement to the writer, which commits
    /// them together.
    pub fn record_charged(&self, record: UsageRecord, charges: Vec<Settlement>) {
        let stats = &self.shared.stats;
        stats.enqueued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(UsageEntry { record, charges }) {
            Ok(()) => {
                // Exactly one sender sees the queue reach a full batch.
                if stats.queued.fetch_add(1, Ordering::Relaxed) + 1 == BATCH as i64 {
                    self.shared.full.notify_one();
                }
            }
            // The writer is behind: the journal takes it (no task, no unbounded memory); the
            // writer replays it after the queue.
            Err(mpsc::error::TrySendError::Full(entry)) => self.shared.keep(vec![entry]),
            // The writer is gone (shutdown timed out): the next start replays the journal.
            Err(mpsc::error::TrySendError::Closed(entry)) => {
                self.shared.keep(vec![entry]);
                self.shared.sync();
            }
        }
    }

    /// Writer counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.shared.stats
    }
}

/// Opens the journal, replays what a previous run left in it (before the embedded ledger reads
/// its counters), and starts the writer; await the handle after dropping every sink to flush.
pub async fn start(
    store: Store,
    config: &JournalConfig,
) -> Result<(UsageSink, JoinHandle<()>), JournalError> {
    let journal = Journal::open(&config.dir, config.max_bytes)?;
    let shared = Arc::new(Shared {
        stats: Arc::new(WriterStats::default()),
        journal,
        full: tokio::sync::Notify::new(),
    });
    if !shared.journal.is_empty() {
        tracing::info!(
            bytes = shared.journal.len(),
            dir = %config.dir.display(),
            "replaying the usage journal of a previous run"
        );
        if replay(&store, &shared).await.is_err() {
            tracing::warn!("the store is away; the usage journal will be replayed when it answers");
        }
    }
    if let Some(rows) = store.sqlite_rows() {
        rows.watch_backlog(shared.stats.queued.clone());
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = tokio::spawn(run(store, rx, shared.clone()));
    Ok((UsageSink { tx, shared }, handle))
}

async fn run(store: Store, mut rx: mpsc::Receiver<UsageEntry>, shared: Arc<Shared>) {
    let stats = &shared.stats;
    let linger = linger(store.backend());
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = RETRY_MIN;
    let mut retry_at = Instant::now();
    loop {
        // Wait for records; while the journal holds some, no longer than the next replay.
        let open = if shared.journal.is_empty() {
            rx.recv_many(&mut batch, BATCH).await > 0
        } else {
            !matches!(
                tokio::time::timeout_at(retry_at, rx.recv_many(&mut batch, BATCH)).await,
                Ok(0)
            )
        };
        if !batch.is_empty() {
            // Linger briefly so a moderate rate still writes many rows per transaction, until a
            // full batch has queued ([`LINGER`]). A wake-up left over from a batch that filled
            // while this one was being written only ends one linger early.
            if batch.len() < BATCH && open {
                if batch.len() + rx.len() < BATCH {
                    tokio::select! {
                        () = tokio::time::sleep(linger) => {}
                        () = shared.full.notified() => {}
                    }
                }
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
            }
            stats
                .queued
                .fetch_sub(batch.len() as i64, Ordering::Relaxed);
            let entries = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if shared.journal.is_empty() {
                if let Err(rest) = write_isolating(&store, entries, &shared).await {
                    shared.keep(rest);
                    shared.sync();
                    if !stats.store_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            dir = %shared.journal.dir().display(),
                            "the store is away: usage records go to the journal until it answers"
                        );
                    }
                    retry_at = Instant::now() + backoff;
                }
            } else {
                // Behind what the journal holds, to keep the order.
                shared.keep(entries);
                shared.sync();
            }
        }
        if !shared.journal.is_empty() && (Instant::now() >= retry_at || !open) {
            match replay(&store, &shared).await {
                Ok(()) => {
                    backoff = RETRY_MIN;
                    if stats.store_down.swap(false, Ordering::Relaxed) {
                        tracing::info!("the store answers again: the usage journal is replayed");
                    }
                }
                Err(()) => {
                    backoff = (backoff * 2).min(RETRY_MAX);
                    retry_at = Instant::now() + backoff;
                }
            }
        }
        if !open {
            break;
        }
    }
    shared.sync();
    if !shared.journal.is_empty() {
        tracing::warn!(
            bytes = shared.journal.len(),
            dir = %shared.journal.dir().display(),
            "usage records wait in the journal; the next start replays them"
        );
    }
    tracing::debug!(
        written = stats.written.load(Ordering::Relaxed),
        "usage writer drained"
    );
}

/// Writes `entries` (sanitised first), isolating rows the database refuses; on an outage,
/// returns the entries not yet written, in order.
async fn write_isolating(
    store: &Store,
    mut entries: Vec<UsageEntry>,
    shared: &Shared,
) -> Result<(), Vec<UsageEntry>> {
    let stats = &shared.stats;
    for entry in &mut entries {
        let changed = super::sanitize::sanitize(&mut entry.record);
        if !changed.is_empty() {
            stats.sanitized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(request_id = %entry.record.request_id, fields = ?changed, "usage record repaired before storing");
        }
    }
    let mut pending = VecDeque::from([entries]);
    while let Some(chunk) = pending.pop_front() {
        let started = Instant::now();
        let (mut chunk, written) = store.write_usage_owned(chunk).await;
        stats
            .batch_time
            .observe_us(i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX));
        let error = match written {
            Ok(_) => {
                stats
                    .written
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                continue;
            }
            Err(e) => e,
        };
        stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
        let away =
            is_outage(&error, store.backend()) || (chunk.len() == 1 && store.ping().await.is_err());
        if away {
            tracing::warn!(rows = chunk.len(), error = %error, "usage write failed: the store is away");
            chunk.extend(pending.into_iter().flatten());
            return Err(chunk);
        }
        if chunk.len() > 1 {
            // Refused: split until the refused row is alone, writing the rest.
            let right = chunk.split_off(chunk.len() / 2);
            pending.push_front(right);
            pending.push_front(chunk);
            continue;
        }
        if let Some(entry) = chunk.pop() {
            dead_letter(store, entry, &error, shared).await;
        }
    }
    Ok(())
}

/// Keeps a row the store refused where a person can read it.
async fn dead_letter(store: &Store, entry: UsageEntry, error: &StoreError, shared: &Shared) {
    let stats = &shared.stats;
    stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    let error = error.to_string();
    tracing::error!(
        request_id = %entry.record.request_id,
        id = %entry.record.id,
        error = %error,
        "usage row refused by the store; kept in usage_dead_letters"
    );
    let Err(table) = store.insert_dead_letter(&entry, &error).await else {
        return;
    };
    let path = shared.journal.dir().join("dead-letters.jsonl");
    let line = serde_json::json!({
        "failed_at_ms": crate::clock::now_ms(), "error": error,
        "table_error": table.to_string(), "entry": entry,
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
    if let Err(e) = written {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %path.display(), error = %e, entry = %line, "usage dead letter could not be kept; it is in this log line only");
    }
}

/// Writes the journal into the store, oldest first, and clears it. `Err` when the store is away
/// (the journal is kept; a later replay starts again from its beginning: rows are idempotent).
async fn replay(store: &Store, shared: &Shared) -> Result<(), ()> {
    shared.sync();
    let stats = &shared.stats;
    let journal = &shared.journal;
    let mut reader = match journal.reader() {
        Ok(reader) => reader,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the usage journal");
            return Err(());
        }
    };
    loop {
        let mut chunk = Vec::with_capacity(BATCH);
        let mut corrupt = None;
        while chunk.len() < BATCH {
            match reader.next_entry(journal.len()) {
                Next::Entry(entry) => chunk.push(*entry),
                Next::End => break,
                Next::Corrupt(at) => {
                    corrupt = Some(at);
                    break;
                }
            }
        }
        let done = chunk.is_empty();
        if !done {
            let n = chunk.len() as u64;
            write_isolating(store, chunk, shared)
                .await
                .map_err(|_| ())?;
            stats.replayed.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(at) = corrupt {
            let bytes = journal.len().saturating_sub(at);
            match journal.set_aside_and_clear(at) {
                Ok(aside) => tracing::error!(
                    bytes,
                    path = %aside.display(),
                    "part of the usage journal is unreadable (torn or corrupt); copied aside"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set aside the unreadable part of the usage journal");
                    return Err(());
                }
            }
            break;
        }
        if done {
            match journal.clear_if(reader.offset()) {
                Ok(true) => break,
                // Appended meanwhile: keep reading.
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot clear the usage journal");
                    return Err(());
                }
            }
        }
    }
    stats.journal_bytes.store(journal.len(), Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, model: &str, cost: i64) -> UsageEntry {
        UsageEntry {
            record: UsageRecord {
                id: id.into(),
                request_id: format!("req-{id}"),
                method: "POST".into(),
                endpoint: "/v1/chat/completions".into(),
                requested_model: Some(model.into()),
                decisions: "[]".into(),
                cost_nanos: cost,
                ..UsageRecord::default()
            },
            charges: vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual: cost,
                lease: None,
                hold: None,
            }],
        }
    }

    async fn setup() -> (tempfile::TempDir, Store, JournalConfig) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let config = JournalConfig {
            dir: dir.path().join("journal"),
            max_bytes: 1 << 20,
        };
        (dir, store, config)
    }

    async fn spent(store: &Store) -> i64 {
        store
            .latest_counters()
            .await
            .unwrap()
            .iter()
            .map(|c| c.2)
            .sum()
    }

    #[tokio::test]
    async fn a_refused_row_is_isolated_from_its_batch_and_kept_as_a_dead_letter() {
        let (_dir, store, config) = setup().await;
        sqlx::raw_sql(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON usage_records \
             WHEN NEW.requested_model = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let (sink, handle) = start(store.clone(), &config).await.unwrap();
        for i in 0..40 {
            let model = if i == 17 { "poison" } else { "chat" };
            let e = entry(&format!("r{i}"), model, 10);
            sink.record_charged(e.record, e.charges);
        }
        let stats = sink.stats().clone();
        drop(sink);
        handle.await.unwrap();
        assert_eq!(store.usage_count().await.unwrap(), 39);
        // The refused row's charge is not applied: stored spend = the sum of stored costs.
        assert_eq!(spent(&store).await, 390);
        let letters = store.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].id, "r17");
        assert!(letters[0].error.contains("poison"), "{}", letters[0].error);
        let kept: UsageEntry = serde_json::from_str(&letters[0].entry).unwrap();
        assert_eq!(kept.charges[0].actual, 10);
        assert_eq!(stats.dead_letters.load(Ordering::Relaxed), 1);
        assert_eq!(stats.written.load(Ordering::Relaxed), 39);
    }

    #[tokio::test]
    async fn a_journal_is_replayed_at_start_and_a_second_replay_changes_nothing() {
        let (_dir, store, config) = setup().await;
        let entries: Vec<_> = (0..5).map(|i| entry(&format!("j{i}"), "chat", 3)).collect();
        for _ in 0..2 {
            // The same entries twice: a crash after the commit, before the journal was cleared.
            let journal = Journal::open(&config.dir, config.max_bytes).unwrap();
            journal.append(&entries);
            journal.sync().unwrap();
            drop(journal);
            let (sink, handle) = start(store.clone(), &config).await.unwrap();
            // Replayed before `start` returns (the embedded ledger reads its counters next).
            assert_eq!(store.usage_count().await.unwrap(), 5);
            assert_eq!(spent(&store).await, 15);
            drop(sink);
            handle.await.unwrap();
        }
        let journal = Journal::open(&config.dir, config.max_bytes).unwrap();
        assert!(journal.is_empty());
    }

    /// The clock is paused and the runtime never idle here, so no timer can fire: a full batch
    /// must be written because it filled, not because the writer looked again after a tick.
    #[tokio::test]
    async fn a_full_batch_is_written_at_once_without_a_timer() {
        let (_dir, store, config) = setup().await;
        let (sink, handle) = start(store.clone(), &config).await.unwrap();
        let stats = sink.stats().clone();
        // Paused after the pool opened (its acquire timeout would fire at once on a paused,
        // idle clock) and resumed before it is used again.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let e = entry("f0", "chat", 1);
        sink.record_charged(e.record, e.charges);
        // The writer takes the first record and starts to linger.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for i in 1..BATCH {
            let e = entry(&format!("f{i}"), "chat", 1);
            sink.record_charged(e.record, e.charges);
        }
        // Busy (never idle, so the paused clock stays put) until the batch is written; the
        // write itself runs on the blocking pool in real time.
        let mut rounds = 0;
        while stats.written.load(Ordering::Relaxed) < BATCH as u64 {
            rounds += 1;
            assert!(
                rounds < 5_000,
                "the full batch was not written without a timer firing ({} rows written)",
                stats.written.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(1));
            tokio::task::yield_now().await;
        }
        assert_eq!(tokio::time::Instant::now(), started, "no timer fired");
        tokio::time::resume();
        drop(sink);
        handle.await.unwrap();
        assert_eq!(store.usage_count().await.unwrap(), BATCH as i64);
    }

    #[tokio::test]
    async fn a_full_queue_sends_records_to_the_journal_without_a_task_per_record() {
        let (_dir, store, config) = setup().await;
        let (sink, handle) = start(store.clone(), &config).await.unwrap();
        // On this single-threaded runtime the writer cannot run while the loop fills the queue.
        let n = QUEUE + 100;
        for i in 0..n {
            let e = entry(&format!("q{i}"), "chat", 1);
            sink.record_charged(e.record, e.charges);
        }
        let stats = sink.stats().clone();
        assert_eq!(stats.queue_depth(), QUEUE as u64);
        assert_eq!(stats.journaled.load(Ordering::Relaxed), 100);
        assert!(stats.journal_bytes.load(Ordering::Relaxed) > 0);
        drop(sink);
        handle.await.unwrap();
        assert_eq!(store.usage_count().await.unwrap(), n as i64);
        assert_eq!(spent(&store).await, n as i64);
        assert_eq!(stats.lost.load(Ordering::Relaxed), 0);
    }
}
