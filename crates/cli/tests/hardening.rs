//! What an outsider and a careless client can do to a node, and what they cannot.
//!
//! Four `ehrchain node` processes on plain HTTP (so that raw sockets can speak it); node 0 runs with small, named limits (`[api]` in its
//! config: 64 connections, 32 per peer address, a 2 s header-read and a 3 s idle timeout, and
//! a mempool of 3,000). Then:
//! - **Connections.** The node raised its own file-descriptor limit. An address opens 300
//!   connections and sends nothing: 32 are held, the rest are closed at once, and all are
//!   closed after the idle timeout. A half-sent request header is closed after the header
//!   timeout. Meanwhile clients from another address log in and are served, and consensus keeps
//!   finalizing blocks.
//! - **Mempool.** 2,000 transactions from signers the chain does not know are all refused;
//!   500 gapped transactions of one known signer leave at most 64 in the pool. Valid
//!   transactions and logins commit as fast after the flood as before it.
//! - **Small defects.** A client assertion issued an hour in the future gets no token; a
//!   Consent PUT whose body names another id is refused and changes nothing; a transaction
//!   Bundle with two entries sharing a fullUrl is refused whole.

mod common;

use common::{Cluster, agent, cli, get_as, height, key_from_file, ok, path, post_as, token};
use commonware_cryptography::Signer as _;
use ehrchain_types::{Payload, PrivateKey, TransactionBody, sha256};
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_100;
const API_PORT: u16 = 10_580;
const PER_PEER: usize = 32;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Whether the server has closed `stream` (a read sees end of file or a reset).
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn metric(api: &str, name: &str) -> u64 {
    let text = agent()
        .get(format!("{api}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn anchor(key: &PrivateKey, nonce: u64, tag: &[u8]) -> ehrchain_types::Transaction {
    TransactionBody {
        chain_id: 1,
        signer: key.public_key(),
        nonce,
        payload: Payload::Anchor {
            label: 2,
            digest: sha256(&[tag]),
        },
    }
    .sign(key)
}

/// Submit `count` anchors signed by the institution's key through the CLI and return the
/// median submit-to-commit time.
fn commit_latency(api: &str, key: &std::path::Path, tag: &str, count: usize) -> Duration {
    let mut times: Vec<Duration> = (0..count)
        .map(|i| {
            let digest = hex::encode(sha256(&[tag.as_bytes(), &i.to_be_bytes()]));
            let started = Instant::now();
            ok(cli(&[
                "tx",
                "anchor",
                "--api",
                api,
                "--key",
                path(key),
                "--digest",
                &digest,
                "--wait",
            ]));
            started.elapsed()
        })
        .collect();
    times.sort();
    times[count / 2]
}

#[test]
fn limits_hold_against_floods_and_careless_clients() {
    let dir = std::env::temp_dir().join(format!("ehrchain-hardening-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Raw sockets speak HTTP here; the TLS handshake's own timeout is in tls.rs.
    common::network_init(&dir, 4, (P2P_PORT, API_PORT), 1000, &["--plain-http"]);
    let config = dir.join("node-0/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("mempool_transactions_max = 200000"), "{text}");
    text = text.replace(
        "mempool_transactions_max = 200000",
        "mempool_transactions_max = 3000",
    );
    text.push_str(&format!(
        "\n[api]\nconnections_max = 64\nconnections_per_peer_max = {PER_PEER}\n\
         header_read_timeout_ms = 2000\nidle_timeout_ms = 3000\n"
    ));
    std::fs::write(&config, text).unwrap();
    let mut cluster = Cluster::started(&dir, 4, API_PORT);
    let api = cluster.api(0);
    common::wait_until("first blocks", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some_and(|h| h >= 1))
    });
    let institution = dir.join("node-0/validator.key");
    let address: SocketAddr = format!("127.0.0.1:{API_PORT}").parse().unwrap();

    // The node raised its soft descriptor limit to the hard one.
    let pid = cluster.nodes[0].as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3], open_files[4], "soft = hard: {limits}");

    // 300 silent connections from one address.
    let mut flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| connect_from([127, 0, 0, 2], address).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<usize> = (0..flood.len())
        .filter(|i| !closed_by_server(&mut flood[*i], Duration::from_millis(20)))
        .collect();
    assert_eq!(held.len(), PER_PEER, "the per-address cap holds");
    // Others are served meanwhile, and consensus goes on.
    let before = height(&api).unwrap();
    let other = token(&api, &institution);
    let (status, _) = get_as(&format!("{api}/chain/status"), &other).unwrap();
    assert_eq!(status, 200);
    common::wait_until("blocks during the flood", Duration::from_secs(20), || {
        height(&api).is_some_and(|h| h >= before + 2)
    });
    // A half-sent header is cut off after the header timeout.
    let mut slow = connect_from([127, 0, 0, 3], address).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut slow, Duration::from_secs(8)));
    assert!(started.elapsed() < Duration::from_secs(5), "header timeout");
    // The silent ones are closed after the idle timeout.
    std::thread::sleep(Duration::from_secs(3));
    for i in held {
        assert!(
            closed_by_server(&mut flood[i], Duration::from_secs(3)),
            "an idle connection is closed"
        );
    }
    assert!(metric(&api, "ehrchain_api_connections_refused_total") >= 200);
    assert!(metric(&api, "ehrchain_api_connections_timed_out_total") >= PER_PEER as u64);
    assert!(
        cluster.nodes[0]
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    );
    drop(flood);

    // The mempool: a baseline, then the floods, then the same again.
    let baseline = commit_latency(&api, &institution, "before", 5);
    let strangers: Vec<ehrchain_types::Transaction> = (0..2_000u64)
        .map(|i| anchor(&PrivateKey::from_seed(1_000_000 + i), 0, &i.to_be_bytes()))
        .collect();
    let (status, answer) = post_as(
        &format!("{api}/chain/transactions/batch"),
        &other,
        &ehrchain_chain::engine::encode_batch(&strangers),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["accepted"], 0,
        "unknown signers are refused: {answer}"
    );
    let auditor = key_from_file(&dir.join("auditor.key"));
    let gapped: Vec<ehrchain_types::Transaction> = (5..505u64)
        .map(|n| anchor(&auditor, n, &n.to_be_bytes()))
        .collect();
    let (_, answer) = post_as(
        &format!("{api}/chain/transactions/batch"),
        &other,
        &ehrchain_chain::engine::encode_batch(&gapped),
    );
    let accepted = answer["accepted"].as_u64().unwrap();
    assert!(accepted <= 64, "gapped transactions are bounded: {answer}");
    let (_, status) = get_as(&format!("{api}/chain/status"), &other).unwrap();
    assert!(status["mempool"].as_u64().unwrap() <= 64, "{status}");
    let after = commit_latency(&api, &institution, "after", 5);
    let login_started = Instant::now();
    token(&api, &dir.join("node-1/validator.key"));
    let login = login_started.elapsed();
    println!("commit latency: {baseline:?} before the flood, {after:?} after; a login {login:?}");
    assert!(
        after <= baseline * 2 + Duration::from_millis(500),
        "valid transactions commit at their normal latency: {baseline:?} then {after:?}"
    );

    // A client assertion issued an hour ahead gets no token.
    let seed: [u8; 32] = hex::decode(std::fs::read_to_string(&institution).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap();
    let me = hex::encode(ehrchain_crypto::jwt::public_key(&seed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (iat, nbf) in [(Some(now + 3_600), None), (None, Some(now + 3_600))] {
        let assertion = ehrchain_crypto::jwt::sign(
            &seed,
            &ehrchain_crypto::jwt::Claims {
                iss: me.clone(),
                sub: me.clone(),
                aud: format!("{api}/auth/token"),
                exp: now + 240,
                jti: hex::encode(sha256(&[&iat.unwrap_or(0).to_be_bytes()])),
                iat,
                nbf,
                client_id: None,
                scope: None,
            },
        );
        let mut response = agent()
            .post(format!("{api}/auth/token"))
            .send_form([
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.body_mut().read_json().unwrap();
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("in the future"),
            "{body}"
        );
    }

    // A patient, a clinician of node 0's institution, and a grant from the one to the other.
    let inputs = dir.join("client");
    std::fs::create_dir_all(&inputs).unwrap();
    let patient_key = inputs.join("patient.key");
    let patient = ok(cli(&[
        "patient",
        "register",
        "--api",
        &api,
        "--key",
        path(&institution),
        "--out",
        path(&patient_key),
    ]))
    .trim()
    .to_string();
    let clinician_key = inputs.join("clinician.key");
    let clinician = ok(cli(&[
        "identity",
        "enroll",
        "--api",
        &api,
        "--key",
        path(&institution),
        "--out",
        path(&clinician_key),
    ]))
    .trim()
    .to_string();
    let granted: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api,
        "--key",
        path(&patient_key),
        "--patient",
        &patient,
        "--grantee",
        &clinician,
        "--type",
        "Observation",
        "--purpose",
        "TREAT",
    ])))
    .unwrap();
    let grant = granted["grant"].as_str().unwrap().to_string();
    let fhir = |method: &str, url: &str, token: &str, body: &Value| -> (u16, Value) {
        let url = if url.is_empty() {
            format!("{api}/fhir")
        } else {
            format!("{api}/fhir/{url}")
        };
        let request = if method == "PUT" {
            agent().put(url)
        } else {
            agent().post(url)
        };
        let mut response = request
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/fhir+json")
            .send(body.to_string().as_bytes())
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_json().unwrap_or(Value::Null),
        )
    };

    // A Consent PUT whose body names another id is refused, and the grant stays active.
    let as_patient = token(&api, &patient_key);
    let (status, outcome) = fhir(
        "PUT",
        &format!("Consent/{grant}"),
        &as_patient,
        &json!({"resourceType": "Consent", "id": "0".repeat(32), "status": "inactive"}),
    );
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let listed: Value = serde_json::from_str(&ok(cli(&[
        "consent",
        "list",
        "--api",
        &api,
        "--key",
        path(&patient_key),
        "--patient",
        &patient,
    ])))
    .unwrap();
    assert_eq!(listed["consents"][0]["status"], "active", "{listed}");

    // A transaction Bundle whose entries share a fullUrl is refused whole.
    let as_clinician = token(&api, &clinician_key);
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min"},
    });
    let entry = json!({
        "fullUrl": "urn:uuid:0a1b2c3d-0000-4000-8000-000000000001",
        "resource": observation,
        "request": {"method": "POST", "url": "Observation"},
    });
    let (status, outcome) = fhir(
        "POST",
        "",
        &as_clinician,
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]}),
    );
    assert_eq!(status, 400, "{outcome}");
    assert!(outcome.to_string().contains("fullUrl"), "{outcome}");
    let (status, found) = get_as(
        &format!("{api}/fhir/Observation?patient={patient}"),
        &as_clinician,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(found["total"], 0, "nothing was written: {found}");

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
