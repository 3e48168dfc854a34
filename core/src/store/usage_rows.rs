//! Writing usage rows: idempotent by row id, with the ledger charges they carry in the same
//! transaction, and dead letters for rows the database refuses.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::ledger::Settlement;
use super::{Backend, Store, StoreError, UsageRecord};
use crate::clock::now_ms;

/// One usage record and the counter charges of its settlement (embedded ledger), written
/// together or not at all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageEntry {
    /// The row.
    pub record: UsageRecord,
    /// What the request's settlement charged each counter.
    #[serde(default)]
    pub charges: Vec<Settlement>,
}

/// A row the database refused, kept for a person to read.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The usage record id.
    pub id: String,
    /// When it was refused (Unix ms).
    pub failed_at_ms: i64,
    /// The database's error (passwords redacted).
    pub error: String,
    /// The record and its charges as JSON ([`UsageEntry`]).
    pub entry: String,
}

impl Store {
    /// Writes usage rows and the counter charges they carry in one transaction. A row whose id
    /// is already stored (a journal replayed after an ambiguous commit) is skipped with its
    /// charges, so a counter's stored `used` stays the sum of the charges of the stored rows.
    /// Returns how many rows were new.
    pub async fn write_usage(&self, entries: &[UsageEntry]) -> Result<u64, StoreError> {
        if let Some(rows) = self.sqlite_rows() {
            let entries = entries.to_vec();
            return super::sqlite_rows::write_blocking(rows.clone(), entries)
                .await
                .1;
        }
        self.write_usage_sqlx(entries).await
    }

    /// [`Store::write_usage`] of entries the caller hands over and gets back: the embedded
    /// store writes them on its rows connection's thread without copying them.
    pub async fn write_usage_owned(
        &self,
        entries: Vec<UsageEntry>,
    ) -> (Vec<UsageEntry>, Result<u64, StoreError>) {
        if let Some(rows) = self.sqlite_rows() {
            return super::sqlite_rows::write_blocking(rows.clone(), entries).await;
        }
        let written = self.write_usage_sqlx(&entries).await;
        (entries, written)
    }

    /// [`Store::write_usage`] through the pool (the shared store, or an embedded store without
    /// a rows connection).
    async fn write_usage_sqlx(&self, entries: &[UsageEntry]) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        if let Some(batches) = self.batch_pool() {
            let written = match super::pg_batch::write(batches, entries).await {
                Err(e) if super::pg_batch::is_missing_function(&e) => {
                    // Dropped while this gateway serves: create them again, then write.
                    tracing::warn!(error = %e, "the usage functions were missing: creating them again");
                    super::pg_batch::install(self.pool()).await?;
                    super::pg_batch::write(batches, entries).await?
                }
                written => written?,
            };
            if let Some(written) = written {
                return Ok(written);
            }
        }
        let records = || entries.iter().map(|e| &e.record);
        let mut tx = self.pool().begin().await?;
        let inserted =
            match super::insert_usage_on(&mut tx, records(), self.backend(), false).await? {
                Some(inserted) => inserted,
                None => {
                    // Some ids are stored already (a journal replayed after an ambiguous
                    // commit): start again and learn which rows are new.
                    tx.rollback().await?;
                    tx = self.pool().begin().await?;
                    super::insert_usage_on(&mut tx, records(), self.backend(), true)
                        .await?
                        .unwrap_or_default()
                }
            };
        let new: Vec<bool> = entries
            .iter()
            .map(|e| inserted.contains(&e.record.id))
            .collect();
        // What the per-request store holds these rows settle released, per counter window.
        let mut released = super::ledger::Released::new();
        let mut settled_before: Vec<&str> = Vec::new();
        let now = now_ms();
        for hold in holds_to_settle(entries, &new) {
            if !super::ledger::settle_hold(&mut tx, hold, now, &mut released).await? {
                settled_before.push(hold);
            }
        }
        let totals = charge_totals(entries, &new, &released, &settled_before);
        super::ledger::charge_counters(&mut tx, totals, &released, self.backend()).await?;
        tx.commit().await?;
        Ok(inserted.len() as u64)
    }

    /// Keeps a refused row (and its charges, which are not applied) in `usage_dead_letters`.
    pub async fn insert_dead_letter(
        &self,
        entry: &UsageEntry,
        error: &str,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt {
            what: "usage_dead_letters.entry",
            detail: e.to_string(),
        })?;
        sqlx::query(
            "INSERT INTO usage_dead_letters (id, failed_at_ms, error, entry) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(entry.record.id.replace('\0', "\u{FFFD}"))
        .bind(now_ms())
        .bind(error.replace('\0', "\u{FFFD}"))
        .bind(json)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, failed_at_ms, error, entry FROM usage_dead_letters ORDER BY failed_at_ms, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.try_get(0)?,
                    failed_at_ms: r.try_get(1)?,
                    error: r.try_get(2)?,
                    entry: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Whether the database answers at all (tells a refused row from a store that is away).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(self.pool()).await?;
        Ok(())
    }
}

/// The per-request store holds the new rows (`new[i]`: `entries[i]` was inserted now) settle,
/// each row's distinct holds in order.
pub(crate) fn holds_to_settle<'e>(entries: &'e [UsageEntry], new: &[bool]) -> Vec<&'e str> {
    let mut holds: Vec<&str> = Vec::new();
    for (entry, _) in entries.iter().zip(new).filter(|(_, new)| **new) {
        let first = holds.len();
        for hold in entry.charges.iter().filter_map(|c| c.hold.as_deref()) {
            if !holds[first..].contains(&hold) {
                holds.push(hold);
            }
        }
    }
    holds
}

/// The counter charges of the new rows, summed per (counter, window, lease), with an entry for
/// every counter window settled holds `released` (so its `reserved` drops in the same update).
/// A charge of a hold settled before (`settled_before`, by another row) counts nothing again.
pub(crate) fn charge_totals<'e>(
    entries: &'e [UsageEntry],
    new: &[bool],
    released: &'e super::ledger::Released,
    settled_before: &[&str],
) -> super::ledger::ChargeTotals<'e> {
    let mut totals = super::ledger::ChargeTotals::new();
    for (counter, window) in released.keys() {
        totals.entry((counter.as_str(), *window, None)).or_default();
    }
    for (entry, _) in entries.iter().zip(new).filter(|(_, new)| **new) {
        for c in &entry.charges {
            if c.hold
                .as_deref()
                .is_some_and(|h| settled_before.contains(&h))
            {
                continue;
            }
            *totals
                .entry((c.counter_id.as_str(), c.window_start_ms, c.lease.as_deref()))
                .or_default() += c.actual;
        }
    }
    totals
}

/// Whether `error` means the store is away or busy (retry the same rows later), rather than
/// that it refused what was sent (isolate the row). Unknown database errors count as refusals:
/// the writer then checks that the store answers before it keeps a row as a dead letter.
pub fn is_outage(error: &StoreError, backend: Backend) -> bool {
    if let StoreError::Sqlite(e) = error {
        // The embedded store's rows connection: SQLite's own result code, or (anything else
        // rusqlite reports) a refusal.
        return e
            .sqlite_error()
            .is_some_and(|f| sqlite_outage(f.extended_code));
    }
    let StoreError::Database(sqlx::Error::Database(db)) = error else {
        // Connection, pool, TLS, protocol and I/O failures: the store is away.
        return matches!(error, StoreError::Database(_));
    };
    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
    match backend {
        // SQLSTATE classes: 08 connection, 40 rollback (deadlock, serialization), 53
        // insufficient resources, 55 lock not available, 57 operator intervention (shutdown),
        // 58 system error.
        Backend::Postgres => ["08", "40", "53", "55", "57", "58", "XX"]
            .iter()
            .any(|class| code.starts_with(class)),
        Backend::Sqlite => code.parse::<i32>().is_ok_and(sqlite_outage),
    }
}

/// Primary result codes of a store that is away or busy: BUSY, LOCKED, NOMEM, READONLY, IOERR,
/// FULL, CANTOPEN, PROTOCOL.
fn sqlite_outage(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15)
}
