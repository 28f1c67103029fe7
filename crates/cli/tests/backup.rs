//! Backup and restore of a running node, and what erasure means for a backup taken before it.
//!
//! The demo network (`ehrchain dev`, HTTPS) is taken over node by node. Node 0, the first
//! patient's home, is backed up while it runs (`ehrchain backup`), and the copy verifies.
//! A clinician then writes one more Observation for that patient, through node 1. Node 0
//! loses its whole directory; `ehrchain restore` puts the backup back, and the node started
//! there catches up from its peers: it reaches their height and serves both the record of
//! before the backup and the one written after it.
//!
//! Then the patient asks for erasure, and every node answers 410. The old backup is opened
//! as an attacker holding it would, with the storage and crypto crates directly:
//! - the patient's custodial seed and the clinician's decryption key are in the backup's
//!   custody directory, and each opens the envelope of the patient's old record;
//! - a clinician who was never a reader cannot open it;
//! - the record written after the backup is not in it.
//!
//! `docs/OPERATIONS.md` states exactly this.

mod common;

use common::{Cluster, agent, cli, height, ok, path, try_token, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_400;
const API_PORT: u16 = 10_880;

fn fhir(url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let response = match body {
        Some(body) => agent()
            .post(url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/fhir+json")
            .send(body.to_string()),
        None => agent()
            .get(url)
            .header("Authorization", format!("Bearer {token}"))
            .call(),
    };
    let mut response = response.expect("reach the node");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    )
}

fn read_key(file: &std::path::Path) -> [u8; 32] {
    hex::decode(std::fs::read_to_string(file).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn a_restored_node_catches_up_and_an_old_backup_outlives_erasure_as_documented() {
    let dir = std::env::temp_dir().join(format!("ehrchain-backup-{}", std::process::id()));
    let (dev, identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let mut cluster = Cluster::take_over(dev, &dir, API_PORT);
    let (api0, api1) = (cluster.api(0), cluster.api(1));
    wait_until("the network again", Duration::from_secs(60), || {
        try_token(&api0, &dir.join("node-0/validator.key")).is_some()
    });
    let people: Vec<Value> = serde_json::from_slice(&std::fs::read(&identities).unwrap()).unwrap();
    let patient = people.iter().find(|p| p["role"] == "patient").unwrap();
    let patient_id = patient["patient"].as_str().unwrap().to_string();
    let patient_key = dir.join("identities/patient-1.key");
    let clinician_1 = dir.join("identities/clinician-1.key");
    let clinician_2 = dir.join("identities/clinician-2.key");
    let institution = try_token(&api0, &dir.join("node-0/validator.key")).unwrap();

    // A record of before the backup, with its envelope's hash.
    let me = try_token(&api0, &patient_key).unwrap();
    let (code, bundle) = fhir(
        &format!("{api0}/fhir/Observation?patient={patient_id}"),
        &me,
        None,
    );
    assert_eq!(code, 200, "{bundle}");
    let old = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, history) = common::get_as(&format!("{api0}/records/{old}"), &institution).unwrap();
    let old_hash = history["versions"][0]["ciphertext_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let old_version = history["versions"][0]["version"].as_u64().unwrap() as u32;

    // Backup of the running node.
    let backup = dir.join("backup-node-0");
    let out = ok(cli(&[
        "backup",
        "--config",
        path(&dir.join("node-0/config.toml")),
        "--out",
        path(&backup),
    ]));
    assert!(out.contains("verified"), "{out}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("MANIFEST.json")).unwrap()).unwrap();
    assert!(manifest["blobs"].as_u64().unwrap() >= 25, "{manifest}");
    let custody_copy = backup.join(format!("data/custody/{patient_id}.key"));
    assert!(custody_copy.exists());

    // One more record, after the backup, through node 1.
    let doctor = try_token(&api1, &clinician_1).unwrap();
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "valueQuantity": {"value": 61, "unit": "/min"}
    });
    let (code, created) = fhir(
        &format!("{api1}/fhir/Observation"),
        &doctor,
        Some(&observation),
    );
    assert_eq!(code, 201, "{created}");
    let new = created["id"].as_str().unwrap().to_string();

    // Node 0 loses its directory and comes back from the backup.
    cluster.kill(0);
    std::fs::rename(dir.join("node-0"), dir.join("node-0.lost")).unwrap();
    let restored = ok(cli(&[
        "restore",
        "--from",
        path(&backup),
        "--dir",
        path(&dir.join("node-0")),
    ]));
    assert!(restored.contains("restored member-0"), "{restored}");
    cluster.start(0);
    let target = height(&api1).unwrap();
    wait_until(
        "the restored node at its peers' height",
        Duration::from_secs(90),
        || height(&api0).is_some_and(|h| h >= target),
    );
    let mut me = None;
    wait_until(
        "the restored node serves old and new records",
        Duration::from_secs(60),
        || {
            me = me.clone().or_else(|| try_token(&api0, &patient_key));
            me.as_ref().is_some_and(|token| {
                [&old, &new]
                    .iter()
                    .all(|id| fhir(&format!("{api0}/fhir/Observation/{id}"), token, None).0 == 200)
            })
        },
    );
    let (_, history) = common::get_as(
        &format!("{api1}/records/{new}"),
        &try_token(&api1, &dir.join("node-1/validator.key")).unwrap(),
    )
    .unwrap();
    let new_hash = history["versions"][0]["ciphertext_hash"]
        .as_str()
        .unwrap()
        .to_string();

    // Erasure, signed by the patient.
    ok(cli(&[
        "patient",
        "erase",
        "--api",
        &api1,
        "--key",
        path(&patient_key),
        "--patient",
        &patient_id,
    ]));
    let me = me.unwrap();
    wait_until("erased on node 0", Duration::from_secs(60), || {
        fhir(&format!("{api0}/fhir/Observation/{old}"), &me, None).0 == 410
    });
    // The records keeper deletes the custodial seed when it carries out the erasure block,
    // just after the state shows the erasure (the 410 above): give it that moment.
    let live_key = dir.join(format!("node-0/data/custody/{patient_id}.key"));
    wait_until(
        "the live custody key is gone",
        Duration::from_secs(30),
        || !live_key.exists(),
    );

    // The old backup, opened directly.
    let scratch = dir.join("backup-opened");
    std::fs::create_dir_all(&scratch).unwrap();
    for entry in std::fs::read_dir(backup.join("data/records")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), scratch.join(entry.file_name())).unwrap();
    }
    let hash = |hex_hash: &str| -> [u8; 32] { hex::decode(hex_hash).unwrap().try_into().unwrap() };
    let (old_blob, new_blob) = (hash(&old_hash), hash(&new_hash));
    let (old_found, new_found) = commonware_runtime::Runner::start(
        commonware_runtime::deterministic::Runner::default(),
        |context| async move {
            let store = ehrchain_storage::BlobStore::local(context, &scratch).unwrap();
            (
                store.get(&old_blob).await.unwrap(),
                store.get(&new_blob).await.unwrap(),
            )
        },
    );
    let (envelope, wraps) = old_found.expect("the old envelope is in the old backup");
    let binding = ehrchain_crypto::Binding {
        record: hex::decode(&old).unwrap().try_into().unwrap(),
        version: old_version,
        patient: hex::decode(&patient_id).unwrap().try_into().unwrap(),
    };
    let opens = |key: &ehrchain_crypto::EncryptionKey| {
        ehrchain_crypto::open_for(&binding, &envelope, &wraps, key).is_ok()
    };
    let custodial = ehrchain_crypto::EncryptionKey::from_seed(&read_key(&custody_copy));
    assert!(opens(&custodial), "the backup's custodial seed opens it");
    let served =
        ehrchain_crypto::EncryptionKey::from_secret_bytes(&read_key(&backup.join(format!(
            "data/custody/{}.enc",
            people.iter().find(|p| p["role"] == "clinician").unwrap()["id"]
                .as_str()
                .unwrap()
        ))))
        .unwrap();
    assert!(opens(&served), "the backup's clinician key opens it");
    let stranger = ehrchain_crypto::EncryptionKey::from_seed(&read_key(&clinician_2));
    assert!(!opens(&stranger), "no wrap for a clinician who never read");
    assert!(
        new_found.is_none(),
        "what was written after the backup is not in it"
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
