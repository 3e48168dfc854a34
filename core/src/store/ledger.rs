//! Budgets and the counters behind budgets and quotas: atomic holds, settlement, reclamation.
//!
//! A hold raises a counter's `reserved` only if `used + reserved + amount <= limit`, in one
//! conditional `UPDATE`, inside one transaction for every counter a request needs (taken in
//! counter-id order, so concurrent transactions never deadlock). Any counter short of capacity
//! rolls the whole transaction back. Because the check and the increment are one statement,
//! concurrent requests — from one gateway or from many replicas on one PostgreSQL — can never
//! hold more than the limit together. Settlement deletes the hold and moves the actual amount
//! into `used` in one transaction, once per hold id (`settled_holds`), so a retried settlement
//! never charges twice; a hold that expired (its gateway died) is reclaimed by any gateway, and a
//! late settlement of a reclaimed hold still records the spend, once.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};
use crate::clock::now_ms;

/// One counter a request must hold capacity on.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// The counter (`budget:<id>`, `quota:<name>:<subject>`).
    pub counter_id: String,
    /// Start of the current window.
    pub window_start_ms: i64,
    /// End of the current window, where the next one starts (`i64::MAX`: no next window). The
    /// lease keeper leases the next window's slice shortly before it.
    pub window_end_ms: i64,
    /// What to hold.
    pub amount: i64,
    /// The limit of the counter.
    pub limit: i64,
}

/// A counter's state in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterState {
    /// Settled amount.
    pub used: i64,
    /// Held by in-flight requests.
    pub reserved: i64,
}

/// The result of a hold attempt.
#[derive(Debug)]
pub enum HoldOutcome {
    /// Every counter holds it.
    Held,
    /// The counter at this index (of the sorted request) lacks capacity; nothing was held.
    Refused {
        /// Index into the (sorted) hold requests.
        index: usize,
        /// The counter's state when refused.
        state: CounterState,
    },
}

/// The actual amount to settle on one counter.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settlement {
    /// The counter.
    pub counter_id: String,
    /// Its window.
    pub window_start_ms: i64,
    /// What the request really used (0 releases the whole hold).
    pub actual: i64,
    /// The lease (shared store) the charge was admitted from: the usage writer moves it from
    /// that lease into `used` (`None`: a plain charge).
    #[serde(default)]
    pub lease: Option<String>,
    /// The per-request hold in the store (shared store, no lease slice) this charge settles:
    /// the usage writer deletes the hold and releases what it reserved in the row's
    /// transaction, once per hold id (`settled_holds`), so a journaled settlement replayed
    /// after an outage or a restart charges exactly once (`None`: nothing held in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// A budget managed in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRecord {
    /// Id.
    pub id: String,
    /// `organization`, `team`, `user`, `key`.
    pub scope: String,
    /// Team, owner or key id; empty for organization.
    pub subject: String,
    /// `daily`, `weekly`, `monthly`, `lifetime`.
    pub window: String,
    /// Limit in nano-USD.
    pub limit_nanos: i64,
    /// IANA time zone.
    pub timezone: String,
    /// Notification thresholds in percent.
    pub thresholds: Vec<u32>,
    /// Unix ms.
    pub updated_at_ms: i64,
}

impl BudgetRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let thresholds: String = row.try_get("thresholds")?;
        Ok(Self {
            id: row.try_get("id")?,
            scope: row.try_get("scope")?,
            subject: row.try_get("subject")?,
            window: row.try_get("window_kind")?,
            limit_nanos: row.try_get("limit_nanos")?,
            timezone: row.try_get("timezone")?,
            thresholds: serde_json::from_str(&thresholds).map_err(|e| StoreError::Corrupt {
                what: "budgets.thresholds",
                detail: e.to_string(),
            })?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    }
}

impl Store {
    /// Holds `requests` atomically (all or nothing). `requests` must be sorted by counter id.
    pub async fn hold(
        &self,
        hold_id: &str,
        requests: &[HoldRequest],
        expires_at_ms: i64,
    ) -> Result<HoldOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        for (index, h) in requests.iter().enumerate() {
            // One statement per counter: create it holding `amount`, or raise `reserved` only
            // if `used + reserved + amount` stays within the limit.
            let held = sqlx::query(
                "INSERT INTO counters (counter_id, window_start_ms, used, reserved) \
                 SELECT $1, $2, 0, $3 WHERE $3 <= $4 \
                 ON CONFLICT (counter_id, window_start_ms) DO UPDATE SET reserved = counters.reserved + $3 \
                 WHERE counters.used + counters.reserved + $3 <= $4",
            )
            .bind(&h.counter_id)
            .bind(h.window_start_ms)
            .bind(h.amount)
            .bind(h.limit)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                let state = counter_state_on(&mut tx, &h.counter_id, h.window_start_ms).await?;
                tx.rollback().await?;
                return Ok(HoldOutcome::Refused { index, state });
            }
        }
        let sql = super::values_sql(
            "INSERT INTO holds (id, counter_id, window_start_ms, amount, expires_at_ms)",
            requests.len(),
            5,
            self.backend(),
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for h in requests {
            query = query
                .bind(hold_id.to_string())
                .bind(h.counter_id.clone())
                .bind(h.window_start_ms)
                .bind(h.amount)
                .bind(expires_at_ms);
        }
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(HoldOutcome::Held)
    }

    /// Settles many requests' holds in one transaction, without usage rows (the ledger property
    /// tests; the gateway settles each hold with its usage row, [`Store::write_usage`]): each
    /// hold is removed, and each counter is adjusted once by the sum of what its holds released
    /// and what the requests really used. A hold already reclaimed (expired) releases nothing,
    /// but its spend still counts. Returns each touched counter's state afterwards.
    pub async fn settle_batch(
        &self,
        batch: &[(String, Vec<Settlement>)],
    ) -> Result<Vec<((String, i64), CounterState)>, StoreError> {
        use std::collections::BTreeMap;
        let mut tx = self.pool().begin().await?;
        let mut released = Released::new();
        let mut used: BTreeMap<(String, i64), i64> = BTreeMap::new();
        let now = now_ms();
        for (hold_id, settlements) in batch {
            // Once per hold id: a batch retried after an ambiguous commit (or a duplicate
            // settlement) finds its id already recorded and charges nothing again.
            if !settle_hold(&mut tx, hold_id, now, &mut released).await? {
                continue;
            }
            for s in settlements {
                *used
                    .entry((s.counter_id.clone(), s.window_start_ms))
                    .or_default() += s.actual;
            }
        }
        // (counter, window) -> (released, used)
        let mut deltas: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
        for (key, amount) in released {
            deltas.entry(key).or_default().0 += amount;
        }
        for (key, amount) in used {
            deltas.entry(key).or_default().1 += amount;
        }
        let mut states = Vec::with_capacity(deltas.len());
        for ((counter, window), (released, used)) in deltas {
            let row = sqlx::query(
                "UPDATE counters SET reserved = reserved - $1, used = used + $2 \
                 WHERE counter_id = $3 AND window_start_ms = $4 RETURNING used, reserved",
            )
            .bind(released)
            .bind(used)
            .bind(&counter)
            .bind(window)
            .fetch_optional(&mut *tx)
            .await?;
            let state = match row {
                Some(row) => CounterState {
                    used: row.try_get(0)?,
                    reserved: row.try_get(1)?,
                },
                None => CounterState::default(),
            };
            states.push(((counter, window), state));
        }
        tx.commit().await?;
        Ok(states)
    }

    /// Applies counter charges without usage rows (the lease property test's replicas).
    #[cfg(test)]
    pub(crate) async fn apply_charges(&self, charges: &[Settlement]) -> Result<(), StoreError> {
        let mut totals: ChargeTotals<'_> = ChargeTotals::new();
        for c in charges {
            *totals
                .entry((c.counter_id.as_str(), c.window_start_ms, c.lease.as_deref()))
                .or_default() += c.actual;
        }
        let mut tx = self.pool().begin().await?;
        charge_counters(&mut tx, totals, &Released::new(), self.backend()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Leases up to `want` more of a counter window to `lease_id` of `replica_id`: at most a
    /// `1/share` of what remains (so other replicas can lease too and the last part is held
    /// per request), and nothing if that is less than `min`. Atomic with every hold and lease
    /// of every replica: `used + reserved` never passes `limit`. Returns what was granted.
    #[allow(clippy::too_many_arguments)]
    pub async fn grant_lease(
        &self,
        counter_id: &str,
        window_start_ms: i64,
        limit: i64,
        lease_id: &str,
        replica_id: &str,
        want: i64,
        min: i64,
        share: i64,
        expires_at_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_counter(&mut tx, counter_id, window_start_ms).await?;
        let state = counter_state_on(&mut tx, counter_id, window_start_ms).await?;
        let remaining = limit
            .saturating_sub(state.used)
            .saturating_sub(state.reserved);
        let grant = want.min(remaining / share.max(1));
        if grant < min.max(1) {
            tx.rollback().await?;
            return Ok(0);
        }
        // The same conditional raise as a hold: a concurrent hold or lease that took the room
        // since the read makes it affect nothing.
        let raised = sqlx::query(
            "INSERT INTO counters (counter_id, window_start_ms, used, reserved) \
             SELECT $1, $2, 0, $3 WHERE $3 <= $4 \
             ON CONFLICT (counter_id, window_start_ms) DO UPDATE SET reserved = counters.reserved + $3 \
             WHERE counters.used + counters.reserved + $3 <= $4",
        )
        .bind(counter_id)
        .bind(window_start_ms)
        .bind(grant)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if raised == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO leases (counter_id, window_start_ms, lease_id, replica_id, amount, expires_at_ms, recalled) \
             VALUES ($1, $2, $3, $4, $5, $6, 0) \
             ON CONFLICT (counter_id, window_start_ms, lease_id) DO UPDATE SET amount = leases.amount + $5, expires_at_ms = $6, recalled = 0",
        )
        .bind(counter_id)
        .bind(window_start_ms)
        .bind(lease_id)
        .bind(replica_id)
        .bind(grant)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// Returns `amount` of a lease (its replica does not use it), clears a recall, and drops
    /// the row if `drop` and nothing is left. `false` if the lease is gone (it expired and was
    /// returned already): nothing changes then.
    pub async fn return_lease(
        &self,
        counter_id: &str,
        window_start_ms: i64,
        lease_id: &str,
        amount: i64,
        drop: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_counter(&mut tx, counter_id, window_start_ms).await?;
        let row = sqlx::query(
            "UPDATE leases SET amount = amount - $1, recalled = 0 \
             WHERE counter_id = $2 AND window_start_ms = $3 AND lease_id = $4 AND amount >= $1 RETURNING amount",
        )
        .bind(amount)
        .bind(counter_id)
        .bind(window_start_ms)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let left: i64 = row.try_get(0)?;
        unreserve(&mut tx, counter_id, window_start_ms, amount).await?;
        if drop && left == 0 {
            sqlx::query(
                "DELETE FROM leases WHERE counter_id = $1 AND window_start_ms = $2 AND lease_id = $3 AND amount = 0",
            )
            .bind(counter_id)
            .bind(window_start_ms)
            .bind(lease_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Renews every lease of `replica_id` until `expires_at_ms` and lists them:
    /// `(counter_id, window_start_ms, lease_id, recalled)`. One row per statement, so a
    /// renewal never holds one lease row while waiting for another.
    pub async fn renew_leases(
        &self,
        replica_id: &str,
        expires_at_ms: i64,
    ) -> Result<Vec<(String, i64, String, bool)>, StoreError> {
        let rows = self.lease_rows(replica_id).await?;
        let mut renewed = Vec::with_capacity(rows.len());
        for row in rows {
            let touched = sqlx::query(
                "UPDATE leases SET expires_at_ms = $1 WHERE counter_id = $2 AND window_start_ms = $3 AND lease_id = $4",
            )
            .bind(expires_at_ms)
            .bind(&row.0)
            .bind(row.1)
            .bind(&row.2)
            .execute(self.pool())
            .await?
            .rows_affected();
            if touched == 1 {
                renewed.push(row);
            }
        }
        Ok(renewed)
    }

    /// Lists the leases of `replica_id`: `(counter_id, window_start_ms, lease_id, recalled)`.
    pub async fn lease_rows(
        &self,
        replica_id: &str,
    ) -> Result<Vec<(String, i64, String, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT counter_id, window_start_ms, lease_id, recalled FROM leases WHERE replica_id = $1",
        )
        .bind(replica_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let recalled: i64 = r.try_get(3)?;
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, recalled != 0))
            })
            .collect()
    }

    /// Asks every other replica leasing a counter window to return what it does not use (a
    /// request was refused here). Returns how many leases now carry an unanswered recall.
    pub async fn recall_leases(
        &self,
        counter_id: &str,
        window_start_ms: i64,
        replica_id: &str,
        first: bool,
    ) -> Result<i64, StoreError> {
        if first {
            sqlx::query(
                "UPDATE leases SET recalled = 1 WHERE counter_id = $1 AND window_start_ms = $2 \
                 AND replica_id <> $3 AND amount > 0",
            )
            .bind(counter_id)
            .bind(window_start_ms)
            .bind(replica_id)
            .execute(self.pool())
            .await?;
        }
        let row = sqlx::query(
            "SELECT COUNT(*) FROM leases WHERE counter_id = $1 AND window_start_ms = $2 \
             AND replica_id <> $3 AND recalled <> 0",
        )
        .bind(counter_id)
        .bind(window_start_ms)
        .bind(replica_id)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Returns the leases that expired before `now_ms` (their replica died or stalled): what
    /// they still hold goes back to the counter. Their charges are in `used` already, with the
    /// usage rows they came from. Returns how many leases.
    pub async fn reclaim_expired_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        let expired = sqlx::query(
            "SELECT counter_id, window_start_ms, lease_id FROM leases WHERE expires_at_ms < $1 \
             ORDER BY counter_id, window_start_ms LIMIT 1000",
        )
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        let mut reclaimed = 0;
        for row in expired {
            let counter: String = row.try_get(0)?;
            let window: i64 = row.try_get(1)?;
            let lease: String = row.try_get(2)?;
            let mut tx = self.pool().begin().await?;
            lock_counter(&mut tx, &counter, window).await?;
            let removed = sqlx::query(
                "DELETE FROM leases WHERE counter_id = $1 AND window_start_ms = $2 AND lease_id = $3 \
                 AND expires_at_ms < $4 RETURNING amount",
            )
            .bind(&counter)
            .bind(window)
            .bind(&lease)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(removed) = removed {
                let amount: i64 = removed.try_get(0)?;
                unreserve(&mut tx, &counter, window, amount).await?;
                reclaimed += 1;
            }
            tx.commit().await?;
        }
        Ok(reclaimed)
    }

    /// Leased amounts now (tests and operators): Σ of every lease row's amount.
    pub async fn leased_total(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM leases")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The latest window of every counter with its settled amount (rebuilding the embedded
    /// ledger at start).
    pub async fn latest_counters(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.counter_id, c.window_start_ms, c.used FROM counters c \
             WHERE c.window_start_ms = (SELECT MAX(w.window_start_ms) FROM counters w WHERE w.counter_id = c.counter_id)",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Drops every stored hold and reservation (the embedded ledger holds in memory; what a
    /// store-mode run left behind belongs to a process that is gone).
    pub async fn clear_holds(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let removed = sqlx::query("DELETE FROM holds")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE counters SET reserved = 0 WHERE reserved <> 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Forgets settled hold ids older than `before_ms` (a retry comes within seconds).
    pub async fn prune_settled(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM settled_holds WHERE settled_at_ms < $1")
                .bind(before_ms)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Pushes the expiry of live requests' holds to `expires_at_ms` (a stream longer than the
    /// hold's time-to-live keeps its hold); returns how many hold rows were renewed.
    pub async fn renew_holds(
        &self,
        hold_ids: &[String],
        expires_at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut renewed = 0;
        for chunk in hold_ids.chunks(500) {
            let mut sql = String::from("UPDATE holds SET expires_at_ms = $1 WHERE id IN (");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i + 2));
            }
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .bind(expires_at_ms);
            for id in chunk {
                query = query.bind(id.clone());
            }
            renewed += query.execute(self.pool()).await?.rows_affected();
        }
        Ok(renewed)
    }

    /// Reclaims holds that expired before `now_ms`; returns how many.
    pub async fn reclaim_expired_holds(&self, now_ms: i64) -> Result<u64, StoreError> {
        let expired =
            sqlx::query("SELECT id, counter_id FROM holds WHERE expires_at_ms < $1 LIMIT 1000")
                .bind(now_ms)
                .fetch_all(self.pool())
                .await?;
        let mut reclaimed = 0;
        for row in expired {
            let id: String = row.try_get(0)?;
            let counter: String = row.try_get(1)?;
            let mut tx = self.pool().begin().await?;
            let removed = sqlx::query(
                "DELETE FROM holds WHERE id = $1 AND counter_id = $2 RETURNING window_start_ms, amount",
            )
            .bind(&id)
            .bind(&counter)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = removed {
                let window: i64 = row.try_get(0)?;
                let amount: i64 = row.try_get(1)?;
                unreserve(&mut tx, &counter, window, amount).await?;
                reclaimed += 1;
            }
            tx.commit().await?;
        }
        Ok(reclaimed)
    }

    /// Usage records stored (for tests and operators).
    pub async fn usage_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM usage_records")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Outstanding holds (for tests and the admin API).
    pub async fn outstanding_holds(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM holds")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A counter's state in one window (zero if it never held anything).
    pub async fn counter_state(
        &self,
        counter_id: &str,
        window_start_ms: i64,
    ) -> Result<CounterState, StoreError> {
        let mut conn = self.pool().acquire().await?;
        counter_state_on(&mut conn, counter_id, window_start_ms).await
    }

    /// Records that a threshold was crossed in a window; `true` the first time only.
    pub async fn record_alert(
        &self,
        counter_id: &str,
        window_start_ms: i64,
        threshold: u32,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO budget_alerts (counter_id, window_start_ms, threshold, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (counter_id, window_start_ms, threshold) DO NOTHING",
        )
        .bind(counter_id)
        .bind(window_start_ms)
        .bind(i64::from(threshold))
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Creates or updates the budget for (scope, subject, window).
    pub async fn set_budget(&self, budget: &BudgetRecord) -> Result<BudgetRecord, StoreError> {
        let now = now_ms();
        let thresholds = serde_json::Value::from(budget.thresholds.clone()).to_string();
        sqlx::query(
            "INSERT INTO budgets (id, scope, subject, window_kind, limit_nanos, timezone, thresholds, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (scope, subject, window_kind) DO UPDATE SET limit_nanos = $5, timezone = $6, thresholds = $7, updated_at_ms = $8",
        )
        .bind(&budget.id)
        .bind(&budget.scope)
        .bind(&budget.subject)
        .bind(&budget.window)
        .bind(budget.limit_nanos)
        .bind(&budget.timezone)
        .bind(thresholds)
        .bind(now)
        .execute(self.pool())
        .await?;
        let row = sqlx::query(
            "SELECT id, scope, subject, window_kind, limit_nanos, timezone, thresholds, updated_at_ms FROM budgets \
             WHERE scope = $1 AND subject = $2 AND window_kind = $3",
        )
        .bind(&budget.scope)
        .bind(&budget.subject)
        .bind(&budget.window)
        .fetch_one(self.pool())
        .await?;
        BudgetRecord::from_row(&row)
    }

    /// Every stored budget.
    pub async fn list_budgets(&self) -> Result<Vec<BudgetRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, scope, subject, window_kind, limit_nanos, timezone, thresholds, updated_at_ms FROM budgets ORDER BY scope, subject, window_kind",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(BudgetRecord::from_row).collect()
    }

    /// Deletes a budget; `false` if it did not exist.
    pub async fn delete_budget(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM budgets WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(deleted == 1)
    }
}

/// Charges summed per (counter, window, lease the charge was admitted from).
pub(crate) type ChargeTotals<'a> = std::collections::BTreeMap<(&'a str, i64, Option<&'a str>), i64>;

/// What settled per-request holds released, per (counter, window).
pub(crate) type Released = std::collections::BTreeMap<(String, i64), i64>;

// The statements that settle usage rows' charges, shared by the sqlx transaction
// ([`settle_hold`], [`charge_counters`]) and the embedded store's rows connection
// (`super::sqlite_rows`). `$n` numbers its parameters in order of first use, which SQLite
// binds by position too.
/// Marks a per-request hold settled (no row changed: it was settled before).
pub(crate) const SETTLE_HOLD_SQL: &str = "INSERT INTO settled_holds (hold_id, settled_at_ms) \
     VALUES ($1, $2) ON CONFLICT (hold_id) DO NOTHING";
/// Deletes a settled hold, naming what it reserved.
pub(crate) const DELETE_HOLD_SQL: &str =
    "DELETE FROM holds WHERE id = $1 RETURNING counter_id, window_start_ms, amount";
/// What a lease still holds.
pub(crate) const LEASE_AMOUNT_SQL: &str = "SELECT amount FROM leases \
     WHERE counter_id = $1 AND window_start_ms = $2 AND lease_id = $3";
/// Moves a charge out of its lease.
pub(crate) const LEASE_CHARGE_SQL: &str = "UPDATE leases SET amount = amount - $1 \
     WHERE counter_id = $2 AND window_start_ms = $3 AND lease_id = $4";
/// Adds a charge to a counter window's `used` and takes what it released out of `reserved`.
pub(crate) const CHARGE_COUNTER_SQL: &str = "INSERT INTO counters (counter_id, window_start_ms, used, reserved) \
     VALUES ($1, $2, $3, 0) ON CONFLICT (counter_id, window_start_ms) \
     DO UPDATE SET used = counters.used + $3, reserved = counters.reserved - $4";
/// Locks (creating if needed) a counter window's row.
pub(crate) const LOCK_COUNTER_SQL: &str = "INSERT INTO counters (counter_id, window_start_ms, used, reserved) \
     VALUES ($1, $2, 0, 0) ON CONFLICT (counter_id, window_start_ms) DO UPDATE SET used = counters.used";

/// Settles one per-request store hold inside the caller's transaction (the one that writes the
/// usage row carrying its charges): records the hold id in `settled_holds` and deletes the
/// hold, adding what it reserved to `released`. `false` if the hold id was settled before (its
/// charges must not count again). A hold reclaimed at expiry (its gateway or the store was
/// away too long) releases nothing here, but its spend still counts, once.
pub(crate) async fn settle_hold(
    conn: &mut sqlx::AnyConnection,
    hold_id: &str,
    now_ms: i64,
    released: &mut Released,
) -> Result<bool, StoreError> {
    let first = sqlx::query(SETTLE_HOLD_SQL)
        .bind(hold_id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if first == 0 {
        return Ok(false);
    }
    let removed = sqlx::query(DELETE_HOLD_SQL)
        .bind(hold_id)
        .fetch_all(&mut *conn)
        .await?;
    for row in removed {
        let counter: String = row.try_get(0)?;
        let window: i64 = row.try_get(1)?;
        let amount: i64 = row.try_get(2)?;
        *released.entry((counter, window)).or_default() += amount;
    }
    Ok(true)
}

/// Adds charges to the counters' `used`, inside the caller's transaction (the one that writes
/// their usage rows): after any crash, a counter's stored `used` is the sum of the charges of
/// the stored rows. A charge admitted from a lease moves out of the lease (and out of
/// `reserved`) into `used`; if the lease is gone (it expired and was returned) it is charged
/// like any other. What settled per-request holds `released` leaves `reserved` in the same
/// update (every released counter window has an entry in `totals`). The counter row is locked
/// before the lease row, as in every lease transaction (no deadlock).
pub(crate) async fn charge_counters(
    conn: &mut sqlx::AnyConnection,
    totals: ChargeTotals<'_>,
    released: &Released,
    backend: super::Backend,
) -> Result<(), StoreError> {
    if backend == super::Backend::Postgres {
        return charge_counters_at_once(conn, totals, released).await;
    }
    for ((counter, window, lease), used) in totals {
        let mut unreserved = released_by_holds(released, counter, window, lease);
        if let Some(lease) = lease {
            lock_counter(&mut *conn, counter, window).await?;
            let row = sqlx::query(LEASE_AMOUNT_SQL)
                .bind(counter)
                .bind(window)
                .bind(lease)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(row) = row {
                unreserved = charged_from_lease(used, row.try_get(0)?);
                sqlx::query(LEASE_CHARGE_SQL)
                    .bind(unreserved)
                    .bind(counter)
                    .bind(window)
                    .bind(lease)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        sqlx::query(CHARGE_COUNTER_SQL)
            .bind(counter)
            .bind(window)
            .bind(used)
            .bind(unreserved)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// [`charge_counters`] on PostgreSQL: one call of the charge function
/// ([`super::pg_batch`]), however many counters a batch charges. Statement by statement that
/// was four round trips per leased counter, and on the shared machines of the benchmark each
/// round trip cost the server more than its statement (`docs/performance.md`, fourteenth and
/// fifteenth rounds). The result is the same: the windows are locked before their leases, as in
/// every lease transaction, and a charge moves at most what its lease still holds.
async fn charge_counters_at_once(
    conn: &mut sqlx::AnyConnection,
    totals: ChargeTotals<'_>,
    released: &Released,
) -> Result<(), StoreError> {
    match super::pg_batch::charge_arrays(&totals, released) {
        Some(arrays) => super::pg_batch::charge(conn, arrays).await,
        None => Ok(()),
    }
}

/// What a charge total takes out of its counter window's `reserved` before any lease: what the
/// settled per-request holds released there (a total admitted from a lease releases nothing
/// here; [`charged_from_lease`] does).
pub(crate) fn released_by_holds(
    released: &Released,
    counter: &str,
    window: i64,
    lease: Option<&str>,
) -> i64 {
    match lease {
        None => released
            .get(&(counter.to_string(), window))
            .copied()
            .unwrap_or(0),
        Some(_) => 0,
    }
}

/// What a charge of `used` moves out of a lease still holding `amount` (and out of
/// `reserved`): the charge, at most what the lease holds.
pub(crate) fn charged_from_lease(used: i64, amount: i64) -> i64 {
    used.clamp(0, amount.max(0))
}

/// Takes `amount` out of a counter window's `reserved` (a lease returned or reclaimed, an
/// expired hold dropped).
async fn unreserve(
    conn: &mut sqlx::AnyConnection,
    counter_id: &str,
    window_start_ms: i64,
    amount: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE counters SET reserved = reserved - $1 WHERE counter_id = $2 AND window_start_ms = $3",
    )
    .bind(amount)
    .bind(counter_id)
    .bind(window_start_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Locks a counter row for the rest of the transaction (creating it if needed). Every
/// transaction that touches a counter and its leases locks the counter first, so they never
/// deadlock.
async fn lock_counter(
    conn: &mut sqlx::AnyConnection,
    counter_id: &str,
    window_start_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(LOCK_COUNTER_SQL)
        .bind(counter_id)
        .bind(window_start_ms)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A counter's state, read on `conn` (a pooled connection or an open transaction).
async fn counter_state_on(
    conn: &mut sqlx::AnyConnection,
    counter_id: &str,
    window_start_ms: i64,
) -> Result<CounterState, StoreError> {
    let row = sqlx::query(
        "SELECT used, reserved FROM counters WHERE counter_id = $1 AND window_start_ms = $2",
    )
    .bind(counter_id)
    .bind(window_start_ms)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => CounterState {
            used: row.try_get(0)?,
            reserved: row.try_get(1)?,
        },
        None => CounterState::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        (dir, store)
    }

    /// An embedded store writing usage rows on its rows connection, and one writing them
    /// through the pool (the path of the shared store), each in a directory of its own.
    async fn both_row_paths() -> Vec<(tempfile::TempDir, Store)> {
        let (dir, store) = temp_store().await;
        assert!(store.sqlite_rows().is_some());
        let (pool_dir, pool_store) = temp_store().await;
        vec![
            (dir, store),
            (pool_dir, pool_store.without_rows_connection()),
        ]
    }

    fn request(amount: i64) -> HoldRequest {
        HoldRequest {
            counter_id: "budget:b".into(),
            window_start_ms: 0,
            window_end_ms: i64::MAX,
            amount,
            limit: 1_000,
        }
    }

    #[tokio::test]
    async fn a_retried_settlement_charges_once() {
        let (_dir, store) = temp_store().await;
        let held = store
            .hold("h1", &[request(100)], i64::MAX)
            .await
            .expect("hold");
        assert!(matches!(held, HoldOutcome::Held));
        let batch = vec![(
            "h1".to_string(),
            vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual: 40,
                lease: None,
                hold: None,
            }],
        )];
        store.settle_batch(&batch).await.expect("settle");
        // The commit's answer was lost: the worker settles the same batch again.
        store.settle_batch(&batch).await.expect("settle again");
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(
            state,
            CounterState {
                used: 40,
                reserved: 0
            }
        );
    }

    #[tokio::test]
    async fn a_late_settlement_of_a_reclaimed_hold_still_counts_once() {
        let (_dir, store) = temp_store().await;
        store.hold("h1", &[request(100)], 5).await.expect("hold");
        assert_eq!(store.reclaim_expired_holds(10).await.expect("reclaim"), 1);
        let batch = vec![(
            "h1".to_string(),
            vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual: 30,
                lease: None,
                hold: None,
            }],
        )];
        store.settle_batch(&batch).await.expect("settle");
        store.settle_batch(&batch).await.expect("settle again");
        let state = store.counter_state("budget:b", 0).await.expect("state");
        assert_eq!(
            state,
            CounterState {
                used: 30,
                reserved: 0
            }
        );
    }

    fn entry(id: &str, hold: &str, actual: i64) -> super::super::UsageEntry {
        super::super::UsageEntry {
            record: super::super::UsageRecord {
                id: id.into(),
                request_id: id.into(),
                decisions: "[]".into(),
                ..Default::default()
            },
            charges: vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual,
                lease: None,
                hold: Some(hold.into()),
            }],
        }
    }

    #[tokio::test]
    async fn a_hold_settled_with_its_usage_row_releases_and_charges_once_across_replays() {
        for (_dir, store) in both_row_paths().await {
            store
                .hold("h1", &[request(100)], i64::MAX)
                .await
                .expect("hold");
            store
                .hold("h2", &[request(50)], i64::MAX)
                .await
                .expect("hold");
            let rows = [entry("r1", "h1", 40), entry("r2", "h2", 10)];
            assert_eq!(store.write_usage(&rows).await.expect("write"), 2);
            // A journal replayed after an ambiguous commit writes the same rows again.
            assert_eq!(store.write_usage(&rows).await.expect("replay"), 0);
            let state = store.counter_state("budget:b", 0).await.expect("state");
            assert_eq!(
                state,
                CounterState {
                    used: 50,
                    reserved: 0
                }
            );
            assert_eq!(store.outstanding_holds().await.expect("holds"), 0);
        }
    }

    #[tokio::test]
    async fn a_hold_reclaimed_before_its_row_lands_still_charges_its_spend_once() {
        for (_dir, store) in both_row_paths().await {
            store.hold("h1", &[request(100)], 5).await.expect("hold");
            assert_eq!(store.reclaim_expired_holds(10).await.expect("reclaim"), 1);
            assert_eq!(
                store
                    .write_usage(&[entry("r1", "h1", 30)])
                    .await
                    .expect("write"),
                1
            );
            // Another row naming the same hold (never made by the gateway) charges nothing again.
            assert_eq!(
                store
                    .write_usage(&[entry("r2", "h1", 30)])
                    .await
                    .expect("write"),
                1
            );
            let state = store.counter_state("budget:b", 0).await.expect("state");
            assert_eq!(
                state,
                CounterState {
                    used: 30,
                    reserved: 0
                }
            );
        }
    }

    #[tokio::test]
    async fn batches_of_any_size_are_written_whole_on_either_row_path() {
        for (_dir, store) in both_row_paths().await {
            let unheld = |id: String, actual: i64| super::super::UsageEntry {
                charges: vec![Settlement {
                    hold: None,
                    ..entry(&id, "", actual).charges.remove(0)
                }],
                ..entry(&id, "", actual)
            };
            let mut written = 0;
            let mut spent = 0;
            // 0, 1, a shape, shape ± 1, and sizes needing every shape at once.
            for (batch, size) in [0usize, 1, 3, 4, 5, 63, 64, 65, 257, 341]
                .into_iter()
                .enumerate()
            {
                let rows: Vec<_> = (0..size)
                    .map(|i| unheld(format!("b{batch}-{i}"), 1 + i as i64))
                    .collect();
                assert_eq!(store.write_usage(&rows).await.expect("write"), size as u64);
                written += size;
                spent += rows.iter().map(|r| r.charges[0].actual).sum::<i64>();
                // Replaying the batch with one new row writes and charges the new row only.
                let mut replay = rows;
                replay.push(unheld(format!("b{batch}-new"), 7));
                assert_eq!(store.write_usage(&replay).await.expect("replay"), 1);
                written += 1;
                spent += 7;
            }
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
                .fetch_one(store.pool())
                .await
                .expect("count");
            assert_eq!(rows, written as i64);
            let state = store.counter_state("budget:b", 0).await.expect("state");
            assert_eq!(state.used, spent);
        }
    }
}
