//! End-to-end tests: the real `tollgate` binary, mock upstreams on loopback, real HTTP.

// Harness helpers outside `#[test]` functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod common;
