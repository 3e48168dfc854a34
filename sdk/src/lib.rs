//! Write [tollgate](https://github.com/tollgate-gw/tollgate) plugins in Rust.
//!
//! A tollgate plugin is a WebAssembly component (`wasm32-wasip2`) the gateway runs in a sandbox
//! on the traffic it governs. This crate hides the generated component bindings behind a small
//! typed API:
//!
//! - a **guardrail** implements [`Guardrail`]: it sees the [`Request`] before the provider does
//!   (and before any budget is held), the non-streamed [`Response`], and a sliding
//!   [`StreamWindow`] over streamed answers, and answers a [`Verdict`]: allow, deny with a code
//!   and reason, or rewrite (mask) text parts, with [`Finding`]s by category for the usage
//!   record; since WIT 0.2.0 it can also inspect MCP tool traffic: a [`ToolCall`]'s arguments
//!   before the MCP server sees them and a [`ToolResult`] before the client does;
//! - a **provider adapter** implements [`ProviderAdapter`]: it translates OpenAI chat requests
//!   into a provider's native HTTP request and the answers back, for providers with
//!   `family = "adapter"` (see [`adapter`]);
//! - [`export!`] turns the type into the component's exports.
//!
//! ```
//! use tollgate_plugin_sdk::{Config, Guardrail, Request, Verdict};
//!
//! struct NoShouting;
//!
//! impl Guardrail for NoShouting {
//!     fn new(_config: &Config) -> Result<Self, String> {
//!         Ok(NoShouting)
//!     }
//!
//!     fn check_request(&mut self, request: &Request) -> Verdict {
//!         let shouting = request.parts().filter(|(_, p)| p.text.contains("!!!")).count();
//!         if shouting > 0 {
//!             return Verdict::deny("", "please do not shout").with_finding("shouting", shouting as u32);
//!         }
//!         Verdict::allow()
//!     }
//! }
//!
//! tollgate_plugin_sdk::export!(NoShouting);
//!
//! // Plugins are plain Rust: test them natively, no wasm needed.
//! let mut guard = NoShouting::new(&Config::empty()).unwrap();
//! let request = Request::new("demo-chat").with_message(tollgate_plugin_sdk::Role::User, "hi!!!");
//! assert!(guard.check_request(&request).is_deny());
//! ```
//!
//! Guardrails are built for the WIT package `tollgate:plugin@0.2.0` ([`WIT_VERSION`],
//! `wit/0.2.0/plugin.wit`); provider adapters for `tollgate:plugin@0.1.0`
//! ([`ADAPTER_WIT_VERSION`], `wit/plugin.wit`). Both ship in this crate's `wit/` folder. See
//! the README for the tutorial and the semver policy.

extern crate self as tollgate_plugin_sdk;

pub mod adapter;
mod config;
pub mod text;
pub mod tool;
mod verdict;
mod view;

pub use adapter::{AdapterError, HttpMessage, ProviderAdapter, SseEvent, Usage};
pub use config::Config;
pub use tool::{ToolCall, ToolResult};
pub use verdict::{Action, Edit, Finding, Findings, SAFETY_BLOCKED, Verdict};
pub use view::{Caller, Message, Request, Response, Role, StreamWindow, TextPart, Tool};

/// The WIT package version this SDK builds guardrails for. The gateway refuses plugins built for
/// a version it does not support, naming both; it also still loads guardrails built for 0.1.0.
pub const WIT_VERSION: &str = "0.2.0";

/// The WIT package version this SDK builds provider adapters for.
pub const ADAPTER_WIT_VERSION: &str = "0.1.0";

/// A guardrail plugin. Export it with [`export!`].
///
/// One value is created per sandbox instance, with the manifest's configuration; the gateway
/// keeps a few warm instances per plugin and calls them one request at a time, so `&mut self`
/// state (compiled patterns, caches) is safe. An instance that traps is thrown away.
pub trait Guardrail: Sized + 'static {
    /// Builds the guardrail from its manifest `[config]`. An error refuses the plugin when the
    /// policy directory loads, with this message.
    fn new(config: &Config) -> Result<Self, String>;

    /// The `request` phase.
    fn check_request(&mut self, request: &Request) -> Verdict;

    /// The `response` phase (non-streamed answers). Allows by default.
    fn check_response(&mut self, response: &Response) -> Verdict {
        let _ = response;
        Verdict::allow()
    }

    /// The `stream` phase (one window of a streamed answer). Allows by default.
    fn check_stream(&mut self, window: &StreamWindow) -> Verdict {
        let _ = window;
        Verdict::allow()
    }

    /// The `tool_call` phase: an MCP tool call's arguments before the server sees them. A
    /// rewrite names [`ToolCall::parts`]; a denial answers `403 mcp_guardrail_block`. Allows by
    /// default.
    fn check_tool_call(&mut self, call: &ToolCall) -> Verdict {
        let _ = call;
        Verdict::allow()
    }

    /// The `tool_result` phase: an MCP tool's result before the client sees it. A rewrite
    /// names [`ToolResult::parts`]; a denial replaces the result with a JSON-RPC error
    /// (`mcp_guardrail_block`). Allows by default.
    fn check_tool_result(&mut self, result: &ToolResult) -> Verdict {
        let _ = result;
        Verdict::allow()
    }
}

/// Exports a [`Guardrail`] (`export!(MyGuard)`) or a [`ProviderAdapter`]
/// (`export!(adapter: MyAdapter)`) as the component's entry points.
///
/// Use it once, in the plugin crate's `lib.rs` (crate type `cdylib`, built with
/// `cargo build --release --target wasm32-wasip2`). On other targets it expands to nothing, so
/// the same crate builds and unit-tests natively.
#[macro_export]
macro_rules! export {
    (adapter: $ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static __TOLLGATE_ADAPTER: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __TollgateAdapterExport;
            impl $crate::__bindings::adapter::Dispatch for __TollgateAdapterExport {
                type Adapter = $ty;
                fn slot() -> &'static ::std::thread::LocalKey<
                    ::std::cell::RefCell<::std::option::Option<$ty>>,
                > {
                    &__TOLLGATE_ADAPTER
                }
            }
            type __TollgateAdapter = $crate::__bindings::adapter::Export<__TollgateAdapterExport>;
            $crate::__bindings::adapter::__export_adapter!(
                __TollgateAdapter with_types_in $crate::__bindings::adapter
            );
        };
    };
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static __TOLLGATE_GUARDRAIL: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __TollgateGuardrailExport;
            impl $crate::__bindings::guardrail::Dispatch for __TollgateGuardrailExport {
                type Guardrail = $ty;
                fn slot() -> &'static ::std::thread::LocalKey<
                    ::std::cell::RefCell<::std::option::Option<$ty>>,
                > {
                    &__TOLLGATE_GUARDRAIL
                }
            }
            type __TollgateGuardrail =
                $crate::__bindings::guardrail::Export<__TollgateGuardrailExport>;
            $crate::__bindings::guardrail::__export_guardrail!(
                __TollgateGuardrail with_types_in $crate::__bindings::guardrail
            );
        };
    };
}

/// Generated component bindings and the glue between them and the typed API. Not part of the
/// public API: use [`export!`].
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod __bindings {
    #[cfg(feature = "guardrail")]
    pub mod guardrail {
        wit_bindgen::generate!({
            world: "guardrail",
            path: "wit/0.2.0/plugin.wit",
            pub_export_macro: true,
            export_macro_name: "__export_guardrail",
            default_bindings_module: "tollgate_plugin_sdk::__bindings::guardrail",
            runtime_path: "tollgate_plugin_sdk::__bindings::rt",
        });

        use std::cell::RefCell;
        use std::marker::PhantomData;
        use std::thread::LocalKey;

        use exports::tollgate::plugin::guard::Guest;
        use exports::tollgate::plugin::tool_guard::{self as tool_wit, Guest as ToolGuest};
        use tollgate::plugin::types as wit;

        /// Connects the generated exports to the user's guardrail stored in a thread local.
        pub trait Dispatch: 'static {
            type Guardrail: crate::Guardrail;
            fn slot() -> &'static LocalKey<RefCell<Option<Self::Guardrail>>>;
        }

        /// The type the generated export macro is given.
        pub struct Export<D>(PhantomData<D>);

        fn with<D: Dispatch>(f: impl FnOnce(&mut D::Guardrail) -> crate::Verdict) -> wit::Verdict {
            D::slot().with(|slot| match slot.borrow_mut().as_mut() {
                Some(guard) => from_verdict(f(guard)),
                None => from_verdict(crate::Verdict::deny(
                    "plugin_not_configured",
                    "the plugin was called before configure",
                )),
            })
        }

        impl<D: Dispatch> Guest for Export<D> {
            fn configure(config: String) -> Result<(), String> {
                let config = crate::Config::from_json(&config)?;
                let guard = <D::Guardrail as crate::Guardrail>::new(&config)?;
                D::slot().with(|slot| *slot.borrow_mut() = Some(guard));
                Ok(())
            }

            fn check_request(request: wit::RequestView) -> wit::Verdict {
                let request = to_request(request);
                with::<D>(|g| crate::Guardrail::check_request(g, &request))
            }

            fn check_response(response: wit::ResponseView) -> wit::Verdict {
                let response = crate::Response {
                    model: response.model,
                    endpoint: response.endpoint,
                    messages: response.messages.into_iter().map(to_message).collect(),
                    caller: to_caller(response.caller),
                };
                with::<D>(|g| crate::Guardrail::check_response(g, &response))
            }

            fn check_stream(window: wit::StreamView) -> wit::Verdict {
                let window = crate::StreamWindow {
                    model: window.model,
                    endpoint: window.endpoint,
                    index: window.index,
                    window: crate::TextPart {
                        id: window.window.id,
                        text: window.window.text,
                    },
                    seen: window.seen as usize,
                    last: window.last,
                    caller: to_caller(window.caller),
                };
                with::<D>(|g| crate::Guardrail::check_stream(g, &window))
            }
        }

        impl<D: Dispatch> ToolGuest for Export<D> {
            fn check_tool_call(call: tool_wit::ToolCall) -> wit::Verdict {
                let call = crate::ToolCall {
                    server: call.server,
                    tool: call.tool,
                    arguments: call.arguments,
                    parts: call.parts.into_iter().map(to_part).collect(),
                    caller: to_caller(call.caller),
                    ..crate::ToolCall::default()
                };
                with::<D>(|g| crate::Guardrail::check_tool_call(g, &call))
            }

            fn check_tool_result(result: tool_wit::ToolResult) -> wit::Verdict {
                let result = crate::ToolResult {
                    server: result.server,
                    tool: result.tool,
                    is_error: result.is_error,
                    result: result.result,
                    parts: result.parts.into_iter().map(to_part).collect(),
                    caller: to_caller(result.caller),
                    ..crate::ToolResult::default()
                };
                with::<D>(|g| crate::Guardrail::check_tool_result(g, &result))
            }
        }

        fn to_part(p: wit::TextPart) -> crate::TextPart {
            crate::TextPart {
                id: p.id,
                text: p.text,
            }
        }

        fn to_role(role: wit::Role) -> crate::Role {
            match role {
                wit::Role::System => crate::Role::System,
                wit::Role::Developer => crate::Role::Developer,
                wit::Role::User => crate::Role::User,
                wit::Role::Assistant => crate::Role::Assistant,
                wit::Role::Tool => crate::Role::Tool,
                wit::Role::Other => crate::Role::Other,
            }
        }

        fn to_message(message: wit::Message) -> crate::Message {
            crate::Message {
                role: to_role(message.role),
                name: message.name,
                parts: message
                    .parts
                    .into_iter()
                    .map(|p| crate::TextPart {
                        id: p.id,
                        text: p.text,
                    })
                    .collect(),
            }
        }

        fn to_caller(caller: wit::Caller) -> crate::Caller {
            crate::Caller {
                key_id: caller.key_id,
                key_name: caller.key_name,
                team: caller.team,
                metadata: caller.metadata,
            }
        }

        fn to_request(request: wit::RequestView) -> crate::Request {
            crate::Request {
                model: request.model,
                endpoint: request.endpoint,
                stream: request.stream,
                messages: request.messages.into_iter().map(to_message).collect(),
                tools: request
                    .tools
                    .into_iter()
                    .map(|t| crate::Tool {
                        name: t.name,
                        description: t.description,
                    })
                    .collect(),
                metadata: request.metadata,
                caller: to_caller(request.caller),
            }
        }

        fn from_verdict(verdict: crate::Verdict) -> wit::Verdict {
            wit::Verdict {
                action: match verdict.action {
                    crate::Action::Allow => wit::Action::Allow,
                    crate::Action::Deny { code, reason } => {
                        wit::Action::Deny(wit::Denial { code, reason })
                    }
                    crate::Action::Rewrite(edits) => wit::Action::Rewrite(
                        edits
                            .into_iter()
                            .map(|e| wit::Edit {
                                part: e.part,
                                text: e.text,
                            })
                            .collect(),
                    ),
                },
                findings: verdict
                    .findings
                    .into_iter()
                    .map(|f| wit::Finding {
                        category: f.category,
                        count: f.count,
                    })
                    .collect(),
                score: verdict.score,
            }
        }
    }

    // Each world's bindings embed its component type; a plugin must carry exactly one, so
    // each world is behind its own feature (`guardrail`, on by default; `adapter`).
    #[cfg(feature = "adapter")]
    pub mod adapter {
        wit_bindgen::generate!({
            world: "provider-adapter",
            path: "wit/plugin.wit",
            pub_export_macro: true,
            export_macro_name: "__export_adapter",
            default_bindings_module: "tollgate_plugin_sdk::__bindings::adapter",
            runtime_path: "tollgate_plugin_sdk::__bindings::rt",
            type_section_suffix: "adapter",
        });

        use std::cell::RefCell;
        use std::marker::PhantomData;
        use std::thread::LocalKey;

        use exports::tollgate::plugin::adapter::Guest;
        use tollgate::plugin::types as wit;

        /// Connects the generated exports to the user's adapter stored in a thread local.
        pub trait Dispatch: 'static {
            type Adapter: crate::ProviderAdapter;
            fn slot() -> &'static LocalKey<RefCell<Option<Self::Adapter>>>;
        }

        /// The type the generated export macro is given.
        pub struct Export<D>(PhantomData<D>);

        fn not_configured() -> wit::AdapterError {
            wit::AdapterError {
                code: "plugin_not_configured".into(),
                message: "the adapter was called before configure".into(),
            }
        }

        fn to_http(m: wit::HttpMessage) -> crate::HttpMessage {
            crate::HttpMessage {
                status: m.status,
                path: m.path,
                headers: m.headers,
                body: m.body,
            }
        }

        fn from_http(m: crate::HttpMessage) -> wit::HttpMessage {
            wit::HttpMessage {
                status: m.status,
                path: m.path,
                headers: m.headers,
                body: m.body,
            }
        }

        fn from_error(e: crate::AdapterError) -> wit::AdapterError {
            wit::AdapterError {
                code: e.code,
                message: e.message,
            }
        }

        impl<D: Dispatch> Guest for Export<D> {
            fn configure(config: String) -> Result<(), String> {
                let config = crate::Config::from_json(&config)?;
                let adapter = <D::Adapter as crate::ProviderAdapter>::new(&config)?;
                D::slot().with(|slot| *slot.borrow_mut() = Some(adapter));
                Ok(())
            }

            fn transform_request(
                request: wit::HttpMessage,
            ) -> Result<wit::HttpMessage, wit::AdapterError> {
                D::slot().with(|slot| match slot.borrow_mut().as_mut() {
                    Some(a) => crate::ProviderAdapter::transform_request(a, to_http(request))
                        .map(from_http)
                        .map_err(from_error),
                    None => Err(not_configured()),
                })
            }

            fn transform_response(
                response: wit::HttpMessage,
            ) -> Result<wit::HttpMessage, wit::AdapterError> {
                D::slot().with(|slot| match slot.borrow_mut().as_mut() {
                    Some(a) => crate::ProviderAdapter::transform_response(a, to_http(response))
                        .map(from_http)
                        .map_err(from_error),
                    None => Err(not_configured()),
                })
            }

            fn transform_stream_event(
                event: wit::SseEvent,
            ) -> Result<Vec<wit::SseEvent>, wit::AdapterError> {
                let event = crate::SseEvent {
                    event: event.event,
                    data: event.data,
                };
                D::slot().with(|slot| match slot.borrow_mut().as_mut() {
                    Some(a) => crate::ProviderAdapter::transform_stream_event(a, event)
                        .map(|events| {
                            events
                                .into_iter()
                                .map(|e| wit::SseEvent {
                                    event: e.event,
                                    data: e.data,
                                })
                                .collect()
                        })
                        .map_err(from_error),
                    None => Err(not_configured()),
                })
            }

            fn extract_usage(body: String) -> Option<wit::Usage> {
                D::slot().with(|slot| {
                    let mut slot = slot.borrow_mut();
                    let usage = crate::ProviderAdapter::extract_usage(slot.as_mut()?, &body)?;
                    Some(wit::Usage {
                        input_tokens: usage.input_tokens,
                        output_tokens: usage.output_tokens,
                        cached_input_tokens: usage.cached_input_tokens,
                        reasoning_tokens: usage.reasoning_tokens,
                    })
                })
            }
        }
    }

    /// The wit-bindgen runtime, re-exported so plugin crates need no direct dependency.
    pub use wit_bindgen::rt;
}
