//! A bounded pool of verified transactions waiting for a block.
//!
//! Admission checks size, chain id and signature once; a transaction in the pool is never
//! verified again by this node. Block building takes transactions in arrival order whose nonce
//! is the next one for their signer on top of the parent state.

use crate::state::{At, Reader, Rejection};

/// Where admission checks run: on the finalized state, at its newest block time.
/// Time-dependent rules (expiry) are checked again when the transaction is executed in its
/// block.
fn admission(state: &impl Reader) -> At {
    At {
        height: 0,
        time_ms: state.time_ms(),
        index: 0,
    }
}
use ehrchain_types::{Digest, PublicKey, Transaction};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Why the mempool refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("mempool is full ({0} transactions); retry later")]
    Full(usize),
    #[error("transaction already pending")]
    Duplicate,
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("nonce {got} is too far ahead of the signer's next nonce {expected}")]
    NonceGap { expected: u64, got: u64 },
}

/// Largest gap between a signer's next nonce and an admitted transaction's nonce.
pub const NONCE_AHEAD_MAX: u64 = 1_024;

pub struct Mempool {
    capacity: usize,
    by_id: HashMap<Digest, Transaction>,
    by_signer: HashMap<PublicKey, BTreeMap<u64, Digest>>,
    order: VecDeque<Digest>,
    /// Transactions that failed a payload check while a block was built: re-checked against
    /// the finalized state after the next commit, and evicted if they can never apply.
    suspects: std::collections::BTreeSet<Digest>,
}

impl Mempool {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_id: HashMap::new(),
            by_signer: HashMap::new(),
            order: VecDeque::new(),
            suspects: std::collections::BTreeSet::new(),
        }
    }

    /// Note a transaction that failed its payload check while a block was built.
    pub fn suspect(&mut self, id: Digest) {
        if self.by_id.contains_key(&id) {
            self.suspects.insert(id);
        }
    }

    /// Evict suspects that cannot apply on the finalized state (say, a record version that
    /// another author took first), with every later transaction of the same signer, which
    /// could now never follow. Returns the evicted ids with the reason.
    pub fn evict_failed(&mut self, state: &impl Reader) -> Vec<(Digest, String)> {
        let mut evicted = Vec::new();
        for id in std::mem::take(&mut self.suspects) {
            let Some(tx) = self.by_id.get(&id) else {
                continue;
            };
            if tx.body.nonce != state.nonce(&tx.body.signer) {
                // Not yet its turn; it is checked again when it fails again.
                continue;
            }
            let Err(reason) = crate::state::apply(
                state,
                &mut crate::state::Delta::default(),
                admission(state),
                tx,
            ) else {
                continue;
            };
            let signer = tx.body.signer.clone();
            let nonce = tx.body.nonce;
            if let Some(slots) = self.by_signer.get_mut(&signer) {
                let dropped: Vec<u64> = slots.range(nonce..).map(|(n, _)| *n).collect();
                for n in dropped {
                    if let Some(dropped_id) = slots.remove(&n) {
                        self.by_id.remove(&dropped_id);
                        let why = if dropped_id == id {
                            reason.to_string()
                        } else {
                            "an earlier transaction of this signer was rejected; re-sign with the current nonce".to_string()
                        };
                        evicted.push((dropped_id, why));
                    }
                }
                if slots.is_empty() {
                    self.by_signer.remove(&signer);
                }
            }
        }
        evicted
    }

    /// The nonce after the run of this signer's pooled transactions that starts at `next`
    /// (its next nonce on the final state): what its next transaction should carry.
    pub fn next_nonce(&self, signer: &PublicKey, next: u64) -> u64 {
        let mut nonce = next;
        if let Some(slots) = self.by_signer.get(signer) {
            while slots.contains_key(&nonce) {
                nonce += 1;
            }
        }
        nonce
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &Digest) -> bool {
        self.by_id.contains_key(id)
    }

    /// Admit an already signature-checked transaction, given the finalized state.
    pub fn insert(&mut self, tx: Transaction, state: &impl Reader) -> Result<(), AdmissionError> {
        let expected = state.nonce(&tx.body.signer);
        if tx.body.nonce < expected {
            return Err(Rejection::StaleNonce {
                expected,
                got: tx.body.nonce,
            }
            .into());
        }
        if tx.body.nonce > expected + NONCE_AHEAD_MAX {
            return Err(AdmissionError::NonceGap {
                expected,
                got: tx.body.nonce,
            });
        }
        if let ehrchain_types::Payload::Anchor { digest, .. } = &tx.body.payload
            && state.anchored(digest)
        {
            return Err(Rejection::AlreadyAnchored.into());
        }
        if tx.body.nonce == expected {
            // The signer's next transaction: check it fully against the finalized state so
            // that an unauthorized or impossible request is refused now, with its reason.
            crate::state::apply(
                state,
                &mut crate::state::Delta::default(),
                admission(state),
                &tx,
            )?;
        }
        let id = tx.id();
        if self.by_id.contains_key(&id) {
            return Err(AdmissionError::Duplicate);
        }
        let slots = self.by_signer.entry(tx.body.signer.clone()).or_default();
        if slots.contains_key(&tx.body.nonce) {
            // Another transaction with the same nonce is pending; first come, first served.
            return Err(AdmissionError::Duplicate);
        }
        if self.by_id.len() >= self.capacity {
            return Err(AdmissionError::Full(self.capacity));
        }
        slots.insert(tx.body.nonce, id);
        self.by_id.insert(id, tx);
        self.order.push_back(id);
        Ok(())
    }

    /// Pick up to `limit` transactions that apply, in order, on top of `state`.
    pub fn select(
        &self,
        state: &impl Reader,
        limit: usize,
        bytes_limit: usize,
    ) -> Vec<Transaction> {
        let mut next: HashMap<&PublicKey, u64> = HashMap::new();
        let mut picked = Vec::new();
        let mut bytes = 0usize;
        for id in &self.order {
            if picked.len() >= limit {
                break;
            }
            let Some(tx) = self.by_id.get(id) else {
                continue;
            };
            let signer = &tx.body.signer;
            let expected = *next.entry(signer).or_insert_with(|| state.nonce(signer));
            if tx.body.nonce != expected {
                continue;
            }
            // Take this signer's consecutive run so that out-of-order arrivals still fill blocks.
            let slots = &self.by_signer[signer];
            let mut nonce = expected;
            while let Some(id) = slots.get(&nonce) {
                let tx = &self.by_id[id];
                let size = tx.bytes().len() + 4;
                if picked.len() >= limit || bytes + size > bytes_limit {
                    break;
                }
                bytes += size;
                picked.push(tx.clone());
                nonce += 1;
            }
            next.insert(signer, nonce);
        }
        picked
    }

    /// Drop transactions that a finalized block included, and any made stale by it.
    /// Drop committed transactions and those whose nonce a committed one took; returns the
    /// latter (they never commit, and their clients should hear why).
    pub fn remove_committed(
        &mut self,
        committed: &[Transaction],
        state: &impl Reader,
    ) -> Vec<Digest> {
        let mut displaced = Vec::new();
        for tx in committed {
            self.by_id.remove(&tx.id());
            let signer = &tx.body.signer;
            let next = state.nonce(signer);
            if let Some(slots) = self.by_signer.get_mut(signer) {
                let stale: Vec<u64> = slots.range(..next).map(|(n, _)| *n).collect();
                for nonce in stale {
                    if let Some(id) = slots.remove(&nonce) {
                        self.by_id.remove(&id);
                        if id != tx.id() {
                            displaced.push(id);
                        }
                    }
                }
                if slots.is_empty() {
                    self.by_signer.remove(signer);
                }
            }
        }
        // Compact the arrival queue lazily: ids no longer present are skipped by `select`.
        if self.order.len() > 2 * self.by_id.len() + 1024 {
            self.order.retain(|id| self.by_id.contains_key(id));
        }
        while let Some(front) = self.order.front() {
            if self.by_id.contains_key(front) {
                break;
            }
            self.order.pop_front();
        }
        displaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use commonware_cryptography::Signer;
    use ehrchain_types::{Payload, PrivateKey, TransactionBody, sha256};

    fn tx(key: &PrivateKey, nonce: u64) -> Transaction {
        TransactionBody {
            chain_id: 1,
            signer: key.public_key(),
            nonce,
            payload: Payload::Anchor {
                label: 0,
                digest: sha256(&[key.public_key().as_ref(), &nonce.to_be_bytes()]),
            },
        }
        .sign(key)
    }

    #[test]
    fn bounded_and_ordered() {
        let state = State::default();
        let mut pool = Mempool::new(3);
        let key = PrivateKey::from_seed(1);
        // Arrive out of order; selection still yields 0, 1, 2.
        pool.insert(tx(&key, 2), &state).unwrap();
        pool.insert(tx(&key, 0), &state).unwrap();
        pool.insert(tx(&key, 1), &state).unwrap();
        assert_eq!(
            pool.insert(tx(&key, 3), &state),
            Err(AdmissionError::Full(3))
        );
        assert_eq!(
            pool.insert(tx(&key, 1), &state),
            Err(AdmissionError::Duplicate)
        );
        let picked = pool.select(&state, 10, usize::MAX);
        let nonces: Vec<u64> = picked.iter().map(|t| t.body.nonce).collect();
        assert_eq!(nonces, vec![0, 1, 2]);
        assert_eq!(pool.select(&state, 2, usize::MAX).len(), 2);
    }

    #[test]
    fn committed_and_stale_are_removed() {
        let mut state = State::default();
        let mut pool = Mempool::new(10);
        let key = PrivateKey::from_seed(1);
        for nonce in 0..4 {
            pool.insert(tx(&key, nonce), &state).unwrap();
        }
        let committed: Vec<Transaction> = (0..2).map(|n| tx(&key, n)).collect();
        let mut delta = crate::state::Delta::default();
        for t in &committed {
            crate::state::apply(
                &state,
                &mut delta,
                crate::state::At {
                    height: 1,
                    time_ms: 0,
                    index: 0,
                },
                t,
            )
            .unwrap();
        }
        state.commit(delta);
        pool.remove_committed(&committed, &state);
        assert_eq!(pool.len(), 2);
        assert!(matches!(
            pool.insert(tx(&key, 0), &state),
            Err(AdmissionError::Rejected(Rejection::StaleNonce { .. }))
        ));
    }

    #[test]
    fn a_transaction_that_can_never_apply_is_evicted_with_its_successors() {
        let mut state = State::default();
        let mut pool = Mempool::new(10);
        let (alice, bob) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let anchor = |key: &PrivateKey, nonce: u64, tag: &[u8]| {
            TransactionBody {
                chain_id: 1,
                signer: key.public_key(),
                nonce,
                payload: Payload::Anchor {
                    label: 0,
                    digest: sha256(&[tag]),
                },
            }
            .sign(key)
        };
        let first = anchor(&alice, 0, b"same");
        let second = anchor(&bob, 0, b"same");
        let later = anchor(&bob, 1, b"other");
        for tx in [&first, &second, &later] {
            pool.insert(tx.clone(), &state).unwrap();
        }
        assert_eq!(pool.next_nonce(&bob.public_key(), 0), 2);
        // Building a block with both: the second fails and becomes a suspect.
        pool.suspect(second.id());
        let mut delta = crate::state::Delta::default();
        crate::state::apply(
            &state,
            &mut delta,
            crate::state::At {
                height: 1,
                time_ms: 0,
                index: 0,
            },
            &first,
        )
        .unwrap();
        state.commit(delta);
        pool.remove_committed(std::slice::from_ref(&first), &state);
        let evicted = pool.evict_failed(&state);
        assert_eq!(evicted.len(), 2);
        assert_eq!(evicted[0].0, second.id());
        assert!(evicted[0].1.contains("already anchored"));
        assert_eq!(evicted[1].0, later.id());
        assert_eq!(pool.len(), 0);
        assert!(pool.evict_failed(&state).is_empty());
        // Bob's client must start again from nonce 0, not 2: nothing of his is pooled.
        assert_eq!(
            pool.next_nonce(&bob.public_key(), state.nonce(&bob.public_key())),
            0
        );
    }
}
