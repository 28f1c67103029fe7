//! Run a whole validator network in one process from a seed, and check what it agreed on.
//!
//! Everything runs on Commonware's deterministic runtime and simulated network: time, task
//! scheduling, message latency, jitter and loss all come from the seed, so a run replays
//! exactly. The validators run the same `engine::start` as a production node.

use commonware_codec::Decode as _;
use commonware_consensus::simplex::mocks::conflicter;
use commonware_cryptography::{Sha256, Signer};
use commonware_p2p::simulated::{self, Link, Network, Oracle};
use commonware_runtime::{Clock, Handle, Quota, Runner, Spawner, Supervisor, deterministic};
use commonware_utils::{NZU32, NZUsize, Probability};
use ehrchain_chain::{
    Chain, ChainConfig,
    engine::{self, Channels, EngineConfig, Timing, channel},
    epochs::PeerSets,
};
use ehrchain_types::{
    Block, CONSENSUS_NAMESPACE, Digest, Genesis, Payload, PrivateKey, PublicKey, TransactionBody,
    genesis::{GenesisValidator, Rules},
    sha256,
};
use rand::RngExt as _;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

pub mod records;

type Context = deterministic::Context;
type Blob = <Context as commonware_runtime::Storage>::Blob;

/// What happens to the network during a run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub validators: usize,
    /// Validators (by index) that run a Byzantine vote equivocator instead of the real engine.
    pub byzantine: Vec<usize>,
    pub link: (Duration, Duration, f64),
    /// Cut the network in two halves for this long, starting at this time.
    pub partition: Option<(Duration, Duration)>,
    /// Crash this validator at this time and restart it after the given downtime.
    pub crash: Option<(usize, Duration, Duration)>,
    /// Client transactions submitted over the run.
    pub transactions: usize,
    /// Simulated time after which the run must have committed everything.
    pub deadline: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            validators: 4,
            byzantine: Vec::new(),
            link: (Duration::from_millis(10), Duration::from_millis(5), 0.98),
            partition: Some((Duration::from_secs(3), Duration::from_secs(4))),
            crash: Some((3, Duration::from_secs(9), Duration::from_secs(4))),
            transactions: 200,
            deadline: Duration::from_secs(120),
        }
    }
}

/// What a run produced, for the checkers.
#[derive(Debug)]
pub struct Outcome {
    /// The runtime's trace digest: identical for identical runs.
    pub trace: String,
    /// Per honest validator: (height, block digest, state root) of every finalized block.
    pub chains: BTreeMap<usize, Vec<(u64, Digest, Digest)>>,
    /// Per honest validator: every committed transaction id, in chain order.
    pub committed: BTreeMap<usize, Vec<Digest>>,
    /// Ids of transactions the mempool accepted.
    pub accepted: BTreeSet<Digest>,
}

fn genesis(keys: &[PrivateKey], rules: Rules) -> (Genesis, Block) {
    let genesis = Genesis {
        chain_id: 1,
        timestamp_ms: 0,
        validators: keys
            .iter()
            .enumerate()
            .map(|(i, key)| GenesisValidator {
                name: format!("member-{i}"),
                public_key: format!("{}", key.public_key()),
                p2p_address: "127.0.0.1:0".into(),
                encryption_key: String::new(),
            })
            .collect(),
        auditors: Vec::new(),
        rules,
    };
    let block = genesis
        .block(ehrchain_chain::application::genesis_root(1))
        .expect("valid genesis");
    (genesis, block)
}

fn quota() -> Quota {
    Quota::per_second(NZU32!(100_000))
}

async fn channels(
    oracle: &Oracle<PublicKey, Context>,
    key: &PublicKey,
) -> Channels<simulated::Sender<PublicKey, Context>, simulated::Receiver<PublicKey>> {
    let control = oracle.control(key.clone());
    let register = async |ch| control.register(ch, quota()).await.expect("register");
    Channels {
        votes: register(channel::VOTES).await,
        certificates: register(channel::CERTIFICATES).await,
        resolver: register(channel::RESOLVER).await,
        backfill: register(channel::BACKFILL).await,
        broadcast: register(channel::BROADCAST).await,
        gossip: register(channel::GOSSIP).await,
    }
}

/// Start validator `index` in its own supervised task; aborting the handle crashes it.
/// The simulated network's peer sets, as the engine asks for them.
struct SimPeers(simulated::Manager<PublicKey, Context>);

impl PeerSets for SimPeers {
    fn track(&mut self, id: u64, peers: Vec<(PublicKey, Option<std::net::SocketAddr>)>) {
        let set = commonware_utils::ordered::Set::try_from(
            peers.into_iter().map(|(key, _)| key).collect::<Vec<_>>(),
        )
        .expect("unique peers");
        let _ = commonware_p2p::Manager::track(&mut self.0, id, set);
    }
}

/// The keys of the simulated clients, known to the chain from genesis (as auditors, who may
/// anchor but never read a record).
fn client_keys() -> Vec<PrivateKey> {
    (0..9u64)
        .map(|i| PrivateKey::from_seed(50_000 + i))
        .collect()
}

/// Start validator `index` (of `keys`) in its own supervised task; aborting the handle
/// crashes it. The first `genesis_validators` keys are the genesis members.
async fn start_validator(
    context: &Context,
    oracle: &Oracle<PublicKey, Context>,
    keys: &[PrivateKey],
    genesis_validators: usize,
    (block, rules): (&Block, Rules),
    index: usize,
) -> (Chain<Blob>, Handle<()>) {
    let node = start_node(
        context,
        oracle,
        keys,
        genesis_validators,
        (block, rules),
        index,
        None,
    )
    .await;
    (node.chain, node.handle)
}

/// What a node runs beside consensus when a scenario asks for it: its blob store and records
/// keeper, and its gateway's access log and batcher, exactly as `ehrchain node` starts them.
pub(crate) struct Services {
    /// The node's data directory (kept across a crash, like a disk).
    pub dir: std::path::PathBuf,
    /// Drop every blob request from peers: a node that withholds what it holds.
    pub withhold: bool,
}

/// A started node: its chain, its task and (with services) its store and access log.
pub(crate) struct Node {
    pub chain: Chain<Blob>,
    pub handle: Handle<()>,
    pub store: Option<std::sync::Arc<ehrchain_storage::BlobStore>>,
    pub log: Option<std::sync::Arc<ehrchain_chain::access_log::AccessLog>>,
}

/// A blob-channel receiver that drops the peers' requests (see [`Services::withhold`]).
#[derive(Debug)]
struct Withholding(simulated::Receiver<PublicKey>);

impl commonware_p2p::Receiver for Withholding {
    type Error = <simulated::Receiver<PublicKey> as commonware_p2p::Receiver>::Error;
    type PublicKey = PublicKey;

    async fn recv(&mut self) -> Result<commonware_p2p::Message<PublicKey>, Self::Error> {
        loop {
            let (peer, bytes) = self.0.recv().await?;
            if !matches!(
                ehrchain_chain::records::decode_message(bytes.as_ref()),
                Some(ehrchain_chain::records::Message::Request(_))
            ) {
                return Ok((peer, bytes));
            }
        }
    }

    fn capacity(&self) -> std::num::NonZeroUsize {
        self.0.capacity()
    }
}

/// Start validator `index`, with `services` if given (see [`start_validator`]).
async fn start_node(
    context: &Context,
    oracle: &Oracle<PublicKey, Context>,
    keys: &[PrivateKey],
    genesis_validators: usize,
    (block, rules): (&Block, Rules),
    index: usize,
    services: Option<&Services>,
) -> Node {
    let key = keys[index].clone();
    let channels = channels(oracle, &key.public_key()).await;
    let blobs = match services {
        Some(_) => Some(
            oracle
                .control(key.public_key())
                .register(channel::BLOBS, quota())
                .await
                .expect("register"),
        ),
        None => None,
    };
    let members: Vec<PublicKey> = keys[..genesis_validators]
        .iter()
        .map(Signer::public_key)
        .collect();
    let config = EngineConfig {
        signer: key.clone(),
        validators: members.clone(),
        chain: ChainConfig {
            chain_id: 1,
            genesis: block.clone(),
            block_transactions_max: 1_000,
            mempool_transactions_max: 10_000,
            institutions: members.into_iter().map(|k| (k, [0; 32])).collect(),
            // The simulated clients sign as auditors: admission refuses unknown signers.
            auditors: client_keys().iter().map(Signer::public_key).collect(),
            rules,
        },
        timing: Timing::default(),
        mailbox_size: 1_024,
        partition_prefix: format!("validator-{index}"),
    };
    let peers = oracle.manager();
    let blocker = oracle.control(key.public_key());
    let services = services.map(|s| (s.dir.clone(), s.withhold));
    let (sender, receiver) = futures::channel::oneshot::channel();
    let handle = context
        .child("validator")
        .with_attribute("index", index)
        .spawn(move |context| async move {
            let me = key.public_key();
            let (chain, handles) = engine::start(
                context.child("engine"),
                config,
                channels,
                peers.clone(),
                blocker,
                SimPeers(peers),
            )
            .await;
            let (mut store, mut log) = (None, None);
            if let (Some((dir, withhold)), Some((blob_sender, blob_receiver))) = (services, blobs) {
                let opened = ehrchain_storage::BlobStore::local(
                    context.child("blobs"),
                    &dir.join("records"),
                )
                .expect("open the blob store");
                let opened = std::sync::Arc::new(opened);
                let keeper = ehrchain_chain::records::Records::new(
                    chain.clone(),
                    opened.clone(),
                    me.clone(),
                );
                if withhold {
                    let receiver = Withholding(blob_receiver);
                    context.child("records").spawn(move |context| {
                        ehrchain_chain::records::run(context, keeper, (blob_sender, receiver))
                    });
                } else {
                    context.child("records").spawn(move |context| {
                        ehrchain_chain::records::run(context, keeper, (blob_sender, blob_receiver))
                    });
                }
                use ehrchain_contracts::state::Reader as _;
                let recorded = chain.read(|s| s.access_log_next(&me));
                let journal = ehrchain_chain::access_log::AccessLog::open(
                    context.child("access_log"),
                    &dir.join("access-log"),
                    recorded,
                    ehrchain_chain::access_log::AccessLogMetrics::detached(),
                )
                .expect("open the access log");
                let journal = std::sync::Arc::new(journal);
                let account = std::sync::Arc::new(ehrchain_chain::account::Account::new(key));
                context.child("access_log_batcher").spawn({
                    let (chain, journal) = (chain.clone(), journal.clone());
                    move |context| ehrchain_chain::access_log::run(context, chain, journal, account)
                });
                store = Some(opened);
                log = Some(journal);
            }
            let _ = sender.send((chain, store, log));
            let _ = futures::future::select_all(handles).await;
        });
    let (chain, store, log) = receiver.await.expect("validator started");
    Node {
        chain,
        handle,
        store,
        log,
    }
}

/// Wait (in simulated time, at most `limit`) until `done` holds.
pub(crate) async fn wait_until(
    context: &Context,
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) {
    let start = context.current();
    while !done() {
        let waited = context.current().duration_since(start).unwrap_or_default();
        assert!(waited < limit, "timed out waiting for {what}");
        context.sleep(Duration::from_millis(50)).await;
    }
}

async fn set_links(
    oracle: &Oracle<PublicKey, Context>,
    keys: &[PublicKey],
    link: &Link,
    cut: Option<usize>,
) {
    for (i, a) in keys.iter().enumerate() {
        for (j, b) in keys.iter().enumerate() {
            if i == j {
                continue;
            }
            let _ = oracle.remove_link(a.clone(), b.clone()).await;
            let separated = cut.is_some_and(|half| (i < half) != (j < half));
            if !separated {
                oracle
                    .add_link(a.clone(), b.clone(), link.clone())
                    .await
                    .expect("add link");
            }
        }
    }
}

/// Start a simulated network sized for `size` nodes, tracking `peers` at first.
async fn network(
    context: &Context,
    size: usize,
    peers: Vec<PublicKey>,
) -> Oracle<PublicKey, Context> {
    let (network, oracle) = Network::new_with_peers(
        context.child("network"),
        simulated::Config {
            max_size: engine::max_message_size(size),
            max_peers_per_set: NZUsize!(size),
            disconnect_on_block: true,
            tracked_peer_sets: NZUsize!(1),
        },
        peers,
    )
    .await;
    network.start();
    oracle
}

/// Run one seeded scenario to completion and collect its outcome.
pub fn run(seed: u64, scenario: &Scenario) -> Outcome {
    let config = deterministic::Config::default()
        .with_seed(seed)
        .with_timeout(Some(scenario.deadline + Duration::from_secs(60)));
    let runner = deterministic::Runner::new(config);
    let scenario = scenario.clone();
    runner.start(|mut context| async move {
        let keys: Vec<PrivateKey> = (0..scenario.validators as u64)
            .map(|i| PrivateKey::from_seed(1_000 + i))
            .collect();
        let publics: Vec<PublicKey> = keys.iter().map(Signer::public_key).collect();
        let (_, block) = genesis(&keys, Rules::default());
        let oracle = network(&context, keys.len(), publics.clone()).await;
        let (latency, jitter, success) = scenario.link;
        let link = Link {
            latency,
            jitter,
            success_rate: Probability::from_f64(success).expect("probability"),
        };
        set_links(&oracle, &publics, &link, None).await;

        let mut chains: BTreeMap<usize, Chain<Blob>> = BTreeMap::new();
        let mut handles: BTreeMap<usize, Handle<()>> = BTreeMap::new();
        for index in 0..keys.len() {
            if scenario.byzantine.contains(&index) {
                let channels = channels(&oracle, &publics[index]).await;
                let scheme = ehrchain_chain::Scheme::signer(
                    CONSENSUS_NAMESPACE,
                    commonware_utils::ordered::Set::try_from(publics.clone()).expect("unique"),
                    keys[index].clone(),
                )
                .expect("member");
                let byzantine = conflicter::Conflicter::<_, _, Sha256>::new(
                    context.child("byzantine"),
                    conflicter::Config { scheme },
                );
                // Votes travel on per-epoch subchannels; the equivocator speaks in epoch 0.
                let (mux, mut handle) = commonware_p2p::utils::mux::Muxer::new(
                    context.child("byzantine_mux"),
                    channels.votes.0,
                    channels.votes.1,
                );
                mux.start();
                let votes = handle.register(0).await.expect("register epoch 0");
                byzantine.start(votes);
                continue;
            }
            let (chain, handle) = start_validator(
                &context,
                &oracle,
                &keys,
                keys.len(),
                (&block, Rules::default()),
                index,
            )
            .await;
            chains.insert(index, chain);
            handles.insert(index, handle);
        }

        // Clients: each with its own key, submitting to a random honest validator.
        let clients = &client_keys()[..8];
        let mut next_nonce = vec![0u64; clients.len()];
        let mut accepted = BTreeSet::new();
        let start = context.current();
        let elapsed =
            |context: &Context| context.current().duration_since(start).unwrap_or_default();
        let mut submitted = 0usize;
        let mut partition_done = scenario.partition.is_none();
        let mut partition_active = false;
        let mut crash_state = scenario.crash.map(|c| (c, false, false));
        let honest: Vec<usize> = chains.keys().copied().collect();
        loop {
            let now = elapsed(&context);
            // Faults.
            if let Some((at, length)) = scenario.partition {
                if !partition_active && !partition_done && now >= at {
                    set_links(&oracle, &publics, &link, Some(keys.len() / 2)).await;
                    partition_active = true;
                }
                if partition_active && now >= at + length {
                    set_links(&oracle, &publics, &link, None).await;
                    partition_active = false;
                    partition_done = true;
                }
            }
            if let Some(((victim, at, down), crashed, restarted)) = crash_state.as_mut() {
                if !*crashed && now >= *at {
                    let handle = handles.remove(victim).expect("victim runs");
                    handle.abort();
                    let _ = handle.await;
                    // The crashed node's storage handles go with it.
                    chains.remove(victim);
                    *crashed = true;
                }
                if *crashed && !*restarted && now >= *at + *down {
                    let (chain, handle) = start_validator(
                        &context,
                        &oracle,
                        &keys,
                        keys.len(),
                        (&block, Rules::default()),
                        *victim,
                    )
                    .await;
                    chains.insert(*victim, chain);
                    handles.insert(*victim, handle);
                    *restarted = true;
                }
            }
            // Load: a few transactions per tick until the budget is spent.
            for _ in 0..4 {
                if submitted >= scenario.transactions {
                    break;
                }
                let client = context.random_range(0..clients.len());
                let key = &clients[client];
                let tx = TransactionBody {
                    chain_id: 1,
                    signer: key.public_key(),
                    nonce: next_nonce[client],
                    payload: Payload::Anchor {
                        label: 1,
                        digest: sha256(&[&seed.to_be_bytes(), &(submitted as u64).to_be_bytes()]),
                    },
                }
                .sign(key);
                let target = honest[context.random_range(0..honest.len())];
                let Some(chain) = chains.get(&target) else {
                    continue;
                };
                if let Ok(id) = chain.submit(tx.bytes()) {
                    accepted.insert(id);
                    next_nonce[client] += 1;
                    submitted += 1;
                }
            }
            context.sleep(Duration::from_millis(50)).await;

            let faults_over = partition_done
                && crash_state
                    .as_ref()
                    .is_none_or(|(_, _, restarted)| *restarted);
            if faults_over && submitted >= scenario.transactions {
                let all_committed = honest
                    .iter()
                    .all(|i| accepted.iter().all(|id| chains[i].location(id).is_some()));
                let heights: Vec<u64> = honest.iter().map(|i| chains[i].status().height).collect();
                if all_committed && heights.iter().all(|h| *h == heights[0]) {
                    break;
                }
            }
            assert!(
                now < scenario.deadline,
                "seed {seed}: not everything committed by {:?}: heights {:?}",
                scenario.deadline,
                chains
                    .values()
                    .map(|c| c.status().height)
                    .collect::<Vec<_>>()
            );
        }

        // Collect every honest validator's chain.
        let mut outcome_chains = BTreeMap::new();
        let mut committed = BTreeMap::new();
        for index in &honest {
            let chain = &chains[index];
            let height = chain.status().height;
            let mut blocks = Vec::new();
            let mut ids = Vec::new();
            for h in 1..=height {
                let record = chain.record(h).await.expect("stored block");
                let block = Block::decode(&record.block).expect("stored block decodes");
                blocks.push((h, block.digest(), block.header.state_root));
                ids.extend(block.transaction_ids());
            }
            outcome_chains.insert(*index, blocks);
            committed.insert(*index, ids);
        }
        for handle in handles.into_values() {
            handle.abort();
        }
        Outcome {
            trace: context.auditor().state(),
            chains: outcome_chains,
            committed,
            accepted,
        }
    })
}

/// What an idle network did: blocks finalized while nothing was submitted, and how long the
/// first transaction after the quiet spell took to commit everywhere.
#[derive(Debug)]
pub struct IdleOutcome {
    pub trace: String,
    pub quiet: Duration,
    pub blocks_while_quiet: u64,
    pub first_commit: Duration,
}

/// Start 4 validators with the default rules (a 20 s heartbeat), let them idle for `quiet`
/// of simulated time, then submit one transaction and time its commit on every validator.
pub fn run_idle(seed: u64, quiet: Duration) -> IdleOutcome {
    let config = deterministic::Config::default()
        .with_seed(seed)
        .with_timeout(Some(quiet + Duration::from_secs(120)));
    deterministic::Runner::new(config).start(|context| async move {
        let keys: Vec<PrivateKey> = (0..4u64)
            .map(|i| PrivateKey::from_seed(1_000 + i))
            .collect();
        let publics: Vec<PublicKey> = keys.iter().map(Signer::public_key).collect();
        let (_, block) = genesis(&keys, Rules::default());
        let oracle = network(&context, keys.len(), publics.clone()).await;
        let link = Link {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            success_rate: Probability::from_f64(1.0).expect("probability"),
        };
        set_links(&oracle, &publics, &link, None).await;
        let mut chains = Vec::new();
        let mut handles = Vec::new();
        for index in 0..keys.len() {
            let (chain, handle) = start_validator(
                &context,
                &oracle,
                &keys,
                keys.len(),
                (&block, Rules::default()),
                index,
            )
            .await;
            chains.push(chain);
            handles.push(handle);
        }
        // Settle into the resting rhythm first: the first heartbeat block.
        while chains[0].status().height == 0 {
            context.sleep(Duration::from_millis(50)).await;
        }
        let before = chains[0].status().height;
        context.sleep(quiet).await;
        let blocks_while_quiet = chains[0].status().height - before;
        let client = &client_keys()[0];
        let tx = TransactionBody {
            chain_id: 1,
            signer: client.public_key(),
            nonce: 0,
            payload: Payload::Anchor {
                label: 1,
                digest: sha256(&[b"after a quiet spell"]),
            },
        }
        .sign(client);
        let submitted = context.current();
        let id = chains[1].submit(tx.bytes()).expect("admitted");
        while !chains.iter().all(|c| c.location(&id).is_some()) {
            context.sleep(Duration::from_millis(5)).await;
        }
        let first_commit = context
            .current()
            .duration_since(submitted)
            .unwrap_or_default();
        for handle in handles {
            handle.abort();
        }
        IdleOutcome {
            trace: context.auditor().state(),
            quiet,
            blocks_while_quiet,
            first_commit,
        }
    })
}

/// Check the safety and exactly-once properties of an outcome; returns a failure message.
pub fn check(seed: u64, outcome: &Outcome) -> Result<(), String> {
    let mut reference: Option<&Vec<(u64, Digest, Digest)>> = None;
    for (index, chain) in &outcome.chains {
        if let Some(reference) = reference {
            let common = reference.len().min(chain.len());
            if reference[..common] != chain[..common] {
                return Err(format!(
                    "seed {seed}: validator {index} finalized a different chain"
                ));
            }
        } else {
            reference = Some(chain);
        }
    }
    for (index, ids) in &outcome.committed {
        let unique: BTreeSet<&Digest> = ids.iter().collect();
        if unique.len() != ids.len() {
            return Err(format!(
                "seed {seed}: validator {index} committed a transaction twice"
            ));
        }
        for id in &outcome.accepted {
            if !unique.contains(id) {
                return Err(format!(
                    "seed {seed}: validator {index} lost an accepted transaction"
                ));
            }
        }
        if unique.len() != outcome.accepted.len() {
            return Err(format!(
                "seed {seed}: validator {index} committed transactions nobody submitted"
            ));
        }
    }
    Ok(())
}

/// What the membership scenario saw.
#[derive(Debug)]
pub struct MembershipOutcome {
    pub trace: String,
    /// Per validator still running at the end: (height, block digest, state root) of each block.
    pub chains: BTreeMap<usize, Vec<(u64, Digest, Digest)>>,
    /// The validator set of every epoch, as validator 0's state has it (by validator index).
    pub epochs: Vec<(u64, Vec<usize>)>,
    /// Height at which the admission and the removal took effect.
    pub admitted_at: u64,
    pub removed_at: u64,
    /// Heights finalized while the progress provably needed the new member's votes (crash of
    /// validator 3, admitted set of five needs four), and after the removal with validator 1
    /// down (set of four needs three).
    pub progress_needing_new_member: (u64, u64),
    pub progress_after_removal: (u64, u64),
    /// The genesis, and an inclusion proof (served by validator 4) of a transaction committed
    /// after both changes.
    pub genesis: Genesis,
    pub proof: ehrchain_types::proof::InclusionProof,
    /// The finality proof of that transaction's block, as the block explorer fetches it.
    pub block_proof: ehrchain_types::proof::BlockProof,
    /// Whether validator 0 still stores the consensus journal of epoch 0 (deleted two epochs
    /// after it ended) and of its current epoch.
    pub journals: (bool, bool),
    /// For every stored finalization certificate on validator 0: (height, certificate epoch,
    /// signers by validator index).
    pub certificates: Vec<(u64, u64, Vec<usize>)>,
}

/// Governance changes the validator set while the chain runs. Four genesis validators and
/// one newcomer (index 4, observing) start. The members vote the newcomer in; from the next
/// epoch it votes, which the run proves by crashing validator 3: five validators need four
/// votes, so blocks keep coming only with the newcomer's. Then they vote validator 3 out;
/// from the following epoch the set is {0, 1, 2, 4}, which the run proves by also stopping
/// validator 1: three of four still finalize. Validator 1 then restarts from its storage,
/// in a later epoch than it stopped in, and catches up.
pub fn run_membership(seed: u64, epoch_blocks: u64) -> MembershipOutcome {
    let config = deterministic::Config::default()
        .with_seed(seed)
        .with_timeout(Some(Duration::from_secs(600)));
    let runner = deterministic::Runner::new(config);
    runner.start(|context| async move {
        let keys: Vec<PrivateKey> = (0..5u64)
            .map(|i| PrivateKey::from_seed(1_000 + i))
            .collect();
        let publics: Vec<PublicKey> = keys.iter().map(Signer::public_key).collect();
        // A short heartbeat: the scenario waits for whole epochs of blocks, idle or not.
        let rules = Rules {
            epoch_blocks,
            heartbeat_ms: 1_000,
            ..Rules::default()
        };
        let (genesis, block) = genesis(&keys[..4], rules);
        let oracle = network(&context, keys.len(), publics[..4].to_vec()).await;
        let link = Link {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(3),
            success_rate: Probability::from_f64(0.99).expect("probability"),
        };
        set_links(&oracle, &publics, &link, None).await;
        let mut chains: BTreeMap<usize, Chain<Blob>> = BTreeMap::new();
        let mut handles: BTreeMap<usize, Handle<()>> = BTreeMap::new();
        for index in 0..keys.len() {
            let (chain, handle) =
                start_validator(&context, &oracle, &keys, 4, (&block, rules), index).await;
            chains.insert(index, chain);
            handles.insert(index, handle);
        }
        let mut nonces = [0u64; 5];
        let mut submit = |chains: &BTreeMap<usize, Chain<Blob>>, signer: usize, payload| {
            let tx = TransactionBody {
                chain_id: 1,
                signer: publics[signer].clone(),
                nonce: nonces[signer],
                payload,
            }
            .sign(&keys[signer]);
            nonces[signer] += 1;
            chains[&signer].submit(tx.bytes()).expect("admitted")
        };
        let height = |chains: &BTreeMap<usize, Chain<Blob>>, i: usize| chains[&i].status().height;
        const LIMIT: Duration = Duration::from_secs(240);
        let committed = |chains: &BTreeMap<usize, Chain<Blob>>, i: usize, id: &Digest| {
            chains[&i].location(id).is_some()
        };
        let passed = |chains: &BTreeMap<usize, Chain<Blob>>, id: &[u8; 16]| {
            chains[&0].read(|s| {
                s.proposals()
                    .find(|(p, _)| *p == id)
                    .and_then(|(_, p)| match p.status {
                        ehrchain_contracts::facts::ProposalStatus::Passed {
                            effective_height,
                            ..
                        } => Some(effective_height),
                        _ => None,
                    })
            })
        };
        // Validator 0 proposes (its own vote is yes), `voters` vote yes; the proposal's
        // effective height once it passed.
        let mut decide = async |chains: &BTreeMap<usize, Chain<Blob>>,
                                id: [u8; 16],
                                action: ehrchain_types::GovernanceAction,
                                voters: &[usize]| {
            let proposal = submit(
                chains,
                0,
                Payload::Propose {
                    proposal: id,
                    action,
                },
            );
            wait_until(&context, "a proposal", LIMIT, || {
                committed(chains, 0, &proposal)
            })
            .await;
            for voter in voters {
                let vote = submit(
                    chains,
                    *voter,
                    Payload::Vote {
                        proposal: id,
                        approve: true,
                    },
                );
                wait_until(&context, "a vote", LIMIT, || {
                    committed(chains, *voter, &vote)
                })
                .await;
            }
            passed(chains, &id).expect("the proposal passed")
        };
        wait_until(&context, "first blocks", LIMIT, || height(&chains, 0) >= 3).await;

        // Admit validator 4: 0, 1 and 2 say yes (3 of 4).
        let admission = ehrchain_types::GovernanceAction::AddMember {
            key: publics[4].clone(),
            encryption_key: [4; 32],
            p2p_address: "127.0.0.1:4004".parse().expect("address"),
        };
        let admitted_at = decide(&chains, [1; 16], admission, &[1, 2]).await;

        // Once validator 4 votes, crash validator 3: only the newcomer's votes make a quorum.
        wait_until(&context, "the admission epoch", LIMIT, || {
            (0..5).all(|i| height(&chains, i) > admitted_at)
        })
        .await;
        let victim = handles.remove(&3).expect("validator 3 runs");
        victim.abort();
        let _ = victim.await;
        chains.remove(&3);
        let before = height(&chains, 0);
        wait_until(&context, "progress with the newcomer", LIMIT, || {
            [0, 1, 2, 4]
                .iter()
                .all(|i| height(&chains, *i) >= before + epoch_blocks)
        })
        .await;
        let progress_needing_new_member = (before, height(&chains, 0));

        // Remove validator 3: 0, 1, 2 and 4 say yes (4 of 5).
        let removal = ehrchain_types::GovernanceAction::RemoveMember {
            key: publics[3].clone(),
        };
        let removed_at = decide(&chains, [2; 16], removal, &[1, 2, 4]).await;
        wait_until(&context, "the removal epoch", LIMIT, || {
            [0, 1, 2, 4]
                .iter()
                .all(|i| height(&chains, *i) > removed_at)
        })
        .await;
        // With 3 gone for good, stop 1 too: {0, 2, 4} are three of the four validators.
        let stopped = handles.remove(&1).expect("validator 1 runs");
        stopped.abort();
        let _ = stopped.await;
        chains.remove(&1);
        let before = height(&chains, 0);
        wait_until(&context, "progress after the removal", LIMIT, || {
            [0, 2, 4]
                .iter()
                .all(|i| height(&chains, *i) >= before + epoch_blocks + 2)
        })
        .await;
        let progress_after_removal = (before, height(&chains, 0));

        // Validator 1 restarts in a later epoch than it stopped in and catches up.
        let (chain, handle) =
            start_validator(&context, &oracle, &keys, 4, (&block, rules), 1).await;
        chains.insert(1, chain);
        handles.insert(1, handle);
        let target = height(&chains, 0);
        wait_until(&context, "validator 1 to catch up", LIMIT, || {
            height(&chains, 1) >= target
        })
        .await;

        // A transaction in the newest epoch, and its proof as the newcomer serves it.
        let client = client_keys()[8].clone();
        let tx = TransactionBody {
            chain_id: 1,
            signer: client.public_key(),
            nonce: 0,
            payload: Payload::Anchor {
                label: 1,
                digest: sha256(&[b"after the changes"]),
            },
        }
        .sign(&client);
        let id = chains[&4].submit(tx.bytes()).expect("admitted");
        wait_until(&context, "the last transaction", LIMIT, || {
            committed(&chains, 4, &id)
        })
        .await;
        let location = chains[&4].location(&id).expect("committed");
        let proof = loop {
            if let Ok(Some(proof)) = ehrchain_chain::proofs::inclusion_proof(
                &chains[&4],
                &genesis,
                &id,
                location.height,
                location.index,
            )
            .await
            {
                break proof;
            }
            context.sleep(Duration::from_millis(50)).await;
        };
        let (_, block_proof) =
            ehrchain_chain::proofs::block_proof(&chains[&4], &genesis, location.height)
                .await
                .expect("the block is stored")
                .expect("a certificate covers it, as it covers the transaction");

        let mut outcome_chains = BTreeMap::new();
        for (index, chain) in &chains {
            let mut blocks = Vec::new();
            for h in 1..=chain.status().height {
                let record = chain.record(h).await.expect("stored block");
                let block = Block::decode(&record.block).expect("stored block decodes");
                blocks.push((h, block.digest(), block.header.state_root));
            }
            outcome_chains.insert(*index, blocks);
        }
        let epochs = chains[&0].read(|s| {
            s.epochs()
                .map(|(epoch, set)| {
                    let indices = set
                        .iter()
                        .map(|k| publics.iter().position(|p| p == k).expect("known key"))
                        .collect();
                    (epoch, indices)
                })
                .collect()
        });
        let mut certificates = Vec::new();
        for h in 1..=chains[&0].status().height {
            let record = chains[&0].record(h).await.expect("stored block");
            if record.finalization.is_empty() {
                continue;
            }
            let finalization = ehrchain_chain::Finalization::decode_cfg(
                commonware_codec::Copying(&record.finalization),
                &ehrchain_types::limits::VALIDATORS_MAX,
            )
            .expect("stored certificate decodes");
            let epoch = finalization.proposal.round.epoch().get();
            let set = chains[&0].read(|s| s.epoch_validators(epoch).map(<[_]>::to_vec));
            let set = set.expect("the certificate's epoch is known");
            let signers = finalization
                .certificate
                .signers
                .iter()
                .map(|p| {
                    let key = &set[p.get() as usize];
                    publics.iter().position(|k| k == key).expect("known key")
                })
                .collect();
            certificates.push((h, epoch, signers));
        }
        let stored = async |epoch: u64| {
            commonware_runtime::Storage::scan(&context, &format!("validator-0-consensus-{epoch}"))
                .await
                .is_ok_and(|blobs| !blobs.is_empty())
        };
        let current = (chains[&0].status().height + 1) / epoch_blocks;
        let journals = (stored(0).await, stored(current).await);
        for handle in handles.into_values() {
            handle.abort();
        }
        MembershipOutcome {
            journals,
            certificates,
            trace: context.auditor().state(),
            chains: outcome_chains,
            epochs,
            admitted_at,
            removed_at,
            progress_needing_new_member,
            progress_after_removal,
            genesis,
            proof,
            block_proof,
        }
    })
}
