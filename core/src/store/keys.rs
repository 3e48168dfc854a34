//! Virtual keys: generation, hashing and their rows. The secret exists only in the answer to
//! `create` / `rotate`; the store keeps its SHA-256 and a short prefix for identification.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};
use crate::clock::now_ms;

/// Every tollgate virtual key starts with this.
pub const SECRET_PREFIX: &str = "tg_";
/// Random characters after the prefix (≈ 238 bits of entropy).
const SECRET_RANDOM_LEN: usize = 40;
/// How much of the secret is kept for display.
const DISPLAY_PREFIX_LEN: usize = SECRET_PREFIX.len() + 6;

/// Which models a key may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelGrant {
    /// Every configured model.
    All,
    /// Exactly these tollgate model names.
    Only(Vec<String>),
}

impl ModelGrant {
    /// Parses the CLI form: `*` or `a,b,c`.
    pub fn parse(spec: &str) -> Self {
        let names: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if names.iter().any(|n| n == "*") {
            ModelGrant::All
        } else {
            ModelGrant::Only(names)
        }
    }

    /// Whether `model` is granted.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelGrant::All => true,
            ModelGrant::Only(names) => names.iter().any(|n| n == model),
        }
    }

    pub(crate) fn to_json(&self) -> String {
        let names = match self {
            ModelGrant::All => vec!["*".to_string()],
            ModelGrant::Only(names) => names.clone(),
        };
        serde_json::Value::from(names).to_string()
    }

    fn from_json(text: &str) -> Result<Self, StoreError> {
        Self::from_json_column(text, "api_keys.models")
    }

    fn from_json_column(text: &str, what: &'static str) -> Result<Self, StoreError> {
        let names: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })?;
        Ok(if names.iter().any(|n| n == "*") {
            ModelGrant::All
        } else {
            ModelGrant::Only(names)
        })
    }

    /// Human form: `*` or `a,b`.
    pub fn display(&self) -> String {
        match self {
            ModelGrant::All => "*".into(),
            ModelGrant::Only(names) => names.join(","),
        }
    }
}

/// A virtual key as stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Stable id; survives rotation.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Owning team.
    pub team: Option<String>,
    /// The person or service the key belongs to.
    pub owner: Option<String>,
    /// Free-form attributes shown to access rules.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The first characters of the current secret, for identification.
    pub secret_prefix: String,
    /// Model Access grant.
    pub models: ModelGrant,
    /// MCP Access grant: the MCP server slugs the key may use (none by default).
    pub mcp: ModelGrant,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms of the last change.
    pub updated_at_ms: i64,
    /// Unix ms after which the key is expired.
    pub expires_at_ms: Option<i64>,
    /// Unix ms of revocation.
    pub revoked_at_ms: Option<i64>,
    /// How often the secret was rotated.
    pub rotations: i64,
}

/// The runtime state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl KeyState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    /// An active key of `team` granted every model and no MCP server (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, team: &str) -> Self {
        KeyRecord {
            id: id.into(),
            name: "k".into(),
            team: Some(team.into()),
            owner: None,
            metadata: serde_json::Map::new(),
            secret_prefix: "tg_x".into(),
            models: ModelGrant::All,
            mcp: ModelGrant::Only(Vec::new()),
            created_at_ms: 1,
            updated_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            rotations: 0,
        }
    }

    /// The key's state at `now_ms`; revocation wins over expiry.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_at_ms.is_some() {
            KeyState::Revoked
        } else if self.expires_at_ms.is_some_and(|e| now_ms >= e) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            team: row.try_get("team")?,
            owner: row.try_get("owner")?,
            metadata: match serde_json::from_str(&row.try_get::<String, _>("metadata")?) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) | Err(_) => {
                    return Err(StoreError::Corrupt {
                        what: "api_keys.metadata",
                        detail: "not a JSON object".into(),
                    });
                }
            },
            secret_prefix: row.try_get("secret_prefix")?,
            models: ModelGrant::from_json(&row.try_get::<String, _>("models")?)?,
            mcp: ModelGrant::from_json_column(
                &row.try_get::<String, _>("mcp_servers")?,
                "api_keys.mcp_servers",
            )?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            revoked_at_ms: row.try_get("revoked_at_ms")?,
            rotations: row.try_get("rotations")?,
        })
    }
}

/// A freshly minted secret: shown once, never stored.
pub struct NewSecret {
    /// The full secret.
    pub secret: String,
    /// Its SHA-256, hex.
    pub hash: String,
    /// Its display prefix.
    pub prefix: String,
}

/// Mints a new random secret.
pub fn mint_secret() -> NewSecret {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(SECRET_RANDOM_LEN)
        .map(char::from)
        .collect();
    let secret = format!("{SECRET_PREFIX}{random}");
    NewSecret {
        hash: hash_secret(&secret),
        prefix: secret[..DISPLAY_PREFIX_LEN].to_string(),
        secret,
    }
}

/// SHA-256 of a presented secret, hex. Keys are high-entropy, so a fast hash is safe here.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` has the shape of a tollgate key (cheap pre-check before any lookup).
pub fn looks_like_secret(secret: &str) -> bool {
    secret.len() == SECRET_PREFIX.len() + SECRET_RANDOM_LEN
        && secret.starts_with(SECRET_PREFIX)
        && secret[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// What `keys create` needs.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Human name.
    pub name: String,
    /// Owning team.
    pub team: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Attributes shown to access rules.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Model Access grant.
    pub models: ModelGrant,
    /// MCP Access grant.
    pub mcp: ModelGrant,
    /// Expiry (Unix ms).
    pub expires_at_ms: Option<i64>,
}

impl Store {
    /// Creates a key; returns the record and the secret (the only time it exists).
    pub async fn create_key(&self, new: &NewKey) -> Result<(KeyRecord, String), StoreError> {
        let minted = mint_secret();
        let now = now_ms();
        let id = format!("key_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO api_keys (id, name, team, owner, metadata, secret_hash, secret_prefix, models, \
             created_at_ms, updated_at_ms, expires_at_ms, mcp_servers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(&new.team)
        .bind(&new.owner)
        .bind(serde_json::Value::Object(new.metadata.clone()).to_string())
        .bind(&minted.hash)
        .bind(&minted.prefix)
        .bind(new.models.to_json())
        .bind(now)
        .bind(new.expires_at_ms)
        .bind(new.mcp.to_json())
        .execute(self.pool())
        .await?;
        let record = self
            .key_by_id(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "api_keys",
                detail: format!("{id} vanished after insert"),
            })?;
        Ok((record, minted.secret))
    }

    /// Looks a key up by the hash of its secret.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = "SELECT id, name, team, owner, metadata, secret_prefix, models, mcp_servers, created_at_ms, updated_at_ms, \
                   expires_at_ms, revoked_at_ms, rotations FROM api_keys WHERE secret_hash = $1";
        let row = sqlx::query(sql)
            .bind(hash)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(KeyRecord::from_row).transpose()
    }

    /// Looks a key up by id.
    pub async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = "SELECT id, name, team, owner, metadata, secret_prefix, models, mcp_servers, created_at_ms, updated_at_ms, \
                   expires_at_ms, revoked_at_ms, rotations FROM api_keys WHERE id = $1";
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(KeyRecord::from_row).transpose()
    }

    /// Every key, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = "SELECT id, name, team, owner, metadata, secret_prefix, models, mcp_servers, created_at_ms, updated_at_ms, \
                   expires_at_ms, revoked_at_ms, rotations FROM api_keys ORDER BY created_at_ms, id";
        let rows = sqlx::query(sql).fetch_all(self.pool()).await?;
        rows.iter().map(KeyRecord::from_row).collect()
    }

    /// Revokes a key; `None` if it does not exist. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1), updated_at_ms = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        self.key_by_id(id).await
    }

    /// Gives a key a new secret, keeping its id; the old secret stops working.
    /// `None` if the key does not exist.
    pub async fn rotate_key(&self, id: &str) -> Result<Option<(KeyRecord, String)>, StoreError> {
        let minted = mint_secret();
        let result = sqlx::query(
            "UPDATE api_keys SET secret_hash = $1, secret_prefix = $2, rotations = rotations + 1, \
             updated_at_ms = $3 WHERE id = $4",
        )
        .bind(&minted.hash)
        .bind(&minted.prefix)
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.key_by_id(id).await?.map(|r| (r, minted.secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_secrets_have_the_documented_shape_and_hash() {
        let minted = mint_secret();
        assert!(looks_like_secret(&minted.secret));
        assert_eq!(minted.hash, hash_secret(&minted.secret));
        assert!(minted.secret.starts_with(&minted.prefix));
        assert_ne!(mint_secret().secret, minted.secret);
        assert!(!looks_like_secret("tg_short"));
        assert!(!looks_like_secret(&minted.secret.replace("tg_", "sk_")));
    }

    #[test]
    fn model_grants_parse_the_cli_form() {
        assert_eq!(ModelGrant::parse("*"), ModelGrant::All);
        let some = ModelGrant::parse("a, b");
        assert!(some.allows("a") && some.allows("b") && !some.allows("c"));
        assert_eq!(ModelGrant::from_json(&some.to_json()).expect("json"), some);
    }

    #[test]
    fn revocation_wins_over_expiry() {
        let mut key = KeyRecord {
            id: "k".into(),
            name: "n".into(),
            team: None,
            owner: None,
            metadata: serde_json::Map::new(),
            secret_prefix: "tg_abc".into(),
            models: ModelGrant::All,
            mcp: ModelGrant::Only(vec![]),
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: Some(100),
            revoked_at_ms: None,
            rotations: 0,
        };
        assert_eq!(key.state(99), KeyState::Active);
        assert_eq!(key.state(100), KeyState::Expired);
        key.revoked_at_ms = Some(5);
        assert_eq!(key.state(0), KeyState::Revoked);
    }
}
