//! Fuzzes `lifeboat::fuzzing::index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::index(data);
});
