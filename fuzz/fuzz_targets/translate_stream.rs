//! Fuzz target `translate_stream`: see `tollgate::fuzzing::translate_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::translate_stream(data);
});
