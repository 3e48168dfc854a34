//! A guardrail built against the released `tollgate:plugin@0.1.0` WIT (`sdk/wit/plugin.wit`),
//! bypassing the SDK (which builds 0.2.0): the gateway must keep loading and running it. It
//! denies requests that mention `legacy-deny` (code `legacy_blocked`) and allows the rest.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ world: "guardrail", path: "../../../sdk/wit/plugin.wit" });

use exports::tollgate::plugin::guard::Guest;
use tollgate::plugin::types::{Action, Denial, RequestView, ResponseView, StreamView, Verdict};

struct Legacy;

fn verdict(action: Action) -> Verdict {
    Verdict {
        action,
        findings: Vec::new(),
        score: None,
    }
}

impl Guest for Legacy {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn check_request(request: RequestView) -> Verdict {
        let hit = request
            .messages
            .iter()
            .flat_map(|m| m.parts.iter())
            .any(|p| p.text.contains("legacy-deny"));
        if hit {
            return verdict(Action::Deny(Denial {
                code: "legacy_blocked".into(),
                reason: "a 0.1.0 plugin said no".into(),
            }));
        }
        verdict(Action::Allow)
    }
    fn check_response(_response: ResponseView) -> Verdict {
        verdict(Action::Allow)
    }
    fn check_stream(_window: StreamView) -> Verdict {
        verdict(Action::Allow)
    }
}

export!(Legacy);
