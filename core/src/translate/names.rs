//! Tool names another family refuses, shortened deterministically and mapped back in answers.

use std::collections::HashMap;

use super::Dialect;

/// The longest tool name every family accepts.
const MAX_LEN: usize = 64;

/// Deterministic short names for tool names another family refuses (over 64 chars, or chars
/// Gemini refuses), mapped back in answers and streams.
#[derive(Debug, Clone, Default)]
pub struct ToolNames {
    /// upstream name -> client name, only for names that were changed.
    to_client: HashMap<String, String>,
}

impl ToolNames {
    /// The name to send to an upstream of dialect `to` for the client's tool `client`; records
    /// the mapping when the name had to change.
    pub fn to_upstream(&mut self, client: &str, to: Dialect) -> String {
        if valid(client, to) {
            return client.to_string();
        }
        let short = shorten(client, to);
        self.to_client.insert(short.clone(), client.to_string());
        short
    }

    /// The client's name for a tool name the upstream used.
    pub fn to_client(&self, upstream: &str) -> String {
        self.to_client
            .get(upstream)
            .cloned()
            .unwrap_or_else(|| upstream.to_string())
    }

    /// Whether no name had to change.
    pub fn is_empty(&self) -> bool {
        self.to_client.is_empty()
    }
}

/// Whether `name` is accepted as is by `dialect`.
fn valid(name: &str, dialect: Dialect) -> bool {
    if name.is_empty() || name.len() > MAX_LEN {
        return false;
    }
    match dialect {
        Dialect::OpenAiChat | Dialect::Anthropic => name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        Dialect::Gemini => {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        }
    }
}

/// A valid name for every family: the sanitised start of the name plus a hash of the whole.
fn shorten(name: &str, dialect: Dialect) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LEN - 9)
        .collect();
    if dialect == Dialect::Gemini
        && !clean.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    {
        clean.insert(0, '_');
        clean.truncate(MAX_LEN - 9);
    }
    format!("{clean}_{:08x}", fnv1a(name.as_bytes()))
}

/// FNV-1a, 32 bits: stable across runs and platforms.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn long_tool_names_get_a_deterministic_short_name_that_maps_back() {
        let long = format!("mcp__github__{}", "x".repeat(80));
        let mut a = ToolNames::default();
        let mut b = ToolNames::default();
        let short = a.to_upstream(&long, Dialect::Anthropic);
        assert_eq!(short, b.to_upstream(&long, Dialect::Anthropic));
        assert!(short.len() <= 64 && valid(&short, Dialect::Anthropic));
        assert!(valid(&short, Dialect::Gemini));
        assert_eq!(a.to_client(&short), long);
        assert_eq!(a.to_client("other"), "other");
    }

    #[test]
    fn names_gemini_refuses_are_shortened_only_for_gemini() {
        let mut names = ToolNames::default();
        assert_eq!(
            names.to_upstream("get_weather", Dialect::Gemini),
            "get_weather"
        );
        assert_eq!(names.to_upstream("ns.tool", Dialect::Gemini), "ns.tool");
        let digit = names.to_upstream("1st-tool", Dialect::Gemini);
        assert!(digit.starts_with("_1st-tool_"));
        let spaced = names.to_upstream("my tool/v2", Dialect::Gemini);
        assert!(valid(&spaced, Dialect::Gemini));
        assert_eq!(names.to_client(&spaced), "my tool/v2");
        assert_eq!(names.to_upstream("ns.tool", Dialect::Anthropic).len(), 16);
    }
}
