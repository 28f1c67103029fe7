//! Deterministic simulation of a 4-validator consortium.
//!
//! Each seed runs the production engine on Commonware's deterministic runtime with lossy,
//! jittery links, a network partition that heals, and a validator that crashes and restarts
//! from its storage. The checkers assert that every honest validator finalized the same blocks
//! with the same state roots, that every accepted transaction was committed exactly once, and
//! that running the same seed twice yields the same trace digest. A failing seed prints itself;
//! replay it with `EHRCHAIN_SEED=<seed> cargo test -p ehrchain-sim --test simulation -- replay`.

use ehrchain_sim::{Scenario, check, run, run_idle};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("EHRCHAIN_SEED") {
        return vec![seed.parse().expect("EHRCHAIN_SEED is a number")];
    }
    let count: u64 = std::env::var("EHRCHAIN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    (0..count).collect()
}

#[test]
fn calm_network_commits_everything() {
    let scenario = Scenario {
        partition: None,
        crash: None,
        ..Scenario::default()
    };
    let outcome = run(1, &scenario);
    check(1, &outcome).unwrap();
    assert!(outcome.chains.values().all(|c| !c.is_empty()));
}

#[test]
fn faults_keep_safety_and_exactly_once() {
    let scenario = Scenario::default();
    for seed in seeds() {
        let outcome = run(seed, &scenario);
        if let Err(failure) = check(seed, &outcome) {
            panic!("{failure}; replay with EHRCHAIN_SEED={seed}");
        }
        let replay = run(seed, &scenario);
        assert_eq!(
            outcome.trace, replay.trace,
            "seed {seed} did not replay exactly; replay with EHRCHAIN_SEED={seed}"
        );
        let heights: Vec<usize> = outcome.chains.values().map(Vec::len).collect();
        eprintln!(
            "seed {seed}: heights {heights:?}, {} transactions",
            outcome.accepted.len()
        );
    }
}

#[test]
fn same_seed_same_trace() {
    let scenario = Scenario::default();
    let first = run(7, &scenario);
    let second = run(7, &scenario);
    assert_eq!(first.trace, second.trace, "seed 7 did not replay exactly");
    assert_eq!(first.chains, second.chains);
}

#[test]
fn byzantine_equivocator_cannot_break_safety() {
    let scenario = Scenario {
        byzantine: vec![0],
        crash: None,
        partition: None,
        ..Scenario::default()
    };
    for seed in 0..5 {
        let outcome = run(seed, &scenario);
        if let Err(failure) = check(seed, &outcome) {
            panic!("{failure}; replay with EHRCHAIN_SEED={seed}");
        }
        assert_eq!(outcome.chains.len(), 3);
    }
}

#[test]
fn governance_changes_the_validator_set_at_epoch_boundaries() {
    let epoch_blocks = 20;
    for seed in seeds().into_iter().take(3) {
        let outcome = ehrchain_sim::run_membership(seed, epoch_blocks);
        // Changes take effect exactly at an epoch's first block.
        assert_eq!(outcome.admitted_at % epoch_blocks, 0, "seed {seed}");
        assert_eq!(outcome.removed_at % epoch_blocks, 0, "seed {seed}");
        let admitted_epoch = outcome.admitted_at / epoch_blocks;
        let removed_epoch = outcome.removed_at / epoch_blocks;
        for (epoch, set) in &outcome.epochs {
            let expected: &[usize] = if *epoch < admitted_epoch {
                &[0, 1, 2, 3]
            } else if *epoch < removed_epoch {
                &[0, 1, 2, 3, 4]
            } else {
                &[0, 1, 2, 4]
            };
            let mut set = set.clone();
            set.sort();
            assert_eq!(set, expected, "seed {seed}: validators of epoch {epoch}");
        }
        assert!(outcome.epochs.iter().any(|(e, _)| *e >= removed_epoch));
        // Liveness that only the new set can give.
        let (from, to) = outcome.progress_needing_new_member;
        assert!(to >= from + epoch_blocks, "seed {seed}: {from}..{to}");
        let (from, to) = outcome.progress_after_removal;
        assert!(to > from + epoch_blocks, "seed {seed}: {from}..{to}");
        // Every running validator, the newcomer and the restarted one included, agrees.
        let reference = &outcome.chains[&0];
        for (index, chain) in &outcome.chains {
            let common = reference.len().min(chain.len());
            assert_eq!(
                reference[..common],
                chain[..common],
                "seed {seed}: validator {index} finalized a different chain"
            );
            assert!(
                common >= outcome.removed_at as usize,
                "seed {seed}: {index} is behind"
            );
        }
        // Certificates: each of its block's epoch, and from the admission until the removal
        // (validator 3 down from shortly after the admission) the newcomer signs them.
        for (height, epoch, signers) in &outcome.certificates {
            assert_eq!(
                *epoch,
                height / epoch_blocks,
                "seed {seed}: certificate of {height}"
            );
            if *epoch >= removed_epoch {
                assert!(
                    !signers.contains(&3),
                    "seed {seed}: removed validator signed {height}"
                );
            }
        }
        let newcomer_signed = outcome
            .certificates
            .iter()
            .filter(|(h, _, s)| *h >= outcome.admitted_at && s.contains(&4))
            .count();
        assert!(
            newcomer_signed as u64 >= epoch_blocks,
            "seed {seed}: {newcomer_signed}"
        );
        assert!(
            outcome
                .certificates
                .iter()
                .all(|(h, _, s)| *h >= outcome.admitted_at || !s.contains(&4)),
            "seed {seed}: the newcomer signed before its epoch"
        );
        assert_eq!(
            outcome.journals,
            (false, true),
            "seed {seed}: old journals are deleted"
        );
        // A proof of a transaction after both changes verifies offline from the genesis,
        // following the two certified changes of the validator set, and fails without them.
        let verified = outcome
            .proof
            .verify(&outcome.genesis)
            .expect("proof verifies");
        assert!(verified.height > outcome.removed_at, "seed {seed}");
        assert_eq!(
            outcome.proof.epochs.len(),
            2,
            "seed {seed}: one handoff per change"
        );
        let mut stripped = outcome.proof.clone();
        stripped.epochs.clear();
        assert!(stripped.verify(&outcome.genesis).is_err(), "seed {seed}");
        let mut forged = outcome.proof.clone();
        forged.epochs[1].validators.swap(0, 1);
        assert!(forged.verify(&outcome.genesis).is_err(), "seed {seed}");
        // The block's own finality proof (the explorer's) verifies the same way, names the
        // same block, and fails without the handoffs or with another block's certificate.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let block = outcome
            .block_proof
            .verify_with(&outcome.genesis, &mut rng)
            .expect("block proof verifies");
        assert_eq!(
            (block.height, block.block),
            (verified.height, verified.block),
            "seed {seed}"
        );
        assert!(block.validators >= 4, "seed {seed}");
        let mut stripped = outcome.block_proof.clone();
        stripped.epochs.clear();
        assert!(
            stripped.verify_with(&outcome.genesis, &mut rng).is_err(),
            "seed {seed}"
        );
        let mut other = outcome.block_proof.clone();
        other.finalization = outcome.block_proof.epochs[0].finalization.clone();
        assert!(
            other.verify_with(&outcome.genesis, &mut rng).is_err(),
            "seed {seed}"
        );
        let replay = ehrchain_sim::run_membership(seed, epoch_blocks);
        assert_eq!(
            outcome.trace, replay.trace,
            "seed {seed} did not replay exactly"
        );
        eprintln!(
            "seed {seed}: admitted at {}, removed at {}, {} epochs, height {}",
            outcome.admitted_at,
            outcome.removed_at,
            outcome.epochs.len(),
            reference.len()
        );
    }
}

/// An idle network rests: over two simulated minutes with nothing to order it makes one block
/// per 20 s heartbeat (not one per view), and the first transaction after the quiet spell
/// still commits at once. Same seed, same trace.
#[test]
fn an_idle_network_rests_between_heartbeats() {
    for seed in [3, 4] {
        let quiet = std::time::Duration::from_secs(120);
        let idle = run_idle(seed, quiet);
        let heartbeats = quiet.as_secs() / ehrchain_types::genesis::HEARTBEAT_MS.div_ceil(1000);
        assert!(
            idle.blocks_while_quiet <= heartbeats + 1 && idle.blocks_while_quiet + 2 >= heartbeats,
            "seed {seed}: {} blocks in {quiet:?}, expected about {heartbeats}",
            idle.blocks_while_quiet
        );
        assert!(
            idle.first_commit < std::time::Duration::from_secs(2),
            "seed {seed}: the first transaction after rest took {:?}",
            idle.first_commit
        );
        assert_eq!(
            idle.trace,
            run_idle(seed, quiet).trace,
            "seed {seed} replays"
        );
        eprintln!(
            "seed {seed}: {} blocks in {quiet:?} of quiet; first commit after it in {:?}",
            idle.blocks_while_quiet, idle.first_commit
        );
    }
}
