//! Fuzz target `stream_guard`: see `tollgate::fuzzing::stream_guard`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::stream_guard(data);
});
