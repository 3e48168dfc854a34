//! Spend control: budgets (402) and quotas (429) that hold capacity before the call and settle
//! after it, plus network and payload limits per key and team.
//!
//! - [`BudgetSpec`] / [`QuotaSpec`] / [`LimitSpec`]: what applies, from the policy directory and
//!   (budgets) the store.
//! - [`ledger::Ledger`]: the runtime: budget definitions cached from the store, the hold taken by
//!   the reserve stage, the settlement queue, expired-hold reclamation and threshold events.
//! - [`memory::MemoryLedger`]: the in-memory half of the ledger (counters and holds).
//! - [`lease::LeaseBook`]: a replica's leased slices of the shared store's counters, and the
//!   holds admitted from them in memory.
//! - [`cap`]: output limits checked and the held cap written into upstream requests;
//!   [`image`]: per-image prices; [`estimate`]: the worst case a hold is taken for.

pub mod budgets;
pub mod cap;
pub mod estimate;
pub mod image;
pub mod lease;
#[cfg(test)]
mod lease_properties;
pub mod ledger;
pub mod memory;
#[cfg(test)]
mod properties;
pub mod settle;
pub mod window;

use std::net::IpAddr;

use chrono_tz::Tz;

pub use window::Window;

/// Who a budget, quota or limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request.
    Organization,
    /// Keys of one team.
    Team,
    /// Keys of one owner.
    User,
    /// One key.
    Key,
    /// One model (quotas).
    Model,
}

impl Scope {
    /// Parses a scope name.
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "organization" => Some(Scope::Organization),
            "team" => Some(Scope::Team),
            "user" => Some(Scope::User),
            "key" => Some(Scope::Key),
            "model" => Some(Scope::Model),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Organization => "organization",
            Scope::Team => "team",
            Scope::User => "user",
            Scope::Key => "key",
            Scope::Model => "model",
        }
    }
}

/// Where a budget is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[budgets]]` in gateway.toml.
    Policy,
    /// The CLI or the admin API.
    Store,
}

/// A budget.
#[derive(Debug, Clone)]
pub struct BudgetSpec {
    /// Stable id (store id, or `policy-<scope>-<subject>-<window>`).
    pub id: String,
    /// Scope.
    pub scope: Scope,
    /// Team, owner or key id; empty for organization.
    pub subject: String,
    /// Window.
    pub window: Window,
    /// Time zone of the windows.
    pub tz: Tz,
    /// Limit in nano-USD.
    pub limit_nanos: i64,
    /// Notification thresholds in percent.
    pub thresholds: Vec<u32>,
    /// Where it is defined.
    pub source: Source,
}

impl BudgetSpec {
    /// The counter its spend lives in.
    pub fn counter_id(&self) -> String {
        format!("budget:{}", self.id)
    }
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests.
    Requests,
    /// Input tokens.
    InputTokens,
    /// Output tokens.
    OutputTokens,
    /// Input + output tokens.
    TotalTokens,
    /// Cost in nano-USD.
    Cost,
    /// Requests in flight.
    Concurrency,
}

impl Metric {
    /// Parses a metric name.
    pub fn parse(text: &str) -> Option<Metric> {
        match text {
            "requests" => Some(Metric::Requests),
            "input_tokens" => Some(Metric::InputTokens),
            "output_tokens" => Some(Metric::OutputTokens),
            "total_tokens" => Some(Metric::TotalTokens),
            "cost_usd" => Some(Metric::Cost),
            "concurrency" => Some(Metric::Concurrency),
            _ => None,
        }
    }

    /// Whether the count of the prompt's tokens changes what a call uses of this metric (a
    /// refusal on the prompt's byte bound may then fit on its counted tokens).
    pub fn counts_prompt(self) -> bool {
        matches!(
            self,
            Metric::InputTokens | Metric::TotalTokens | Metric::Cost
        )
    }

    /// The metric of a refusal's limit name (`total_tokens_per_day`, `concurrency`).
    pub fn of_limit_name(name: &str) -> Option<Metric> {
        let metric = name.split_once("_per_").map_or(name, |(metric, _)| metric);
        Metric::parse(metric)
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::TotalTokens => "total_tokens",
            Metric::Cost => "cost_usd",
            Metric::Concurrency => "concurrency",
        }
    }
}

/// A quota.
#[derive(Debug, Clone)]
pub struct QuotaSpec {
    /// Stable name (given, or made of scope, subject, metric and window), part of the counter
    /// id: `quota:<name>:<subject>`.
    pub name: String,
    /// Scope.
    pub scope: Scope,
    /// The one subject it applies to; `None`: every subject separately.
    pub subject: Option<String>,
    /// What it counts.
    pub metric: Metric,
    /// Limit per window (nano-USD for cost).
    pub limit: i64,
    /// Window (`None` for concurrency).
    pub window: Option<Window>,
    /// Time zone for day and month windows.
    pub tz: Tz,
}

impl QuotaSpec {
    /// The limit's name in errors, e.g. `requests_per_minute`, `concurrency`.
    pub fn limit_name(&self) -> String {
        match self.window {
            None => self.metric.as_str().to_string(),
            Some(w) => format!("{}_per_{}", self.metric.as_str(), w.quota_name()),
        }
    }

    /// The code a refusal answers with: short windows and concurrency are rate limits.
    pub fn code(&self) -> &'static str {
        match self.window {
            None | Some(Window::Second | Window::Minute) => "rate_limit_exceeded",
            Some(_) => "quota_exceeded",
        }
    }
}

/// Network and payload limits of a scope.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// Organization, team or key.
    pub scope: Scope,
    /// Team or key id; empty for organization.
    pub subject: String,
    /// Allowed networks (empty: any).
    pub ip_allow: Vec<ipnet::IpNet>,
    /// Denied networks.
    pub ip_deny: Vec<ipnet::IpNet>,
    /// Largest request body.
    pub max_request_bytes: Option<usize>,
}

impl LimitSpec {
    /// Whether `ip` may call under this limit.
    pub fn ip_allowed(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return self.ip_allow.is_empty();
        };
        if self.ip_deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.ip_allow.is_empty() || self.ip_allow.iter().any(|n| n.contains(&ip))
    }
}

/// Parses an address or network (`10.0.0.0/8`, `203.0.113.10`).
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn a_refusal_is_recounted_only_where_the_prompt_count_matters() {
        let metric = |name: &str| Metric::of_limit_name(name);
        assert_eq!(metric("concurrency"), Some(Metric::Concurrency));
        assert_eq!(metric("requests_per_minute"), Some(Metric::Requests));
        assert_eq!(metric("total_tokens_per_day"), Some(Metric::TotalTokens));
        assert_eq!(metric("cost_usd_per_month"), Some(Metric::Cost));
        assert_eq!(metric("pending_tool_calls"), None);
        let recounted: Vec<_> = [
            Metric::Requests,
            Metric::InputTokens,
            Metric::OutputTokens,
            Metric::TotalTokens,
            Metric::Cost,
            Metric::Concurrency,
        ]
        .into_iter()
        .filter(|m| m.counts_prompt())
        .collect();
        assert_eq!(
            recounted,
            [Metric::InputTokens, Metric::TotalTokens, Metric::Cost]
        );
        // Every quota's limit name maps back to its metric.
        for m in [Metric::Requests, Metric::OutputTokens, Metric::Concurrency] {
            assert_eq!(Metric::of_limit_name(m.as_str()), Some(m));
        }
    }
}
