//! A bounded pool of verified transactions waiting for a block.
//!
//! Admission checks size, chain id and signature once; a transaction in the pool is never
//! verified again by this node. Block building takes transactions in arrival order whose nonce
//! is the next one for their signer on top of the parent state.

use ehrchain_contracts::facts::{At, Rejection};
use ehrchain_contracts::state::Reader;

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
    #[error("the signer is not a registered identity or session")]
    UnknownSigner,
    #[error("the signer already has {0} transactions waiting behind a nonce gap")]
    TooManyGapped(usize),
}

impl AdmissionError {
    /// The stable code of this refusal, for clients.
    pub fn code(&self) -> ehrchain_types::ErrorCode {
        use ehrchain_types::ErrorCode;
        match self {
            Self::Full(_) => ErrorCode::Unavailable,
            Self::Duplicate => ErrorCode::AlreadyPending,
            Self::Rejected(rejection) => rejection.code(),
            Self::NonceGap { .. } => ErrorCode::FutureNonce,
            Self::UnknownSigner => ErrorCode::UnknownSigner,
            Self::TooManyGapped(_) => ErrorCode::RateLimited,
        }
    }
}

/// Largest gap between a signer's next nonce and an admitted transaction's nonce.
pub const NONCE_AHEAD_MAX: u64 = 1_024;
/// Most transactions of one signer held behind a nonce gap (waiting for an earlier nonce).
pub const SIGNER_GAPPED_MAX: usize = 64;
/// How long, in block time, a transaction behind a nonce gap may wait before it is dropped.
pub const GAPPED_EXPIRY_MS: u64 = 60_000;
/// How often, in block time, the pool looks for expired gapped transactions.
const EXPIRY_SWEEP_MS: u64 = 5_000;

pub struct Mempool {
    capacity: usize,
    /// Each transaction, with the block time of the final state it was admitted on.
    by_id: HashMap<Digest, Transaction>,
    admitted_ms: HashMap<Digest, u64>,
    last_sweep_ms: u64,
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
            admitted_ms: HashMap::new(),
            last_sweep_ms: 0,
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
    pub fn evict_failed(
        &mut self,
        state: &impl Reader,
    ) -> Vec<(Digest, ehrchain_types::ErrorCode, String)> {
        let mut evicted = Vec::new();
        for id in std::mem::take(&mut self.suspects) {
            let Some(tx) = self.by_id.get(&id) else {
                continue;
            };
            if tx.body.nonce != state.nonce(&tx.body.signer) {
                // Not yet its turn; it is checked again when it fails again.
                continue;
            }
            let Err(reason) = ehrchain_contracts::execute::apply(
                state,
                &mut ehrchain_contracts::state::Delta::default(),
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
                        self.admitted_ms.remove(&dropped_id);
                        let (code, why) = if dropped_id == id {
                            (reason.code(), reason.to_string())
                        } else {
                            (ehrchain_types::ErrorCode::NonceTaken, "an earlier transaction of this signer was rejected; re-sign with the current nonce".to_string())
                        };
                        evicted.push((dropped_id, code, why));
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
    ///
    /// Admission is where an outsider could clog the pool, so it refuses a signer the chain
    /// does not know (an `OpenSession` excepted: the client assertion inside authorizes its
    /// fresh key, and it is checked in full below), holds at most [`SIGNER_GAPPED_MAX`] of one
    /// signer's transactions behind a nonce gap, and, when full, makes room for a signer with
    /// fewer transactions waiting by dropping the newest of the signer with the most.
    pub fn insert(&mut self, tx: Transaction, state: &impl Reader) -> Result<(), AdmissionError> {
        let signer = &tx.body.signer;
        if state.identity(signer).is_none()
            && state.session(signer).is_none()
            && !matches!(tx.body.payload, ehrchain_types::Payload::OpenSession { .. })
        {
            return Err(AdmissionError::UnknownSigner);
        }
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
            ehrchain_contracts::execute::apply(
                state,
                &mut ehrchain_contracts::state::Delta::default(),
                admission(state),
                &tx,
            )?;
        }
        let id = tx.id();
        if self.by_id.contains_key(&id) {
            return Err(AdmissionError::Duplicate);
        }
        let empty = BTreeMap::new();
        let slots = self.by_signer.get(&tx.body.signer).unwrap_or(&empty);
        if slots.contains_key(&tx.body.nonce) {
            // Another transaction with the same nonce is pending; first come, first served.
            return Err(AdmissionError::Duplicate);
        }
        let nonce = tx.body.nonce;
        if nonce > expected && slots.range(expected..nonce).count() as u64 != nonce - expected {
            // Behind a gap: count what this signer already holds past its contiguous run.
            let mut run_end = expected;
            while slots.contains_key(&run_end) {
                run_end += 1;
            }
            let gapped = slots.range(run_end..).count();
            if gapped >= SIGNER_GAPPED_MAX {
                return Err(AdmissionError::TooManyGapped(gapped));
            }
        }
        let held = slots.len();
        if self.by_id.len() >= self.capacity && !self.evict_for(signer, held) {
            return Err(AdmissionError::Full(self.capacity));
        }
        let slots = self.by_signer.entry(tx.body.signer.clone()).or_default();
        slots.insert(nonce, id);
        self.admitted_ms.insert(id, state.time_ms());
        self.by_id.insert(id, tx);
        self.order.push_back(id);
        Ok(())
    }

    /// Make room for a transaction of `signer`, who holds `held`: drop the newest transaction
    /// of the signer holding the most, if that is more than `held + 1`. Dropping a signer's
    /// highest nonce never leaves a gap before its others.
    fn evict_for(&mut self, signer: &PublicKey, held: usize) -> bool {
        let Some((heaviest, count)) = self
            .by_signer
            .iter()
            .filter(|(key, _)| *key != signer)
            .map(|(key, slots)| (key.clone(), slots.len()))
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        else {
            return false;
        };
        if count <= held + 1 {
            return false;
        }
        let slots = self.by_signer.get_mut(&heaviest).expect("present");
        let (_, id) = slots.pop_last().expect("non-empty");
        if slots.is_empty() {
            self.by_signer.remove(&heaviest);
        }
        self.by_id.remove(&id);
        self.admitted_ms.remove(&id);
        true
    }

    /// Drop transactions that have waited behind a nonce gap for longer than
    /// [`GAPPED_EXPIRY_MS`] of block time; returns how many. Runs at most every few seconds
    /// of block time, since it looks at every signer.
    pub fn expire_gapped(&mut self, state: &impl Reader) -> usize {
        let now = state.time_ms();
        if now < self.last_sweep_ms + EXPIRY_SWEEP_MS {
            return 0;
        }
        self.last_sweep_ms = now;
        let mut expired = 0;
        let signers: Vec<PublicKey> = self.by_signer.keys().cloned().collect();
        for signer in signers {
            let slots = self.by_signer.get_mut(&signer).expect("listed");
            let mut run_end = state.nonce(&signer);
            while slots.contains_key(&run_end) {
                run_end += 1;
            }
            let stale: Vec<u64> = slots
                .range(run_end..)
                .filter(|(_, id)| {
                    self.admitted_ms
                        .get(*id)
                        .is_some_and(|at| at + GAPPED_EXPIRY_MS < now)
                })
                .map(|(n, _)| *n)
                .collect();
            for n in stale {
                if let Some(id) = slots.remove(&n) {
                    self.by_id.remove(&id);
                    self.admitted_ms.remove(&id);
                    expired += 1;
                }
            }
            if slots.is_empty() {
                self.by_signer.remove(&signer);
            }
        }
        expired
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
            self.admitted_ms.remove(&tx.id());
            let signer = &tx.body.signer;
            let next = state.nonce(signer);
            if let Some(slots) = self.by_signer.get_mut(signer) {
                let stale: Vec<u64> = slots.range(..next).map(|(n, _)| *n).collect();
                for nonce in stale {
                    if let Some(id) = slots.remove(&nonce) {
                        self.by_id.remove(&id);
                        self.admitted_ms.remove(&id);
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
    use commonware_cryptography::Signer;
    use ehrchain_contracts::state::State;
    use ehrchain_types::{Payload, PrivateKey, TransactionBody, sha256};

    /// A state in which `keys` are member institutions, hence known signers.
    fn known(keys: &[&PrivateKey]) -> State {
        let members: Vec<_> = keys.iter().map(|k| (k.public_key(), [0u8; 32])).collect();
        State::new(&members, &[], Default::default())
    }

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
        let key = PrivateKey::from_seed(1);
        let state = known(&[&key]);
        let mut pool = Mempool::new(3);
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
        let key = PrivateKey::from_seed(1);
        let mut state = known(&[&key]);
        let mut pool = Mempool::new(10);
        for nonce in 0..4 {
            pool.insert(tx(&key, nonce), &state).unwrap();
        }
        let committed: Vec<Transaction> = (0..2).map(|n| tx(&key, n)).collect();
        let mut delta = ehrchain_contracts::state::Delta::default();
        for t in &committed {
            ehrchain_contracts::execute::apply(
                &state,
                &mut delta,
                At {
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
        let (alice, bob) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let mut state = known(&[&alice, &bob]);
        let mut pool = Mempool::new(10);
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
        let mut delta = ehrchain_contracts::state::Delta::default();
        ehrchain_contracts::execute::apply(
            &state,
            &mut delta,
            At {
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
        assert!(evicted[0].2.contains("already anchored"));
        assert_eq!(evicted[1].0, later.id());
        assert_eq!(pool.len(), 0);
        assert!(pool.evict_failed(&state).is_empty());
        // Bob's client must start again from nonce 0, not 2: nothing of his is pooled.
        assert_eq!(
            pool.next_nonce(&bob.public_key(), state.nonce(&bob.public_key())),
            0
        );
    }

    #[test]
    fn unknown_signers_are_refused() {
        let member = PrivateKey::from_seed(1);
        let state = known(&[&member]);
        let mut pool = Mempool::new(10);
        let stranger = PrivateKey::from_seed(99);
        assert_eq!(
            pool.insert(tx(&stranger, 0), &state),
            Err(AdmissionError::UnknownSigner)
        );
        assert_eq!(
            pool.insert(tx(&stranger, 5), &state),
            Err(AdmissionError::UnknownSigner)
        );
        pool.insert(tx(&member, 0), &state).unwrap();
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn gapped_transactions_are_bounded_per_signer_and_expire() {
        let key = PrivateKey::from_seed(1);
        let mut state = known(&[&key]);
        let mut pool = Mempool::new(10_000);
        // Nonce 0 is missing: everything from 2 on waits behind the gap.
        for nonce in 2..2 + SIGNER_GAPPED_MAX as u64 {
            pool.insert(tx(&key, nonce), &state).unwrap();
        }
        assert_eq!(
            pool.insert(tx(&key, 500), &state),
            Err(AdmissionError::TooManyGapped(SIGNER_GAPPED_MAX))
        );
        // Extending the contiguous run from the next nonce is never refused.
        pool.insert(tx(&key, 0), &state).unwrap();
        pool.insert(tx(&key, 1), &state).unwrap();
        assert_eq!(pool.len(), SIGNER_GAPPED_MAX + 2);
        // A second gap, once the first closed, is counted afresh.
        pool.insert(tx(&key, 1_000), &state).unwrap();
        // Block time moves on: the gapped one expires, the runnable ones stay.
        state.commit(ehrchain_contracts::state::Delta {
            time_ms: GAPPED_EXPIRY_MS + EXPIRY_SWEEP_MS + 1,
            ..Default::default()
        });
        assert_eq!(pool.expire_gapped(&state), 1);
        assert_eq!(pool.len(), SIGNER_GAPPED_MAX + 2);
        assert_eq!(
            pool.select(&state, usize::MAX, usize::MAX).len(),
            SIGNER_GAPPED_MAX + 2
        );
    }

    #[test]
    fn a_full_pool_is_shared_between_signers() {
        let (flood, other) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let state = known(&[&flood, &other]);
        let mut pool = Mempool::new(8);
        for nonce in 0..8 {
            pool.insert(tx(&flood, nonce), &state).unwrap();
        }
        assert_eq!(
            pool.insert(tx(&flood, 8), &state),
            Err(AdmissionError::Full(8))
        );
        // Another signer still gets in, each time at the cost of the flood's newest.
        for nonce in 0..4 {
            pool.insert(tx(&other, nonce), &state).unwrap();
        }
        assert_eq!(pool.len(), 8);
        assert_eq!(
            pool.insert(tx(&other, 4), &state),
            Err(AdmissionError::Full(8)),
            "an even share is kept"
        );
        let picked = pool.select(&state, usize::MAX, usize::MAX);
        let flood_nonces: Vec<u64> = picked
            .iter()
            .filter(|t| t.body.signer == flood.public_key())
            .map(|t| t.body.nonce)
            .collect();
        assert_eq!(
            flood_nonces,
            vec![0, 1, 2, 3],
            "the flood keeps its oldest, with no gap"
        );
    }
}
