//! Run a whole validator network in one process from a seed, and check what it agreed on.
//!
//! Everything runs on Commonware's deterministic runtime and simulated network: time, task
//! scheduling, message latency, jitter and loss all come from the seed, so a run replays
//! exactly. The validators run the same `engine::start` as a production node.

use commonware_consensus::simplex::mocks::conflicter;
use commonware_cryptography::{Sha256, Signer};
use commonware_p2p::simulated::{self, Link, Network, Oracle};
use commonware_runtime::{Clock, Handle, Quota, Runner, Spawner, Supervisor, deterministic};
use commonware_utils::{NZU32, NZUsize, Probability};
use ehrchain_chain::{
    Chain, ChainConfig,
    engine::{self, Channels, EngineConfig, Timing, channel},
};
use ehrchain_types::{
    Block, CONSENSUS_NAMESPACE, Digest, Genesis, Payload, PrivateKey, PublicKey, TransactionBody,
    genesis::GenesisValidator, sha256,
};
use rand::RngExt as _;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

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

fn genesis(keys: &[PrivateKey]) -> (Genesis, Block) {
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
        rules: Default::default(),
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
async fn start_validator(
    context: &Context,
    oracle: &Oracle<PublicKey, Context>,
    keys: &[PrivateKey],
    block: &Block,
    index: usize,
) -> (Chain<Blob>, Handle<()>) {
    let key = keys[index].clone();
    let channels = channels(oracle, &key.public_key()).await;
    let config = EngineConfig {
        signer: key.clone(),
        validators: keys.iter().map(Signer::public_key).collect(),
        chain: ChainConfig {
            chain_id: 1,
            genesis: block.clone(),
            block_transactions_max: 1_000,
            mempool_transactions_max: 10_000,
            institutions: Vec::new(),
            auditors: Vec::new(),
            rules: Default::default(),
        },
        timing: Timing::default(),
        mailbox_size: 1_024,
        partition_prefix: format!("validator-{index}"),
    };
    let peers = oracle.manager();
    let blocker = oracle.control(key.public_key());
    let (sender, receiver) = futures::channel::oneshot::channel();
    let handle = context
        .child("validator")
        .with_attribute("index", index)
        .spawn(move |context| async move {
            let (chain, handles) = engine::start(context, config, channels, peers, blocker).await;
            let _ = sender.send(chain);
            let _ = futures::future::select_all(handles).await;
        });
    let chain = receiver.await.expect("validator started");
    (chain, handle)
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
        let (_, block) = genesis(&keys);
        let (network, oracle) = Network::new_with_peers(
            context.child("network"),
            simulated::Config {
                max_size: engine::max_message_size(keys.len()),
                max_peers_per_set: NZUsize!(keys.len()),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            publics.clone(),
        )
        .await;
        network.start();
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
                byzantine.start(channels.votes);
                continue;
            }
            let (chain, handle) = start_validator(&context, &oracle, &keys, &block, index).await;
            chains.insert(index, chain);
            handles.insert(index, handle);
        }

        // Clients: each with its own key, submitting to a random honest validator.
        let clients: Vec<PrivateKey> = (0..8u64)
            .map(|i| PrivateKey::from_seed(50_000 + i))
            .collect();
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
                    let (chain, handle) =
                        start_validator(&context, &oracle, &keys, &block, *victim).await;
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
