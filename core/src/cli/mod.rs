//! The command line: `serve`, `check`, `keys` and the admin commands (`teams`, `users`,
//! `budgets`, `usage`, `chargeback`, `audit`, `admin-tokens`).

mod admin;
mod budgets;
mod demo_key;
mod keys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::policy::Policies;
use crate::server::{self, ServeOptions};
use crate::store::Store;

/// tollgate: a governed gateway for LLM and MCP traffic.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TOLLGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Connection and read limits of `serve`.
#[derive(Debug, clap::Args)]
pub struct HttpLimitArgs {
    /// Milliseconds a client has to send a request's headers (also the longest idle
    /// keep-alive wait).
    #[arg(
        long,
        env = "TOLLGATE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    header_read_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body once its headers are in.
    #[arg(long, env = "TOLLGATE_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    body_read_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, env = "TOLLGATE_HTTP2_MAX_STREAMS", default_value_t = 128)]
    http2_max_streams: u32,
    /// Threads that serve client connections, each with its own event loop and upstream pool
    /// (default: one per CPU). 0 serves connections on the shared work-stealing runtime.
    #[arg(long, env = "TOLLGATE_CONNECTION_THREADS")]
    connection_threads: Option<usize>,
}

impl HttpLimitArgs {
    fn limits(&self) -> anyhow::Result<server::listener::HttpLimits> {
        if self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
            || self.max_connections == 0
            || self.http2_max_streams == 0
        {
            anyhow::bail!(
                "--header-read-timeout-ms, --body-read-timeout-ms, --max-connections and --http2-max-streams must be greater than 0"
            );
        }
        Ok(server::listener::HttpLimits {
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: std::time::Duration::from_millis(self.body_read_timeout_ms),
            max_connections: self.max_connections,
            http2_max_concurrent_streams: self.http2_max_streams,
            connection_threads: self
                .connection_threads
                .unwrap_or_else(|| server::listener::HttpLimits::default().connection_threads),
        })
    }
}

/// Where the store lives; shared by `serve` and `keys`.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// Database URL. Default: an SQLite file in the data directory.
    #[arg(long, global = true, env = "TOLLGATE_DATABASE")]
    pub database: Option<String>,
    /// Data directory for the default SQLite database.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_DATA_DIR",
        default_value = ".tollgate"
    )]
    pub data_dir: PathBuf,
}

impl DatabaseArgs {
    /// The effective database URL.
    pub fn url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tollgate.db").display()))
    }

    /// Opens the store.
    pub async fn open(&self) -> anyhow::Result<Store> {
        let url = self.url();
        Store::open(&url).await.with_context(|| {
            format!(
                "opening the store at {}",
                crate::store::redact::redact_urls(&url)
            )
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway on a policy directory.
    Serve {
        /// The policy directory (gateway.toml, access/, routing/, plugins/).
        #[arg(long, env = "TOLLGATE_POLICIES")]
        policies: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Do not watch the policy directory; reload with SIGHUP or POST /admin/policies/reload.
        #[arg(long)]
        no_watch: bool,
        /// Bearer token for the /admin endpoints (unset: they are disabled); at least 24
        /// characters.
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// /metrics needs the admin token too.
        #[arg(long, env = "TOLLGATE_PROTECT_METRICS")]
        protect_metrics: bool,
        /// Proxies (load balancers) whose X-Forwarded-For names the client, as comma-separated
        /// CIDR networks or addresses. Unset: the socket peer is the client.
        #[arg(long, env = "TOLLGATE_TRUSTED_PROXIES", default_value = "")]
        trusted_proxies: String,
        #[command(flatten)]
        http_limits: HttpLimitArgs,
        /// Directory of the usage journal, where usage records wait while the store is away
        /// (and dead letters the store refused fall back to). Default: `<database file>.journal`
        /// beside an SQLite store, `<data-dir>/journal` with PostgreSQL. One gateway per
        /// directory.
        #[arg(long, env = "TOLLGATE_USAGE_JOURNAL_DIR")]
        usage_journal_dir: Option<PathBuf>,
        /// Size limit of the usage journal in MiB; records beyond it are lost (logged whole).
        #[arg(long, env = "TOLLGATE_USAGE_JOURNAL_MAX_MIB", default_value_t = 256)]
        usage_journal_max_mib: u64,
        /// Milliseconds shutdown (SIGTERM, SIGINT) waits for in-flight requests and streams;
        /// streams still open then are ended with an error event, recorded and settled.
        #[arg(long, env = "TOLLGATE_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
        shutdown_grace_ms: u64,
        /// Lets POST /admin/test/clock shift the gateway's clock. For tests of budget and quota
        /// windows only; never in production.
        #[arg(long, hide = true)]
        unsafe_test_clock: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Validate a policy directory exactly as `serve` loads it.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Run the policy test cases in DIR/tests/*.toml.
    Test {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Manage virtual keys (works while the gateway runs).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Manage teams (keys' team refers to them).
    Teams {
        #[command(subcommand)]
        command: admin::PrincipalCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Manage users (keys' user refers to them).
    Users {
        #[command(subcommand)]
        command: admin::PrincipalCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Read usage rows and aggregates.
    Usage {
        #[command(subcommand)]
        command: admin::UsageCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Cost per team, key or model over a period (table, JSON, CSV or HTML).
    Chargeback {
        #[command(flatten)]
        args: admin::ChargebackArgs,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Read the audit log of admin changes and policy reloads.
    Audit {
        #[command(flatten)]
        args: admin::AuditArgs,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Manage stored admin tokens (role admin or read).
    AdminTokens {
        #[command(subcommand)]
        command: admin::TokensCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Manage budgets stored in the database (works while the gateway runs).
    Budgets {
        #[command(subcommand)]
        command: budgets::BudgetsCommand,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        remote: admin::Remote,
    },
}

/// Sets up logging to stderr (`RUST_LOG` filters, default `info`) and, for `serve` with
/// `TOLLGATE_OTLP_ENDPOINT` set, trace export ([`crate::telemetry`]). Keep the returned handle
/// until the command has finished, then shut it down to flush the last spans.
pub fn init_tracing(cli: &Cli) -> crate::telemetry::Telemetry {
    let serve = matches!(cli.command, Command::Serve { .. });
    crate::telemetry::init(cli.log_format == LogFormat::Json, serve)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            policies,
            listen,
            no_watch,
            admin_token,
            protect_metrics,
            trusted_proxies,
            http_limits,
            usage_journal_dir,
            usage_journal_max_mib,
            shutdown_grace_ms,
            unsafe_test_clock,
            db,
        } => {
            if usage_journal_max_mib == 0 {
                anyhow::bail!("--usage-journal-max-mib must be greater than 0");
            }
            let http_limits = http_limits.limits()?;
            let trusted_proxies = server::client_ip::TrustedProxies::parse(&trusted_proxies)
                .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?;
            // Refuse a bad admin configuration before loading anything.
            crate::admin_auth::AdminAuth::new(admin_token.as_deref(), protect_metrics)
                .map_err(anyhow::Error::msg)?;
            let policies = match Policies::open(&policies) {
                Ok(p) => Arc::new(p),
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    anyhow::bail!(
                        "the policy directory has {} error(s); not starting",
                        errors.len()
                    );
                }
            };
            let url = db.url();
            let store = match Store::open(&url).await {
                Ok(store) => server::StoreSource::Open(store),
                // A shared store that is down (or still starting) when the gateway starts:
                // serve 503 until it answers rather than exit (an orchestrator restarting the
                // process in a loop helps nobody).
                Err(e)
                    if crate::store::is_unreachable(&e)
                        && (url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
                {
                    tracing::warn!(error = %e, "the store is unreachable at start");
                    server::StoreSource::Connect(url)
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "opening the store at {}",
                        crate::store::redact::redact_urls(&url)
                    )));
                }
            };
            let sqlite_path = match &store {
                server::StoreSource::Open(store) => store.sqlite_path(),
                server::StoreSource::Connect(_) => None,
            };
            let journal = crate::store::usage_writer::JournalConfig {
                dir: usage_journal_dir.unwrap_or_else(|| match sqlite_path {
                    Some(file) => {
                        let mut dir = file.as_os_str().to_owned();
                        dir.push(".journal");
                        PathBuf::from(dir)
                    }
                    None => db.data_dir.join("journal"),
                }),
                max_bytes: usage_journal_max_mib.saturating_mul(1024 * 1024),
            };
            server::serve(ServeOptions {
                policies,
                store,
                listen,
                watch: !no_watch,
                admin_token: admin_token.filter(|t| !t.is_empty()),
                protect_metrics,
                test_clock: unsafe_test_clock,
                http_limits,
                trusted_proxies,
                journal,
                shutdown_grace: std::time::Duration::from_millis(shutdown_grace_ms),
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir } => Ok(check(&dir)),
        Command::Test { dir } => Ok(crate::policy::testing::run_dir(&dir)),
        Command::Keys {
            command,
            db,
            remote,
        } => keys::run(command, &db, &remote).await,
        Command::Teams {
            command,
            db,
            remote,
        } => admin::run_principals("teams", command, &remote, &db).await,
        Command::Users {
            command,
            db,
            remote,
        } => admin::run_principals("users", command, &remote, &db).await,
        Command::Usage {
            command,
            db,
            remote,
        } => admin::run_usage(command, &remote, &db).await,
        Command::Chargeback { args, db, remote } => admin::run_chargeback(args, &remote, &db).await,
        Command::Audit { args, db, remote } => admin::run_audit(args, &remote, &db).await,
        Command::AdminTokens {
            command,
            db,
            remote,
        } => admin::run_tokens(command, &remote, &db).await,
        Command::Budgets {
            command,
            db,
            remote,
        } => budgets::run(command, &db, &remote).await,
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    match crate::policy::load_dir(dir, 1, None) {
        Ok(snapshot) => {
            for provider in snapshot.providers.values() {
                if let crate::policy::Credential::Missing(why) = &provider.credential {
                    println!(
                        "warning: provider '{}': {why}; its models will answer provider_api_key_not_configured",
                        provider.name
                    );
                }
            }
            println!(
                "ok: {} provider(s), {} model(s), {} group(s), {} access rule(s), {} routing script(s), {} plugin(s), content hash {}",
                snapshot.providers.len(),
                snapshot.models.len(),
                snapshot.groups.len(),
                snapshot.access_rules.len(),
                snapshot.routing.len(),
                snapshot.plugins.len(),
                &snapshot.content_hash[..12]
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            println!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}
