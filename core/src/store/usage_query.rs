//! Reading usage records back for the admin API: filtered pages, lookup by request id,
//! aggregates per time bucket and group, and chargeback totals. Sums are exact (integer
//! nano-USD in SQL); latency percentiles are computed here over a bounded number of rows.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::admin::rfc3339;
use super::sql::Sql;
use super::{Store, StoreError};

/// At most this many latencies are read for one aggregate's percentiles; beyond it the
/// percentiles are `null` (narrow the range or add a filter).
pub const MAX_PERCENTILE_ROWS: i64 = 200_000;

/// Filters shared by usage listings, aggregates and chargeback.
#[derive(Debug, Default, Clone)]
pub struct UsageFilter {
    /// `received_at` from (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// `received_at` to (Unix ms, exclusive).
    pub to_ms: Option<i64>,
    /// `200`, `429`, `ok` (< 400), `error` (>= 400), `4xx`, `5xx`.
    pub status: Option<String>,
    /// Provider name (`mcp` for MCP calls).
    pub provider: Option<String>,
    /// Requested or served model.
    pub model: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// User (the key's owner).
    pub user: Option<String>,
    /// Key id.
    pub key: Option<String>,
    /// Stage that refused the call.
    pub denied_stage: Option<String>,
    /// Endpoint path (`/v1/chat/completions`) or family (`openai`, `anthropic`, ...).
    pub endpoint: Option<String>,
}

/// Whether `status` is a value [`UsageFilter::status`] understands.
pub fn valid_status_filter(status: &str) -> bool {
    matches!(status, "ok" | "error" | "2xx" | "3xx" | "4xx" | "5xx")
        || status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))
}

/// A time bucket of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Bucket {
    /// Parses `minute`, `hour`, `day`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "minute" => Some(Bucket::Minute),
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }

    /// The SQL expression of a row's bucket start (a fixed literal width, never a value).
    fn expr(self) -> &'static str {
        match self {
            Bucket::Minute => "(u.received_at_ms / 60000) * 60000",
            Bucket::Hour => "(u.received_at_ms / 3600000) * 3600000",
            Bucket::Day => "(u.received_at_ms / 86400000) * 86400000",
        }
    }
}

/// What an aggregate or chargeback groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// `team`.
    Team,
    /// The served model (the requested one when nothing was served).
    Model,
    /// `provider`.
    Provider,
    /// `key_id`.
    Key,
    /// The key's user.
    User,
    /// HTTP status.
    Status,
    /// Endpoint path.
    Endpoint,
}

impl GroupBy {
    /// Parses a `group_by` value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "team" => Some(GroupBy::Team),
            "model" => Some(GroupBy::Model),
            "provider" => Some(GroupBy::Provider),
            "key" => Some(GroupBy::Key),
            "user" => Some(GroupBy::User),
            "status" => Some(GroupBy::Status),
            "endpoint" => Some(GroupBy::Endpoint),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Status => "status",
            GroupBy::Endpoint => "endpoint",
        }
    }

    fn expr(self) -> &'static str {
        match self {
            GroupBy::Team => "u.team",
            GroupBy::Model => "COALESCE(u.served_model, u.requested_model)",
            GroupBy::Provider => "u.provider",
            GroupBy::Key => "u.key_id",
            GroupBy::User => "k.owner",
            GroupBy::Status => "CAST(u.status AS TEXT)",
            GroupBy::Endpoint => "u.endpoint",
        }
    }
}

const FROM: &str = " FROM usage_records u LEFT JOIN api_keys k ON k.id = u.key_id WHERE 1 = 1";

fn push_filter(sql: &mut Sql, f: &UsageFilter) {
    if let Some(from) = f.from_ms {
        sql.push(" AND u.received_at_ms >= ").int(from);
    }
    if let Some(to) = f.to_ms {
        sql.push(" AND u.received_at_ms < ").int(to);
    }
    if let Some(status) = f.status.as_deref() {
        let range = |sql: &mut Sql, lo: i64, hi: i64| {
            sql.push(" AND u.status >= ")
                .int(lo)
                .push(" AND u.status < ")
                .int(hi);
        };
        match status {
            "ok" => range(sql, 0, 400),
            "error" => range(sql, 400, 1000),
            "2xx" => range(sql, 200, 300),
            "3xx" => range(sql, 300, 400),
            "4xx" => range(sql, 400, 500),
            "5xx" => range(sql, 500, 600),
            other => {
                sql.push(" AND u.status = ")
                    .int(other.parse::<i64>().unwrap_or(-1));
            }
        }
    }
    if let Some(provider) = &f.provider {
        sql.push(" AND u.provider = ").text(provider.clone());
    }
    if let Some(model) = &f.model {
        sql.push(" AND (u.served_model = ")
            .text(model.clone())
            .push(" OR u.requested_model = ")
            .text(model.clone())
            .push(")");
    }
    if let Some(team) = &f.team {
        sql.push(" AND u.team = ").text(team.clone());
    }
    if let Some(user) = &f.user {
        sql.push(" AND k.owner = ").text(user.clone());
    }
    if let Some(key) = &f.key {
        sql.push(" AND u.key_id = ").text(key.clone());
    }
    if let Some(stage) = &f.denied_stage {
        sql.push(" AND u.denied_stage = ").text(stage.clone());
    }
    if let Some(endpoint) = &f.endpoint {
        sql.push(" AND (u.endpoint = ")
            .text(endpoint.clone())
            .push(" OR u.endpoint_family = ")
            .text(endpoint.clone())
            .push(")");
    }
}

const ROW_COLUMNS: &str = "SELECT u.id, u.request_id, u.received_at_ms, u.completed_at_ms, u.key_id, u.team, \
     k.owner AS user_id, u.method, u.endpoint, u.endpoint_family, u.stream, u.requested_model, u.served_model, \
     u.upstream_model, u.provider, u.status, u.error_code, u.denied_stage, u.latency_us, u.ttfb_us, \
     u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens, u.total_tokens, u.cost_nanos, \
     u.stream_status, u.mcp_server, u.mcp_tool, u.decisions, u.route";

fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

fn row_json(row: &AnyRow) -> Result<Value, StoreError> {
    let text = |name: &str| -> Result<Option<String>, StoreError> { Ok(row.try_get(name)?) };
    let int = |name: &str| -> Result<i64, StoreError> { Ok(row.try_get(name)?) };
    let json_text = |name: &str| -> Result<Value, StoreError> {
        Ok(text(name)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null))
    };
    let cost = int("cost_nanos")?;
    let ttfb: Option<i64> = row.try_get("ttfb_us")?;
    Ok(json!({
        "id": text("id")?,
        "request_id": text("request_id")?,
        "received_at": rfc3339(Some(int("received_at_ms")?)),
        "completed_at": rfc3339(Some(int("completed_at_ms")?)),
        "key_id": text("key_id")?,
        "team": text("team")?,
        "user": text("user_id")?,
        "method": text("method")?,
        "endpoint": text("endpoint")?,
        "endpoint_family": text("endpoint_family")?,
        "stream": int("stream")? != 0,
        "requested_model": text("requested_model")?,
        "served_model": text("served_model")?,
        "upstream_model": text("upstream_model")?,
        "provider": text("provider")?,
        "status": int("status")?,
        "error_code": text("error_code")?,
        "denied_stage": text("denied_stage")?,
        "latency_ms": int("latency_us")? as f64 / 1000.0,
        "ttfb_ms": ttfb.map(|t| t as f64 / 1000.0),
        "input_tokens": int("input_tokens")?,
        "output_tokens": int("output_tokens")?,
        "cached_input_tokens": int("cached_input_tokens")?,
        "reasoning_tokens": int("reasoning_tokens")?,
        "total_tokens": int("total_tokens")?,
        "cost_nanos": cost,
        "cost_usd": usd(cost),
        "stream_status": text("stream_status")?,
        "mcp_server": text("mcp_server")?,
        "mcp_tool": text("mcp_tool")?,
        "decisions": json_text("decisions")?,
        "route": json_text("route")?,
    }))
}

/// A usage page cursor: the last row's `received_at_ms` and id.
pub fn usage_cursor(row: &Value) -> Option<String> {
    let at = row["received_at"].as_str()?;
    let ms = chrono::DateTime::parse_from_rfc3339(at)
        .ok()?
        .timestamp_millis();
    Some(format!("{ms}:{}", row["id"].as_str()?))
}

fn nearest_rank(sorted: &[i64], pct: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index] as f64 / 1000.0)
}

impl Store {
    /// Usage rows matching `filter`, newest first, after `cursor` (from [`usage_cursor`]).
    pub async fn usage_page(
        &self,
        filter: &UsageFilter,
        limit: i64,
        cursor: Option<(i64, String)>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut sql = Sql::new(ROW_COLUMNS);
        sql.push(FROM);
        push_filter(&mut sql, filter);
        if let Some((ms, id)) = cursor {
            sql.push(" AND (u.received_at_ms < ")
                .int(ms)
                .push(" OR (u.received_at_ms = ")
                .int(ms)
                .push(" AND u.id < ")
                .text(id)
                .push("))");
        }
        sql.push(" ORDER BY u.received_at_ms DESC, u.id DESC LIMIT ")
            .int(limit);
        let rows = sql.query().fetch_all(self.pool()).await?;
        rows.iter().map(row_json).collect()
    }

    /// Every usage row of one request (a request may leave several, e.g. MCP batches).
    pub async fn usage_by_request(&self, request_id: &str) -> Result<Vec<Value>, StoreError> {
        let mut sql = Sql::new(ROW_COLUMNS);
        sql.push(FROM)
            .push(" AND u.request_id = ")
            .text(request_id)
            .push(" ORDER BY u.received_at_ms, u.id LIMIT 1000");
        let rows = sql.query().fetch_all(self.pool()).await?;
        rows.iter().map(row_json).collect()
    }

    /// Requests, errors, tokens, cost and latency percentiles per bucket and group.
    pub async fn usage_aggregate(
        &self,
        filter: &UsageFilter,
        bucket: Option<Bucket>,
        group: Option<GroupBy>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut keys = Vec::new();
        if let Some(b) = bucket {
            keys.push(format!("{} AS bucket", b.expr()));
        }
        if let Some(g) = group {
            keys.push(format!("{} AS grp", g.expr()));
        }
        let mut select = String::from("SELECT ");
        for k in &keys {
            select.push_str(k);
            select.push_str(", ");
        }
        select.push_str(
            "COUNT(*) AS requests, CAST(COALESCE(SUM(CASE WHEN u.status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
             CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(u.cost_nanos), 0) AS BIGINT) AS cost_nanos",
        );
        let group_clause = match keys.len() {
            0 => "",
            1 => " GROUP BY 1 ORDER BY 1",
            _ => " GROUP BY 1, 2 ORDER BY 1, 2",
        };
        let mut sql = Sql::new(&select);
        sql.push(FROM);
        push_filter(&mut sql, filter);
        sql.push(group_clause);
        let rows = sql.query().fetch_all(self.pool()).await?;

        // Latencies for the percentiles, bounded.
        let mut lat = String::from("SELECT ");
        for k in &keys {
            lat.push_str(k);
            lat.push_str(", ");
        }
        lat.push_str("u.latency_us");
        let mut sql = Sql::new(&lat);
        sql.push(FROM);
        push_filter(&mut sql, filter);
        sql.push(" ORDER BY u.latency_us LIMIT ")
            .int(MAX_PERCENTILE_ROWS + 1);
        let lat_rows = sql.query().fetch_all(self.pool()).await?;
        let mut latencies: HashMap<(Option<i64>, Option<String>), Vec<i64>> = HashMap::new();
        let complete = i64::try_from(lat_rows.len()).unwrap_or(i64::MAX) <= MAX_PERCENTILE_ROWS;
        if complete {
            for row in &lat_rows {
                let b: Option<i64> = if bucket.is_some() {
                    row.try_get("bucket")?
                } else {
                    None
                };
                let g: Option<String> = if group.is_some() {
                    row.try_get("grp")?
                } else {
                    None
                };
                latencies
                    .entry((b, g))
                    .or_default()
                    .push(row.try_get("latency_us")?);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let b: Option<i64> = if bucket.is_some() {
                row.try_get("bucket")?
            } else {
                None
            };
            let g: Option<String> = if group.is_some() {
                row.try_get("grp")?
            } else {
                None
            };
            let cost: i64 = row.try_get("cost_nanos")?;
            let sorted = latencies
                .get(&(b, g.clone()))
                .map_or(&[][..], Vec::as_slice);
            out.push(json!({
                "bucket_start": rfc3339(b),
                "group": g,
                "requests": row.try_get::<i64, _>("requests")?,
                "errors": row.try_get::<i64, _>("errors")?,
                "input_tokens": row.try_get::<i64, _>("input_tokens")?,
                "output_tokens": row.try_get::<i64, _>("output_tokens")?,
                "cost_nanos": cost,
                "cost_usd": usd(cost),
                "p50_latency_ms": nearest_rank(sorted, 50.0),
                "p95_latency_ms": nearest_rank(sorted, 95.0),
            }));
        }
        Ok(out)
    }

    /// Chargeback lines per group (most expensive first) and their total, over `filter`.
    pub async fn chargeback(
        &self,
        filter: &UsageFilter,
        group: GroupBy,
    ) -> Result<(Vec<ChargeLine>, ChargeLine), StoreError> {
        const SUMS: &str = "COUNT(*) AS requests, CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(u.cost_nanos), 0) AS BIGINT) AS cost_nanos";
        let line = |row: &AnyRow, group: Option<String>| -> Result<ChargeLine, StoreError> {
            Ok(ChargeLine {
                group,
                requests: row.try_get("requests")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cost_nanos: row.try_get("cost_nanos")?,
            })
        };
        let mut sql = Sql::new(&format!("SELECT {} AS grp, {SUMS}", group.expr()));
        sql.push(FROM);
        push_filter(&mut sql, filter);
        sql.push(" GROUP BY 1");
        let rows = sql.query().fetch_all(self.pool()).await?;
        let mut lines = rows
            .iter()
            .map(|r| line(r, r.try_get("grp")?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        lines.sort_by(|a, b| {
            b.cost_nanos
                .cmp(&a.cost_nanos)
                .then_with(|| a.group.cmp(&b.group))
        });
        let mut sql = Sql::new(&format!("SELECT {SUMS}"));
        sql.push(FROM);
        push_filter(&mut sql, filter);
        let total = line(&sql.query().fetch_one(self.pool()).await?, None)?;
        Ok((lines, total))
    }
}

/// One chargeback line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    /// The team, key or model (`None` for calls without one, and for the total).
    pub group: Option<String>,
    /// Calls.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in nano-USD.
    pub cost_nanos: i64,
}

impl ChargeLine {
    /// JSON form with `cost_usd`.
    pub fn to_json(&self) -> Value {
        json!({
            "group": self.group,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_nanos": self.cost_nanos,
            "cost_usd": usd(self.cost_nanos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UsageRecord;

    fn record(i: i64, model: &str, status: u16, cost: i64, latency_us: i64) -> UsageRecord {
        UsageRecord {
            id: format!("u{i:04}"),
            request_id: format!("req{i}"),
            received_at_ms: 1_700_000_000_000 + i * 1000,
            completed_at_ms: 1_700_000_000_000 + i * 1000 + 5,
            key_id: Some("key_a".into()),
            team: Some(if i % 2 == 0 { "eng" } else { "ops" }.into()),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            served_model: Some(model.into()),
            requested_model: Some(model.into()),
            provider: Some("mock".into()),
            status,
            latency_us,
            cost_nanos: cost,
            tokens: crate::usage::TokenUsage {
                input: 10,
                output: 5,
                ..Default::default()
            },
            decisions: "[]".into(),
            ..UsageRecord::default()
        }
    }

    #[tokio::test]
    async fn aggregates_and_chargeback_add_up_to_the_rows_and_pages_do_not_overlap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .expect("store");
        let records: Vec<UsageRecord> = (0..10)
            .map(|i| {
                record(
                    i,
                    if i < 6 { "a" } else { "b" },
                    if i == 3 { 500 } else { 200 },
                    1_000 + i,
                    (i + 1) * 1000,
                )
            })
            .collect();
        let entries: Vec<crate::store::usage_rows::UsageEntry> = records
            .iter()
            .map(|record| crate::store::usage_rows::UsageEntry {
                record: record.clone(),
                charges: Vec::new(),
            })
            .collect();
        store.write_usage(&entries).await.expect("insert");
        let total_cost: i64 = records.iter().map(|r| r.cost_nanos).sum();

        let by_model = store
            .usage_aggregate(&UsageFilter::default(), None, Some(GroupBy::Model))
            .await
            .expect("aggregate");
        assert_eq!(by_model.len(), 2);
        assert_eq!(by_model[0]["group"], "a");
        assert_eq!(by_model[0]["requests"], 6);
        assert_eq!(by_model[0]["errors"], 1);
        assert_eq!(by_model[0]["input_tokens"], 60);
        // Latencies 1..=6 ms: nearest-rank p50 is 3 ms, p95 is 6 ms.
        assert_eq!(by_model[0]["p50_latency_ms"], 3.0);
        assert_eq!(by_model[0]["p95_latency_ms"], 6.0);
        let sum: i64 = by_model
            .iter()
            .map(|r| r["cost_nanos"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(sum, total_cost);

        let buckets = store
            .usage_aggregate(&UsageFilter::default(), Some(Bucket::Minute), None)
            .await
            .expect("buckets");
        let requests: i64 = buckets
            .iter()
            .map(|r| r["requests"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(requests, 10);
        assert!(buckets.iter().all(|b| b["group"].is_null()));

        let (lines, total) = store
            .chargeback(&UsageFilter::default(), GroupBy::Team)
            .await
            .expect("chargeback");
        assert_eq!(total.cost_nanos, total_cost);
        assert_eq!(lines.iter().map(|l| l.cost_nanos).sum::<i64>(), total_cost);

        let errors = UsageFilter {
            status: Some("error".into()),
            ..UsageFilter::default()
        };
        let page = store.usage_page(&errors, 50, None).await.expect("errors");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["request_id"], "req3");

        let first = store
            .usage_page(&UsageFilter::default(), 4, None)
            .await
            .expect("p1");
        let cursor = usage_cursor(&first[3]).expect("cursor");
        let (ms, id) = cursor.split_once(':').expect("form");
        let second = store
            .usage_page(
                &UsageFilter::default(),
                50,
                Some((ms.parse().expect("ms"), id.to_string())),
            )
            .await
            .expect("p2");
        assert_eq!(first.len() + second.len(), 10);
        assert_eq!(first[0]["request_id"], "req9");
        assert_eq!(second[0]["request_id"], "req5");
        assert_eq!(
            store.usage_by_request("req7").await.expect("by id").len(),
            1
        );
    }
}
