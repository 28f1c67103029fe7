//! Four `ehrchain node` processes on loopback, as a consortium would run them.
//!
//! The journey: the network finalizes blocks; a client's signed transaction is committed and
//! its inclusion proof checks offline; bad input (a replay, another chain's transaction, a bad
//! signature, an oversized transaction) is refused with a clear 4xx; one validator is killed
//! with SIGKILL and the other three keep finalizing; the killed validator restarts from its
//! data directory and catches up from its peers, including a transaction committed while it
//! was down; an outsider whose key is not in the genesis cannot join; `ehrchain verify` passes on every stored chain; and one flipped byte in a stored
//! block makes `verify` name that block and exit non-zero.

use commonware_cryptography::Signer;
use ehrchain_types::{Payload, PrivateKey, Transaction, TransactionBody, sha256};
use serde_json::Value;
use std::{path::Path, process::Output, time::Duration};

mod common;

use common::{
    Cluster, Guard, agent, get, get_as, height, key_from_file, post, post_as, token, wait_until,
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_400;
const API_PORT: u16 = 9_960;

fn anchor(key: &PrivateKey, chain_id: u64, nonce: u64, tag: &str) -> Transaction {
    TransactionBody {
        chain_id,
        signer: key.public_key(),
        nonce,
        payload: Payload::Anchor {
            label: 1,
            digest: sha256(&[tag.as_bytes()]),
        },
    }
    .sign(key)
}

fn verify(data_dir: &Path) -> Output {
    common::exe()
        .args(["verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run verify")
}

fn committed_height(api: &str, token: &str, hash: &str) -> u64 {
    let mut found = None;
    wait_until("commit", Duration::from_secs(60), || {
        found = get_as(
            &format!("{api}/chain/transactions/{hash}?wait_ms=2000"),
            token,
        )
        .filter(|(_, v)| v["status"] == "committed")
        .and_then(|(_, v)| v["height"].as_u64());
        found.is_some()
    });
    found.unwrap()
}

fn start_outsider(dir: &Path) -> Guard {
    let outsider_dir = dir.join("outsider");
    std::fs::create_dir_all(&outsider_dir).unwrap();
    let out = common::exe()
        .args(["keygen", "--out"])
        .arg(outsider_dir.join("validator.key"))
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut genesis: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("genesis.json")).unwrap()).unwrap();
    genesis["validators"][3]["public_key"] = Value::String(key);
    std::fs::write(outsider_dir.join("genesis.json"), genesis.to_string()).unwrap();
    let config = format!(
        "name = \"outsider\"\ngenesis = \"genesis.json\"\nkey_file = \"validator.key\"\n\
         data_dir = \"data\"\np2p_listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n",
        P2P_PORT + 3,
        API_PORT + 10
    );
    std::fs::write(outsider_dir.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("outsider.log")).unwrap();
    let child = common::exe()
        .args(["node", "--config"])
        .arg(outsider_dir.join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = Guard(child);
    wait_until("outsider API", Duration::from_secs(30), || {
        height(&format!("http://127.0.0.1:{}", API_PORT + 10)).is_some()
    });
    guard
}

#[test]
fn consortium_survives_a_crash_and_detects_tampering() {
    let dir = std::env::temp_dir().join(format!("ehrchain-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let init = common::exe()
        .args(["network", "init", "--validators", "4", "--dir"])
        .arg(&dir)
        .args([
            "--p2p-port",
            &P2P_PORT.to_string(),
            "--api-port",
            &API_PORT.to_string(),
            // Resting between heartbeats as a real network does, but a second apart, so
            // that waiting for heights stays short.
            "--heartbeat-ms",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut cluster = Cluster::started(&dir, 4, API_PORT);
    let api0 = cluster.api(0);
    wait_until("first blocks", Duration::from_secs(60), || {
        (0..4).all(|i| height(&cluster.api(i)).is_some_and(|h| h >= 3))
    });
    // Every endpoint but metrics, discovery and login wants a token: the first institution's.
    let institution = dir.join("node-0/validator.key");
    let token0 = token(&api0, &institution);
    let (status, _) = post(&format!("{api0}/chain/transactions"), b"\x01\x02");
    assert_eq!(status, 401, "no token, no submission");
    assert_eq!(
        get(&format!("{api0}/chain/status")).map(|(s, _)| s),
        Some(401)
    );

    // Operators scrape Prometheus metrics from the API port.
    let metrics = agent()
        .get(format!("{api0}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(metrics.contains("ehrchain_height "), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));
    // Each component registers its own figures where it counts them (a login happened).
    for name in [
        "ehrchain_transactions_total ",
        "ehrchain_mempool ",
        "ehrchain_storage_stored_total ",
        "ehrchain_blobs_missing ",
        "ehrchain_gateway_tokens_issued_total ",
        "ehrchain_access_log_unrecorded ",
        "ehrchain_api_connections ",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    assert!(
        !metrics.contains("ehrchain_gateway_tokens_issued_total 0\n"),
        "the login above was counted: {metrics}"
    );

    // A committed transaction with a proof that checks offline.
    // The signer is the genesis auditor: the mempool admits only signers the chain knows.
    let client = key_from_file(&dir.join("auditor.key"));
    let stranger = PrivateKey::from_seed(77);
    let (status, answer) = post_as(
        &format!("{api0}/chain/transactions"),
        &token0,
        anchor(&stranger, 1, 0, "stranger").bytes(),
    );
    assert_eq!(status, 403, "unknown signer: {answer}");
    let tx = anchor(&client, 1, 0, "first");
    let (status, answer) = post_as(&format!("{api0}/chain/transactions"), &token0, tx.bytes());
    assert_eq!(status, 202, "{answer}");
    let hash = answer["hash"].as_str().unwrap().to_string();
    let first_height = committed_height(&api0, &token0, &hash);
    cluster.settle();
    let proof_file = dir.join("proof.json");
    let out = common::exe()
        .args([
            "proof",
            "get",
            "--api",
            &cluster.api(1),
            "--hash",
            &hash,
            "--key",
            institution.to_str().unwrap(),
            "--out",
        ])
        .arg(&proof_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::exe()
        .args(["proof", "verify", "--proof"])
        .arg(&proof_file)
        .arg("--genesis")
        .arg(dir.join("genesis.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid"));

    // Bad input is refused with a reason.
    let submit = |bytes: &[u8]| post_as(&format!("{api0}/chain/transactions"), &token0, bytes);
    let (status, answer) = submit(tx.bytes());
    assert_eq!(status, 409, "replay: {answer}");
    let other_chain = anchor(&client, 2, 1, "other chain");
    let (status, answer) = submit(other_chain.bytes());
    assert_eq!(status, 401, "wrong chain: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("chain"));
    let mut forged = anchor(&client, 1, 1, "forged").bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (status, answer) = submit(&forged);
    assert_eq!(status, 401, "bad signature: {answer}");
    let oversized = vec![1u8; ehrchain_types::limits::TRANSACTION_SIZE_BYTES_MAX + 1];
    let (status, answer) = submit(&oversized);
    assert_eq!(status, 413, "oversized: {answer}");
    let (status, _) = submit(b"\x01\x02");
    assert_eq!(status, 400);

    // Kill one validator; the other three keep finalizing and commit new work.
    cluster.kill(3);
    let before = height(&api0).unwrap();

    // Meanwhile an outsider with a key the consortium does not know takes node 3's address
    // and claims its seat in a doctored genesis: the validators refuse its connections, so it
    // never receives a block.
    let outsider = start_outsider(&dir);
    wait_until("progress without node 3", Duration::from_secs(60), || {
        height(&api0).is_some_and(|h| h >= before + 5)
    });
    let outsider_api = format!("http://127.0.0.1:{}", API_PORT + 10);
    assert_eq!(
        height(&outsider_api),
        Some(0),
        "an outsider must not sync the chain"
    );
    drop(outsider);
    let tx = anchor(&client, 1, 1, "while node 3 was down");
    let token1 = token(&cluster.api(1), &institution);
    let (status, answer) = post_as(
        &format!("{}/chain/transactions", cluster.api(1)),
        &token1,
        tx.bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    let down_hash = answer["hash"].as_str().unwrap().to_string();
    let down_height = committed_height(&api0, &token0, &down_hash);

    // Restart it: it replays its own log and catches up from its peers.
    cluster.start(3);
    let api3 = cluster.api(3);
    wait_until("node 3 catches up", Duration::from_secs(90), || {
        height(&api3).is_some_and(|h| h >= down_height + 2)
    });
    let token3 = token(&api3, &institution);
    assert_eq!(committed_height(&api3, &token3, &down_hash), down_height);
    assert_eq!(committed_height(&api3, &token3, &hash), first_height);

    // Every stored chain verifies.
    let tip = height(&api0).unwrap();
    wait_until("node 3 at the tip", Duration::from_secs(60), || {
        height(&api3).is_some_and(|h| h >= tip)
    });
    for index in 0..4 {
        cluster.kill(index);
    }
    for index in 0..4 {
        let out = verify(&dir.join(format!("node-{index}/data")));
        assert!(
            out.status.success(),
            "node {index}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Flip one byte of the first transaction's signature in node 0's stored block.
    let log_dir = dir.join("node-0/data/ehrchain-blocks");
    let log_file = std::fs::read_dir(&log_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&log_file).unwrap();
    let signature = anchor(&client, 1, 0, "first").signature_bytes();
    let at = bytes
        .windows(signature.len())
        .position(|w| w == signature.as_slice())
        .expect("signature stored in the log");
    bytes[at + 10] ^= 0x01;
    std::fs::write(&log_file, &bytes).unwrap();
    let out = verify(&dir.join("node-0/data"));
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("block {first_height} is damaged")),
        "verify said: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
