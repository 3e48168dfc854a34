//! What a plugin answers: allow, deny or rewrite, with findings by category.

use std::collections::BTreeMap;

/// The default code of a denial: 403 `safety_blocked`.
pub const SAFETY_BLOCKED: &str = "safety_blocked";

/// What a plugin found: a category and how many times. Never the matched text: findings go
/// into usage records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A short, stable name such as `email` or `instruction_override`.
    pub category: String,
    /// How many times.
    pub count: u32,
}

/// New text for one part (masking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The [`TextPart::id`](crate::TextPart::id) to replace.
    pub part: u32,
    /// Its new text.
    pub text: String,
}

/// What to do with the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass it on unchanged.
    Allow,
    /// Stop it: the client gets 403 with `code`, naming the plugin.
    Deny {
        /// A stable machine code (`safety_blocked` if empty).
        code: String,
        /// A reason for the client. Never repeat the sensitive text.
        reason: String,
    },
    /// Pass it on with these parts replaced.
    Rewrite(Vec<Edit>),
}

/// A plugin's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// What was found (recorded, also when allowing).
    pub findings: Vec<Finding>,
    /// An optional score (e.g. an injection likelihood), recorded.
    pub score: Option<f64>,
}

impl Verdict {
    /// Pass unchanged.
    pub fn allow() -> Self {
        Verdict {
            action: Action::Allow,
            findings: Vec::new(),
            score: None,
        }
    }

    /// Refuse with `code` (empty for `safety_blocked`) and a reason that does not repeat the
    /// sensitive text.
    pub fn deny(code: &str, reason: &str) -> Self {
        Verdict {
            action: Action::Deny {
                code: code.to_string(),
                reason: reason.to_string(),
            },
            findings: Vec::new(),
            score: None,
        }
    }

    /// Replace parts; with no edits this is [`Verdict::allow`].
    pub fn rewrite(edits: Vec<Edit>) -> Self {
        if edits.is_empty() {
            return Verdict::allow();
        }
        Verdict {
            action: Action::Rewrite(edits),
            findings: Vec::new(),
            score: None,
        }
    }

    /// Adds findings.
    pub fn with_findings(mut self, findings: impl IntoIterator<Item = Finding>) -> Self {
        self.findings.extend(findings);
        self
    }

    /// Adds one finding.
    pub fn with_finding(mut self, category: &str, count: u32) -> Self {
        self.findings.push(Finding {
            category: category.to_string(),
            count,
        });
        self
    }

    /// Sets the score.
    pub fn with_score(mut self, score: f64) -> Self {
        self.score = Some(score);
        self
    }

    /// Whether the verdict allows the traffic unchanged.
    pub fn is_allow(&self) -> bool {
        self.action == Action::Allow
    }

    /// Whether the verdict denies.
    pub fn is_deny(&self) -> bool {
        matches!(self.action, Action::Deny { .. })
    }

    /// The denial code, if it denies (`safety_blocked` when the plugin left it empty).
    pub fn deny_code(&self) -> Option<&str> {
        match &self.action {
            Action::Deny { code, .. } if code.is_empty() => Some(SAFETY_BLOCKED),
            Action::Deny { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The new text of part `id`, if the verdict rewrites it.
    pub fn edited(&self, id: u32) -> Option<&str> {
        match &self.action {
            Action::Rewrite(edits) => edits
                .iter()
                .rev()
                .find(|e| e.part == id)
                .map(|e| e.text.as_str()),
            _ => None,
        }
    }

    /// The count of findings of `category`.
    pub fn count(&self, category: &str) -> u32 {
        self.findings
            .iter()
            .filter(|f| f.category == category)
            .map(|f| f.count)
            .sum()
    }
}

/// Counts findings by category (sorted), for building a [`Verdict`].
#[derive(Debug, Clone, Default)]
pub struct Findings(BTreeMap<String, u32>);

impl Findings {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one occurrence of `category`.
    pub fn add(&mut self, category: &str) {
        *self.0.entry(category.to_string()).or_insert(0) += 1;
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The categories counted, sorted.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The findings, sorted by category.
    pub fn into_vec(self) -> Vec<Finding> {
        self.0
            .into_iter()
            .map(|(category, count)| Finding { category, count })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_without_edits_is_an_allow() {
        assert!(Verdict::rewrite(Vec::new()).is_allow());
    }

    #[test]
    fn empty_deny_codes_mean_safety_blocked() {
        assert_eq!(Verdict::deny("", "r").deny_code(), Some(SAFETY_BLOCKED));
        assert_eq!(Verdict::deny("mine", "r").deny_code(), Some("mine"));
        assert_eq!(Verdict::allow().deny_code(), None);
    }

    #[test]
    fn the_last_edit_of_a_part_wins_and_findings_are_summed() {
        let verdict = Verdict::rewrite(vec![
            Edit {
                part: 1,
                text: "a".into(),
            },
            Edit {
                part: 1,
                text: "b".into(),
            },
        ])
        .with_finding("email", 2)
        .with_finding("email", 1);
        assert_eq!(verdict.edited(1), Some("b"));
        assert_eq!(verdict.edited(0), None);
        assert_eq!(verdict.count("email"), 3);
    }

    #[test]
    fn findings_are_counted_and_sorted_by_category() {
        let mut findings = Findings::new();
        findings.add("phone");
        findings.add("email");
        findings.add("phone");
        let list = findings.into_vec();
        assert_eq!(list[0].category, "email");
        assert_eq!(list[1].count, 2);
    }
}
