//! Wire the application into Commonware's simplex consensus and marshal.
//!
//! The same function runs a validator in production (tokio runtime, authenticated `lookup`
//! network) and in the deterministic simulation (deterministic runtime, simulated network),
//! so the simulation tests exercise exactly the code that ships.

use crate::{
    application::{App, Chain, ChainConfig, Finalizer, Scheme, run_finalizer},
    epochs::{self, EpochProvider, PeerSets, Settings},
    log::BlockLog,
    reporter,
};
use commonware_broadcast::buffered;
use commonware_consensus::{
    marshal::{
        self,
        core::Actor as MarshalActor,
        resolver::p2p as marshal_resolver,
        standard::{Inline, Standard},
    },
    simplex,
    types::{FixedEpocher, ViewDelta},
};
use commonware_cryptography::{Digested, certificate::Verifier as _};
use commonware_p2p::{Blocker, Provider, Receiver, Recipients, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::{
    Clock, Handle, Metrics, Spawner, Storage, Supervisor, buffer::paged::CacheRef,
};
use commonware_storage::archive::immutable;
use commonware_utils::{NZDuration, NZU16, NZU64, NZUsize};
use ehrchain_types::{
    Block, PrivateKey, PublicKey, Transaction, limits::GOSSIP_BATCH_TRANSACTIONS_MAX,
};
use rand::{CryptoRng, Rng};
use std::{num::NonZeroU64, time::Duration};

/// Channel numbers on the authenticated peer network.
pub mod channel {
    pub const VOTES: u64 = 0;
    pub const CERTIFICATES: u64 = 1;
    pub const RESOLVER: u64 = 2;
    pub const BACKFILL: u64 = 3;
    pub const BROADCAST: u64 = 4;
    pub const GOSSIP: u64 = 5;
    /// Record envelopes and wrapped keys between peers (see `records`).
    pub const BLOBS: u64 = 6;
}

/// How often pending client transactions are gossiped to peers.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(20);

/// Timing of consensus; shorter in the simulation.
#[derive(Clone, Debug)]
pub struct Timing {
    pub leader_timeout: Duration,
    pub certification_timeout: Duration,
    pub timeout_retry: Duration,
    pub fetch_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            leader_timeout: Duration::from_secs(1),
            certification_timeout: Duration::from_secs(2),
            timeout_retry: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(1),
        }
    }
}

pub struct EngineConfig {
    pub signer: PrivateKey,
    pub validators: Vec<PublicKey>,
    pub chain: ChainConfig,
    pub timing: Timing,
    pub mailbox_size: usize,
    /// Prefix of every storage partition; "ehrchain" for a node with its own data directory.
    pub partition_prefix: String,
}

/// The network channels a validator needs, one (sender, receiver) pair each.
pub struct Channels<S, R> {
    pub votes: (S, R),
    pub certificates: (S, R),
    pub resolver: (S, R),
    pub backfill: (S, R),
    pub broadcast: (S, R),
    pub gossip: (S, R),
}

/// Largest message any channel carries, for sizing the peer network.
pub fn max_message_size(validators: usize) -> u32 {
    let participants = validators as u32;
    // Consensus runs on subchannels multiplexed by epoch: each message carries the prefix.
    let consensus = commonware_p2p::utils::mux::prefixed(simplex::max_payload_size::<
        Scheme,
        ehrchain_types::Digest,
    >(participants));
    let marshal = marshal::max_payload_size::<Standard<Block>, Scheme>(participants, &());
    let gossip = ehrchain_types::limits::GOSSIP_MESSAGE_BYTES_MAX;
    let blobs = crate::records::BLOB_MESSAGE_BYTES_MAX;
    commonware_p2p::max_message_size(&[consensus, marshal, gossip, blobs])
}

fn archive_config<C>(
    prefix: &str,
    name: &str,
    page_cache: CacheRef,
    codec_config: C,
) -> immutable::Config<C> {
    let buffer = NZUsize!(1024 * 1024);
    immutable::Config {
        metadata_partition: format!("{prefix}-{name}-metadata"),
        freezer_table_partition: format!("{prefix}-{name}-freezer-table"),
        freezer_table_initial_size: 65_536,
        freezer_table_resize_frequency: 4,
        freezer_table_resize_chunk_size: 16_384,
        freezer_key_partition: format!("{prefix}-{name}-freezer-key"),
        freezer_key_page_cache: page_cache,
        freezer_value_partition: format!("{prefix}-{name}-freezer-value"),
        freezer_value_target_size: 1024 * 1024 * 1024,
        freezer_value_compression: None,
        ordinal_partition: format!("{prefix}-{name}-ordinal"),
        items_per_section: NZU64!(262_144),
        codec_config,
        replay_buffer: buffer,
        freezer_key_write_buffer: buffer,
        freezer_value_write_buffer: buffer,
        ordinal_write_buffer: buffer,
    }
}

/// Start a validator. Returns the shared chain handle and the handles of its actors.
///
/// `config.validators` is the genesis validator set (epoch 0); later epochs take theirs from
/// the chain (see `epochs`). A node outside the current set follows the chain as an observer
/// and starts voting from the epoch governance admits it in. `peer_sets` learns which peers
/// to keep as members come and go.
pub async fn start<E, S, R, P, K, T>(
    context: E,
    config: EngineConfig,
    channels: Channels<S, R>,
    peers: P,
    blocker: K,
    peer_sets: T,
) -> (Chain<E::Blob>, Vec<Handle<()>>)
where
    E: Spawner + Clock + Storage + Metrics + Supervisor + Rng + CryptoRng,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    P: Provider<PublicKey = PublicKey>,
    K: Blocker<PublicKey = PublicKey>,
    T: PeerSets,
{
    let mailbox = NZUsize!(config.mailbox_size.max(16));
    let public_key = crate::application::key_public(&config.signer);
    let prefix = config.partition_prefix.as_str();
    let page_cache = CacheRef::new(NZU16!(16_384), NZUsize!(1_024));
    let epoch_blocks = config.chain.rules.epoch_blocks.max(1);
    let epocher = FixedEpocher::new(NonZeroU64::new(epoch_blocks).expect("non-zero"));

    // The block log and the state rebuilt from it.
    let (log, records) = BlockLog::open(&context, prefix)
        .await
        .unwrap_or_else(|e| panic!("cannot open the block log: {e}"));
    let chain = Chain::restore(config.chain.clone(), &records)
        .unwrap_or_else(|e| panic!("cannot restore the chain: {e}"));
    let mut log = log;
    if log.is_empty() {
        log.append(0, &config.chain.genesis.encode(), &[])
            .await
            .unwrap_or_else(|e| panic!("cannot write the genesis block: {e}"));
    }
    drop(records);
    let finalizer = Finalizer::new(chain.clone(), log);

    // Every epoch's certificate scheme; epoch 0 is the genesis set.
    let provider = EpochProvider::new(config.signer.clone());
    provider.insert(0, &config.validators);

    // Marshal: ordered delivery of finalized blocks, backfill from peers.
    let resolver = marshal_resolver::init(
        context.child("marshal_resolver"),
        marshal_resolver::Config {
            public_key: public_key.clone(),
            peer_provider: peers.clone(),
            blocker: blocker.clone(),
            mailbox_size: mailbox,
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(100),
            priority_requests: false,
            priority_responses: false,
        },
        channels.backfill,
    );
    let (broadcast_engine, buffer) = buffered::Engine::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: public_key.clone(),
            mailbox_size: mailbox,
            deque_size: 16,
            priority: false,
            codec_config: (),
            peer_provider: peers.clone(),
            strategy: Sequential,
        },
    );
    let broadcast_handle = broadcast_engine.start(channels.broadcast);

    let finalizations = immutable::Archive::init(
        context.child("finalizations_by_height"),
        archive_config(
            prefix,
            "finalizations",
            page_cache.clone(),
            Scheme::certificate_codec_config_unbounded(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open the finalization archive: {e}"));
    let blocks = immutable::Archive::init(
        context.child("finalized_blocks"),
        archive_config(prefix, "blocks", page_cache.clone(), ()),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open the block archive: {e}"));

    let (marshal_actor, marshal_mailbox, _floor) = MarshalActor::init(
        context.child("marshal"),
        finalizations,
        blocks,
        marshal::Config {
            provider: provider.clone(),
            epocher: epocher.clone(),
            start: marshal::Start::Genesis(Digested::precomputed(
                config.chain.genesis.clone(),
                config.chain.genesis.digest(),
            )),
            partition_prefix: prefix.to_string(),
            mailbox_size: mailbox,
            view_retention: ViewDelta::new(10),
            prunable_items_per_section: NZU64!(4_096),
            page_cache: page_cache.clone(),
            replay_buffer: NZUsize!(1024 * 1024),
            key_write_buffer: NZUsize!(1024 * 1024),
            value_write_buffer: NZUsize!(1024 * 1024),
            block_codec_config: (),
            max_repair: NZUsize!(16),
            max_pending_acks: NZUsize!(8),
            strategy: Sequential,
        },
    )
    .await;

    let application = Inline::new(
        context.child("inline"),
        App::new(chain.clone()),
        marshal_mailbox.clone(),
        epocher,
    );

    let (forwarder, updates) = reporter::channel();
    let marshal_handle = marshal_actor.start(forwarder, buffer, resolver);
    let finalizer_handle = context.child("finalizer").spawn({
        let marshal_mailbox = marshal_mailbox.clone();
        move |context| run_finalizer(finalizer, context, updates, marshal_mailbox)
    });
    let consensus_handle = context.child("epochs").spawn({
        let chain = chain.clone();
        let settings = Settings {
            provider,
            timing: config.timing.clone(),
            mailbox_size: config.mailbox_size,
            partition_prefix: config.partition_prefix.clone(),
            page_cache,
            epoch_blocks,
            progress: chain.progress_handle(),
        };
        move |context| {
            epochs::run(
                context,
                chain,
                application,
                marshal_mailbox,
                settings,
                blocker,
                peer_sets,
                (channels.votes, channels.certificates, channels.resolver),
            )
        }
    });
    let gossip_handle = context.child("gossip").spawn({
        let chain = chain.clone();
        move |context| run_gossip(context, chain, channels.gossip)
    });
    (
        chain,
        vec![
            broadcast_handle,
            marshal_handle,
            finalizer_handle,
            consensus_handle,
            gossip_handle,
        ],
    )
}

/// Encode a batch of transactions for gossip: count u32, then (len u32, bytes) each.
pub fn encode_batch(transactions: &[Transaction]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(transactions.len() as u32).to_be_bytes());
    for tx in transactions {
        out.extend_from_slice(&(tx.bytes().len() as u32).to_be_bytes());
        out.extend_from_slice(tx.bytes());
    }
    out
}

/// Decode a gossip batch from an untrusted peer, with limits; `None` if malformed.
pub fn decode_batch(bytes: &[u8]) -> Option<Vec<Transaction>> {
    let (count, mut rest) = bytes.split_first_chunk::<4>()?;
    let count = u32::from_be_bytes(*count) as usize;
    if count > GOSSIP_BATCH_TRANSACTIONS_MAX {
        return None;
    }
    let mut transactions = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        transactions.push(Transaction::decode(&tail[..len]).ok()?);
        rest = &tail[len..];
    }
    rest.is_empty().then_some(transactions)
}

/// Send this node's new client transactions to every peer, and admit what peers send.
async fn run_gossip<E, S, R, B>(mut context: E, chain: Chain<B>, (mut sender, mut receiver): (S, R))
where
    E: Clock + Rng + CryptoRng + Spawner,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    B: commonware_runtime::Blob,
{
    loop {
        commonware_macros::select! {
            message = receiver.recv() => {
                let Ok((_peer, bytes)) = message else { return };
                if let Some(batch) = decode_batch(bytes.as_ref()) {
                    chain.admit_from_peer(&mut context, batch);
                }
            },
            _ = context.sleep(GOSSIP_INTERVAL) => {
                loop {
                    let batch = chain.take_outbox(GOSSIP_BATCH_TRANSACTIONS_MAX);
                    if batch.is_empty() {
                        break;
                    }
                    sender.send(Recipients::All, encode_batch(&batch), false);
                }
            },
        }
    }
}
