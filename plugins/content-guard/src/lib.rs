//! `content-guard`: keyword and regex allow/deny lists from config, on requests, answers and
//! streams.
//!
//! Each `deny` rule has a name (its finding category), keywords (matched as whole words when
//! they start and end with a word character) and regex patterns. Text matched by the `allow`
//! list is exempt: a deny match overlapping an allowed span does not count.
//!
//! ```toml
//! [config]
//! action = "block"          # "block" (default) | "mask" | "observe"
//! case_sensitive = false
//! mask_template = "[{NAME}]"
//! deny = [
//!   { name = "project_codenames", keywords = ["titan", "blue falcon"] },
//!   { name = "internal_urls", patterns = ['https?://[a-z0-9.-]+\.corp\.example\b'] },
//! ]
//! allow = { keywords = ["titan the moon"] }
//! ```

use std::ops::Range;

use regex::Regex;
use serde::Deserialize;
use tollgate_plugin_sdk::text::Redactions;
use tollgate_plugin_sdk::{
    Config, Edit, Findings, Guardrail, Request, Response, StreamWindow, TextPart, Verdict,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Block,
    Mask,
    Observe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct List {
    keywords: Vec<String>,
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyRule {
    name: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    action: Action,
    case_sensitive: bool,
    mask_template: String,
    deny: Vec<DenyRule>,
    allow: List,
    code: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            action: Action::Block,
            case_sensitive: false,
            mask_template: "[{NAME}]".into(),
            deny: Vec::new(),
            allow: List::default(),
            code: String::new(),
        }
    }
}

struct Rule {
    name: String,
    label: String,
    regex: Regex,
}

/// The guardrail.
pub struct ContentGuard {
    rules: Vec<Rule>,
    allow: Option<Regex>,
    action: Action,
    code: String,
}

fn keyword_pattern(keyword: &str) -> String {
    let escaped = regex::escape(keyword);
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let start = if word(keyword.chars().next()) {
        r"\b"
    } else {
        ""
    };
    let end = if word(keyword.chars().last()) {
        r"\b"
    } else {
        ""
    };
    format!("{start}{escaped}{end}")
}

fn compile(what: &str, list: &List, case_sensitive: bool) -> Result<Option<Regex>, String> {
    let mut alternatives: Vec<String> = list.keywords.iter().map(|k| keyword_pattern(k)).collect();
    for pattern in &list.patterns {
        Regex::new(pattern).map_err(|e| format!("{what}: invalid pattern {pattern:?}: {e}"))?;
        alternatives.push(format!("(?:{pattern})"));
    }
    if alternatives.is_empty() {
        return Ok(None);
    }
    let flags = if case_sensitive { "" } else { "(?i)" };
    Regex::new(&format!("{flags}{}", alternatives.join("|")))
        .map(Some)
        .map_err(|e| format!("{what}: {e}"))
}

impl ContentGuard {
    fn from_settings(settings: Settings) -> Result<Self, String> {
        if settings.deny.is_empty() {
            return Err("config needs at least one `deny` rule".into());
        }
        let mut rules = Vec::new();
        for rule in &settings.deny {
            if rule.name.is_empty()
                || !rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "deny rule name {:?} must be non-empty [A-Za-z0-9_-]",
                    rule.name
                ));
            }
            let list = List {
                keywords: rule.keywords.clone(),
                patterns: rule.patterns.clone(),
            };
            let Some(regex) = compile(
                &format!("deny '{}'", rule.name),
                &list,
                settings.case_sensitive,
            )?
            else {
                return Err(format!(
                    "deny rule '{}' has no keywords or patterns",
                    rule.name
                ));
            };
            rules.push(Rule {
                label: settings
                    .mask_template
                    .replace("{NAME}", &rule.name.to_ascii_uppercase())
                    .replace("{name}", &rule.name),
                name: rule.name.clone(),
                regex,
            });
        }
        Ok(ContentGuard {
            rules,
            allow: compile("allow", &settings.allow, settings.case_sensitive)?,
            action: settings.action,
            code: settings.code,
        })
    }

    fn scan(&self, text: &str, findings: &mut Findings) -> Redactions {
        let allowed: Vec<Range<usize>> = self
            .allow
            .as_ref()
            .map(|a| a.find_iter(text).map(|m| m.range()).collect())
            .unwrap_or_default();
        let mut redactions = Redactions::new();
        for rule in &self.rules {
            for m in rule.regex.find_iter(text) {
                let r = m.range();
                if allowed.iter().any(|a| a.start <= r.start && r.end <= a.end) {
                    continue;
                }
                findings.add(&rule.name);
                redactions.add(r, &rule.label);
            }
        }
        redactions
    }

    fn inspect<'a>(&self, parts: impl Iterator<Item = &'a TextPart>) -> Verdict {
        let mut findings = Findings::new();
        let mut edits = Vec::new();
        for part in parts {
            let redactions = self.scan(&part.text, &mut findings);
            if !redactions.is_empty() {
                edits.push(Edit {
                    part: part.id,
                    text: redactions.apply(&part.text),
                });
            }
        }
        if findings.is_empty() {
            return Verdict::allow();
        }
        let verdict = match self.action {
            Action::Observe => Verdict::allow(),
            Action::Mask => Verdict::rewrite(edits),
            Action::Block => {
                let names: Vec<&str> = findings.categories().collect();
                Verdict::deny(
                    &self.code,
                    &format!("content not allowed: {}", names.join(", ")),
                )
            }
        };
        verdict.with_findings(findings.into_vec())
    }
}

impl Guardrail for ContentGuard {
    fn new(config: &Config) -> Result<Self, String> {
        ContentGuard::from_settings(config.parse()?)
    }

    fn check_request(&mut self, request: &Request) -> Verdict {
        self.inspect(request.messages.iter().flat_map(|m| m.parts.iter()))
    }

    fn check_response(&mut self, response: &Response) -> Verdict {
        self.inspect(response.messages.iter().flat_map(|m| m.parts.iter()))
    }

    fn check_stream(&mut self, window: &StreamWindow) -> Verdict {
        self.inspect(std::iter::once(&window.window))
    }
}

tollgate_plugin_sdk::export!(ContentGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_plugin_sdk::{Action as Verb, Role};

    fn guard(config: serde_json::Value) -> ContentGuard {
        ContentGuard::new(&Config::from_value(config)).expect("config")
    }

    fn ask(g: &mut ContentGuard, text: &str) -> Verdict {
        g.check_request(&Request::new("m").with_message(Role::User, text))
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        let mut g = guard(json!({"deny": [{"name": "codenames", "keywords": ["titan"]}]}));
        let v = ask(&mut g, "Status of TITAN?");
        assert_eq!(v.deny_code(), Some("safety_blocked"));
        assert_eq!(v.count("codenames"), 1);
        assert!(ask(&mut g, "titanium prices").is_allow());
    }

    #[test]
    fn patterns_and_allow_list_combine() {
        let mut g = guard(json!({
            "action": "mask",
            "deny": [{"name": "internal_urls", "patterns": ["https?://[a-z0-9.-]+\\.corp\\.example"]}],
            "allow": {"keywords": ["https://status.corp.example"]},
        }));
        let v = ask(
            &mut g,
            "see https://wiki.corp.example and https://status.corp.example",
        );
        assert_eq!(
            v.edited(0),
            Some("see [INTERNAL_URLS] and https://status.corp.example")
        );
        assert!(matches!(v.action, Verb::Rewrite(_)));
    }

    #[test]
    fn responses_and_streams_are_inspected_too() {
        let mut g =
            guard(json!({"action": "mask", "deny": [{"name": "x", "keywords": ["blue falcon"]}]}));
        let v = g.check_response(&Response::new("m").with_text("the Blue Falcon launches"));
        assert_eq!(v.edited(0), Some("the [X] launches"));
        let v = g.check_stream(&StreamWindow::new("m", "blue falcon"));
        assert_eq!(v.edited(0), Some("[X]"));
    }

    #[test]
    fn config_errors_are_explicit() {
        for (config, needle) in [
            (json!({}), "at least one"),
            (json!({"deny": [{"name": "x"}]}), "no keywords"),
            (
                json!({"deny": [{"name": "x", "patterns": ["("]}]}),
                "invalid pattern",
            ),
            (
                json!({"deny": [{"name": "x", "keywords": ["a"]}], "acton": "mask"}),
                "acton",
            ),
        ] {
            let err = ContentGuard::new(&Config::from_value(config))
                .err()
                .expect("refused");
            assert!(err.contains(needle), "{err}");
        }
    }
}
