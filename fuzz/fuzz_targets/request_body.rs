//! Fuzz target `request_body`: see `tollgate::fuzzing::request_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::request_body(data);
});
