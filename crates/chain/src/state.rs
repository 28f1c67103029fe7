//! The application state and its deterministic state transition.
//!
//! The state is what finalized transactions have done: each signer's next nonce, and the
//! registry of anchored digests. It is executed identically on every validator: iteration is
//! over `BTreeMap`s, nothing reads a clock or a random source.
//!
//! The state root is a commitment chain: `root_h = SHA-256("ehrchain-state-v1" | root_{h-1} |
//! height | SHA-256(writes_h))`, where `writes_h` is the block's state writes in key order. Two
//! validators with the same root have applied the same writes in the same order from the same
//! genesis, so they hold the same state.

use ehrchain_types::{Block, Digest, Error as TypesError, Payload, PublicKey, Transaction, sha256};
use std::collections::BTreeMap;

/// Why a transaction cannot be applied on top of a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("stale nonce: expected {expected}, got {got} (already used; this looks like a replay)")]
    StaleNonce { expected: u64, got: u64 },
    #[error("future nonce: expected {expected}, got {got}")]
    FutureNonce { expected: u64, got: u64 },
    #[error("digest already anchored")]
    AlreadyAnchored,
    #[error("{0}")]
    Invalid(#[from] TypesError),
}

/// Where an anchored digest was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorRecord {
    pub label: u16,
    pub signer: PublicKey,
    pub height: u64,
    pub transaction: Digest,
}

/// A state read interface, so execution can run over the finalized state plus overlays.
pub trait Reader {
    fn nonce(&self, signer: &PublicKey) -> u64;
    fn anchored(&self, digest: &Digest) -> bool;
}

/// The writes of one block, keyed for deterministic ordering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub nonces: BTreeMap<PublicKey, u64>,
    pub anchors: BTreeMap<Digest, AnchorRecord>,
}

impl Delta {
    /// Digest of the writes, in key order.
    fn digest(&self) -> Digest {
        let mut bytes = Vec::with_capacity(self.nonces.len() * 40 + self.anchors.len() * 110);
        bytes.extend_from_slice(&(self.nonces.len() as u64).to_be_bytes());
        for (signer, nonce) in &self.nonces {
            bytes.extend_from_slice(signer.as_ref());
            bytes.extend_from_slice(&nonce.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.anchors.len() as u64).to_be_bytes());
        for (digest, record) in &self.anchors {
            bytes.extend_from_slice(digest.as_ref());
            bytes.extend_from_slice(&record.label.to_be_bytes());
            bytes.extend_from_slice(record.signer.as_ref());
            bytes.extend_from_slice(&record.height.to_be_bytes());
            bytes.extend_from_slice(record.transaction.as_ref());
        }
        sha256(&[&bytes])
    }
}

/// The next state root after applying `delta` at `height`.
pub fn next_root(previous: &Digest, height: u64, delta: &Delta) -> Digest {
    sha256(&[
        b"ehrchain-state-v1",
        previous.as_ref(),
        &height.to_be_bytes(),
        delta.digest().as_ref(),
    ])
}

/// Root of the empty state at genesis.
pub fn genesis_root(chain_id: u64) -> Digest {
    sha256(&[b"ehrchain-genesis-v1", &chain_id.to_be_bytes()])
}

/// State reads over `base` with `delta` (the block being built or checked) on top.
struct Layered<'a, R: Reader> {
    base: &'a R,
    delta: &'a Delta,
}

impl<R: Reader> Reader for Layered<'_, R> {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        self.delta
            .nonces
            .get(signer)
            .copied()
            .unwrap_or_else(|| self.base.nonce(signer))
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.delta.anchors.contains_key(digest) || self.base.anchored(digest)
    }
}

/// Check one transaction against `base + delta` and, if it applies, record its writes.
/// Signatures are checked by the caller (in batches, once per transaction).
pub fn apply(
    base: &impl Reader,
    delta: &mut Delta,
    height: u64,
    tx: &Transaction,
) -> Result<(), Rejection> {
    let view = Layered { base, delta };
    let expected = view.nonce(&tx.body.signer);
    if tx.body.nonce < expected {
        return Err(Rejection::StaleNonce {
            expected,
            got: tx.body.nonce,
        });
    }
    if tx.body.nonce > expected {
        return Err(Rejection::FutureNonce {
            expected,
            got: tx.body.nonce,
        });
    }
    match &tx.body.payload {
        Payload::Anchor { label, digest } => {
            if view.anchored(digest) {
                return Err(Rejection::AlreadyAnchored);
            }
            delta.anchors.insert(
                *digest,
                AnchorRecord {
                    label: *label,
                    signer: tx.body.signer.clone(),
                    height,
                    transaction: tx.id(),
                },
            );
        }
    }
    delta.nonces.insert(tx.body.signer.clone(), expected + 1);
    Ok(())
}

/// Execute every transaction of `block` on top of `base`; any rejection makes the block invalid.
pub fn execute(base: &impl Reader, block: &Block) -> Result<Delta, Rejection> {
    let mut delta = Delta::default();
    for tx in &block.transactions {
        apply(base, &mut delta, block.height(), tx)?;
    }
    Ok(delta)
}

/// The finalized state, held in memory and rebuilt from the block log at start-up.
#[derive(Clone, Debug, Default)]
pub struct State {
    nonces: BTreeMap<PublicKey, u64>,
    anchors: BTreeMap<Digest, AnchorRecord>,
}

impl State {
    pub fn commit(&mut self, delta: Delta) {
        self.nonces.extend(delta.nonces);
        self.anchors.extend(delta.anchors);
    }

    pub fn anchor(&self, digest: &Digest) -> Option<&AnchorRecord> {
        self.anchors.get(digest)
    }

    pub fn accounts(&self) -> usize {
        self.nonces.len()
    }
}

impl Reader for State {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        self.nonces.get(signer).copied().unwrap_or(0)
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.anchors.contains_key(digest)
    }
}

/// A chain of not-yet-finalized deltas over the finalized state, newest first.
pub struct Overlay<'a> {
    pub base: &'a State,
    pub deltas: Vec<&'a Delta>,
}

impl Reader for Overlay<'_> {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        for delta in &self.deltas {
            if let Some(nonce) = delta.nonces.get(signer) {
                return *nonce;
            }
        }
        self.base.nonce(signer)
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.deltas.iter().any(|d| d.anchors.contains_key(digest)) || self.base.anchored(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_cryptography::Signer;
    use ehrchain_types::{PrivateKey, TransactionBody};

    fn tx(key: &PrivateKey, nonce: u64, tag: u64) -> Transaction {
        TransactionBody {
            chain_id: 1,
            signer: key.public_key(),
            nonce,
            payload: Payload::Anchor {
                label: 1,
                digest: sha256(&[&tag.to_be_bytes()]),
            },
        }
        .sign(key)
    }

    #[test]
    fn nonces_reject_replays_and_gaps() {
        let key = PrivateKey::from_seed(1);
        let mut state = State::default();
        let mut delta = Delta::default();
        apply(&state, &mut delta, 1, &tx(&key, 0, 0)).unwrap();
        assert_eq!(
            apply(&state, &mut delta, 1, &tx(&key, 0, 1)),
            Err(Rejection::StaleNonce {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            apply(&state, &mut delta, 1, &tx(&key, 5, 2)),
            Err(Rejection::FutureNonce {
                expected: 1,
                got: 5
            })
        );
        state.commit(delta);
        let mut delta = Delta::default();
        // The same transaction again, after commit: a replay.
        assert!(matches!(
            apply(&state, &mut delta, 2, &tx(&key, 0, 0)),
            Err(Rejection::StaleNonce { .. })
        ));
        // A new nonce but an already anchored digest.
        assert_eq!(
            apply(&state, &mut delta, 2, &tx(&key, 1, 0)),
            Err(Rejection::AlreadyAnchored)
        );
    }

    #[test]
    fn roots_depend_on_every_write() {
        let key = PrivateKey::from_seed(2);
        let state = State::default();
        let mut a = Delta::default();
        apply(&state, &mut a, 1, &tx(&key, 0, 0)).unwrap();
        let mut b = Delta::default();
        apply(&state, &mut b, 1, &tx(&key, 0, 1)).unwrap();
        let root = genesis_root(1);
        assert_ne!(next_root(&root, 1, &a), next_root(&root, 1, &b));
        assert_ne!(next_root(&root, 1, &a), next_root(&root, 2, &a));
        assert_eq!(next_root(&root, 1, &a), next_root(&root, 1, &a.clone()));
    }
}
