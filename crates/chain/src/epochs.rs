//! Validator-set changes through consensus epochs.
//!
//! The chain is cut into epochs of `Rules::epoch_blocks` blocks. Each epoch has its own
//! validator set and its own simplex instance; marshal carries the finalized chain across.
//! The set of epoch `e + 1` is the membership after the last block of epoch `e`
//! (`State::close_epoch`), so a governance vote that admits or removes a member changes who
//! votes from the next epoch's first block on, on every node alike.
//!
//! [`EpochProvider`] hands marshal and simplex the certificate scheme of each epoch (a
//! signing scheme where this node is a validator, a verifying one elsewhere). [`run`] is the
//! orchestrator: it follows the committed height, keeps the peer network's tracked set equal
//! to the members and validators, and when the chain reaches an epoch's last block it starts
//! the next epoch's simplex engine on fresh subchannels of the vote, certificate and resolver
//! channels (multiplexed by epoch) and stops the old one. A node that is behind hears votes of
//! a later epoch on the muxer's backup queue and asks that peer for the boundary block's
//! finalization, so it catches up through marshal.

use crate::application::{App, Chain, Scheme};
use commonware_consensus::{
    marshal::{
        self,
        standard::{Inline, Standard},
    },
    simplex::{self, ForwardPolicy, SkipPolicy, elector::RoundRobin},
    types::{Epoch, FixedEpocher, Height, ViewDelta},
};
use commonware_cryptography::{
    Sha256,
    certificate::{self, Scoped},
};
use commonware_p2p::{
    Blocker, Receiver, Sender,
    utils::mux::{Builder as _, MuxHandle, Muxer},
};
use commonware_parallel::Sequential;
use commonware_runtime::{
    Clock, Handle, Metrics, Spawner, Storage, Supervisor, buffer::paged::CacheRef,
};
use commonware_utils::{NZDuration, NZUsize, ordered::Set, vec::NonEmptyVec};
use ehrchain_types::{Block, CONSENSUS_NAMESPACE, Digest, PrivateKey, PublicKey};
use rand::{CryptoRng, Rng};
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

/// The certificate scheme of every epoch this node knows the validators of.
/// Each epoch's scheme, and whether it signs (this node is one of the epoch's validators).
type Schemes = BTreeMap<u64, (Arc<Scheme>, bool)>;

#[derive(Clone)]
pub struct EpochProvider {
    signer: PrivateKey,
    schemes: Arc<RwLock<Schemes>>,
}

impl EpochProvider {
    pub fn new(signer: PrivateKey) -> Self {
        Self {
            signer,
            schemes: Arc::default(),
        }
    }

    /// Learn epoch `epoch`'s validators (idempotent).
    pub fn insert(&self, epoch: u64, validators: &[PublicKey]) {
        let mut schemes = self.schemes.write().expect("provider lock");
        if schemes.contains_key(&epoch) {
            return;
        }
        let set = Set::try_from(validators.to_vec()).expect("validator keys are unique");
        let entry = match Scheme::signer(CONSENSUS_NAMESPACE, set.clone(), self.signer.clone()) {
            Some(scheme) => (Arc::new(scheme), true),
            None => (Arc::new(Scheme::verifier(CONSENSUS_NAMESPACE, set)), false),
        };
        schemes.insert(epoch, entry);
    }

    /// Learn the epochs the state names beyond the newest known one (sets are fixed once
    /// known, and epochs are numbered without gaps).
    pub fn learn(&self, state: &ehrchain_contracts::state::State) {
        let mut epoch = self
            .schemes
            .read()
            .expect("provider lock")
            .keys()
            .next_back()
            .map_or(0, |e| e + 1);
        while let Some(set) = state.epoch_validators(epoch) {
            self.insert(epoch, set);
            epoch += 1;
        }
    }

    /// Whether this node votes in `epoch`.
    pub fn is_validator(&self, epoch: u64) -> bool {
        self.schemes
            .read()
            .expect("provider lock")
            .get(&epoch)
            .is_some_and(|(_, signs)| *signs)
    }

    /// The scheme simplex runs with in `epoch`: signing or, for an observer, verifying.
    fn engine_scheme(&self, epoch: u64) -> Option<Arc<Scheme>> {
        self.schemes
            .read()
            .expect("provider lock")
            .get(&epoch)
            .map(|(scheme, _)| scheme.clone())
    }
}

impl certificate::Provider for EpochProvider {
    type Scope = Epoch;
    type Scheme = Scheme;

    fn scoped(&self, epoch: Epoch) -> Option<Scoped<Scheme>> {
        let schemes = self.schemes.read().expect("provider lock");
        let (scheme, signs) = schemes.get(&epoch.get())?;
        Some(if *signs {
            Scoped::scheme(scheme.clone())
        } else {
            Scoped::verifier(scheme.clone())
        })
    }
}

/// Learn which peers the network should keep connections with. Ids only increase. Each peer
/// comes with the address governance admitted it with; genesis members have none here (their
/// addresses are in the genesis file).
pub trait PeerSets: Send + 'static {
    fn track(&mut self, id: u64, peers: Vec<(PublicKey, Option<std::net::SocketAddr>)>);
}

/// The peers a node keeps: the validators of the epoch the next block belongs to, the next
/// epoch's if known, and every member (so one just admitted can sync before it votes).
pub fn peer_set<B: commonware_runtime::Blob>(chain: &Chain<B>) -> Vec<PublicKey> {
    let epoch_blocks = chain.config().rules.epoch_blocks.max(1);
    let height = chain.status().height;
    chain.read(|state| {
        let next = (height + 1) / epoch_blocks;
        let mut peers: Vec<PublicKey> = state.members().cloned().collect();
        for epoch in [next, next + 1] {
            if let Some(set) = state.epoch_validators(epoch) {
                peers.extend(set.iter().cloned());
            }
        }
        peers.sort();
        peers.dedup();
        peers
    })
}

/// Settings every epoch's simplex engine shares.
pub struct Settings {
    pub provider: EpochProvider,
    pub timing: crate::engine::Timing,
    pub mailbox_size: usize,
    pub partition_prefix: String,
    pub page_cache: CacheRef,
    pub epoch_blocks: u64,
    /// Where the time of the newest certificate seen is kept (see `Chain::progress_ms`).
    pub progress: Arc<std::sync::atomic::AtomicU64>,
}

/// Passes consensus activity on to marshal, noting the time of every certificate: a resting
/// chain finalizes a block only per heartbeat, but certifies views all along, so this tells
/// the gateway that its node is still in touch with a quorum.
struct Progress<R, C> {
    inner: R,
    clock: Arc<C>,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Clone, C> Clone for Progress<R, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            clock: self.clock.clone(),
            last_ms: self.last_ms.clone(),
        }
    }
}

impl<R, C> commonware_consensus::Reporter for Progress<R, C>
where
    R: commonware_consensus::Reporter<Activity = simplex::types::Activity<Scheme, Digest>>,
    C: Clock + Send + Sync + 'static,
{
    type Activity = R::Activity;

    fn report(&mut self, activity: Self::Activity) -> commonware_actor::Feedback {
        use simplex::types::Activity;
        if matches!(
            activity,
            Activity::Notarization(_) | Activity::Nullification(_) | Activity::Finalization(_)
        ) {
            let now = self
                .clock
                .current()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.last_ms
                .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.report(activity)
    }
}

type Application<E, B> = Inline<E, Scheme, App<B>, Block, FixedEpocher>;
type MarshalMailbox = marshal::core::Mailbox<Scheme, Standard<Block>>;

/// The epoch the next block belongs to, and the digest its engine starts from (the last
/// block of the previous epoch, or genesis).
fn next_epoch<B: commonware_runtime::Blob>(chain: &Chain<B>, epoch_blocks: u64) -> (u64, Digest) {
    let height = chain.status().height;
    let epoch = (height + 1) / epoch_blocks;
    let floor = chain
        .digest_at((epoch * epoch_blocks).saturating_sub(1))
        .expect("the boundary block is committed");
    (epoch, floor)
}

/// Run consensus across epochs until the active engine stops (then this returns).
#[allow(clippy::too_many_arguments)]
pub async fn run<E, S, R, K, P, B>(
    context: E,
    chain: Chain<B>,
    application: Application<E, B>,
    marshal: MarshalMailbox,
    settings: Settings,
    blocker: K,
    mut peer_sets: P,
    (votes, certificates, resolver): ((S, R), (S, R), (S, R)),
) where
    E: Spawner + Clock + Storage + Metrics + Supervisor + Rng + CryptoRng,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    K: Blocker<PublicKey = PublicKey>,
    P: PeerSets,
    B: commonware_runtime::Blob,
{
    let epoch_blocks = settings.epoch_blocks.max(1);
    let provider = settings.provider.clone();
    let (mux, mut vote_mux, mut vote_backup) =
        Muxer::builder(context.child("vote_mux"), votes.0, votes.1)
            .with_backup()
            .build();
    mux.start();
    let (mux, mut certificate_mux, mut certificate_backup) = Muxer::builder(
        context.child("certificate_mux"),
        certificates.0,
        certificates.1,
    )
    .with_backup()
    .build();
    mux.start();
    let (mux, mut resolver_mux) = Muxer::new(context.child("resolver_mux"), resolver.0, resolver.1);
    mux.start();

    let mut heights = chain.subscribe();
    let mut tracked: Vec<PublicKey> = Vec::new();
    // The epoch whose engine runs, and that engine.
    let mut running: Option<(u64, Handle<()>)> = None;
    loop {
        // Enter the epoch the next block belongs to, if the chain has reached a new one.
        chain.read(|state| provider.learn(state));
        let (next, floor) = next_epoch(&chain, epoch_blocks);
        if running.as_ref().is_none_or(|(epoch, _)| next > *epoch) {
            let engine = enter(
                &context,
                &application,
                &settings,
                blocker.clone(),
                next,
                floor,
                (&mut vote_mux, &mut certificate_mux, &mut resolver_mux),
            )
            .await;
            // The previous epoch is over: its last block is final here.
            if let Some((_, previous)) = running.replace((next, engine)) {
                previous.abort();
            }
            tracing::info!(
                epoch = next,
                validator = provider.is_validator(next),
                "entered consensus epoch"
            );
            // The journal of the epoch before the previous one is of no further use (its
            // engine stopped an epoch ago, so nothing holds it open).
            if let Some(old) = next.checked_sub(2) {
                let partition = format!("{}-consensus-{old}", settings.partition_prefix);
                match context.remove(&partition, None).await {
                    Ok(()) | Err(commonware_runtime::Error::PartitionMissing(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, partition, "cannot remove an old consensus journal")
                    }
                }
            }
        }
        // Keep the network's peer set in step with the chain.
        let peers = peer_set(&chain);
        if peers != tracked {
            let addressed = chain.read(|state| {
                peers
                    .iter()
                    .map(|key| (key.clone(), state.member_address(key)))
                    .collect()
            });
            peer_sets.track(chain.status().height + 1, addressed);
            tracked = peers;
        }
        let (epoch, active) = running.as_mut().expect("an epoch was entered");
        let epoch = *epoch;
        commonware_macros::select! {
            _ = heights.changed() => {},
            message = vote_backup.recv() => {
                let Some((theirs, (from, _))) = message else { return };
                catch_up(&marshal, epoch, epoch_blocks, theirs, from);
            },
            message = certificate_backup.recv() => {
                let Some((theirs, (from, _))) = message else { return };
                catch_up(&marshal, epoch, epoch_blocks, theirs, from);
            },
            result = active => {
                tracing::error!(epoch, ?result, "the consensus engine stopped");
                return;
            },
        }
    }
}

/// A peer already votes in a later epoch: ask it for the finalization of our epoch's last
/// block, so marshal delivers it and we move on.
fn catch_up(marshal: &MarshalMailbox, ours: u64, epoch_blocks: u64, theirs: u64, from: PublicKey) {
    if theirs <= ours {
        return;
    }
    let last = (ours + 1) * epoch_blocks - 1;
    marshal.hint_finalized(Height::new(last), NonEmptyVec::new(from));
}

/// Start epoch `epoch`'s simplex engine on its own subchannels.
async fn enter<E, S, K, B>(
    context: &E,
    application: &Application<E, B>,
    settings: &Settings,
    blocker: K,
    epoch: u64,
    floor: Digest,
    (votes, certificates, resolver): (&mut MuxHandle<S>, &mut MuxHandle<S>, &mut MuxHandle<S>),
) -> Handle<()>
where
    E: Spawner + Clock + Storage + Metrics + Supervisor + Rng + CryptoRng,
    S: Sender<PublicKey = PublicKey>,
    K: Blocker<PublicKey = PublicKey>,
    B: commonware_runtime::Blob,
{
    let scheme = settings
        .provider
        .engine_scheme(epoch)
        .unwrap_or_else(|| panic!("the validators of epoch {epoch} are unknown"));
    let timing = &settings.timing;
    let engine = simplex::Engine::new(
        context.child("consensus").with_attribute("epoch", epoch),
        simplex::Config {
            scheme: scheme.as_ref().clone(),
            elector: RoundRobin::<Sha256>::default(),
            blocker,
            automaton: application.clone(),
            relay: application.clone(),
            reporter: Progress {
                inner: application.clone(),
                clock: Arc::new(context.child("progress")),
                last_ms: settings.progress.clone(),
            },
            partition: format!("{}-consensus-{epoch}", settings.partition_prefix),
            mailbox_size: NZUsize!(settings.mailbox_size.max(16)),
            epoch: Epoch::new(epoch),
            floor: simplex::Floor::Genesis(floor),
            replay_buffer: NZUsize!(1024 * 1024),
            write_buffer: NZUsize!(1024 * 1024),
            leader_timeout: timing.leader_timeout,
            certification_timeout: timing.certification_timeout,
            timeout_retry: timing.timeout_retry,
            fetch_timeout: NZDuration!(timing.fetch_timeout),
            fetch_retry_delay: Duration::from_millis(100),
            view_retention: ViewDelta::new(10),
            skip: SkipPolicy::Enabled {
                timeout: timing.leader_timeout * 10,
                budget: simplex::SkipBudget::Participants,
            },
            page_cache: settings.page_cache.clone(),
            strategy: Sequential,
            forward: ForwardPolicy::Disabled,
            track_historical_votes: false,
        },
    );
    let votes = votes
        .register(epoch)
        .await
        .expect("each epoch registers once");
    let certificates = certificates
        .register(epoch)
        .await
        .expect("each epoch registers once");
    let resolver = resolver
        .register(epoch)
        .await
        .expect("each epoch registers once");
    engine.start(votes, certificates, resolver)
}
