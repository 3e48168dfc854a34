//! `tollgate test DIR`: table-driven policy test cases from `DIR/tests/*.toml`.
//!
//! Each case gives a key, a request and the expected outcome; the case runs through the same
//! decision code as live traffic (model resolution, Model Access, provider state, every access
//! rule, then routing) without calling any provider. See `docs/policy-guide.md` for the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::facts::RequestFacts;
use super::{LoadError, Snapshot, load_dir, rhai};
use crate::error::{AccessError, GatewayError};
use crate::health::HealthRegistry;
use crate::pipeline::authorize::decide_access;
use crate::pipeline::route;
use crate::store::{KeyRecord, ModelGrant};

/// One `tests/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// Decision time, RFC 3339 (default: now).
    now: Option<String>,
    #[serde(default)]
    key: KeySpec,
    request: RequestSpec,
    expect: Expect,
    /// The `budget` variable access rules see (remaining budget and quota state).
    budget: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    #[serde(default = "default_key_id")]
    id: String,
    #[serde(default = "default_key_name")]
    name: String,
    team: Option<String>,
    owner: Option<String>,
    #[serde(default = "all_models")]
    models: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

impl Default for KeySpec {
    fn default() -> Self {
        Self {
            id: default_key_id(),
            name: default_key_name(),
            team: None,
            owner: None,
            models: all_models(),
            metadata: Map::new(),
        }
    }
}

fn default_key_id() -> String {
    "key_test".into()
}

fn default_key_name() -> String {
    "test".into()
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    model: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    #[serde(default)]
    tools: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    client_ip: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    /// Body size in bytes, for `request.estimated_input_tokens` (bytes / 4).
    #[serde(default = "default_body_bytes")]
    body_bytes: usize,
}

fn default_path() -> String {
    "/v1/chat/completions".into()
}

fn default_body_bytes() -> usize {
    400
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow` or `deny`.
    decision: String,
    /// The denying error code, e.g. `policy_denied`, `model_not_allowed`.
    code: Option<String>,
    /// The denying rule.
    rule: Option<String>,
    /// The HTTP status of the denial.
    status: Option<u16>,
    /// The deployment order for an allowed request.
    route: Option<Vec<String>>,
    /// Shadow rules that would have denied.
    #[serde(default)]
    would_deny: Vec<String>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// `file::case name`.
    pub name: String,
    /// `None` when it passed, the mismatch otherwise.
    pub failure: Option<String>,
}

fn key_record(spec: &KeySpec) -> KeyRecord {
    KeyRecord {
        id: spec.id.clone(),
        name: spec.name.clone(),
        team: spec.team.clone(),
        owner: spec.owner.clone(),
        metadata: spec.metadata.clone(),
        secret_prefix: "tg_test".into(),
        models: if spec.models.iter().any(|m| m == "*") {
            ModelGrant::All
        } else {
            ModelGrant::Only(spec.models.clone())
        },
        mcp: ModelGrant::Only(Vec::new()),
        created_at_ms: 0,
        updated_at_ms: 0,
        expires_at_ms: None,
        revoked_at_ms: None,
        rotations: 0,
    }
}

fn run_case(snapshot: &Snapshot, case: &Case) -> Result<(), String> {
    let now: DateTime<Utc> = match &case.now {
        None => Utc::now(),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("'now' is not RFC 3339: {e}"))?
            .with_timezone(&Utc),
    };
    let client_ip = match &case.request.client_ip {
        None => None,
        Some(ip) => Some(ip.parse().map_err(|e| format!("client_ip '{ip}': {e}"))?),
    };
    let r = &case.request;
    let facts = RequestFacts {
        endpoint: "openai".into(),
        path: r.path.clone(),
        model: r.model.clone(),
        stream: r.stream,
        max_tokens: r.max_tokens,
        estimated_input_tokens: i64::try_from(r.body_bytes / 4).unwrap_or(i64::MAX),
        temperature: r.temperature,
        has_tools: r.tools,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        client_ip,
        metadata: r.metadata.clone(),
        now,
    };
    let key = std::sync::Arc::new(key_record(&case.key));
    // Weighted strategies are reproducible per case.
    rhai::seed_thread_rng(case.name.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    }));

    let (result, decisions, order) = match snapshot.target(&r.model) {
        None => (
            Err(GatewayError::from(AccessError::ModelNotFound(
                r.model.clone(),
            ))),
            Vec::new(),
            None,
        ),
        Some(target) => {
            // Without a `budget` in the case: no budget or quota applies.
            let spend = case.budget.clone().unwrap_or_else(|| {
                serde_json::json!({"remaining_usd": null, "percent_used": 0.0, "budgets": [], "quotas": []})
            });
            let verdict = decide_access(snapshot, &key, &target, &facts, Some(&spend));
            match verdict.result {
                Err(e) => (Err(e), verdict.decisions, None),
                Ok(()) => match route::plan(&target, &facts, &key, &HealthRegistry::default()) {
                    Ok(route) => (
                        Ok(()),
                        verdict.decisions,
                        Some(
                            route
                                .candidates
                                .iter()
                                .map(|m| m.name.clone())
                                .collect::<Vec<_>>(),
                        ),
                    ),
                    Err(e) => (Err(e), verdict.decisions, None),
                },
            }
        }
    };
    let would_deny: Vec<String> = decisions
        .iter()
        .map(crate::pipeline::decision::Decision::to_value)
        .filter(|d| d["outcome"] == "would_deny")
        .filter_map(|d| d["rule"].as_str().map(str::to_string))
        .collect();
    let e = &case.expect;
    let got = match &result {
        Ok(()) => "allow".to_string(),
        Err(err) => format!(
            "deny ({}{}, {})",
            err.code(),
            rule_of(err)
                .map(|r| format!(" by '{r}'"))
                .unwrap_or_default(),
            err.status().as_u16()
        ),
    };
    match (e.decision.as_str(), &result) {
        ("allow", Ok(())) => {
            if let (Some(expected), Some(order)) = (&e.route, &order)
                && expected != order
            {
                return Err(format!("expected route {expected:?}, got {order:?}"));
            }
        }
        ("deny", Err(err)) => {
            if let Some(code) = &e.code
                && code != err.code()
            {
                return Err(format!("expected deny with code '{code}', got {got}"));
            }
            if let Some(rule) = &e.rule
                && rule_of(err) != Some(rule.as_str())
            {
                return Err(format!("expected deny by rule '{rule}', got {got}"));
            }
            if let Some(status) = e.status
                && status != err.status().as_u16()
            {
                return Err(format!("expected status {status}, got {got}"));
            }
            if e.route.is_some() {
                return Err("'route' only applies to allowed requests".into());
            }
        }
        ("allow" | "deny", _) => return Err(format!("expected {}, got {got}", e.decision)),
        (other, _) => {
            return Err(format!(
                "expect.decision must be 'allow' or 'deny', not '{other}'"
            ));
        }
    }
    let mut expected_shadow = e.would_deny.clone();
    expected_shadow.sort();
    let mut got_shadow = would_deny;
    got_shadow.sort();
    if !e.would_deny.is_empty() && expected_shadow != got_shadow {
        return Err(format!(
            "expected shadow rules {expected_shadow:?} to would-deny, got {got_shadow:?}"
        ));
    }
    Ok(())
}

fn rule_of(error: &GatewayError) -> Option<&str> {
    match error {
        GatewayError::Access(AccessError::PolicyDenied { rule, .. }) => Some(rule),
        _ => None,
    }
}

/// Parses every test file; errors carry file and line.
fn read_tests(dir: &Path) -> Result<Vec<(PathBuf, TestFile)>, Vec<LoadError>> {
    let folder = dir.join("tests");
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&folder) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(vec![LoadError {
                file: folder,
                line: None,
                column: None,
                key: None,
                message: format!("cannot read folder: {e}"),
            }]);
        }
    };
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(LoadError {
                    file: path,
                    line: None,
                    column: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match toml::from_str::<TestFile>(&text) {
            Ok(file) => files.push((path, file)),
            Err(e) => {
                let (line, column) = e.span().map_or((None, None), |span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before
                        .rfind('\n')
                        .map_or(before.len(), |nl| before.len() - nl - 1)
                        + 1;
                    (Some(line), Some(column))
                });
                errors.push(LoadError {
                    file: path,
                    line,
                    column,
                    key: None,
                    message: e.message().trim().to_string(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Runs every case of `dir`; returns the results, or the load errors.
pub fn run_cases(dir: &Path) -> Result<Vec<CaseResult>, Vec<LoadError>> {
    let snapshot = load_dir(dir, 1, None)?;
    let files = read_tests(dir)?;
    let mut results = Vec::new();
    for (path, file) in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("tests")
            .to_string();
        for case in &file.cases {
            results.push(CaseResult {
                name: format!("{stem}::{}", case.name),
                failure: run_case(&snapshot, case).err(),
            });
        }
    }
    Ok(results)
}

/// `tollgate test DIR`: one line per case and a summary; non-zero exit on any failure.
pub fn run_dir(dir: &Path) -> ExitCode {
    match run_cases(dir) {
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            println!(
                "{} error(s) loading the policy directory or its tests",
                errors.len()
            );
            ExitCode::FAILURE
        }
        Ok(results) => {
            let mut failed = 0;
            for r in &results {
                match &r.failure {
                    None => println!("PASS {}", r.name),
                    Some(why) => {
                        failed += 1;
                        println!("FAIL {}: {why}", r.name);
                    }
                }
            }
            println!(
                "policy tests: {} passed, {failed} failed",
                results.len() - failed
            );
            if results.is_empty() {
                println!("no test cases found in {}", dir.join("tests").display());
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
