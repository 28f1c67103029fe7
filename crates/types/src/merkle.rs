//! Merkle roots and inclusion proofs over a block's transaction ids.
//!
//! This wraps Commonware's binary Merkle tree (`commonware_storage::bmt`): leaves are hashed
//! with their position, odd levels duplicate their last node, and the root commits to the leaf
//! count, so a proof cannot be replayed against a tree of another size.

use crate::{Digest, Error};
use commonware_codec::{Decode, Encode};
use commonware_cryptography::Sha256;
use commonware_storage::bmt::{Builder, Proof};

/// Most sibling digests a proof may carry (the tree has at most 2^32 leaves).
pub const PROOF_SIBLINGS_MAX: usize = commonware_storage::bmt::MAX_LEVELS;

/// Root of the tree over `leaves`, in order.
pub fn root(leaves: &[Digest]) -> Digest {
    let mut builder = Builder::<Sha256>::new(leaves.len());
    for leaf in leaves {
        builder.add(leaf);
    }
    builder.build().root()
}

/// Inclusion proof for the leaf at `position`, encoded as bytes.
pub fn prove(leaves: &[Digest], position: u32) -> Option<Vec<u8>> {
    let mut builder = Builder::<Sha256>::new(leaves.len());
    for leaf in leaves {
        builder.add(leaf);
    }
    let proof = builder.build().proof(position).ok()?;
    Some(proof.encode().to_vec())
}

/// Check that `leaf` sits at `position` under `root`, given an encoded proof.
pub fn verify(proof: &[u8], leaf: &Digest, position: u32, root: &Digest) -> Result<(), Error> {
    if proof.len() > 4 + 5 + PROOF_SIBLINGS_MAX * 32 {
        return Err(Error::OutOfRange("proof size"));
    }
    let proof = Proof::<Digest>::decode_cfg(commonware_codec::Copying(proof), &PROOF_SIBLINGS_MAX)
        .map_err(|_| Error::OutOfRange("proof encoding"))?;
    proof
        .verify_element_inclusion::<Sha256>(leaf, position, root)
        .map_err(|_| Error::TransactionRootMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256;

    #[test]
    fn proofs_verify_and_reject_wrong_leaves() {
        for count in 1..20u32 {
            let leaves: Vec<Digest> = (0..count).map(|i| sha256(&[&i.to_be_bytes()])).collect();
            let root = root(&leaves);
            for position in 0..count {
                let proof = prove(&leaves, position).unwrap();
                verify(&proof, &leaves[position as usize], position, &root).unwrap();
                let other = sha256(&[b"other"]);
                assert!(verify(&proof, &other, position, &root).is_err());
            }
        }
    }
}
