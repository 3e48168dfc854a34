//! tollgate: a governed gateway for LLM and MCP traffic.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. The request lifecycle is
//! documented once, on [`pipeline`].

pub mod admin;
pub mod admin_auth;
pub mod cli;
pub mod clock;
pub mod diagnostic;
pub mod error;
pub mod family;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod mcp;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod policy;
pub mod server;
pub mod spend;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod translate;
pub mod ui;
pub mod upstream;
pub mod usage;
