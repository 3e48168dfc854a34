//! `pii-guard`: finds personal data and secrets in prompts, answers, streams and MCP tool
//! arguments and results, and masks them (or blocks, or only records them).
//!
//! Categories: `email`, `phone`, `payment_card` (Luhn-checked), `iban` (mod-97-checked),
//! `national_id` (formats from config), `ip_address` (v4 and v6), `api_key` (OpenAI,
//! Anthropic, Google, GitHub, GitLab, Slack, Stripe, Hugging Face), `cloud_key` (AWS access
//! keys and secrets, Azure storage keys, GCP service-account key ids), `jwt`, `private_key`
//! (PEM blocks, also when cut off) and `high_entropy_token` (long random-looking strings).
//!
//! ```toml
//! [config]
//! mode = "mask"                 # "mask" (default) | "block" | "observe"
//! detect = ["email", "payment_card"]   # default: every category
//! block = ["private_key"]       # categories that block even in mask mode
//! roles = ["user", "tool"]      # request messages to inspect (default: all)
//! mask_template = "[{CATEGORY}]" # {CATEGORY} upper case, {category} lower case
//! entropy_min_length = 32
//! entropy_min_bits = 4.0
//! national_ids = [{ name = "us_ssn", pattern = '\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b' }]
//! ```

use regex::{Regex, RegexSet};
use serde::Deserialize;
use tollgate_plugin_sdk::text::Redactions;
use tollgate_plugin_sdk::{
    Config, Edit, Findings, Guardrail, Request, Response, Role, StreamWindow, TextPart, ToolCall,
    ToolResult, Verdict,
};

/// Every category, in detection priority order (an earlier category claims overlapping text).
pub const CATEGORIES: &[&str] = &[
    "private_key",
    "jwt",
    "api_key",
    "cloud_key",
    "iban",
    "payment_card",
    "email",
    "national_id",
    "ip_address",
    "phone",
    "high_entropy_token",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Mask,
    Block,
    Observe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NationalId {
    name: String,
    pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    mode: Mode,
    detect: Option<Vec<String>>,
    block: Vec<String>,
    roles: Option<Vec<String>>,
    mask_template: String,
    entropy_min_length: usize,
    entropy_min_bits: f64,
    national_ids: Vec<NationalId>,
    code: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Mask,
            detect: None,
            block: Vec::new(),
            roles: None,
            mask_template: "[{CATEGORY}]".into(),
            entropy_min_length: 32,
            entropy_min_bits: 4.0,
            national_ids: Vec::new(),
            code: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    None,
    Luhn,
    Iban,
    Ipv6,
    Phone,
    Entropy,
}

struct Detector {
    category: &'static str,
    regex: Regex,
    check: Check,
}

/// The guardrail.
pub struct PiiGuard {
    detectors: Vec<Detector>,
    prefilter: RegexSet,
    mode: Mode,
    block: Vec<String>,
    roles: Option<Vec<Role>>,
    labels: Vec<(&'static str, String)>,
    entropy_min_length: usize,
    entropy_min_bits: f64,
    code: String,
}

fn builtin(category: &str) -> Vec<(&'static str, Check)> {
    match category {
        "private_key" => vec![(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
            Check::None,
        )],
        "jwt" => vec![(
            r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
            Check::None,
        )],
        "api_key" => vec![
            (
                r"\bsk-(?:proj-|ant-[a-z]+[0-9]{2}-|svcacct-)?[A-Za-z0-9_-]{20,}",
                Check::None,
            ),
            (r"\bAIza[0-9A-Za-z_-]{35}", Check::None),
            (r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", Check::None),
            (r"\bgithub_pat_[A-Za-z0-9_]{50,}", Check::None),
            (r"\bglpat-[A-Za-z0-9_-]{20,}", Check::None),
            (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", Check::None),
            (r"\b[sr]k_live_[A-Za-z0-9]{20,}", Check::None),
            (r"\bhf_[A-Za-z0-9]{30,}", Check::None),
        ],
        "cloud_key" => vec![
            (r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", Check::None),
            (
                r"(?i:aws_?secret_?access_?key)[\x22']?\s*[:=]\s*[\x22']?[A-Za-z0-9/+=]{40}",
                Check::None,
            ),
            (r"AccountKey=[A-Za-z0-9+/=]{40,}", Check::None),
            (r#""private_key_id"\s*:\s*"[0-9a-f]{40}""#, Check::None),
        ],
        "payment_card" => vec![(r"\b[0-9](?:[ -]?[0-9]){12,18}\b", Check::Luhn)],
        "iban" => vec![(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b", Check::Iban)],
        "email" => vec![(
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b",
            Check::None,
        )],
        "ip_address" => vec![
            (
                r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b",
                Check::None,
            ),
            (
                r"(?:[0-9A-Fa-f]{1,4}:|::)(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{1,4}",
                Check::Ipv6,
            ),
        ],
        "phone" => vec![
            (
                r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}",
                Check::Phone,
            ),
            (
                r"(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}\b",
                Check::Phone,
            ),
            (
                r"\b0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -]?[0-9]{3,4}\b",
                Check::Phone,
            ),
        ],
        "high_entropy_token" => vec![(r"[A-Za-z0-9+/_=-]{24,}", Check::Entropy)],
        _ => Vec::new(),
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn digits_of(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

fn card_ok(s: &str) -> bool {
    let digits = digits_of(s);
    (13..=19).contains(&digits.len()) && digits.iter().any(|d| *d != digits[0]) && luhn(&digits)
}

fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if value >= 10 {
            (rem * 100 + value) % 97
        } else {
            (rem * 10 + value) % 97
        };
    }
    rem == 1
}

/// Whether `at` follows an IBAN-shaped prefix (`DE89 `): the digits are the rest of an
/// account number that failed its own check, not a card.
fn after_iban_prefix(text: &str, at: usize) -> bool {
    let before = text[..at].trim_end_matches(' ').as_bytes();
    before.len() >= 4 && {
        let p = &before[before.len() - 4..];
        p[0].is_ascii_uppercase()
            && p[1].is_ascii_uppercase()
            && p[2].is_ascii_digit()
            && p[3].is_ascii_digit()
            && (before.len() == 4 || !before[before.len() - 5].is_ascii_alphanumeric())
    }
}

fn phone_ok(s: &str) -> bool {
    let n = digits_of(s).len();
    (7..=15).contains(&n)
}

fn bits_per_char(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / len;
            -p * p.log2()
        })
        .sum()
}

impl PiiGuard {
    fn from_settings(settings: Settings) -> Result<Self, String> {
        let enabled: Vec<String> = match &settings.detect {
            Some(list) => {
                for c in list {
                    if !CATEGORIES.contains(&c.as_str()) {
                        return Err(format!(
                            "unknown category '{c}' in detect (known: {})",
                            CATEGORIES.join(", ")
                        ));
                    }
                }
                list.clone()
            }
            None => CATEGORIES.iter().map(|c| c.to_string()).collect(),
        };
        for c in &settings.block {
            if !CATEGORIES.contains(&c.as_str()) {
                return Err(format!("unknown category '{c}' in block"));
            }
        }
        let mut detectors = Vec::new();
        for category in CATEGORIES {
            if !enabled.iter().any(|c| c == category) {
                continue;
            }
            if *category == "national_id" {
                for id in &settings.national_ids {
                    let regex = Regex::new(&id.pattern)
                        .map_err(|e| format!("national_ids '{}': invalid pattern: {e}", id.name))?;
                    detectors.push(Detector {
                        category: "national_id",
                        regex,
                        check: Check::None,
                    });
                }
                continue;
            }
            for (pattern, check) in builtin(category) {
                let regex = Regex::new(pattern)
                    .map_err(|e| format!("built-in pattern for {category}: {e}"))?;
                detectors.push(Detector {
                    category,
                    regex,
                    check,
                });
            }
        }
        let prefilter = RegexSet::new(detectors.iter().map(|d| d.regex.as_str()))
            .map_err(|e| format!("cannot build the prefilter: {e}"))?;
        let labels = CATEGORIES
            .iter()
            .map(|c| {
                let label = settings
                    .mask_template
                    .replace("{CATEGORY}", &c.to_ascii_uppercase())
                    .replace("{category}", c);
                (*c, label)
            })
            .collect();
        let roles = settings
            .roles
            .map(|roles| roles.iter().map(|r| Role::parse(r)).collect());
        Ok(PiiGuard {
            detectors,
            prefilter,
            mode: settings.mode,
            block: settings.block,
            roles,
            labels,
            entropy_min_length: settings.entropy_min_length.max(16),
            entropy_min_bits: settings.entropy_min_bits,
            code: settings.code,
        })
    }

    fn label(&self, category: &str) -> &str {
        self.labels
            .iter()
            .find(|(c, _)| *c == category)
            .map_or("[REDACTED]", |(_, l)| l.as_str())
    }

    fn accept(&self, check: Check, candidate: &str) -> bool {
        match check {
            Check::None => true,
            Check::Luhn => card_ok(candidate),
            Check::Iban => iban_ok(candidate),
            Check::Ipv6 => {
                candidate.matches(':').count() >= 2
                    && candidate.parse::<std::net::Ipv6Addr>().is_ok()
            }
            Check::Phone => phone_ok(candidate),
            Check::Entropy => {
                candidate.len() >= self.entropy_min_length
                    && candidate.bytes().any(|b| b.is_ascii_digit())
                    && candidate.bytes().any(|b| b.is_ascii_alphabetic())
                    && bits_per_char(candidate) >= self.entropy_min_bits
            }
        }
    }

    /// Finds every value in `text`: the replacements and the categories found.
    pub fn scan(&self, text: &str, findings: &mut Findings) -> Redactions {
        let mut redactions = Redactions::new();
        let hits = self.prefilter.matches(text);
        if !hits.matched_any() {
            return redactions;
        }
        for index in hits.iter() {
            let detector = &self.detectors[index];
            for m in detector.regex.find_iter(text) {
                let range = m.range();
                if redactions.overlaps(&range)
                    || !self.accept(detector.check, m.as_str())
                    || (detector.category == "payment_card" && after_iban_prefix(text, range.start))
                {
                    continue;
                }
                findings.add(detector.category);
                redactions.add(range, self.label(detector.category));
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
        self.decide(findings, edits)
    }

    fn decide(&self, findings: Findings, edits: Vec<Edit>) -> Verdict {
        if findings.is_empty() {
            return Verdict::allow();
        }
        let blocking: Vec<&str> = findings
            .categories()
            .filter(|c| self.mode == Mode::Block || self.block.iter().any(|b| b.as_str() == *c))
            .collect();
        let verdict = if self.mode == Mode::Observe {
            Verdict::allow()
        } else if !blocking.is_empty() {
            Verdict::deny(
                &self.code,
                &format!("sensitive data found: {}", blocking.join(", ")),
            )
        } else {
            Verdict::rewrite(edits)
        };
        verdict.with_findings(findings.into_vec())
    }
}

impl Guardrail for PiiGuard {
    fn new(config: &Config) -> Result<Self, String> {
        PiiGuard::from_settings(config.parse()?)
    }

    fn check_request(&mut self, request: &Request) -> Verdict {
        let parts = request
            .messages
            .iter()
            .filter(|m| self.roles.as_ref().is_none_or(|r| r.contains(&m.role)))
            .flat_map(|m| m.parts.iter());
        self.inspect(parts)
    }

    fn check_response(&mut self, response: &Response) -> Verdict {
        self.inspect(response.messages.iter().flat_map(|m| m.parts.iter()))
    }

    fn check_stream(&mut self, window: &StreamWindow) -> Verdict {
        self.inspect(std::iter::once(&window.window))
    }

    /// MCP tool arguments: every string inside them, masked in place.
    fn check_tool_call(&mut self, call: &ToolCall) -> Verdict {
        self.inspect(call.parts.iter())
    }

    /// MCP tool results: their texts, masked in place.
    fn check_tool_result(&mut self, result: &ToolResult) -> Verdict {
        self.inspect(result.parts.iter())
    }
}

tollgate_plugin_sdk::export!(PiiGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_plugin_sdk::Action;

    #[test]
    fn mcp_tool_arguments_and_results_are_masked_in_place() {
        let mut g = guard(json!({}));
        let call = ToolCall::new(
            "everything",
            "echo",
            r#"{"message": "write to jane.doe@example.com", "count": 1}"#,
        );
        let verdict = g.check_tool_call(&call);
        assert_eq!(
            call.rewritten(&verdict),
            Some(json!({"message": "write to [EMAIL]", "count": 1}))
        );
        let result = ToolResult::text("everything", "echo", "Echo: jane.doe@example.com");
        let verdict = g.check_tool_result(&result);
        let masked = result.rewritten(&verdict).expect("json");
        assert_eq!(masked["content"][0]["text"], "Echo: [EMAIL]");
        let mut blocking = guard(json!({"mode": "block"}));
        assert!(blocking.check_tool_call(&call).is_deny());
    }

    fn guard(config: serde_json::Value) -> PiiGuard {
        PiiGuard::new(&Config::from_value(config)).expect("config")
    }

    fn masked(config: serde_json::Value, text: &str) -> (String, Verdict) {
        let mut g = guard(config);
        let verdict = g.check_request(&Request::new("m").with_message(Role::User, text));
        let out = verdict.edited(0).unwrap_or(text).to_string();
        (out, verdict)
    }

    #[test]
    fn masks_every_builtin_category() {
        let cases = [
            (
                "mail me at jane.doe+x@example.co.uk today",
                "[EMAIL]",
                "email",
            ),
            ("call +44 20 7946 0958 now", "[PHONE]", "phone"),
            ("or (415) 555-0132 please", "[PHONE]", "phone"),
            (
                "card 4111 1111 1111 1111 ok",
                "[PAYMENT_CARD]",
                "payment_card",
            ),
            ("iban DE89 3704 0044 0532 0130 00 ok", "[IBAN]", "iban"),
            ("server 10.1.2.3 down", "[IP_ADDRESS]", "ip_address"),
            (
                "v6 2001:db8::8a2e:370:7334 down",
                "[IP_ADDRESS]",
                "ip_address",
            ),
            (
                "key sk-proj-abcdefghijklmnopqrstuvwxyz012345",
                "[API_KEY]",
                "api_key",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE here", "[CLOUD_KEY]", "cloud_key"),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "[JWT]",
                "jwt",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- done",
                "[PRIVATE_KEY]",
                "private_key",
            ),
            (
                "secret Zx8Qp2Lm9Rt4Vb7Nc1Kd6Wf3Hj5Gs0Ya",
                "[HIGH_ENTROPY_TOKEN]",
                "high_entropy_token",
            ),
        ];
        for (text, label, category) in cases {
            let (out, verdict) = masked(json!({}), text);
            assert!(out.contains(label), "{text:?} -> {out:?}");
            assert_eq!(
                verdict.count(category),
                1,
                "{text:?}: {:?}",
                verdict.findings
            );
        }
    }

    #[test]
    fn numbers_that_fail_their_checksum_are_not_cards_or_ibans() {
        let (out, verdict) = masked(
            json!({}),
            "order 4111 1111 1111 1112 and DE89 3704 0044 0532 0130 01",
        );
        assert_eq!(verdict.count("payment_card"), 0, "{out}");
        assert_eq!(verdict.count("iban"), 0, "{out}");
    }

    #[test]
    fn ordinary_prose_is_allowed_untouched() {
        let text = "The meeting is at 10:30 on 2024-05-01; version 1.2.3 ships with 3 fixes. \
                    A 64-char sha is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.";
        let (out, verdict) = masked(json!({}), text);
        assert!(verdict.is_allow(), "{:?}", verdict.findings);
        assert_eq!(out, text);
    }

    #[test]
    fn block_mode_denies_naming_categories_only() {
        let (_, verdict) = masked(json!({"mode": "block"}), "my card is 4111111111111111");
        assert_eq!(verdict.deny_code(), Some("safety_blocked"));
        match &verdict.action {
            Action::Deny { reason, .. } => {
                assert!(reason.contains("payment_card"));
                assert!(!reason.contains("4111"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_category_block_overrides_mask_mode() {
        let (_, verdict) = masked(
            json!({"block": ["private_key"]}),
            "a@b.io -----BEGIN PRIVATE KEY-----\nabc",
        );
        assert!(verdict.is_deny());
        let (_, verdict) = masked(json!({"block": ["private_key"]}), "a@b.io");
        assert!(matches!(verdict.action, Action::Rewrite(_)));
    }

    #[test]
    fn observe_mode_records_without_changing() {
        let (out, verdict) = masked(json!({"mode": "observe"}), "a@b.io");
        assert!(verdict.is_allow());
        assert_eq!(out, "a@b.io");
        assert_eq!(verdict.count("email"), 1);
    }

    #[test]
    fn national_id_formats_come_from_config() {
        let config = json!({"national_ids": [{"name": "us_ssn", "pattern": "\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b"}]});
        let (out, verdict) = masked(config, "ssn 123-45-6789.");
        assert_eq!(out, "ssn [NATIONAL_ID].");
        assert_eq!(verdict.count("national_id"), 1);
    }

    #[test]
    fn bad_config_is_refused_with_the_field() {
        let err = PiiGuard::new(&Config::from_value(json!({"mdoe": "mask"}))).err();
        assert!(err.expect("refused").contains("mdoe"));
        let err = PiiGuard::new(&Config::from_value(json!({"detect": ["emails"]}))).err();
        assert!(err.expect("refused").contains("emails"));
    }

    #[test]
    fn roles_limit_which_request_messages_are_inspected() {
        let mut g = guard(json!({"roles": ["user"]}));
        let request = Request::new("m")
            .with_message(Role::System, "admin is root@corp.example")
            .with_message(Role::User, "hi");
        assert!(g.check_request(&request).is_allow());
    }

    #[test]
    fn a_window_is_masked_like_a_prompt() {
        let mut g = guard(json!({}));
        let verdict = g.check_stream(&StreamWindow::new("m", "the key is AKIAIOSFODNN7EXAMPLE."));
        assert_eq!(verdict.edited(0), Some("the key is [CLOUD_KEY]."));
    }
}
