//! PostgreSQL: a usage batch and its counter charges in one round trip.
//!
//! Written statement by statement, a batch was six round trips (`BEGIN`, the rows, three
//! charge statements, `COMMIT`), and on the two-core benchmark each round trip woke the
//! gateway's runtime and a server process once more than the work needed
//! (`docs/performance.md`, fifteenth round). Two server-side functions carry the same
//! statements instead:
//!
//! - the **charge function** ([`charge_sql`]) locks (creating if needed) every counter window's
//!   row in key order, moves the leased charges out of their leases (at most what each lease
//!   still holds), then adds every window's charges to `used` and takes what they released
//!   out of `reserved`. The windows are locked before their leases, as in every lease
//!   transaction, so it cannot deadlock against a lease grant or return.
//!   [`super::ledger::charge_counters`] calls it inside the writer's transaction;
//! - the **batch function** ([`batch_sql`]) inserts the rows, then calls the charge function,
//!   all in the one implicit transaction of a single `SELECT`. The insert is a plain one: when
//!   a row's id was stored already (a journal replayed after an ambiguous commit) the primary
//!   key refuses it ([`STORED_ALREADY`]) and everything rolls back; the writer then takes the
//!   statement path, which learns which rows are new and charges only theirs. (`ON CONFLICT`
//!   would look every id up before inserting it, about 5% of the server's CPU per row, for a
//!   case that happens only after a crash.) A batch that settles per-request store holds takes
//!   the statement path from the start: settling a hold reads and deletes rows first.
//!
//! The functions are generated from the same column list and cell types as every other usage
//! insert ([`super::usage_cells`]), and are named after a hash of their text, so a gateway of
//! another version never calls a function that inserts other columns: each installs its own
//! (under an advisory lock, so replicas starting together do not collide) when it opens the
//! store.

use std::sync::OnceLock;

use sqlx::Row as _;

use super::ledger::{ChargeTotals, Released, released_by_holds};
use super::{Cell, StoreError, USAGE_INSERT, UsageEntry, usage_cells};

/// What PostgreSQL answers when the batch function meets a row whose id is stored already: a
/// unique violation (SQLSTATE 23505) of the usage rows' primary key.
const STORED_ALREADY: (&str, &str) = ("23505", "usage_records_pkey");
/// The advisory lock key under which the functions are installed.
const INSTALL_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"
/// The charge function's arguments: windows (counter, start, used, released by holds) and
/// leased charges (counter, start, lease, used).
const CHARGE_ARGS: [&str; 8] = [
    "text[]", "int8[]", "int8[]", "int8[]", "text[]", "int8[]", "text[]", "int8[]",
];

/// A generated server-side function: its name and the statement that creates it.
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) ddl: String,
}

/// Names a function body after its hash: another body, another name.
fn function(prefix: &str, args: &[&str], returns: &str, body: &str) -> Function {
    let signature = format!("({}) RETURNS {returns} LANGUAGE plpgsql", args.join(", "));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(signature.as_bytes());
    hasher.update(body.as_bytes());
    let name = format!("{prefix}_{:08x}", hasher.finalize());
    let ddl = format!("CREATE OR REPLACE FUNCTION {name}{signature} AS $fn$\n{body}\n$fn$");
    Function { name, ddl }
}

/// The charge function (module docs).
pub(crate) fn charge_sql() -> &'static Function {
    static FUNCTION: OnceLock<Function> = OnceLock::new();
    FUNCTION.get_or_init(|| {
        function(
            "tollgate_charge",
            &CHARGE_ARGS,
            "void",
            "BEGIN
  INSERT INTO counters (counter_id, window_start_ms, used, reserved)
    SELECT t.c, t.w, 0, 0 FROM UNNEST($1, $2) AS t(c, w) ORDER BY t.c, t.w
    ON CONFLICT (counter_id, window_start_ms) DO UPDATE SET used = counters.used;
  WITH moved AS (
    UPDATE leases AS l SET amount = l.amount - m.charged FROM (
      SELECT x.counter_id, x.window_start_ms, x.lease_id,
        LEAST(GREATEST(u.used, 0), GREATEST(x.amount, 0)) AS charged
      FROM UNNEST($5, $6, $7, $8) AS u(c, w, lease, used)
      JOIN leases AS x ON x.counter_id = u.c AND x.window_start_ms = u.w
        AND x.lease_id = u.lease) AS m
    WHERE l.counter_id = m.counter_id AND l.window_start_ms = m.window_start_ms
      AND l.lease_id = m.lease_id
    RETURNING l.counter_id, l.window_start_ms, m.charged),
  freed AS (
    SELECT counter_id, window_start_ms, SUM(charged)::int8 AS charged FROM moved
    GROUP BY counter_id, window_start_ms)
  UPDATE counters AS k SET used = k.used + t.used,
    reserved = k.reserved - t.unreserved - COALESCE(f.charged, 0)
  FROM UNNEST($1, $2, $3, $4) AS t(c, w, used, unreserved)
    LEFT JOIN freed AS f ON f.counter_id = t.c AND f.window_start_ms = t.w
  WHERE k.counter_id = t.c AND k.window_start_ms = t.w;
END",
        )
    })
}

/// The usage rows' argument types, in [`USAGE_INSERT`]'s column order.
fn usage_arg_types() -> Vec<&'static str> {
    usage_cells(&super::UsageRecord::default())
        .iter()
        .map(Cell::pg_array_type)
        .collect()
}

/// The batch function (module docs): the charge arguments, then one array per usage column.
pub(crate) fn batch_sql() -> &'static Function {
    static FUNCTION: OnceLock<Function> = OnceLock::new();
    FUNCTION.get_or_init(|| {
        let usage = usage_arg_types();
        let first = CHARGE_ARGS.len() + 1;
        let columns: Vec<String> = (first..first + usage.len())
            .map(|i| format!("${i}"))
            .collect();
        let body = format!(
            "DECLARE inserted int8;
BEGIN
  {USAGE_INSERT} SELECT * FROM UNNEST({});
  GET DIAGNOSTICS inserted = ROW_COUNT;
  PERFORM {}($1, $2, $3, $4, $5, $6, $7, $8);
  RETURN inserted;
END",
            columns.join(", "),
            charge_sql().name,
        );
        let args: Vec<&str> = CHARGE_ARGS.iter().copied().chain(usage).collect();
        function("tollgate_usage_batch", &args, "int8", &body)
    })
}

/// `SELECT name($1::type, ...)`: a call of `function` with every argument bound as text.
fn call_sql(function: &Function, types: &[&str]) -> String {
    let args: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}", i + 1))
        .collect();
    format!("SELECT {}({})", function.name, args.join(", "))
}

/// Creates this build's functions (once per database and version; replicas starting together
/// take turns under an advisory lock).
pub(crate) async fn install(pool: &sqlx::AnyPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    for function in [charge_sql(), batch_sql()] {
        let exists: i64 = sqlx::query(
            "SELECT COUNT(*) FROM pg_proc WHERE proname = $1 \
             AND pronamespace = current_schema()::regnamespace",
        )
        .bind(&function.name)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if exists == 0 {
            sqlx::query(sqlx::AssertSqlSafe(function.ddl.clone()))
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The charge function's eight arguments for `totals` (what settled holds `released` leaves
/// `reserved` with its window's charges). `None` when there is nothing to charge.
pub(crate) fn charge_arrays(totals: &ChargeTotals<'_>, released: &Released) -> Option<[String; 8]> {
    if totals.is_empty() {
        return None;
    }
    // (counter, window) -> (used, released by holds), in key order.
    let mut windows: std::collections::BTreeMap<(&str, i64), (i64, i64)> = Default::default();
    let mut leased: Vec<(&str, i64, &str, i64)> = Vec::new();
    for (&(counter, window, lease), &used) in totals {
        let entry = windows.entry((counter, window)).or_default();
        entry.0 += used;
        entry.1 += released_by_holds(released, counter, window, lease);
        if let Some(lease) = lease {
            leased.push((counter, window, lease, used));
        }
    }
    use super::pg_array as array;
    Some([
        array(windows.keys().map(|k| Cell::Text(Some(k.0)))),
        array(windows.keys().map(|k| Cell::Int(Some(k.1)))),
        array(windows.values().map(|v| Cell::Int(Some(v.0)))),
        array(windows.values().map(|v| Cell::Int(Some(v.1)))),
        array(leased.iter().map(|l| Cell::Text(Some(l.0)))),
        array(leased.iter().map(|l| Cell::Int(Some(l.1)))),
        array(leased.iter().map(|l| Cell::Text(Some(l.2)))),
        array(leased.iter().map(|l| Cell::Int(Some(l.3)))),
    ])
}

/// Calls the charge function on `conn` (an open transaction).
pub(crate) async fn charge(
    conn: &mut sqlx::AnyConnection,
    arrays: [String; 8],
) -> Result<(), StoreError> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| call_sql(charge_sql(), &CHARGE_ARGS));
    let query = arrays.into_iter().fold(
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())),
        |query, array| query.bind(array),
    );
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Whether `error` says a function this gateway calls does not exist (SQLSTATE 42883): someone
/// dropped it while the gateway serves. The caller creates them again ([`install`]) rather than
/// taking the batch's rows for refused ones.
pub(crate) fn is_missing_function(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(e))
        if e.code().as_deref() == Some("42883"))
}

/// One usage column of a batch as a binary array ([`write`]).
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
}

/// `records`' values, one array per column, in [`USAGE_INSERT`]'s order: bound as binary
/// arrays, the server reads each value as it is (no quoting to write or parse: the array
/// literals' parsing was about 18% of the server's CPU per row, `docs/performance.md`,
/// fifteenth round).
fn usage_columns<'a>(records: &[&'a super::UsageRecord]) -> Vec<Column<'a>> {
    let mut columns: Vec<Column<'a>> = usage_cells(&super::UsageRecord::default())
        .iter()
        .map(|cell| match cell {
            Cell::Text(_) => Column::Text(Vec::with_capacity(records.len())),
            Cell::Int(_) => Column::Int(Vec::with_capacity(records.len())),
        })
        .collect();
    for record in records {
        for (column, cell) in columns.iter_mut().zip(usage_cells(record)) {
            match (column, cell) {
                (Column::Text(values), Cell::Text(value)) => values.push(value),
                (Column::Int(values), Cell::Int(value)) => values.push(value),
                // `usage_cells` gives every record the same kinds, column by column.
                (Column::Text(values), Cell::Int(_)) => values.push(None),
                (Column::Int(values), Cell::Text(_)) => values.push(None),
            }
        }
    }
    columns
}

/// Writes `entries` and their charges in one round trip on the typed pool `pool`, when the
/// batch allows it: `None` when it settles per-request store holds, or when a row's id was
/// stored already (nothing was written then); the caller writes it statement by statement.
pub(crate) async fn write(
    pool: &sqlx::PgPool,
    entries: &[UsageEntry],
) -> Result<Option<u64>, StoreError> {
    if entries
        .iter()
        .any(|e| e.charges.iter().any(|c| c.hold.is_some()))
    {
        return Ok(None);
    }
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let types: Vec<&str> = CHARGE_ARGS
            .iter()
            .copied()
            .chain(usage_arg_types())
            .collect();
        call_sql(batch_sql(), &types)
    });
    let all_new = vec![true; entries.len()];
    let released = Released::new();
    let totals = super::usage_rows::charge_totals(entries, &all_new, &released, &[]);
    let charges = charge_arrays(&totals, &released).unwrap_or_else(|| {
        let empty = || "{}".to_string();
        std::array::from_fn(|_| empty())
    });
    let records: Vec<&super::UsageRecord> = entries.iter().map(|e| &e.record).collect();
    // The charge arrays are a few elements: bound as text, as on the statement path.
    let mut query = charges.into_iter().fold(
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())),
        |query, array| query.bind(array),
    );
    for column in usage_columns(&records) {
        query = match column {
            Column::Text(values) => query.bind(values),
            Column::Int(values) => query.bind(values),
        };
    }
    match query.fetch_one(pool).await {
        Ok(row) => Ok(Some(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))),
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some(STORED_ALREADY.0)
                && e.constraint() == Some(STORED_ALREADY.1) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{CHARGE_ARGS, Column, batch_sql, call_sql, charge_sql, usage_columns};

    #[test]
    fn usage_columns_hold_each_rows_values_as_they_are_in_column_order() {
        let a = super::super::UsageRecord {
            id: r#"a"b\c{,}"#.into(),
            ttfb_us: Some(-5),
            ..Default::default()
        };
        let b = super::super::UsageRecord {
            id: "NULL".into(),
            key_id: Some(String::new()),
            ..Default::default()
        };
        let columns = usage_columns(&[&a, &b]);
        assert_eq!(columns.len(), super::super::USAGE_COLUMNS);
        let text = |i: usize| match &columns[i] {
            Column::Text(values) => values.clone(),
            Column::Int(_) => panic!("column {i} is not text"),
        };
        let int = |i: usize| match &columns[i] {
            Column::Int(values) => values.clone(),
            Column::Text(_) => panic!("column {i} is not an integer"),
        };
        // No quoting: the values go as they are.
        assert_eq!(text(0), [Some(r#"a"b\c{,}"#), Some("NULL")]);
        assert_eq!(text(4), [None, Some("")]);
        assert_eq!(int(17), [Some(-5), None]);
        assert!(usage_columns(&[]).iter().all(|c| match c {
            Column::Text(v) => v.is_empty(),
            Column::Int(v) => v.is_empty(),
        }));
    }

    #[test]
    fn the_functions_are_named_after_their_text_and_take_every_usage_column() {
        let charge = charge_sql();
        let batch = batch_sql();
        assert!(
            charge.name.starts_with("tollgate_charge_"),
            "{}",
            charge.name
        );
        assert!(batch.ddl.contains(&format!("PERFORM {}($1,", charge.name)));
        // 8 charge arrays, then one per usage column, the first of which is the row id.
        let last = CHARGE_ARGS.len() + super::super::USAGE_COLUMNS;
        assert!(batch.ddl.contains(&format!("${last})")), "{}", batch.ddl);
        assert!(!batch.ddl.contains(&format!("${}", last + 1)));
        assert!(batch.ddl.contains("UNNEST($9, $10,"));
        // A plain insert: a stored id fails the call (the statement path takes the batch).
        assert!(!batch.ddl.contains("ON CONFLICT (id)"));
        assert!(batch.ddl.starts_with(&format!(
            "CREATE OR REPLACE FUNCTION {}(text[], int8[], int8[], int8[], text[], int8[], text[], int8[], text[], text[], int8[]",
            batch.name
        )));
        assert_eq!(
            call_sql(charge, &CHARGE_ARGS[..2]),
            format!("SELECT {}($1::text[], $2::int8[])", charge.name)
        );
    }
}
