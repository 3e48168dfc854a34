//! `/admin/v1/usage` (rows, lookup by request id, aggregates) and `/admin/v1/chargeback`
//! (JSON, CSV, printable HTML). Money is exact integer nano-USD plus a USD number.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{Datelike, TimeZone};
use serde_json::{Value, json};

use super::{Admin, ApiError, Call, Reply, page};
use crate::clock::now_ms;
use crate::store::admin::rfc3339;
use crate::store::usage_query::{
    Bucket, ChargeLine, GroupBy, UsageFilter, usage_cursor, valid_status_filter,
};

/// The usage filters of a call.
pub fn filter(call: &Call) -> Result<UsageFilter, ApiError> {
    let status = call.q("status");
    if let Some(s) = &status
        && !valid_status_filter(s)
    {
        return Err(ApiError::invalid(format!(
            "status '{s}' must be an HTTP status, ok, error, 2xx, 3xx, 4xx or 5xx"
        )));
    }
    let from_ms = call.time("from")?;
    let to_ms = call.time("to")?;
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from > to
    {
        return Err(ApiError::invalid("from is after to"));
    }
    Ok(UsageFilter {
        from_ms,
        to_ms,
        status,
        provider: call.q("provider"),
        model: call.q("model"),
        team: call.q("team"),
        user: call.q("user"),
        key: call.q("key"),
        denied_stage: call.q("denied_stage"),
        endpoint: call.q("endpoint"),
    })
}

/// Parses a usage cursor `MS:ID`.
pub fn cursor(call: &Call) -> Result<Option<(i64, String)>, ApiError> {
    let Some(text) = call.q("cursor") else {
        return Ok(None);
    };
    text.split_once(':')
        .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
        .map(Some)
        .ok_or_else(|| ApiError::invalid(format!("cursor '{text}' is not a usage cursor")))
}

/// A page of rows with `limit + 1` fetched.
pub fn usage_page(rows: Vec<Value>, limit: i64) -> Reply {
    let n = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = (rows.len() > n)
        .then(|| usage_cursor(&rows[n - 1]))
        .flatten();
    page(rows.into_iter().take(n).collect(), next)
}

/// `GET /usage`.
pub async fn list(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let limit = call.limit()?;
    let rows = admin
        .store
        .usage_page(&filter(&call)?, limit + 1, cursor(&call)?)
        .await?;
    Ok(usage_page(rows, limit))
}

/// `GET /usage/{request_id}`.
pub async fn by_request(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("request_id");
    let rows = admin.store.usage_by_request(&id).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "no usage rows for request '{id}' (rows are written within about a second of the call)"
        )));
    }
    Ok(Reply::ok(json!({"data": rows})))
}

/// `GET /usage/aggregate`.
pub async fn aggregate(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let bucket = call
        .q("bucket")
        .map(|b| {
            Bucket::parse(&b).ok_or_else(|| {
                ApiError::invalid(format!("bucket '{b}' must be minute, hour or day"))
            })
        })
        .transpose()?;
    let group = call
        .q("group_by")
        .map(|g| {
            GroupBy::parse(&g).ok_or_else(|| {
                ApiError::invalid(format!(
                    "group_by '{g}' must be team, model, provider, key, user, status or endpoint"
                ))
            })
        })
        .transpose()?;
    let rows = admin
        .store
        .usage_aggregate(&filter(&call)?, bucket, group)
        .await?;
    Ok(Reply::ok(json!({"data": rows})))
}

fn month_start(now: i64) -> i64 {
    let now = chrono::Utc
        .timestamp_millis_opt(now)
        .single()
        .unwrap_or_default();
    chrono::Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp_millis())
}

/// A CSV field: quoted when needed; a leading `= + - @` is neutralised so spreadsheets do not
/// run it as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn usd_text(nanos: i64) -> String {
    format!("{:.9}", nanos as f64 / 1e9)
}

/// `GET /chargeback`.
pub async fn chargeback(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let group = match call.q("group_by").as_deref() {
        None | Some("team") => crate::store::usage_query::GroupBy::Team,
        Some("key") => GroupBy::Key,
        Some("model") => GroupBy::Model,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "group_by '{other}' must be team, key or model"
            )));
        }
    };
    let format = call.q("format").unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(ApiError::invalid(format!(
            "format '{format}' must be json, csv or html"
        )));
    }
    let now = now_ms();
    let from = call.time("from")?.unwrap_or_else(|| month_start(now));
    let to = call.time("to")?.unwrap_or(now);
    if from > to {
        return Err(ApiError::invalid("from is after to"));
    }
    let filter = UsageFilter {
        from_ms: Some(from),
        to_ms: Some(to),
        ..UsageFilter::default()
    };
    let (lines, total) = admin.store.chargeback(&filter, group).await?;
    let label = |l: &ChargeLine| l.group.clone().unwrap_or_else(|| "(none)".into());
    match format.as_str() {
        "csv" => {
            let mut out =
                String::from("group,requests,input_tokens,output_tokens,cost_nanos,cost_usd\n");
            for l in lines.iter().chain(std::iter::once(&total)) {
                let name = if std::ptr::eq(l, &total) {
                    "total".to_string()
                } else {
                    csv_field(&label(l))
                };
                let _ = writeln!(
                    out,
                    "{name},{},{},{},{},{}",
                    l.requests,
                    l.input_tokens,
                    l.output_tokens,
                    l.cost_nanos,
                    usd_text(l.cost_nanos)
                );
            }
            Ok(Reply::Text {
                content_type: "text/csv; charset=utf-8",
                body: out,
            })
        }
        "html" => {
            let (f, t) = (rfc3339(Some(from)), rfc3339(Some(to)));
            let (f, t) = (f.as_str().unwrap_or(""), t.as_str().unwrap_or(""));
            let mut out = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>tollgate chargeback {f} to {t}</title>\
                 <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
                 td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
                 tfoot td{{font-weight:bold}}</style></head><body>\
                 <h1>Chargeback by {g}</h1><p>From {f} to {t} (UTC). Costs in USD; exact nano-USD in the last column.</p>\
                 <table><thead><tr><th>{g}</th><th>requests</th><th>input tokens</th><th>output tokens</th><th>cost (USD)</th><th>cost (nano-USD)</th></tr></thead><tbody>",
                g = group.as_str()
            );
            let row = |out: &mut String, name: &str, l: &ChargeLine| {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    html_escape(name),
                    l.requests,
                    l.input_tokens,
                    l.output_tokens,
                    usd_text(l.cost_nanos),
                    l.cost_nanos
                );
            };
            for l in &lines {
                row(&mut out, &label(l), l);
            }
            out.push_str("</tbody><tfoot>");
            row(&mut out, "total", &total);
            out.push_str("</tfoot></table></body></html>\n");
            Ok(Reply::Text {
                content_type: "text/html; charset=utf-8",
                body: out,
            })
        }
        _ => Ok(Reply::ok(json!({
            "from": rfc3339(Some(from)),
            "to": rfc3339(Some(to)),
            "group_by": group.as_str(),
            "lines": lines.iter().map(ChargeLine::to_json).collect::<Vec<_>>(),
            "total": total.to_json(),
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("eng"), "eng");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(html_escape("<b>&"), "&lt;b&gt;&amp;");
        assert_eq!(month_start(86_400_000 * 40), 86_400_000 * 31);
    }
}
