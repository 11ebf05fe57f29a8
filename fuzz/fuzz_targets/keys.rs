//! Fuzzes `lifeboat::fuzzing::keys`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::keys(data);
});
