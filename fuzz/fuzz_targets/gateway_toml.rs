//! Fuzz target `gateway_toml`: see `tollgate::fuzzing::gateway_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::gateway_toml(data);
});
