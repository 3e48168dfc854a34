//! Scenarios of the other endpoint families (issue 9's benchmark): the native Anthropic
//! Messages passthrough, and an OpenAI chat client served by an Anthropic model through the
//! translation core, each as JSON and as a stream. The direct baseline is always the Anthropic
//! request sent straight to the mock, so "tollgate − direct" is what the gateway (and, for the
//! translated rows, the translation both ways) adds.

use serde_json::{Value, json};

use crate::BenchConfig;
use crate::driver::Load;
use crate::scenario::{PROVIDER_KEY_ENV, RequestSpec, Scenario, Upstream, chat_body};

/// The model clients name (an Anthropic-family model).
const MODEL: &str = "bench-claude";
/// The id tollgate sends upstream.
const UPSTREAM_MODEL: &str = "bench-claude-1";

/// The policy directory: the mock as an Anthropic provider, the model open to translation.
fn gateway_toml(upstream: &Upstream) -> String {
    format!(
        r#"# Written by tollgate-bench.
[providers.anthropic]
family = "anthropic"
base_url = "{base}"
credential = {{ env = "{PROVIDER_KEY_ENV}" }}

[models."{MODEL}"]
provider = "anthropic"
upstream_model = "{UPSTREAM_MODEL}"
translate = true
pricing = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}
"#,
        base = upstream.base_url
    )
}

/// The same ~1 KB conversation as the OpenAI scenarios, in Anthropic's shape.
fn messages_body(model: &str, stream: bool) -> Value {
    let chat = chat_body(model);
    let system = chat["messages"][0]["content"].clone();
    let user = chat["messages"][1]["content"].clone();
    let mut body = json!({
        "model": model,
        "system": system,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": 256,
        "temperature": 0.2,
    });
    if stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

/// How the client talks to tollgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `POST /v1/messages`, natively.
    Anthropic,
    /// `POST /v1/chat/completions`, translated to Anthropic and back.
    OpenAi,
}

/// One family scenario.
#[derive(Debug)]
pub struct Family {
    client: Client,
    stream: bool,
}

impl Family {
    /// Native Anthropic, JSON.
    pub const ANTHROPIC: Family = Family {
        client: Client::Anthropic,
        stream: false,
    };
    /// Native Anthropic, stream.
    pub const ANTHROPIC_STREAM: Family = Family {
        client: Client::Anthropic,
        stream: true,
    };
    /// OpenAI client, Anthropic upstream, JSON.
    pub const TRANSLATED: Family = Family {
        client: Client::OpenAi,
        stream: false,
    };
    /// OpenAI client, Anthropic upstream, stream.
    pub const TRANSLATED_STREAM: Family = Family {
        client: Client::OpenAi,
        stream: true,
    };
}

impl Scenario for Family {
    fn name(&self) -> &'static str {
        match (self.client, self.stream) {
            (Client::Anthropic, false) => "anthropic",
            (Client::Anthropic, true) => "anthropic-stream",
            (Client::OpenAi, false) => "translated",
            (Client::OpenAi, true) => "translated-stream",
        }
    }

    fn summary(&self) -> &'static str {
        match (self.client, self.stream) {
            (Client::Anthropic, false) => "native Anthropic /v1/messages passthrough, ~1 KB, JSON",
            (Client::Anthropic, true) => "native Anthropic /v1/messages passthrough, SSE stream",
            (Client::OpenAi, false) => {
                "OpenAI chat client on an Anthropic model (translated both ways), JSON"
            }
            (Client::OpenAi, true) => {
                "OpenAI chat client on an Anthropic model (translated both ways), SSE stream"
            }
        }
    }

    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)> {
        vec![("gateway.toml".into(), gateway_toml(upstream))]
    }

    fn gateway_request(&self) -> RequestSpec {
        match self.client {
            Client::Anthropic => RequestSpec::json(
                "/v1/messages",
                &messages_body(MODEL, self.stream),
                self.stream,
            ),
            Client::OpenAi => {
                let mut body = chat_body(MODEL);
                if self.stream {
                    body["stream"] = Value::Bool(true);
                }
                RequestSpec::json("/v1/chat/completions", &body, self.stream)
            }
        }
    }

    fn direct_request(&self) -> RequestSpec {
        RequestSpec::json(
            "/v1/messages",
            &messages_body(UPSTREAM_MODEL, self.stream),
            self.stream,
        )
    }

    fn loads(&self, config: &BenchConfig) -> Vec<Load> {
        if self.stream {
            vec![Load::Open {
                rate: config.stream_rate.unwrap_or(config.rate),
            }]
        } else {
            vec![
                Load::Open { rate: config.rate },
                Load::Closed {
                    concurrency: config.concurrency,
                },
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anthropic_body_carries_the_same_conversation_as_the_chat_body() {
        let body = messages_body("m", true);
        let chat = chat_body("m");
        assert_eq!(body["system"], chat["messages"][0]["content"]);
        assert_eq!(
            body["messages"][0]["content"],
            chat["messages"][1]["content"]
        );
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn translated_scenarios_send_openai_requests_and_compare_with_anthropic_direct() {
        let gateway = Family::TRANSLATED_STREAM.gateway_request();
        assert_eq!(gateway.path, "/v1/chat/completions");
        assert!(gateway.stream);
        assert_eq!(Family::TRANSLATED.direct_request().path, "/v1/messages");
    }
}
