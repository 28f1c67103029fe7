//! Untrusted proof files checked offline: malformed proofs are refused, never a panic. The
//! client library's reader (`client::proof::parse`: a proof file or a FHIR `Provenance` with
//! the proof in base64) is driven with the same bytes, and so is a block's finality proof
//! (`client::proof::parse_block`, what the block explorer checks in the browser).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let genesis = ehrchain_types::Genesis {
        chain_id: 1,
        timestamp_ms: 0,
        validators: vec![ehrchain_types::genesis::GenesisValidator {
            name: "member-0".into(),
            public_key: "8f477cecaf285b01194fa6e2df7988e64c0530443ed69e7ab2a451ac1b701d08".into(),
            p2p_address: "127.0.0.1:1".into(),
            encryption_key: "00".repeat(32),
        }],
        auditors: Vec::new(),
        rules: Default::default(),
    };
    if let Ok(proof) = serde_json::from_slice::<ehrchain_types::proof::InclusionProof>(data) {
        let _ = proof.verify(&genesis);
    }
    if let Ok(proof) = ehrchain_client::proof::parse(data) {
        let _ = proof.verify(&genesis);
    }
    if let Ok(proof) = ehrchain_client::proof::parse_block(data) {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let _ = proof.verify_with(&genesis, &mut rng);
    }
});
