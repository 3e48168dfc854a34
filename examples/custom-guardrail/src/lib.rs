//! The guardrail built in the SDK tutorial (`sdk/README.md`): masks internal ticket ids such as
//! `ACME-1234` before prompts reach the provider, and blocks prompts that name a restricted
//! project.
//!
//! ```toml
//! [config]
//! prefixes = ["ACME", "OPS"]        # ticket id prefixes to mask
//! restricted = ["project nightjar"] # case-insensitive phrases that block
//! ```

use serde::Deserialize;
use tollgate_plugin_sdk::text::Redactions;
use tollgate_plugin_sdk::{Config, Edit, Findings, Guardrail, Request, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    prefixes: Vec<String>,
    #[serde(default)]
    restricted: Vec<String>,
}

/// Masks ticket ids, blocks restricted projects.
pub struct TicketGuard {
    prefixes: Vec<String>,
    restricted: Vec<String>,
}

impl TicketGuard {
    /// Byte ranges of `PREFIX-digits` ticket ids in `text`.
    fn tickets(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut found = Vec::new();
        for prefix in &self.prefixes {
            let needle = format!("{prefix}-");
            for (start, _) in text.match_indices(&needle) {
                let digits = text[start + needle.len()..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .count();
                if digits > 0 {
                    found.push(start..start + needle.len() + digits);
                }
            }
        }
        found
    }
}

impl Guardrail for TicketGuard {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.prefixes.is_empty() {
            return Err("`prefixes` must name at least one ticket prefix".into());
        }
        Ok(TicketGuard {
            prefixes: settings.prefixes,
            restricted: settings
                .restricted
                .iter()
                .map(|r| r.to_lowercase())
                .collect(),
        })
    }

    fn check_request(&mut self, request: &Request) -> Verdict {
        let mut findings = Findings::new();
        let mut edits = Vec::new();
        for (_, part) in request.parts() {
            let lower = part.text.to_lowercase();
            if self.restricted.iter().any(|r| lower.contains(r.as_str())) {
                // Name the category, never the text.
                return Verdict::deny("project_restricted", "this project may not be discussed")
                    .with_finding("restricted_project", 1);
            }
            let mut redactions = Redactions::new();
            for range in self.tickets(&part.text) {
                findings.add("ticket_id");
                redactions.add(range, "[TICKET]");
            }
            if !redactions.is_empty() {
                edits.push(Edit {
                    part: part.id,
                    text: redactions.apply(&part.text),
                });
            }
        }
        Verdict::rewrite(edits).with_findings(findings.into_vec())
    }
}

tollgate_plugin_sdk::export!(TicketGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_plugin_sdk::Role;

    fn guard() -> TicketGuard {
        let config =
            Config::from_value(json!({"prefixes": ["ACME"], "restricted": ["Project Nightjar"]}));
        TicketGuard::new(&config).unwrap()
    }

    #[test]
    fn ticket_ids_are_masked() {
        let request =
            Request::new("demo-chat").with_message(Role::User, "Summarize ACME-1234 and ACME-7.");
        let verdict = guard().check_request(&request);
        assert_eq!(verdict.edited(0), Some("Summarize [TICKET] and [TICKET]."));
        assert_eq!(verdict.count("ticket_id"), 2);
    }

    #[test]
    fn restricted_projects_are_blocked_without_echoing_them() {
        let request =
            Request::new("demo-chat").with_message(Role::User, "Status of project NIGHTJAR?");
        let verdict = guard().check_request(&request);
        assert_eq!(verdict.deny_code(), Some("project_restricted"));
    }

    #[test]
    fn clean_prompts_pass() {
        let request = Request::new("demo-chat").with_message(Role::User, "ACME- is our prefix");
        assert!(guard().check_request(&request).is_allow());
    }
}
