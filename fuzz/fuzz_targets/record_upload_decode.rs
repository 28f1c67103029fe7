//! Untrusted record uploads (`POST /records`): decoding never panics and respects limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(upload) = ehrchain_types::wire::Upload::decode(data) {
        assert!(upload.wraps.len() <= ehrchain_types::wire::UPLOAD_WRAPS_MAX);
        assert!(!upload.envelope.is_empty());
        assert!(upload.transaction.len() <= ehrchain_types::limits::TRANSACTION_SIZE_BYTES_MAX);
    }
});
