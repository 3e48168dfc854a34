//! CEL access rules (`access/*.cel`): compiled at load, evaluated per request without parsing.
//!
//! A rule evaluates to `true` (allow), `false` (deny with `policy_denied`), or a map
//! `{"allow": bool, "reason": string, "status": int}`. Leading `//` lines document the rule;
//! the directive `// @mode shadow` makes it a shadow rule (evaluated and recorded, never
//! enforced). The variables (`key`, `request`, `model`, `now`) and the custom functions are
//! documented in `docs/policy-guide.md`; a rule may use nothing else, which is checked at load
//! because CEL itself has no type checker.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::traits::{
    Adder, Comparer, Container, Divider, Indexer, Iterable, Modder, Multiplier, Negator, Sizer,
    Subtractor, Zeroer,
};
use cel::common::types::Type;
use cel::common::value::{Builtin, BuiltinRef, Val};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, ExecutionError, Program, Value};
use chrono::{DateTime, FixedOffset, NaiveTime, Utc};

use super::LoadError;

/// Variables a rule may reference.
pub const VARIABLES: [&str; 6] = ["key", "request", "model", "now", "budget", "mcp"];
/// Functions tollgate adds to CEL's standard library.
pub const CUSTOM_FUNCTIONS: [&str; 3] = ["cidr_contains", "glob_match", "time_between"];

/// Whether a rule is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMode {
    /// A deny stops the request.
    Enforce,
    /// Evaluated and recorded; never stops a request.
    Shadow,
}

/// Which variables a rule reads, so a request binds only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// `key`.
    pub key: bool,
    /// `request`.
    pub request: bool,
    /// `model`.
    pub model: bool,
    /// `now`.
    pub now: bool,
    /// `budget` (read from the store per request, only when a rule uses it).
    pub budget: bool,
    /// `mcp` (MCP requests only: `server`, `method`, `tool`, `arguments`).
    pub mcp: bool,
    /// The fields of `request` the rules select (`request.max_tokens`), as a mask over
    /// [`REQUEST_FIELDS`]; every field when a rule uses `request` any other way.
    pub request_fields: u16,
}

impl Uses {
    /// The union.
    pub fn or(self, other: Uses) -> Uses {
        Uses {
            key: self.key || other.key,
            request: self.request || other.request,
            model: self.model || other.model,
            now: self.now || other.now,
            budget: self.budget || other.budget,
            mcp: self.mcp || other.mcp,
            request_fields: self.request_fields | other.request_fields,
        }
    }

    /// Whether a rule with these uses decides model calls: every rule that does not read `mcp`.
    pub fn applies_to_models(self) -> bool {
        !self.mcp
    }

    /// Whether a rule with these uses decides MCP requests: rules that read only `key`, `now`
    /// and `mcp` (`request`, `model` and `budget` describe model calls).
    pub fn applies_to_mcp(self) -> bool {
        !self.request && !self.model && !self.budget
    }
}

/// One compiled rule.
pub struct AccessRule {
    /// File stem.
    pub name: String,
    /// Source file.
    pub file: PathBuf,
    /// Enforce or shadow.
    pub mode: RuleMode,
    /// The leading comment lines.
    pub description: String,
    /// SHA-256 of the source, for reuse across reloads.
    pub source_hash: String,
    /// Variables read.
    pub uses: Uses,
    program: Program,
}

impl std::fmt::Debug for AccessRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessRule")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

/// What one rule decided.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleOutcome {
    /// Allowed.
    Allow,
    /// Denied, with an optional reason and a 4xx status (403 unless the rule says otherwise).
    Deny {
        /// The rule's reason.
        reason: Option<String>,
        /// HTTP status.
        status: u16,
    },
    /// Evaluation failed (treated as a deny for enforced rules: fail closed).
    Error(String),
}

/// The process-wide CEL environment: the standard library plus tollgate's functions.
struct Engine {
    env: Arc<Env>,
    root: Context<'static, 'static>,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let env = Arc::new(Env::stdlib());
        let mut root = Context::with_env(env.clone());
        // Names are unique and not in the standard library, so registration cannot conflict.
        let _ = root.add_function("cidr_contains", cidr_contains);
        let _ = root.add_function("glob_match", glob_match);
        let _ = root.add_function("time_between", time_between);
        Engine { env, root }
    })
}

/// `cidr_contains("10.0.0.0/8", request.client_ip)`: whether the address is in the network.
fn cidr_contains(cidr: Arc<String>, ip: Arc<String>) -> Result<bool, ExecutionError> {
    let net: ipnet::IpNet = cidr.parse().map_err(|e| {
        ExecutionError::function_error("cidr_contains", format!("'{cidr}' is not a CIDR: {e}"))
    })?;
    let addr: IpAddr = ip.parse().map_err(|e| {
        ExecutionError::function_error("cidr_contains", format!("'{ip}' is not an IP address: {e}"))
    })?;
    Ok(net.contains(&addr))
}

/// `glob_match("gpt-4*", model.name)`: `*` matches any run of characters, `?` exactly one.
fn glob_match(pattern: Arc<String>, text: Arc<String>) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// `time_between(now, "09:00", "17:30", "Europe/Paris")`: whether `now`, in the time zone, is in
/// the window `[start, end)`; a window whose end is before its start spans midnight.
fn time_between(
    now: DateTime<FixedOffset>,
    start: Arc<String>,
    end: Arc<String>,
    tz: Arc<String>,
) -> Result<bool, ExecutionError> {
    let parse = |s: &str| {
        NaiveTime::parse_from_str(s, "%H:%M").map_err(|e| {
            ExecutionError::function_error("time_between", format!("'{s}' is not HH:MM: {e}"))
        })
    };
    let (start, end) = (parse(&start)?, parse(&end)?);
    let zone: chrono_tz::Tz = tz.parse().map_err(|_| {
        ExecutionError::function_error("time_between", format!("'{tz}' is not an IANA time zone"))
    })?;
    let local = now.with_timezone(&zone).time();
    Ok(if start <= end {
        local >= start && local < end
    } else {
        local >= start || local < end
    })
}

/// Free identifiers (not bound by a comprehension) and called function names of an expression.
///
/// `request_fields` collects the fields of `request` selected by name (`request.headers`);
/// `request` used any other way (`request["headers"]`, passed whole to a function) takes them
/// all.
fn references(
    expr: &IdedExpr,
    bound: &mut Vec<String>,
    idents: &mut BTreeSet<String>,
    calls: &mut BTreeSet<String>,
    request_fields: &mut u16,
) {
    match &expr.expr {
        Expr::Ident(name) => {
            if !bound.iter().any(|b| b == name) {
                if name == "request" {
                    *request_fields = ALL_REQUEST_FIELDS;
                }
                idents.insert(name.clone());
            }
        }
        Expr::Select(select)
            if matches!(&select.operand.expr, Expr::Ident(name)
                if name == "request" && !bound.iter().any(|b| b == name)) =>
        {
            idents.insert("request".to_string());
            if let Some(i) = REQUEST_FIELDS.iter().position(|f| *f == select.field) {
                *request_fields |= 1 << i;
            }
        }
        Expr::Call(call) => {
            calls.insert(call.func_name.clone());
            if let Some(target) = &call.target {
                references(target, bound, idents, calls, request_fields);
            }
            for arg in &call.args {
                references(arg, bound, idents, calls, request_fields);
            }
        }
        Expr::Comprehension(comp) => {
            references(&comp.iter_range, bound, idents, calls, request_fields);
            let before = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(v) = &comp.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(comp.accu_var.clone());
            for e in [
                &comp.accu_init,
                &comp.loop_cond,
                &comp.loop_step,
                &comp.result,
            ] {
                references(e, bound, idents, calls, request_fields);
            }
            bound.truncate(before);
        }
        Expr::List(list) => {
            for e in &list.elements {
                references(e, bound, idents, calls, request_fields);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    references(&e.key, bound, idents, calls, request_fields);
                    references(&e.value, bound, idents, calls, request_fields);
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => {
                        references(&f.value, bound, idents, calls, request_fields)
                    }
                    EntryExpr::MapEntry(e) => {
                        references(&e.key, bound, idents, calls, request_fields);
                        references(&e.value, bound, idents, calls, request_fields);
                    }
                }
            }
        }
        Expr::Select(select) => references(&select.operand, bound, idents, calls, request_fields),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Whether `name` is a function CEL (or tollgate) knows: probed by calling it with no arguments
/// and looking for "undeclared reference".
fn is_known_function(name: &str) -> bool {
    if CUSTOM_FUNCTIONS.contains(&name) || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return true;
    }
    static KNOWN: OnceLock<std::sync::Mutex<std::collections::HashMap<String, bool>>> =
        OnceLock::new();
    let cache = KNOWN.get_or_init(Default::default);
    if let Ok(cache) = cache.lock()
        && let Some(known) = cache.get(name)
    {
        return *known;
    }
    let engine = engine();
    // Global functions answer `name()`, member functions `''.name()`; both fail with something
    // other than "undeclared reference" when the name exists.
    let known = [format!("{name}()"), format!("''.{name}()")].iter().any(|probe| {
        match engine.env.compile(probe) {
            Ok(program) => !matches!(program.execute(&engine.root), Err(ExecutionError::UndeclaredReference(r)) if r.as_str() == name),
            Err(_) => true,
        }
    });
    if let Ok(mut cache) = cache.lock() {
        cache.insert(name.to_string(), known);
    }
    known
}

/// Splits leading comment lines into description and directives.
fn header(source: &str) -> Result<(RuleMode, String), (usize, String)> {
    let mut mode = RuleMode::Enforce;
    let mut description = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        let Some(comment) = trimmed.strip_prefix("//") else {
            if trimmed.is_empty() {
                continue;
            }
            break;
        };
        let comment = comment.trim();
        if let Some(directive) = comment.strip_prefix('@') {
            let mut parts = directive.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("mode"), Some("shadow"), None) => mode = RuleMode::Shadow,
                (Some("mode"), Some("enforce"), None) => mode = RuleMode::Enforce,
                _ => {
                    return Err((
                        i + 1,
                        format!(
                            "unknown directive '@{directive}' (expected '@mode shadow' or '@mode enforce')"
                        ),
                    ));
                }
            }
        } else {
            description.push(comment.to_string());
        }
    }
    Ok((mode, description.join("\n").trim().to_string()))
}

fn load_error(
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        line,
        column,
        key: None,
        message,
    }
}

/// Compiles one rule file and checks it against the documented context.
pub fn compile_rule(
    name: &str,
    file: &Path,
    source: &str,
    source_hash: String,
) -> Result<AccessRule, LoadError> {
    // The CEL parser, the walks over its tree and its evaluation recurse once per operator of a
    // chain (`a || b || ...` is a tree as deep as it is long): a rule past the bound is refused
    // before parsing, and parsing runs on a thread of its own with a large stack, so no rule
    // can overflow a stack of the gateway (found by the `cel_rule` fuzz target).
    let operators = operator_count(source);
    if operators > MAX_RULE_OPERATORS {
        return Err(load_error(
            file,
            None,
            None,
            format!(
                "the rule is too complex: {operators} operators (at most {MAX_RULE_OPERATORS}); split it into several rules"
            ),
        ));
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || {
                compile_rule_on_stack(name, file, source, source_hash)
            })
            .map_err(|e| load_error(file, None, None, format!("cannot start the compiler: {e}")))?
            .join()
            .unwrap_or_else(|_| {
                Err(load_error(
                    file,
                    None,
                    None,
                    "the rule compiler failed".into(),
                ))
            })
    })
}

/// Operators (and member, index and call brackets) a rule may have at most: the depth of its
/// tree is bounded by it. An access rule of a few dozen conditions has about a hundred.
pub const MAX_RULE_OPERATORS: usize = 256;
/// The stack of the thread that compiles one rule (reserved, not committed, while it runs).
const COMPILE_STACK: usize = 256 * 1024 * 1024;

/// An upper bound of the operators of a CEL source: operator characters outside string
/// literals and comments (a two-character operator counts twice).
fn operator_count(source: &str) -> usize {
    let mut count = 0;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                // A string literal (escapes skipped; triple quotes are three empty-or-not
                // literals to this scan, which only ever over-counts).
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '&' | '|' | '?' | '.' | '['
            | '(' | '{' => count += 1,
            _ => {}
        }
    }
    count
}

fn compile_rule_on_stack(
    name: &str,
    file: &Path,
    source: &str,
    source_hash: String,
) -> Result<AccessRule, LoadError> {
    let (mode, description) =
        header(source).map_err(|(line, message)| load_error(file, Some(line), Some(1), message))?;
    if source
        .lines()
        .all(|l| l.trim().is_empty() || l.trim().starts_with("//"))
    {
        return Err(load_error(
            file,
            None,
            None,
            "the rule has no expression".into(),
        ));
    }
    let program = engine().env.compile(source).map_err(|errors| {
        let first = errors.errors.first();
        let (line, column) = first.map_or((None, None), |e| {
            (
                usize::try_from(e.pos.0).ok(),
                usize::try_from(e.pos.1).ok().map(|c| c + 1),
            )
        });
        let message = first.map_or_else(
            || errors.to_string(),
            |e| format!("syntax error: {}", e.msg),
        );
        load_error(file, line, column, message)
    })?;
    let (mut idents, mut calls, mut request_fields) = (BTreeSet::new(), BTreeSet::new(), 0);
    references(
        program.expression(),
        &mut Vec::new(),
        &mut idents,
        &mut calls,
        &mut request_fields,
    );
    for ident in &idents {
        if !VARIABLES.contains(&ident.as_str()) {
            return Err(load_error(
                file,
                None,
                None,
                format!(
                    "unknown variable '{ident}' (rules can use: {})",
                    VARIABLES.join(", ")
                ),
            ));
        }
    }
    for call in &calls {
        if !is_known_function(call) {
            return Err(load_error(
                file,
                None,
                None,
                format!("unknown function '{call}'"),
            ));
        }
    }
    let uses = Uses {
        key: idents.contains("key"),
        request: idents.contains("request"),
        model: idents.contains("model"),
        now: idents.contains("now"),
        budget: idents.contains("budget"),
        mcp: idents.contains("mcp"),
        request_fields,
    };
    let rule = AccessRule {
        name: name.to_string(),
        file: file.to_path_buf(),
        mode,
        description,
        source_hash,
        uses,
        program,
    };
    // Dry run on a complete sample context: type errors and bad results surface at load.
    let sample = Bindings::sample();
    if let RuleOutcome::Error(message) = rule.evaluate(&sample.context())
        && !message.starts_with("No such key")
    {
        return Err(load_error(
            file,
            None,
            None,
            format!("fails on a sample request: {message}"),
        ));
    }
    Ok(rule)
}

/// The per-request variable values, built once and shared by every rule.
#[derive(Default)]
pub struct Bindings {
    /// `key`, converted once per key record ([`key_to_cel`]); wins over `key`.
    pub shared_key: Option<SharedVal>,
    /// `model`, converted once per policy snapshot ([`target_to_cel`]); wins over `model`.
    pub shared_model: Option<SharedVal>,
    /// `key`.
    pub key: Option<Value>,
    /// `request`.
    pub request: Option<Value>,
    /// `model`.
    pub model: Option<Value>,
    /// `now`.
    pub now: Option<DateTime<Utc>>,
    /// `budget`.
    pub budget: Option<Value>,
    /// `mcp`.
    pub mcp: Option<Value>,
}

impl Bindings {
    /// A context over the process-wide functions with these variables.
    pub fn context(&self) -> Context<'static, 'static> {
        let root = &engine().root;
        let mut ctx = root.new_inner_scope();
        if let Some(v) = &self.shared_key {
            ctx.add_variable_as_val("key", Box::new(v.clone()));
        } else if let Some(v) = &self.key {
            ctx.add_variable_from_value("key", v.clone());
        }
        if let Some(v) = &self.request {
            ctx.add_variable_from_value("request", v.clone());
        }
        if let Some(v) = &self.shared_model {
            ctx.add_variable_as_val("model", Box::new(v.clone()));
        } else if let Some(v) = &self.model {
            ctx.add_variable_from_value("model", v.clone());
        }
        if let Some(now) = self.now {
            ctx.add_variable_from_value("now", Value::Timestamp(now.fixed_offset()));
        }
        if let Some(v) = &self.budget {
            ctx.add_variable_from_value("budget", v.clone());
        }
        if let Some(v) = &self.mcp {
            ctx.add_variable_from_value("mcp", v.clone());
        }
        ctx
    }

    /// A complete, realistic context for load-time dry runs.
    fn sample() -> Bindings {
        let key = serde_json::json!({
            "id": "key_sample", "name": "sample", "team": "platform", "owner": "owner@example.com",
            "models": ["*"], "metadata": {}, "created_at_ms": 0, "expires_at_ms": null
        });
        let request = serde_json::json!({
            "endpoint": "openai", "path": "/v1/chat/completions", "model": "sample-model", "stream": false,
            "max_tokens": 256, "estimated_input_tokens": 100, "temperature": 0.5, "tools": false,
            "headers": {"user-agent": "sample"}, "client_ip": "127.0.0.1", "metadata": {}
        });
        let model = serde_json::json!({
            "name": "sample-model", "provider": "sample", "family": "openai", "group": false, "tags": [],
            "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_input_per_mtok": 0.5}
        });
        let budget = serde_json::json!({
            "remaining_usd": 10.0, "percent_used": 50.0,
            "budgets": [{"id": "b", "scope": "team", "subject": "platform", "window": "monthly",
                         "limit_usd": 20.0, "spent_usd": 10.0, "reserved_usd": 0.0, "remaining_usd": 10.0, "percent_used": 50.0}],
            "quotas": [{"scope": "key", "subject": "key_sample", "limit": "requests_per_minute",
                        "limit_value": 60, "used": 1, "reserved": 0, "remaining": 59, "percent_used": 1.6}]
        });
        let mcp = serde_json::json!({
            "server": "sample-server", "method": "tools/call", "tool": "sample_tool",
            "arguments": {"query": "sample"}, "transport": "streamable_http"
        });
        Bindings {
            shared_key: None,
            shared_model: None,
            key: Some(json_to_cel(&key)),
            request: Some(json_to_cel(&request)),
            model: Some(json_to_cel(&model)),
            now: Some(Utc::now()),
            budget: Some(json_to_cel(&budget)),
            mcp: Some(json_to_cel(&mcp)),
        }
    }
}

/// Converts JSON to a CEL value (integers stay integers).
pub fn json_to_cel(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::UInt))
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(map) => {
            string_keyed(map.iter().map(|(k, v)| (k, json_to_cel(v))))
        }
    }
}

/// A CEL map with string keys.
fn string_keyed<'a>(entries: impl Iterator<Item = (&'a String, Value)>) -> Value {
    Value::Map(CelMap {
        map: Arc::new(
            entries
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), v))
                .collect(),
        ),
    })
}

/// The fields of the `request` variable, in the order [`request_fields_to_cel`] builds them;
/// bit `i` of a field mask ([`Uses::request_fields`]) stands for `REQUEST_FIELDS[i]`.
pub const REQUEST_FIELDS: [&str; 11] = [
    "endpoint",
    "path",
    "model",
    "stream",
    "max_tokens",
    "estimated_input_tokens",
    "temperature",
    "tools",
    "headers",
    "client_ip",
    "metadata",
];

/// A field mask with every field of `request`.
pub const ALL_REQUEST_FIELDS: u16 = (1 << REQUEST_FIELDS.len()) - 1;

/// The `request` variable straight from the facts: the same value as
/// `json_to_cel(&facts.to_json())`, without building the JSON first.
pub fn request_to_cel(facts: &crate::policy::facts::RequestFacts) -> Value {
    request_fields_to_cel(facts, ALL_REQUEST_FIELDS)
}

/// The `request` variable with only the fields of mask `fields` (the ones the rules select):
/// the rest, the headers above all, would be converted per request for nothing. A rule that
/// uses `request` other than by selecting fields gets them all ([`Uses::request_fields`]).
pub fn request_fields_to_cel(facts: &crate::policy::facts::RequestFacts, fields: u16) -> Value {
    let string = |s: &str| Value::String(Arc::new(s.to_string()));
    let field = |name: &str| -> Option<Value> {
        Some(match name {
            "endpoint" => string(&facts.endpoint),
            "path" => string(&facts.path),
            "model" => string(&facts.model),
            "stream" => Value::Bool(facts.stream),
            "max_tokens" => facts.max_tokens.map_or(Value::Null, Value::Int),
            "estimated_input_tokens" => Value::Int(facts.estimated_input_tokens),
            // JSON has no NaN or infinity: `to_json` makes them null.
            "temperature" => facts
                .temperature
                .filter(|t| t.is_finite())
                .map_or(Value::Null, Value::Float),
            "tools" => Value::Bool(facts.has_tools),
            "headers" => string_keyed(facts.headers.iter().map(|(k, v)| (k, string(v)))),
            "client_ip" => facts
                .client_ip
                .map_or(Value::Null, |ip| Value::String(Arc::new(ip.to_string()))),
            "metadata" => string_keyed(facts.metadata.iter().map(|(k, v)| (k, json_to_cel(v)))),
            _ => return None,
        })
    };
    Value::Map(CelMap {
        map: Arc::new(
            REQUEST_FIELDS
                .iter()
                .enumerate()
                .filter(|(i, _)| fields & (1 << i) != 0)
                .filter_map(|(_, name)| {
                    Some((Key::String(Arc::new((*name).to_string())), field(name)?))
                })
                .collect(),
        ),
    })
}

/// How many records' values each cache of [`key_to_cel`] and [`target_to_cel`] keeps.
const SHARED_KEPT: usize = 4096;

/// Values converted once per owning record, found by name and reused only while the owner is
/// the very record (`Arc`) they were built from: a changed key or a reloaded snapshot brings
/// new records, so nothing stale is ever served. The cache holds the owner, so its address
/// cannot be reused while an entry points at it.
struct SharedCache<T> {
    kept: OnceLock<std::sync::Mutex<Kept<T>>>,
}

/// Name -> the record a value was built from, and the value.
type Kept<T> = std::collections::HashMap<String, (Arc<T>, SharedVal)>;

impl<T> SharedCache<T> {
    const fn new() -> Self {
        Self {
            kept: OnceLock::new(),
        }
    }

    fn get_or_build(&self, name: &str, owner: &Arc<T>, build: impl FnOnce() -> Value) -> SharedVal {
        let kept = self.kept.get_or_init(Default::default);
        if let Ok(map) = kept.lock()
            && let Some((record, value)) = map.get(name)
            && Arc::ptr_eq(record, owner)
        {
            return value.clone();
        }
        let value = SharedVal::new(build());
        if let Ok(mut map) = kept.lock() {
            if map.len() >= SHARED_KEPT && !map.contains_key(name) {
                map.clear();
            }
            map.insert(name.to_string(), (owner.clone(), value.clone()));
        }
        value
    }
}

/// The `key` variable of `key`, converted once per key record: the key cache hands out the
/// same `Arc` until the key changes (a change, revocation or expiry reload makes a new record).
pub fn key_to_cel(key: &Arc<crate::store::KeyRecord>) -> SharedVal {
    static KEYS: SharedCache<crate::store::KeyRecord> = SharedCache::new();
    KEYS.get_or_build(&key.id, key, || {
        json_to_cel(&crate::policy::facts::key_json(key))
    })
}

/// The `model` variable of `target`, converted once per policy snapshot (a reload builds new
/// models and groups, so their values are converted again).
pub fn target_to_cel(target: &crate::policy::Target) -> SharedVal {
    static MODELS: SharedCache<crate::policy::Model> = SharedCache::new();
    static GROUPS: SharedCache<crate::policy::ModelGroup> = SharedCache::new();
    match target {
        crate::policy::Target::Model(model) => {
            MODELS.get_or_build(&model.name, model, || model.cel.clone())
        }
        crate::policy::Target::Group(group) => {
            GROUPS.get_or_build(&group.name, group, || group.cel.clone())
        }
    }
}

/// A CEL value converted once into the interpreter's representation and shared: binding it
/// costs a reference count, where binding a [`Value`] converts (copies) it whole per request.
#[derive(Debug, Clone)]
pub struct SharedVal(Arc<dyn Val>);

impl SharedVal {
    /// Converts `value` (every [`json_to_cel`] value converts; anything else becomes null).
    pub fn new(value: Value) -> Self {
        let boxed: Box<dyn Val> = match Box::<dyn Val>::try_from(value) {
            Ok(boxed) => boxed,
            Err(_) => Box::new(cel::common::types::CelNull),
        };
        Self(Arc::from(boxed))
    }
}

impl Val for SharedVal {
    fn get_type(&self) -> &Type {
        self.0.get_type()
    }

    fn cel_type() -> &'static Type
    where
        Self: Sized,
    {
        // Like `Struct`: the type is the shared value's, which varies per value.
        panic!("SharedVal has no static CEL type: its type is the shared value's")
    }

    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        self.0.as_adder()
    }

    fn as_comparer(&self) -> Option<&dyn Comparer> {
        self.0.as_comparer()
    }

    fn as_container(&self) -> Option<&dyn Container> {
        self.0.as_container()
    }

    fn as_divider<'b, 'v>(&'b self) -> Option<&'b (dyn Divider + 'v)>
    where
        Self: 'v,
    {
        self.0.as_divider()
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        self.0.as_indexer()
    }

    fn into_indexer<'v>(self: Box<Self>) -> Option<Box<dyn Indexer + 'v>>
    where
        Self: 'v,
    {
        self.0.clone_as_boxed().into_indexer()
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        self.0.as_iterable()
    }

    fn as_modder<'b, 'v>(&'b self) -> Option<&'b (dyn Modder + 'v)>
    where
        Self: 'v,
    {
        self.0.as_modder()
    }

    fn as_multiplier<'b, 'v>(&'b self) -> Option<&'b (dyn Multiplier + 'v)>
    where
        Self: 'v,
    {
        self.0.as_multiplier()
    }

    fn as_negator<'b, 'v>(&'b self) -> Option<&'b (dyn Negator + 'v)>
    where
        Self: 'v,
    {
        self.0.as_negator()
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        self.0.as_sizer()
    }

    fn as_subtractor<'b, 'v>(&'b self) -> Option<&'b (dyn Subtractor + 'v)>
    where
        Self: 'v,
    {
        self.0.as_subtractor()
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        self.0.as_zeroer()
    }

    fn equals(&self, other: &dyn Val) -> bool {
        self.0.equals(other)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.0.as_any()
    }

    fn as_builtin<'b, 'v>(&'b self) -> BuiltinRef<'b, 'v>
    where
        Self: 'v,
    {
        self.0.as_builtin()
    }

    fn into_builtin<'v>(self: Box<Self>) -> Option<Builtin<'v>>
    where
        Self: 'v,
    {
        self.0.clone_as_boxed().into_builtin()
    }
}

impl AccessRule {
    /// Evaluates the rule; never panics, errors are outcomes.
    pub fn evaluate(&self, ctx: &Context<'_, '_>) -> RuleOutcome {
        match self.program.execute(ctx) {
            Ok(Value::Bool(true)) => RuleOutcome::Allow,
            Ok(Value::Bool(false)) => RuleOutcome::Deny {
                reason: None,
                status: 403,
            },
            Ok(Value::Map(map)) => {
                let get = |k: &str| map.map.get(&Key::String(Arc::new(k.to_string())));
                let allow = match get("allow") {
                    Some(Value::Bool(b)) => *b,
                    _ => return RuleOutcome::Error("a map result needs a boolean 'allow'".into()),
                };
                if allow {
                    return RuleOutcome::Allow;
                }
                let reason = match get("reason") {
                    Some(Value::String(s)) => Some(s.to_string()),
                    None | Some(Value::Null) => None,
                    Some(_) => return RuleOutcome::Error("'reason' must be a string".into()),
                };
                let status = match get("status") {
                    None | Some(Value::Null) => 403,
                    Some(Value::Int(s)) if (400..500).contains(s) && *s != 401 && *s != 402 => {
                        *s as u16
                    }
                    Some(Value::UInt(s)) if (400..500).contains(s) && *s != 401 && *s != 402 => {
                        *s as u16
                    }
                    Some(_) => {
                        return RuleOutcome::Error(
                            "'status' must be a 4xx other than 401/402".into(),
                        );
                    }
                };
                RuleOutcome::Deny { reason, status }
            }
            Ok(other) => RuleOutcome::Error(format!(
                "a rule must return a bool or a map, not {:?}",
                other.type_of()
            )),
            Err(e) => RuleOutcome::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: &str) -> Result<AccessRule, LoadError> {
        compile_rule("r", Path::new("access/r.cel"), source, String::new())
    }

    fn eval(rule: &AccessRule, request: serde_json::Value) -> RuleOutcome {
        let bindings = Bindings {
            request: Some(json_to_cel(&request)),
            now: Some(Utc::now()),
            ..Bindings::default()
        };
        rule.evaluate(&bindings.context())
    }

    // Found by the `cel_rule` fuzz target: a long operator chain overflowed the stack while
    // compiling (the whole process aborted; a hot reload took the serving gateway down).
    #[test]
    fn a_rule_too_deep_for_a_stack_is_refused_with_a_load_error() {
        let chain = vec!["1"; 5_000].join(" + ");
        let source = format!("request.model == 'x' || {chain} > 0");
        let Err(error) = rule(&source) else {
            panic!("a 5,000-term chain compiled");
        };
        assert!(error.to_string().contains("too complex"), "{error}");
    }

    #[test]
    fn a_rule_at_the_operator_bound_compiles_and_evaluates_on_a_small_stack() {
        // 1 + 2 * 120 = 241 operators: a tree 121 levels deep.
        let source = format!("request.stream || {}", vec!["false"; 120].join(" || "));
        assert!(
            operator_count(&source) <= MAX_RULE_OPERATORS,
            "{}",
            operator_count(&source)
        );
        let r = rule(&source).expect("compiles");
        // Requests are evaluated on the runtime's workers (2 MiB stacks).
        let outcome = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || eval(&r, serde_json::json!({"stream": false})))
            .expect("thread")
            .join()
            .expect("evaluated");
        assert_eq!(
            outcome,
            RuleOutcome::Deny {
                reason: None,
                status: 403
            }
        );
    }

    #[test]
    fn operators_in_strings_and_comments_do_not_count() {
        assert_eq!(operator_count("// a + b\n'x+y' == \"a.b\\\"+\""), 2);
    }

    #[test]
    fn bool_and_map_results_decide() {
        let r = rule("request.stream").expect("compiles");
        assert_eq!(
            eval(&r, serde_json::json!({"stream": true})),
            RuleOutcome::Allow
        );
        assert_eq!(
            eval(&r, serde_json::json!({"stream": false})),
            RuleOutcome::Deny {
                reason: None,
                status: 403
            }
        );
        let r = rule(
            r#"request.stream ? true : {"allow": false, "reason": "streams only", "status": 400}"#,
        )
        .expect("compiles");
        assert_eq!(
            eval(&r, serde_json::json!({"stream": false})),
            RuleOutcome::Deny {
                reason: Some("streams only".into()),
                status: 400
            }
        );
    }

    #[test]
    fn header_comments_describe_and_mark_shadow_rules() {
        let r = rule("// Only streams.\n// @mode shadow\nrequest.stream").expect("compiles");
        assert_eq!(r.mode, RuleMode::Shadow);
        assert_eq!(r.description, "Only streams.");
        assert!(r.uses.request && !r.uses.key);
        let err = rule("// @frobnicate\ntrue").expect_err("bad directive");
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = rule("// comment\nrequest.model ==").expect_err("syntax error");
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.column.is_some());
    }

    #[test]
    fn unknown_variables_and_functions_are_load_errors() {
        assert!(
            rule("requst.model == 'x'")
                .expect_err("typo")
                .message
                .contains("unknown variable 'requst'")
        );
        assert!(
            rule("frobnicate(request.model)")
                .expect_err("fn")
                .message
                .contains("unknown function 'frobnicate'")
        );
        // Comprehension variables are not free variables.
        rule("['a', 'b'].exists(m, m == request.model)").expect("comprehension compiles");
        rule("request.model.startsWith('gpt') && size(key.models) > 0").expect("stdlib compiles");
    }

    #[test]
    fn type_errors_and_non_boolean_results_surface_at_load() {
        assert!(
            rule("request.model > 5")
                .expect_err("type error")
                .message
                .contains("sample request")
        );
        assert!(
            rule("request.max_tokens")
                .expect_err("int result")
                .message
                .contains("bool or a map")
        );
    }

    #[test]
    fn evaluation_errors_are_outcomes_not_panics() {
        let r = rule("request.headers['x-team'] == 'a'")
            .expect("compiles: missing keys are data-dependent");
        assert!(matches!(
            eval(&r, serde_json::json!({"headers": {}})),
            RuleOutcome::Error(_)
        ));
    }

    #[test]
    fn custom_functions_work() {
        let r = rule(
            "cidr_contains('10.0.0.0/8', request.client_ip) && glob_match('gpt-4*', request.model)",
        )
        .expect("compiles");
        assert_eq!(
            eval(
                &r,
                serde_json::json!({"client_ip": "10.1.2.3", "model": "gpt-4o"})
            ),
            RuleOutcome::Allow
        );
        assert!(matches!(
            eval(
                &r,
                serde_json::json!({"client_ip": "11.0.0.1", "model": "gpt-4o"})
            ),
            RuleOutcome::Deny { .. }
        ));
        let r = rule("time_between(now, '00:00', '23:59', 'UTC') || time_between(now, '23:59', '00:00', 'Europe/Paris')").expect("compiles");
        assert_eq!(eval(&r, serde_json::json!({})), RuleOutcome::Allow);
        assert!(glob(b"a*c?", b"abbbcd") && !glob(b"a*c", b"abd") && glob(b"*", b""));
    }

    fn sample_facts() -> crate::policy::facts::RequestFacts {
        let body = serde_json::json!({
            "model": "m", "stream": true, "max_tokens": 64, "temperature": 0.5,
            "tools": [{"type": "function"}], "metadata": {"tier": "gold", "n": 3, "x": [1, 2.5]},
        });
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-team", "platform".parse().expect("header"));
        headers.insert("authorization", "Bearer secret".parse().expect("header"));
        crate::policy::facts::RequestFacts::from_body(
            "openai",
            "/v1/chat/completions",
            "m",
            body.as_object().expect("object"),
            1234,
            Some(&headers),
            Some("127.0.0.1".parse().expect("ip")),
        )
    }

    fn mask(fields: &[&str]) -> u16 {
        fields.iter().fold(0, |m, f| {
            m | 1
                << REQUEST_FIELDS
                    .iter()
                    .position(|x| x == f)
                    .expect("a request field")
        })
    }

    #[test]
    fn rules_bind_only_the_request_fields_they_select() {
        let uses = |source: &str| rule(source).expect("compiles").uses;
        let selected = uses(r#"request.max_tokens == null || request.client_ip == "127.0.0.1""#);
        assert!(selected.request);
        assert_eq!(selected.request_fields, mask(&["max_tokens", "client_ip"]));
        assert_eq!(
            uses("has(request.headers) && request.headers['x-team'] == 'platform'").request_fields,
            mask(&["headers"])
        );
        // `request` read any other way binds every field.
        for whole in [
            "request['headers'].size() > 0",
            "size(request) > 3",
            "[request].all(r, r.stream)",
        ] {
            assert_eq!(uses(whole).request_fields, ALL_REQUEST_FIELDS, "{whole}");
        }
        // A comprehension variable named like a binding is not the binding.
        assert_eq!(uses("[1].all(request, request > 0)").request_fields, 0);
        assert_eq!(uses("key.team == 'a'").request_fields, 0);
        let both = uses("request.stream").or(uses("request.model == 'm'"));
        assert_eq!(both.request_fields, mask(&["stream", "model"]));
    }

    #[test]
    fn pruned_request_decides_as_the_whole_one() {
        let facts = sample_facts();
        for source in [
            "request.max_tokens <= 64 && request.stream",
            "request.headers['x-team'] == 'platform'",
            "has(request.metadata.tier) && request.metadata.n == 3",
            "request.temperature > 0.4 && request.tools",
            "request.max_tokens > 100",
            "request.nonexistent == 1",
            "request['model'] == 'm'",
            "request.estimated_input_tokens == 1234 && request.endpoint == 'openai'",
        ] {
            let rule = rule(source).expect("compiles");
            let outcome = |request: Value| {
                let bindings = Bindings {
                    request: Some(request),
                    ..Bindings::default()
                };
                rule.evaluate(&bindings.context())
            };
            assert_eq!(
                outcome(request_fields_to_cel(&facts, rule.uses.request_fields)),
                outcome(request_to_cel(&facts)),
                "{source}"
            );
        }
    }

    fn sample_key(team: &str) -> Arc<crate::store::KeyRecord> {
        Arc::new(crate::store::KeyRecord::for_tests("key_cel_cache", team))
    }

    #[test]
    fn request_built_from_facts_equals_the_json_route() {
        let facts = sample_facts();
        assert_eq!(request_to_cel(&facts), json_to_cel(&facts.to_json()));
        let mut bare = facts.clone();
        bare.max_tokens = None;
        bare.temperature = None;
        bare.client_ip = None;
        bare.headers.clear();
        bare.metadata.clear();
        assert_eq!(request_to_cel(&bare), json_to_cel(&bare.to_json()));
    }

    #[test]
    fn key_binding_is_rebuilt_when_the_key_record_changes() {
        let rule = rule("key.team == 'research' && key.id == 'key_cel_cache'").expect("compiles");
        let outcome = |key: &Arc<crate::store::KeyRecord>| {
            let bindings = Bindings {
                shared_key: Some(key_to_cel(key)),
                ..Bindings::default()
            };
            rule.evaluate(&bindings.context())
        };
        let first = sample_key("platform");
        assert_ne!(outcome(&first), RuleOutcome::Allow);
        // The same record again: the kept value, the same answer.
        assert_ne!(outcome(&first), RuleOutcome::Allow);
        // The key changed (the key cache hands out a new record): the new team is seen.
        let changed = sample_key("research");
        assert_eq!(outcome(&changed), RuleOutcome::Allow);
        // And back to the old team, newly loaded.
        assert_ne!(outcome(&sample_key("platform")), RuleOutcome::Allow);
    }

    #[test]
    fn shared_values_evaluate_like_converted_ones() {
        let key = json_to_cel(&crate::policy::facts::key_json(&sample_key("platform")));
        let shared = Bindings {
            shared_key: Some(SharedVal::new(key.clone())),
            ..Bindings::default()
        };
        let converted = Bindings {
            key: Some(key),
            ..Bindings::default()
        };
        for source in [
            "key.team == 'platform'",
            "'*' in key.models",
            "size(key.models) == 1",
            "key.metadata == {}",
            "has(key.owner) && key.owner == null",
            "key.created_at_ms + 1 == 2",
            "key.models.exists(m, m == '*')",
            "key == key",
            "key.team.startsWith('plat')",
            "key.nope == 1",
        ] {
            let rule = rule(source).expect("compiles");
            assert_eq!(
                rule.evaluate(&shared.context()),
                rule.evaluate(&converted.context()),
                "{source}"
            );
        }
    }

    #[test]
    fn model_binding_follows_a_policy_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |tags: &str| {
            std::fs::write(
                dir.path().join(crate::policy::load::GATEWAY_FILE),
                format!(
                    "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ncredential = {{ env = \"TOLLGATE_NO_SUCH_ENV\" }}\n\n[models.m]\nprovider = \"p\"\ntags = [{tags}]\n"
                ),
            )
            .expect("write");
        };
        let rule = rule("'premium' in model.tags").expect("compiles");
        let outcome = |snapshot: &crate::policy::Snapshot| {
            let bindings = Bindings {
                shared_model: Some(target_to_cel(&snapshot.target("m").expect("model"))),
                ..Bindings::default()
            };
            rule.evaluate(&bindings.context())
        };
        write("\"premium\"");
        let first = crate::policy::load::load_dir(dir.path(), 1, None).expect("loads");
        assert_eq!(outcome(&first), RuleOutcome::Allow);
        write("\"basic\"");
        let second = crate::policy::load::load_dir(dir.path(), 2, Some(&first)).expect("loads");
        assert_ne!(outcome(&second), RuleOutcome::Allow);
        // The old snapshot, still held by requests that started under it, keeps its answer.
        assert_eq!(outcome(&first), RuleOutcome::Allow);
    }
}
