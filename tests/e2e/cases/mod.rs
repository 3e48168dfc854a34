//! Test cases, one file per area.

mod budgets;
mod check;
mod docs;
mod errors;
mod faults;
mod hardening;
mod keys;
mod passthrough;
mod plugins;
mod policies;
mod sdk;
mod shutdown;
mod streaming;
mod usage;
