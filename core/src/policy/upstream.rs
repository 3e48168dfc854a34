//! Validates how providers are called: `[upstream]` (attempts, backoff, retry budget,
//! cooldowns, proxy) and each provider's timeouts and proxy, with file:line errors.

use std::time::Duration;

use toml::Spanned;

use super::Provider;
use super::config::{ProviderSection, UpstreamSection};
use super::load::{LoadError, SourceMap};
use crate::health::CooldownPolicy;
use crate::upstream::proxy::NetSettings;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::timeouts::{DEFAULT_ANSWER, DEFAULT_CONNECT, MAX_TIMEOUT, Timeouts};

/// A duration in ms: positive and at most [`MAX_TIMEOUT`]; `default` when unset.
fn millis(
    map: &SourceMap<'_>,
    key: &str,
    value: Option<&Spanned<u64>>,
    default: Duration,
    allow_zero: bool,
    errors: &mut Vec<LoadError>,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    let ms = *value.get_ref();
    let max = u64::try_from(MAX_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    if (ms == 0 && !allow_zero) || ms > max {
        errors.push(map.error(
            Some(value.span()),
            key,
            format!("must be {} to {max} ms", if allow_zero { "0" } else { "1" }),
        ));
        return default;
    }
    Duration::from_millis(ms)
}

/// `[upstream]` as requests use it.
pub(super) fn retry_policy(
    map: &SourceMap<'_>,
    section: &UpstreamSection,
    errors: &mut Vec<LoadError>,
) -> RetryPolicy {
    let d = RetryPolicy::default();
    let max_attempts = match &section.max_attempts {
        Some(n) if !(1..=20).contains(n.get_ref()) => {
            errors.push(map.error(
                Some(n.span()),
                "upstream.max_attempts",
                "must be 1 to 20".into(),
            ));
            None
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };
    let mut ratio = |value: &Option<Spanned<f64>>, key: &str, max: f64, default: f64| match value {
        Some(v) if !(v.get_ref().is_finite() && (0.0..=max).contains(v.get_ref())) => {
            errors.push(map.error(
                Some(v.span()),
                key,
                format!("must be a number from 0 to {max}"),
            ));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    };
    let budget_ratio = ratio(
        &section.retry_budget_ratio,
        "upstream.retry_budget_ratio",
        10.0,
        d.budget_ratio,
    );
    let budget_min_per_sec = ratio(
        &section.retry_budget_min_per_sec,
        "upstream.retry_budget_min_per_sec",
        1e6,
        d.budget_min_per_sec,
    );
    let backoff_base = millis(
        map,
        "upstream.backoff_base_ms",
        section.backoff_base_ms.as_ref(),
        d.backoff_base,
        true,
        errors,
    );
    let backoff_max = millis(
        map,
        "upstream.backoff_max_ms",
        section.backoff_max_ms.as_ref(),
        d.backoff_max,
        true,
        errors,
    );
    if backoff_max < backoff_base
        && let Some(v) = &section.backoff_max_ms
    {
        errors.push(map.error(
            Some(v.span()),
            "upstream.backoff_max_ms",
            format!(
                "is smaller than upstream.backoff_base_ms ({} ms)",
                backoff_base.as_millis()
            ),
        ));
    }
    let max_retry_after = millis(
        map,
        "upstream.max_retry_after_ms",
        section.max_retry_after_ms.as_ref(),
        d.max_retry_after,
        true,
        errors,
    );
    let after = match &section.cooldown_after {
        Some(n) if *n.get_ref() == 0 => {
            errors.push(map.error(
                Some(n.span()),
                "upstream.cooldown_after",
                "must be at least 1".into(),
            ));
            d.cooldown.after
        }
        Some(n) => *n.get_ref(),
        None => d.cooldown.after,
    };
    let first = millis(
        map,
        "upstream.cooldown_ms",
        section.cooldown_ms.as_ref(),
        d.cooldown.first,
        false,
        errors,
    );
    let max = millis(
        map,
        "upstream.max_cooldown_ms",
        section.max_cooldown_ms.as_ref(),
        d.cooldown.max.max(first),
        false,
        errors,
    );
    if max < first
        && let Some(v) = &section.max_cooldown_ms
    {
        errors.push(map.error(
            Some(v.span()),
            "upstream.max_cooldown_ms",
            format!(
                "is smaller than upstream.cooldown_ms ({} ms)",
                first.as_millis()
            ),
        ));
    }
    for (key, value) in [
        ("upstream.proxy", &section.proxy),
        ("upstream.no_proxy", &section.no_proxy),
    ] {
        check_proxy_value(map, key, value.as_ref(), errors);
    }
    RetryPolicy {
        max_attempts,
        budget_ratio,
        budget_min_per_sec,
        backoff_base,
        backoff_max,
        max_retry_after,
        cooldown: CooldownPolicy { after, first, max },
    }
}

fn check_proxy_value(
    map: &SourceMap<'_>,
    key: &str,
    value: Option<&Spanned<String>>,
    errors: &mut Vec<LoadError>,
) {
    let Some(value) = value else {
        return;
    };
    if key.ends_with(".proxy")
        && !value.get_ref().trim().is_empty()
        && let Err(message) = NetSettings::check_proxy(value.get_ref())
    {
        errors.push(map.error(Some(value.span()), key, message));
    }
}

/// A provider's timeouts, network settings and (when they are not the defaults) its client: the
/// previous snapshot's client when the settings are unchanged, so reloads keep its connections.
pub(super) fn provider_net(
    map: &SourceMap<'_>,
    key: &str,
    section: &ProviderSection,
    upstream: &UpstreamSection,
    previous: Option<&Provider>,
    errors: &mut Vec<LoadError>,
) -> (Timeouts, NetSettings, Option<reqwest::Client>) {
    let mut ms = |field: &str, value: Option<&Spanned<u64>>, default: Duration| {
        millis(
            map,
            &format!("{key}.{field}"),
            value,
            default,
            false,
            errors,
        )
    };
    let answer = ms("timeout_ms", section.timeout_ms.as_ref(), DEFAULT_ANSWER);
    let connect = ms(
        "connect_timeout_ms",
        section.connect_timeout_ms.as_ref(),
        DEFAULT_CONNECT,
    );
    let first_byte = ms(
        "first_byte_timeout_ms",
        section.first_byte_timeout_ms.as_ref(),
        answer,
    );
    let idle = ms("idle_timeout_ms", section.idle_timeout_ms.as_ref(), answer);
    let total = section
        .total_timeout_ms
        .as_ref()
        .map(|v| ms("total_timeout_ms", Some(v), answer));
    if let (Some(total), Some(v)) = (total, &section.total_timeout_ms) {
        for (name, value) in [
            ("first_byte_timeout_ms", first_byte),
            ("connect_timeout_ms", connect),
        ] {
            if value > total {
                errors.push(map.error(
                    Some(v.span()),
                    &format!("{key}.total_timeout_ms"),
                    format!(
                        "{} ms is shorter than {name} ({} ms)",
                        total.as_millis(),
                        value.as_millis()
                    ),
                ));
            }
        }
    }
    let timeouts = Timeouts {
        connect,
        first_byte,
        idle,
        total,
        answer,
    };
    check_proxy_value(map, &format!("{key}.proxy"), section.proxy.as_ref(), errors);
    let proxy = section
        .proxy
        .as_ref()
        .or(upstream.proxy.as_ref())
        .map(|p| p.get_ref().clone());
    let no_proxy = section
        .no_proxy
        .as_ref()
        .or(upstream.no_proxy.as_ref())
        .map(|p| p.get_ref().clone());
    let net = NetSettings::new(proxy, no_proxy, connect);
    if net.is_default() {
        return (timeouts, net, None);
    }
    if let Some(previous) = previous
        && previous.net == net
        && previous.client.is_some()
    {
        return (timeouts, net, previous.client.clone());
    }
    match net.client() {
        Ok(client) => (timeouts, net, Some(client)),
        Err(message) => {
            errors.push(map.error(None, key, message));
            (timeouts, net, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::{GATEWAY_FILE, load_dir};
    use super::*;

    fn load(text: &str) -> Result<super::super::Snapshot, Vec<LoadError>> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(GATEWAY_FILE), text).expect("write");
        load_dir(dir.path(), 1, None)
    }

    #[test]
    fn a_timeout_too_large_for_the_clock_is_a_load_error_with_its_line() {
        // Before the bound this loaded, and a relayed stream computes `Instant::now() + idle`
        // on every chunk: with this value that addition overflows, which panics.
        let errors = load(
            "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ntimeout_ms = 18446744073709551615\n",
        )
        .expect_err("must fail");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(4));
        assert_eq!(errors[0].key.as_deref(), Some("providers.p.timeout_ms"));
    }

    #[test]
    fn defaults_keep_the_old_behaviour_and_set_values_are_used() {
        let snapshot = load(
            "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ntimeout_ms = 2000\n\n[providers.q]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nconnect_timeout_ms = 300\nfirst_byte_timeout_ms = 400\nidle_timeout_ms = 500\ntotal_timeout_ms = 600\n\n[upstream]\nmax_attempts = 4\ncooldown_ms = 1000\n",
        )
        .expect("loads");
        let p = &snapshot.providers["p"];
        assert_eq!(p.timeouts, Timeouts::uniform(Duration::from_secs(2)));
        assert!(p.client.is_none(), "default settings share the client");
        let q = &snapshot.providers["q"];
        assert_eq!(q.timeouts.connect, Duration::from_millis(300));
        assert_eq!(q.timeouts.first_byte, Duration::from_millis(400));
        assert_eq!(q.timeouts.idle, Duration::from_millis(500));
        assert_eq!(q.timeouts.total, Some(Duration::from_millis(600)));
        assert!(
            q.client.is_some(),
            "its own connect timeout needs its own client"
        );
        assert_eq!(snapshot.retry.max_attempts, Some(4));
        assert_eq!(snapshot.retry.cooldown.first, Duration::from_secs(1));
        assert_eq!(snapshot.retry.cooldown.max, Duration::from_secs(300));
    }
}
