//! End-to-end tests: the real `tollgate` binary, mock upstreams on loopback, real HTTP.

mod cases;
mod common;
