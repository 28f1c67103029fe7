//! Consent, recorded reads, break-glass and supervision across four `ehrchain node`
//! processes, driven through the CLI as a patient, clinicians, institutions and the auditor
//! would drive it.
//!
//! Covers the authorization matrix for reads (the patient on their own record and on
//! another's; a clinician with consent, without it, with an expired grant and with a revoked
//! one; another institution; the auditor; an anonymous key): 0 unauthorized reads succeed,
//! and every attempt, allowed or denied, is on the patient's trail before any key is released.
//! A grant shares the data keys of existing records with the grantee on every node; new
//! records are wrapped for active grantees; a revocation or an expiry deletes the grantee's
//! keys on every node. A grant to an institution lets its clinicians read through its node.
//! Break-glass opens a patient's records for a time, is visible to the patient and reported
//! to the auditor, with the key released by the node of the institution that holds it.

mod common;

use common::{Cluster, cli, get_as, height, ok, path, token, wait_until};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_600;
const API_PORT: u16 = 10_080;

fn read(api: &str, key: &Path, record: &str, purpose: &str) -> Output {
    cli(&[
        "record",
        "get",
        "--api",
        api,
        "--key",
        path(key),
        "--record",
        record,
        "--purpose",
        purpose,
    ])
}

/// A read that must succeed, retried while the node still fetches the envelope (or, for a
/// record written through another node, has not applied its block yet).
fn read_ok(api: &str, key: &Path, record: &str, purpose: &str) -> String {
    let mut out = None;
    wait_until("a readable record", Duration::from_secs(30), || {
        let output = read(api, key, record, purpose);
        let done = output.status.success();
        if !done {
            eprintln!(
                "retrying a read: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            done || {
                let stderr = String::from_utf8_lossy(&output.stderr);
                stderr.contains("503 Service Unavailable")
                    || stderr.contains("no key is wrapped")
                    || stderr.contains("unknown record")
            },
            "read failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        out = Some(output);
        done
    });
    String::from_utf8(out.unwrap().stdout).unwrap()
}

fn refused(output: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "an unauthorized read succeeded: {stderr}"
    );
    assert!(stderr.contains(why), "expected {why:?}, got: {stderr}");
}

/// Every file under `root` whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_containing(&p, needle, hits);
        } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            hits.push(p);
        }
    }
}

/// Nodes whose record store holds a wrap for `encryption_key`.
fn nodes_holding(net: &Path, encryption_key: &[u8]) -> Vec<usize> {
    (0..4)
        .filter(|i| {
            let mut hits = Vec::new();
            files_containing(
                &net.join(format!("node-{i}/data/records")),
                encryption_key,
                &mut hits,
            );
            !hits.is_empty()
        })
        .collect()
}

/// `identity show` of `key`, asked as the identity itself.
fn encryption_key(api: &str, key: &Path) -> Vec<u8> {
    let shown: Value = serde_json::from_str(&ok(cli(&[
        "identity",
        "show",
        "--api",
        api,
        "--key-file",
        path(key),
    ])))
    .unwrap();
    hex::decode(shown["encryption_key"].as_str().unwrap()).unwrap()
}

fn public_key(api: &str, key: &Path) -> String {
    let shown: Value = serde_json::from_str(&ok(cli(&[
        "identity",
        "show",
        "--api",
        api,
        "--key-file",
        path(key),
    ])))
    .unwrap();
    shown["key"].as_str().unwrap().to_string()
}

/// A patient's trail, asked as `key` (the patient, a guardian or an auditor).
fn trail(api: &str, key: &Path, patient: &str) -> Vec<Value> {
    let log: Value = serde_json::from_str(&ok(cli(&[
        "access",
        "log",
        "--api",
        api,
        "--key",
        path(key),
        "--patient",
        patient,
    ])))
    .unwrap();
    log["events"].as_array().unwrap().clone()
}

/// The findings an auditor's key sees (`ehrchain access findings`).
fn audit_findings(api: &str, auditor: &Path) -> Value {
    serde_json::from_str(&ok(cli(&[
        "access",
        "findings",
        "--api",
        api,
        "--key",
        path(auditor),
    ])))
    .unwrap()
}

#[test]
fn consent_decides_every_read_and_the_trail_records_it() {
    let dir = std::env::temp_dir().join(format!("ehrchain-access-{}", std::process::id()));
    let inputs = dir.join("client");
    let net = dir.join("net");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&inputs).unwrap();
    common::network_init(&net, 4, (P2P_PORT, API_PORT), 1000, &[]);
    let cluster = Cluster::started(&net, 4, API_PORT);
    wait_until("first blocks", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some_and(|h| h >= 1))
    });
    let (api0, api1, api2) = (cluster.api(0), cluster.api(1), cluster.api(2));
    let hospital_a = net.join("node-0/validator.key");
    let hospital_b = net.join("node-1/validator.key");
    let auditor = net.join("auditor.key");

    // Identities: patients 1 and 2 at hospital A, clinician A there, clinician B at B.
    let register = |out: &Path| {
        ok(cli(&[
            "patient",
            "register",
            "--api",
            &api0,
            "--key",
            path(&hospital_a),
            "--out",
            path(out),
        ]))
        .trim()
        .to_string()
    };
    let (patient_1, patient_2) = (inputs.join("patient-1.key"), inputs.join("patient-2.key"));
    let p1 = register(&patient_1);
    register(&patient_2);
    let enroll = |institution: &Path, out: &Path| {
        ok(cli(&[
            "identity",
            "enroll",
            "--api",
            &api0,
            "--key",
            path(institution),
            "--out",
            path(out),
        ]))
        .trim()
        .to_string()
    };
    let (clinician_a, clinician_b) = (inputs.join("dr-a.key"), inputs.join("dr-b.key"));
    enroll(&hospital_a, &clinician_a);
    let dr_b = enroll(&hospital_b, &clinician_b);
    let anonymous = inputs.join("anonymous.key");
    ok(cli(&["keygen", "--out", path(&anonymous)]));

    // Clinician A writes an Observation and a Condition for patient 1.
    let mut generator = ehrchain_synth::Generator::new(5);
    let records: Vec<Value> = (0..13).map(|i| generator.record(&p1, i)).collect();
    let of_type = |t: &str| {
        records
            .iter()
            .find(|r| r["resourceType"] == t)
            .unwrap()
            .clone()
    };
    let put = |resource: &Value, name: &str| {
        let file = inputs.join(name);
        std::fs::write(&file, serde_json::to_vec(resource).unwrap()).unwrap();
        let answer: Value = serde_json::from_str(&ok(cli(&[
            "record",
            "put",
            "--api",
            &api0,
            "--key",
            path(&clinician_a),
            "--file",
            path(&file),
        ])))
        .unwrap();
        (answer["record"].as_str().unwrap().to_string(), file)
    };
    let (observation, observation_file) = put(&of_type("Observation"), "observation.json");
    let (condition, _) = put(&of_type("Condition"), "condition.json");
    cluster.settle();

    // The matrix before any consent. Only the owner and the author read.
    let own = read_ok(&api0, &patient_1, &observation, "PATRQT");
    assert_eq!(
        own.trim_end().as_bytes(),
        std::fs::read(&observation_file).unwrap()
    );
    read_ok(&api0, &clinician_a, &observation, "TREAT");
    refused(
        &read(&api0, &patient_2, &observation, "PATRQT"),
        "not-their-record",
    );
    refused(
        &read(&api1, &clinician_b, &observation, "TREAT"),
        "no-consent",
    );
    refused(
        &read(&api1, &hospital_b, &observation, "TREAT"),
        "no-consent",
    );
    refused(&read(&api0, &auditor, &observation, "HOPERAT"), "auditor");
    refused(
        &read(&api0, &anonymous, &observation, "TREAT"),
        "unknown identity",
    );
    // A write without the right (clinician B has no consent) is refused, and the attempt
    // itself is on the patient's trail.
    let intrusion = inputs.join("intrusion.json");
    std::fs::write(
        &intrusion,
        serde_json::to_vec(&of_type("Observation")).unwrap(),
    )
    .unwrap();
    let attempt = cli(&[
        "record",
        "put",
        "--api",
        &api1,
        "--key",
        path(&clinician_b),
        "--file",
        path(&intrusion),
    ]);
    let stderr = String::from_utf8_lossy(&attempt.stderr);
    assert!(
        !attempt.status.success() && stderr.contains("recorded on chain"),
        "{stderr}"
    );
    assert!(
        trail(&api1, &auditor, &p1)
            .iter()
            .any(|e| e["reason"] == "not-permitted" && e["actor"] == dr_b.as_str()),
        "the refused write is on the trail"
    );
    // Asking for a key without recording the read is refused outright.
    let b_key = hex::encode(encryption_key(&api0, &clinician_b));
    let (status, _) = get_as(
        &format!("{api0}/records/{observation}/1/wraps/{b_key}"),
        &token(&api0, &clinician_b),
    )
    .unwrap();
    assert_eq!(status, 403);

    // Patient 1 consents to clinician B reading Observations for treatment.
    let granted: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api0,
        "--key",
        path(&patient_1),
        "--patient",
        &p1,
        "--grantee",
        &dr_b,
        "--type",
        "Observation",
        "--purpose",
        "TREAT",
    ])))
    .unwrap();
    assert_eq!(granted["records_shared"], 1);
    let grant = granted["grant"].as_str().unwrap().to_string();
    let b_encryption = encryption_key(&api0, &clinician_b);
    wait_until("the share on every node", Duration::from_secs(30), || {
        nodes_holding(&net, &b_encryption) == vec![0, 1, 2, 3]
    });
    let shared = read_ok(&api2, &clinician_b, &observation, "TREAT");
    assert_eq!(
        shared.trim_end().as_bytes(),
        std::fs::read(&observation_file).unwrap()
    );
    // Outside the grant: another type, another purpose.
    refused(
        &read(&api2, &clinician_b, &condition, "TREAT"),
        "type-not-granted",
    );
    refused(
        &read(&api2, &clinician_b, &observation, "HRESCH"),
        "purpose-not-granted",
    );
    // A record written while the grant is active is wrapped for the grantee at once.
    let mut second = of_type("Observation");
    second["status"] = Value::from("preliminary");
    let (new_observation, _) = put(&second, "observation-2.json");
    assert!(read_ok(&api1, &clinician_b, &new_observation, "TREAT").contains("preliminary"));

    // Revocation: refused again, and B's keys are gone from every node.
    ok(cli(&[
        "consent",
        "revoke",
        "--api",
        &api1,
        "--key",
        path(&patient_1),
        "--patient",
        &p1,
        "--grant",
        &grant,
    ]));
    refused(
        &read(&api1, &clinician_b, &observation, "TREAT"),
        "consent-revoked",
    );
    wait_until(
        "B's keys deleted everywhere",
        Duration::from_secs(30),
        || nodes_holding(&net, &b_encryption).is_empty(),
    );
    cluster.settle();
    let listed: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "list",
        "--api",
        &api2,
        "--key",
        path(&patient_1),
        "--patient",
        &p1,
    ])))
    .unwrap();
    assert_eq!(listed["consents"][0]["status"], "revoked");

    // An expiring grant: it works, then block time passes its end and it stops working.
    let short: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api0,
        "--key",
        path(&patient_1),
        "--patient",
        &p1,
        "--grantee",
        &dr_b,
        "--seconds",
        "12",
    ])))
    .unwrap();
    assert_eq!(short["records_shared"], 3);
    read_ok(&api0, &clinician_b, &condition, "TREAT");
    std::thread::sleep(Duration::from_secs(13));
    // The earlier revoked grant outranks the expired one in the reason (see access.md).
    refused(
        &read(&api0, &clinician_b, &condition, "TREAT"),
        "consent-revoked",
    );
    wait_until(
        "expired keys deleted everywhere",
        Duration::from_secs(30),
        || nodes_holding(&net, &b_encryption).is_empty(),
    );

    // A grant to institution B: its clinicians read through B's node, which holds the key.
    let hospital_b_id = public_key(&api1, &hospital_b);
    ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api0,
        "--key",
        path(&patient_1),
        "--patient",
        &p1,
        "--grantee",
        &hospital_b_id,
    ]));
    let mut via_institution = None;
    wait_until("institution share applied", Duration::from_secs(30), || {
        via_institution = Some(read(&api1, &clinician_b, &condition, "TREAT"));
        via_institution.as_ref().unwrap().status.success()
    });

    // Break-glass by clinician B on patient 2's record written by A: the key is released by
    // hospital A's node; the patient sees it, the auditor gets a finding.
    let p2_record = {
        let p2: Value = serde_json::from_str(&ok(cli(&[
            "identity",
            "show",
            "--api",
            &api0,
            "--key-file",
            path(&patient_2),
        ])))
        .unwrap();
        let p2_id = p2["patient"].as_str().unwrap().to_string();
        let resource = ehrchain_synth::Generator::new(6).record(&p2_id, 3);
        let (record, _) = put(&resource, "patient-2.json");
        (record, p2_id)
    };
    refused(
        &read(&api0, &clinician_b, &p2_record.0, "ETREAT"),
        "no-consent",
    );
    ok(cli(&[
        "breakglass",
        "--api",
        &api1,
        "--key",
        path(&clinician_b),
        "--patient",
        &p2_record.1,
        "--reason",
        "1",
    ]));
    read_ok(&api0, &clinician_b, &p2_record.0, "ETREAT");
    cluster.settle();
    let p2_trail = trail(&api2, &auditor, &p2_record.1);
    assert!(
        p2_trail
            .iter()
            .any(|e| e["basis"]["kind"] == "break-glass-opened")
    );
    assert!(
        p2_trail
            .iter()
            .any(|e| e["basis"]["kind"] == "break-glass" && e["outcome"] == "allowed")
    );

    // The trail: every attempt above on patient 1's records is there, in order, with outcome.
    let events = trail(&cluster.api(3), &auditor, &p1);
    let denied = events.iter().filter(|e| e["outcome"] == "denied").count();
    let allowed = events.iter().filter(|e| e["outcome"] == "allowed").count();
    assert!(denied >= 8, "denied attempts on the trail: {denied}");
    assert!(allowed >= 7, "allowed reads on the trail: {allowed}");
    assert!(
        events
            .iter()
            .all(|e| e["actor"].is_string() && e["purpose"].is_string())
    );
    // The auditor's view: all events, and findings for denials, revocation and break-glass.
    let findings = audit_findings(&api0, &auditor);
    let kinds: Vec<&str> = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for kind in ["denied-access", "after-revocation", "break-glass"] {
        assert!(kinds.contains(&kind), "no {kind} finding in {kinds:?}");
    }
    let all: Value = serde_json::from_str(&ok(cli(&[
        "access",
        "log",
        "--api",
        &api0,
        "--key",
        path(&auditor),
    ])))
    .unwrap();
    assert!(all["events"].as_array().unwrap().len() > events.len());
    // A custodial patient, whose key the home node (hospital A) holds. Clinician B writes
    // under a write-only grant; under break-glass, clinician A gets the key from node 0,
    // which unwraps it with the custodial key (hospital A holds no wrap of its own for it).
    let custody = net.join("node-0/data/custody");
    let p3 = ok(cli(&[
        "patient",
        "register",
        "--api",
        &api0,
        "--key",
        path(&hospital_a),
        "--custody",
        path(&custody),
    ]))
    .trim()
    .to_string();
    let p3_key = custody.join(format!("{p3}.key"));
    let write_only: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api0,
        "--key",
        path(&p3_key),
        "--patient",
        &p3,
        "--grantee",
        &dr_b,
        "--action",
        "correct",
    ])))
    .unwrap();
    assert_eq!(write_only["records_shared"], 0);
    let p3_file = inputs.join("patient-3.json");
    std::fs::write(
        &p3_file,
        serde_json::to_vec(&ehrchain_synth::Generator::new(7).record(&p3, 1)).unwrap(),
    )
    .unwrap();
    let written: Value = serde_json::from_str(&ok(cli(&[
        "record",
        "put",
        "--api",
        &api1,
        "--key",
        path(&clinician_b),
        "--file",
        path(&p3_file),
    ])))
    .unwrap();
    let p3_record = written["record"].as_str().unwrap().to_string();
    cluster.settle();
    // The author reads back what it wrote; write consent gives nobody else a read.
    let own = read_ok(&api1, &clinician_b, &p3_record, "TREAT");
    assert_eq!(own.trim_end().as_bytes(), std::fs::read(&p3_file).unwrap());
    refused(
        &read(&api0, &clinician_a, &p3_record, "ETREAT"),
        "no-consent",
    );
    ok(cli(&[
        "breakglass",
        "--api",
        &api0,
        "--key",
        path(&clinician_a),
        "--patient",
        &p3,
        "--reason",
        "2",
    ]));
    let released = read_ok(&api0, &clinician_a, &p3_record, "ETREAT");
    assert_eq!(
        released.trim_end().as_bytes(),
        std::fs::read(&p3_file).unwrap()
    );
    // Another node holds the envelope (once it has fetched it) but no key it could release.
    let mut elsewhere = None;
    wait_until(
        "node 2 to hold the envelope",
        Duration::from_secs(90),
        || {
            let output = read(&api2, &clinician_a, &p3_record, "ETREAT");
            let fetched =
                !String::from_utf8_lossy(&output.stderr).contains("503 Service Unavailable");
            if !fetched {
                eprintln!("node 2: {}", String::from_utf8_lossy(&output.stderr));
            }
            elsewhere = Some(output);
            fetched
        },
    );
    refused(
        &elsewhere.unwrap(),
        "no key is wrapped for this reader here",
    );

    // Key rotation: the old key is refused, the identity keeps its rights under the new one.
    let clinician_b2 = inputs.join("dr-b-2.key");
    ok(cli(&[
        "identity",
        "rotate",
        "--api",
        &api1,
        "--key",
        path(&clinician_b),
        "--out",
        path(&clinician_b2),
    ]));
    refused(
        &read(&api1, &clinician_b, &condition, "TREAT"),
        "no longer accepted",
    );
    read_ok(&api1, &clinician_b2, &condition, "TREAT");

    // Removal by its institution: the clinician's key is refused, and the data keys wrapped
    // for it (here, for the record it wrote under its first key) go from every node.
    assert!(!nodes_holding(&net, &b_encryption).is_empty());
    ok(cli(&[
        "identity",
        "remove",
        "--api",
        &api1,
        "--key",
        path(&hospital_b),
        "--clinician",
        &public_key(&api1, &clinician_b2),
    ]));
    refused(
        &read(&api1, &clinician_b2, &condition, "TREAT"),
        "no longer accepted",
    );
    wait_until(
        "the removed clinician's keys deleted everywhere",
        Duration::from_secs(30),
        || nodes_holding(&net, &b_encryption).is_empty(),
    );
    // Recovery of patient 1's lost key by the home institution: audited; the new key reads
    // the patient's records, released by the node of the institution that holds their keys.
    let patient_1_new = inputs.join("patient-1-new.key");
    ok(cli(&[
        "identity",
        "recover",
        "--api",
        &api0,
        "--key",
        path(&hospital_a),
        "--patient",
        &p1,
        "--out",
        path(&patient_1_new),
    ]));
    refused(
        &read(&api0, &patient_1, &observation, "PATRQT"),
        "no longer accepted",
    );
    let recovered = read_ok(&api0, &patient_1_new, &observation, "PATRQT");
    assert_eq!(
        recovered.trim_end().as_bytes(),
        std::fs::read(&observation_file).unwrap()
    );
    let findings = audit_findings(&api0, &auditor);
    assert!(findings.to_string().contains("key-recovery"));

    // Governance: 3 of 4 members appoint a second auditor; a proposal two members reject
    // fails and changes nothing.
    let second_auditor = inputs.join("auditor-2.key");
    let auditor_2 = ok(cli(&["keygen", "--out", path(&second_auditor)]))
        .trim()
        .to_string();
    let propose = |auditor: &str| -> String {
        let answer: Value = serde_json::from_str(&ok(cli(&[
            "governance",
            "propose",
            "--api",
            &api0,
            "--key",
            path(&hospital_a),
            "--appoint-auditor",
            auditor,
        ])))
        .unwrap();
        answer["proposal"].as_str().unwrap().to_string()
    };
    let vote = |member: usize, proposal: &str, approve: &str| {
        // The member's own node may be a block behind the proposer's.
        wait_until(
            "the proposal on the voter's node",
            Duration::from_secs(30),
            || {
                let member_key = net.join(format!("node-{member}/validator.key"));
                get_as(
                    &format!("{}/governance/proposals", cluster.api(member)),
                    &token(&cluster.api(member), &member_key),
                )
                .is_some_and(|(_, v)| v.to_string().contains(proposal))
            },
        );
        ok(cli(&[
            "governance",
            "vote",
            "--api",
            &cluster.api(member),
            "--key",
            path(&net.join(format!("node-{member}/validator.key"))),
            "--proposal",
            proposal,
            "--approve",
            approve,
        ]));
    };
    let passing = propose(&auditor_2);
    vote(1, &passing, "true");
    refused(
        &read(&api0, &second_auditor, &observation, "HOPERAT"),
        "unknown identity",
    );
    vote(2, &passing, "true");
    cluster.settle();
    refused(
        &read(&api0, &second_auditor, &observation, "HOPERAT"),
        "auditor",
    );
    let third = inputs.join("auditor-3.key");
    let auditor_3 = ok(cli(&["keygen", "--out", path(&third)]))
        .trim()
        .to_string();
    let failing = propose(&auditor_3);
    vote(1, &failing, "false");
    vote(3, &failing, "false");
    // Node 2 may be a block behind the last vote.
    let mut governance = Value::Null;
    wait_until("the votes on node 2", Duration::from_secs(30), || {
        governance = serde_json::from_str(&ok(cli(&[
            "governance",
            "list",
            "--api",
            &api2,
            "--key",
            path(&net.join("node-2/validator.key")),
        ])))
        .unwrap();
        !governance.to_string().contains("\"open\"")
    });
    let status = |id: &str| {
        governance["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&passing), "passed");
    assert_eq!(status(&failing), "rejected");
    refused(
        &read(&api0, &third, &observation, "HOPERAT"),
        "unknown identity",
    );

    // Nothing in the trail or findings carries more than ids, keys and codes.
    let text = findings.to_string() + &all.to_string();
    assert!(!text.contains("Observation") && !text.contains("Condition"));
}
