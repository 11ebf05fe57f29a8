//! Fuzzes `lifeboat::fuzzing::kubernetes_document`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::kubernetes_document(data);
});
