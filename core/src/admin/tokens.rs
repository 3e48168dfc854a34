//! `/admin/v1/whoami`, `/admin/v1/admin-tokens` (stored tokens with a role, hashed like virtual
//! keys, the secret shown once) and `/admin/v1/audit`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{Admin, ApiError, Call, Reply, Role, page};
use crate::store::admin::AuditFilter;

/// `GET /whoami`.
pub async fn whoami(_admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    Ok(Reply::ok(
        json!({"token_id": call.actor.id, "role": call.actor.role.as_str()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCreate {
    name: String,
    role: String,
}

/// `GET /admin-tokens`.
pub async fn list(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let tokens = admin.store.list_admin_tokens().await?;
    super::page_of(&call, tokens.iter().map(|t| t.to_json()).collect())
}

/// `POST /admin-tokens`.
pub async fn create(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let body: TokenCreate = call.json()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name must have 1 to 200 characters"));
    }
    super::plain_text("name", name)?;
    let Some(role) = Role::parse(&body.role) else {
        return Err(ApiError::invalid(format!(
            "role '{}' must be admin or read",
            body.role
        )));
    };
    let (token, secret) = admin
        .store
        .create_admin_token(&call.actor.id, name, role.as_str())
        .await?;
    Ok(Reply::Json(
        201,
        json!({"token": token.to_json(), "secret": secret}),
    ))
}

/// `DELETE /admin-tokens/{id}`.
pub async fn delete(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    admin.store.delete_admin_token(&call.actor.id, &id).await?;
    Ok(Reply::ok(json!({"deleted": id})))
}

/// `GET /audit`.
pub async fn audit(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let limit = call.limit()?;
    let filter = AuditFilter {
        from_ms: call.time("from")?,
        to_ms: call.time("to")?,
        actor: call.q("actor"),
        action: call.q("action"),
    };
    let rows = admin
        .store
        .audit_page(&filter, limit + 1, call.q("cursor").as_deref())
        .await?;
    let n = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = (rows.len() > n)
        .then(|| rows[n - 1]["id"].as_str().map(str::to_string))
        .flatten();
    Ok(page(rows.into_iter().take(n).collect(), next))
}
