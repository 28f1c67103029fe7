//! Encrypted records across four `ehrchain node` processes, driven through the CLI exactly as
//! a hospital's integration would drive it.
//!
//! Covers: every supported FHIR resource type written by a clinician and read back
//! byte-for-byte by the patient from another node (one node keeps its blobs in an S3 bucket
//! served by `s3s-fs`, a real S3-compatible server); an update makes version 2 while version 1
//! stays readable; invalid FHIR and unknown patients are refused with a reason; a node that
//! was down fetches the blobs it missed from its peers; the wrong key gets no plaintext; a
//! blob altered by one byte is never served; planted names and identifiers appear nowhere in
//! any node's chain storage, logs, blob store or key files; and a patient's erasure deletes
//! every envelope and wrapped key on every node, still so after a restart, while reads answer
//! 410 Gone.

mod common;

use common::{Cluster, Guard, cli, get_as, height, ok, path, token, wait_until};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_500;
const API_PORT: u16 = 9_980;
const S3_PORT: u16 = 9_990;

const PLANTED_NAME: &str = "Zebulonia Quixotewright";
const PLANTED_ID: &str = "PLANTED-MRN-5518-2291";
const PLANTED_NOTE: &str = "planted-clinical-phrase-xylophone";

/// `s3s-fs` from PATH or cargo's bin directory. CI installs it; a developer machine without
/// it runs the S3 node on local disk instead and says so.
fn s3s_fs() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn put(api: &str, key: &Path, file: &Path, record: Option<&str>) -> Value {
    let mut args = vec![
        "record",
        "put",
        "--api",
        api,
        "--key",
        path(key),
        "--file",
        path(file),
    ];
    if let Some(record) = record {
        args.extend(["--record", record]);
    }
    serde_json::from_str(&ok(cli(&args))).unwrap()
}

fn read(api: &str, key: &Path, record: &str, version: Option<u32>) -> Output {
    let version = version.map(|v| v.to_string());
    let mut args = vec![
        "record",
        "get",
        "--api",
        api,
        "--key",
        path(key),
        "--record",
        record,
    ];
    if let Some(version) = &version {
        args.extend(["--version", version]);
    }
    cli(&args)
}

/// Read once the node holds the version (replication takes a moment after commit).
fn read_eventually(api: &str, key: &Path, record: &str, version: Option<u32>) -> String {
    let mut out = None;
    wait_until("replication", Duration::from_secs(30), || {
        out = Some(read(api, key, record, version));
        out.as_ref().unwrap().status.success()
    });
    String::from_utf8(out.unwrap().stdout).unwrap()
}

/// Every occurrence of any needle in every file under `root`.
fn scan(root: &Path, needles: &[&str], hits: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            scan(&p, needles, hits);
        } else if let Ok(bytes) = std::fs::read(&p) {
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(format!("{} contains {needle}", p.display()));
                }
            }
        }
    }
}

fn files_named(root: &Path, names: &[String], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_named(&p, names, found);
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if names.iter().any(|n| name.starts_with(n.as_str())) {
            found.push(p.display().to_string());
        }
    }
}

#[test]
fn records_are_encrypted_replicated_readable_and_erasable() {
    let dir = std::env::temp_dir().join(format!("ehrchain-records-{}", std::process::id()));
    let inputs = dir.join("client");
    let net = dir.join("net");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&inputs).unwrap();
    common::network_init(&net, 4, (P2P_PORT, API_PORT), 1000, &[]);

    // Node 3 keeps its blobs in S3.
    let s3_root = dir.join("s3");
    let _s3 = match s3s_fs() {
        Some(binary) => {
            std::fs::create_dir_all(s3_root.join("ehrchain")).unwrap();
            let log = std::fs::File::create(dir.join("s3s-fs.log")).unwrap();
            let child = Command::new(binary)
                .args(["--host", "127.0.0.1", "--port", &S3_PORT.to_string()])
                .args(["--access-key", "test", "--secret-key", "test"])
                .arg(&s3_root)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start s3s-fs");
            let config = net.join("node-3/config.toml");
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.push_str(&format!(
                "\n[blob_store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{S3_PORT}\"\n\
                 bucket = \"ehrchain\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\n\
                 secret_access_key = \"test\"\nprefix = \"member-3\"\n"
            ));
            std::fs::write(&config, text).unwrap();
            Some(Guard(child))
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install s3s-fs (see .ci/run)"
            );
            eprintln!("s3s-fs not found: node 3 uses local disk; run .ci/run to test S3");
            None
        }
    };

    let mut cluster = Cluster::started(&net, 4, API_PORT);
    wait_until("first blocks", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some_and(|h| h >= 1))
    });
    let api0 = cluster.api(0);
    let institution0 = net.join("node-0/validator.key");
    let institution1 = net.join("node-1/validator.key");

    // Identities: a patient registered by member 0, a clinician enrolled at member 0.
    let patient_key = inputs.join("patient.key");
    let patient = ok(cli(&[
        "patient",
        "register",
        "--api",
        &api0,
        "--key",
        path(&institution0),
        "--out",
        path(&patient_key),
    ]))
    .trim()
    .to_string();
    let clinician_key = inputs.join("clinician.key");
    ok(cli(&[
        "identity",
        "enroll",
        "--api",
        &api0,
        "--key",
        path(&institution0),
        "--out",
        path(&clinician_key),
    ]));

    // Every resource type, written by the clinician and read back by the patient elsewhere.
    let mut generator = ehrchain_synth::Generator::new(11);
    let mut resources = vec![generator.patient_named(&patient, "Zebulonia", "Quixotewright")];
    resources[0]["identifier"][0]["value"] = json!(PLANTED_ID);
    for index in 0..13 {
        resources.push(generator.record(&patient, index));
    }
    resources.push(json!({
        "resourceType": "DocumentReference", "status": "current",
        "subject": {"reference": format!("Patient/{patient}")},
        "description": PLANTED_NOTE,
        "content": [{"attachment": {"contentType": "text/plain", "title": PLANTED_NAME}}]
    }));
    resources.push(generator.binary(&patient, 3000));
    let mut written = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    for (index, resource) in resources.iter().enumerate() {
        types.insert(resource["resourceType"].as_str().unwrap().to_string());
        let file = inputs.join(format!("resource-{index}.json"));
        // Original bytes, pretty-printed as a client might send them.
        std::fs::write(&file, serde_json::to_vec_pretty(resource).unwrap()).unwrap();
        let answer = put(&api0, &clinician_key, &file, None);
        written.push((answer["record"].as_str().unwrap().to_string(), file));
    }
    assert_eq!(types.len(), 11, "{types:?}");
    for (record, file) in &written {
        let api = cluster.api(3);
        let mut out = None;
        wait_until(
            "replication to the S3 node",
            Duration::from_secs(30),
            || {
                out = Some(read(&api, &patient_key, record, None));
                out.as_ref().unwrap().status.success()
            },
        );
        let text = String::from_utf8(out.unwrap().stdout).unwrap();
        assert_eq!(
            text.trim_end().as_bytes(),
            std::fs::read(file).unwrap(),
            "byte-exact round trip"
        );
    }

    // An update makes version 2; version 1 stays readable.
    let (observation, first_file) = &written[2];
    let mut updated: Value = serde_json::from_slice(&std::fs::read(first_file).unwrap()).unwrap();
    updated["status"] = json!("amended");
    let update_file = inputs.join("update.json");
    std::fs::write(&update_file, serde_json::to_vec(&updated).unwrap()).unwrap();
    let answer = put(&api0, &clinician_key, &update_file, Some(observation));
    assert_eq!(answer["version"], 2);
    cluster.settle();
    let history: Value = serde_json::from_str(&ok(cli(&[
        "record",
        "history",
        "--api",
        &cluster.api(1),
        "--key",
        path(&institution0),
        "--record",
        observation,
    ])))
    .unwrap();
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    let v1 = read_eventually(&cluster.api(2), &patient_key, observation, Some(1));
    assert_eq!(v1.trim_end().as_bytes(), std::fs::read(first_file).unwrap());
    assert!(read_eventually(&cluster.api(2), &patient_key, observation, None).contains("amended"));

    // Bad input: invalid FHIR, and an unknown patient.
    let invalid = inputs.join("invalid.json");
    std::fs::write(
        &invalid,
        br#"{"resourceType":"Observation","subject":{"reference":"Patient/x"}}"#,
    )
    .unwrap();
    let refused = cli(&[
        "record",
        "put",
        "--api",
        &api0,
        "--key",
        path(&clinician_key),
        "--file",
        path(&invalid),
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("OperationOutcome") && message.contains("Observation.status"),
        "{message}"
    );
    let stranger = inputs.join("stranger.json");
    std::fs::write(
        &stranger,
        serde_json::to_vec(&generator.vital_sign("00000000000000000000000000000000")).unwrap(),
    )
    .unwrap();
    let refused = cli(&[
        "record",
        "put",
        "--api",
        &api0,
        "--key",
        path(&clinician_key),
        "--file",
        path(&stranger),
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown patient"));

    // A node that was down fetches what it missed from its peers.
    cluster.kill(2);
    let late = inputs.join("late.json");
    std::fs::write(
        &late,
        serde_json::to_vec(&generator.laboratory(&patient)).unwrap(),
    )
    .unwrap();
    let late_record = put(&api0, &clinician_key, &late, None)["record"]
        .as_str()
        .unwrap()
        .to_string();
    cluster.start(2);
    wait_until("node 2 back", Duration::from_secs(60), || {
        height(&cluster.api(2)).is_some()
    });
    wait_until(
        "node 2 fetched the blob it missed",
        Duration::from_secs(60),
        || {
            read(&cluster.api(2), &patient_key, &late_record, None)
                .status
                .success()
        },
    );

    // The wrong key gets nothing: another institution was not given a wrapped key.
    let wrong = read(&cluster.api(1), &institution1, observation, None);
    assert!(!wrong.status.success());
    assert!(wrong.stdout.is_empty());

    // A blob altered by one byte is detected and never served.
    let (tampered_record, _) = &written[4];
    let envelope = envelopes(&api0, &token(&api0, &institution0), tampered_record).remove(0);
    let packs = net.join("node-1/data/records");
    wait_until("node 1 holds the record", Duration::from_secs(30), || {
        find_bytes(&packs, &envelope).is_some()
    });
    let (pack, at) = find_bytes(&packs, &envelope).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[at + envelope.len() - 1] ^= 1;
    let damaged = bytes[at..at + envelope.len()].to_vec();
    std::fs::write(&pack, &bytes).unwrap();
    let verify = cli(&[
        "record",
        "verify",
        "--api",
        &cluster.api(1),
        "--key",
        path(&institution0),
        "--record",
        tampered_record,
    ]);
    assert!(!verify.status.success(), "a damaged blob must not verify");
    assert!(
        find_bytes(&packs, &damaged).is_none(),
        "the damaged copy is discarded"
    );
    ok(cli(&[
        "record",
        "verify",
        "--api",
        &cluster.api(0),
        "--key",
        path(&institution0),
        "--record",
        tampered_record,
    ]));

    // No PHI anywhere on any node: chain storage, logs, blob stores (local and S3), keys.
    let mut hits = Vec::new();
    scan(
        &net,
        &[PLANTED_NAME, "Quixotewright", PLANTED_ID, PLANTED_NOTE],
        &mut hits,
    );
    scan(
        &s3_root,
        &[PLANTED_NAME, "Quixotewright", PLANTED_ID, PLANTED_NOTE],
        &mut hits,
    );
    assert!(hits.is_empty(), "PHI leaked: {hits:?}");

    // Erasure: the patient asks; every node deletes every envelope and wrapped key.
    let token0 = token(&api0, &institution0);
    let hashes: Vec<String> = written
        .iter()
        .map(|(r, _)| history_hash(&api0, &token0, r))
        .collect();
    let records: Vec<String> = written
        .iter()
        .map(|(r, _)| r.clone())
        .chain([late_record.clone()])
        .collect();
    let ciphertexts: Vec<Vec<u8>> = records
        .iter()
        .flat_map(|r| envelopes(&api0, &token0, r))
        .collect();
    ok(cli(&[
        "patient",
        "erase",
        "--api",
        &api0,
        "--key",
        path(&patient_key),
        "--patient",
        &patient,
    ]));
    let gone = |api: &str, record: &str| {
        get_as(
            &format!("{api}/records/{record}/1/envelope"),
            &token(api, &institution0),
        )
        .is_some_and(|(status, _)| status == 410)
    };
    wait_until("erasure on every node", Duration::from_secs(30), || {
        (0..4).all(|i| records.iter().all(|r| gone(&cluster.api(i), r)))
    });
    let leftovers = || {
        let mut found = Vec::new();
        for envelope in &ciphertexts {
            for root in [&net, &s3_root] {
                if let Some((file, _)) = find_bytes(root, envelope) {
                    found.push(format!("{} still holds a ciphertext", file.display()));
                }
            }
        }
        files_named(&net, &hashes, &mut found);
        files_named(&net, &records, &mut found);
        files_named(&s3_root, &hashes, &mut found);
        files_named(&s3_root, &records, &mut found);
        found
    };
    wait_until(
        "deletion on disk and in S3",
        Duration::from_secs(30),
        || leftovers().is_empty(),
    );
    cluster.kill(3);
    cluster.start(3);
    wait_until("node 3 back", Duration::from_secs(60), || {
        height(&cluster.api(3)).is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    assert!(gone(&cluster.api(3), observation));
    let history: Value = serde_json::from_str(&ok(cli(&[
        "record",
        "history",
        "--api",
        &cluster.api(3),
        "--key",
        path(&institution0),
        "--record",
        observation,
    ])))
    .unwrap();
    assert!(
        history["erased_height"].is_u64(),
        "the tombstone stays: {history}"
    );
    assert!(
        !read(&cluster.api(0), &patient_key, observation, None)
            .status
            .success()
    );
}

/// Every version's envelope (ciphertext) of a record, as any node serves it.
fn envelopes(api: &str, token: &str, record: &str) -> Vec<Vec<u8>> {
    let (_, history) = get_as(&format!("{api}/records/{record}"), token).unwrap();
    let versions = history["versions"].as_array().unwrap().len();
    (1..=versions)
        .map(|v| {
            let mut response = common::agent()
                .get(&format!("{api}/records/{record}/{v}/envelope"))
                .header("Authorization", format!("Bearer {token}"))
                .call()
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.body_mut().read_to_vec().unwrap()
        })
        .collect()
}

/// The first file under `root` holding `needle`, and where.
fn find_bytes(root: &Path, needle: &[u8]) -> Option<(PathBuf, usize)> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_bytes(&p, needle) {
                return Some(found);
            }
        } else if let Ok(bytes) = std::fs::read(&p)
            && let Some(at) = bytes.windows(needle.len()).position(|w| w == needle)
        {
            return Some((p, at));
        }
    }
    None
}

fn history_hash(api: &str, token: &str, record: &str) -> String {
    let (_, history) = get_as(&format!("{api}/records/{record}"), token).unwrap();
    history["versions"][0]["ciphertext_hash"]
        .as_str()
        .unwrap()
        .to_string()
}
