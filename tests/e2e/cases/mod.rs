//! Test cases, one file per area.

mod budgets;
mod check;
mod docs;
mod errors;
mod keys;
mod ledger;
mod passthrough;
mod paying;
mod plugins;
mod policies;
mod sdk;
mod shutdown;
mod streaming;
mod usage;
