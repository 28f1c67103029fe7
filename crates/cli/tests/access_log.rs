//! Reads served by a FHIR gateway reach the trail even when its node crashes before the chain
//! has recorded them.
//!
//! A consented (here: a patient's own) read through `/fhir` is decided by the gateway against
//! its node's final state, journalled, answered, and put on chain in the node's next access
//! log. The test starts the demo network (`ehrchain dev`), takes its nodes over, and stops
//! two of the four validators so that nothing can commit. The patient's reads are still
//! answered, from the journal, and the node reports them as not yet recorded. Then the node
//! is killed with SIGKILL, every validator is started again, and each of those reads appears
//! on the patient's trail, as allowed, with the patient as reader: the journal was replayed.
//! Once the node's final state is older than a few seconds (the chain has stalled, or the
//! node is cut off), the gateway stops deciding on its own, so a revocation it cannot see is
//! never ignored for long: reads then wait for their own transaction and fail while the chain
//! cannot commit.

mod common;

use common::{Cluster, agent, cli, get_as, height, ok, try_token, wait_until};
use serde_json::Value;
use std::time::Duration;

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_900;
const API_PORT: u16 = 10_380;
const READS: usize = 20;

fn status(api: &str, token: &str) -> Value {
    get_as(&format!("{api}/chain/status"), token)
        .expect("status")
        .1
}

fn fhir_get(api: &str, token: &str, path: &str) -> (u16, Value) {
    let mut response = agent()
        .get(format!("{api}/fhir/{path}"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("reach node");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    )
}

#[test]
fn reads_answered_before_a_crash_reach_the_trail_after_it() {
    let dir = std::env::temp_dir().join(format!("ehrchain-access-log-{}", std::process::id()));
    let (dev, identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let mut cluster = Cluster::take_over(dev, &dir, API_PORT);
    let api = cluster.api(0);
    let start = height(&cluster.api(1)).unwrap_or(0);
    wait_until("blocks again", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some_and(|h| h > start))
    });

    // The first demo patient, at home on node 0, finds their records.
    let people: Vec<Value> = serde_json::from_slice(&std::fs::read(&identities).unwrap()).unwrap();
    let patient = people
        .iter()
        .find(|p| p["role"] == "patient")
        .expect("a demo patient");
    assert_eq!(patient["api"].as_str(), Some(api.as_str()));
    let patient_id = patient["patient"].as_str().unwrap();
    let key = dir.join("identities/patient-1.key");
    let token = ok(cli(&[
        "auth",
        "token",
        "--api",
        &api,
        "--key",
        key.to_str().unwrap(),
    ]))
    .trim()
    .to_string();
    let (code, bundle) = fhir_get(&api, &token, &format!("Observation?patient={patient_id}"));
    assert_eq!(code, 200, "{bundle}");
    let record = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .expect("a demo record")
        .to_string();
    // The trail's totals are the auditor's to see.
    let auditor_key = dir.join("auditor.key");
    let auditor = try_token(&api, &auditor_key).expect("the auditor logs in");
    wait_until(
        "the search's reads recorded",
        Duration::from_secs(30),
        || status(&api, &auditor)["access_log_unrecorded"] == 0,
    );
    let trail_before = status(&api, &auditor)["access_events"].as_u64().unwrap();

    // Two of four validators stop: nothing commits any more.
    cluster.kill(2);
    cluster.kill(3);
    let stalled = height(&api).unwrap();
    for _ in 0..READS {
        let (code, body) = fhir_get(&api, &token, &format!("Observation/{record}"));
        assert_eq!(code, 200, "a read decided here is answered: {body}");
    }
    let node = status(&api, &auditor);
    assert_eq!(
        node["access_log_unrecorded"], READS,
        "the reads are journalled, not on chain"
    );
    assert_eq!(node["access_events"].as_u64(), Some(trail_before));
    assert_eq!(height(&api), Some(stalled), "the chain cannot commit");

    // Its final state growing old, the gateway no longer decides alone. The window runs from
    // the last consensus certificate the node saw, and one formed just before the kill can
    // reach it late (node 1 relays it), so a read may still be decided here once more.
    let window = Duration::from_millis(ehrchain_api::access_log::DECISION_STATE_AGE_MAX_MS);
    std::thread::sleep(window + Duration::from_secs(1));
    let deadline = std::time::Instant::now() + 3 * window;
    loop {
        let (code, _) = fhir_get(&api, &token, &format!("Observation/{record}"));
        if code == 503 {
            break;
        }
        assert_eq!(code, 200, "a read is answered or fails as transient");
        assert!(
            std::time::Instant::now() < deadline,
            "a read that must wait for the stalled chain fails once no certificate comes"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // The node crashes with the journal not yet on chain, and comes back with the others.
    cluster.kill(0);
    for index in [0, 2, 3] {
        cluster.start(index);
    }
    wait_until(
        "the journalled reads on chain",
        Duration::from_secs(120),
        || {
            // The restarted node forgot its tokens: log in again once it can.
            try_token(&api, &auditor_key).is_some_and(|token| {
                get_as(&format!("{api}/chain/status"), &token)
                    .is_some_and(|(_, s)| s["access_log_unrecorded"] == 0)
            })
        },
    );
    let api1 = cluster.api(1);
    let token1 = try_token(&api1, &key).expect("a login at node 1");
    let (_, trail) =
        get_as(&format!("{api1}/patients/{patient_id}/access"), &token1).expect("trail");
    let events = trail["events"].as_array().expect("events");
    let patient_key = patient["id"].as_str().unwrap();
    let logged: Vec<&Value> = events
        .iter()
        .filter(|e| e["record"] == record.as_str() && e["height"].as_u64() > Some(stalled))
        .collect();
    assert!(
        logged.len() >= READS,
        "every read answered before the crash is on the trail: {logged:?}"
    );
    for event in &logged[..READS] {
        assert_eq!(event["actor"], patient_key);
        assert_eq!(event["outcome"], "allowed");
        assert_eq!(event["basis"]["kind"], "owner");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
