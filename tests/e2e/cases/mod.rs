//! Test cases, one file per area.

mod anthropic;
mod budgets;
mod check;
mod docs;
mod errors;
mod faults;
mod gemini;
mod hardening;
mod keys;
mod mcp;
mod mcp_clients;
mod mcp_replicas;
mod mcp_stdio;
mod mcp_upstream;
mod mcp_virtual;
mod passthrough;
mod plugins;
mod policies;
mod sdk;
mod shutdown;
mod streaming;
mod translation;
mod unified;
mod usage;
mod vllm;
