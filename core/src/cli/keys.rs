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

pub async fn run(command: KeysCommand, db: &DatabaseArgs) -> anyhow::Result<ExitCode> {
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
            if let Some(existing) = store.key_by_id(&id).await?
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
    };
    store.close().await;
    Ok(code)
}
