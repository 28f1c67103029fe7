//! `ehrchain verify`: re-check a stored chain from genesis, offline.

use anyhow::{Context, Result};
use commonware_codec::Decode;
use commonware_cryptography::{BatchEntry, BatchVerifier, certificate::Verifier as _};
use commonware_runtime::{Runner, tokio as cw_tokio};
use ehrchain_chain::{
    Finalization, Scheme,
    log::{BlockLog, Record},
    state::{self, State},
};
use ehrchain_types::{
    Block, CONSENSUS_NAMESPACE, Digest, Genesis, PublicKey, TRANSACTION_NAMESPACE,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::{path::Path, time::Instant};

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

struct Checker {
    genesis_digest: Digest,
    verifier: Scheme,
    state: State,
    previous: Option<(Digest, Digest, u64)>,
    /// The previous block's digest had no certificate of its own yet.
    previous_uncertified: bool,
    transactions: u64,
    rng: rand::rngs::ThreadRng,
}

impl Checker {
    fn check(&mut self, record: &Record) -> Result<(), Damage> {
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
        let certified = if record.finalization.is_empty() {
            false
        } else {
            let finalization = Finalization::decode_cfg(
                commonware_codec::Copying(&record.finalization),
                &self.verifier.certificate_codec_config(),
            )
            .map_err(|_| damage("finalization certificate does not decode"))?;
            if finalization.proposal.payload != block.digest() {
                return Err(damage("block does not match its finalization certificate"));
            }
            if !finalization.verify(
                &mut self.rng,
                &self.verifier,
                &commonware_parallel::Sequential,
            ) {
                return Err(damage("finalization certificate signatures do not verify"));
            }
            true
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
        let ok = block.transactions.is_empty()
            || PublicKey::verify_batch(
                &mut self.rng,
                &block.transactions,
                |_, tx| BatchEntry {
                    namespace: TRANSACTION_NAMESPACE,
                    message: tx.body_bytes(),
                    public_key: &tx.body.signer,
                    signature: &tx.signature,
                },
                &commonware_parallel::Sequential,
            );
        if !ok {
            return Err(damage("a transaction signature does not verify"));
        }
        let delta = state::execute(&self.state, &block)
            .map_err(|e| damage(&format!("a transaction does not apply: {e}")))?;
        let root = state::next_root(&parent_root, height, &delta);
        if root != block.header.state_root {
            return Err(damage(
                "state root does not match the executed transactions",
            ));
        }
        self.state.commit(delta);
        self.transactions += block.transactions.len() as u64;
        self.previous = Some((block.digest(), root, block.header.timestamp_ms));
        self.previous_uncertified = !certified;
        Ok(())
    }
}

/// Verify the chain stored in `data_dir`. `Ok(Err(damage))` names the first bad block.
pub fn verify(data_dir: &Path, progress: bool) -> Result<std::result::Result<Report, Damage>> {
    let genesis_path = data_dir.join(crate::node::GENESIS_COPY);
    let genesis: Genesis = crate::config::load_genesis(&genesis_path)
        .with_context(|| format!("{} is not a node data directory", data_dir.display()))?;
    let participants = commonware_utils::ordered::Set::try_from(genesis.validator_keys()?)
        .map_err(|_| anyhow::anyhow!("duplicate validators in genesis"))?;
    let verifier = Scheme::verifier(CONSENSUS_NAMESPACE, participants);
    let genesis_block =
        genesis.block(ehrchain_chain::application::genesis_root(genesis.chain_id))?;
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
        let mut checker = Checker {
            genesis_digest: genesis_block.digest(),
            verifier,
            state: State::default(),
            previous: None,
            previous_uncertified: false,
            transactions: 0,
            rng: rand::rng(),
        };
        let mut damage = None;
        let scanned = BlockLog::scan(&context, "ehrchain", |record| {
            if damage.is_some() {
                return;
            }
            if let Err(found) = checker.check(&record) {
                damage = Some(found);
            }
            bar.inc(1);
        })
        .await;
        bar.finish_and_clear();
        if let Some(damage) = damage {
            return Ok(Err(damage));
        }
        match scanned {
            Ok(blocks) => Ok(Ok(Report {
                blocks,
                transactions: checker.transactions,
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
