//! The admin commands (`teams`, `users`, `usage`, `chargeback`, `audit`, `admin-tokens` and the
//! newer `keys` subcommands): each is one admin API call, made either in-process against the
//! local store (the same routes, checks and audit rows, actor `cli`) or, with `--gateway URL
//! --admin-token T`, over HTTP against a running gateway.

use std::process::ExitCode;

use anyhow::Context;
use axum::http::Method;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::DatabaseArgs;

/// Where admin commands go.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Call this gateway's admin API (e.g. http://127.0.0.1:8080) instead of the local store.
    #[arg(long, global = true, env = "TOLLGATE_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// The admin token for --gateway.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// An admin API answer.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (null if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Prints the error envelope to stderr and returns failure.
    pub fn fail(&self) -> ExitCode {
        let v = self.json();
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let message = v["error"]["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&self.body).to_string(),
            str::to_string,
        );
        eprintln!("error: {code}: {message} (HTTP {})", self.status);
        ExitCode::FAILURE
    }
}

/// `path` (under `/admin/v1`) with `query` pairs, percent-encoded.
pub fn path_with_query(path: &str, query: &[(&str, Option<String>)]) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse("http://local/")?.join(&format!("admin/v1{path}"))?;
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            if let Some(v) = v {
                pairs.append_pair(k, v);
            }
        }
    }
    let mut out = url.path().to_string();
    if let Some(q) = url.query().filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// One admin call, remote or local.
pub async fn call(
    remote: &Remote,
    db: &DatabaseArgs,
    method: Method,
    path_and_query: &str,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    if let Some(base) = &remote.gateway {
        let token = remote
            .admin_token
            .as_deref()
            .context("--gateway needs --admin-token (or TOLLGATE_ADMIN_TOKEN)")?;
        let client = crate::upstream::client()?;
        let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
        let mut request = client
            .request(method, &url)
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {}", crate::store::redact::redact_urls(&url)))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    } else {
        let store = db.open().await?;
        let (status, content_type, body) =
            crate::admin::call_local(store.clone(), method, path_and_query, body).await;
        store.close().await;
        Ok(Answer {
            status,
            content_type,
            body: body.to_vec(),
        })
    }
}

/// Prints an answer: JSON as is with `--json`, else a table for lists (the given columns) or
/// indented JSON for one object; text bodies (CSV, HTML) as they are.
pub fn print(answer: &Answer, json: bool, columns: &[&str]) -> ExitCode {
    if !answer.ok() {
        return answer.fail();
    }
    if !answer.content_type.starts_with("application/json") {
        print!("{}", String::from_utf8_lossy(&answer.body));
        return ExitCode::SUCCESS;
    }
    let value = answer.json();
    if json {
        println!("{value}");
        return ExitCode::SUCCESS;
    }
    match value.get("data").and_then(Value::as_array) {
        Some(rows) if !columns.is_empty() => {
            println!("{}", columns.join("\t").to_uppercase());
            for row in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match &row[*c] {
                        Value::Null => "-".into(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                println!("{}", cells.join("\t"));
            }
            if let Some(next) = value["next_cursor"].as_str() {
                println!("(more: --cursor {next})");
            }
        }
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
    }
    ExitCode::SUCCESS
}

/// `K=V` pairs as a JSON object.
pub fn metadata(pairs: &[String]) -> anyhow::Result<Option<Map<String, Value>>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--metadata '{pair}' is not K=V"))?;
        anyhow::ensure!(!k.trim().is_empty(), "--metadata '{pair}' has an empty key");
        out.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    Ok(Some(out))
}

/// Page arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PageArgs {
    /// Page size (1-500).
    #[arg(long)]
    limit: Option<i64>,
    /// The next_cursor of the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

impl PageArgs {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ]
    }
}

/// `teams` and `users`.
#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// List them.
    List {
        /// Case-insensitive part of the id, name (or email).
        #[arg(long)]
        q: Option<String>,
        /// Users only: of this team.
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create one with a chosen id (a slug).
    Create {
        /// The id (a-z, 0-9, '-', '_', '.').
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Users only: email.
        #[arg(long)]
        email: Option<String>,
        /// Users only: team id.
        #[arg(long)]
        team: Option<String>,
        /// An attribute (repeatable): K=V.
        #[arg(long = "metadata", value_name = "K=V")]
        metadata: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one.
    Get {
        /// Id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change one.
    Update {
        /// Id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Users only: new email.
        #[arg(long)]
        email: Option<String>,
        /// Users only: new team id.
        #[arg(long)]
        team: Option<String>,
        /// Replace the metadata (repeatable): K=V.
        #[arg(long = "metadata", value_name = "K=V")]
        metadata: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete one (refused while keys refer to it).
    Delete {
        /// Id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `teams ...` (`collection` = `teams`) or `users ...`.
pub async fn run_principals(
    collection: &str,
    command: PrincipalCommand,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let base = format!("/{collection}");
    let columns: &[&str] = if collection == "users" {
        &["id", "name", "email", "team", "created_at"]
    } else {
        &["id", "name", "created_at"]
    };
    let (answer, json) = match command {
        PrincipalCommand::List {
            q,
            team,
            page,
            json,
        } => {
            let mut query = page.pairs();
            query.push(("q", q));
            query.push(("team", team));
            (
                call(
                    remote,
                    db,
                    Method::GET,
                    &path_with_query(&base, &query)?,
                    None,
                )
                .await?,
                json,
            )
        }
        PrincipalCommand::Create {
            id,
            name,
            email,
            team,
            metadata: pairs,
            json,
        } => {
            let mut body = json!({"id": id, "name": name});
            if let Some(e) = email {
                body["email"] = json!(e);
            }
            if let Some(t) = team {
                body["team"] = json!(t);
            }
            if let Some(m) = metadata(&pairs)? {
                body["metadata"] = Value::Object(m);
            }
            (
                call(
                    remote,
                    db,
                    Method::POST,
                    &path_with_query(&base, &[])?,
                    Some(body),
                )
                .await?,
                json,
            )
        }
        PrincipalCommand::Get { id, json } => (
            call(
                remote,
                db,
                Method::GET,
                &path_with_query(&format!("{base}/{id}"), &[])?,
                None,
            )
            .await?,
            json,
        ),
        PrincipalCommand::Update {
            id,
            name,
            email,
            team,
            metadata: pairs,
            json,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(e) = email {
                body["email"] = json!(e);
            }
            if let Some(t) = team {
                body["team"] = json!(t);
            }
            if let Some(m) = metadata(&pairs)? {
                body["metadata"] = Value::Object(m);
            }
            (
                call(
                    remote,
                    db,
                    Method::PATCH,
                    &path_with_query(&format!("{base}/{id}"), &[])?,
                    Some(body),
                )
                .await?,
                json,
            )
        }
        PrincipalCommand::Delete { id, json } => (
            call(
                remote,
                db,
                Method::DELETE,
                &path_with_query(&format!("{base}/{id}"), &[])?,
                None,
            )
            .await?,
            json,
        ),
    };
    Ok(print(&answer, json, columns))
}

/// Usage filters.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageFilterArgs {
    /// From (RFC 3339 or Unix ms, inclusive).
    #[arg(long)]
    from: Option<String>,
    /// To (RFC 3339 or Unix ms, exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Status: 200, 429, ok, error, 4xx, 5xx...
    #[arg(long)]
    status: Option<String>,
    /// Provider (mcp for MCP calls).
    #[arg(long)]
    provider: Option<String>,
    /// Requested or served model.
    #[arg(long)]
    model: Option<String>,
    /// Team id.
    #[arg(long)]
    team: Option<String>,
    /// User id.
    #[arg(long)]
    user: Option<String>,
    /// Key id.
    #[arg(long)]
    key: Option<String>,
    /// Stage that refused the call.
    #[arg(long)]
    denied_stage: Option<String>,
    /// Endpoint path or family.
    #[arg(long)]
    endpoint: Option<String>,
}

impl UsageFilterArgs {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("status", self.status.clone()),
            ("provider", self.provider.clone()),
            ("model", self.model.clone()),
            ("team", self.team.clone()),
            ("user", self.user.clone()),
            ("key", self.key.clone()),
            ("denied_stage", self.denied_stage.clone()),
            ("endpoint", self.endpoint.clone()),
        ]
    }
}

/// `usage`.
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Usage rows, newest first.
    List {
        #[command(flatten)]
        filter: UsageFilterArgs,
        #[command(flatten)]
        page: PageArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every row of one request id.
    Get {
        /// The x-request-id.
        request_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Requests, errors, tokens, cost and latency per bucket and group.
    Aggregate {
        /// minute, hour or day.
        #[arg(long)]
        bucket: Option<String>,
        /// team, model, provider, key, user, status or endpoint.
        #[arg(long)]
        group_by: Option<String>,
        #[command(flatten)]
        filter: UsageFilterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `usage ...`.
pub async fn run_usage(
    command: UsageCommand,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    match command {
        UsageCommand::List { filter, page, json } => {
            let mut query = filter.pairs();
            query.extend(page.pairs());
            let answer = call(
                remote,
                db,
                Method::GET,
                &path_with_query("/usage", &query)?,
                None,
            )
            .await?;
            Ok(print(
                &answer,
                json,
                &[
                    "received_at",
                    "request_id",
                    "key_id",
                    "team",
                    "served_model",
                    "status",
                    "total_tokens",
                    "cost_usd",
                    "latency_ms",
                ],
            ))
        }
        UsageCommand::Get { request_id, json } => {
            let answer = call(
                remote,
                db,
                Method::GET,
                &path_with_query(&format!("/usage/{request_id}"), &[])?,
                None,
            )
            .await?;
            Ok(print(&answer, json, &[]))
        }
        UsageCommand::Aggregate {
            bucket,
            group_by,
            filter,
            json,
        } => {
            let mut query = filter.pairs();
            query.push(("bucket", bucket));
            query.push(("group_by", group_by));
            let answer = call(
                remote,
                db,
                Method::GET,
                &path_with_query("/usage/aggregate", &query)?,
                None,
            )
            .await?;
            Ok(print(
                &answer,
                json,
                &[
                    "bucket_start",
                    "group",
                    "requests",
                    "errors",
                    "input_tokens",
                    "output_tokens",
                    "cost_usd",
                    "p50_latency_ms",
                    "p95_latency_ms",
                ],
            ))
        }
    }
}

/// `chargeback` arguments.
#[derive(Debug, clap::Args)]
pub struct ChargebackArgs {
    /// From (RFC 3339 or Unix ms); default the start of this UTC month.
    #[arg(long)]
    from: Option<String>,
    /// To (RFC 3339 or Unix ms); default now.
    #[arg(long)]
    to: Option<String>,
    /// team, key or model.
    #[arg(long)]
    group_by: Option<String>,
    /// json, csv or html.
    #[arg(long)]
    format: Option<String>,
    /// Print JSON (same as --format json).
    #[arg(long)]
    json: bool,
}

/// Runs `chargeback`.
pub async fn run_chargeback(
    args: ChargebackArgs,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        Some("json".to_string())
    } else {
        args.format
    };
    let query = [
        ("from", args.from),
        ("to", args.to),
        ("group_by", args.group_by),
        ("format", format.clone()),
    ];
    let answer = call(
        remote,
        db,
        Method::GET,
        &path_with_query("/chargeback", &query)?,
        None,
    )
    .await?;
    if answer.ok() && format.as_deref().is_none_or(|f| f == "json") && !args.json {
        // A readable table of the JSON.
        let v = answer.json();
        println!(
            "chargeback by {} from {} to {}",
            v["group_by"].as_str().unwrap_or(""),
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or("")
        );
        let lines = v["lines"].as_array().cloned().unwrap_or_default();
        for l in lines.iter().chain(std::iter::once(&v["total"])) {
            println!(
                "{:<40} {:>8} req {:>12} in {:>12} out {:>16.9} USD",
                l["group"]
                    .as_str()
                    .unwrap_or(if std::ptr::eq(l, &v["total"]) {
                        "TOTAL"
                    } else {
                        "(none)"
                    }),
                l["requests"],
                l["input_tokens"],
                l["output_tokens"],
                l["cost_usd"].as_f64().unwrap_or(0.0)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    Ok(print(&answer, true, &[]))
}

/// `audit` arguments.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// From (RFC 3339 or Unix ms).
    #[arg(long)]
    from: Option<String>,
    /// To (RFC 3339 or Unix ms).
    #[arg(long)]
    to: Option<String>,
    /// Admin token id (env, cli, system, adm_...).
    #[arg(long)]
    actor: Option<String>,
    /// An action (key.create) or a noun (key).
    #[arg(long)]
    action: Option<String>,
    #[command(flatten)]
    page: PageArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `audit`.
pub async fn run_audit(
    args: AuditArgs,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let mut query = args.page.pairs();
    query.extend([
        ("from", args.from),
        ("to", args.to),
        ("actor", args.actor),
        ("action", args.action),
    ]);
    let answer = call(
        remote,
        db,
        Method::GET,
        &path_with_query("/audit", &query)?,
        None,
    )
    .await?;
    Ok(print(
        &answer,
        args.json,
        &["at", "actor", "action", "target"],
    ))
}

/// `admin-tokens`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List stored admin tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create one and print its secret (shown this once only).
    Create {
        /// Human name.
        #[arg(long)]
        name: String,
        /// admin or read (read tokens may only GET).
        #[arg(long, default_value = "read")]
        role: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete one; it stops working at once.
    Delete {
        /// Token id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `admin-tokens ...`.
pub async fn run_tokens(
    command: TokensCommand,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let columns = &["id", "name", "role", "prefix", "created_at"];
    match command {
        TokensCommand::List { json } => {
            let answer = call(
                remote,
                db,
                Method::GET,
                &path_with_query("/admin-tokens", &[])?,
                None,
            )
            .await?;
            Ok(print(&answer, json, columns))
        }
        TokensCommand::Create { name, role, json } => {
            let answer = call(
                remote,
                db,
                Method::POST,
                &path_with_query("/admin-tokens", &[])?,
                Some(json!({"name": name, "role": role})),
            )
            .await?;
            if answer.ok() && !json {
                let v = answer.json();
                println!(
                    "created admin token {} ({}, role {})",
                    v["token"]["id"].as_str().unwrap_or(""),
                    v["token"]["name"].as_str().unwrap_or(""),
                    v["token"]["role"].as_str().unwrap_or("")
                );
                println!(
                    "secret (shown once, store it now): {}",
                    v["secret"].as_str().unwrap_or("")
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(print(&answer, json, &[]))
        }
        TokensCommand::Delete { id, json } => {
            let answer = call(
                remote,
                db,
                Method::DELETE,
                &path_with_query(&format!("/admin-tokens/{id}"), &[])?,
                None,
            )
            .await?;
            Ok(print(&answer, json, &[]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        let p = path_with_query("/usage", &[("team", Some("a b&c".into())), ("key", None)])
            .expect("path");
        assert_eq!(p, "/admin/v1/usage?team=a+b%26c");
        assert_eq!(
            path_with_query("/keys/k1", &[]).expect("path"),
            "/admin/v1/keys/k1"
        );
    }
}
