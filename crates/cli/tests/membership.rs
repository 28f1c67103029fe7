//! A consortium admits a new member institution and its validator, as operators would do it
//! with real `ehrchain node` processes and the CLI.
//!
//! Four genesis validators run with 20-block epochs. The new institution's operator prepares
//! its node with `ehrchain network join` and starts it; members propose its admission with
//! `ehrchain governance propose --add-member ... --p2p-address ...` and vote. The members'
//! nodes then let it connect, it syncs, and from the first block of the next epoch it is a
//! validator: `GET /governance/proposals` lists the new set at that height. One genesis
//! validator is then killed, and the chain keeps finalizing, which five validators can only
//! do with four votes, so with the newcomer's. A transaction committed after the change has a
//! proof that `ehrchain proof verify` checks offline from the genesis file alone, following
//! the certified change of validators; and `ehrchain verify` passes on the newcomer's stored
//! chain, which it synced from genesis across the change.

use commonware_cryptography::Signer;
use ehrchain_types::{Payload, TransactionBody, sha256};
use serde_json::Value;
use std::time::Duration;

mod common;

use common::{Cluster, cli, get_as, height, key_from_file, ok, path, post_as, token, wait_until};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_800;
const API_PORT: u16 = 10_280;
const EPOCH_BLOCKS: u64 = 20;

fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {text}"))
        .trim()
}

#[test]
fn governance_admits_a_validator_that_then_carries_the_chain() {
    let dir = std::env::temp_dir().join(format!("ehrchain-membership-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A resting chain, but with heartbeats a quarter second apart: the test waits for whole
    // epochs of blocks.
    let epoch_blocks = EPOCH_BLOCKS.to_string();
    common::network_init(
        &dir,
        4,
        (P2P_PORT, API_PORT),
        250,
        &["--epoch-blocks", &epoch_blocks],
    );
    common::trust(&dir);
    let mut cluster = Cluster {
        dir: dir.clone(),
        nodes: (0..5).map(|_| None).collect(),
        api_port: API_PORT,
    };
    for index in 0..4 {
        cluster.start(index);
    }
    let api0 = cluster.api(0);
    wait_until("first blocks", Duration::from_secs(60), || {
        height(&api0).is_some_and(|h| h >= 3)
    });

    // The newcomer's operator prepares and starts its node.
    let joined = ok(cli(&[
        "network",
        "join",
        "--genesis",
        path(&dir.join("genesis.json")),
        "--dir",
        path(&dir.join("node-4")),
        "--name",
        "member-4",
        "--p2p-listen",
        &format!("127.0.0.1:{}", P2P_PORT + 4),
        "--api-listen",
        &format!("127.0.0.1:{}", API_PORT + 4),
    ]));
    let newcomer = field(&joined, "public key:").to_string();
    let encryption_key = field(&joined, "encryption key:").to_string();
    let p2p_address = field(&joined, "p2p address:").to_string();
    cluster.start(4);
    wait_until("the newcomer's API", Duration::from_secs(30), || {
        height(&cluster.api(4)).is_some()
    });

    // Members vote it in: 3 of 4.
    let proposed: Value = serde_json::from_str(&ok(cli(&[
        "governance",
        "propose",
        "--api",
        &api0,
        "--key",
        path(&dir.join("node-0/validator.key")),
        "--add-member",
        &newcomer,
        "--encryption-key",
        &encryption_key,
        "--p2p-address",
        &p2p_address,
    ])))
    .unwrap();
    let proposal = proposed["proposal"].as_str().unwrap().to_string();
    let member_key = |i: usize| dir.join(format!("node-{i}/validator.key"));
    let member_tokens: Vec<String> = (0..4)
        .map(|i| token(&cluster.api(i), &member_key(i)))
        .collect();
    for member in [1, 2] {
        wait_until(
            "the proposal on the voter's node",
            Duration::from_secs(30),
            || {
                get_as(
                    &format!("{}/governance/proposals", cluster.api(member)),
                    &member_tokens[member],
                )
                .is_some_and(|(_, v)| v.to_string().contains(&proposal))
            },
        );
        ok(cli(&[
            "governance",
            "vote",
            "--api",
            &cluster.api(member),
            "--key",
            path(&dir.join(format!("node-{member}/validator.key"))),
            "--proposal",
            &proposal,
            "--approve",
            "true",
        ]));
    }
    let mut governance = Value::Null;
    wait_until("the admission to pass", Duration::from_secs(60), || {
        governance = get_as(&format!("{api0}/governance/proposals"), &member_tokens[0])
            .map(|(_, v)| v)
            .unwrap_or_default();
        governance.to_string().contains("\"passed\"")
    });
    let effective = governance["proposals"][0]["effective_height"]
        .as_u64()
        .unwrap();
    assert_eq!(effective % EPOCH_BLOCKS, 0, "{governance}");

    // The newcomer syncs and, from the effective epoch, is a validator on every node's books.
    wait_until(
        "the newcomer in its epoch",
        Duration::from_secs(120),
        || height(&cluster.api(4)).is_some_and(|h| h > effective + 2),
    );
    // The newcomer, a member now, serves logins too.
    let token4 = token(&cluster.api(4), &member_key(4));
    let sets = get_as(&format!("{}/governance/proposals", cluster.api(4)), &token4)
        .unwrap()
        .1;
    let epoch = sets["validator_sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["first_height"] == effective)
        .unwrap_or_else(|| panic!("no set starts at {effective}: {sets}"))
        .clone();
    let validators = epoch["validators"].as_array().unwrap();
    assert_eq!(validators.len(), 5, "{epoch}");
    assert!(validators.iter().any(|v| v == newcomer.as_str()), "{epoch}");
    let status = get_as(&format!("{}/chain/status", cluster.api(4)), &token4)
        .unwrap()
        .1;
    assert!(
        status["validators"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["public_key"] == newcomer.as_str() && v["name"] == "admitted by governance"),
        "{status}"
    );

    // Without a genesis validator, five validators finalize only with the newcomer's vote.
    cluster.kill(3);
    let before = height(&api0).unwrap();
    wait_until(
        "blocks finalized with the newcomer's votes",
        Duration::from_secs(120),
        || {
            [0, 4]
                .iter()
                .all(|i| height(&cluster.api(*i)).is_some_and(|h| h > before + EPOCH_BLOCKS))
        },
    );

    // A transaction after the change proves offline from the genesis file.
    // Signed by the genesis auditor: the mempool admits only signers the chain knows.
    let client = key_from_file(&dir.join("auditor.key"));
    let tx = TransactionBody {
        chain_id: 1,
        signer: client.public_key(),
        nonce: 0,
        payload: Payload::Anchor {
            label: 1,
            digest: sha256(&[b"after the admission"]),
        },
    }
    .sign(&client);
    let (status, answer) = post_as(
        &format!("{}/chain/transactions", cluster.api(4)),
        &token4,
        tx.bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    let hash = answer["hash"].as_str().unwrap().to_string();
    let proof_file = dir.join("proof.json");
    wait_until("a proof", Duration::from_secs(60), || {
        common::exe()
            .args([
                "proof",
                "get",
                "--api",
                &cluster.api(4),
                "--hash",
                &hash,
                "--key",
                path(&member_key(4)),
                "--out",
            ])
            .arg(&proof_file)
            .output()
            .unwrap()
            .status
            .success()
    });
    let proof: Value =
        serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
    assert_eq!(proof["epochs"].as_array().map(Vec::len), Some(1), "{proof}");
    let verified = ok(cli(&[
        "proof",
        "verify",
        "--proof",
        path(&proof_file),
        "--genesis",
        path(&dir.join("genesis.json")),
    ]));
    assert!(verified.starts_with("valid"), "{verified}");

    // The newcomer's stored chain, synced from genesis, verifies offline.
    cluster.kill(4);
    let out = common::exe()
        .args(["verify", "--data-dir"])
        .arg(dir.join("node-4/data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
