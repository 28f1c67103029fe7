//! Offline inclusion proofs: a transaction, the header chain above it, and a finalization
//! certificate signed by more than two thirds of the genesis validators.

use commonware_codec::{Decode, Encode};
use commonware_cryptography::certificate::Verifier as _;
use ehrchain_chain::{Finalization, Scheme};
use ehrchain_types::{BlockHeader, CONSENSUS_NAMESPACE, Digest, Genesis, digest_from_hex, merkle};
use serde::{Deserialize, Serialize};

/// Most headers a proof may chain from the transaction's block to a finalized one.
pub const PROOF_HEADERS_MAX: usize = 1_024;

/// An inclusion proof, as served by `GET /chain/transactions/{hash}` and checked by
/// `ehrchain proof verify`. Every field is hex.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InclusionProof {
    pub chain_id: u64,
    pub transaction: String,
    pub position: u32,
    /// Encoded Merkle path from the transaction id to the header's `tx_root`.
    pub merkle_path: String,
    /// The transaction's block header, then each following header up to the finalized one.
    pub headers: Vec<String>,
    /// Finalization certificate of the last header.
    pub finalization: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("the proof is for chain {0}, the genesis is for chain {1}")]
    WrongChain(u64, u64),
    #[error("the transaction is not under the block's transaction root")]
    NotIncluded,
    #[error("header {0} does not link to the header before it")]
    BrokenLink(usize),
    #[error("the finalization does not certify the last header")]
    WrongBlock,
    #[error("the finalization is not signed by more than two thirds of the validators")]
    BadFinalization,
}

/// What a verified proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub transaction: Digest,
    pub height: u64,
    pub block: Digest,
    pub finalized_height: u64,
}

fn hex_bytes(text: &str, what: &'static str) -> Result<Vec<u8>, ProofError> {
    hex::decode(text).map_err(|_| ProofError::Malformed(what))
}

impl InclusionProof {
    /// Check the proof against the validator set of `genesis`, with no network access.
    pub fn verify(&self, genesis: &Genesis) -> Result<Verified, ProofError> {
        if self.chain_id != genesis.chain_id {
            return Err(ProofError::WrongChain(self.chain_id, genesis.chain_id));
        }
        if self.headers.is_empty() || self.headers.len() > PROOF_HEADERS_MAX {
            return Err(ProofError::Malformed("header count"));
        }
        let transaction =
            digest_from_hex(&self.transaction).ok_or(ProofError::Malformed("transaction"))?;
        let headers = self
            .headers
            .iter()
            .map(|h| {
                BlockHeader::decode(&hex_bytes(h, "header")?)
                    .map_err(|_| ProofError::Malformed("header"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = &headers[0];
        if first.chain_id != genesis.chain_id {
            return Err(ProofError::WrongChain(first.chain_id, genesis.chain_id));
        }
        let path = hex_bytes(&self.merkle_path, "merkle path")?;
        merkle::verify(&path, &transaction, self.position, &first.tx_root)
            .map_err(|_| ProofError::NotIncluded)?;
        for (index, pair) in headers.windows(2).enumerate() {
            if pair[1].parent != pair[0].digest() || pair[1].height != pair[0].height + 1 {
                return Err(ProofError::BrokenLink(index + 1));
            }
        }
        let last = headers.last().expect("non-empty");
        let validators = genesis
            .validator_keys()
            .map_err(|_| ProofError::Malformed("genesis validators"))?;
        let participants = commonware_utils::ordered::Set::try_from(validators)
            .map_err(|_| ProofError::Malformed("genesis validators"))?;
        let verifier = Scheme::verifier(CONSENSUS_NAMESPACE, participants);
        let bytes = hex_bytes(&self.finalization, "finalization")?;
        let finalization = Finalization::decode_cfg(
            commonware_codec::Copying(&bytes),
            &verifier.certificate_codec_config(),
        )
        .map_err(|_| ProofError::Malformed("finalization"))?;
        if finalization.proposal.payload != last.digest() {
            return Err(ProofError::WrongBlock);
        }
        let mut rng = rand::rng();
        if !finalization.verify(&mut rng, &verifier, &commonware_parallel::Sequential) {
            return Err(ProofError::BadFinalization);
        }
        Ok(Verified {
            transaction,
            height: first.height,
            block: first.digest(),
            finalized_height: last.height,
        })
    }
}

/// Encode a finalization for a proof.
pub fn encode_finalization(finalization: &Finalization) -> String {
    hex::encode(finalization.encode())
}
