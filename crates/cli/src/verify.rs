//! `ehrchain verify`: re-check a stored chain from genesis, offline.
//!
//! Records are checked in windows: decoding, signatures and certificates of a window are
//! checked on every core at once (they depend on nothing else), then the window is applied
//! in order for the hash links and the state roots.

use anyhow::{Context, Result};
use commonware_codec::Decode;
use commonware_runtime::{Runner, tokio as cw_tokio};
use ehrchain_chain::{
    Finalization, Scheme,
    log::{BlockLog, Record},
};
use ehrchain_contracts::{
    execute,
    state::{self, State},
};
use ehrchain_types::{Block, CONSENSUS_NAMESPACE, Digest, Genesis};
use indicatif::{ProgressBar, ProgressStyle};
use std::{path::Path, time::Instant};

/// Records checked together; bounds the memory verify holds at once.
const WINDOW_RECORDS_MAX: usize = 256;

/// The first problem found, naming the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub height: u64,
    pub reason: String,
}

/// What a clean verification saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub blocks: u64,
    pub transactions: u64,
    pub seconds: f64,
}

/// A record that passed every check that needs no other record.
struct Checked {
    block: Block,
    /// Its finalization certificate, and whether its signatures were already checked (they
    /// are when the epoch's validators were known when the window began).
    finalization: Option<(Finalization, bool)>,
}

/// Every epoch's certificate verifier, from the validator sets the replayed state names.
type Verifiers = std::collections::BTreeMap<u64, Scheme>;

/// Add the verifiers of the epochs the state names beyond the newest known one.
fn learn_verifiers(verifiers: &mut Verifiers, state: &State) {
    let mut epoch = verifiers.keys().next_back().map_or(0, |e| e + 1);
    while let Some(set) = state.epoch_validators(epoch) {
        let participants = commonware_utils::ordered::Set::try_from(set.to_vec())
            .expect("validator sets have unique keys");
        verifiers.insert(epoch, Scheme::verifier(CONSENSUS_NAMESPACE, participants));
        epoch += 1;
    }
}

/// Decode a record, and check its transaction signatures and, when its epoch's validators
/// are known, its certificate.
fn check_alone(
    verifiers: &Verifiers,
    epoch_blocks: u64,
    chain_id: u64,
    record: &Record,
) -> Result<Checked, Damage> {
    let height = record.height;
    let damage = |reason: &str| Damage {
        height,
        reason: reason.to_string(),
    };
    let block =
        Block::decode(&record.block).map_err(|e| damage(&format!("does not decode: {e}")))?;
    if block.height() != height {
        return Err(damage("stored under the wrong height"));
    }
    let mut rng = rand::rng();
    let finalization = if record.finalization.is_empty() {
        None
    } else {
        let finalization = Finalization::decode_cfg(
            commonware_codec::Copying(&record.finalization),
            &ehrchain_types::limits::VALIDATORS_MAX, // the most signers a certificate can carry
        )
        .map_err(|_| damage("finalization certificate does not decode"))?;
        if finalization.proposal.payload != block.digest() {
            return Err(damage("block does not match its finalization certificate"));
        }
        let epoch = finalization.proposal.round.epoch().get();
        if epoch != height / epoch_blocks {
            return Err(damage("finalization certificate is of another epoch"));
        }
        let checked = match verifiers.get(&epoch) {
            Some(verifier) => {
                if !finalization.verify(&mut rng, verifier, &commonware_parallel::Sequential) {
                    return Err(damage("finalization certificate signatures do not verify"));
                }
                true
            }
            None => false,
        };
        Some((finalization, checked))
    };
    let transactions: Vec<&ehrchain_types::Transaction> = block.transactions.iter().collect();
    ehrchain_chain::application::verify_signatures(&mut rng, chain_id, &transactions)
        .map_err(|e| damage(&format!("a transaction is invalid: {e}")))?;
    Ok(Checked {
        block,
        finalization,
    })
}

struct Chain {
    genesis_digest: Digest,
    verifiers: Verifiers,
    state: State,
    previous: Option<(Digest, Digest, u64)>,
    /// The previous block had no certificate of its own.
    previous_uncertified: bool,
    transactions: u64,
}

impl Chain {
    /// Apply one checked block in order: hash link, time, transactions, state root.
    fn apply(&mut self, checked: Checked) -> Result<(), Damage> {
        let Checked {
            block,
            finalization,
        } = checked;
        let height = block.height();
        let certified = finalization.is_some();
        let damage = |reason: &str| Damage {
            height,
            reason: reason.to_string(),
        };
        let Some((parent_digest, parent_root, parent_time)) = self.previous else {
            if block.digest() != self.genesis_digest {
                return Err(damage("is not the genesis block of this chain"));
            }
            self.previous = Some((
                block.digest(),
                block.header.state_root,
                block.header.timestamp_ms,
            ));
            return Ok(());
        };
        if block.header.parent != parent_digest {
            // Whichever side lacks its own certificate is the one that was changed.
            let blamed = if certified && self.previous_uncertified {
                height - 1
            } else {
                height
            };
            return Err(Damage {
                height: blamed,
                reason: "hash link to the previous block is broken".into(),
            });
        }
        if block.header.timestamp_ms < parent_time {
            return Err(damage("timestamp goes backwards"));
        }
        // A certificate of an epoch whose validators the window did not know yet: they are
        // known now, from the blocks applied before this one.
        if let Some((finalization, false)) = &finalization {
            let epoch = finalization.proposal.round.epoch().get();
            let verifier = self
                .verifiers
                .get(&epoch)
                .ok_or_else(|| damage("finalization certificate is of an unknown epoch"))?;
            let mut rng = rand::rng();
            if !finalization.verify(&mut rng, verifier, &commonware_parallel::Sequential) {
                return Err(damage("finalization certificate signatures do not verify"));
            }
        }
        let delta = execute::execute(&self.state, &block)
            .map_err(|e| damage(&format!("a transaction does not apply: {e}")))?;
        let root = state::block_root(&self.state, &parent_root, height, &delta);
        if root != block.header.state_root {
            return Err(damage(
                "state root does not match the executed transactions",
            ));
        }
        if self
            .state
            .commit_block(height, &parent_root, delta)
            .is_some()
        {
            learn_verifiers(&mut self.verifiers, &self.state);
        }

        self.transactions += block.transactions.len() as u64;
        self.previous = Some((block.digest(), root, block.header.timestamp_ms));
        self.previous_uncertified = !certified;
        Ok(())
    }
}

/// Check a window of consecutive records: the stateless part on every core, then in order.
fn check_window(
    epoch_blocks: u64,
    chain_id: u64,
    chain: &mut Chain,
    window: &[Record],
    threads: usize,
) -> Result<(), Damage> {
    let chunk = window.len().div_ceil(threads.max(1)).max(1);
    let verifiers = &chain.verifiers;
    let results: Vec<Result<Checked, Damage>> = std::thread::scope(|scope| {
        let handles: Vec<_> = window
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|record| check_alone(verifiers, epoch_blocks, chain_id, record))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verify thread"))
            .collect()
    });
    for result in results {
        chain.apply(result?)?;
    }
    Ok(())
}

/// Verify the chain stored in `data_dir`. `Ok(Err(damage))` names the first bad block.
pub fn verify(data_dir: &Path, progress: bool) -> Result<std::result::Result<Report, Damage>> {
    let genesis_path = data_dir.join(crate::node::GENESIS_COPY);
    let genesis: Genesis = crate::config::load_genesis(&genesis_path)
        .with_context(|| format!("{} is not a node data directory", data_dir.display()))?;
    let epoch_blocks = genesis.rules.epoch_blocks.max(1);
    let genesis_block =
        genesis.block(ehrchain_chain::application::genesis_root(genesis.chain_id))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chain_id = genesis.chain_id;
    let data_dir = data_dir.to_path_buf();
    let executor = cw_tokio::Runner::new(cw_tokio::Config::new().with_storage_directory(&data_dir));
    executor.start(|context| async move {
        let bar = if progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} verified {pos} blocks ({per_sec}) {msg}")
                .expect("valid template"),
        );
        let started = Instant::now();
        let state = State::new(
            &ehrchain_chain::institutions(&genesis)?,
            &genesis.auditor_keys()?,
            genesis.rules,
        );
        let mut verifiers = Verifiers::new();
        learn_verifiers(&mut verifiers, &state);
        let mut chain = Chain {
            genesis_digest: genesis_block.digest(),
            verifiers,
            state,
            previous: None,
            previous_uncertified: false,
            transactions: 0,
        };
        let mut damage: Option<Damage> = None;
        let mut window = Vec::with_capacity(WINDOW_RECORDS_MAX);
        let scanned = BlockLog::scan(&context, "ehrchain", |record| {
            if damage.is_some() {
                return;
            }
            window.push(record);
            if window.len() == WINDOW_RECORDS_MAX {
                if let Err(found) =
                    check_window(epoch_blocks, chain_id, &mut chain, &window, threads)
                {
                    damage = Some(found);
                }
                bar.inc(window.len() as u64);
                window.clear();
            }
        })
        .await;
        if damage.is_none()
            && let Err(found) = check_window(epoch_blocks, chain_id, &mut chain, &window, threads)
        {
            damage = Some(found);
        }
        bar.finish_and_clear();
        if let Some(damage) = damage {
            return Ok(Err(damage));
        }
        match scanned {
            Ok(blocks) => Ok(Ok(Report {
                blocks,
                transactions: chain.transactions,
                seconds: started.elapsed().as_secs_f64(),
            })),
            Err(ehrchain_chain::log::Error::Malformed { height, reason, .. }) => Ok(Err(Damage {
                height,
                reason: format!("stored record is malformed: {reason}"),
            })),
            Err(error) => Err(anyhow::anyhow!("cannot read the block log: {error}")),
        }
    })
}
