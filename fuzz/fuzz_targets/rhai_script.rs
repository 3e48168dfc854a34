//! Fuzz target `rhai_script`: see `tollgate::fuzzing::rhai_script`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::rhai_script(data);
});
