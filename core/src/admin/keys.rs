//! `/admin/v1/keys`: list, create (the secret shown once), read, change, revoke, unrevoke,
//! rotate and the rotation history. Every change is audited and confirmed by every running
//! gateway before the answer, so it decides the next request.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Admin, ApiError, Call, Reply, confirm_keys, page};
use crate::clock::now_ms;
use crate::store::ModelGrant;
use crate::store::admin::{KeyFilter, KeyPatch, PrincipalKind, key_json};
use crate::store::keys::NewKey;

/// `POST /keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyCreate {
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    user: Option<String>,
    models: Vec<String>,
    #[serde(default)]
    mcp_servers: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `PATCH /keys/{id}` body: absent fields stay; `null` clears team, user and expires_at.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyUpdate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    team: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    user: Option<Option<String>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    mcp_servers: Option<Vec<String>>,
}

/// Distinguishes an absent field (`None`) from `null` (`Some(None)`).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn grant(names: &[String], what: &str, empty_ok: bool) -> Result<ModelGrant, ApiError> {
    if names.iter().any(|n| n.trim().is_empty()) {
        return Err(ApiError::invalid(format!("{what} holds an empty name")));
    }
    for n in names {
        super::plain_text(what, n)?;
    }
    if names.iter().any(|n| n == "*") {
        return Ok(ModelGrant::All);
    }
    if names.is_empty() && !empty_ok {
        return Err(ApiError::invalid(format!(
            "{what} needs [\"*\"] or at least one name"
        )));
    }
    Ok(ModelGrant::Only(names.to_vec()))
}

fn name(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return Err(ApiError::invalid("name must have 1 to 200 characters"));
    }
    super::plain_text("name", text)?;
    Ok(text.to_string())
}

fn expiry(text: &str) -> Result<i64, ApiError> {
    let ms = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| ApiError::invalid(format!("expires_at '{text}' is not RFC 3339")))?
        .timestamp_millis();
    if ms <= now_ms() {
        return Err(ApiError::invalid(format!(
            "expires_at '{text}' is in the past"
        )));
    }
    Ok(ms)
}

async fn check_refs(admin: &Admin, team: Option<&str>, user: Option<&str>) -> Result<(), ApiError> {
    for (kind, id) in [(PrincipalKind::Team, team), (PrincipalKind::User, user)] {
        if let Some(id) = id
            && admin.store.principal(kind, id).await?.is_none()
        {
            return Err(ApiError::invalid(format!(
                "{} '{id}' does not exist: create it with POST /admin/v1/{}",
                kind.noun(),
                kind.collection()
            )));
        }
    }
    Ok(())
}

/// `GET /keys`.
pub async fn list(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let limit = call.limit()?;
    let status = call.q("status");
    if let Some(s) = &status
        && !matches!(s.as_str(), "active" | "expired" | "revoked")
    {
        return Err(ApiError::invalid(format!(
            "status '{s}' must be active, expired or revoked"
        )));
    }
    let filter = KeyFilter {
        team: call.q("team"),
        user: call.q("user"),
        status,
        q: call.q("q"),
    };
    let cursor = call.q("cursor");
    let keys = admin
        .store
        .key_page(&filter, limit + 1, cursor.as_deref())
        .await?;
    let more = keys.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let keys = &keys[..keys.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    let next = more.then(|| keys.last().map(|k| k.id.clone())).flatten();
    Ok(page(keys.iter().map(key_json).collect(), next))
}

/// `POST /keys`.
pub async fn create(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let body: KeyCreate = call.json()?;
    let new = NewKey {
        name: name(&body.name)?,
        team: body.team.filter(|t| !t.is_empty()),
        owner: body.user.filter(|u| !u.is_empty()),
        metadata: body.metadata,
        models: grant(&body.models, "models", false)?,
        mcp: grant(&body.mcp_servers, "mcp_servers", true)?,
        expires_at_ms: body.expires_at.as_deref().map(expiry).transpose()?,
    };
    check_refs(&admin, new.team.as_deref(), new.owner.as_deref()).await?;
    let (key, secret) = admin.store.create_key_audited(&call.actor.id, &new).await?;
    confirm_keys(&admin.store).await?;
    Ok(Reply::Json(
        201,
        json!({"key": key_json(&key), "secret": secret}),
    ))
}

/// `GET /keys/{id}`.
pub async fn get(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    match admin.store.key_by_id(&id).await? {
        Some(key) => Ok(Reply::ok(key_json(&key))),
        None => Err(ApiError::not_found(format!("no key with id '{id}'"))),
    }
}

/// `PATCH /keys/{id}`.
pub async fn update(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    let body: KeyUpdate = call.json()?;
    let patch = KeyPatch {
        name: body.name.as_deref().map(name).transpose()?,
        team: body.team.map(|t| t.filter(|t| !t.is_empty())),
        user: body.user.map(|u| u.filter(|u| !u.is_empty())),
        metadata: body.metadata,
        expires_at_ms: body
            .expires_at
            .map(|e| e.as_deref().map(expiry).transpose())
            .transpose()?,
        models: body
            .models
            .as_deref()
            .map(|m| grant(m, "models", false))
            .transpose()?,
        mcp: body
            .mcp_servers
            .as_deref()
            .map(|m| grant(m, "mcp_servers", true))
            .transpose()?,
    };
    check_refs(
        &admin,
        patch.team.as_ref().and_then(Option::as_deref),
        patch.user.as_ref().and_then(Option::as_deref),
    )
    .await?;
    let key = admin
        .store
        .patch_key_audited(&call.actor.id, &id, &patch)
        .await?;
    confirm_keys(&admin.store).await?;
    Ok(Reply::ok(key_json(&key)))
}

async fn set_revoked(admin: Arc<Admin>, call: Call, revoke: bool) -> Result<Reply, ApiError> {
    let id = call.param("id");
    let key = admin
        .store
        .set_key_revoked_audited(&call.actor.id, &id, revoke)
        .await?;
    confirm_keys(&admin.store).await?;
    Ok(Reply::ok(key_json(&key)))
}

/// `POST /keys/{id}/revoke`.
pub async fn revoke(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    set_revoked(admin, call, true).await
}

/// `POST /keys/{id}/unrevoke`.
pub async fn unrevoke(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    set_revoked(admin, call, false).await
}

/// `POST /keys/{id}/rotate`.
pub async fn rotate(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    let (key, secret) = admin.store.rotate_key_audited(&call.actor.id, &id).await?;
    confirm_keys(&admin.store).await?;
    Ok(Reply::ok(json!({"key": key_json(&key), "secret": secret})))
}

/// `GET /keys/{id}/rotations`.
pub async fn rotations(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    if admin.store.key_by_id(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("no key with id '{id}'")));
    }
    super::page_of(&call, admin.store.key_rotations(&id).await?)
}
