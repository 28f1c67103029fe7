//! Deterministic simulation of a 4-validator consortium.
//!
//! Each seed runs the production engine on Commonware's deterministic runtime with lossy,
//! jittery links, a network partition that heals, and a validator that crashes and restarts
//! from its storage. The checkers assert that every honest validator finalized the same blocks
//! with the same state roots, that every accepted transaction was committed exactly once, and
//! that running the same seed twice yields the same trace digest. A failing seed prints itself;
//! replay it with `EHRCHAIN_SEED=<seed> cargo test -p ehrchain-sim --test simulation -- replay`.

use ehrchain_sim::{Scenario, check, run};

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
