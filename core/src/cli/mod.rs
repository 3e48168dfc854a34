//! The command line: `serve`, `check` and `keys`.

mod budgets;
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
        Store::open(&url)
            .await
            .with_context(|| format!("opening the store at {url}"))
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
        /// Bearer token for the /admin endpoints (unset: they are disabled).
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
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
    },
    /// Manage budgets stored in the database (works while the gateway runs).
    Budgets {
        #[command(subcommand)]
        command: budgets::BudgetsCommand,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

/// Sets up logging to stderr (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            policies,
            listen,
            no_watch,
            admin_token,
            unsafe_test_clock,
            db,
        } => {
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
            let store = db.open().await?;
            server::serve(ServeOptions {
                policies,
                store,
                listen,
                watch: !no_watch,
                admin_token: admin_token.filter(|t| !t.is_empty()),
                test_clock: unsafe_test_clock,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir } => Ok(check(&dir)),
        Command::Test { dir } => Ok(crate::policy::testing::run_dir(&dir)),
        Command::Keys { command, db } => keys::run(command, &db).await,
        Command::Budgets { command, db } => budgets::run(command, &db).await,
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
