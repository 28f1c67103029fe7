//! Untrusted transaction bytes (API, gossip): decoding never panics, and what decodes
//! re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = ehrchain_types::Transaction::decode(data) {
        assert_eq!(tx.bytes(), data);
        let _ = tx.verify(1);
    }
});
