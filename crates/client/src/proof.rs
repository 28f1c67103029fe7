//! Offline proof checks: is this transaction (an anchor, a consent, a recorded read) in a
//! block that more than two thirds of the validators finalized? Needs only the genesis and the
//! proof, so a patient or an auditor can check it on their own machine or in the browser.

use crate::Error;
pub use ehrchain_types::Genesis;
/// Checked offline with [`InclusionProof::verify`] against a genesis.
pub use ehrchain_types::proof::{BlockProof, InclusionProof, ProofError, Verified, VerifiedBlock};

/// Largest proof document read (a proof file or a FHIR `Provenance` carrying one): 1,024
/// headers and thousands of validator-set changes fit well inside it.
pub const PROOF_DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// An inclusion proof from its JSON (as `GET /chain/transactions/{hash}` serves it under
/// `proof`), or from a FHIR `Provenance` whose `signature[0].data` carries it in base64.
pub fn parse(document: &[u8]) -> Result<InclusionProof, Error> {
    use base64::Engine as _;
    if document.len() > PROOF_DOCUMENT_BYTES_MAX {
        return Err(Error::Invalid("the proof document is too large".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(document).map_err(|_| Error::Invalid("not JSON".into()))?;
    if value["resourceType"] == "Provenance" {
        let data = value["signature"][0]["data"]
            .as_str()
            .ok_or_else(|| Error::Invalid("the Provenance carries no signature.data".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| Error::Invalid("signature.data is not base64".into()))?;
        return serde_json::from_slice(&bytes)
            .map_err(|_| Error::Invalid("signature.data is not an inclusion proof".into()));
    }
    serde_json::from_value(value).map_err(|_| Error::Invalid("not a proof file".into()))
}

/// A block's finality proof from its JSON, as `GET /chain/blocks/{height}/proof` serves it.
pub fn parse_block(document: &[u8]) -> Result<BlockProof, Error> {
    if document.len() > PROOF_DOCUMENT_BYTES_MAX {
        return Err(Error::Invalid("the proof document is too large".into()));
    }
    serde_json::from_slice(document).map_err(|_| Error::Invalid("not a block proof".into()))
}

/// A genesis document (`genesis.json`), with its validator keys checked.
pub fn genesis(document: &[u8]) -> Result<Genesis, Error> {
    let genesis: Genesis = serde_json::from_slice(document)
        .map_err(|error| Error::Invalid(format!("invalid genesis: {error}")))?;
    genesis
        .validator_keys()
        .map_err(|error| Error::Invalid(format!("invalid validators in the genesis: {error}")))?;
    Ok(genesis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn a_provenance_carries_the_same_proof_as_the_file() {
        let proof = InclusionProof {
            chain_id: 7,
            transaction: "00".repeat(32),
            position: 0,
            merkle_path: String::new(),
            headers: vec!["ab".into()],
            finalization: "cd".into(),
            epochs: vec![],
        };
        let file = serde_json::to_vec(&proof).unwrap();
        assert_eq!(parse(&file).unwrap(), proof);
        let provenance = serde_json::json!({
            "resourceType": "Provenance",
            "signature": [{"data": base64::engine::general_purpose::STANDARD.encode(&file)}],
        });
        assert_eq!(
            parse(&serde_json::to_vec(&provenance).unwrap()).unwrap(),
            proof
        );
        assert!(parse(b"{\"resourceType\": \"Provenance\"}").is_err());
        assert!(parse(b"not json").is_err());
        // A proof that parses is still checked: this one certifies nothing.
        let genesis = Genesis {
            chain_id: 7,
            timestamp_ms: 0,
            validators: vec![],
            auditors: vec![],
            rules: Default::default(),
        };
        assert!(proof.verify(&genesis).is_err());
    }
}
