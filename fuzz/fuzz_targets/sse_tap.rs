//! Fuzz target `sse_tap`: see `tollgate::fuzzing::sse_tap`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::sse_tap(data);
});
