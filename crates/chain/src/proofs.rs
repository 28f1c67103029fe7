//! Serve what a light client checks: a stored block with its certificate, and an inclusion
//! proof (`ehrchain_types::proof`) built from the block log and the epoch history.

use crate::application::Chain;
use commonware_codec::{Decode, Encode};
use commonware_runtime::Blob;
use ehrchain_types::{
    Block, Digest, Genesis, PublicKey, merkle,
    proof::{BlockProof, EpochHandoff, Finalization, InclusionProof, PROOF_HEADERS_MAX},
};

/// Why a stored block could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("no block at height {0}")]
    Missing(u64),
    #[error("stored block {0} is damaged")]
    Damaged(u64),
}

/// The block at `height` and its finalization certificate (empty when a later block's
/// certificate covers it).
pub async fn load_block<B: Blob>(
    chain: &Chain<B>,
    height: u64,
) -> Result<(Block, Vec<u8>), BlockError> {
    let record = chain
        .record(height)
        .await
        .ok_or(BlockError::Missing(height))?;
    let block = Block::decode(&record.block).map_err(|_| {
        tracing::error!(
            height,
            "stored block does not decode; run `ehrchain verify`"
        );
        BlockError::Damaged(height)
    })?;
    Ok((block, record.finalization))
}

/// Build an inclusion proof of the transaction `id` at (`height`, `index`); `None` while no
/// finalization certificate covers the block yet.
pub async fn inclusion_proof<B: Blob>(
    chain: &Chain<B>,
    genesis: &Genesis,
    id: &Digest,
    height: u64,
    index: u32,
) -> Result<Option<InclusionProof>, BlockError> {
    let Some((block, proof)) = block_proof(chain, genesis, height).await? else {
        return Ok(None);
    };
    let merkle_path =
        merkle::prove(&block.transaction_ids(), index).ok_or(BlockError::Damaged(height))?;
    Ok(Some(InclusionProof {
        chain_id: proof.chain_id,
        transaction: hex::encode(id),
        position: index,
        merkle_path: hex::encode(merkle_path),
        headers: proof.headers,
        finalization: proof.finalization,
        epochs: proof.epochs,
    }))
}

/// Build the finality proof of the block at `height` (its header, the headers up to the
/// first certified one, that certificate and the validator-set changes), with the block;
/// `None` while no finalization certificate covers it yet.
pub async fn block_proof<B: Blob>(
    chain: &Chain<B>,
    genesis: &Genesis,
    height: u64,
) -> Result<Option<(Block, BlockProof)>, BlockError> {
    let (block, mut finalization) = load_block(chain, height).await?;
    let mut headers = vec![hex::encode(block.header.encode())];
    let mut next = height + 1;
    while finalization.is_empty() {
        if headers.len() >= PROOF_HEADERS_MAX {
            return Ok(None);
        }
        let Ok((block, cert)) = load_block(chain, next).await else {
            return Ok(None);
        };
        headers.push(hex::encode(block.header.encode()));
        finalization = cert;
        next += 1;
    }
    // Re-encode through the type so a damaged stored certificate fails here, not at the client.
    let reencode = |bytes: &[u8], at: u64| {
        Finalization::decode_cfg(
            commonware_codec::Copying(bytes),
            &ehrchain_types::limits::VALIDATORS_MAX, // the most signers a certificate can carry
        )
        .map(|f| hex::encode(f.encode()))
        .map_err(|_| BlockError::Damaged(at))
    };
    // `next - 1` is the certified block's height.
    let finalization = reencode(&finalization, next - 1)?;
    // Every change of the validator set up to the certified block's epoch.
    let epoch_blocks = genesis.rules.epoch_blocks.max(1);
    let last_epoch = (next - 1) / epoch_blocks;
    let changes: Vec<(u64, Vec<PublicKey>, Digest)> = chain.read(|s| {
        let mut previous: Option<Vec<PublicKey>> = None;
        let mut changes = Vec::new();
        for (epoch, set) in s.epochs() {
            if epoch > last_epoch {
                break;
            }
            if previous.as_deref().is_some_and(|p| p != set)
                && let Some(root) = s.epoch_state_root(epoch)
            {
                changes.push((epoch, set.to_vec(), root));
            }
            previous = Some(set.to_vec());
        }
        changes
    });
    let mut epochs = Vec::with_capacity(changes.len());
    for (epoch, validators, root) in changes {
        let boundary_height = epoch * epoch_blocks - 1;
        let (boundary, certificate) = load_block(chain, boundary_height).await?;
        if certificate.is_empty() {
            return Ok(None);
        }
        epochs.push(EpochHandoff {
            epoch,
            validators: validators.iter().map(ToString::to_string).collect(),
            boundary_header: hex::encode(boundary.header.encode()),
            state_root: hex::encode(root),
            finalization: reencode(&certificate, boundary_height)?,
        });
    }
    Ok(Some((
        block,
        BlockProof {
            chain_id: genesis.chain_id,
            headers,
            finalization,
            epochs,
        },
    )))
}
