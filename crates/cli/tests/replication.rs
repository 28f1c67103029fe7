//! Replication completes after any crash, without another restart.
//!
//! The demo network (`ehrchain dev`) is taken over node by node. Two clinicians write
//! Observations through FHIR without pause, one through node 0 and one through node 1. Node 1
//! is killed with SIGKILL at a random moment (seeded, so a run can be replayed with
//! `EHRCHAIN_SEED`), restarted at once, and must then serve the envelope of every record whose
//! create was acknowledged by either node, within 30 s. That is repeated `EHRCHAIN_CRASHES`
//! times (20 by default). At the end every acknowledged record is checked again on every node,
//! and node 1's `blobs_missing` is 0. The slowest catch-up is printed.

mod common;

use common::{Cluster, height, status_of, try_token, wait_until};
use serde_json::Value;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_200;
const API_PORT: u16 = 10_680;
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// A small deterministic generator for the crash moments.
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        range.start + (self.0 >> 33) % (range.end - range.start)
    }
}

#[test]
fn a_node_killed_under_write_load_completes_its_replicas() {
    let crashes: usize = std::env::var("EHRCHAIN_CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("EHRCHAIN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let dir = std::env::temp_dir().join(format!("ehrchain-replication-{}", std::process::id()));
    let (dev, identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let mut cluster = Cluster::take_over(dev, &dir, API_PORT);
    wait_until("every node up", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some())
    });
    let people: Vec<Value> = serde_json::from_slice(&std::fs::read(&identities).unwrap()).unwrap();
    let patients: Vec<String> = people
        .iter()
        .filter(|p| p["role"] == "patient")
        .map(|p| p["patient"].as_str().unwrap().to_string())
        .collect();
    let writers: Vec<(String, std::path::PathBuf, String)> = (0..2)
        .map(|i| {
            (
                cluster.api(i),
                dir.join(format!("identities/clinician-{}.key", i + 1)),
                patients[i].clone(),
            )
        })
        .collect();

    // The load: each clinician writes through its own node, and logs in again after a crash.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = writers
        .into_iter()
        .map(|(api, key, patient)| common::write_load(api, key, patient, &acked, &stop))
        .collect();

    let victim = 1;
    let institution = dir.join(format!("node-{victim}/validator.key"));
    let mut random = Lcg(seed);
    let mut slowest = Duration::ZERO;
    let mut checked = 0;
    for crash in 0..crashes {
        std::thread::sleep(Duration::from_millis(random.next_ms(500..3_000)));
        cluster.kill(victim);
        let killed_at = Instant::now();
        cluster.start(victim);
        let api = cluster.api(victim);
        let token = {
            let mut token = None;
            wait_until("a login at the restarted node", CATCH_UP_MAX, || {
                token = try_token(&api, &institution);
                token.is_some()
            });
            token.unwrap()
        };
        // Every create acknowledged since the last check (those around the crash among them),
        // by either node, is served by the victim in time. All of them are checked again at
        // the end, on every node.
        let upto = acked.lock().unwrap().len();
        let ids: Vec<String> = acked.lock().unwrap()[checked..upto].to_vec();
        let mut pending: Vec<&String> = ids.iter().collect();
        while !pending.is_empty() {
            pending.retain(|id| {
                status_of(&format!("{api}/records/{id}/1/envelope"), &token) != Some(200)
            });
            assert!(
                killed_at.elapsed() < CATCH_UP_MAX,
                "crash {crash}: {} of {} acknowledged records still missing on node {victim} \
                 after {CATCH_UP_MAX:?}",
                pending.len(),
                ids.len()
            );
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        slowest = slowest.max(killed_at.elapsed());
        checked = upto;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in load {
        writer.join().unwrap();
    }
    let ids = acked.lock().unwrap().clone();
    assert!(ids.len() >= checked, "the load kept writing");
    for node in 0..4 {
        let api = cluster.api(node);
        let key = dir.join(format!("node-{node}/validator.key"));
        let token = try_token(&api, &key).expect("a login");
        let deadline = Instant::now() + CATCH_UP_MAX;
        for id in &ids {
            while status_of(&format!("{api}/records/{id}/1/envelope"), &token) != Some(200) {
                assert!(
                    Instant::now() < deadline,
                    "node {node} never got record {id}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let token = try_token(&cluster.api(victim), &institution).unwrap();
    let (_, status) =
        common::get_as(&format!("{}/chain/status", cluster.api(victim)), &token).unwrap();
    assert_eq!(status["blobs_missing"], 0, "{status}");
    println!(
        "{crashes} crashes of node {victim} under FHIR write load (seed {seed}): {} records \
         acknowledged, every replica complete; slowest catch-up {slowest:?} (limit {CATCH_UP_MAX:?})",
        ids.len()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
