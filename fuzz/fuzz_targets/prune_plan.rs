//! Fuzzes `lifeboat::fuzzing::prune_plan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::prune_plan(data);
});
