//! Test cases, one file per area.

mod adapter;
mod anthropic;
mod budgets;
mod check;
mod docs;
mod errors;
mod faults;
mod gemini;
mod hardening;
mod keys;
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
