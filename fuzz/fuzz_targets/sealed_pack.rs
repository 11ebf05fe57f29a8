//! Fuzzes `lifeboat::fuzzing::sealed_pack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::sealed_pack(data);
});
