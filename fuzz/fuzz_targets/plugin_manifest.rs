//! Fuzz target `plugin_manifest`: see `tollgate::fuzzing::plugin_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: tollgate::fuzzing::init(), |data: &[u8]| {
    tollgate::fuzzing::plugin_manifest(data);
});
