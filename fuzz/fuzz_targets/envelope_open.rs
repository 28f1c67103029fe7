//! Untrusted envelopes and wraps: opening never panics and never yields plaintext for bytes
//! that were not sealed with the key. The same holds for an entry of a sealed page (`GET
//! /ui/sealed`, JSON), which the portal opens in wasm with `client::record::open_sealed`.
#![no_main]
use ehrchain_crypto::{Binding, DataKey, EncryptionKey, Wrap, open, unwrap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let binding = Binding {
        record: [1; 16],
        version: 1,
        patient: [2; 16],
    };
    let key = EncryptionKey::from_seed(&[3; 32]);
    if let Ok(wrap) = Wrap::decode(data.get(..ehrchain_crypto::WRAP_BYTES).unwrap_or(data)) {
        assert!(unwrap(&wrap, &key, &binding, &[0; 32]).is_err());
    }
    let data_key = DataKey::generate().expect("random");
    assert!(open(&data_key, &binding, data).is_err());
    if let Ok(entry) = serde_json::from_slice::<serde_json::Value>(data) {
        let reader = ehrchain_client::Signer::from_seed(&[3; 32]);
        assert!(ehrchain_client::record::open_sealed(&reader, &entry).is_err());
    }
});
