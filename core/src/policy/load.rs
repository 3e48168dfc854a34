//! Reads a policy directory into a [`Snapshot`], collecting every error with file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::config::{BudgetSection, GatewayFile, LimitSection, ProviderFamily, QuotaSection};
use super::{
    Credential, Deployment, Model, ModelGroup, Provider, ServerLimits, Snapshot, cel, rhai,
};
use crate::spend::{BudgetSpec, LimitSpec, Metric, QuotaSpec, Scope, Source, Window};
use crate::usage::Pricing;

/// The main configuration file inside a policy directory.
pub const GATEWAY_FILE: &str = "gateway.toml";

pub use crate::diagnostic::LoadError;

/// Maps byte offsets of one file to line and column.
pub(super) struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
}

impl SourceMap<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        (line, column)
    }

    pub(super) fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: String,
    ) -> LoadError {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = self.position(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        LoadError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: Some(key.to_string()),
            message,
        }
    }
}

/// A policy source file found in the directory.
struct SourceFile {
    name: String,
    path: PathBuf,
    text: String,
    hash: String,
}

/// Reads every `*.EXT` file of `dir/sub`, sorted by name; a missing folder has none.
fn read_folder(dir: &Path, sub: &str, ext: &str, errors: &mut Vec<LoadError>) -> Vec<SourceFile> {
    let folder = dir.join(sub);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(LoadError {
                file: folder,
                line: None,
                column: None,
                key: None,
                message: format!("cannot read folder: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<SourceFile> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext) && p.is_file())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(SourceFile {
                    name,
                    hash: hex::encode(Sha256::digest(text.as_bytes())),
                    path,
                    text,
                }),
                Err(e) => {
                    errors.push(LoadError {
                        file: path,
                        line: None,
                        column: None,
                        key: None,
                        message: format!("cannot read: {e}"),
                    });
                    None
                }
            }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

fn pricing_json(p: &Pricing) -> serde_json::Value {
    let usd = |nanos: i64| nanos as f64 / 1e9;
    serde_json::json!({
        "input_per_mtok": usd(p.input_nanos_per_mtok),
        "output_per_mtok": usd(p.output_nanos_per_mtok),
        "cached_input_per_mtok": usd(p.cached_input_nanos_per_mtok),
        "cache_write_per_mtok": usd(p.cache_write_nanos_per_mtok),
    })
}

/// Loads and validates `dir` exactly as the gateway serves it. Compiled rules and scripts of
/// `previous` whose source is unchanged are reused.
pub fn load_dir(
    dir: &Path,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<LoadError>> {
    let path = dir.join(GATEWAY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        vec![LoadError {
            file: path.clone(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let map = SourceMap {
        file: &path,
        text: &text,
    };
    let file: GatewayFile = toml::from_str(&text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = map.position(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        vec![LoadError {
            file: path.clone(),
            line,
            column,
            key: None,
            message: e.message().trim().to_string(),
        }]
    })?;

    let mut errors = Vec::new();
    let limits = ServerLimits {
        max_body_bytes: file.server.max_body_bytes,
        max_response_bytes: file.server.max_response_bytes,
        hold_ttl: Duration::from_secs(file.server.hold_ttl_secs),
        lease_ttl: Duration::from_secs(file.server.lease_ttl_secs),
    };
    if file.server.lease_ttl_secs == 0 {
        errors.push(map.error(
            None,
            "server.lease_ttl_secs",
            "must be greater than 0".into(),
        ));
    }
    if file.server.hold_ttl_secs == 0 {
        errors.push(map.error(
            None,
            "server.hold_ttl_secs",
            "must be greater than 0".into(),
        ));
    }
    if limits.max_body_bytes == 0 {
        errors.push(map.error(
            None,
            "server.max_body_bytes",
            "must be greater than 0".into(),
        ));
    }

    let retry = super::upstream::retry_policy(&map, &file.upstream, &mut errors);
    let mut providers = BTreeMap::new();
    // Provider credential variables: never handed to a plugin.
    let mut secret_env = Vec::new();
    for (name, section) in file.providers {
        let key = format!("providers.{name}");
        let base_url = match (&section.base_url, section.family) {
            (Some(url), _) => {
                let trimmed = url.get_ref().trim_end_matches('/').to_string();
                match reqwest::Url::parse(&trimmed) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(trimmed),
                    Ok(parsed) => {
                        errors.push(map.error(
                            Some(url.span()),
                            &format!("{key}.base_url"),
                            format!("scheme '{}' is not http or https", parsed.scheme()),
                        ));
                        None
                    }
                    Err(e) => {
                        errors.push(map.error(
                            Some(url.span()),
                            &format!("{key}.base_url"),
                            format!("not a valid URL: {e}"),
                        ));
                        None
                    }
                }
            }
            (None, ProviderFamily::Demo) => None,
            (None, family) => {
                errors.push(map.error(
                    None,
                    &key,
                    format!("a '{}' provider needs base_url", family.as_str()),
                ));
                None
            }
        };
        let (timeouts, net, client) = super::upstream::provider_net(
            &map,
            &key,
            &section,
            &file.upstream,
            previous.and_then(|p| p.providers.get(&name)).map(|p| &**p),
            &mut errors,
        );
        if let Some(var) = section.credential.as_ref().and_then(|c| c.env.clone()) {
            secret_env.push(var);
        }
        let credential = match &section.credential {
            None => Credential::NotRequired,
            Some(c) => match super::credential::resolve(dir, c) {
                Ok(credential) => credential,
                Err(message) => {
                    errors.push(map.error(None, &format!("{key}.credential"), message));
                    Credential::NotRequired
                }
            },
        };
        providers.insert(
            name.clone(),
            Arc::new(Provider {
                name,
                family: section.family,
                base_url,
                credential,
                timeouts,
                net,
                client,
                enabled: section.enabled,
                api_version: api_version(&map, &key, &section, &mut errors),
                adapter: adapter_name(&map, &key, &section, &mut errors),
            }),
        );
    }

    let mut models = BTreeMap::new();
    for (name, section) in file.models {
        let key = format!("models.{name}");
        let provider_name = section.provider.get_ref();
        let Some(provider) = providers.get(provider_name) else {
            let known: Vec<_> = providers.keys().map(String::as_str).collect();
            errors.push(map.error(
                Some(section.provider.span()),
                &format!("{key}.provider"),
                format!(
                    "provider '{provider_name}' is not defined (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
            continue;
        };
        let mut price = |value: &Option<toml::Spanned<f64>>, field: &str| -> Option<i64> {
            let value = value.as_ref()?;
            match Pricing::nanos_per_mtok(*value.get_ref()) {
                Some(nanos) => Some(nanos),
                None => {
                    errors.push(map.error(
                        Some(value.span()),
                        &format!("{key}.pricing.{field}"),
                        "must be a finite, non-negative number of USD per 1M tokens".into(),
                    ));
                    None
                }
            }
        };
        let input = price(&section.pricing.input_per_mtok, "input_per_mtok").unwrap_or(0);
        let output = price(&section.pricing.output_per_mtok, "output_per_mtok").unwrap_or(0);
        let cached = price(
            &section.pricing.cached_input_per_mtok,
            "cached_input_per_mtok",
        )
        .unwrap_or(input);
        let cache_write = price(
            &section.pricing.cache_write_per_mtok,
            "cache_write_per_mtok",
        )
        .unwrap_or(input);
        let mut image_prices = std::collections::BTreeMap::new();
        for (size, usd) in &section.pricing.images {
            match Pricing::nanos_per_mtok(*usd.get_ref()) {
                Some(nanos) => {
                    image_prices.insert(size.clone(), nanos);
                }
                None => errors.push(map.error(
                    Some(usd.span()),
                    &format!("{key}.pricing.images.{size}"),
                    "must be a finite, non-negative number of USD per image".into(),
                )),
            }
        }
        let output_limit = match &section.max_output_tokens {
            Some(max) if *max.get_ref() < 1 => {
                errors.push(map.error(
                    Some(max.span()),
                    &format!("{key}.max_output_tokens"),
                    "must be a positive number of tokens".into(),
                ));
                continue;
            }
            Some(max) => Some(*max.get_ref()),
            None => None,
        };
        let pricing = Pricing {
            input_nanos_per_mtok: input,
            output_nanos_per_mtok: output,
            cached_input_nanos_per_mtok: cached,
            cache_write_nanos_per_mtok: cache_write,
        };
        let image_pricing = crate::spend::image::ImagePricing::new(image_prices);
        let view = serde_json::json!({
            "name": name, "provider": provider.name, "family": provider.family.as_str(), "group": false,
            "tags": section.tags, "pricing": pricing_json(&pricing),
        });
        let mut view = view;
        if !image_pricing.is_empty() {
            view["pricing"]["images"] = image_pricing.to_json();
        }
        models.insert(
            name.clone(),
            Arc::new(Model {
                upstream_model: section.upstream_model.unwrap_or_else(|| name.clone()),
                name,
                provider: provider.clone(),
                pricing,
                tags: section.tags,
                max_output_tokens: output_limit.unwrap_or(super::config::DEFAULT_MAX_OUTPUT_TOKENS),
                output_limit,
                image_pricing,
                translate: section.translate,
                cel: cel::json_to_cel(&view),
                calls: Default::default(),
            }),
        );
    }

    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    // Credentials (files and variables, re-read on every load) are part of the set: a rotated
    // or newly created key file makes a new snapshot.
    for provider in providers.values() {
        hasher.update(provider.name.as_bytes());
        hasher.update(super::credential::fingerprint(&provider.credential));
    }

    // Access rules, reusing unchanged compiled programs.
    let mut access_rules = Vec::new();
    for file in read_folder(dir, "access", "cel", &mut errors) {
        hasher.update(file.path.to_string_lossy().as_bytes());
        hasher.update(file.hash.as_bytes());
        let reused = previous.and_then(|p| {
            p.access_rules
                .iter()
                .find(|r| r.name == file.name && r.source_hash == file.hash)
                .cloned()
        });
        match reused {
            Some(rule) => access_rules.push(rule),
            None => match cel::compile_rule(&file.name, &file.path, &file.text, file.hash) {
                Ok(rule) => access_rules.push(Arc::new(rule)),
                Err(e) => errors.push(e),
            },
        }
    }
    let access_uses = access_rules
        .iter()
        .fold(cel::Uses::default(), |u, r| u.or(r.uses));
    let access_memo = super::access_memo::AccessMemo::new(
        access_rules
            .iter()
            .filter(|r| r.uses.applies_to_models())
            .fold(cel::Uses::default(), |u, r| u.or(r.uses)),
    );

    // Routing scripts.
    let mut routing = BTreeMap::new();
    for file in read_folder(dir, "routing", "rhai", &mut errors) {
        hasher.update(file.path.to_string_lossy().as_bytes());
        hasher.update(file.hash.as_bytes());
        let reused = previous.and_then(|p| {
            p.routing
                .get(&file.name)
                .filter(|s| s.source_hash == file.hash)
                .cloned()
        });
        match reused {
            Some(script) => {
                routing.insert(file.name, script);
            }
            None => match rhai::compile_script(&file.name, &file.path, &file.text, file.hash) {
                Ok(script) => {
                    routing.insert(file.name, Arc::new(script));
                }
                Err(e) => errors.push(e),
            },
        }
    }

    // Guardrail plugins, reusing unchanged compiled components and warm instances.
    let (confinement, problems) =
        crate::plugins::Confinement::new(dir, &file.plugins.allowed_dirs, secret_env);
    for problem in problems {
        errors.push(map.error(None, "plugins.allowed_dirs", problem));
    }
    let loaded = crate::plugins::load_dir_with(
        dir,
        previous.map_or(&[][..], |p| p.plugins.as_slice()),
        previous.map_or(&[][..], |p| p.adapters.as_slice()),
        &confinement,
    );
    for (path, hash) in &loaded.hashes {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(hash.as_bytes());
    }
    errors.extend(loaded.errors);
    let plugins = loaded.plugins;
    let adapters = loaded.adapters;
    // Providers with family = "adapter" find their plugin.
    for (name, provider) in &providers {
        if let Some(binding) = &provider.adapter
            && let Err(message) = binding.bind(&adapters)
        {
            errors.push(map.error(None, &format!("providers.{name}.adapter"), message));
        }
    }

    // Model groups.
    let mut groups = BTreeMap::new();
    for (name, section) in file.groups {
        let key = format!("groups.{name}");
        if models.contains_key(&name) {
            errors.push(map.error(None, &key, format!("'{name}' is already a model name")));
            continue;
        }
        let script = match &section.routing {
            None => None,
            Some(script) => match routing.get(script.get_ref()) {
                Some(s) => Some(Arc::clone(s)),
                None => {
                    errors.push(map.error(
                        Some(script.span()),
                        &format!("{key}.routing"),
                        format!("no routing script 'routing/{}.rhai'", script.get_ref()),
                    ));
                    continue;
                }
            },
        };
        if section.deployments.is_empty() {
            errors.push(map.error(
                None,
                &format!("{key}.deployments"),
                "a group needs at least one deployment".into(),
            ));
            continue;
        }
        let mut deployments = Vec::new();
        for d in section.deployments {
            let Some(model) = models.get(d.model.get_ref()) else {
                errors.push(map.error(
                    Some(d.model.span()),
                    &format!("{key}.deployments.model"),
                    format!("model '{}' is not defined", d.model.get_ref()),
                ));
                continue;
            };
            if deployments
                .iter()
                .any(|x: &Deployment| x.model.name == model.name)
            {
                errors.push(map.error(
                    Some(d.model.span()),
                    &format!("{key}.deployments.model"),
                    format!("model '{}' is listed twice", model.name),
                ));
                continue;
            }
            if d.weight < 0 {
                errors.push(map.error(
                    Some(d.model.span()),
                    &format!("{key}.deployments.weight"),
                    "must be >= 0".into(),
                ));
            }
            deployments.push(Deployment {
                model: model.clone(),
                weight: d.weight,
                priority: d.priority,
                region: d.region,
                tags: d.tags,
            });
        }
        deployments.sort_by_key(|d| d.priority);
        let worst = deployments
            .iter()
            .map(|d| d.model.pricing)
            .max_by_key(|p| (p.output_nanos_per_mtok, p.input_nanos_per_mtok))
            .unwrap_or_default();
        let view = serde_json::json!({
            "name": name, "provider": "", "family": "", "group": true,
            "tags": section.tags, "pricing": pricing_json(&worst),
            "deployments": deployments.iter().map(|d| d.model.name.clone()).collect::<Vec<_>>(),
        });
        groups.insert(
            name.clone(),
            Arc::new(ModelGroup {
                name,
                script,
                deployments,
                tags: section.tags,
                translate: section.translate,
                cel: cel::json_to_cel(&view),
            }),
        );
    }

    let (budgets, quotas, limits_by_scope) =
        spend_specs(&map, file.budgets, file.quotas, file.limits, &mut errors);
    let webhook_url = match file.notifications.webhook_url {
        None => None,
        Some(url) => match reqwest::Url::parse(url.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(url.into_inner()),
            _ => {
                errors.push(map.error(
                    Some(url.span()),
                    "notifications.webhook_url",
                    "must be an http(s) URL".into(),
                ));
                None
            }
        },
    };

    let mcp_servers =
        super::mcp::load_servers(dir, &map, file.mcp_servers, &mut errors, &mut hasher);
    let mcp_virtual = super::mcp::load_virtual(&map, file.mcp_virtual, &mcp_servers, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        generation,
        loaded_at_ms: crate::clock::now_ms(),
        content_hash: hex::encode(hasher.finalize()),
        dir: dir.to_path_buf(),
        limits,
        providers,
        models,
        groups,
        access_rules,
        access_uses,
        access_memo,
        routing,
        plugins,
        adapters,
        budgets,
        quotas,
        limits_by_scope,
        webhook_url,
        retry,
        mcp_servers,
        mcp_virtual,
    })
}

type SpendSpecs = (Vec<Arc<BudgetSpec>>, Vec<QuotaSpec>, Vec<LimitSpec>);

/// Validates `[[budgets]]`, `[[quotas]]` and `[[limits]]`.
fn spend_specs(
    map: &SourceMap<'_>,
    budget_sections: Vec<BudgetSection>,
    quota_sections: Vec<QuotaSection>,
    limit_sections: Vec<LimitSection>,
    errors: &mut Vec<LoadError>,
) -> SpendSpecs {
    let tz = |errors: &mut Vec<LoadError>,
              key: &str,
              value: &toml::Spanned<String>|
     -> Option<chrono_tz::Tz> {
        match value.get_ref().parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                errors.push(map.error(
                    Some(value.span()),
                    key,
                    format!("'{}' is not an IANA time zone", value.get_ref()),
                ));
                None
            }
        }
    };
    let mut budgets = Vec::new();
    for (i, b) in budget_sections.into_iter().enumerate() {
        let key = format!("budgets[{i}]");
        let scope = match Scope::parse(b.scope.get_ref()) {
            Some(s) if s != Scope::Model => s,
            _ => {
                errors.push(map.error(
                    Some(b.scope.span()),
                    &format!("{key}.scope"),
                    "must be organization, team, user or key".into(),
                ));
                continue;
            }
        };
        if (scope == Scope::Organization) != b.subject.is_empty() {
            errors.push(map.error(
                Some(b.scope.span()),
                &format!("{key}.subject"),
                "an organization budget has no subject; every other scope needs one".into(),
            ));
            continue;
        }
        let Some(window) = Window::parse_budget(b.window.get_ref()) else {
            errors.push(map.error(
                Some(b.window.span()),
                &format!("{key}.window"),
                "must be daily, weekly, monthly or lifetime".into(),
            ));
            continue;
        };
        let Some(limit_nanos) = Pricing::nanos_per_mtok(*b.limit_usd.get_ref()) else {
            errors.push(map.error(
                Some(b.limit_usd.span()),
                &format!("{key}.limit_usd"),
                "must be a non-negative amount".into(),
            ));
            continue;
        };
        let Some(tz) = tz(errors, &format!("{key}.timezone"), &b.timezone) else {
            continue;
        };
        let id = format!(
            "policy-{}-{}-{}",
            scope.as_str(),
            b.subject,
            window.budget_name()
        );
        if budgets.iter().any(|x: &Arc<BudgetSpec>| x.id == id) {
            errors.push(map.error(
                Some(b.scope.span()),
                &key,
                format!(
                    "a {} {} budget for '{}' is declared twice",
                    window.budget_name(),
                    scope.as_str(),
                    b.subject
                ),
            ));
            continue;
        }
        budgets.push(Arc::new(BudgetSpec {
            id,
            scope,
            subject: b.subject,
            window,
            tz,
            limit_nanos,
            thresholds: b.thresholds,
            source: Source::Policy,
        }));
    }
    let mut quotas = Vec::new();
    for (i, q) in quota_sections.into_iter().enumerate() {
        let key = format!("quotas[{i}]");
        let Some(scope) = Scope::parse(q.scope.get_ref()) else {
            errors.push(map.error(
                Some(q.scope.span()),
                &format!("{key}.scope"),
                "must be organization, team, user, key or model".into(),
            ));
            continue;
        };
        let Some(metric) = Metric::parse(q.metric.get_ref()) else {
            errors.push(map.error(
                Some(q.metric.span()),
                &format!("{key}.metric"),
                "must be requests, input_tokens, output_tokens, total_tokens, cost_usd or concurrency".into(),
            ));
            continue;
        };
        let window = match (&q.window, metric) {
            (None, Metric::Concurrency) => None,
            (Some(w), Metric::Concurrency) => {
                errors.push(map.error(
                    Some(w.span()),
                    &format!("{key}.window"),
                    "a concurrency quota has no window".into(),
                ));
                continue;
            }
            (None, _) => {
                errors.push(map.error(
                    Some(q.metric.span()),
                    &format!("{key}.window"),
                    "needs a window: second, minute, hour, day or month".into(),
                ));
                continue;
            }
            (Some(w), _) => match Window::parse_quota(w.get_ref()) {
                Some(w) => Some(w),
                None => {
                    errors.push(map.error(
                        Some(w.span()),
                        &format!("{key}.window"),
                        "must be second, minute, hour, day or month".into(),
                    ));
                    continue;
                }
            },
        };
        let raw = *q.limit.get_ref();
        let limit = if metric == Metric::Cost {
            Pricing::nanos_per_mtok(raw)
        } else {
            (raw.is_finite() && raw >= 0.0 && raw.fract() == 0.0).then_some(raw as i64)
        };
        let Some(limit) = limit else {
            errors.push(map.error(
                Some(q.limit.span()),
                &format!("{key}.limit"),
                "must be a non-negative whole number (USD for cost_usd)".into(),
            ));
            continue;
        };
        let Some(tz) = tz(errors, &format!("{key}.timezone"), &q.timezone) else {
            continue;
        };
        // The counter's name: the one given, or one made of what the quota counts (never its
        // position, so reordering quotas on a reload keeps every counter where it was).
        let name = match &q.name {
            Some(name) => {
                let text = name.get_ref();
                if text.is_empty()
                    || !text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    errors.push(map.error(
                        Some(name.span()),
                        &format!("{key}.name"),
                        "must be letters, digits, '-' or '_'".into(),
                    ));
                    continue;
                }
                text.clone()
            }
            None => format!(
                "{}-{}-{}-{}",
                scope.as_str(),
                q.subject.as_deref().unwrap_or("each"),
                metric.as_str(),
                window.map_or("inflight", |w| w.quota_name())
            ),
        };
        if quotas.iter().any(|x: &QuotaSpec| x.name == name) {
            errors.push(map.error(
                q.name.as_ref().map(|n| n.span()).or(Some(q.metric.span())),
                &format!("{key}.name"),
                format!("a second quota is named '{name}': give one of them another `name`"),
            ));
            continue;
        }
        quotas.push(QuotaSpec {
            name,
            scope,
            subject: q.subject,
            metric,
            limit,
            window,
            tz,
        });
    }
    let mut limits = Vec::new();
    for (i, l) in limit_sections.into_iter().enumerate() {
        let key = format!("limits[{i}]");
        let scope = match Scope::parse(l.scope.get_ref()) {
            Some(s @ (Scope::Organization | Scope::Team | Scope::Key)) => s,
            _ => {
                errors.push(map.error(
                    Some(l.scope.span()),
                    &format!("{key}.scope"),
                    "must be organization, team or key".into(),
                ));
                continue;
            }
        };
        let mut nets = |list: &[toml::Spanned<String>], field: &str| -> Vec<ipnet::IpNet> {
            list.iter()
                .filter_map(|n| match crate::spend::parse_net(n.get_ref()) {
                    Some(net) => Some(net),
                    None => {
                        errors.push(map.error(
                            Some(n.span()),
                            &format!("{key}.{field}"),
                            format!("'{}' is not an address or CIDR", n.get_ref()),
                        ));
                        None
                    }
                })
                .collect()
        };
        let ip_allow = nets(&l.ip_allow, "ip_allow");
        let ip_deny = nets(&l.ip_deny, "ip_deny");
        limits.push(LimitSpec {
            scope,
            subject: l.subject,
            ip_allow,
            ip_deny,
            max_request_bytes: l.max_request_bytes,
        });
    }
    (budgets, quotas, limits)
}

/// `api_version`: Azure's `api-version` (required) or Anthropic's `anthropic-version`.
fn api_version(
    map: &SourceMap<'_>,
    key: &str,
    section: &super::config::ProviderSection,
    errors: &mut Vec<LoadError>,
) -> Option<String> {
    match (&section.api_version, section.family) {
        (Some(v), ProviderFamily::Azure | ProviderFamily::Anthropic) => Some(v.get_ref().clone()),
        (None, ProviderFamily::Azure) => {
            errors.push(map.error(
                None,
                key,
                "an 'azure' provider needs api_version (e.g. \"2024-10-21\")".into(),
            ));
            None
        }
        (Some(v), family) => {
            errors.push(map.error(
                Some(v.span()),
                &format!("{key}.api_version"),
                format!("a '{}' provider takes no api_version", family.as_str()),
            ));
            None
        }
        (None, _) => None,
    }
}

/// `adapter`: required with `family = "adapter"` (bound to its plugin once plugins load),
/// refused otherwise.
fn adapter_name(
    map: &SourceMap<'_>,
    key: &str,
    section: &super::config::ProviderSection,
    errors: &mut Vec<LoadError>,
) -> Option<crate::plugins::adapter::Binding> {
    match (&section.adapter, section.family) {
        (Some(name), ProviderFamily::Adapter) => {
            Some(crate::plugins::adapter::Binding::new(name.get_ref()))
        }
        (None, ProviderFamily::Adapter) => {
            errors.push(map.error(
                None,
                key,
                "an 'adapter' provider needs adapter = \"<plugin name>\" (a plugins/*.toml with world = \"provider-adapter\")".into(),
            ));
            None
        }
        (Some(name), family) => {
            errors.push(map.error(
                Some(name.span()),
                &format!("{key}.adapter"),
                format!("a '{}' provider takes no adapter", family.as_str()),
            ));
            None
        }
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Snapshot, Vec<LoadError>> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(GATEWAY_FILE), text).expect("write");
        load_dir(dir.path(), 1, None)
    }

    #[test]
    fn unknown_key_is_an_error_naming_line_and_key() {
        let errors =
            load_text("[providers.p]\nfamily = \"demo\"\ntimeout = 5\n").expect_err("must fail");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(3));
        assert!(
            errors[0].message.contains("unknown field `timeout`"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn model_with_missing_provider_names_the_provider_line() {
        let text = "[providers.p]\nfamily = \"demo\"\n\n[models.m]\nprovider = \"nope\"\n";
        let errors = load_text(text).expect_err("must fail");
        assert_eq!(errors[0].line, Some(5));
        assert_eq!(errors[0].key.as_deref(), Some("models.m.provider"));
        assert!(
            errors[0]
                .to_string()
                .contains("gateway.toml:5:12: models.m.provider: provider 'nope'")
        );
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let text = "[providers.p]\nfamily = \"openai\"\n\n[models.a]\nprovider = \"x\"\n[models.b]\nprovider = \"y\"\n";
        let errors = load_text(text).expect_err("must fail");
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn pricing_is_converted_to_nanos_per_million() {
        let text = "[providers.p]\nfamily = \"demo\"\n[models.m]\nprovider = \"p\"\npricing = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n";
        let snapshot = load_text(text).expect("loads");
        let pricing = &snapshot.models["m"].pricing;
        assert_eq!(pricing.input_nanos_per_mtok, 150_000_000);
        assert_eq!(pricing.output_nanos_per_mtok, 600_000_000);
        assert_eq!(pricing.cached_input_nanos_per_mtok, 150_000_000);
        assert_eq!(snapshot.models["m"].upstream_model, "m");
    }

    #[test]
    fn reordering_quotas_keeps_each_quota_on_its_counter() {
        let a =
            "[[quotas]]\nscope = \"key\"\nmetric = \"requests\"\nlimit = 3\nwindow = \"minute\"\n";
        let b = "[[quotas]]\nscope = \"organization\"\nmetric = \"total_tokens\"\nlimit = 9\nwindow = \"day\"\n";
        let one = load_text(&format!("{a}{b}")).expect("loads");
        let two = load_text(&format!("{b}{a}")).expect("loads");
        let names = |s: &Snapshot| {
            let mut n: Vec<(String, String)> = s
                .quotas
                .iter()
                .map(|q| (q.limit_name(), q.name.clone()))
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&one), names(&two));
        // A named quota keeps its name whatever else changes.
        let named = load_text("[[quotas]]\nname = \"calls\"\nscope = \"key\"\nmetric = \"requests\"\nlimit = 5\nwindow = \"minute\"\n").expect("loads");
        assert_eq!(named.quotas[0].name, "calls");
    }

    #[test]
    fn unset_credential_variable_loads_but_marks_the_provider() {
        let text = "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1/\"\ncredential = { env = \"TOLLGATE_TEST_SURELY_UNSET_VAR\" }\n";
        let snapshot = load_text(text).expect("loads");
        let provider = &snapshot.providers["p"];
        assert!(matches!(provider.credential, Credential::Missing(_)));
        assert_eq!(provider.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
    }

    fn joined(errors: Vec<LoadError>) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn adapter_providers_name_a_loaded_adapter_and_other_families_take_none() {
        let text = "[providers.o]\nfamily = \"adapter\"\nbase_url = \"http://127.0.0.1:9\"\nadapter = \"nope\"\n";
        let err = joined(load_text(text).expect_err("unknown adapter"));
        assert!(
            err.contains("providers.o.adapter")
                && err.contains("no provider-adapter plugin named 'nope'"),
            "{err}"
        );
        let text = "[providers.o]\nfamily = \"adapter\"\nbase_url = \"http://127.0.0.1:9\"\n";
        let err = joined(load_text(text).expect_err("adapter missing"));
        assert!(err.contains("needs adapter"), "{err}");
        let text = "[providers.o]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nadapter = \"x\"\n";
        let err = joined(load_text(text).expect_err("adapter on openai"));
        assert!(err.contains("takes no adapter"), "{err}");
    }
}
