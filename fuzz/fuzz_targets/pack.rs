//! Fuzzes `lifeboat::fuzzing::pack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::pack(data);
});
