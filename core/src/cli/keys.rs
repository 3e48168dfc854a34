//! `tollgate keys`: create, list, revoke and rotate virtual keys.
//!
//! Changes are written to the store and then confirmed by every live gateway instance (each
//! reports the key version it has applied), so once a command returns, the change decides the
//! next request everywhere.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::DatabaseArgs;
use super::admin::{self, Remote};
use crate::clock::now_ms;
use crate::store::keys::NewKey;
use crate::store::{KeyRecord, ModelGrant, Store};

/// How long a key change waits for running gateways to apply it.
const CONFIRM_WITHIN: Duration = Duration::from_secs(3);
/// An instance whose heartbeat is older than this is considered gone.
const INSTANCE_FRESH_MS: i64 = 5_000;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once only).
    Create {
        /// Human name.
        #[arg(long)]
        name: String,
        /// Owning team.
        #[arg(long)]
        team: Option<String>,
        /// The person or service the key belongs to.
        #[arg(long)]
        owner: Option<String>,
        /// An attribute shown to access rules as key.metadata.K (repeatable): K=V.
        #[arg(long = "metadata", value_name = "K=V")]
        metadata: Vec<String>,
        /// Model Access: `*` for every model, or a comma-separated list.
        #[arg(long, default_value = "*")]
        models: String,
        /// MCP Access: `*` for every MCP server, or a comma-separated list of server slugs
        /// (none by default).
        #[arg(long, default_value = "")]
        mcp: String,
        /// Expiry as RFC 3339, e.g. 2027-01-31T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it answers 401 api_key_revoked from the next request on.
    Revoke {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the demo's key (every model and MCP server), creating it in this store on first
    /// use and keeping its secret in FILE (default: <data-dir>/demo-key, mode 0600).
    Demo {
        /// Where the demo key's secret is kept.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Give a key a new secret; the id, grants and history stay.
    Rotate {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Get {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, team, user, metadata, expiry or grants.
    Update {
        /// Key id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New team id ('' clears).
        #[arg(long)]
        team: Option<String>,
        /// New user id ('' clears).
        #[arg(long)]
        user: Option<String>,
        /// Replace the metadata (repeatable): K=V.
        #[arg(long = "metadata", value_name = "K=V")]
        metadata: Vec<String>,
        /// New Model Access: `*` or a comma-separated list.
        #[arg(long)]
        models: Option<String>,
        /// New MCP Access: `*`, a comma-separated list, or '' for none.
        #[arg(long)]
        mcp: Option<String>,
        /// New expiry (RFC 3339); 'never' clears it.
        #[arg(long)]
        expires_at: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a revoked key.
    Unrevoke {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A key's rotation history.
    Rotations {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn names(spec: &str) -> Value {
    Value::from(
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )
}

/// The commands that go through the admin API: every one with `--gateway`, and the newer ones
/// (get, update, unrevoke, rotations) locally too.
async fn via_api(
    command: KeysCommand,
    remote: &Remote,
    db: &DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    use axum::http::Method;
    let key_columns = &[
        "id",
        "name",
        "team",
        "user",
        "prefix",
        "status",
        "expires_at",
        "models",
    ];
    let path = |p: &str| admin::path_with_query(p, &[]);
    let (method, target, body, json, columns): (Method, String, Option<Value>, bool, &[&str]) =
        match command {
            KeysCommand::Create {
                name,
                team,
                owner,
                metadata,
                models,
                mcp,
                expires_at,
                json,
            } => {
                let mut body = json!({"name": name, "team": team, "user": owner,
                    "models": names(&models), "mcp_servers": names(&mcp), "expires_at": expires_at});
                if let Some(m) = admin::metadata(&metadata)? {
                    body["metadata"] = Value::Object(m);
                }
                (Method::POST, path("/keys")?, Some(body), json, &[])
            }
            KeysCommand::List { json } => (Method::GET, path("/keys")?, None, json, key_columns),
            KeysCommand::Demo { .. } => {
                anyhow::bail!("`keys demo` works on the local store only: drop --gateway")
            }
            KeysCommand::Revoke { id, json } => (
                Method::POST,
                path(&format!("/keys/{id}/revoke"))?,
                None,
                json,
                &[],
            ),
            KeysCommand::Rotate { id, json } => (
                Method::POST,
                path(&format!("/keys/{id}/rotate"))?,
                None,
                json,
                &[],
            ),
            KeysCommand::Get { id, json } => {
                (Method::GET, path(&format!("/keys/{id}"))?, None, json, &[])
            }
            KeysCommand::Unrevoke { id, json } => (
                Method::POST,
                path(&format!("/keys/{id}/unrevoke"))?,
                None,
                json,
                &[],
            ),
            KeysCommand::Rotations { id, json } => (
                Method::GET,
                path(&format!("/keys/{id}/rotations"))?,
                None,
                json,
                &["at", "actor", "old_prefix", "new_prefix"],
            ),
            KeysCommand::Update {
                id,
                name,
                team,
                user,
                metadata,
                models,
                mcp,
                expires_at,
                json,
            } => {
                let mut body = json!({});
                if let Some(n) = name {
                    body["name"] = json!(n);
                }
                if let Some(t) = team {
                    body["team"] = if t.is_empty() { Value::Null } else { json!(t) };
                }
                if let Some(u) = user {
                    body["user"] = if u.is_empty() { Value::Null } else { json!(u) };
                }
                if let Some(m) = admin::metadata(&metadata)? {
                    body["metadata"] = Value::Object(m);
                }
                if let Some(m) = models {
                    body["models"] = names(&m);
                }
                if let Some(m) = mcp {
                    body["mcp_servers"] = names(&m);
                }
                if let Some(e) = expires_at {
                    body["expires_at"] = if e == "never" { Value::Null } else { json!(e) };
                }
                (
                    Method::PATCH,
                    path(&format!("/keys/{id}"))?,
                    Some(body),
                    json,
                    &[],
                )
            }
        };
    let answer = admin::call(remote, db, method, &target, body).await?;
    if answer.ok() && !json && answer.json()["secret"].is_string() {
        let v = answer.json();
        println!(
            "key {} ({})",
            v["key"]["id"].as_str().unwrap_or(""),
            v["key"]["name"].as_str().unwrap_or("")
        );
        println!(
            "secret (shown once, store it now): {}",
            v["secret"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(admin::print(&answer, json, columns))
}

fn rfc3339(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        })
}

fn key_json(key: &KeyRecord) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "team": key.team,
        "owner": key.owner,
        "metadata": key.metadata,
        "prefix": key.secret_prefix,
        "models": match &key.models {
            ModelGrant::All => json!(["*"]),
            ModelGrant::Only(names) => json!(names),
        },
        "mcp": match &key.mcp {
            ModelGrant::All => json!(["*"]),
            ModelGrant::Only(names) => json!(names),
        },
        "state": key.state(now_ms()).as_str(),
        "created_at": rfc3339(Some(key.created_at_ms)),
        "expires_at": rfc3339(key.expires_at_ms),
        "revoked_at": rfc3339(key.revoked_at_ms),
        "rotations": key.rotations,
    })
}

/// Waits until every live gateway has applied the current key version.
async fn confirm(store: &Store) -> anyhow::Result<()> {
    let version = store.keys_version().await?;
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    loop {
        let behind = store.instances_behind(version, INSTANCE_FRESH_MS).await?;
        if behind == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "warning: {behind} running gateway(s) have not confirmed the change yet; they apply it within a second of reaching the store"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(
    command: KeysCommand,
    db: &DatabaseArgs,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    if remote.gateway.is_some()
        || matches!(
            command,
            KeysCommand::Get { .. }
                | KeysCommand::Update { .. }
                | KeysCommand::Unrevoke { .. }
                | KeysCommand::Rotations { .. }
        )
    {
        return via_api(command, remote, db).await;
    }
    let store = db.open().await?;
    let code = match command {
        KeysCommand::Create {
            name,
            team,
            owner,
            metadata,
            models,
            mcp,
            expires_at,
            json,
        } => {
            let mut attributes = serde_json::Map::new();
            for pair in metadata {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--metadata '{pair}' is not K=V"))?;
                anyhow::ensure!(!k.trim().is_empty(), "--metadata '{pair}' has an empty key");
                attributes.insert(k.trim().to_string(), Value::String(v.to_string()));
            }
            let expires_at_ms = match expires_at {
                None => None,
                Some(text) => {
                    let t = chrono::DateTime::parse_from_rfc3339(&text)
                        .with_context(|| format!("--expires-at '{text}' is not RFC 3339"))?;
                    let ms = t.timestamp_millis();
                    anyhow::ensure!(ms > now_ms(), "--expires-at '{text}' is in the past");
                    Some(ms)
                }
            };
            let grant = ModelGrant::parse(&models);
            anyhow::ensure!(
                grant != ModelGrant::Only(vec![]),
                "--models needs '*' or at least one model name"
            );
            let (key, secret) = store
                .create_key(&NewKey {
                    name,
                    team,
                    owner,
                    metadata: attributes,
                    models: grant,
                    mcp: ModelGrant::parse(&mcp),
                    expires_at_ms,
                })
                .await?;
            store
                .audit(
                    "cli",
                    "key.create",
                    Some(&key.id),
                    None,
                    Some(&crate::store::admin::key_json(&key)),
                )
                .await?;
            confirm(&store).await?;
            if json {
                let mut out = key_json(&key);
                out["secret"] = Value::String(secret);
                println!("{out}");
            } else {
                println!("created key {} ({})", key.id, key.name);
                println!("secret (shown once, store it now): {secret}");
            }
            ExitCode::SUCCESS
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys().await?;
            if json {
                println!(
                    "{}",
                    Value::from(keys.iter().map(key_json).collect::<Vec<_>>())
                );
            } else {
                println!(
                    "{:<38} {:<20} {:<14} {:<12} {:<8} {:<21} MODELS",
                    "ID", "NAME", "TEAM", "PREFIX", "STATE", "EXPIRES"
                );
                for key in &keys {
                    let expires = rfc3339(key.expires_at_ms);
                    println!(
                        "{:<38} {:<20} {:<14} {:<12} {:<8} {:<21} {}",
                        key.id,
                        key.name,
                        key.team.as_deref().unwrap_or("-"),
                        format!("{}…", key.secret_prefix),
                        key.state(now_ms()).as_str(),
                        expires.as_str().unwrap_or("never"),
                        key.models.display()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        KeysCommand::Revoke { id, json } => match store.revoke_key(&id).await? {
            None => {
                eprintln!("error: no key with id '{id}'");
                ExitCode::FAILURE
            }
            Some(key) => {
                store
                    .audit(
                        "cli",
                        "key.revoke",
                        Some(&key.id),
                        None,
                        Some(&crate::store::admin::key_json(&key)),
                    )
                    .await?;
                confirm(&store).await?;
                if json {
                    println!("{}", key_json(&key));
                } else {
                    println!("revoked key {} ({})", key.id, key.name);
                }
                ExitCode::SUCCESS
            }
        },
        KeysCommand::Demo { file } => {
            let file = file.unwrap_or_else(|| db.data_dir.join("demo-key"));
            super::demo_key::run(&store, &file).await?;
            ExitCode::SUCCESS
        }
        KeysCommand::Rotate { id, json } => {
            let existing = store.key_by_id(&id).await?;
            if let Some(existing) = &existing
                && existing.revoked_at_ms.is_some()
            {
                eprintln!("error: key '{id}' is revoked; revoked keys cannot be rotated");
                return Ok(ExitCode::FAILURE);
            }
            match store.rotate_key(&id).await? {
                None => {
                    eprintln!("error: no key with id '{id}'");
                    ExitCode::FAILURE
                }
                Some((key, secret)) => {
                    let old_prefix = existing.map(|e| e.secret_prefix).unwrap_or_default();
                    store
                        .record_rotation("cli", &key.id, &old_prefix, &key.secret_prefix)
                        .await?;
                    store
                        .audit(
                            "cli",
                            "key.rotate",
                            Some(&key.id),
                            None,
                            Some(&crate::store::admin::key_json(&key)),
                        )
                        .await?;
                    confirm(&store).await?;
                    if json {
                        let mut out = key_json(&key);
                        out["secret"] = Value::String(secret);
                        println!("{out}");
                    } else {
                        println!(
                            "rotated key {} ({}); the previous secret no longer works",
                            key.id, key.name
                        );
                        println!("new secret (shown once, store it now): {secret}");
                    }
                    ExitCode::SUCCESS
                }
            }
        }
        KeysCommand::Get { .. }
        | KeysCommand::Update { .. }
        | KeysCommand::Unrevoke { .. }
        | KeysCommand::Rotations { .. } => ExitCode::FAILURE,
    };
    store.close().await;
    Ok(code)
}
