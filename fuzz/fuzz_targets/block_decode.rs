//! Untrusted block bytes (peers, the block log): decoding never panics and is canonical.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = ehrchain_types::Block::decode(data) {
        assert_eq!(block.encode(), data);
    }
});
