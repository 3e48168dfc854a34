//! Test cases, one file per area.

mod budgets;
mod check;
mod docs;
mod errors;
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
mod usage;
