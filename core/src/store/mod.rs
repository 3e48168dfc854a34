//! Persistent state: virtual keys, usage records and gateway instances, behind one interface.
//!
//! SQLite (one file, WAL) is the embedded default; PostgreSQL is the store for several gateway
//! replicas. Both run the same queries through sqlx's `Any` driver (times are Unix ms, JSON is
//! text, `$n` placeholders), each with its own migrations folder for the DDL. The one exception
//! is the embedded store's usage rows: the usage writer inserts them, with the counter charges
//! they carry, on a SQLite connection of its own ([`sqlite_rows`]), with the same statements.

pub mod admin;
pub mod journal;
pub mod key_cache;
pub mod keys;
pub mod ledger;
pub mod mcp;
pub(crate) mod pg_batch;
pub mod redact;
pub mod sanitize;
pub(crate) mod sql;
pub(crate) mod sqlite_rows;
pub mod usage_query;
pub mod usage_rows;
pub mod usage_writer;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

pub use keys::{KeyRecord, ModelGrant};
pub use usage_rows::UsageEntry;

use crate::clock::now_ms;
use crate::usage::TokenUsage;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used (shown with its password redacted).
    #[error(
        "unsupported database URL '{}': use sqlite://PATH or postgres://USER@HOST/DB",
        redact::redact_urls(.0)
    )]
    UnsupportedUrl(String),
    /// The database failed (passwords in URLs redacted).
    #[error("database error: {}", redact::redact_urls(&.0.to_string()))]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {}", redact::redact_urls(&.0.to_string()))]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another gateway serves on this embedded store.
    /// The embedded store's rows connection (`sqlite_rows`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Locked(String),
    /// A stored value is not what the schema promises.
    #[error("corrupt stored value in {what}: {detail}")]
    Corrupt {
        /// The column.
        what: &'static str,
        /// The problem.
        detail: String,
    },
}

/// One usage record: everything tollgate knows about one call, never prompts or secrets.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UsageRecord {
    /// Record id.
    pub id: String,
    /// The `x-request-id` of the call.
    pub request_id: String,
    /// When the request arrived (Unix ms).
    pub received_at_ms: i64,
    /// When the call finished, including the end of a stream (Unix ms).
    pub completed_at_ms: i64,
    /// The virtual key, once authenticated.
    pub key_id: Option<String>,
    /// The key's team.
    pub team: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Route path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The model name the client sent.
    pub requested_model: Option<String>,
    /// The tollgate model that answered.
    pub served_model: Option<String>,
    /// The model id the provider saw.
    pub upstream_model: Option<String>,
    /// The provider that answered.
    pub provider: Option<String>,
    /// The API family the client called: `openai`, `anthropic`, `gemini`, `vllm`, `unified`.
    pub endpoint_family: Option<String>,
    /// The family of the provider that answered (`openai`, `azure`, `anthropic`, ...).
    pub upstream_family: Option<String>,
    /// Final status returned to the client.
    pub status: u16,
    /// Stable error code when the gateway answered with an error.
    pub error_code: Option<String>,
    /// The lifecycle stage that stopped the request.
    pub denied_stage: Option<String>,
    /// Total wall-clock time in the gateway, stream included (µs).
    pub latency_us: i64,
    /// Time to the first response byte sent to the client (µs).
    pub ttfb_us: Option<i64>,
    /// Time from sending upstream to the upstream's response headers (µs).
    pub upstream_latency_us: Option<i64>,
    /// Normalized tokens.
    pub tokens: TokenUsage,
    /// Cost in nano-USD from the model's pricing.
    pub cost_nanos: i64,
    /// The raw provider usage JSON.
    pub provider_usage: Option<String>,
    /// The provider's own request id.
    pub provider_request_id: Option<String>,
    /// How a stream ended: `completed`, `client_disconnected`, `upstream_error`, `idle_timeout`,
    /// `shutdown` (ended by the gateway at the end of a shutdown grace period).
    pub stream_status: Option<String>,
    /// JSON array of stage decisions.
    pub decisions: String,
    /// JSON routing trace (target, script, order, attempts).
    pub route: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// Generation of the policy snapshot that decided the request.
    pub policy_generation: i64,
    /// The MCP side of an MCP request (`provider = mcp`); `None` for model calls.
    pub mcp: Option<McpUsage>,
    /// Set where this process serialised the JSON columns (`decisions`, `route`,
    /// `provider_usage`) itself with `serde_json`: they are then well-formed and free of NUL, and
    /// [`sanitize::sanitize`] only bounds their length instead of parsing them again. Never
    /// stored or journaled: a record read back is checked in full.
    #[serde(skip)]
    pub(crate) json_serialized: bool,
}

/// What an MCP usage row carries beyond the common fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct McpUsage {
    /// The server slug.
    pub server: String,
    /// `streamable_http`, `sse` or `stdio`.
    pub transport: String,
    /// The JSON-RPC method (the first of a batch; `batch` when they differ).
    pub method: Option<String>,
    /// The tool of a `tools/call` (the first of a batch).
    pub tool: Option<String>,
    /// How many `tools/call` the request carried.
    pub tool_calls: i64,
    /// Request body bytes (caller to server).
    pub bytes_in: i64,
    /// Response body bytes (server to caller), streams included.
    pub bytes_out: i64,
    /// The server's pricing when the call was made (JSON), so later changes keep history.
    pub pricing: Option<String>,
}

/// `PREFIX VALUES (..), (..)` for `rows` rows of `cols` parameters, in the backend's own
/// placeholder style: `$n` for PostgreSQL (sqlx's query builder for `Any` emits `?`, which
/// PostgreSQL rejects) and `?` for SQLite (sqlx resolves `$n` there by scanning every parameter
/// name, quadratic in a 16,000-parameter batch insert).
pub(crate) fn values_sql(prefix: &str, rows: usize, cols: usize, backend: Backend) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(prefix.len() + rows * cols * 5);
    sql.push_str(prefix);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..cols {
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    let _ = write!(sql, "${}", row * cols + col + 1);
                }
                Backend::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql
}

/// Whether opening a store failed because the database is unreachable (connection refused,
/// reset or timed out, the server starting or shutting down), as opposed to a URL, credential,
/// or schema problem that retrying would not fix.
pub fn is_unreachable(error: &StoreError) -> bool {
    let sqlx_error = match error {
        StoreError::Database(e) => e,
        StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e,
        _ => return false,
    };
    match sqlx_error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // SQLSTATE 08 (connection), 57P03 (cannot connect now: starting up), 53
            // (insufficient resources, e.g. too many connections).
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            ["08", "57P", "53"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        _ => false,
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, one file.
    Sqlite,
    /// Shared by several gateway replicas.
    Postgres,
}

/// The store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database file of an embedded store.
    path: Option<std::path::PathBuf>,
    /// The embedded store's connection for usage rows (a file store; not `:memory:`).
    rows: Option<std::sync::Arc<sqlite_rows::SqliteRows>>,
    /// The shared store's typed pool for usage batches ([`pg_batch`]): it binds each column as
    /// a binary array, which `sqlx::Any` cannot.
    batches: Option<sqlx::PgPool>,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs its migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        static DRIVERS: std::sync::Once = std::sync::Once::new();
        DRIVERS.call_once(install_default_drivers);
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Database(sqlx::Error::Configuration(
                        format!("cannot create {}: {e}", parent.display()).into(),
                    ))
                })?;
            }
            // `page_size` first: it takes effect only on a database still empty, before WAL
            // mode is entered, so a new file gets 16 KiB pages and an existing one keeps its own
            // (SQLite ignores the pragma there). A governed usage row is about 1.4 KB: a 4 KiB
            // page holds two of them and leaves a quarter empty, a 16 KiB page eleven, so each
            // row costs fewer bytes of WAL, checkpoint and disk, and fewer write calls
            // (docs/performance.md, thirteenth round).
            let pool = AnyPoolOptions::new()
                .max_connections(4)
                .min_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA page_size = 16384; \
                             PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -1024;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&format!("sqlite://{path}?mode=rwc"))
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            let file = Path::new(path).to_path_buf();
            let rows = sqlite_rows::SqliteRows::for_file(&file).map(std::sync::Arc::new);
            Ok(Self {
                pool,
                backend: Backend::Sqlite,
                path: Some(file),
                rows,
                batches: None,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            pg_batch::install(&pool).await?;
            // Two connections, opened when the writer first needs one: one writer per gateway,
            // and a second for a batch split to find a refused row.
            let batches = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(url)?;
            Ok(Self {
                pool,
                backend: Backend::Postgres,
                path: None,
                rows: None,
                batches: Some(batches),
            })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database file of an embedded (SQLite) store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The current version of the key table (bumped by every key change).
    pub async fn keys_version(&self) -> Result<i64, StoreError> {
        self.version("keys").await
    }

    /// The current version of a change counter (`keys`, `budgets`).
    pub async fn version(&self, name: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM store_versions WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Registers a running gateway instance.
    pub async fn register_instance(
        &self,
        id: &str,
        listen: &str,
        keys_version: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO gateway_instances (id, pid, listen, started_at_ms, heartbeat_ms, keys_version_seen) \
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(id)
        .bind(i64::from(std::process::id()))
        .bind(listen)
        .bind(now)
        .bind(keys_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Heartbeat plus the key version this instance has applied.
    pub async fn instance_heartbeat(&self, id: &str, keys_version: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gateway_instances SET heartbeat_ms = $1, keys_version_seen = $2 WHERE id = $3",
        )
        .bind(now_ms())
        .bind(keys_version)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes an instance on graceful shutdown.
    pub async fn deregister_instance(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM gateway_instances WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live instances (heartbeat within `fresh_ms`) that have not yet applied `keys_version`.
    pub async fn instances_behind(
        &self,
        keys_version: i64,
        fresh_ms: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM gateway_instances WHERE heartbeat_ms > $1 AND keys_version_seen < $2",
        )
        .bind(now_ms() - fresh_ms)
        .bind(keys_version)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The shared store's typed pool for usage batches (`None` on SQLite).
    pub(crate) fn batch_pool(&self) -> Option<&sqlx::PgPool> {
        self.batches.as_ref()
    }

    /// A transaction that reads, then writes. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`, waiting out `busy_timeout`): a deferred transaction that read first
    /// fails with SQLITE_BUSY_SNAPSHOT (517, "database is locked") when another connection
    /// wrote in between, and no timeout helps. PostgreSQL's row locks need nothing more.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// This store without its rows connection: usage rows go through the pool, as on the
    /// shared store (tests of both paths).
    #[cfg(test)]
    pub(crate) fn without_rows_connection(mut self) -> Self {
        self.rows = None;
        self
    }

    /// The embedded store's rows connection.
    pub(crate) fn sqlite_rows(&self) -> Option<&std::sync::Arc<sqlite_rows::SqliteRows>> {
        self.rows.as_ref()
    }

    /// Closes the pool and the rows connection (after the usage writer has flushed).
    pub async fn close(&self) {
        if let Some(rows) = &self.rows {
            rows.close();
        }
        if let Some(batches) = &self.batches {
            batches.close().await;
        }
        self.pool.close().await;
    }
}

/// The usage insert's columns, in the order [`bind_usage`] and `sqlite_rows` bind them.
pub(crate) const USAGE_INSERT: &str = "INSERT INTO usage_records (id, request_id, received_at_ms, completed_at_ms, key_id, team, \
     method, endpoint, stream, requested_model, served_model, upstream_model, provider, status, \
     error_code, denied_stage, latency_us, ttfb_us, upstream_latency_us, input_tokens, \
     output_tokens, cached_input_tokens, reasoning_tokens, total_tokens, cost_nanos, \
     provider_usage, provider_request_id, stream_status, decisions, route, user_agent, policy_generation, \
     endpoint_family, upstream_family, cache_creation_tokens, \
     mcp_server, mcp_transport, mcp_method, mcp_tool, mcp_tool_calls, bytes_in, bytes_out, mcp_pricing)";
/// How many columns [`USAGE_INSERT`] names.
pub(crate) const USAGE_COLUMNS: usize = 43;

/// Rows per usage insert statement on SQLite, largest first: a batch is written as statements
/// of these sizes (43 columns; SQLite allows 32,766 bound parameters per statement).
const USAGE_INSERT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// One column value of a usage row: [`usage_cells`] lists a record's values in
/// [`USAGE_INSERT`]'s column order, and every writer binds them from there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    /// A text column.
    Text(Option<&'a str>),
    /// An integer column.
    Int(Option<i64>),
}

impl Cell<'_> {
    /// The PostgreSQL array type a column of these cells is bound as.
    pub(crate) fn pg_array_type(&self) -> &'static str {
        match self {
            Cell::Text(_) => "text[]",
            Cell::Int(_) => "int8[]",
        }
    }
}

/// A record's values in [`USAGE_INSERT`]'s column order (the one list of them).
pub(crate) fn usage_cells(r: &UsageRecord) -> [Cell<'_>; USAGE_COLUMNS] {
    use Cell::{Int, Text};
    let mcp = r.mcp.as_ref();
    [
        Text(Some(&r.id)),
        Text(Some(&r.request_id)),
        Int(Some(r.received_at_ms)),
        Int(Some(r.completed_at_ms)),
        Text(r.key_id.as_deref()),
        Text(r.team.as_deref()),
        Text(Some(&r.method)),
        Text(Some(&r.endpoint)),
        Int(Some(i64::from(r.stream))),
        Text(r.requested_model.as_deref()),
        Text(r.served_model.as_deref()),
        Text(r.upstream_model.as_deref()),
        Text(r.provider.as_deref()),
        Int(Some(i64::from(r.status))),
        Text(r.error_code.as_deref()),
        Text(r.denied_stage.as_deref()),
        Int(Some(r.latency_us)),
        Int(r.ttfb_us),
        Int(r.upstream_latency_us),
        Int(Some(r.tokens.input)),
        Int(Some(r.tokens.output)),
        Int(Some(r.tokens.cached_input)),
        Int(Some(r.tokens.reasoning)),
        Int(Some(r.tokens.total())),
        Int(Some(r.cost_nanos)),
        Text(r.provider_usage.as_deref()),
        Text(r.provider_request_id.as_deref()),
        Text(r.stream_status.as_deref()),
        Text(Some(&r.decisions)),
        Text(r.route.as_deref()),
        Text(r.user_agent.as_deref()),
        Int(Some(r.policy_generation)),
        Text(r.endpoint_family.as_deref()),
        Text(r.upstream_family.as_deref()),
        Int(Some(r.tokens.cache_creation)),
        Text(mcp.map(|m| m.server.as_str())),
        Text(mcp.map(|m| m.transport.as_str())),
        Text(mcp.and_then(|m| m.method.as_deref())),
        Text(mcp.and_then(|m| m.tool.as_deref())),
        Int(mcp.map(|m| m.tool_calls)),
        Int(mcp.map(|m| m.bytes_in)),
        Int(mcp.map(|m| m.bytes_out)),
        Text(mcp.and_then(|m| m.pricing.as_deref())),
    ]
}

impl rusqlite::ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match *self {
            Cell::Text(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Int(Some(i)) => ToSqlOutput::Owned(Value::Integer(i)),
            Cell::Text(None) | Cell::Int(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// The largest SQLite usage insert shape that fits `pending` rows, and its SQL: with
/// `returning`, the statement names the ids it inserted (`RETURNING id`).
fn usage_insert_sql(pending: usize, returning: bool) -> (usize, &'static str) {
    static SHAPES: [OnceLock<Vec<String>>; 2] = [const { OnceLock::new() }; 2];
    let shapes = SHAPES[usize::from(returning)].get_or_init(|| {
        USAGE_INSERT_ROWS
            .iter()
            .map(|rows| {
                values_sql(USAGE_INSERT, *rows, USAGE_COLUMNS, Backend::Sqlite)
                    + if returning {
                        " ON CONFLICT (id) DO NOTHING RETURNING id"
                    } else {
                        " ON CONFLICT (id) DO NOTHING"
                    }
            })
            .collect()
    });
    let i = USAGE_INSERT_ROWS
        .iter()
        .position(|rows| *rows <= pending)
        .unwrap_or(USAGE_INSERT_ROWS.len() - 1);
    (USAGE_INSERT_ROWS[i], shapes[i].as_str())
}

/// PostgreSQL's usage insert: one statement for any number of rows, each column bound as one
/// array (`INSERT ... SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], ...)`).
///
/// A `VALUES` list binds 43 parameters per row. The server then builds and evaluates an
/// expression per value and the client encodes each one through the `Any` driver; in the
/// profile of two replicas that was about a third of the PostgreSQL server's CPU per usage row
/// (`docs/performance.md`, "Fourteenth round"). Arrays are parsed once per column.
fn usage_unnest_sql(returning: bool) -> &'static str {
    static SQL: [OnceLock<String>; 2] = [const { OnceLock::new() }; 2];
    SQL[usize::from(returning)].get_or_init(|| {
        use std::fmt::Write as _;
        let mut sql = String::from(USAGE_INSERT);
        sql.push_str(" SELECT * FROM UNNEST(");
        for (i, cell) in usage_cells(&UsageRecord::default()).iter().enumerate() {
            let _ = write!(
                sql,
                "{}${}::{}",
                if i == 0 { "" } else { ", " },
                i + 1,
                cell.pg_array_type()
            );
        }
        sql.push_str(") ON CONFLICT (id) DO NOTHING");
        if returning {
            sql.push_str(" RETURNING id");
        }
        sql
    })
}

/// `records`' values as one PostgreSQL array literal per column, for [`usage_unnest_sql`].
fn usage_arrays(records: &[&UsageRecord]) -> Vec<String> {
    let mut columns: Vec<String> = (0..USAGE_COLUMNS)
        .map(|_| String::with_capacity(2 + records.len() * 16))
        .collect();
    for record in records {
        for (column, cell) in columns.iter_mut().zip(usage_cells(record)) {
            push_array_element(column, cell);
        }
    }
    for column in &mut columns {
        close_array(column);
    }
    columns
}

/// `cells` as one PostgreSQL array literal (`{"a",NULL}`, `{1,NULL}`), for a parameter cast to
/// `text[]` or `int8[]`: how the shared store binds many rows' values to one statement.
pub(crate) fn pg_array<'a>(cells: impl IntoIterator<Item = Cell<'a>>) -> String {
    let mut array = String::new();
    for cell in cells {
        push_array_element(&mut array, cell);
    }
    close_array(&mut array);
    array
}

/// Appends one element to an array literal being built (opening it on the first).
fn push_array_element(array: &mut String, cell: Cell<'_>) {
    use std::fmt::Write as _;
    array.push(if array.is_empty() { '{' } else { ',' });
    match cell {
        Cell::Text(None) | Cell::Int(None) => array.push_str("NULL"),
        Cell::Int(Some(i)) => {
            let _ = write!(array, "{i}");
        }
        Cell::Text(Some(s)) => {
            // Quoted, with `"` and `\` escaped: every other character (NUL aside, which
            // `sanitize` replaced) stands for itself inside quotes.
            array.push('"');
            let mut rest = s;
            while let Some(at) = rest.find(['"', '\\']) {
                array.push_str(&rest[..at]);
                array.push('\\');
                array.push_str(&rest[at..=at]);
                rest = &rest[at + 1..];
            }
            array.push_str(rest);
            array.push('"');
        }
    }
}

/// Closes an array literal ([`push_array_element`]); an empty one becomes `{}`.
fn close_array(array: &mut String) {
    array.push_str(if array.is_empty() { "{}" } else { "}" });
}

/// Inserts usage records on `conn` (an open transaction), skipping ids already stored (a
/// journal replayed after an ambiguous commit).
///
/// With `ask_which`, returns the ids inserted now (`RETURNING id`: a row back per insert).
/// Without, it only counts: all of them when every row was new (the normal case: ids are fresh
/// UUIDv7), `None` as soon as a statement skipped a stored id. The caller then rolls the
/// transaction back and writes again asking which, so a skipped row's charges are never applied
/// twice. Not asking saved 8-10% of the passthrough gateway's CPU (`docs/performance.md`).
pub(crate) async fn insert_usage_on<'r>(
    conn: &mut sqlx::AnyConnection,
    records: impl IntoIterator<Item = &'r UsageRecord>,
    backend: Backend,
    ask_which: bool,
) -> Result<Option<std::collections::HashSet<String>>, StoreError> {
    let records: Vec<&UsageRecord> = records.into_iter().collect();
    let mut inserted = std::collections::HashSet::with_capacity(records.len());
    let mut rest = records.as_slice();
    while !rest.is_empty() {
        let (chunk, query) = match backend {
            Backend::Postgres => {
                let query = usage_arrays(rest).into_iter().fold(
                    sqlx::query(sqlx::AssertSqlSafe(usage_unnest_sql(ask_which))),
                    |query, column| query.bind(column),
                );
                (std::mem::take(&mut rest), query)
            }
            Backend::Sqlite => {
                // A few fixed statement shapes, each prepared once per connection and then
                // only bound: preparing a statement of a new size per batch (tens of rows of
                // 43 columns) cost more than inserting the rows.
                let (rows, sql) = usage_insert_sql(rest.len(), ask_which);
                let (chunk, tail) = rest.split_at(rows);
                rest = tail;
                (
                    chunk,
                    bind_usage(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk),
                )
            }
        };
        if ask_which {
            for row in query.fetch_all(&mut *conn).await? {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
        } else {
            let done = query.execute(&mut *conn).await?;
            if done.rows_affected() != chunk.len() as u64 {
                return Ok(None);
            }
            inserted.extend(chunk.iter().map(|r| r.id.clone()));
        }
    }
    Ok(Some(inserted))
}

/// Binds `chunk`'s rows to a usage insert statement, in its column order.
fn bind_usage<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    chunk: &[&UsageRecord],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for r in chunk {
        for cell in usage_cells(r) {
            query = match cell {
                Cell::Text(text) => query.bind(text.map(str::to_owned)),
                Cell::Int(int) => query.bind(int),
            };
        }
    }
    query
}

#[cfg(test)]
mod tests {
    use super::{Backend, values_sql};

    #[test]
    fn usage_arrays_quote_what_postgres_array_syntax_gives_meaning_to() {
        use super::{McpUsage, UsageRecord, usage_arrays, usage_unnest_sql};
        let a = UsageRecord {
            id: r#"a"b\c"#.into(),
            key_id: None,
            decisions: "{x, NULL}".into(),
            ttfb_us: Some(-5),
            ..UsageRecord::default()
        };
        let b = UsageRecord {
            id: "NULL".into(),
            key_id: Some(String::new()),
            mcp: Some(McpUsage {
                server: "s".into(),
                tool_calls: 3,
                ..McpUsage::default()
            }),
            ..UsageRecord::default()
        };
        let columns = usage_arrays(&[&a, &b]);
        assert_eq!(columns.len(), 43);
        assert_eq!(columns[0], r#"{"a\"b\\c","NULL"}"#);
        assert_eq!(columns[4], r#"{NULL,""}"#);
        assert_eq!(columns[17], "{-5,NULL}");
        assert_eq!(columns[28], r#"{"{x, NULL}",""}"#);
        assert_eq!(columns[35], r#"{NULL,"s"}"#);
        assert_eq!(columns[39], "{NULL,3}");
        assert!(usage_arrays(&[]).iter().all(|c| c == "{}"));
        let sql = usage_unnest_sql(false);
        assert!(sql.contains("UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[]"));
        assert!(
            sql.ends_with("$43::text[]) ON CONFLICT (id) DO NOTHING"),
            "{sql}"
        );
        assert!(usage_unnest_sql(true).ends_with("RETURNING id"));
    }

    #[test]
    fn values_use_each_backends_placeholders() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2, Backend::Postgres),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2, Backend::Sqlite),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
