//! Fuzzes `lifeboat::fuzzing::blob`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::blob(data);
});
