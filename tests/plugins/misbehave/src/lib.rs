//! A test plugin that misbehaves on demand, to prove the host survives it. The word in the
//! last user message decides: `trap` panics (a trap), `spin` loops forever (the time limit),
//! `hog` allocates until the memory limit, `garbage` returns an edit for a part that does not
//! exist; anything else is allowed. `configure` fails when the config has `"refuse": true`.

use tollgate_plugin_sdk::{Config, Edit, Guardrail, Request, Verdict};

/// The plugin.
pub struct Misbehave;

impl Guardrail for Misbehave {
    fn new(config: &Config) -> Result<Self, String> {
        if config.value().get("refuse").and_then(|v| v.as_bool()) == Some(true) {
            return Err("refusing this configuration on purpose".into());
        }
        Ok(Misbehave)
    }

    fn check_request(&mut self, request: &Request) -> Verdict {
        let text = request
            .messages
            .last()
            .map(|m| m.text())
            .unwrap_or_default();
        if text.contains("trap") {
            panic!("misbehave: trapping on purpose");
        }
        if text.contains("spin") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if text.contains("hog") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if text.contains("garbage") {
            return Verdict::rewrite(vec![Edit {
                part: 9999,
                text: "?".into(),
            }]);
        }
        Verdict::allow().with_finding("calls", 1)
    }
}

tollgate_plugin_sdk::export!(Misbehave);
