//! Fuzz target `cel_rule`: see `tollgate::fuzzing::cel_rule`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::cel_rule(data);
});
