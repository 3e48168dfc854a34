//! The store's part of the MCP gateway: the secret that signs session ids, shared by replicas.

use rand::Rng;
use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// The session-signing secret, created by the first gateway that asks.
    pub async fn mcp_session_secret(&self) -> Result<String, StoreError> {
        let candidate: String = hex::encode(rand::rng().random::<[u8; 32]>());
        sqlx::query(
            "INSERT INTO mcp_secrets (name, value) VALUES ('session', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&candidate)
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM mcp_secrets WHERE name = 'session'")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }
}
