//! Record replication and access-log batching in the seeded simulation.
//!
//! Four validators run the blob store, the records keeper and a gateway's access log with its
//! batcher, as `ehrchain node` does, on Commonware's deterministic runtime. One member
//! withholds every blob from its peers and signs access logs that lie; another is killed just
//! after an upload was staged on it and its anchor submitted, and restarts from its disk. The
//! checks: every honest node ends with every final blob; the honest gateway's journalled reads
//! reach every trail as allowed; every honest validator refuses a log claiming reads under a
//! session its gateway did not open, and records a claimed read the contract denies as denied,
//! with a finding; the honest validators agree on the state root; and the seed replays to the
//! same trace digest. Run one seed with
//! `EHRCHAIN_SEED=<seed> cargo test -p ehrchain-sim --test records`.

use ehrchain_sim::records::{HONEST, READS, run_records};

fn seeds() -> Vec<u64> {
    match std::env::var("EHRCHAIN_SEED") {
        Ok(seed) => vec![seed.parse().expect("EHRCHAIN_SEED is a number")],
        Err(_) => (0..std::env::var("EHRCHAIN_RECORD_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3))
            .collect(),
    }
}

#[test]
fn honest_nodes_end_with_every_blob_and_refuse_a_lying_gateway() {
    for seed in seeds() {
        let outcome = run_records(seed);
        let replay = format!("replay with EHRCHAIN_SEED={seed}");
        assert!(outcome.anchored > 0, "seed {seed}: nothing anchored");
        for index in HONEST {
            assert_eq!(
                outcome.held[&index], outcome.anchored,
                "seed {seed}: validator {index} lacks blobs; {replay}"
            );
            assert_eq!(
                outcome.logged_reads[&index], READS,
                "seed {seed}: validator {index}'s trail misses logged reads; {replay}"
            );
            assert_eq!(
                outcome.lies_refused[&index], 2,
                "seed {seed}: validator {index} admitted a log of a session its gateway did not open; {replay}"
            );
            assert!(
                outcome.denied_on_trail[&index],
                "seed {seed}: validator {index} did not record the claimed read as denied; {replay}"
            );
        }
        let roots: Vec<_> = outcome.roots.values().collect();
        assert!(
            roots.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: honest validators disagree on the state root; {replay}"
        );
        assert_eq!(
            outcome.trace,
            run_records(seed).trace,
            "seed {seed} did not replay exactly; {replay}"
        );
        eprintln!(
            "seed {seed}: {} blobs on every honest node",
            outcome.anchored
        );
    }
}
