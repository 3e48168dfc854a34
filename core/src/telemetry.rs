//! Logs and OpenTelemetry traces.
//!
//! Logs go to stderr (text or JSON, filtered by `RUST_LOG`). Traces are off unless
//! `TOLLGATE_OTLP_ENDPOINT` names an OTLP/HTTP collector (`http://collector:4318`; the
//! exporter posts protobuf to `/v1/traces` under it). Then every model and MCP request is one
//! server span with a child per lifecycle stage (`authenticate`, `authorize`, `inspect`,
//! `reserve`, `route`, one `upstream_attempt` per deployment tried, `record`), GenAI
//! semantic-convention attributes (`gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.input_tokens`, ...), a parent taken from the
//! client's W3C `traceparent`, and `traceparent` sent to the provider on every attempt.
//!
//! The spans use the target [`TARGET`], which only the OpenTelemetry layer listens to: with
//! tracing off they are disabled at their call site and cost next to nothing.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The `tracing` target of request and stage spans.
pub const TARGET: &str = "tollgate::otel";

/// Environment variable naming the OTLP/HTTP collector (traces are off without it).
pub const ENDPOINT_ENV: &str = "TOLLGATE_OTLP_ENDPOINT";
/// Environment variable with the fraction of new traces sampled (0..=1, default 1); a
/// client's sampled `traceparent` is always followed.
pub const SAMPLE_RATIO_ENV: &str = "TOLLGATE_OTLP_SAMPLE_RATIO";
/// Environment variable naming the service in the exported resource (default `tollgate`).
pub const SERVICE_NAME_ENV: &str = "TOLLGATE_OTLP_SERVICE_NAME";

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (call outside the runtime).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: traces could not be flushed: {e}");
        }
    }
}

/// The trace collector's `/v1/traces` URL from a base URL (or a URL already ending in it).
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

fn sample_ratio() -> Result<f64, String> {
    match std::env::var(SAMPLE_RATIO_ENV) {
        Err(_) => Ok(1.0),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(format!(
                "{SAMPLE_RATIO_ENV}='{text}' must be a number from 0 to 1"
            )),
        },
    }
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    // The exporter's blocking client needs a TLS provider for https collectors.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("the OTLP exporter could not be built: {e}"))?;
    let service = std::env::var(SERVICE_NAME_ENV).unwrap_or_else(|_| "tollgate".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let ratio = sample_ratio()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Installs logging (JSON lines when `json`) and, when [`ENDPOINT_ENV`] is set and `traces`
/// is true, the OTLP trace exporter. A bad trace configuration is reported and leaves traces
/// off.
pub fn init(json: bool, traces: bool) -> Telemetry {
    let endpoint = std::env::var(ENDPOINT_ENV)
        .ok()
        .filter(|e| traces && !e.trim().is_empty());
    let mut problem = None;
    let provider = endpoint.as_deref().and_then(|e| match provider(e) {
        Ok(p) => Some(p),
        Err(e) => {
            problem = Some(e);
            None
        }
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    let _ = subscriber(json, provider.as_ref()).try_init();
    if let Some(problem) = problem {
        tracing::error!("traces are off: {problem}");
    } else if let Some(endpoint) = &endpoint {
        tracing::info!(endpoint = %traces_url(endpoint), "exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

/// The log layer, plus the trace layer when there is an exporter.
fn subscriber(json: bool, provider: Option<&SdkTracerProvider>) -> tracing::Dispatch {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Request and stage spans are for the trace exporter only, never log lines' context.
    let filter = match format!("{TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    // Without an exporter the trace layer is left out, not added as `None`: an absent `Option`
    // layer declares interest in every call site, so the request, stage and attempt spans were
    // created, entered on every poll and closed for no one.
    match provider {
        Some(p) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("tollgate"))
                .with_filter(Targets::new().with_target(TARGET, LevelFilter::INFO));
            tracing_subscriber::registry().with(fmt).with(otel).into()
        }
        None => tracing_subscriber::registry().with(fmt).into(),
    }
}

/// The server span of one request, its parent read from the client's `traceparent`.
pub fn request_span(headers: &HeaderMap, method: &str, endpoint: &str, request_id: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{method} {endpoint}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = endpoint,
        tollgate.request_id = request_id,
    );
    if !span.is_disabled() && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// A child span of `parent` for one lifecycle stage.
pub fn stage_span(parent: &Span, stage: &'static str) -> Span {
    tracing::info_span!(target: TARGET, parent: parent, "stage", otel.name = stage)
}

/// The span of one upstream attempt (a client span: its context goes to the provider).
pub fn attempt_span(
    parent: &Span,
    system: &str,
    provider: &str,
    model: &str,
    upstream_model: &str,
) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "upstream_attempt",
        otel.kind = "client",
        otel.name = %format_args!("upstream_attempt {provider}"),
        gen_ai.system = system,
        gen_ai.request.model = upstream_model,
        tollgate.provider = provider,
        tollgate.model = model,
    )
}

/// The span of one call to an MCP server (a client span: its context goes upstream).
pub fn mcp_span(
    parent: &Span,
    server: &str,
    transport: &str,
    method: Option<&str>,
    tool: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: parent,
        "mcp_call",
        otel.kind = "client",
        otel.name = %format_args!("mcp_call {server}"),
        mcp.server = server,
        mcp.transport = transport,
    );
    if let Some(method) = method {
        set(&span, "mcp.method.name", method.to_string());
    }
    if let Some(tool) = tool {
        set(&span, "gen_ai.tool.name", tool.to_string());
    }
    span
}

/// Sets an attribute on `span` (a no-op when traces are off).
pub fn set(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` as failed with `message`.
pub fn set_error(span: &Span, message: &str) {
    if !span.is_disabled() {
        span.set_status(opentelemetry::trace::Status::error(message.to_string()));
    }
}

/// The W3C `traceparent` (and `tracestate`) of the current span, for an outbound request;
/// empty when traces are off.
pub fn outbound_headers() -> Vec<(HeaderName, HeaderValue)> {
    let span = Span::current();
    if span.is_disabled() {
        return Vec::new();
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new()
        .inject_context(&span.context(), &mut HeaderInjector(&mut headers));
    headers
        .into_iter()
        .filter_map(|(name, value)| name.map(|n| (n, value)))
        .collect()
}

/// The GenAI `gen_ai.system` value of a provider family.
pub fn gen_ai_system(family: &str) -> &'static str {
    match family {
        "openai" => "openai",
        "azure" => "az.ai.openai",
        "anthropic" => "anthropic",
        "gemini" => "gcp.gemini",
        "vllm" => "vllm",
        "demo" => "tollgate.demo",
        "adapter" => "tollgate.adapter",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_derived_from_a_base_url() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn without_an_exporter_request_spans_are_disabled_at_their_call_site() {
        let spans = |dispatch: &tracing::Dispatch| {
            tracing::dispatcher::with_default(dispatch, || {
                let request = request_span(&HeaderMap::new(), "POST", "/v1/chat/completions", "id");
                let stage = stage_span(&request, "route");
                let attempt = attempt_span(&request, "openai", "p", "m", "u");
                [request, stage, attempt].map(|s| s.is_disabled())
            })
        };
        assert_eq!(spans(&subscriber(false, None)), [true; 3]);
        assert_eq!(spans(&subscriber(true, None)), [true; 3]);
        let provider = SdkTracerProvider::builder().build();
        assert_eq!(spans(&subscriber(false, Some(&provider))), [false; 3]);
    }

    #[test]
    fn spans_are_disabled_without_a_subscriber_and_nothing_is_propagated() {
        let span = request_span(&HeaderMap::new(), "POST", "/v1/chat/completions", "id");
        assert!(span.is_disabled());
        let _entered = span.enter();
        assert!(outbound_headers().is_empty());
    }
}
