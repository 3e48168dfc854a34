//! What the admin API keeps: teams, users, admin tokens, the audit log, key rotations, and the
//! audited key changes. Every change writes its audit row in the same transaction.

use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::keys::{NewKey, hash_secret, mint_secret};
use super::sql::{Sql, contains_pattern};
use super::{KeyRecord, ModelGrant, Store, StoreError};
use crate::clock::now_ms;

/// Prefix of stored admin tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "tga_";
const ADMIN_TOKEN_RANDOM_LEN: usize = 40;

/// RFC 3339 UTC with milliseconds, or null.
pub fn rfc3339(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        })
}

fn grant_json(grant: &ModelGrant) -> Value {
    match grant {
        ModelGrant::All => json!(["*"]),
        ModelGrant::Only(names) => json!(names),
    }
}

/// The admin API's view of a key (never its secret or hash).
pub fn key_json(key: &KeyRecord) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "team": key.team,
        "user": key.owner,
        "prefix": key.secret_prefix,
        "models": grant_json(&key.models),
        "mcp_servers": grant_json(&key.mcp),
        "metadata": key.metadata,
        "status": key.state(now_ms()).as_str(),
        "created_at": rfc3339(Some(key.created_at_ms)),
        "updated_at": rfc3339(Some(key.updated_at_ms)),
        "expires_at": rfc3339(key.expires_at_ms),
        "revoked_at": rfc3339(key.revoked_at_ms),
        "rotations": key.rotations,
    })
}

const KEY_COLUMNS: &str = "id, name, team, owner, metadata, secret_prefix, models, mcp_servers, created_at_ms, \
     updated_at_ms, expires_at_ms, revoked_at_ms, rotations";

/// Filters of a key listing.
#[derive(Debug, Default, Clone)]
pub struct KeyFilter {
    /// Team id.
    pub team: Option<String>,
    /// User (owner).
    pub user: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: Option<String>,
    /// Case-insensitive substring of the name, or an id or prefix.
    pub q: Option<String>,
}

/// A change to a key; `Some(None)` clears a nullable field.
#[derive(Debug, Default, Clone)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New team.
    pub team: Option<Option<String>>,
    /// New user.
    pub user: Option<Option<String>>,
    /// New metadata (replaces).
    pub metadata: Option<Map<String, Value>>,
    /// New expiry.
    pub expires_at_ms: Option<Option<i64>>,
    /// New Model Access.
    pub models: Option<ModelGrant>,
    /// New MCP Access.
    pub mcp: Option<ModelGrant>,
}

/// Why an audited change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or its state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        ChangeError::Store(StoreError::from(e))
    }
}

/// A team or a user (the same shape; users add `email` and `team`).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Slug.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Users only.
    pub email: Option<String>,
    /// Users only: their team.
    pub team: Option<String>,
    /// Free-form attributes.
    pub metadata: Map<String, Value>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
}

/// Which principal table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// `teams`.
    Team,
    /// `users`.
    User,
}

impl PrincipalKind {
    fn table(self) -> &'static str {
        match self {
            PrincipalKind::Team => "teams",
            PrincipalKind::User => "users",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            PrincipalKind::Team => "id, name, metadata, created_at_ms, updated_at_ms",
            PrincipalKind::User => "id, name, email, team, metadata, created_at_ms, updated_at_ms",
        }
    }

    /// `team` or `user`, as used in audit actions.
    pub fn noun(self) -> &'static str {
        match self {
            PrincipalKind::Team => "team",
            PrincipalKind::User => "user",
        }
    }

    /// `teams` or `users`, as in the admin API's paths.
    pub fn collection(self) -> &'static str {
        self.table()
    }

    /// The api_keys column that refers to this principal.
    fn key_column(self) -> &'static str {
        match self {
            PrincipalKind::Team => "team",
            PrincipalKind::User => "owner",
        }
    }
}

impl Principal {
    fn from_row(row: &AnyRow, kind: PrincipalKind) -> Result<Self, StoreError> {
        let metadata = match serde_json::from_str(&row.try_get::<String, _>("metadata")?) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "metadata",
                    detail: "not a JSON object".into(),
                });
            }
        };
        let (email, team) = match kind {
            PrincipalKind::Team => (None, None),
            PrincipalKind::User => (row.try_get("email")?, row.try_get("team")?),
        };
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email,
            team,
            metadata,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    }

    /// The admin API's view.
    pub fn to_json(&self, kind: PrincipalKind) -> Value {
        let mut out = json!({
            "id": self.id,
            "name": self.name,
            "metadata": self.metadata,
            "created_at": rfc3339(Some(self.created_at_ms)),
            "updated_at": rfc3339(Some(self.updated_at_ms)),
        });
        if kind == PrincipalKind::User {
            out["email"] = json!(self.email);
            out["team"] = json!(self.team);
        }
        out
    }
}

/// A stored admin token (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// Id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// `admin` or `read`.
    pub role: String,
    /// The first characters of the secret.
    pub prefix: String,
    /// Unix ms.
    pub created_at_ms: i64,
}

impl AdminTokenRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            prefix: row.try_get("secret_prefix")?,
            created_at_ms: row.try_get("created_at_ms")?,
        })
    }

    /// The admin API's view.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "prefix": self.prefix,
            "created_at": rfc3339(Some(self.created_at_ms)),
        })
    }
}

/// Filters of the audit log.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// From (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// To (Unix ms, exclusive).
    pub to_ms: Option<i64>,
    /// Token id.
    pub actor: Option<String>,
    /// Action, e.g. `key.create`; a trailing `.*` or a bare noun matches every action on it.
    pub action: Option<String>,
}

/// Writes one audit row on `conn`.
pub(crate) async fn audit_on(
    conn: &mut sqlx::AnyConnection,
    actor: &str,
    action: &str,
    target: Option<&str>,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at_ms, actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::now_v7().simple().to_string())
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(before.map(Value::to_string))
    .bind(after.map(Value::to_string))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn key_on(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let mut sql = Sql::new("SELECT ");
    sql.push(KEY_COLUMNS)
        .push(" FROM api_keys WHERE id = ")
        .text(id);
    let row = sql.query().fetch_optional(&mut *conn).await?;
    row.as_ref().map(KeyRecord::from_row).transpose()
}

fn must_key(found: Option<KeyRecord>, id: &str) -> Result<KeyRecord, ChangeError> {
    found.ok_or_else(|| ChangeError::NotFound(format!("no key with id '{id}'")))
}

impl Store {
    /// Writes an audit row on its own (changes made elsewhere write theirs in their transaction).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        audit_on(&mut conn, actor, action, target, before, after).await
    }

    /// Audit rows, newest first, after `cursor` (an audit id).
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut sql = Sql::new(
            "SELECT id, at_ms, actor, action, target, before, after FROM audit_log WHERE 1 = 1",
        );
        if let Some(from) = filter.from_ms {
            sql.push(" AND at_ms >= ").int(from);
        }
        if let Some(to) = filter.to_ms {
            sql.push(" AND at_ms < ").int(to);
        }
        if let Some(actor) = &filter.actor {
            sql.push(" AND actor = ").text(actor.clone());
        }
        if let Some(action) = &filter.action {
            let noun = action.strip_suffix(".*").unwrap_or(action);
            if action.ends_with(".*") || !action.contains('.') {
                sql.push(" AND action LIKE ")
                    .text(format!("{}.%", noun.replace(['%', '_', '\\'], "")));
            } else {
                sql.push(" AND action = ").text(action.clone());
            }
        }
        if let Some(cursor) = cursor {
            sql.push(" AND id < ").text(cursor);
        }
        sql.push(" ORDER BY id DESC LIMIT ").int(limit);
        let rows = sql.query().fetch_all(self.pool()).await?;
        let parse = |text: Option<String>| -> Value {
            text.and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null)
        };
        rows.iter()
            .map(|row| {
                Ok(json!({
                    "id": row.try_get::<String, _>("id")?,
                    "at": rfc3339(Some(row.try_get("at_ms")?)),
                    "actor": row.try_get::<String, _>("actor")?,
                    "action": row.try_get::<String, _>("action")?,
                    "target": row.try_get::<Option<String>, _>("target")?,
                    "before": parse(row.try_get("before")?),
                    "after": parse(row.try_get("after")?),
                }))
            })
            .collect()
    }

    // ---- keys -------------------------------------------------------------------------

    /// Keys matching `filter`, oldest first, after `cursor` (a key id; ids sort by creation).
    pub async fn key_page(
        &self,
        filter: &KeyFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let now = now_ms();
        let mut sql = Sql::new("SELECT ");
        sql.push(KEY_COLUMNS).push(" FROM api_keys WHERE 1 = 1");
        if let Some(team) = &filter.team {
            sql.push(" AND team = ").text(team.clone());
        }
        if let Some(user) = &filter.user {
            sql.push(" AND owner = ").text(user.clone());
        }
        match filter.status.as_deref() {
            Some("revoked") => {
                sql.push(" AND revoked_at_ms IS NOT NULL");
            }
            Some("expired") => {
                sql.push(" AND revoked_at_ms IS NULL AND expires_at_ms <= ")
                    .int(now);
            }
            Some("active") => {
                sql.push(
                    " AND revoked_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > ",
                )
                .int(now)
                .push(")");
            }
            _ => {}
        }
        if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
            sql.push(" AND (LOWER(name) LIKE ")
                .text(contains_pattern(q))
                .push(" ESCAPE '\\' OR id = ")
                .text(q)
                .push(" OR secret_prefix = ")
                .text(q)
                .push(")");
        }
        if let Some(cursor) = cursor {
            sql.push(" AND id > ").text(cursor);
        }
        sql.push(" ORDER BY id LIMIT ").int(limit);
        let rows = sql.query().fetch_all(self.pool()).await?;
        rows.iter().map(KeyRecord::from_row).collect()
    }

    /// Creates a key and its audit row; returns the key and its secret (shown once).
    pub async fn create_key_audited(
        &self,
        actor: &str,
        new: &NewKey,
    ) -> Result<(KeyRecord, String), ChangeError> {
        let minted = mint_secret();
        let now = now_ms();
        let id = format!("key_{}", uuid::Uuid::now_v7().simple());
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, name, team, owner, metadata, secret_hash, secret_prefix, models, \
             created_at_ms, updated_at_ms, expires_at_ms, mcp_servers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(&new.team)
        .bind(&new.owner)
        .bind(Value::Object(new.metadata.clone()).to_string())
        .bind(&minted.hash)
        .bind(&minted.prefix)
        .bind(new.models.to_json())
        .bind(now)
        .bind(new.expires_at_ms)
        .bind(new.mcp.to_json())
        .execute(&mut *tx)
        .await?;
        let key = must_key(key_on(&mut tx, &id).await?, &id)?;
        audit_on(
            &mut tx,
            actor,
            "key.create",
            Some(&id),
            None,
            Some(&key_json(&key)),
        )
        .await?;
        tx.commit().await?;
        Ok((key, minted.secret))
    }

    /// Applies `patch` to a key, with its audit row.
    pub async fn patch_key_audited(
        &self,
        actor: &str,
        id: &str,
        patch: &KeyPatch,
    ) -> Result<KeyRecord, ChangeError> {
        let mut tx = self.begin_write().await?;
        let before = must_key(key_on(&mut tx, id).await?, id)?;
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name.clone_from(name);
        }
        if let Some(team) = &patch.team {
            after.team.clone_from(team);
        }
        if let Some(user) = &patch.user {
            after.owner.clone_from(user);
        }
        if let Some(metadata) = &patch.metadata {
            after.metadata.clone_from(metadata);
        }
        if let Some(expires) = patch.expires_at_ms {
            after.expires_at_ms = expires;
        }
        if let Some(models) = &patch.models {
            after.models = models.clone();
        }
        if let Some(mcp) = &patch.mcp {
            after.mcp = mcp.clone();
        }
        sqlx::query(
            "UPDATE api_keys SET name = $1, team = $2, owner = $3, metadata = $4, expires_at_ms = $5, \
             models = $6, mcp_servers = $7, updated_at_ms = $8 WHERE id = $9",
        )
        .bind(&after.name)
        .bind(&after.team)
        .bind(&after.owner)
        .bind(Value::Object(after.metadata.clone()).to_string())
        .bind(after.expires_at_ms)
        .bind(after.models.to_json())
        .bind(after.mcp.to_json())
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let after = must_key(key_on(&mut tx, id).await?, id)?;
        audit_on(
            &mut tx,
            actor,
            "key.update",
            Some(id),
            Some(&key_json(&before)),
            Some(&key_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Revokes (`revoke`) or restores a key, with its audit row. Revoking twice keeps the
    /// first time.
    pub async fn set_key_revoked_audited(
        &self,
        actor: &str,
        id: &str,
        revoke: bool,
    ) -> Result<KeyRecord, ChangeError> {
        let mut tx = self.begin_write().await?;
        let before = must_key(key_on(&mut tx, id).await?, id)?;
        let now = now_ms();
        let sql = if revoke {
            "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1), updated_at_ms = $1 WHERE id = $2"
        } else {
            "UPDATE api_keys SET revoked_at_ms = NULL, updated_at_ms = $1 WHERE id = $2"
        };
        sqlx::query(sql)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = must_key(key_on(&mut tx, id).await?, id)?;
        audit_on(
            &mut tx,
            actor,
            if revoke { "key.revoke" } else { "key.unrevoke" },
            Some(id),
            Some(&key_json(&before)),
            Some(&key_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Gives a key a new secret (the old one stops working), records the rotation and its
    /// audit row. A revoked key cannot be rotated.
    pub async fn rotate_key_audited(
        &self,
        actor: &str,
        id: &str,
    ) -> Result<(KeyRecord, String), ChangeError> {
        let minted = mint_secret();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let before = must_key(key_on(&mut tx, id).await?, id)?;
        if before.revoked_at_ms.is_some() {
            return Err(ChangeError::Conflict(format!(
                "key '{id}' is revoked; unrevoke it before rotating"
            )));
        }
        sqlx::query(
            "UPDATE api_keys SET secret_hash = $1, secret_prefix = $2, rotations = rotations + 1, \
             updated_at_ms = $3 WHERE id = $4",
        )
        .bind(&minted.hash)
        .bind(&minted.prefix)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_rotations (id, key_id, at_ms, actor, old_prefix, new_prefix) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(id)
        .bind(now)
        .bind(actor)
        .bind(&before.secret_prefix)
        .bind(&minted.prefix)
        .execute(&mut *tx)
        .await?;
        let after = must_key(key_on(&mut tx, id).await?, id)?;
        audit_on(
            &mut tx,
            actor,
            "key.rotate",
            Some(id),
            Some(&key_json(&before)),
            Some(&key_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok((after, minted.secret))
    }

    /// Records a rotation made outside the admin API (the `keys rotate` command).
    pub async fn record_rotation(
        &self,
        actor: &str,
        id: &str,
        old_prefix: &str,
        new_prefix: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_rotations (id, key_id, at_ms, actor, old_prefix, new_prefix) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(id)
        .bind(now_ms())
        .bind(actor)
        .bind(old_prefix)
        .bind(new_prefix)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A key's rotations, oldest first.
    pub async fn key_rotations(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, old_prefix, new_prefix FROM key_rotations WHERE key_id = $1 ORDER BY at_ms, id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(json!({
                    "at": rfc3339(Some(row.try_get("at_ms")?)),
                    "actor": row.try_get::<String, _>("actor")?,
                    "old_prefix": row.try_get::<String, _>("old_prefix")?,
                    "new_prefix": row.try_get::<String, _>("new_prefix")?,
                }))
            })
            .collect()
    }

    // ---- teams and users --------------------------------------------------------------

    /// One team or user.
    pub async fn principal(
        &self,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let mut sql = Sql::new("SELECT ");
        sql.push(kind.columns())
            .push(" FROM ")
            .push(kind.table())
            .push(" WHERE id = ")
            .text(id);
        let row = sql.query().fetch_optional(self.pool()).await?;
        row.map(|r| Principal::from_row(&r, kind)).transpose()
    }

    /// Teams or users by id, after `cursor`; `q` matches id, name (and email) in any case;
    /// `team` filters users.
    pub async fn principal_page(
        &self,
        kind: PrincipalKind,
        q: Option<&str>,
        team: Option<&str>,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Vec<Principal>, StoreError> {
        let mut sql = Sql::new("SELECT ");
        sql.push(kind.columns())
            .push(" FROM ")
            .push(kind.table())
            .push(" WHERE 1 = 1");
        if let Some(q) = q.filter(|q| !q.is_empty()) {
            let pattern = contains_pattern(q);
            sql.push(" AND (LOWER(id) LIKE ")
                .text(pattern.clone())
                .push(" ESCAPE '\\' OR LOWER(name) LIKE ")
                .text(pattern.clone())
                .push(" ESCAPE '\\'");
            if kind == PrincipalKind::User {
                sql.push(" OR LOWER(COALESCE(email, '')) LIKE ")
                    .text(pattern)
                    .push(" ESCAPE '\\'");
            }
            sql.push(")");
        }
        if let (PrincipalKind::User, Some(team)) = (kind, team) {
            sql.push(" AND team = ").text(team);
        }
        if let Some(cursor) = cursor {
            sql.push(" AND id > ").text(cursor);
        }
        sql.push(" ORDER BY id LIMIT ").int(limit);
        let rows = sql.query().fetch_all(self.pool()).await?;
        rows.iter().map(|r| Principal::from_row(r, kind)).collect()
    }

    /// Creates a team or user with its audit row; a taken id is a conflict.
    pub async fn create_principal(
        &self,
        actor: &str,
        kind: PrincipalKind,
        new: &Principal,
    ) -> Result<Principal, ChangeError> {
        let mut tx = self.begin_write().await?;
        let mut exists = Sql::new("SELECT id FROM ");
        exists
            .push(kind.table())
            .push(" WHERE id = ")
            .text(new.id.clone());
        if exists.query().fetch_optional(&mut *tx).await?.is_some() {
            return Err(ChangeError::Conflict(format!(
                "a {} with id '{}' exists already",
                kind.noun(),
                new.id
            )));
        }
        let now = now_ms();
        let metadata = Value::Object(new.metadata.clone()).to_string();
        let mut insert = Sql::new("INSERT INTO ");
        insert.push(kind.table());
        match kind {
            PrincipalKind::Team => {
                insert
                    .push(" (id, name, metadata, created_at_ms, updated_at_ms) VALUES (")
                    .text(new.id.clone())
                    .push(", ")
                    .text(new.name.clone())
                    .push(", ")
                    .text(metadata)
                    .push(", ")
                    .int(now)
                    .push(", ")
                    .int(now)
                    .push(")");
            }
            PrincipalKind::User => {
                insert
                    .push(
                        " (id, name, email, team, metadata, created_at_ms, updated_at_ms) VALUES (",
                    )
                    .text(new.id.clone())
                    .push(", ")
                    .text(new.name.clone())
                    .push(", ")
                    .arg(super::sql::Arg::Text(new.email.clone()))
                    .push(", ")
                    .arg(super::sql::Arg::Text(new.team.clone()))
                    .push(", ")
                    .text(metadata)
                    .push(", ")
                    .int(now)
                    .push(", ")
                    .int(now)
                    .push(")");
            }
        }
        insert.query().execute(&mut *tx).await?;
        let created = Principal {
            created_at_ms: now,
            updated_at_ms: now,
            ..new.clone()
        };
        audit_on(
            &mut tx,
            actor,
            &format!("{}.create", kind.noun()),
            Some(&new.id),
            None,
            Some(&created.to_json(kind)),
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Replaces a team's or user's fields with `next` (built by the caller from the current
    /// one), with its audit row.
    pub async fn update_principal(
        &self,
        actor: &str,
        kind: PrincipalKind,
        before: &Principal,
        next: &Principal,
    ) -> Result<Principal, ChangeError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut update = Sql::new("UPDATE ");
        update
            .push(kind.table())
            .push(" SET name = ")
            .text(next.name.clone())
            .push(", metadata = ")
            .text(Value::Object(next.metadata.clone()).to_string())
            .push(", updated_at_ms = ")
            .int(now);
        if kind == PrincipalKind::User {
            update
                .push(", email = ")
                .arg(super::sql::Arg::Text(next.email.clone()))
                .push(", team = ")
                .arg(super::sql::Arg::Text(next.team.clone()));
        }
        update.push(" WHERE id = ").text(before.id.clone());
        if update.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(ChangeError::NotFound(format!(
                "no {} with id '{}'",
                kind.noun(),
                before.id
            )));
        }
        let after = Principal {
            id: before.id.clone(),
            created_at_ms: before.created_at_ms,
            updated_at_ms: now,
            ..next.clone()
        };
        audit_on(
            &mut tx,
            actor,
            &format!("{}.update", kind.noun()),
            Some(&before.id),
            Some(&before.to_json(kind)),
            Some(&after.to_json(kind)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Deletes a team or user with its audit row; refused while keys (or, for a team, users)
    /// still refer to it.
    pub async fn delete_principal(
        &self,
        actor: &str,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<(), ChangeError> {
        let mut tx = self.begin_write().await?;
        let mut sql = Sql::new("SELECT ");
        sql.push(kind.columns())
            .push(" FROM ")
            .push(kind.table())
            .push(" WHERE id = ")
            .text(id);
        let Some(row) = sql.query().fetch_optional(&mut *tx).await? else {
            return Err(ChangeError::NotFound(format!(
                "no {} with id '{id}'",
                kind.noun()
            )));
        };
        let before = Principal::from_row(&row, kind)?;
        let mut refs = Sql::new("SELECT COUNT(*) FROM api_keys WHERE ");
        refs.push(kind.key_column()).push(" = ").text(id);
        let keys: i64 = refs.query().fetch_one(&mut *tx).await?.try_get(0)?;
        let users: i64 = if kind == PrincipalKind::Team {
            sqlx::query("SELECT COUNT(*) FROM users WHERE team = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?
        } else {
            0
        };
        if keys > 0 || users > 0 {
            return Err(ChangeError::Conflict(format!(
                "{} '{id}' is still referred to by {keys} key(s) and {users} user(s)",
                kind.noun()
            )));
        }
        let mut delete = Sql::new("DELETE FROM ");
        delete.push(kind.table()).push(" WHERE id = ").text(id);
        delete.query().execute(&mut *tx).await?;
        audit_on(
            &mut tx,
            actor,
            &format!("{}.delete", kind.noun()),
            Some(id),
            Some(&before.to_json(kind)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- admin tokens -----------------------------------------------------------------

    /// Creates an admin token; returns it and its secret (shown once).
    pub async fn create_admin_token(
        &self,
        actor: &str,
        name: &str,
        role: &str,
    ) -> Result<(AdminTokenRecord, String), ChangeError> {
        let random: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(ADMIN_TOKEN_RANDOM_LEN)
            .map(char::from)
            .collect();
        let secret = format!("{ADMIN_TOKEN_PREFIX}{random}");
        let record = AdminTokenRecord {
            id: format!("adm_{}", uuid::Uuid::now_v7().simple()),
            name: name.to_string(),
            role: role.to_string(),
            prefix: secret[..ADMIN_TOKEN_PREFIX.len() + 6].to_string(),
            created_at_ms: now_ms(),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, secret_hash, secret_prefix, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(&record.role)
        .bind(hash_secret(&secret))
        .bind(&record.prefix)
        .bind(record.created_at_ms)
        .execute(&mut *tx)
        .await?;
        audit_on(
            &mut tx,
            actor,
            "admin_token.create",
            Some(&record.id),
            None,
            Some(&record.to_json()),
        )
        .await?;
        tx.commit().await?;
        Ok((record, secret))
    }

    /// Every admin token, oldest first.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, secret_prefix, created_at_ms FROM admin_tokens ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(AdminTokenRecord::from_row).collect()
    }

    /// The admin token with this secret.
    pub async fn admin_token_by_secret(
        &self,
        secret: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, role, secret_prefix, created_at_ms FROM admin_tokens WHERE secret_hash = $1",
        )
        .bind(hash_secret(secret))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(AdminTokenRecord::from_row).transpose()
    }

    /// Deletes an admin token (it stops working at once) with its audit row.
    pub async fn delete_admin_token(&self, actor: &str, id: &str) -> Result<(), ChangeError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT id, name, role, secret_prefix, created_at_ms FROM admin_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(ChangeError::NotFound(format!(
                "no admin token with id '{id}'"
            )));
        };
        let before = AdminTokenRecord::from_row(&row)?;
        sqlx::query("DELETE FROM admin_tokens WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit_on(
            &mut tx,
            actor,
            "admin_token.delete",
            Some(id),
            Some(&before.to_json()),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        (dir, store)
    }

    fn new_key(name: &str, team: Option<&str>) -> NewKey {
        NewKey {
            name: name.into(),
            team: team.map(str::to_string),
            owner: None,
            metadata: Map::new(),
            models: ModelGrant::All,
            mcp: ModelGrant::Only(vec![]),
            expires_at_ms: None,
        }
    }

    #[tokio::test]
    async fn key_changes_write_audit_rows_without_secrets_and_pages_follow_the_cursor() {
        let (_dir, store) = store().await;
        let (a, secret) = store
            .create_key_audited("env", &new_key("alpha", Some("eng")))
            .await
            .expect("create");
        let (b, _) = store
            .create_key_audited("env", &new_key("beta", None))
            .await
            .expect("create");
        store
            .set_key_revoked_audited("env", &b.id, true)
            .await
            .expect("revoke");
        let (rotated, new_secret) = store
            .rotate_key_audited("env", &a.id)
            .await
            .expect("rotate");
        assert_ne!(secret, new_secret);
        assert_eq!(rotated.rotations, 1);
        assert!(matches!(
            store.rotate_key_audited("env", &b.id).await,
            Err(ChangeError::Conflict(_))
        ));

        let mut past = new_key("gamma", None);
        past.expires_at_ms = Some(1);
        let (c, _) = store
            .create_key_audited("env", &past)
            .await
            .expect("create");
        let expired = KeyFilter {
            status: Some("expired".into()),
            ..KeyFilter::default()
        };
        let found = store.key_page(&expired, 10, None).await.expect("expired");
        assert_eq!(
            found.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            [c.id.as_str()]
        );
        let active = KeyFilter {
            status: Some("active".into()),
            ..KeyFilter::default()
        };
        let found = store.key_page(&active, 10, None).await.expect("active");
        assert_eq!(
            found.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            [a.id.as_str()]
        );
        let patched = store
            .patch_key_audited(
                "env",
                &c.id,
                &KeyPatch {
                    expires_at_ms: Some(None),
                    ..KeyPatch::default()
                },
            )
            .await
            .expect("patch");
        assert_eq!(patched.expires_at_ms, None);
        store
            .set_key_revoked_audited("env", &c.id, true)
            .await
            .expect("revoke c");
        let filter = KeyFilter {
            status: Some("revoked".into()),
            ..KeyFilter::default()
        };
        let revoked = store.key_page(&filter, 10, None).await.expect("page");
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[0].id, b.id);
        let q = KeyFilter {
            q: Some("ALP".into()),
            ..KeyFilter::default()
        };
        assert_eq!(store.key_page(&q, 10, None).await.expect("q")[0].id, a.id);
        let first = store
            .key_page(&KeyFilter::default(), 1, None)
            .await
            .expect("p1");
        let second = store
            .key_page(&KeyFilter::default(), 1, Some(&first[0].id))
            .await
            .expect("p2");
        assert_eq!(
            (first[0].id.as_str(), second[0].id.as_str()),
            (a.id.as_str(), b.id.as_str())
        );

        let audit = store
            .audit_page(&AuditFilter::default(), 50, None)
            .await
            .expect("audit");
        let actions: Vec<&str> = audit
            .iter()
            .map(|r| r["action"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            actions,
            [
                "key.revoke",
                "key.update",
                "key.create",
                "key.rotate",
                "key.revoke",
                "key.create",
                "key.create"
            ]
        );
        let text = Value::from(audit.clone()).to_string();
        assert!(!text.contains(&secret) && !text.contains(&new_secret));
        let only_revoke = AuditFilter {
            action: Some("key.revoke".into()),
            ..AuditFilter::default()
        };
        assert_eq!(
            store
                .audit_page(&only_revoke, 50, None)
                .await
                .expect("f")
                .len(),
            2
        );
        let rotations = store.key_rotations(&a.id).await.expect("rotations");
        assert_eq!(rotations.len(), 1);
        assert_eq!(rotations[0]["old_prefix"], a.secret_prefix.as_str());
    }

    #[tokio::test]
    async fn a_team_in_use_cannot_be_deleted_and_a_taken_id_conflicts() {
        let (_dir, store) = store().await;
        let team = Principal {
            id: "eng".into(),
            name: "Engineering".into(),
            email: None,
            team: None,
            metadata: Map::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        store
            .create_principal("env", PrincipalKind::Team, &team)
            .await
            .expect("create");
        assert!(matches!(
            store
                .create_principal("env", PrincipalKind::Team, &team)
                .await,
            Err(ChangeError::Conflict(_))
        ));
        store
            .create_key_audited("env", &new_key("k", Some("eng")))
            .await
            .expect("key");
        assert!(matches!(
            store
                .delete_principal("env", PrincipalKind::Team, "eng")
                .await,
            Err(ChangeError::Conflict(_))
        ));
        let page = store
            .principal_page(PrincipalKind::Team, Some("engin"), None, 10, None)
            .await
            .expect("page");
        assert_eq!(page.len(), 1);
    }
}
