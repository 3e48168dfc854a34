//! A guardrail built against `tollgate:plugin@1.0.0` (a copy of the 0.1.0 WIT with another
//! version), bypassing the SDK: the gateway must refuse it at load with a clear message.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ world: "guardrail", path: "wit" });

use exports::tollgate::plugin::guard::Guest;
use tollgate::plugin::types::{Action, RequestView, ResponseView, StreamView, Verdict};

struct Future;

fn allow() -> Verdict {
    Verdict {
        action: Action::Allow,
        findings: Vec::new(),
        score: None,
    }
}

impl Guest for Future {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn check_request(_request: RequestView) -> Verdict {
        allow()
    }
    fn check_response(_response: ResponseView) -> Verdict {
        allow()
    }
    fn check_stream(_window: StreamView) -> Verdict {
        allow()
    }
}

export!(Future);
