//! Untrusted consent bodies (`POST /consents`) and share bundles: decoding never panics, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]
use ehrchain_crypto::Share;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((tx, share)) = ehrchain_types::wire::decode_consent(data) {
        let _ = ehrchain_types::Transaction::decode(tx);
        if let Ok(bundle) = Share::decode(share) {
            assert_eq!(bundle.encode(), share);
        }
    }
    if let Ok(bundle) = Share::decode(data) {
        assert_eq!(bundle.encode(), data);
    }
});
