//! The embedded store's usage rows, written on a SQLite connection of their own.
//!
//! Through the pool (`sqlx::Any`) a usage row cost the gateway about 85 k instructions, of which
//! SQLite's own work was 35 k: each of its 43 values was converted twice and copied into an
//! `Arc`, every statement was a message to the driver's worker thread and back, and a multi-row
//! insert inside a transaction keeps a statement journal (every page it touches is copied first,
//! in case it aborts half-way). Here one prepared single-row insert (no statement journal) binds
//! each record's borrowed values, on the blocking pool, in one `BEGIN IMMEDIATE` transaction per
//! batch together with the counter charges the rows carry: the same statements, the same
//! idempotence and the same all-or-nothing as the pool's transaction ([`Store::write_usage`]).
//!
//! [`Store::write_usage`]: super::Store::write_usage

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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

/// The rows connection of one embedded store: opened on first use, opened again after a failed
/// write (the file may have been the trouble), closed with the store.
#[derive(Debug)]
pub(crate) struct SqliteRows {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    closed: AtomicBool,
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
        })
    }

    /// Closes the connection; later writes fail as a closed pool's do (the store is away).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Writes `entries` and their charges in one transaction; returns how many rows were new.
    fn write(&self, entries: &[UsageEntry]) -> Result<u64, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(open(&self.path)?),
        };
        let written = write_on(conn, entries);
        if written.is_err() {
            // The transaction rolled back when it dropped; start the next write afresh.
            *slot = None;
        }
        written
    }
}

/// Writes `entries` on the rows connection's thread (the blocking pool) and hands them back
/// with the outcome, whatever happened there: a panic while writing comes back as an error for
/// these rows (the writer then isolates and keeps them), never as rows lost.
pub(crate) async fn write_blocking(
    rows: Arc<SqliteRows>,
    entries: Vec<UsageEntry>,
) -> (Vec<UsageEntry>, Result<u64, StoreError>) {
    let entries = Arc::new(entries);
    let task_entries = entries.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let written =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rows.write(&task_entries)));
        drop(task_entries);
        written
    })
    .await;
    let written = match joined {
        Ok(Ok(written)) => written,
        Ok(Err(panic)) => Err(StoreError::Corrupt {
            what: "usage_records",
            detail: format!(
                "writing the rows panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            ),
        }),
        // The runtime is shutting down: the rows were not written; the store counts as away,
        // so the writer keeps them in its journal.
        Err(_) => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
    };
    // The task has finished or was dropped: this is the last reference.
    let entries = Arc::try_unwrap(entries).unwrap_or_else(|shared| shared.as_ref().clone());
    (entries, written)
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

fn write_on(conn: &mut Connection, entries: &[UsageEntry]) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut new = Vec::with_capacity(entries.len());
    {
        let mut insert = tx.prepare_cached(insert_sql())?;
        for entry in entries {
            new.push(insert_row(&mut insert, &entry.record)? == 1);
        }
    }
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
    Ok(new.iter().filter(|new| **new).count() as u64)
}

/// Binds one record in [`USAGE_INSERT`]'s column order and runs the insert; the rows changed
/// (0: the id was stored already).
fn insert_row(insert: &mut rusqlite::Statement<'_>, r: &UsageRecord) -> rusqlite::Result<usize> {
    let mcp = r.mcp.as_ref();
    insert.execute(params![
        r.id,
        r.request_id,
        r.received_at_ms,
        r.completed_at_ms,
        r.key_id,
        r.team,
        r.method,
        r.endpoint,
        i64::from(r.stream),
        r.requested_model,
        r.served_model,
        r.upstream_model,
        r.provider,
        i64::from(r.status),
        r.error_code,
        r.denied_stage,
        r.latency_us,
        r.ttfb_us,
        r.upstream_latency_us,
        r.tokens.input,
        r.tokens.output,
        r.tokens.cached_input,
        r.tokens.reasoning,
        r.tokens.total(),
        r.cost_nanos,
        r.provider_usage,
        r.provider_request_id,
        r.stream_status,
        r.decisions,
        r.route,
        r.user_agent,
        r.policy_generation,
        r.endpoint_family,
        r.upstream_family,
        r.tokens.cache_creation,
        mcp.map(|m| m.server.as_str()),
        mcp.map(|m| m.transport.as_str()),
        mcp.and_then(|m| m.method.as_deref()),
        mcp.and_then(|m| m.tool.as_deref()),
        mcp.map(|m| m.tool_calls),
        mcp.map(|m| m.bytes_in),
        mcp.map(|m| m.bytes_out),
        mcp.and_then(|m| m.pricing.as_deref()),
    ])
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
}
