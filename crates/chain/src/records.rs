//! Keep each node's off-chain store in step with the chain.
//!
//! For every final record anchor, the node moves the staged upload into its store, or fetches
//! the envelope and its wraps from a peer over the authenticated p2p network, checking the
//! envelope against the anchored hash before keeping it. For every final erasure, it deletes
//! the envelopes and wraps of all the patient's records. At start-up it reconciles the store
//! with the state, so deletions survive a crash and missing blobs are fetched again.
//!
//! Consent follows the same path. A grant's share bundle (the data keys of the patient's
//! existing records, wrapped for the grantee) is fetched like an envelope; once the grant is
//! final its wraps are added to the records they belong to. When a grant is revoked or
//! expires, every node deletes the grantee's wraps (unless another right still covers them)
//! and the bundle. Wraps that arrive from a peer are kept only for parties entitled now.

use crate::Chain;
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{
    Blob, Clock, Metrics,
    telemetry::metrics::{Counter, Gauge, GaugeExt as _, MetricsExt as _, Registered},
};
use ehrchain_contracts::consent::{Grant, GrantId};
use ehrchain_contracts::{
    facts::RecordVersion,
    state::{Reader as _, State},
};
use ehrchain_crypto::{EncryptionPublicKey, Share, WRAP_BYTES, Wrap, envelope_hash};
use ehrchain_storage::BlobStore;
use ehrchain_types::{Block, Digest, PatientId, Payload, PublicKey, RecordId};
use futures::channel::{mpsc, oneshot};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

/// Most blobs asked for in one request.
pub const FETCH_ITEMS_MAX: usize = 64;

/// Largest message on the blob channel: one full envelope and its wraps, plus framing.
pub const BLOB_MESSAGE_BYTES_MAX: usize = 3
    + ehrchain_crypto::ENVELOPE_SIZE_BYTES_MAX
    + 32
    + 1
    + 8
    + ehrchain_storage::WRAPS_PER_VERSION_MAX * WRAP_BYTES;

/// Most missing blobs remembered for fetching.
pub const MISSING_MAX: usize = 1_000_000;

/// How often missing blobs are asked for.
const FETCH_INTERVAL: Duration = Duration::from_millis(50);

/// Most shared wraps kept waiting for their envelopes.
pub const WAITING_WRAPS_MAX: usize = 200_000;

/// Most requests sent per interval.
const REQUESTS_PER_TICK_MAX: usize = 8;

/// A blob asked for and not received is asked for again (of the next peer) after this long;
/// after [`FAST_ATTEMPTS`] it doubles with each unanswered attempt up to [`ASK_AGAIN_MAX`].
/// It is never given up on.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(500);
/// The longest wait between two requests for the same missing blob.
pub const ASK_AGAIN_MAX: Duration = Duration::from_secs(8);
/// How often the whole store is checked against the final state, so a blob lost for any
/// reason (a torn upload at a crash, a damaged copy discarded by a read) is fetched again
/// without a restart.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(15);

/// How long an upload may stay staged without its anchor becoming final.
pub const STAGED_AGE_MAX: Duration = Duration::from_secs(600);

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const KEY_REQUEST: u8 = 3;
const KEY_RESPONSE: u8 = 4;

/// Most key releases a gateway may have waiting on this keeper at once; an ask beyond it is
/// answered "no key" at once rather than queued.
pub const RELEASES_PENDING_MAX: usize = 256;

/// How long a key release asked of a patient's home node is waited for.
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What a node still needs: a record version's envelope and wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    hash: [u8; 32],
    record: RecordId,
    version: u32,
}

fn encode_request(items: &[Wanted]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + items.len() * 52);
    out.push(REQUEST);
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for item in items {
        out.extend_from_slice(&item.hash);
        out.extend_from_slice(&item.record);
        out.extend_from_slice(&item.version.to_be_bytes());
    }
    out
}

/// A decoded message from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Request(Vec<([u8; 32], RecordId, u32)>),
    Response(Vec<([u8; 32], Vec<u8>, Vec<Wrap>)>),
    /// Release the data keys of these versions to these readers (`KeyAsk`).
    KeyRequest(Vec<KeyAsk>),
    /// Data keys released, each wrapped for the reader it was asked for.
    KeyResponse(Vec<([u8; 32], Wrap)>),
}

/// One key asked of a patient's home node: a version (by envelope hash, record and version)
/// and the identity of the clinician reading it. The home node releases the version's data
/// key, wrapped for that clinician's encryption key, only if the consent contract allows the
/// clinician's emergency read now and the clinician belongs to the asking node's institution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyAsk {
    pub hash: [u8; 32],
    pub record: RecordId,
    pub version: u32,
    /// The reader's Ed25519 identity key.
    pub reader: [u8; 32],
}

fn encode_key_request(items: &[KeyAsk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + items.len() * 84);
    out.push(KEY_REQUEST);
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for item in items {
        out.extend_from_slice(&item.hash);
        out.extend_from_slice(&item.record);
        out.extend_from_slice(&item.version.to_be_bytes());
        out.extend_from_slice(&item.reader);
    }
    out
}

fn encode_key_response(items: &[([u8; 32], Wrap)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + items.len() * (32 + WRAP_BYTES));
    out.push(KEY_RESPONSE);
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for (hash, wrap) in items {
        out.extend_from_slice(hash);
        out.extend_from_slice(&wrap.encode());
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().expect("length"))
    }
}

/// Decode a blob-channel message from an untrusted peer, with limits; `None` if malformed.
pub fn decode_message(bytes: &[u8]) -> Option<Message> {
    if bytes.len() > BLOB_MESSAGE_BYTES_MAX {
        return None;
    }
    let mut cursor = Cursor(bytes);
    let kind = cursor.array::<1>()?[0];
    let count = u16::from_be_bytes(cursor.array()?) as usize;
    if count > FETCH_ITEMS_MAX {
        return None;
    }
    let message = match kind {
        REQUEST => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push((
                    cursor.array()?,
                    cursor.array()?,
                    u32::from_be_bytes(cursor.array()?),
                ));
            }
            Message::Request(items)
        }
        RESPONSE => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let hash: [u8; 32] = cursor.array()?;
                let envelope_len = u32::from_be_bytes(cursor.array()?) as usize;
                if envelope_len > ehrchain_crypto::ENVELOPE_SIZE_BYTES_MAX {
                    return None;
                }
                let envelope = cursor.take(envelope_len)?.to_vec();
                let wraps_len = u32::from_be_bytes(cursor.array()?) as usize;
                if !wraps_len.is_multiple_of(WRAP_BYTES)
                    || wraps_len / WRAP_BYTES > ehrchain_storage::WRAPS_PER_VERSION_MAX
                {
                    return None;
                }
                let wraps = cursor
                    .take(wraps_len)?
                    .chunks(WRAP_BYTES)
                    .map(|c| Wrap::decode(c).ok())
                    .collect::<Option<Vec<_>>>()?;
                items.push((hash, envelope, wraps));
            }
            Message::Response(items)
        }
        KEY_REQUEST => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(KeyAsk {
                    hash: cursor.array()?,
                    record: cursor.array()?,
                    version: u32::from_be_bytes(cursor.array()?),
                    reader: cursor.array()?,
                });
            }
            Message::KeyRequest(items)
        }
        KEY_RESPONSE => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let hash: [u8; 32] = cursor.array()?;
                let wrap = Wrap::decode(cursor.take(WRAP_BYTES)?).ok()?;
                items.push((hash, wrap));
            }
            Message::KeyResponse(items)
        }
        _ => return None,
    };
    cursor.0.is_empty().then_some(message)
}

fn encode_response(items: &[([u8; 32], Vec<u8>, Vec<Wrap>)]) -> Vec<u8> {
    let mut out = vec![RESPONSE];
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for (hash, envelope, wraps) in items {
        out.extend_from_slice(hash);
        out.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
        out.extend_from_slice(envelope);
        out.extend_from_slice(&((wraps.len() * WRAP_BYTES) as u32).to_be_bytes());
        for wrap in wraps {
            out.extend_from_slice(&wrap.encode());
        }
    }
    out
}

/// Fail-stop on a storage error: a node that cannot keep its store in step must not go on
/// answering as if it had.
fn halt(error: ehrchain_storage::Error) -> ! {
    tracing::error!(%error, "blob store failed; halting the node");
    std::process::exit(3);
}

/// What the records keeper counts, where it happens.
struct KeeperMetrics {
    missing: Gauge,
    fetched: Counter,
    refused: Counter,
    served: Counter,
    released: Counter,
}

impl KeeperMetrics {
    fn detached() -> Self {
        Self {
            missing: Registered::detached(Default::default()),
            fetched: Registered::detached(Default::default()),
            refused: Registered::detached(Default::default()),
            served: Registered::detached(Default::default()),
            released: Registered::detached(Default::default()),
        }
    }

    fn register(context: &impl Metrics) -> Self {
        Self {
            missing: context.gauge(
                "blobs_missing",
                "Record blobs of final blocks this node does not hold yet (being fetched from peers).",
            ),
            fetched: context.counter(
                "blobs_fetched",
                "Record blobs fetched from peers and stored.",
            ),
            refused: context.counter(
                "blobs_refused",
                "Record blobs from peers refused because they do not match their anchor.",
            ),
            served: context.counter("blobs_served", "Record blobs sent to peers that asked."),
            released: context.counter(
                "keys_released",
                "Data keys released to peers, rewrapped for their clinicians' allowed emergency reads.",
            ),
        }
    }
}

/// The keeper of one node's off-chain store.
pub struct Records<B: Blob> {
    chain: Chain<B>,
    store: Arc<BlobStore>,
    /// What this node still needs, with when it was last asked for (by the runtime's clock)
    /// and how often.
    missing: BTreeMap<Wanted, Option<(SystemTime, u32)>>,
    /// What the keeper counts (the missing gauge also feeds `/chain/status`).
    metrics: KeeperMetrics,
    /// This node's key: every other member is a peer to fetch from.
    me: PublicKey,
    next_peer: usize,
    /// Staged uploads copied into the store, to drop once the store is synced.
    promoted: Vec<[u8; 32]>,
    /// Share bundles of final grants not yet applied, by bundle hash.
    shares: BTreeMap<[u8; 32], (PatientId, GrantId)>,
    /// Shared wraps for versions whose envelope has not arrived yet, by envelope hash; added
    /// (if still entitled) when it does.
    waiting_wraps: BTreeMap<[u8; 32], Vec<Wrap>>,
    /// Block time up to which grant expiries were carried out.
    expired_until_ms: u64,
    /// The node's custody directory: an erased patient's custodial seed is deleted from it.
    custody: Option<std::path::PathBuf>,
    /// This node's institution's X25519 key, with which it releases data keys to the readers
    /// of other institutions that the contract allows (see [`KeyAsk`]).
    release_key: Option<ehrchain_crypto::EncryptionKey>,
    /// The gateway's asks for keys this node does not hold (taken by [`run`]).
    asks: Option<mpsc::Receiver<Ask>>,
    /// Asks sent to a patient's home node and not yet answered, by (envelope hash, reader's
    /// encryption key); at most [`RELEASES_PENDING_MAX`].
    pending: BTreeMap<([u8; 32], [u8; 32]), Pending>,
}

/// A gateway's ask, with where its answer goes.
type Ask = (KeyAsk, oneshot::Sender<Option<Wrap>>);

/// A key release asked of a peer for this node's gateway.
struct Pending {
    ask: KeyAsk,
    peer: PublicKey,
    first: SystemTime,
    sent: SystemTime,
    replies: Vec<oneshot::Sender<Option<Wrap>>>,
}

/// How often an unanswered key release is asked again (the home node may not have applied
/// the block that allows the read yet).
const RELEASE_ASK_AGAIN: Duration = Duration::from_millis(400);

/// The gateway's handle on the keeper's key releases: ask for the data key of a version this
/// node holds no key for, released by the patient's home node if the contract allows the read.
#[derive(Clone)]
pub struct Releases {
    sender: mpsc::Sender<Ask>,
}

impl Releases {
    /// The data key of `ask`, wrapped for its reader, or `None` if it was refused, not
    /// answered within [`RELEASE_WAIT`], or too many asks are waiting.
    pub async fn ask(&self, ask: KeyAsk) -> Option<Wrap> {
        let (reply, answer) = oneshot::channel();
        self.sender.clone().try_send((ask, reply)).ok()?;
        answer.await.ok().flatten()
    }
}

impl<B: Blob> Records<B> {
    pub fn new(chain: Chain<B>, store: Arc<BlobStore>, me: PublicKey) -> Self {
        Self {
            chain,
            store,
            missing: BTreeMap::new(),
            metrics: KeeperMetrics::detached(),
            me,
            next_peer: 0,
            promoted: Vec::new(),
            shares: BTreeMap::new(),
            waiting_wraps: BTreeMap::new(),
            expired_until_ms: 0,
            custody: None,
            release_key: None,
            asks: None,
            pending: BTreeMap::new(),
        }
    }

    /// Release data keys with `institution_key` to readers of other institutions that the
    /// contract allows, and ask other nodes for keys this one lacks: the handle is the
    /// gateway's.
    pub fn with_releases(
        mut self,
        institution_key: ehrchain_crypto::EncryptionKey,
    ) -> (Self, Releases) {
        let (sender, receiver) = mpsc::channel(RELEASES_PENDING_MAX);
        self.release_key = Some(institution_key);
        self.asks = Some(receiver);
        (self, Releases { sender })
    }

    /// A gateway's ask: sent to the patient's home node (the request to send is returned), or
    /// answered "none" at once when there is no such node, reader or version, or too many
    /// asks wait.
    fn on_ask(
        &mut self,
        now: SystemTime,
        ask: KeyAsk,
        reply: oneshot::Sender<Option<Wrap>>,
    ) -> Option<(PublicKey, Vec<u8>)> {
        let target = self.chain.read(|s| {
            let version = s.version_by_hash(&ask.hash)?;
            if version.anchor.record != ask.record || version.anchor.version != ask.version {
                return None;
            }
            let home = s.patient(&version.anchor.patient)?.home.clone();
            let reader = ehrchain_types::decode_public_key(ask.reader).ok()?;
            Some((home, s.identity(&reader)?.encryption_key))
        });
        let Some((home, recipient)) = target.filter(|(home, _)| *home != self.me) else {
            let _ = reply.send(None);
            return None;
        };
        if let Some(pending) = self.pending.get_mut(&(ask.hash, recipient)) {
            pending.replies.push(reply);
            return None;
        }
        if self.pending.len() >= RELEASES_PENDING_MAX {
            let _ = reply.send(None);
            return None;
        }
        self.pending.insert(
            (ask.hash, recipient),
            Pending {
                ask,
                peer: home.clone(),
                first: now,
                sent: now,
                replies: vec![reply],
            },
        );
        Some((home, encode_key_request(&[ask])))
    }

    /// Give up on asks older than [`RELEASE_WAIT`] (their gateways hear "none"); ask again
    /// for those unanswered for [`RELEASE_ASK_AGAIN`].
    fn ask_again(&mut self, now: SystemTime) -> Vec<(PublicKey, Vec<u8>)> {
        let age = |at: SystemTime| now.duration_since(at).unwrap_or_default();
        self.pending.retain(|_, p| age(p.first) < RELEASE_WAIT);
        self.pending
            .values_mut()
            .filter(|p| age(p.sent) >= RELEASE_ASK_AGAIN)
            .map(|p| {
                p.sent = now;
                (p.peer.clone(), encode_key_request(&[p.ask]))
            })
            .collect()
    }

    /// Keys a peer released: each goes to the gateway asks waiting for it, if that peer is
    /// the one asked.
    fn on_released(&mut self, peer: &PublicKey, items: Vec<([u8; 32], Wrap)>) {
        for (hash, wrap) in items {
            let key = (hash, wrap.recipient.0);
            if self.pending.get(&key).is_some_and(|p| &p.peer == peer)
                && let Some(pending) = self.pending.remove(&key)
            {
                for reply in pending.replies {
                    let _ = reply.send(Some(wrap.clone()));
                }
            }
        }
    }

    /// Answer a peer's key request: for each ask the contract allows (see
    /// [`releasable`]), the data key unwrapped with a key this node holds (its
    /// institution's, or the patient's custodial key) and wrapped for the reader. Others are
    /// left out. The data key exists only in this function's memory.
    async fn release(&self, peer: &PublicKey, items: Vec<KeyAsk>) -> Vec<u8> {
        let mut released = Vec::new();
        for ask in items {
            let Some((patient, recipient)) = self.chain.read(|s| releasable(s, peer, &ask)) else {
                tracing::warn!(%peer, "a peer asked for a key the contract does not release to it");
                continue;
            };
            let wraps = match self.store.get(&ask.hash).await {
                Ok(Some((_, wraps))) => wraps,
                Ok(None) => continue,
                Err(e) => halt(e),
            };
            let custodial = self.custody.as_ref().and_then(|dir| {
                let text =
                    std::fs::read_to_string(dir.join(format!("{}.key", hex::encode(patient))))
                        .ok()?;
                let seed: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
                Some(ehrchain_crypto::EncryptionKey::from_seed(&seed))
            });
            let binding = ehrchain_crypto::Binding {
                record: ask.record,
                version: ask.version,
                patient,
            };
            let data_key = self
                .release_key
                .iter()
                .chain(custodial.iter())
                .find_map(|key| {
                    let wrap = wraps.iter().find(|w| w.recipient == key.public())?;
                    ehrchain_crypto::unwrap(wrap, key, &binding, &ask.hash).ok()
                });
            let Some(data_key) = data_key else {
                continue;
            };
            match ehrchain_crypto::wrap(
                &data_key,
                &EncryptionPublicKey(recipient),
                &binding,
                &ask.hash,
            ) {
                Ok(wrap) => released.push((ask.hash, wrap)),
                Err(error) => tracing::warn!(%error, "cannot wrap a released key for its reader"),
            }
        }
        self.metrics.released.inc_by(released.len() as u64);
        encode_key_response(&released)
    }

    /// Delete erased patients' custodial seeds (`<patient id>.key`) from `dir`.
    pub fn with_custody(mut self, dir: std::path::PathBuf) -> Self {
        self.custody = Some(dir);
        self
    }

    /// Overwrite and delete the custodial seed of an erased patient, if this node holds it.
    fn shred_custody(&self, patient: &PatientId) {
        let Some(dir) = &self.custody else {
            return;
        };
        let path = dir.join(format!("{}.key", hex::encode(patient)));
        match shred(&path) {
            Ok(()) => tracing::info!("an erased patient's custodial key was deleted"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                // A key the erasure requires gone that cannot be deleted: stop, as for any
                // failed storage write, rather than keep it silently.
                tracing::error!(%error, "cannot delete an erased patient's custodial key; halting the node");
                std::process::exit(3);
            }
        }
    }

    /// Export the keeper's counts through `context` (the node's metrics registry).
    pub fn with_metrics(mut self, context: &impl Metrics) -> Self {
        self.metrics = KeeperMetrics::register(context);
        self
    }

    /// The number of missing blobs, kept current by the keeper.
    pub fn missing_gauge(&self) -> Gauge {
        self.metrics.missing.clone()
    }

    fn publish_missing(&self) {
        let _ = self.metrics.missing.try_set(self.missing.len());
    }

    /// List again every final version this node does not hold (see [`RECHECK_INTERVAL`]).
    pub async fn recheck(&mut self) {
        let keep = self.chain.read(plan).keep;
        let before = self.missing.len();
        for wanted in keep {
            if self.missing.contains_key(&wanted) {
                continue;
            }
            self.acquire(wanted).await;
        }
        self.flush().await;
        if self.missing.len() > before {
            tracing::warn!(
                found = self.missing.len() - before,
                "record blobs found missing on a check of the store; fetching them"
            );
        }
        self.publish_missing();
    }

    /// Make this batch's writes and deletes durable, then drop the staged copies.
    async fn flush(&mut self) {
        if let Err(e) = self.store.sync().await {
            halt(e)
        }
        for hash in self.promoted.drain(..) {
            if let Err(e) = self.store.unstage(&hash) {
                halt(e)
            }
        }
    }

    /// Bring the store in line with the finalized state: erase what erasures require,
    /// promote staged uploads, and list what must be fetched.
    pub async fn reconcile(&mut self) {
        let Plan {
            erased,
            erase,
            keep,
        } = self.chain.read(plan);
        for hash in erase {
            self.erase_version(&hash).await;
        }
        for patient in &erased {
            self.shred_custody(patient);
        }
        for wanted in keep {
            self.acquire(wanted).await;
        }
        // Consent: withdraw what inactive grants left behind, apply what active ones bring.
        let (now, grants) = self
            .chain
            .read(|s| (s.time_ms(), s.all_grants().cloned().collect::<Vec<_>>()));
        self.expired_until_ms = now;
        for grant in grants {
            if grant.active(now) {
                self.follow_grant(&grant).await;
            } else {
                self.withdraw(&grant).await;
            }
        }
        self.flush().await;
        if !self.missing.is_empty() {
            tracing::info!(
                missing = self.missing.len(),
                "record blobs to fetch from peers"
            );
        }
    }

    async fn erase_version(&self, hash: &[u8; 32]) {
        if let Err(e) = self.store.delete(hash).await {
            halt(e)
        }
        if let Err(e) = self.store.unstage(hash) {
            halt(e)
        }
    }

    async fn acquire(&mut self, wanted: Wanted) {
        match self.store.promote(&wanted.hash).await {
            Ok(true) => self.promoted.push(wanted.hash),
            Ok(false) => match self.store.contains(&wanted.hash).await {
                Ok(true) => {}
                Ok(false) => {
                    if self.missing.len() < MISSING_MAX {
                        self.missing.insert(wanted, None);
                    }
                }
                Err(e) => halt(e),
            },
            Err(e) => halt(e),
        }
    }

    /// One committed version's upload: kept (fetched when this node lacks it), dropped when
    /// the write was refused, erased when its patient was.
    async fn on_version(
        &mut self,
        tx: &ehrchain_types::Transaction,
        anchor: &ehrchain_types::RecordAnchor,
    ) {
        let (erased, written) = self.chain.read(|s| {
            use ehrchain_contracts::state::Reader as _;
            (
                s.patient(&anchor.patient)
                    .is_some_and(|p| p.erased_height.is_some()),
                s.versions(&anchor.record)
                    .iter()
                    .any(|v| v.transaction == tx.id()),
            )
        });
        let hash: [u8; 32] = anchor.ciphertext_hash.as_ref().try_into().expect("32");
        if !written {
            // A refused write, recorded as an attempt: its upload is dropped.
            if let Err(e) = self.store.unstage(&hash) {
                halt(e)
            }
        } else if erased {
            self.erase_version(&hash).await;
        } else if anchor.is_tombstone() {
            // A logical delete: a version with no content to keep.
        } else {
            self.acquire(Wanted {
                hash,
                record: anchor.record,
                version: anchor.version,
            })
            .await;
        }
    }

    /// Apply one finalized block's record side effects.
    pub async fn on_block(&mut self, block: &Block) {
        for tx in &block.transactions {
            match &tx.body.payload {
                Payload::RecordAnchor(_) | Payload::RecordSet(_) => {
                    for anchor in tx.body.payload.record_anchors() {
                        self.on_version(tx, anchor).await;
                    }
                }
                Payload::ErasePatient { patient } => self.erase_patient(patient).await,
                Payload::Grant(body) => {
                    if let Some(grant) = self.chain.read(|s| s.grant(&body.patient, &body.id)) {
                        self.follow_grant(&grant).await;
                    }
                }
                Payload::Revoke { patient, grant } => {
                    if let Some(grant) = self.chain.read(|s| s.grant(patient, grant)) {
                        self.withdraw(&grant).await;
                    }
                }
                Payload::RemoveClinician { clinician } => self.forget_clinician(clinician).await,
                _ => {}
            }
        }
        let until = block.header.timestamp_ms;
        if until > self.expired_until_ms {
            let expired = self
                .chain
                .read(|s| s.grants_expiring(self.expired_until_ms, until));
            for grant in &expired {
                self.withdraw(grant).await;
            }
            self.expired_until_ms = until;
        }
        self.flush().await;
    }

    /// A final grant: fetch its share bundle (if any) and apply it once present.
    async fn follow_grant(&mut self, grant: &Grant) {
        let Some(hash) = self.share_hash(grant) else {
            return;
        };
        self.shares.insert(hash, (grant.patient, grant.id));
        self.acquire(Wanted {
            hash,
            record: grant.id,
            version: 0,
        })
        .await;
        match self.store.contains(&hash).await {
            Ok(true) => self.apply_share(&hash).await,
            Ok(false) => {}
            Err(e) => halt(e),
        }
    }

    fn share_hash(&self, grant: &Grant) -> Option<[u8; 32]> {
        let share = self
            .chain
            .read(|s| s.grant_share(&grant.patient, &grant.id))?;
        (share != [0; 32]).then_some(share)
    }

    /// Add the wraps of a present share bundle to the records they belong to: only wraps for
    /// the grantee, only for the patient's record versions, only while the grant is active.
    async fn apply_share(&mut self, hash: &[u8; 32]) {
        let Some((patient, id)) = self.shares.remove(hash) else {
            return;
        };
        let Some((grant, grantee_key, versions)) = self.chain.read(|s| {
            let grant = s.grant(&patient, &id)?;
            let grantee = s.identity(&ehrchain_contracts::facts::public_key(&grant.grantee)?)?;
            let versions: std::collections::BTreeSet<[u8; 32]> = s
                .patient_records(&patient)
                .iter()
                .flat_map(|r| s.versions(r))
                .map(|v| hash_of(&v.anchor.ciphertext_hash))
                .collect();
            Some((grant, grantee.encryption_key, versions))
        }) else {
            return;
        };
        let now = self.chain.read(|s| s.time_ms());
        if !grant.active(now) {
            self.withdraw(&grant).await;
            return;
        }
        let bundle = match self.store.get(hash).await {
            Ok(Some((bytes, _))) => bytes,
            Ok(None) => return,
            Err(e) => halt(e),
        };
        let Ok(share) = Share::decode(&bundle) else {
            tracing::warn!(bundle = %hex::encode(hash), "a share bundle does not decode; ignored");
            return;
        };
        let mut added = 0usize;
        for (version, wrap) in share.entries {
            if wrap.recipient.0 != grantee_key || !versions.contains(&version) {
                continue;
            }
            match self
                .store
                .add_wraps(&version, std::slice::from_ref(&wrap))
                .await
            {
                Ok(true) => added += 1,
                // The envelope is still on its way from a peer: add the wrap when it lands.
                Ok(false) if self.waiting_wraps.len() < WAITING_WRAPS_MAX => {
                    self.waiting_wraps.entry(version).or_default().push(wrap);
                }
                Ok(false) => {
                    tracing::warn!("too many shared keys wait for their envelopes; one dropped")
                }
                Err(e) => halt(e),
            }
        }
        tracing::info!(wraps = added, "consent share applied");
    }

    /// A removed clinician: delete every data key wrapped for it (under any of its keys), on
    /// the versions it wrote and on the records of patients who granted it.
    async fn forget_clinician(&mut self, clinician: &PublicKey) {
        let found = self.chain.read(|s| {
            let identity = s.identity(clinician)?;
            let keys: Vec<&PublicKey> = std::iter::once(clinician)
                .chain(identity.previous.iter())
                .collect();
            let granted: Vec<ehrchain_contracts::consent::Key> = keys
                .iter()
                .map(|k| ehrchain_contracts::facts::key_bytes(k))
                .collect();
            let patients: std::collections::BTreeSet<PatientId> = s
                .all_grants()
                .filter(|g| granted.contains(&g.grantee))
                .map(|g| g.patient)
                .collect();
            let mut hashes: std::collections::BTreeSet<[u8; 32]> = s
                .all_versions()
                .filter(|v| keys.contains(&&v.author))
                .map(|v| hash_of(&v.anchor.ciphertext_hash))
                .collect();
            for patient in &patients {
                for record in s.patient_records(patient) {
                    hashes.extend(
                        s.versions(&record)
                            .iter()
                            .map(|v| hash_of(&v.anchor.ciphertext_hash)),
                    );
                }
            }
            // Wraps were made for whichever encryption key the clinician had at the time.
            let mut recipients: Vec<EncryptionPublicKey> = keys
                .iter()
                .filter_map(|k| s.identity(k))
                .map(|i| EncryptionPublicKey(i.encryption_key))
                .collect();
            recipients.sort_by_key(|k| k.0);
            recipients.dedup();
            Some((recipients, hashes))
        });
        let Some((recipients, hashes)) = found else {
            return;
        };
        for hash in hashes {
            for recipient in &recipients {
                if let Err(e) = self.store.remove_wrap(&hash, recipient).await {
                    halt(e)
                }
            }
        }
    }

    /// A grant no longer active: delete its bundle and the grantee's wraps on the patient's
    /// record versions that no other right covers.
    async fn withdraw(&mut self, grant: &Grant) {
        if let Some(hash) = self.share_hash(grant) {
            self.shares.remove(&hash);
            self.missing.retain(|w, _| w.hash != hash);
            self.erase_version(&hash).await;
        }
        let removals = self.chain.read(|s| {
            let Some(grantee) =
                ehrchain_contracts::facts::public_key(&grant.grantee).and_then(|k| s.identity(&k))
            else {
                return Vec::new();
            };
            let now = s.time_ms();
            s.patient_records(&grant.patient)
                .iter()
                .flat_map(|r| s.versions(r))
                .filter(|v| !entitled(s, v, now).contains(&grantee.encryption_key))
                .map(|v| hash_of(&v.anchor.ciphertext_hash))
                .collect::<Vec<_>>()
        });
        let recipient = EncryptionPublicKey(
            self.chain
                .read(|s| {
                    ehrchain_contracts::facts::public_key(&grant.grantee)
                        .and_then(|k| s.identity(&k))
                        .map(|i| i.encryption_key)
                })
                .unwrap_or([0; 32]),
        );
        for hash in removals {
            if let Err(e) = self.store.remove_wrap(&hash, &recipient).await {
                halt(e)
            }
        }
    }

    async fn erase_patient(&mut self, patient: &PatientId) {
        let versions = self.chain.read(|state| {
            state
                .patient_records(patient)
                .iter()
                .flat_map(|record| state.versions(record))
                .map(|v| hash_of(&v.anchor.ciphertext_hash))
                .collect::<Vec<_>>()
        });
        for hash in &versions {
            self.missing.retain(|w, _| w.hash != *hash);
            self.erase_version(hash).await;
        }
        self.shred_custody(patient);
        tracing::info!(versions = versions.len(), "erasure carried out");
    }

    /// Requests for what is missing and not asked for recently (at `now`), spread over the
    /// peers.
    fn next_requests(&mut self, now: SystemTime) -> Vec<(PublicKey, Vec<u8>)> {
        if self.missing.is_empty() {
            return Vec::new();
        }
        // The members now (governance admits and removes them), other than this node.
        let peers: Vec<PublicKey> = self
            .chain
            .read(|s| s.members().filter(|k| **k != self.me).cloned().collect());
        if peers.is_empty() {
            return Vec::new();
        }
        let due: Vec<(Wanted, u32)> = self
            .missing
            .iter()
            .filter_map(|(w, asked)| match asked {
                None => Some((*w, 0)),
                Some((at, attempts)) => (now.duration_since(*at).unwrap_or_default()
                    > ask_again_after(*attempts))
                .then_some((*w, *attempts)),
            })
            .take(FETCH_ITEMS_MAX * REQUESTS_PER_TICK_MAX)
            .collect();
        let mut requests = Vec::new();
        for chunk in due.chunks(FETCH_ITEMS_MAX) {
            for (wanted, attempts) in chunk {
                self.missing
                    .insert(*wanted, Some((now, attempts.saturating_add(1))));
            }
            let chunk: Vec<Wanted> = chunk.iter().map(|(w, _)| *w).collect();
            let chunk = chunk.as_slice();
            let peer = peers[self.next_peer % peers.len()].clone();
            self.next_peer = self.next_peer.wrapping_add(1);
            requests.push((peer, encode_request(chunk)));
        }
        requests
    }

    /// Answer a peer's request from the store (or the staging area).
    async fn answer(&self, items: Vec<([u8; 32], RecordId, u32)>) -> Vec<u8> {
        let mut found = Vec::new();
        let mut size = 3;
        for (hash, _, _) in items {
            let (envelope, wraps) = match self.store.get(&hash).await {
                Ok(Some(found)) => found,
                Ok(None) => match self.store.staged(&hash) {
                    Ok(Some(staged)) => staged,
                    Ok(None) => continue,
                    Err(e) => halt(e),
                },
                Err(e) => halt(e),
            };
            let item_size = 32 + 8 + envelope.len() + wraps.len() * WRAP_BYTES;
            if size + item_size > BLOB_MESSAGE_BYTES_MAX {
                break;
            }
            size += item_size;
            found.push((hash, envelope, wraps));
        }
        self.metrics.served.inc_by(found.len() as u64);
        encode_response(&found)
    }

    /// Keep what a peer sent if it is something we asked for and it matches its anchor.
    async fn accept(&mut self, items: Vec<([u8; 32], Vec<u8>, Vec<Wrap>)>) {
        for (hash, envelope, wraps) in items {
            let first = Wanted {
                hash,
                record: [0; 16],
                version: 0,
            };
            let Some(wanted) = self
                .missing
                .range(first..)
                .next()
                .map(|(w, _)| *w)
                .filter(|w| w.hash == hash)
            else {
                continue;
            };
            if envelope_hash(&envelope) != hash {
                tracing::warn!(hash = %hex::encode(hash), "a peer sent a blob that does not match its anchor; rejected");
                self.metrics.refused.inc();
                continue;
            }
            // Keep only wraps for parties entitled now (a peer may lag behind a revocation).
            let allowed = self.chain.read(|s| {
                s.version_by_hash(&hash)
                    .map(|v| entitled(s, &v, s.time_ms()))
            });
            let waiting = self.waiting_wraps.remove(&hash).unwrap_or_default();
            let mut wraps: Vec<Wrap> = match &allowed {
                Some(allowed) => wraps
                    .into_iter()
                    .chain(waiting)
                    .filter(|w| allowed.contains(&w.recipient.0))
                    .collect(),
                None => Vec::new(),
            };
            // One wrap per recipient (a peer's copy and a shared one may both be here).
            wraps.sort_by_key(|w| w.recipient.0);
            wraps.dedup_by_key(|w| w.recipient.0);
            if let Err(e) = self.store.put(&envelope, &wraps).await {
                halt(e)
            }
            self.metrics.fetched.inc();
            self.missing.remove(&wanted);
            if self.shares.contains_key(&hash) {
                self.apply_share(&hash).await;
            }
        }
        self.flush().await;
    }
}

/// How long to wait before asking again for a blob asked for `attempts` times: doubling from
/// [`ASK_AGAIN_AFTER`] to [`ASK_AGAIN_MAX`]. Successive attempts go to successive peers.
fn ask_again_after(attempts: u32) -> Duration {
    // Most blobs are missing only because their peers are still storing them (a block just
    // final): the first attempts go round the peers at the base pace, and only a blob still
    // missing after that backs off.
    let slow = attempts.saturating_sub(FAST_ATTEMPTS);
    ASK_AGAIN_AFTER
        .saturating_mul(1u32 << slow.min(5))
        .min(ASK_AGAIN_MAX)
}

/// Attempts made at the base pace before a missing blob is asked for less often.
const FAST_ATTEMPTS: u32 = 8;

/// The encryption keys entitled to a record version now (`access::version_readers`).
fn entitled(state: &State, version: &RecordVersion, now_ms: u64) -> Vec<[u8; 32]> {
    ehrchain_contracts::access::version_readers(
        state,
        &version.author,
        &version.anchor.patient,
        Some(version.anchor.resource_type),
        now_ms,
    )
}

fn hash_of(digest: &Digest) -> [u8; 32] {
    digest.as_ref().try_into().expect("32-byte digest")
}

/// What the store must do to match the state.
struct Plan {
    /// Patients erased on chain.
    erased: std::collections::BTreeSet<PatientId>,
    /// Versions of theirs, to erase.
    erase: Vec<[u8; 32]>,
    /// Every other version, to hold.
    keep: Vec<Wanted>,
}

/// Split the state's record versions into those to erase and those to hold.
fn plan(state: &State) -> Plan {
    let erased: std::collections::BTreeSet<PatientId> = state
        .patients()
        .filter(|(_, p)| p.erased_height.is_some())
        .map(|(id, _)| *id)
        .collect();
    let mut erase = Vec::new();
    let mut keep = Vec::new();
    for version in state.all_versions() {
        let hash = hash_of(&version.anchor.ciphertext_hash);
        if erased.contains(&version.anchor.patient) {
            erase.push(hash);
        } else {
            keep.push(Wanted {
                hash,
                record: version.anchor.record,
                version: version.anchor.version,
            });
        }
    }
    Plan {
        erased,
        erase,
        keep,
    }
}

/// How often stale uploads are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Run the keeper: reconcile, then follow finalized blocks, fetch what is missing, answer
/// peers, and sweep stale uploads. Its timers are the runtime's (`context`), so the seeded
/// simulation runs it as a production node does; in production it has a thread of its own
/// (its store writes and flushes block).
pub async fn run<E, B, S, R>(
    context: E,
    mut records: Records<B>,
    (mut sender, mut receiver): (S, R),
) where
    E: Clock,
    B: Blob,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    records.reconcile().await;
    records.publish_missing();
    let mut asks = records.asks.take();
    let mut heights = records.chain.subscribe();
    let mut done = records.chain.status().height;
    let start = context.current();
    let mut fetch_at = start;
    let mut sweep_at = start;
    let mut recheck_at = start + RECHECK_INTERVAL;
    loop {
        records.publish_missing();
        let next = fetch_at.min(sweep_at).min(recheck_at);
        // Biased (the first ready arm wins): no random choice, so a seeded run replays.
        commonware_macros::select! {
            _ = context.sleep_until(next) => {
                let now = context.current();
                if now >= recheck_at {
                    records.recheck().await;
                    recheck_at = now + RECHECK_INTERVAL;
                }
                if now >= fetch_at {
                    for (peer, request) in records.next_requests(now) {
                        let _ = sender.send(Recipients::One(peer), request, false);
                    }
                    for (peer, request) in records.ask_again(now) {
                        let _ = sender.send(Recipients::One(peer), request, false);
                    }
                    fetch_at = now + FETCH_INTERVAL;
                }
                if now >= sweep_at {
                    match records.store.sweep_staged(STAGED_AGE_MAX, |_| false) {
                        Ok(0) => {}
                        Ok(removed) => tracing::info!(removed, "swept uploads whose anchors never became final"),
                        Err(e) => halt(e),
                    }
                    sweep_at = now + SWEEP_INTERVAL;
                }
            },
            _ = heights.changed() => {
                let height = heights.borrow_and_update();
                while done < height {
                    done += 1;
                    let Some(record) = records.chain.record(done).await else {
                        done -= 1;
                        break;
                    };
                    let block = Block::decode(&record.block).expect("a committed block decodes");
                    records.on_block(&block).await;
                }
            },
            ask = next_ask(&mut asks) => {
                let (ask, reply) = ask;
                if let Some((peer, request)) = records.on_ask(context.current(), ask, reply) {
                    let _ = sender.send(Recipients::One(peer), request, false);
                }
            },
            message = receiver.recv() => {
                let Ok((peer, bytes)) = message else { return };
                match decode_message(bytes.as_ref()) {
                    Some(Message::Request(items)) => {
                        let answer = records.answer(items).await;
                        let _ = sender.send(Recipients::One(peer), answer, false);
                    }
                    Some(Message::Response(items)) => records.accept(items).await,
                    Some(Message::KeyRequest(items)) => {
                        let answer = records.release(&peer, items).await;
                        let _ = sender.send(Recipients::One(peer), answer, false);
                    }
                    Some(Message::KeyResponse(items)) => records.on_released(&peer, items),
                    None => tracing::warn!(%peer, "malformed blob-channel message"),
                }
            },
        }
    }
}

/// The gateway's next ask; never, once there is no gateway (or it is gone).
async fn next_ask(asks: &mut Option<mpsc::Receiver<Ask>>) -> Ask {
    use futures::StreamExt as _;
    if let Some(receiver) = asks
        && let Some(ask) = receiver.next().await
    {
        return ask;
    }
    *asks = None;
    futures::future::pending().await
}

/// May this node release `ask`'s data key to `peer`? Only for a version of the record it
/// names, to a clinician of `peer`'s institution whose emergency read of the record the
/// consent contract allows now (a break-glass in its time box, or a grant); then the
/// patient and the reader's encryption key. The rule a gateway applies before it serves a
/// read: a member releases nothing to a peer that the peer's own clinician could not read.
fn releasable(state: &State, peer: &PublicKey, ask: &KeyAsk) -> Option<(PatientId, [u8; 32])> {
    use ehrchain_contracts::{
        consent::Purpose,
        facts::{Outcome, Role},
    };
    let version = state.version_by_hash(&ask.hash)?;
    if version.anchor.record != ask.record || version.anchor.version != ask.version {
        return None;
    }
    let reader = ehrchain_types::decode_public_key(ask.reader).ok()?;
    if state.retired(&reader).is_some() {
        return None;
    }
    let identity = state.identity(&reader)?;
    if !matches!(&identity.role, Role::Clinician { institution } if institution == peer) {
        return None;
    }
    let (_, _, outcome) = ehrchain_contracts::access::decide_read(
        state,
        &reader,
        &identity,
        &ask.record,
        Purpose::Emergency,
        state.time_ms(),
    )
    .ok()?;
    matches!(outcome, Outcome::Allowed(_))
        .then_some((version.anchor.patient, identity.encryption_key))
}

/// Overwrite a key file with zeros, sync it, and delete it: a custodial key the node must no
/// longer hold (an erased patient's, or one its person moved to a key of their own).
pub fn shred(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len() as usize;
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; len], 0)?;
    file.sync_all()?;
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_are_asked_for_again_with_backoff_and_never_dropped() {
        assert_eq!(ask_again_after(0), ASK_AGAIN_AFTER);
        assert_eq!(ask_again_after(FAST_ATTEMPTS), ASK_AGAIN_AFTER);
        assert_eq!(ask_again_after(FAST_ATTEMPTS + 1), ASK_AGAIN_AFTER * 2);
        assert_eq!(ask_again_after(FAST_ATTEMPTS + 4), ASK_AGAIN_MAX);
        assert_eq!(ask_again_after(u32::MAX), ASK_AGAIN_MAX);
    }

    #[test]
    fn keys_are_released_only_for_an_allowed_read_by_the_asking_institutions_clinician() {
        use commonware_cryptography::Signer as _;
        use ehrchain_contracts::{execute::apply, facts::At, state::Delta};
        use ehrchain_types::{PrivateKey, RecordAnchor, TransactionBody};
        let (a, b) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let mut state = State::new(
            &[(a.public_key(), [0xA1; 32]), (b.public_key(), [0xB1; 32])],
            &[],
            Default::default(),
        );
        let (author, reader) = (PrivateKey::from_seed(3), PrivateKey::from_seed(4));
        let (patient, record, hash) = ([7; 16], [8; 16], [9; 32]);
        let mut nonces = BTreeMap::new();
        let mut height = 0;
        let mut run = |state: &mut State, key: &PrivateKey, payload: Payload| {
            let nonce = nonces.entry(key.public_key()).or_insert(0u64);
            let tx = TransactionBody {
                chain_id: 1,
                signer: key.public_key(),
                nonce: *nonce,
                payload,
            }
            .sign(key);
            *nonce += 1;
            height += 1;
            let at = At {
                height,
                time_ms: 1_000 * height,
                index: 0,
            };
            let mut delta = Delta::default();
            apply(state, &mut delta, at, &tx).expect("applies");
            state.commit(delta);
        };
        for (institution, clinician, encryption_key) in [(&a, &author, 0x33), (&b, &reader, 0x44)] {
            let payload = Payload::EnrollClinician {
                clinician: clinician.public_key(),
                encryption_key: [encryption_key; 32],
            };
            run(&mut state, institution, payload);
        }
        let payload = Payload::RegisterPatient {
            patient,
            key: PrivateKey::from_seed(5).public_key(),
            encryption_key: [0x55; 32],
        };
        run(&mut state, &a, payload);
        let anchor = RecordAnchor {
            record,
            version: 1,
            patient,
            resource_type: 2,
            ciphertext_hash: Digest::from(hash),
            ciphertext_size: 100,
            timestamp_ms: 0,
        };
        run(&mut state, &author, Payload::RecordAnchor(anchor));
        let ask = KeyAsk {
            hash,
            record,
            version: 1,
            reader: ehrchain_contracts::facts::key_bytes(&reader.public_key()),
        };
        // No consent and no break-glass: nothing is released.
        assert_eq!(releasable(&state, &b.public_key(), &ask), None);
        let glass = Payload::BreakGlass {
            patient,
            reason: ehrchain_contracts::facts::BREAK_GLASS_REASONS[0].0,
        };
        run(&mut state, &reader, glass);
        // Under break-glass, to the reader's own institution, for the reader's key only.
        assert_eq!(
            releasable(&state, &b.public_key(), &ask),
            Some((patient, [0x44; 32]))
        );
        assert_eq!(releasable(&state, &a.public_key(), &ask), None);
        let other_version = KeyAsk { version: 2, ..ask };
        assert_eq!(releasable(&state, &b.public_key(), &other_version), None);
        let other_hash = KeyAsk {
            hash: [1; 32],
            ..ask
        };
        assert_eq!(releasable(&state, &b.public_key(), &other_hash), None);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let request = encode_request(&[Wanted {
            hash: [1; 32],
            record: [2; 16],
            version: 3,
        }]);
        assert_eq!(
            decode_message(&request),
            Some(Message::Request(vec![([1; 32], [2; 16], 3)]))
        );
        let wrap = Wrap::decode(&[7; WRAP_BYTES]).unwrap();
        let response = encode_response(&[([4; 32], vec![5; 10], vec![wrap.clone()])]);
        assert_eq!(
            decode_message(&response),
            Some(Message::Response(vec![([4; 32], vec![5; 10], vec![wrap])]))
        );
        for cut in 0..response.len() {
            assert!(decode_message(&response[..cut]).is_none());
        }
        let ask = KeyAsk {
            hash: [1; 32],
            record: [2; 16],
            version: 3,
            reader: [4; 32],
        };
        let request = encode_key_request(&[ask]);
        assert_eq!(
            decode_message(&request),
            Some(Message::KeyRequest(vec![ask]))
        );
        let wrap = Wrap::decode(&[8; WRAP_BYTES]).unwrap();
        let released = encode_key_response(&[([6; 32], wrap.clone())]);
        assert_eq!(
            decode_message(&released),
            Some(Message::KeyResponse(vec![([6; 32], wrap)]))
        );
        for cut in 0..released.len() {
            assert!(decode_message(&released[..cut]).is_none());
            assert!(decode_message(&request[..cut.min(request.len() - 1)]).is_none());
        }
        assert!(decode_message(&[9, 0, 0]).is_none());
        let mut too_many = vec![REQUEST];
        too_many.extend_from_slice(&((FETCH_ITEMS_MAX + 1) as u16).to_be_bytes());
        assert!(decode_message(&too_many).is_none());
    }
}
