//! `/admin/v1/teams` and `/admin/v1/users`: ids are slugs chosen by the creator; keys' `team`
//! and `user` refer to them. Deleting one that keys (or, for a team, users) refer to is refused.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Admin, ApiError, Call, Reply, page, valid_slug};
use crate::store::admin::{Principal, PrincipalKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    id: String,
    name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    team: Option<Option<String>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name must have 1 to 200 characters"));
    }
    super::plain_text("name", name)?;
    Ok(name.to_string())
}

fn check_email(email: Option<&str>) -> Result<(), ApiError> {
    if let Some(email) = email
        && (email.chars().count() > 254
            || !email.contains('@')
            || email.chars().any(char::is_whitespace))
    {
        return Err(ApiError::invalid(format!(
            "email '{email}' is not an address"
        )));
    }
    Ok(())
}

async fn check_team(
    admin: &Admin,
    kind: PrincipalKind,
    team: Option<&str>,
) -> Result<(), ApiError> {
    if kind == PrincipalKind::User
        && let Some(team) = team
        && admin
            .store
            .principal(PrincipalKind::Team, team)
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(format!(
            "team '{team}' does not exist: create it with POST /admin/v1/teams"
        )));
    }
    Ok(())
}

async fn list(admin: Arc<Admin>, call: Call, kind: PrincipalKind) -> Result<Reply, ApiError> {
    let limit = call.limit()?;
    let cursor = call.q("cursor");
    let team = call.q("team");
    let rows = admin
        .store
        .principal_page(
            kind,
            call.q("q").as_deref(),
            team.as_deref(),
            limit + 1,
            cursor.as_deref(),
        )
        .await?;
    let n = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = (rows.len() > n).then(|| rows[n - 1].id.clone());
    Ok(page(
        rows.iter().take(n).map(|p| p.to_json(kind)).collect(),
        next,
    ))
}

async fn create(admin: Arc<Admin>, call: Call, kind: PrincipalKind) -> Result<Reply, ApiError> {
    let body: Create = call.json()?;
    if !valid_slug(&body.id) {
        return Err(ApiError::invalid(format!(
            "id '{}' must be a slug: 1-64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
            body.id
        )));
    }
    if kind == PrincipalKind::Team && (body.email.is_some() || body.team.is_some()) {
        return Err(ApiError::invalid("a team has no email or team"));
    }
    check_email(body.email.as_deref())?;
    check_team(&admin, kind, body.team.as_deref()).await?;
    let new = Principal {
        id: body.id,
        name: check_name(&body.name)?,
        email: body.email,
        team: body.team,
        metadata: body.metadata,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    let created = admin
        .store
        .create_principal(&call.actor.id, kind, &new)
        .await?;
    Ok(Reply::Json(201, created.to_json(kind)))
}

async fn fetch(admin: &Admin, kind: PrincipalKind, id: &str) -> Result<Principal, ApiError> {
    admin
        .store
        .principal(kind, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {} with id '{id}'", kind.noun())))
}

async fn get(admin: Arc<Admin>, call: Call, kind: PrincipalKind) -> Result<Reply, ApiError> {
    Ok(Reply::ok(
        fetch(&admin, kind, &call.param("id")).await?.to_json(kind),
    ))
}

async fn update(admin: Arc<Admin>, call: Call, kind: PrincipalKind) -> Result<Reply, ApiError> {
    let body: Update = call.json()?;
    let before = fetch(&admin, kind, &call.param("id")).await?;
    if kind == PrincipalKind::Team && (body.email.is_some() || body.team.is_some()) {
        return Err(ApiError::invalid("a team has no email or team"));
    }
    let mut next = before.clone();
    if let Some(name) = &body.name {
        next.name = check_name(name)?;
    }
    if let Some(email) = body.email {
        check_email(email.as_deref())?;
        next.email = email;
    }
    if let Some(team) = body.team {
        check_team(&admin, kind, team.as_deref()).await?;
        next.team = team;
    }
    if let Some(metadata) = body.metadata {
        next.metadata = metadata;
    }
    let after = admin
        .store
        .update_principal(&call.actor.id, kind, &before, &next)
        .await?;
    Ok(Reply::ok(after.to_json(kind)))
}

async fn delete(admin: Arc<Admin>, call: Call, kind: PrincipalKind) -> Result<Reply, ApiError> {
    let id = call.param("id");
    admin
        .store
        .delete_principal(&call.actor.id, kind, &id)
        .await?;
    Ok(Reply::ok(json!({"deleted": id})))
}

/// `GET /teams`.
pub async fn list_teams(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    list(admin, call, PrincipalKind::Team).await
}
/// `POST /teams`.
pub async fn create_team(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    create(admin, call, PrincipalKind::Team).await
}
/// `GET /teams/{id}`.
pub async fn get_team(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    get(admin, call, PrincipalKind::Team).await
}
/// `PATCH /teams/{id}`.
pub async fn update_team(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    update(admin, call, PrincipalKind::Team).await
}
/// `DELETE /teams/{id}`.
pub async fn delete_team(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    delete(admin, call, PrincipalKind::Team).await
}
/// `GET /users`.
pub async fn list_users(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    list(admin, call, PrincipalKind::User).await
}
/// `POST /users`.
pub async fn create_user(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    create(admin, call, PrincipalKind::User).await
}
/// `GET /users/{id}`.
pub async fn get_user(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    get(admin, call, PrincipalKind::User).await
}
/// `PATCH /users/{id}`.
pub async fn update_user(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    update(admin, call, PrincipalKind::User).await
}
/// `DELETE /users/{id}`.
pub async fn delete_user(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    delete(admin, call, PrincipalKind::User).await
}
