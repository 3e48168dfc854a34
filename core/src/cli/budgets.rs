//! `tollgate budgets`: set, list and show budgets stored in the database (works while gateways
//! run; they pick changes up within a fraction of a second). Budgets declared in a policy
//! directory are shown by `GET /admin/budgets` and changed in gateway.toml.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::DatabaseArgs;
use super::admin::{self, Remote};
use crate::spend::ledger::{budget_record, budget_view, stored_spec};

#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Create or update the budget for (scope, subject, window).
    Set {
        /// organization, team, user or key.
        #[arg(long)]
        scope: String,
        /// Team name, owner or key id (none for organization).
        #[arg(long, default_value = "")]
        subject: String,
        /// daily, weekly, monthly or lifetime.
        #[arg(long)]
        window: String,
        /// Limit in USD.
        #[arg(long)]
        limit_usd: f64,
        /// IANA time zone the windows align in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Notification thresholds in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,80,100")]
        thresholds: Vec<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List stored budgets with their current window.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one budget with its current window.
    Show {
        /// Budget id.
        id: String,
    },
    /// Delete a stored budget.
    Delete {
        /// Budget id.
        id: String,
    },
}

fn human(view: &Value) -> String {
    let w = &view["current_window"];
    format!(
        "{:<40} {:<12} {:<20} {:<9} limit {:>12.6} USD  spent {:>12.6} USD  remaining {:>12.6} USD  ({:.1}%)",
        view["id"].as_str().unwrap_or(""),
        view["scope"].as_str().unwrap_or(""),
        view["subject"].as_str().unwrap_or(""),
        view["window"].as_str().unwrap_or(""),
        view["limit_usd"].as_f64().unwrap_or(0.0),
        w["spent_usd"].as_f64().unwrap_or(0.0),
        w["remaining_usd"].as_f64().unwrap_or(0.0),
        w["percent_used"].as_f64().unwrap_or(0.0),
    )
}

fn record_json(r: &crate::store::ledger::BudgetRecord) -> Value {
    serde_json::json!({
        "id": r.id, "scope": r.scope, "subject": r.subject, "window": r.window,
        "limit_nanos": r.limit_nanos, "timezone": r.timezone, "thresholds": r.thresholds,
    })
}

/// `budgets ...` against a running gateway's admin API.
async fn remote_run(
    command: BudgetsCommand,
    db: &DatabaseArgs,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    use axum::http::Method;
    let path = |p: &str| admin::path_with_query(p, &[]);
    let columns = &["id", "source", "scope", "subject", "window", "limit_usd"];
    match command {
        BudgetsCommand::Set {
            scope,
            subject,
            window,
            limit_usd,
            timezone,
            thresholds,
            json,
        } => {
            let body = serde_json::json!({"scope": scope, "subject": subject, "window": window,
                "limit_usd": limit_usd, "timezone": timezone, "thresholds": thresholds});
            let mut answer =
                admin::call(remote, db, Method::POST, &path("/budgets")?, Some(body)).await?;
            if answer.status == 409 {
                // It exists: change it.
                let list = admin::call(remote, db, Method::GET, &path("/budgets?limit=500")?, None)
                    .await?;
                let existing = list.json()["data"].as_array().and_then(|d| {
                    d.iter()
                        .find(|b| {
                            b["scope"] == scope.as_str()
                                && b["subject"] == subject.as_str()
                                && b["window"] == window.as_str()
                        })
                        .and_then(|b| b["id"].as_str().map(str::to_string))
                });
                if let Some(id) = existing {
                    let body = serde_json::json!({"limit_usd": limit_usd, "timezone": timezone, "thresholds": thresholds});
                    answer = admin::call(
                        remote,
                        db,
                        Method::PATCH,
                        &path(&format!("/budgets/{id}"))?,
                        Some(body),
                    )
                    .await?;
                }
            }
            Ok(admin::print(&answer, json, &[]))
        }
        BudgetsCommand::List { json } => {
            let answer = admin::call(remote, db, Method::GET, &path("/budgets")?, None).await?;
            Ok(admin::print(&answer, json, columns))
        }
        BudgetsCommand::Show { id } => {
            let answer = admin::call(
                remote,
                db,
                Method::GET,
                &path(&format!("/budgets/{id}"))?,
                None,
            )
            .await?;
            Ok(admin::print(&answer, false, &[]))
        }
        BudgetsCommand::Delete { id } => {
            let answer = admin::call(
                remote,
                db,
                Method::DELETE,
                &path(&format!("/budgets/{id}"))?,
                None,
            )
            .await?;
            Ok(admin::print(&answer, false, &[]))
        }
    }
}

pub async fn run(
    command: BudgetsCommand,
    db: &DatabaseArgs,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    if remote.gateway.is_some() {
        return remote_run(command, db, remote).await;
    }
    let store = db.open().await?;
    let code = match command {
        BudgetsCommand::Set {
            scope,
            subject,
            window,
            limit_usd,
            timezone,
            thresholds,
            json,
        } => {
            let record = budget_record(&scope, &subject, &window, limit_usd, &timezone, thresholds)
                .map_err(anyhow::Error::msg)?;
            let saved = store.set_budget(&record).await?;
            store
                .audit(
                    "cli",
                    "budget.set",
                    Some(&saved.id),
                    None,
                    Some(&record_json(&saved)),
                )
                .await?;
            let spec = stored_spec(&saved)
                .ok_or_else(|| anyhow::anyhow!("stored budget could not be read back"))?;
            let view = budget_view(&store, &spec).await?;
            if json {
                println!("{view}");
            } else {
                println!("{}", human(&view));
            }
            ExitCode::SUCCESS
        }
        BudgetsCommand::List { json } => {
            let mut views = Vec::new();
            for record in store.list_budgets().await? {
                if let Some(spec) = stored_spec(&record) {
                    views.push(budget_view(&store, &spec).await?);
                }
            }
            if json {
                println!("{}", Value::from(views));
            } else {
                for view in &views {
                    println!("{}", human(view));
                }
            }
            ExitCode::SUCCESS
        }
        BudgetsCommand::Show { id } => {
            let records = store.list_budgets().await?;
            match records.iter().find(|r| r.id == id).and_then(stored_spec) {
                None => {
                    eprintln!("error: no stored budget with id '{id}'");
                    ExitCode::FAILURE
                }
                Some(spec) => {
                    println!("{:#}", budget_view(&store, &spec).await?);
                    ExitCode::SUCCESS
                }
            }
        }
        BudgetsCommand::Delete { id } => {
            if store.delete_budget(&id).await? {
                store
                    .audit("cli", "budget.delete", Some(&id), None, None)
                    .await?;
                println!("deleted budget {id}");
                ExitCode::SUCCESS
            } else {
                eprintln!("error: no stored budget with id '{id}'");
                ExitCode::FAILURE
            }
        }
    };
    store.close().await;
    Ok(code)
}
