//! The consensus application: build, verify and execute blocks.
//!
//! [`Chain`] is shared by the consensus engine (through [`App`], which proposes and verifies
//! blocks), the [`Finalizer`] (which executes finalized blocks in height order and appends
//! them to the block log), and the API (which submits transactions and reads state).
//!
//! Blocks that were proposed or verified but not yet finalized keep their state writes in
//! memory, keyed by block digest, so that a child can be built or checked on an unfinalized
//! parent. Finalization folds the writes into the finalized state and drops every sibling.

use crate::{
    log::{BlockLog, Record},
    mempool::{AdmissionError, Mempool},
};
use commonware_consensus::Block as _;
use commonware_consensus::{
    Application, Heightable,
    marshal::{Update, ancestry::Ancestry},
    simplex::types::Context,
    types::Height,
};
use commonware_cryptography::{BatchEntry, BatchVerifier, Digested, Digestible as _};
use commonware_runtime::{
    Blob, Clock, Metrics,
    telemetry::metrics::{Counter, Gauge, GaugeExt as _, MetricsExt as _, Registered},
};
use commonware_utils::Acknowledgement;
use ehrchain_contracts::{
    execute,
    facts::{AnchorRecord, At, Rejection},
    state::{self, Delta, Overlay, Reader, State},
};
use ehrchain_types::{
    Block, Digest, PrivateKey, PublicKey, TRANSACTION_NAMESPACE, Transaction,
    limits::{BLOCK_SIZE_BYTES_MAX, BLOCK_TRANSACTIONS_MAX},
};
use futures::StreamExt;
use rand::CryptoRng;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use ehrchain_types::proof::{Finalization, Scheme};

/// Most transaction ids whose signatures this node remembers having checked.
pub const VERIFIED_IDS_MAX: usize = 1_000_000;

/// Most rejected transaction ids remembered, to tell their clients why.
pub const REJECTED_MAX: usize = 100_000;

/// Most transactions waiting to be gossiped to peers.
pub const OUTBOX_TRANSACTIONS_MAX: usize = 100_000;

/// How far ahead of the local clock a block's timestamp may be before we wait.
pub const TIMESTAMP_AHEAD_MAX: Duration = Duration::from_secs(5);

/// Settings of the application that every validator must share.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    pub chain_id: u64,
    pub genesis: Block,
    /// Most transactions this node puts in one block (at most `BLOCK_TRANSACTIONS_MAX`).
    pub block_transactions_max: usize,
    pub mempool_transactions_max: usize,
    /// The member institutions from genesis, with their encryption keys.
    pub institutions: Vec<(PublicKey, [u8; 32])>,
    /// The auditors appointed at genesis.
    pub auditors: Vec<PublicKey>,
    /// The access contracts' parameters from genesis.
    pub rules: ehrchain_types::genesis::Rules,
}

/// Why a submitted transaction was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(#[from] ehrchain_types::Error),
    #[error("{0}")]
    Admission(#[from] AdmissionError),
    #[error("transaction already committed")]
    AlreadyCommitted,
}

impl SubmitError {
    /// The stable code of this refusal, for clients.
    pub fn code(&self) -> ehrchain_types::ErrorCode {
        use ehrchain_types::{Error, ErrorCode};
        match self {
            Self::Invalid(Error::TransactionTooLarge(..)) => ErrorCode::TooLarge,
            Self::Invalid(Error::BadSignature) => ErrorCode::BadSignature,
            Self::Invalid(Error::WrongChain(..)) => ErrorCode::WrongChain,
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::Admission(error) => error.code(),
            Self::AlreadyCommitted => ErrorCode::AlreadyCommitted,
        }
    }
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub height: u64,
    pub index: u32,
}

/// Summary of the finalized chain.
#[derive(Clone, Debug)]
pub struct Status {
    pub chain_id: u64,
    pub height: u64,
    pub digest: Digest,
    pub state_root: Digest,
    pub timestamp_ms: u64,
    pub transactions: u64,
    pub mempool: usize,
}

struct Pending {
    height: u64,
    parent: Digest,
    timestamp_ms: u64,
    root: Digest,
    delta: Arc<Delta>,
}

/// What a node counts about its chain and mempool, where it happens (in `commit` and
/// `admit`). Detached (counted, not exported) until [`Chain::register_metrics`].
struct ChainMetrics {
    height: Gauge,
    transactions: Counter,
    mempool: Gauge,
    admitted: Counter,
    evicted: Counter,
}

impl ChainMetrics {
    fn detached() -> Self {
        Self {
            height: Registered::detached(Default::default()),
            transactions: Registered::detached(Default::default()),
            mempool: Registered::detached(Default::default()),
            admitted: Registered::detached(Default::default()),
            evicted: Registered::detached(Default::default()),
        }
    }

    fn register(context: &impl Metrics) -> Self {
        Self {
            height: context.gauge("height", "Height of the last finalized block."),
            transactions: context.counter("transactions", "Transactions committed since genesis."),
            mempool: context.gauge("mempool", "Transactions waiting in the mempool."),
            admitted: context.counter(
                "mempool_admitted",
                "Transactions admitted to the mempool since start.",
            ),
            evicted: context.counter(
                "mempool_evicted",
                "Transactions dropped from the mempool because they can never apply.",
            ),
        }
    }
}

struct Inner {
    metrics: ChainMetrics,
    state: State,
    height: u64,
    digest: Digest,
    root: Digest,
    timestamp_ms: u64,
    transactions: u64,
    pending: HashMap<Digest, Pending>,
    mempool: Mempool,
    verified: HashSet<Digest>,
    verified_order: VecDeque<Digest>,
    committed: HashMap<Digest, Location>,
    outbox: Vec<Transaction>,
    locations: Vec<(u64, u64)>,
    /// Digest of every finalized block, by height.
    digests: Vec<Digest>,
    /// Transactions evicted from the mempool because they can never apply, with the reason.
    rejected: HashMap<Digest, (ehrchain_types::ErrorCode, String)>,
    rejected_order: VecDeque<Digest>,
    /// Transactions admitted since start: a proposer waiting for work rebuilds only when
    /// this moved.
    admissions: u64,
}

impl Inner {
    fn remember_verified(&mut self, id: Digest) {
        if self.verified.insert(id) {
            self.verified_order.push_back(id);
            while self.verified_order.len() > VERIFIED_IDS_MAX {
                if let Some(old) = self.verified_order.pop_front() {
                    self.verified.remove(&old);
                }
            }
        }
    }

    /// The deltas from `digest` back to the finalized tip, newest first; `None` if `digest`
    /// is neither finalized nor pending.
    fn chain_to(&self, digest: &Digest) -> Option<Vec<&Delta>> {
        let mut deltas = Vec::new();
        let mut cursor = *digest;
        loop {
            if cursor == self.digest {
                return Some(deltas);
            }
            let pending = self.pending.get(&cursor)?;
            deltas.push(pending.delta.as_ref());
            cursor = pending.parent;
        }
    }

    fn known(&self, digest: &Digest) -> bool {
        *digest == self.digest || self.pending.contains_key(digest)
    }

    /// Whether `digest` at `height` is a finalized block.
    fn finalized(&self, height: u64, digest: &Digest) -> bool {
        self.digests.get(height as usize) == Some(digest)
    }

    /// Root, height and timestamp of a known block.
    fn summary(&self, digest: &Digest) -> Option<(u64, Digest, u64)> {
        if *digest == self.digest {
            return Some((self.height, self.root, self.timestamp_ms));
        }
        self.pending
            .get(digest)
            .map(|p| (p.height, p.root, p.timestamp_ms))
    }
}

/// Shared handle to the chain's state, mempool and log index.
pub struct Chain<B: Blob> {
    config: Arc<ChainConfig>,
    inner: Arc<Mutex<Inner>>,
    blob: Arc<Mutex<Option<Arc<B>>>>,
    committed_height: crate::committed::Committed,
    /// When (runtime clock, ms) this node last saw a consensus certificate: a notarization,
    /// nullification or finalization. An idle chain still certifies a view a second.
    progress_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl<B: Blob> Clone for Chain<B> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            inner: self.inner.clone(),
            blob: self.blob.clone(),
            committed_height: self.committed_height.clone(),
            progress_ms: self.progress_ms.clone(),
        }
    }
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Check the chain id and the signatures of `transactions`, in one batch.
pub fn verify_signatures(
    rng: &mut impl CryptoRng,
    chain_id: u64,
    transactions: &[&Transaction],
) -> Result<(), ehrchain_types::Error> {
    for tx in transactions {
        if tx.body.chain_id != chain_id {
            return Err(ehrchain_types::Error::WrongChain(
                tx.body.chain_id,
                chain_id,
            ));
        }
    }
    if transactions.is_empty() {
        return Ok(());
    }
    let ok = PublicKey::verify_batch(
        rng,
        transactions,
        |_, tx| BatchEntry {
            namespace: TRANSACTION_NAMESPACE,
            message: tx.body_bytes(),
            public_key: &tx.body.signer,
            signature: &tx.signature,
        },
        &commonware_parallel::Sequential,
    );
    if ok {
        Ok(())
    } else {
        Err(ehrchain_types::Error::BadSignature)
    }
}

impl<B: Blob> Chain<B> {
    /// Rebuild the chain from the stored records (genesis first).
    pub fn restore(config: ChainConfig, records: &[Record]) -> Result<Self, String> {
        let genesis = &config.genesis;
        let mut inner = Inner {
            metrics: ChainMetrics::detached(),
            state: State::new(&config.institutions, &config.auditors, config.rules),
            height: 0,
            digest: genesis.digest(),
            root: genesis.header.state_root,
            timestamp_ms: genesis.header.timestamp_ms,
            transactions: 0,
            pending: HashMap::new(),
            mempool: Mempool::new(config.mempool_transactions_max),
            verified: HashSet::new(),
            verified_order: VecDeque::new(),
            committed: HashMap::new(),
            outbox: Vec::new(),
            locations: Vec::new(),
            digests: vec![genesis.digest()],
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
            admissions: 0,
        };
        for record in records.iter().skip(1) {
            let block = Block::decode(&record.block)
                .map_err(|e| format!("stored block {} does not decode: {e}", record.height))?;
            if block.header.parent != inner.digest || block.height() != inner.height + 1 {
                return Err(format!(
                    "stored block {} does not extend the chain",
                    record.height
                ));
            }
            let delta = execute::execute(&inner.state, &block)
                .map_err(|e| format!("stored block {} does not execute: {e}", record.height))?;
            let root = state::block_root(&inner.state, &inner.root, block.height(), &delta);
            if root != block.header.state_root {
                return Err(format!(
                    "stored block {} has a wrong state root",
                    record.height
                ));
            }
            commit(&mut inner, &block, Arc::new(delta), root);
        }
        if let Some(first) = records.first() {
            let stored = Block::decode(&first.block).map_err(|e| e.to_string())?;
            if stored.digest() != genesis.digest() {
                return Err("the block log belongs to another genesis".into());
            }
        }
        let committed_height = crate::committed::Committed::new(inner.height);
        Ok(Self {
            config: Arc::new(config),
            inner: Arc::new(Mutex::new(inner)),
            blob: Arc::new(Mutex::new(None)),
            committed_height,
            progress_ms: Arc::default(),
        })
    }

    /// Where consensus notes the time of each certificate it sees.
    pub fn progress_handle(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.progress_ms.clone()
    }

    /// When this node last saw a consensus certificate (ms since the Unix epoch; 0 never).
    pub fn progress_ms(&self) -> u64 {
        self.progress_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest an idle chain goes without a block (`Rules::heartbeat_ms`).
    pub fn heartbeat_ms(&self) -> u64 {
        self.config.rules.heartbeat_ms
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("chain state lock poisoned")
    }

    /// The digest of the finalized block at `height`.
    pub fn digest_at(&self, height: u64) -> Option<Digest> {
        self.lock().digests.get(height as usize).copied()
    }

    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// Whether a proposer on top of `parent` may wait for transactions instead of proposing an
    /// empty block now, and until which block time it may. `None`: propose now. A chain rests
    /// between heartbeats (`Rules::heartbeat_ms`, 0 = never rest) but not while a change of
    /// validators waits for its epoch boundary, which only blocks can reach.
    fn rest_until(&self, parent: &Digest) -> Option<u64> {
        let heartbeat = self.config.rules.heartbeat_ms;
        if heartbeat == 0 {
            return None;
        }
        let inner = self.lock();
        let (parent_height, _, parent_time) = inner.summary(parent)?;
        let epoch_blocks = self.config.rules.epoch_blocks.max(1);
        let next_epoch = (parent_height + 1) / epoch_blocks + 1;
        let members: Vec<PublicKey> = inner.state.member_keys();
        let current = inner
            .state
            .epoch_validators((parent_height + 1) / epoch_blocks);
        if current.is_some_and(|set| set != members.as_slice())
            || inner
                .state
                .epoch_validators(next_epoch)
                .is_some_and(|set| set != members.as_slice())
        {
            return None;
        }
        Some(parent_time.saturating_add(heartbeat))
    }

    /// Transactions admitted so far (a counter that only grows).
    fn admissions(&self) -> u64 {
        self.lock().admissions
    }

    /// The chain id every transaction signs.
    pub fn chain_id(&self) -> u64 {
        self.config.chain_id
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        Status {
            chain_id: self.config.chain_id,
            height: inner.height,
            digest: inner.digest,
            state_root: inner.root,
            timestamp_ms: inner.timestamp_ms,
            transactions: inner.transactions,
            mempool: inner.mempool.len(),
        }
    }

    /// Export this chain's counts through `context` (the node's metrics registry), starting
    /// from what the restored chain already holds.
    pub fn register_metrics(&self, context: &impl Metrics) {
        let metrics = ChainMetrics::register(context);
        let mut inner = self.lock();
        let _ = metrics.height.try_set(inner.height);
        metrics.transactions.inc_by(inner.transactions);
        let _ = metrics.mempool.try_set(inner.mempool.len());
        inner.metrics = metrics;
    }

    /// Decode, check and admit a transaction from a client.
    pub fn submit(&self, bytes: &[u8]) -> Result<Digest, SubmitError> {
        let tx = Transaction::decode(bytes)?;
        tx.verify(self.config.chain_id)?;
        self.admit(tx, true)
    }

    /// Admit transactions whose signatures were checked by the caller.
    fn admit(&self, tx: Transaction, gossip: bool) -> Result<Digest, SubmitError> {
        let id = tx.id();
        let mut inner = self.lock();
        if inner.committed.contains_key(&id) {
            return Err(SubmitError::AlreadyCommitted);
        }
        let Inner { mempool, state, .. } = &mut *inner;
        mempool.insert(tx.clone(), state)?;
        inner.metrics.admitted.inc();
        let _ = inner.metrics.mempool.try_set(inner.mempool.len());
        inner.remember_verified(id);
        inner.admissions += 1;
        if gossip && inner.outbox.len() < OUTBOX_TRANSACTIONS_MAX {
            inner.outbox.push(tx);
        }
        Ok(id)
    }

    /// Admit a batch received from a peer: checked in one signature batch, never re-gossiped.
    pub fn admit_from_peer(
        &self,
        rng: &mut impl CryptoRng,
        transactions: Vec<Transaction>,
    ) -> usize {
        self.admit_batch(rng, transactions, false)
            .iter()
            .filter(|r| r.is_ok())
            .count()
    }

    /// Admit a batch from a client (gossiped on) or a peer, checking signatures in one batch.
    /// One result per transaction, in order.
    pub fn admit_batch(
        &self,
        rng: &mut impl CryptoRng,
        transactions: Vec<Transaction>,
        gossip: bool,
    ) -> Vec<Result<Digest, SubmitError>> {
        let refs: Vec<&Transaction> = transactions.iter().collect();
        let batch_ok = verify_signatures(rng, self.config.chain_id, &refs).is_ok();
        transactions
            .into_iter()
            .map(|tx| {
                if !batch_ok {
                    // One bad signature spoils the batch: check each to keep the good ones.
                    tx.verify(self.config.chain_id)?;
                }
                self.admit(tx, gossip)
            })
            .collect()
    }

    /// Take the transactions waiting to be gossiped.
    pub fn take_outbox(&self, max: usize) -> Vec<Transaction> {
        let mut inner = self.lock();
        let count = inner.outbox.len().min(max);
        inner.outbox.drain(..count).collect()
    }

    /// Where a committed transaction is, if it is committed.
    pub fn location(&self, id: &Digest) -> Option<Location> {
        self.lock().committed.get(id).copied()
    }

    /// Whether a transaction waits in the mempool.
    /// Why a transaction was evicted from the mempool, if it was.
    pub fn rejection(&self, id: &Digest) -> Option<(ehrchain_types::ErrorCode, String)> {
        self.lock().rejected.get(id).cloned()
    }

    pub fn is_pending(&self, id: &Digest) -> bool {
        self.lock().mempool.contains(id)
    }

    /// The next nonce of `signer` in the finalized state.
    pub fn nonce(&self, signer: &PublicKey) -> u64 {
        self.lock().state.nonce(signer)
    }

    /// The nonce a new transaction of `signer` should carry: after its final state and the
    /// transactions of it still waiting in the pool.
    pub fn next_nonce(&self, signer: &PublicKey) -> u64 {
        let inner = self.lock();
        inner.mempool.next_nonce(signer, inner.state.nonce(signer))
    }

    /// The record of an anchored digest.
    pub fn anchor(&self, digest: &Digest) -> Option<AnchorRecord> {
        self.lock().state.anchor(digest).cloned()
    }

    /// Read a stored block and its finalization.
    pub async fn record(&self, height: u64) -> Option<Record> {
        let location = self.lock().locations.get(height as usize).copied()?;
        let blob = self.blob.lock().expect("blob lock").clone()?;
        crate::log::read_at(&*blob, height, location).await.ok()
    }

    /// Read the finalized state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock().state)
    }

    /// Watch the committed height, so a caller can wait for a transaction to commit.
    pub fn subscribe(&self) -> crate::committed::Subscription {
        self.committed_height.subscribe()
    }

    /// Make sure the state after `digest` is known, executing unknown ancestors from the
    /// ancestry stream (newest first). Returns false if an ancestor is invalid.
    async fn ensure_known(
        &self,
        rng: &mut impl CryptoRng,
        first: Digested<Block>,
        ancestry: &mut impl Ancestry<Block>,
    ) -> bool {
        let mut unknown = Vec::new();
        let mut cursor = first;
        loop {
            {
                let inner = self.lock();
                if inner.known(&cursor.digest()) {
                    break;
                }
                if cursor.height() <= Height::new(inner.height) {
                    if inner.finalized(cursor.height().get(), &cursor.digest()) {
                        // Finalized while we were walking: whatever follows it was checked
                        // or is checked below against the current tip.
                        break;
                    }
                    // Conflicts with the finalized chain.
                    return false;
                }
            }
            let parent = cursor.parent();
            unknown.push(cursor);
            match ancestry.next().await {
                Some(next) if next.digest() == parent => cursor = next,
                _ => return false,
            }
        }
        for block in unknown.into_iter().rev() {
            if self.check_and_stage(rng, block.inner()).is_err() {
                return false;
            }
        }
        true
    }

    /// Check a block whose parent is known and remember its writes.
    fn check_and_stage(&self, rng: &mut impl CryptoRng, block: &Block) -> Result<(), String> {
        let unchecked: Vec<&Transaction> = {
            let inner = self.lock();
            if inner.pending.contains_key(&block.digest()) {
                return Ok(());
            }
            block
                .transactions
                .iter()
                .filter(|tx| !inner.verified.contains(&tx.id()))
                .collect()
        };
        verify_signatures(rng, self.config.chain_id, &unchecked).map_err(|e| e.to_string())?;
        let mut inner = self.lock();
        for tx in &unchecked {
            inner.remember_verified(tx.id());
        }
        let header = &block.header;
        if header.height <= inner.height {
            // Finalized while it waited to be checked: valid exactly if it is the finalized one.
            return if inner.finalized(header.height, &block.digest()) {
                Ok(())
            } else {
                Err("conflicts with the finalized chain".into())
            };
        }
        if header.chain_id != self.config.chain_id {
            return Err("wrong chain id".into());
        }
        let (parent_height, parent_root, parent_time) = inner
            .summary(&header.parent)
            .ok_or_else(|| "unknown parent".to_string())?;
        if header.height != parent_height + 1 {
            return Err("height does not follow parent".into());
        }
        if header.timestamp_ms < parent_time {
            return Err("timestamp before parent".into());
        }
        let deltas = inner
            .chain_to(&header.parent)
            .ok_or_else(|| "parent not on the finalized chain".to_string())?;
        let overlay = Overlay {
            base: &inner.state,
            deltas,
        };
        let delta = execute::execute(&overlay, block).map_err(|e| e.to_string())?;
        let root = state::block_root(&overlay, &parent_root, header.height, &delta);
        if root != header.state_root {
            return Err("state root mismatch".into());
        }
        inner.pending.insert(
            block.digest(),
            Pending {
                height: header.height,
                parent: header.parent,
                timestamp_ms: header.timestamp_ms,
                root,
                delta: Arc::new(delta),
            },
        );
        Ok(())
    }

    /// Build a block on `parent` from the mempool.
    fn build(&self, parent: &Digest, proposer: PublicKey, now_ms: u64) -> Option<Block> {
        let mut inner = self.lock();
        let (parent_height, parent_root, parent_time) = inner.summary(parent)?;
        let deltas = inner.chain_to(parent)?;
        let overlay = Overlay {
            base: &inner.state,
            deltas,
        };
        let limit = self
            .config
            .block_transactions_max
            .min(BLOCK_TRANSACTIONS_MAX);
        let candidates = inner.mempool.select(
            &overlay,
            limit,
            BLOCK_SIZE_BYTES_MAX - ehrchain_types::block::HEADER_SIZE_BYTES,
        );
        let height = parent_height + 1;
        let timestamp_ms = now_ms.max(parent_time);
        let mut delta = Delta {
            time_ms: timestamp_ms,
            ..Delta::default()
        };
        let mut transactions = Vec::with_capacity(candidates.len());
        let mut failed = Vec::new();
        for tx in candidates {
            // A candidate can still fail (an anchor or a record version taken by another
            // transaction); leave it out, and have it re-checked after the next commit.
            let at = At {
                height,
                time_ms: timestamp_ms,
                index: transactions.len() as u32,
            };
            match execute::apply(&overlay, &mut delta, at, &tx) {
                Ok(()) => transactions.push(tx),
                Err(Rejection::StaleNonce { .. } | Rejection::FutureNonce { .. }) => {}
                Err(_) => failed.push(tx.id()),
            }
        }
        let root = state::block_root(&overlay, &parent_root, height, &delta);
        for id in failed {
            inner.mempool.suspect(id);
        }
        let block = Block::new(
            self.config.chain_id,
            height,
            *parent,
            timestamp_ms,
            proposer,
            root,
            transactions,
        );
        inner.pending.insert(
            block.digest(),
            Pending {
                height,
                parent: *parent,
                timestamp_ms: block.header.timestamp_ms,
                root,
                delta: Arc::new(delta),
            },
        );
        Some(block)
    }
}

/// Fold a finalized block into the state.
fn commit(inner: &mut Inner, block: &Block, delta: Arc<Delta>, root: Digest) {
    let height = block.height();
    // Drop this height's pending entries first, so the delta is usually ours alone to move.
    inner.pending.retain(|_, p| p.height > height);
    let previous_root = inner.root;
    inner.state.commit_block(
        height,
        &previous_root,
        Arc::try_unwrap(delta).unwrap_or_else(|shared| (*shared).clone()),
    );
    inner.height = height;
    inner.digest = block.digest();
    inner.root = root;
    inner.timestamp_ms = block.header.timestamp_ms;
    inner.transactions += block.transactions.len() as u64;
    inner.digests.push(block.digest());
    for (index, tx) in block.transactions.iter().enumerate() {
        inner.committed.insert(
            tx.id(),
            Location {
                height,
                index: index as u32,
            },
        );
        inner.verified.remove(&tx.id());
    }
    let Inner { mempool, state, .. } = inner;
    let displaced = mempool
        .remove_committed(&block.transactions, state)
        .into_iter()
        .map(|id| {
            (
                id,
                ehrchain_types::ErrorCode::NonceTaken,
                "another transaction of this signer took this nonce; re-sign with the current nonce"
                    .to_string(),
            )
        });
    let evicted: Vec<(Digest, ehrchain_types::ErrorCode, String)> =
        displaced.chain(mempool.evict_failed(state)).collect();
    let expired = mempool.expire_gapped(state);
    if expired > 0 {
        tracing::info!(
            expired,
            "dropped transactions that waited too long behind a nonce gap"
        );
    }
    inner.metrics.evicted.inc_by(evicted.len() as u64);
    let _ = inner.metrics.height.try_set(height);
    inner
        .metrics
        .transactions
        .inc_by(block.transactions.len() as u64);
    let _ = inner.metrics.mempool.try_set(inner.mempool.len());
    for (id, code, reason) in evicted {
        if inner.rejected_order.len() >= REJECTED_MAX
            && let Some(oldest) = inner.rejected_order.pop_front()
        {
            inner.rejected.remove(&oldest);
        }
        inner.rejected_order.push_back(id);
        inner.rejected.insert(id, (code, reason));
    }
}

/// How often a resting proposer looks for new transactions (the added latency of the first
/// transaction after a quiet spell).
pub const IDLE_POLL: Duration = Duration::from_millis(5);

/// The consensus-facing side of the chain: proposes and verifies blocks.
pub struct App<B: Blob> {
    chain: Chain<B>,
}

impl<B: Blob> Clone for App<B> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
        }
    }
}

impl<B: Blob> App<B> {
    pub const fn new(chain: Chain<B>) -> Self {
        Self { chain }
    }
}

impl<E, B> Application<E> for App<B>
where
    E: Clock + CryptoRng + Send + 'static,
    B: Blob,
{
    type SigningScheme = Scheme;
    type Context = Context<Digest, PublicKey>;
    type Block = Block;
    type Input = ();

    async fn propose(
        &mut self,
        (mut runtime, context): (E, Self::Context),
        mut ancestry: impl Ancestry<Self::Block>,
        _input: (),
    ) -> Option<Digested<Self::Block>> {
        let parent = ancestry.next().await?;
        let parent_digest = parent.digest();
        if !self
            .chain
            .ensure_known(&mut runtime, parent, &mut ancestry)
            .await
        {
            return None;
        }
        // With nothing to order, wait (polling the pool) until a transaction arrives or the
        // heartbeat is due. Consensus cancels this wait when the view times out; the next
        // leader then waits in its turn, so an idle chain only nullifies views.
        let rest_until = self.chain.rest_until(&parent_digest);
        let mut tried = None;
        loop {
            let now_ms = to_ms(runtime.current());
            let due = rest_until.is_none_or(|until| now_ms >= until);
            let admissions = self.chain.admissions();
            if due || tried != Some(admissions) {
                tried = Some(admissions);
                let block = self
                    .chain
                    .build(&parent_digest, context.leader.clone(), now_ms)?;
                if due || !block.transactions.is_empty() {
                    let digest = block.digest();
                    return Some(Digested::precomputed(block, digest));
                }
            }
            runtime.sleep(IDLE_POLL).await;
        }
    }

    async fn verify(
        &mut self,
        (mut runtime, context): (E, Self::Context),
        mut ancestry: impl Ancestry<Self::Block>,
    ) -> bool {
        let Some(block) = ancestry.next().await else {
            return false;
        };
        if block.inner().header.proposer != context.leader {
            return false;
        }
        // A block from the future waits for our clock instead of being judged now.
        let ahead = block
            .inner()
            .header
            .timestamp_ms
            .saturating_sub(to_ms(runtime.current()) + TIMESTAMP_AHEAD_MAX.as_millis() as u64);
        if ahead > 0 {
            runtime.sleep(Duration::from_millis(ahead)).await;
        }
        let Some(parent) = ancestry.next().await else {
            return false;
        };
        if parent.digest() != block.inner().header.parent {
            return false;
        }
        if !self
            .chain
            .ensure_known(&mut runtime, parent, &mut ancestry)
            .await
        {
            return false;
        }
        match self.chain.check_and_stage(&mut runtime, block.inner()) {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(height = block.height().get(), reason, "rejected proposal");
                false
            }
        }
    }
}

/// Executes finalized blocks in order, appends them to the log, and acknowledges them.
pub struct Finalizer<B: Blob> {
    chain: Chain<B>,
    log: BlockLog<B>,
}

/// Marshal's reports, forwarded to the finalizer task. Marshal dispatches at most
/// `max_pending_acks` blocks before an acknowledgement, which bounds this queue.
pub type FinalizerReporter = crate::reporter::Forwarder<Update<Block>>;

impl<B: Blob> Finalizer<B> {
    pub fn new(chain: Chain<B>, log: BlockLog<B>) -> Self {
        {
            *chain.blob.lock().expect("blob lock") = Some(log.blob());
            let mut inner = chain.lock();
            inner.locations = (0..log.len())
                .map(|h| log.location(h).expect("indexed"))
                .collect();
        }
        Self { chain, log }
    }

    /// Process one finalized block. Storage failure halts the node: a validator that cannot
    /// persist what it acknowledges must not go on.
    pub async fn finalize(
        &mut self,
        rng: &mut impl CryptoRng,
        block: &Block,
        finalization: Option<Finalization>,
    ) {
        let height = block.height();
        if height < self.log.len() {
            return;
        }
        assert_eq!(
            height,
            self.log.len(),
            "marshal delivers blocks without gaps"
        );
        let (delta, root) = {
            let staged = {
                let inner = self.chain.lock();
                assert_eq!(
                    block.header.parent, inner.digest,
                    "a finalized block must extend the finalized chain"
                );
                // Keep the entry until the commit below: children are verified against it
                // while the block is being written.
                inner
                    .pending
                    .get(&block.digest())
                    .map(|p| (p.delta.clone(), p.root))
            };
            match staged {
                Some(staged) => staged,
                None => {
                    // Not seen before (we were behind): check it fully now.
                    let unchecked: Vec<&Transaction> = block.transactions.iter().collect();
                    verify_signatures(rng, self.chain.config.chain_id, &unchecked).expect(
                        "a finalized block carries a bad signature: more than f validators are faulty",
                    );
                    let inner = self.chain.lock();
                    let delta = execute::execute(&inner.state, block).expect(
                        "a finalized block does not execute: more than f validators are faulty",
                    );
                    let root = state::block_root(&inner.state, &inner.root, height, &delta);
                    (Arc::new(delta), root)
                }
            }
        };
        assert_eq!(
            root, block.header.state_root,
            "a finalized block has a wrong state root: more than f validators are faulty"
        );
        let finalization_bytes = finalization
            .map(|f| commonware_codec::Encode::encode(&f).to_vec())
            .unwrap_or_default();
        if let Err(error) = self
            .log
            .append(height, &block.encode(), &finalization_bytes)
            .await
        {
            panic!("cannot persist finalized block {height}: {error}");
        }
        let location = self.log.location(height).expect("just appended");
        {
            let mut inner = self.chain.lock();
            inner.locations.push(location);
            commit(&mut inner, block, delta, root);
        }
        self.chain.committed_height.publish(height);
    }
}

/// Drive a finalizer from marshal's updates until the channel closes.
pub async fn run_finalizer<B: Blob, R: CryptoRng>(
    mut finalizer: Finalizer<B>,
    mut rng: R,
    mut updates: crate::reporter::Receiver<Update<Block>>,
    marshal: commonware_consensus::marshal::core::Mailbox<
        Scheme,
        commonware_consensus::marshal::standard::Standard<Block>,
    >,
) {
    while let Some(update) = updates.next().await {
        let Update::Block(block, ack) = update else {
            continue;
        };
        let height = block.height();
        if height.get() >= finalizer.log.len() && height.get() > 0 {
            let finalization = marshal.get_finalization(height).await;
            finalizer
                .finalize(&mut rng, block.inner(), finalization)
                .await;
        }
        ack.acknowledge();
    }
}

/// The state root of the empty chain, for building the genesis block.
pub fn genesis_root(chain_id: u64) -> Digest {
    state::genesis_root(chain_id)
}

/// Helper for tests and tools: sign with a validator's key.
pub fn key_public(key: &PrivateKey) -> PublicKey {
    use commonware_cryptography::Signer;
    key.public_key()
}
