//! Fuzzes `lifeboat::fuzzing::etcd_trailer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lifeboat::fuzzing::etcd_trailer(data);
});
