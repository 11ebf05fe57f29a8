//! Fuzzes `lifeboat::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::config(data);
});
