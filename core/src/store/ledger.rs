//! Budgets and the counters behind budgets and quotas: atomic holds, settlement, reclamation.
//!
//! A hold raises a counter's `reserved` only if `used + reserved + amount <= limit`, in one
//! conditional `UPDATE`, inside one transaction for every counter a request needs (taken in
//! counter-id order, so concurrent transactions never deadlock). Any counter short of capacity
//! rolls the whole transaction back. Because the check and the increment are one statement,
//! concurrent requests — from one gateway or from many replicas on one PostgreSQL — can never
//! hold more than the limit together. Settlement deletes the hold and moves the actual amount
//! into `used` in one transaction; a hold that expired (its gateway died) is reclaimed by any
//! gateway, and a late settlement of a reclaimed hold still records the spend.

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
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The counter.
    pub counter_id: String,
    /// Its window.
    pub window_start_ms: i64,
    /// What the request really used (0 releases the whole hold).
    pub actual: i64,
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

    /// Settles many requests' holds in one transaction: each hold is removed, and each counter
    /// is adjusted once by the sum of what its holds released and what the requests really
    /// used. A hold already reclaimed (expired) releases nothing, but its spend still counts.
    /// Returns each touched counter's state afterwards (for threshold notifications).
    pub async fn settle_batch(
        &self,
        batch: &[(String, Vec<Settlement>)],
    ) -> Result<Vec<((String, i64), CounterState)>, StoreError> {
        use std::collections::BTreeMap;
        let mut tx = self.pool().begin().await?;
        // (counter, window) -> (released, used)
        let mut deltas: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
        for (hold_id, settlements) in batch {
            let removed = sqlx::query(
                "DELETE FROM holds WHERE id = $1 RETURNING counter_id, window_start_ms, amount",
            )
            .bind(hold_id)
            .fetch_all(&mut *tx)
            .await?;
            for row in removed {
                let counter: String = row.try_get(0)?;
                let window: i64 = row.try_get(1)?;
                let amount: i64 = row.try_get(2)?;
                deltas.entry((counter, window)).or_default().0 += amount;
            }
            for s in settlements {
                deltas
                    .entry((s.counter_id.clone(), s.window_start_ms))
                    .or_default()
                    .1 += s.actual;
            }
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
                sqlx::query("UPDATE counters SET reserved = reserved - $1 WHERE counter_id = $2 AND window_start_ms = $3")
                    .bind(amount)
                    .bind(&counter)
                    .bind(window)
                    .execute(&mut *tx)
                    .await?;
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
