//! The embedded store's usage rows, written on a SQLite connection of their own.
//!
//! Through the pool (`sqlx::Any`) a usage row cost the gateway about 85 k instructions, of which
//! SQLite's own work was 35 k: each of its 43 values was converted twice and copied into an
//! `Arc`, every statement was a message to the driver's worker thread and back, and a multi-row
//! insert inside a transaction keeps a statement journal (every page it touches is copied first,
//! in case it aborts half-way). Here one prepared single-row insert (no statement journal) binds
//! each record's borrowed values in one `BEGIN IMMEDIATE` transaction per batch (or per part of
//! a batch, below) together with the counter charges those rows carry: the same statements, the
//! same idempotence, and each row all-or-nothing with its charges, as in the pool's transaction
//! ([`Store::write_usage`]).
//!
//! **Which thread writes.** A batch that lingered (fewer than a full [`BATCH`] of rows: the
//! gateway is not saturated) is written on the rows connection's own background thread, which
//! runs in Linux's idle scheduling class (`SCHED_IDLE`). A CPU running only idle-class work
//! counts as free when the kernel places a waking thread, and any other thread preempts it at
//! once, so the batch (a few milliseconds of SQLite work every [`LINGER`]) fills the gaps
//! between requests instead of delaying the requests that wake beside it. With `wrk -c1`
//! against the passthrough scenario it took p99 from 2.1–2.35 ms to 0.7–1.4 ms in five
//! interleaved pairs (`docs/performance.md`, "Twelfth round").
//!
//! Idle-class work is starved when the machine is saturated, so that thread never holds on to a
//! batch: it checks every [`CHUNK`] rows whether the batch is overdue ([`HURRY_AFTER`]), commits
//! what it has written and hands the rest to the blocking pool, which writes it at normal
//! priority; for the next [`PRESSED_FOR_MS`] every batch goes to the pool, as does a full batch
//! at any time. Rows are idempotent by id, so a batch split this way writes each row and its
//! charges exactly once, each in the same transaction as its row.
//!
//! **A batch on the pool yields between chunks while the writer keeps up.** At normal priority
//! the kernel lets a running thread finish its slice (0.75 ms × 2 by default on two CPUs) before
//! a thread woken on the same CPU runs, so a full batch (a few milliseconds of SQLite work) held
//! the requests of a connection thread behind it. After every [`CHUNK`] rows the pool's
//! transaction calls `sched_yield`, which lets whatever is runnable on that CPU go first; the
//! work and the transaction are the same. It does so only while fewer than a full batch of
//! records wait behind this one: yielding under saturation let the backlog grow (up to 4,908
//! rows against 781 at passthrough c=32) and cost CPU, so a writer that has fallen behind
//! writes on without yielding until it has caught up. Bench, governed at c=16, both orders:
//! Δp99 +2.18 / +1.73 ms against +3.08 / +3.34 ms without yielding (`docs/performance.md`,
//! "Thirteenth round").
//!
//! [`Store::write_usage`]: super::Store::write_usage
//! [`BATCH`]: super::usage_writer::BATCH
//! [`LINGER`]: super::usage_writer::LINGER

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::ledger::{
    CHARGE_COUNTER_SQL, ChargeTotals, DELETE_HOLD_SQL, LEASE_AMOUNT_SQL, LEASE_CHARGE_SQL,
    LOCK_COUNTER_SQL, Released, SETTLE_HOLD_SQL, charged_from_lease, released_by_holds,
};
use super::usage_rows::{charge_totals, holds_to_settle};
use super::{Backend, StoreError, USAGE_COLUMNS, USAGE_INSERT, UsageEntry, UsageRecord};
use crate::clock::now_ms;

/// How long a write waits for the database's write lock (as the pool's connections do).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows a transaction writes between looks at whether its batch is overdue (the background
/// thread) or offers of its CPU (the blocking pool): about 0.1–0.2 ms of work.
const CHUNK: usize = 16;
/// How long a batch may take on the background thread before the rest goes to the blocking
/// pool (a batch of a few hundred rows takes a few milliseconds when the thread gets a CPU).
const HURRY_AFTER: Duration = Duration::from_millis(25);
/// How long batches skip the background thread after one was overdue there.
const PRESSED_FOR_MS: i64 = 1_000;

/// The rows connection of one embedded store: opened on first use, opened again after a failed
/// write (the file may have been the trouble), closed with the store.
#[derive(Debug)]
pub(crate) struct SqliteRows {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    closed: AtomicBool,
    /// The background thread's queue: started on first use; `None` where it cannot run.
    lane: OnceLock<Option<mpsc::Sender<Job>>>,
    /// Until when (milliseconds since the epoch) batches skip the background thread.
    pressed_until: AtomicI64,
    /// How often a transaction on the pool gave up its CPU between chunks.
    yields: AtomicU64,
    /// The usage writer's queue depth (records waiting behind the batch being written), once a
    /// writer watches this store.
    backlog: OnceLock<Arc<AtomicI64>>,
}

/// How a transaction shares its CPU between chunks of [`CHUNK`] rows.
#[derive(Clone, Copy)]
enum Pace<'a> {
    /// On the idle-class thread, which any other thread preempts: stops once the batch is
    /// overdue (`hurry` raised), committing the chunks written.
    UntilHurried(&'a AtomicBool),
    /// On the blocking pool, at normal priority: yields the CPU to whatever else is runnable
    /// (counted in the first), while the backlog (the second, if watched) is under a batch.
    Yielding(&'a AtomicU64, Option<&'a AtomicI64>),
}

/// One batch for the background thread.
struct Job {
    rows: Arc<SqliteRows>,
    entries: Arc<Vec<UsageEntry>>,
    /// Raised when the batch is overdue: commit what is written and stop.
    hurry: Arc<AtomicBool>,
    done: oneshot::Sender<std::thread::Result<Result<Written, StoreError>>>,
}

/// What one transaction wrote: the first `handled` entries, of which `new` were not stored yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    handled: usize,
    new: u64,
}

impl SqliteRows {
    /// The rows connection for the database file `path`; `None` for an in-memory database (a
    /// second connection would see a database of its own).
    pub(crate) fn for_file(path: &Path) -> Option<Self> {
        let name = path.to_string_lossy();
        if name.is_empty() || name.contains(":memory:") || name.contains("mode=memory") {
            return None;
        }
        Some(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
            closed: AtomicBool::new(false),
            lane: OnceLock::new(),
            pressed_until: AtomicI64::new(0),
            yields: AtomicU64::new(0),
            backlog: OnceLock::new(),
        })
    }

    /// The background thread's queue, if a batch of `rows` rows should go there: not for a
    /// full batch, nor while batches are overdue there.
    fn lane_for(&self, rows: usize) -> Option<mpsc::Sender<Job>> {
        if rows >= super::usage_writer::BATCH
            || now_ms() < self.pressed_until.load(Ordering::Relaxed)
        {
            return None;
        }
        self.lane.get_or_init(start_lane).clone()
    }

    /// Lets transactions on the pool see the usage writer's queue depth (they stop yielding
    /// while a full batch waits). The first writer to call this is the one watched.
    pub(crate) fn watch_backlog(&self, queued: Arc<AtomicI64>) {
        let _ = self.backlog.set(queued);
    }

    /// Sends batches to the blocking pool for the next [`PRESSED_FOR_MS`].
    fn press(&self) {
        self.pressed_until
            .store(now_ms() + PRESSED_FOR_MS, Ordering::Relaxed);
    }

    /// Closes the connection; later writes fail as a closed pool's do (the store is away).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Writes `entries` and their charges in one transaction, all of them or, once `hurry` is
    /// raised, the chunks written so far. Without `hurry` (on the blocking pool) the
    /// transaction yields its CPU between chunks.
    fn write(
        &self,
        entries: &[UsageEntry],
        hurry: Option<&AtomicBool>,
    ) -> Result<Written, StoreError> {
        let pace = match hurry {
            Some(hurry) => Pace::UntilHurried(hurry),
            None => Pace::Yielding(&self.yields, self.backlog.get().map(Arc::as_ref)),
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(open(&self.path)?),
        };
        let written = write_on(conn, entries, pace);
        if written.is_err() {
            // The transaction rolled back when it dropped; start the next write afresh.
            *slot = None;
        }
        written
    }
}

/// Writes `entries` and hands them back with the outcome, whatever happened: a panic while
/// writing comes back as an error for these rows (the writer then isolates and keeps them),
/// never as rows lost. A batch that lingered goes to the background thread first (module docs);
/// what that thread does not write in time, and every other batch, is written on the blocking
/// pool.
pub(crate) async fn write_blocking(
    rows: Arc<SqliteRows>,
    entries: Vec<UsageEntry>,
) -> (Vec<UsageEntry>, Result<u64, StoreError>) {
    let Some(lane) = rows.lane_for(entries.len()) else {
        return on_pool(rows, entries).await;
    };
    let (mut entries, written) = on_lane(&rows, &lane, entries).await;
    match written {
        // The thread is gone: the pool writes the batch.
        None => on_pool(rows, entries).await,
        Some(Ok(w)) if w.handled >= entries.len() => (entries, Ok(w.new)),
        Some(Ok(w)) => {
            let rest = entries.split_off(w.handled);
            let (rest, written) = on_pool(rows, rest).await;
            entries.extend(rest);
            // Should the rest fail, the writer retries or journals the whole batch: the rows
            // committed here are skipped by id, with their charges, when written again.
            (entries, written.map(|new| new + w.new))
        }
        Some(Err(e)) => (entries, Err(e)),
    }
}

/// Runs a batch on the background thread, raising its hurry flag once it is overdue. `None`:
/// the thread is gone and wrote nothing of it.
async fn on_lane(
    rows: &Arc<SqliteRows>,
    lane: &mpsc::Sender<Job>,
    entries: Vec<UsageEntry>,
) -> (Vec<UsageEntry>, Option<Result<Written, StoreError>>) {
    let entries = Arc::new(entries);
    let hurry = Arc::new(AtomicBool::new(false));
    let (done, mut result) = oneshot::channel();
    let job = Job {
        rows: rows.clone(),
        entries: entries.clone(),
        hurry: hurry.clone(),
        done,
    };
    let outcome = if lane.send(job).is_err() {
        Err(())
    } else {
        let finished = tokio::select! {
            finished = &mut result => finished,
            () = tokio::time::sleep(HURRY_AFTER) => {
                hurry.store(true, Ordering::Relaxed);
                rows.press();
                tracing::debug!(rows = entries.len(), "usage rows overdue on the background thread; the rest goes to the blocking pool");
                result.await
            }
        };
        finished.map_err(|_| ())
    };
    // The thread has dropped its reference (it does before answering, and a dead thread's
    // stack is gone): this is the last one.
    let entries = Arc::try_unwrap(entries).unwrap_or_else(|shared| shared.as_ref().clone());
    let written = match outcome {
        Err(()) => None,
        Ok(Ok(written)) => Some(written),
        Ok(Err(panic)) => Some(Err(panicked(panic.as_ref()))),
    };
    (entries, written)
}

/// The background thread: writes the batches it is sent, at idle priority where it can.
fn start_lane() -> Option<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let started = std::thread::Builder::new()
        // At most 15 bytes: Linux cuts longer thread names.
        .name("tollgate-usage".into())
        .spawn(move || {
            if let Err(e) = lower_priority() {
                tracing::debug!(error = %e, "the usage rows thread runs at normal priority");
            }
            // Ends when the rows connection (the only sender) is dropped.
            while let Ok(job) = queue.recv() {
                let Job {
                    rows,
                    entries,
                    hurry,
                    done,
                } = job;
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rows.write(&entries, Some(&hurry))
                }));
                drop((rows, entries));
                let _ = done.send(written);
            }
        });
    match started {
        Ok(_) => Some(jobs),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the usage rows thread; rows are written on the blocking pool");
            None
        }
    }
}

/// Puts the calling thread in the idle scheduling class (Linux; unprivileged: a thread may
/// always lower its own priority).
#[cfg(target_os = "linux")]
fn lower_priority() -> Result<(), String> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| format!("{e:?}"))
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> Result<(), String> {
    Err("the idle scheduling class is Linux's".into())
}

/// Writes `entries` on the blocking pool.
async fn on_pool(
    rows: Arc<SqliteRows>,
    entries: Vec<UsageEntry>,
) -> (Vec<UsageEntry>, Result<u64, StoreError>) {
    let entries = Arc::new(entries);
    let task_entries = entries.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rows.write(&task_entries, None)
        }));
        drop(task_entries);
        written
    })
    .await;
    let written = match joined {
        Ok(Ok(written)) => written.map(|w| w.new),
        Ok(Err(panic)) => Err(panicked(panic.as_ref())),
        // The runtime is shutting down: the rows were not written; the store counts as away,
        // so the writer keeps them in its journal.
        Err(_) => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
    };
    // The task has finished or was dropped: this is the last reference.
    let entries = Arc::try_unwrap(entries).unwrap_or_else(|shared| shared.as_ref().clone());
    (entries, written)
}

/// A panic while writing, as an error for the rows (the writer isolates and keeps them).
fn panicked(panic: &(dyn std::any::Any + Send)) -> StoreError {
    StoreError::Corrupt {
        what: "usage_records",
        detail: format!(
            "writing the rows panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ),
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The pool's settings (`Store::open`); the file is in WAL mode already (the pool set it).
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// The single-row usage insert, skipping an id already stored.
fn insert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        super::values_sql(USAGE_INSERT, 1, USAGE_COLUMNS, Backend::Sqlite)
            + " ON CONFLICT (id) DO NOTHING"
    })
}

/// One transaction: the rows (paced by `pace` every [`CHUNK`] rows, after the first chunk), the
/// holds they settle and the counters they charge.
fn write_on(
    conn: &mut Connection,
    entries: &[UsageEntry],
    pace: Pace<'_>,
) -> Result<Written, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut new = Vec::with_capacity(entries.len());
    {
        let mut insert = tx.prepare_cached(insert_sql())?;
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 && i % CHUNK == 0 {
                match pace {
                    Pace::UntilHurried(hurry) if hurry.load(Ordering::Relaxed) => break,
                    Pace::UntilHurried(_) => {}
                    Pace::Yielding(yields, backlog) => {
                        if backlog.is_none_or(|waiting| {
                            waiting.load(Ordering::Relaxed) < super::usage_writer::BATCH as i64
                        }) {
                            std::thread::yield_now();
                            yields.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            new.push(insert_row(&mut insert, &entry.record)? == 1);
        }
    }
    let entries = &entries[..new.len()];
    let now = now_ms();
    let mut released = Released::new();
    let mut settled_before: Vec<&str> = Vec::new();
    for hold in holds_to_settle(entries, &new) {
        if !settle_hold(&tx, hold, now, &mut released)? {
            settled_before.push(hold);
        }
    }
    let totals = charge_totals(entries, &new, &released, &settled_before);
    charge_counters(&tx, totals, &released)?;
    tx.commit()?;
    Ok(Written {
        handled: entries.len(),
        new: new.iter().filter(|new| **new).count() as u64,
    })
}

/// Binds one record in [`USAGE_INSERT`]'s column order and runs the insert; the rows changed
/// (0: the id was stored already).
fn insert_row(insert: &mut rusqlite::Statement<'_>, r: &UsageRecord) -> rusqlite::Result<usize> {
    insert.execute(rusqlite::params_from_iter(super::usage_cells(r)))
}

/// [`super::ledger::settle_hold`] on the rows connection.
fn settle_hold(
    conn: &Connection,
    hold_id: &str,
    now_ms: i64,
    released: &mut Released,
) -> rusqlite::Result<bool> {
    if conn
        .prepare_cached(SETTLE_HOLD_SQL)?
        .execute(params![hold_id, now_ms])?
        == 0
    {
        return Ok(false);
    }
    let mut delete = conn.prepare_cached(DELETE_HOLD_SQL)?;
    let mut removed = delete.query(params![hold_id])?;
    while let Some(row) = removed.next()? {
        let counter: String = row.get(0)?;
        let window: i64 = row.get(1)?;
        let amount: i64 = row.get(2)?;
        *released.entry((counter, window)).or_default() += amount;
    }
    Ok(true)
}

/// [`super::ledger::charge_counters`] on the rows connection.
fn charge_counters(
    conn: &Connection,
    totals: ChargeTotals<'_>,
    released: &Released,
) -> rusqlite::Result<()> {
    for ((counter, window, lease), used) in totals {
        let mut unreserved = released_by_holds(released, counter, window, lease);
        if let Some(lease) = lease {
            conn.prepare_cached(LOCK_COUNTER_SQL)?
                .execute(params![counter, window])?;
            let amount = conn
                .prepare_cached(LEASE_AMOUNT_SQL)?
                .query_row(params![counter, window, lease], |row| row.get::<_, i64>(0));
            match amount {
                Ok(amount) => {
                    unreserved = charged_from_lease(used, amount);
                    conn.prepare_cached(LEASE_CHARGE_SQL)?
                        .execute(params![unreserved, counter, window, lease])?;
                }
                Err(rusqlite::Error::QueryReturnedNoRows) => {}
                Err(e) => return Err(e),
            }
        }
        conn.prepare_cached(CHARGE_COUNTER_SQL)?
            .execute(params![counter, window, used, unreserved])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::ledger::Settlement;
    use crate::store::usage_rows::is_outage;

    fn entry(id: &str, actual: i64) -> UsageEntry {
        UsageEntry {
            record: UsageRecord {
                id: id.into(),
                request_id: id.into(),
                method: "POST".into(),
                endpoint: "/v1/chat/completions".into(),
                decisions: "[]".into(),
                ..UsageRecord::default()
            },
            charges: vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual,
                lease: None,
                hold: None,
            }],
        }
    }

    #[test]
    fn an_in_memory_database_has_no_rows_connection() {
        assert!(SqliteRows::for_file(Path::new(":memory:")).is_none());
        assert!(SqliteRows::for_file(Path::new("")).is_none());
        assert!(SqliteRows::for_file(Path::new("file::memory:")).is_none());
        assert!(SqliteRows::for_file(Path::new("/tmp/x/t.db")).is_some());
    }

    #[tokio::test]
    async fn rows_and_charges_are_written_once_and_a_closed_connection_hands_them_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        let rows = store
            .sqlite_rows()
            .expect("a file store has a rows connection")
            .clone();
        let batch = vec![entry("r1", 5), entry("r2", 7)];
        let (batch, written) = write_blocking(rows.clone(), batch).await;
        assert_eq!(written.expect("write"), 2);
        // Replayed with one new row: only the new row and its charge land.
        let mut replay = batch;
        replay.push(entry("r3", 11));
        let (replay, written) = write_blocking(rows.clone(), replay).await;
        assert_eq!(written.expect("replay"), 1);
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(state.used, 23);
        // The pool sees what the rows connection committed.
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(stored, 3);

        // After close, the rows come back whole with an error the writer treats as an outage
        // (it journals them), not as a refusal.
        rows.close();
        let (back, written) = write_blocking(rows, replay).await;
        let error = written.expect_err("closed");
        assert!(is_outage(&error, Backend::Sqlite), "{error}");
        let ids: Vec<&str> = back.iter().map(|e| e.record.id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2", "r3"]);
    }

    #[tokio::test]
    async fn a_batch_on_the_pool_yields_between_chunks_and_one_on_the_idle_thread_does_not() {
        let (_dir, store, rows) = file_store().await;
        // 100 rows: chunks start at rows 16, 32, 48, 64, 80 and 96.
        let (_, written) = on_pool(rows.clone(), batch(100)).await;
        assert_eq!(written.expect("pool"), 100);
        assert_eq!(rows.yields.load(Ordering::Relaxed), 6);
        assert_eq!(stored(&store).await, 100);
        assert_eq!(
            store
                .counter_state("budget:b", 0)
                .await
                .expect("state")
                .used,
            (1..=100).sum::<i64>()
        );
        // The idle-class thread is preempted by anything; it does not yield.
        let lane = rows.lane_for(1).expect("the background thread");
        let entries = (0..100).map(|i| entry(&format!("l{i}"), 1)).collect();
        let (_, written) = on_lane(&rows, &lane, entries).await;
        assert_eq!(written.expect("ran").expect("lane").handled, 100);
        assert_eq!(rows.yields.load(Ordering::Relaxed), 6);
        assert_eq!(stored(&store).await, 200);

        // A writer that has fallen behind (a full batch waits) writes on without yielding,
        // and yields again once it has caught up.
        let queued = Arc::new(AtomicI64::new(super::super::usage_writer::BATCH as i64));
        rows.watch_backlog(queued.clone());
        let entries = (0..100).map(|i| entry(&format!("p{i}"), 1)).collect();
        let (_, written) = on_pool(rows.clone(), entries).await;
        assert_eq!(written.expect("behind"), 100);
        assert_eq!(rows.yields.load(Ordering::Relaxed), 6);
        queued.store(10, Ordering::Relaxed);
        let entries = (0..100).map(|i| entry(&format!("q{i}"), 1)).collect();
        let (_, written) = on_pool(rows.clone(), entries).await;
        assert_eq!(written.expect("caught up"), 100);
        assert_eq!(rows.yields.load(Ordering::Relaxed), 12);
        assert_eq!(stored(&store).await, 400);
    }

    async fn page_size(store: &Store) -> i64 {
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(store.pool())
            .await
            .expect("page_size")
    }

    #[tokio::test]
    async fn a_new_store_has_16_kib_pages_and_an_existing_one_keeps_its_own() {
        let (_dir, store, rows) = file_store().await;
        assert_eq!(page_size(&store).await, 16384);
        let (_, written) = write_blocking(rows, batch(3)).await;
        assert_eq!(written.expect("write"), 3);
        assert_eq!(stored(&store).await, 3);
        store.close().await;

        // A store created with 4 KiB pages (as every store was before) opens with them, takes
        // its migrations and rows, and reopens unchanged.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        rusqlite::Connection::open(&path)
            .expect("create")
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before (x);",
            )
            .expect("old store");
        let url = format!("sqlite://{}", path.display());
        for round in 1..=2 {
            let store = Store::open(&url).await.expect("store");
            assert_eq!(page_size(&store).await, 4096, "open {round}");
            let rows = store.sqlite_rows().expect("rows connection").clone();
            let entries = (0..2)
                .map(|i| entry(&format!("old{round}-{i}"), 1))
                .collect();
            let (_, written) = write_blocking(rows, entries).await;
            assert_eq!(written.expect("write"), 2);
            assert_eq!(stored(&store).await, 2 * round);
            store.close().await;
        }
    }

    async fn file_store() -> (tempfile::TempDir, Store, Arc<SqliteRows>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        let rows = store.sqlite_rows().expect("rows connection").clone();
        (dir, store, rows)
    }

    async fn stored(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(store.pool())
            .await
            .expect("count")
    }

    fn batch(n: usize) -> Vec<UsageEntry> {
        (0..n)
            .map(|i| entry(&format!("b{i}"), 1 + i as i64))
            .collect()
    }

    /// The scheduling policy of each live thread of this process named `name` (Linux `stat`
    /// field 41; `SCHED_IDLE` is 5).
    #[cfg(target_os = "linux")]
    fn policies_of(name: &str) -> Vec<i64> {
        let mut policies = Vec::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return policies;
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            // Fields after the command name start at field 3 (state).
            if let Some(policy) = after_comm.split_whitespace().nth(41 - 3) {
                policies.push(policy.parse().unwrap_or(-1));
            }
        }
        policies
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_lingering_batch_is_written_on_an_idle_class_thread_and_a_full_one_on_the_pool() {
        let (_dir, store, rows) = file_store().await;
        assert!(rows.lane_for(super::super::usage_writer::BATCH).is_none());
        let (_, written) = write_blocking(rows.clone(), batch(3)).await;
        assert_eq!(written.expect("write"), 3);
        assert_eq!(stored(&store).await, 3);
        let policies = policies_of("tollgate-usage");
        assert!(!policies.is_empty(), "the background thread runs");
        assert!(
            policies.iter().all(|p| *p == 5),
            "every usage rows thread is in the idle class (SCHED_IDLE = 5): {policies:?}"
        );
        // While pressed, batches go to the pool.
        rows.press();
        assert!(rows.lane_for(1).is_none());
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(state.used, 1 + 2 + 3);
    }

    #[tokio::test]
    async fn a_hurried_transaction_commits_whole_chunks_with_their_charges() {
        let (_dir, store, rows) = file_store().await;
        let entries = batch(CHUNK * 3 + 5);
        let hurry = AtomicBool::new(true);
        let written = rows.write(&entries, Some(&hurry)).expect("write");
        assert_eq!(
            written,
            Written {
                handled: CHUNK,
                new: CHUNK as u64
            }
        );
        assert_eq!(stored(&store).await, CHUNK as i64);
        let first: i64 = (1..=CHUNK as i64).sum();
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(state.used, first, "only the committed rows are charged");
        // The whole batch again: the committed rows are skipped with their charges.
        let again = rows.write(&entries, None).expect("write");
        assert_eq!(again.handled, entries.len());
        assert_eq!(again.new, (entries.len() - CHUNK) as u64);
        let all: i64 = (1..=entries.len() as i64).sum();
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(state.used, all, "each row charged exactly once");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Holding the connection across the wait is the point: it stalls the background thread.
    #[allow(clippy::await_holding_lock)]
    async fn an_overdue_batch_is_finished_on_the_pool_and_later_batches_skip_the_thread() {
        let (_dir, store, rows) = file_store().await;
        // Start the connection, then hold it: the background thread waits for it as it would
        // wait for a CPU on a saturated machine.
        let (_, written) = write_blocking(rows.clone(), batch(1)).await;
        assert_eq!(written.expect("first"), 1);
        let held = rows.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<UsageEntry> = (0..CHUNK * 4)
            .map(|i| entry(&format!("late{i}"), 10))
            .collect();
        let n = entries.len();
        let writing = tokio::spawn(write_blocking(rows.clone(), entries));
        tokio::time::sleep(HURRY_AFTER * 3).await;
        assert!(!writing.is_finished());
        drop(held);
        let (back, written) = writing.await.expect("join");
        assert_eq!(back.len(), n, "the batch comes back whole");
        assert_eq!(written.expect("write"), n as u64);
        assert_eq!(stored(&store).await, 1 + n as i64);
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(
            state.used,
            1 + 10 * n as i64,
            "each row charged exactly once"
        );
        assert!(
            rows.lane_for(1).is_none(),
            "after an overdue batch, batches go to the pool for a while"
        );
    }
}
