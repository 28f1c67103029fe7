//! Untrusted gossip batches and bulk imports: decoding never panics and respects limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(batch) = ehrchain_chain::engine::decode_batch(data) {
        assert!(batch.len() <= ehrchain_types::limits::GOSSIP_BATCH_TRANSACTIONS_MAX);
    }
});
