//! Offline inclusion proofs: a transaction, the header chain above it, and a finalization
//! certificate signed by more than two thirds of the validators of the block's epoch.
//!
//! The verifier starts from the genesis validators and follows every change of the set the
//! proof carries (`epochs`): the last block of the epoch before a change commits to the new
//! set in its state root ([`epoch_root`]) and is certified by the old set. Epochs whose
//! set did not change are not carried; like any light client, the check then relies on
//! validators that have since left not colluding to certify a history of their own (a
//! long-range attack). `ehrchain verify` replays the whole chain and needs no such trust.

//!
//! This is the light client's part of the ledger: it needs only the genesis and the proof, so
//! the CLI, the simulation and the browser (through `client`) all check proofs with it.

use crate::{
    BlockHeader, CONSENSUS_NAMESPACE, Digest, Genesis, PublicKey, digest_from_hex, merkle, sha256,
};
use commonware_codec::Decode;
use commonware_cryptography::certificate::Verifier as _;
use serde::{Deserialize, Serialize};

/// The signing scheme of consensus votes and certificates.
pub type Scheme = commonware_consensus::simplex::scheme::ed25519::Scheme;

/// A finalization certificate for one block.
pub type Finalization = commonware_consensus::simplex::types::Finalization<Scheme, Digest>;

/// The root of an epoch's last block: its state root bound to the next epoch's validators.
/// Layout hashed (after the domain `ehrchain-epoch-v1` and the state root): the next epoch
/// (u64 BE), the validator count (u32 BE), then each 32-byte Ed25519 key in sorted order.
pub fn epoch_root(state_root: &Digest, next_epoch: u64, validators: &[PublicKey]) -> Digest {
    let mut bytes = Vec::with_capacity(8 + 4 + validators.len() * 32);
    bytes.extend_from_slice(&next_epoch.to_be_bytes());
    bytes.extend_from_slice(&(validators.len() as u32).to_be_bytes());
    for key in validators {
        bytes.extend_from_slice(key.as_ref());
    }
    sha256(&[b"ehrchain-epoch-v1", state_root.as_ref(), &bytes])
}

/// Most headers a proof may chain from the transaction's block to a finalized one.
pub const PROOF_HEADERS_MAX: usize = 1_024;

/// Most validator-set changes one proof may carry.
pub const PROOF_EPOCHS_MAX: usize = 4_096;

/// A change of the validator set: who validates from `epoch` on, and the certified block
/// before it that commits to them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochHandoff {
    pub epoch: u64,
    /// The new validators' Ed25519 keys, sorted.
    pub validators: Vec<String>,
    /// Header of the last block of the epoch before (height `epoch * epoch_blocks - 1`).
    pub boundary_header: String,
    /// That block's state root before it was bound to the new validators.
    pub state_root: String,
    /// Its finalization certificate, by the outgoing validators.
    pub finalization: String,
}

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
    /// Every change of the validator set since genesis up to the last header's epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<EpochHandoff>,
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
    #[error("the change of validators at epoch {0} is not certified")]
    BadHandoff(u64),
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
        self.verify_with(genesis, &mut rand::rng())
    }

    /// [`Self::verify`] with the randomness that batches the certificate's signature checks
    /// given: it must be unpredictable to whoever made the proof (a browser seeds it from
    /// WebCrypto, where the thread RNG has no source).
    pub fn verify_with<R: rand::CryptoRng>(
        &self,
        genesis: &Genesis,
        rng: &mut R,
    ) -> Result<Verified, ProofError> {
        let headers = headers_of(self.chain_id, &self.headers, genesis)?;
        let first = &headers[0];
        let transaction =
            digest_from_hex(&self.transaction).ok_or(ProofError::Malformed("transaction"))?;
        let path = hex_bytes(&self.merkle_path, "merkle path")?;
        merkle::verify(&path, &transaction, self.position, &first.tx_root)
            .map_err(|_| ProofError::NotIncluded)?;
        finality(&headers, &self.finalization, &self.epochs, genesis, rng)?;
        let last = headers.last().expect("non-empty");
        Ok(Verified {
            transaction,
            height: first.height,
            block: first.digest(),
            finalized_height: last.height,
        })
    }
}

/// Check that `headers` link one to the next and that `finalization` certifies the last of
/// them, signed by the validators of its epoch as reached from the genesis set through the
/// certified changes in `epochs`. Answers how many validators signed for that epoch.
fn finality<R: rand::CryptoRng>(
    headers: &[BlockHeader],
    finalization: &str,
    epochs: &[EpochHandoff],
    genesis: &Genesis,
    rng: &mut R,
) -> Result<usize, ProofError> {
    for (index, pair) in headers.windows(2).enumerate() {
        if pair[1].parent != pair[0].digest() || pair[1].height != pair[0].height + 1 {
            return Err(ProofError::BrokenLink(index + 1));
        }
    }
    let last = headers.last().expect("non-empty");
    let epoch_blocks = genesis.rules.epoch_blocks.max(1);
    let mut validators = genesis
        .validator_keys()
        .map_err(|_| ProofError::Malformed("genesis validators"))?;
    let mut epoch = 0;
    if epochs.len() > PROOF_EPOCHS_MAX {
        return Err(ProofError::Malformed("epoch count"));
    }
    for handoff in epochs {
        if handoff.epoch <= epoch
            || handoff.validators.is_empty()
            || handoff.validators.len() > crate::limits::VALIDATORS_MAX
        {
            return Err(ProofError::Malformed("epochs"));
        }
        let header = BlockHeader::decode(&hex_bytes(&handoff.boundary_header, "header")?)
            .map_err(|_| ProofError::Malformed("header"))?;
        if header.chain_id != genesis.chain_id {
            return Err(ProofError::WrongChain(header.chain_id, genesis.chain_id));
        }
        if header.height.checked_add(1) != handoff.epoch.checked_mul(epoch_blocks) {
            return Err(ProofError::BadHandoff(handoff.epoch));
        }
        let next = handoff
            .validators
            .iter()
            .map(|k| crate::public_key_from_hex(k))
            .collect::<Option<Vec<_>>>()
            .ok_or(ProofError::Malformed("validator key"))?;
        if next.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ProofError::Malformed("validators not sorted"));
        }
        let root =
            digest_from_hex(&handoff.state_root).ok_or(ProofError::Malformed("state root"))?;
        if epoch_root(&root, handoff.epoch, &next) != header.state_root {
            return Err(ProofError::BadHandoff(handoff.epoch));
        }
        certified(
            &handoff.finalization,
            &header,
            &validators,
            epoch_blocks,
            rng,
        )
        .map_err(|_| ProofError::BadHandoff(handoff.epoch))?;
        validators = next;
        epoch = handoff.epoch;
    }
    if last.height / epoch_blocks < epoch {
        return Err(ProofError::Malformed("epochs beyond the block"));
    }
    certified(finalization, last, &validators, epoch_blocks, rng)?;
    Ok(validators.len())
}

/// A block's finality proof, as served by `GET /chain/blocks/{height}/proof` and checked by
/// the block explorer in the browser: the block's header, each following header up to one
/// that carries a certificate, that certificate, and every change of the validator set.
/// Every field is hex.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockProof {
    pub chain_id: u64,
    pub headers: Vec<String>,
    pub finalization: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<EpochHandoff>,
}

/// What a verified block proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBlock {
    pub height: u64,
    pub block: Digest,
    pub finalized_height: u64,
    /// The validators of the certified block's epoch, more than two thirds of whom signed.
    pub validators: usize,
}

impl BlockProof {
    /// Check the proof against the validator set of `genesis`, with no network access;
    /// `rng` as for [`InclusionProof::verify_with`].
    pub fn verify_with<R: rand::CryptoRng>(
        &self,
        genesis: &Genesis,
        rng: &mut R,
    ) -> Result<VerifiedBlock, ProofError> {
        let headers = headers_of(self.chain_id, &self.headers, genesis)?;
        let first = &headers[0];
        let validators = finality(&headers, &self.finalization, &self.epochs, genesis, rng)?;
        Ok(VerifiedBlock {
            height: first.height,
            block: first.digest(),
            finalized_height: headers.last().expect("non-empty").height,
            validators,
        })
    }
}

/// The headers of a proof for chain `chain_id`, decoded, the first one on the genesis's chain.
fn headers_of(
    chain_id: u64,
    headers: &[String],
    genesis: &Genesis,
) -> Result<Vec<BlockHeader>, ProofError> {
    if chain_id != genesis.chain_id {
        return Err(ProofError::WrongChain(chain_id, genesis.chain_id));
    }
    let headers = decode_headers(headers)?;
    if headers[0].chain_id != genesis.chain_id {
        return Err(ProofError::WrongChain(
            headers[0].chain_id,
            genesis.chain_id,
        ));
    }
    Ok(headers)
}

fn decode_headers(headers: &[String]) -> Result<Vec<BlockHeader>, ProofError> {
    if headers.is_empty() || headers.len() > PROOF_HEADERS_MAX {
        return Err(ProofError::Malformed("header count"));
    }
    headers
        .iter()
        .map(|h| {
            BlockHeader::decode(&hex_bytes(h, "header")?)
                .map_err(|_| ProofError::Malformed("header"))
        })
        .collect()
}

/// Check that `finalization` (hex) certifies `header` in its epoch, signed by `validators`.
fn certified(
    finalization: &str,
    header: &BlockHeader,
    validators: &[PublicKey],
    epoch_blocks: u64,
    rng: &mut impl rand::CryptoRng,
) -> Result<(), ProofError> {
    let participants = commonware_utils::ordered::Set::try_from(validators.to_vec())
        .map_err(|_| ProofError::Malformed("validators"))?;
    let verifier = Scheme::verifier(CONSENSUS_NAMESPACE, participants);
    let bytes = hex_bytes(finalization, "finalization")?;
    let finalization = Finalization::decode_cfg(
        commonware_codec::Copying(&bytes),
        &verifier.certificate_codec_config(),
    )
    .map_err(|_| ProofError::Malformed("finalization"))?;
    if finalization.proposal.payload != header.digest() {
        return Err(ProofError::WrongBlock);
    }
    if finalization.proposal.round.epoch().get() != header.height / epoch_blocks {
        return Err(ProofError::BadFinalization);
    }
    if !finalization.verify(rng, &verifier, &commonware_parallel::Sequential) {
        return Err(ProofError::BadFinalization);
    }
    Ok(())
}
