//! Conformance: every wire format, disk format and state-root write encoding is pinned by
//! hash. Each format's fixed cases are encoded and hashed (SHA-256 over each encoding's length
//! and bytes, in order); the hash must equal the one in `conformance.toml` beside this file,
//! as in Commonware's `conformance.toml`. A format change then fails here until the fixture is
//! deliberately updated:
//!
//! ```sh
//! EHRCHAIN_CONFORMANCE_UPDATE=1 cargo test -p ehrchain-chain --test conformance
//! ```
//! rewrites the file, and its diff names the formats that changed. The formats and their
//! layouts: `docs/design/ledger.md` (transactions, blocks, state-root writes, proofs),
//! `docs/design/records.md` (uploads, wraps, shares, consent bodies) and
//! `docs/design/storage.md` (block log, blob packs, access-log journal).

use commonware_cryptography::Signer as _;
use ehrchain_contracts::{
    consent::{Denial, Grant, Purpose},
    facts::{
        AccessEvent, AnchorRecord, Basis, BreakGlassEntry, Finding, FindingKind, Identity, Outcome,
        PatientEntry, Proposal, ProposalStatus, Reason, RecordVersion, Role, SessionEntry,
        key_bytes,
    },
    state::{self, Delta},
};
use ehrchain_crypto::{Share, WRAP_BYTES, Wrap};
use ehrchain_types::{
    Block, Digest, GovernanceAction, PrivateKey, PublicKey, RecordAnchor, Transaction,
    TransactionBody, sha256,
    transaction::{AccessLogEntry, examples},
    wire::{Upload, encode_consent},
};
use std::collections::BTreeMap;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance.toml");

fn key(seed: u64) -> PrivateKey {
    PrivateKey::from_seed(seed)
}

fn public(seed: u64) -> PublicKey {
    key(seed).public_key()
}

fn digest(label: &str) -> Digest {
    sha256(&[label.as_bytes()])
}

/// One signed transaction of every payload kind (Ed25519 signatures are deterministic).
fn transactions() -> Vec<Transaction> {
    let signer = key(3);
    examples(&signer.public_key())
        .into_iter()
        .enumerate()
        .map(|(nonce, payload)| {
            TransactionBody {
                chain_id: 1,
                signer: signer.public_key(),
                nonce: nonce as u64,
                payload,
            }
            .sign(&signer)
        })
        .collect()
}

fn block() -> Block {
    Block::new(
        1,
        9,
        digest("parent"),
        1_700_000_000_000,
        public(1),
        digest("state"),
        transactions(),
    )
}

fn wrap(byte: u8) -> Wrap {
    Wrap::decode(&[byte; WRAP_BYTES]).expect("a wrap is any 112 bytes")
}

fn anchor() -> RecordAnchor {
    RecordAnchor {
        record: [4; 16],
        version: 2,
        patient: [1; 16],
        resource_type: 2,
        ciphertext_hash: digest("envelope"),
        ciphertext_size: 4_096,
        timestamp_ms: 1_700_000_000_000,
    }
}

/// A block's writes with entries in every map, and every variant of the facts they hold.
fn delta() -> Delta {
    let mut delta = Delta {
        time_ms: 1_700_000_000_000,
        ..Default::default()
    };
    delta.nonces.insert(public(1), 7);
    delta.anchors.insert(
        digest("anchored"),
        AnchorRecord {
            label: 3,
            signer: public(1),
            height: 5,
            transaction: digest("tx"),
        },
    );
    for (seed, role) in [
        (10, Role::Institution),
        (
            11,
            Role::Clinician {
                institution: public(10),
            },
        ),
        (12, Role::Patient { patient: [1; 16] }),
        (13, Role::Guardian { patient: [1; 16] }),
        (14, Role::Auditor),
    ] {
        delta.identities.insert(
            public(seed),
            Identity {
                role,
                encryption_key: [seed as u8; 32],
                previous: vec![public(seed + 100)],
            },
        );
    }
    for (id, erased) in [([1; 16], None), ([2; 16], Some(9))] {
        delta.patients.insert(
            id,
            PatientEntry {
                key: public(12),
                encryption_key: [12; 32],
                home: public(10),
                registered_height: 3,
                erased_height: erased,
                guardians: vec![public(13)],
            },
        );
    }
    delta.versions.insert(
        ([4; 16], 2),
        RecordVersion {
            anchor: anchor(),
            author: public(11),
            height: 6,
            transaction: digest("anchor tx"),
        },
    );
    for (id, revoked) in [([5; 16], None), ([6; 16], Some(1_700_000_000_500))] {
        delta.grants.insert(
            ([1; 16], id),
            Grant {
                id,
                patient: [1; 16],
                granted_by: key_bytes(&public(12)),
                grantee: key_bytes(&public(11)),
                actions: 3,
                types: vec![2, 3],
                purposes: vec![Purpose::Treatment, Purpose::Research],
                valid_from_ms: 10,
                valid_until_ms: 20,
                revoked_at_ms: revoked,
            },
        );
    }
    delta.shares.insert(([1; 16], [5; 16]), [7; 32]);
    delta.break_glass.insert(
        (public(11), [1; 16]),
        BreakGlassEntry {
            reason: 2,
            opened_ms: 100,
            until_ms: 200,
        },
    );
    delta.reads.insert((public(11), 3), 40);
    delta.retired.insert(public(111), 8);
    for (id, status) in [
        ([7; 16], ProposalStatus::Open),
        (
            [8; 16],
            ProposalStatus::Passed {
                height: 4,
                effective_height: 8,
            },
        ),
        ([9; 16], ProposalStatus::Rejected { height: 5 }),
    ] {
        delta.proposals.insert(
            id,
            Proposal {
                action: GovernanceAction::AddMember {
                    key: public(20),
                    encryption_key: [20; 32],
                    p2p_address: "127.0.0.1:3000".parse().expect("an address"),
                },
                proposer: public(10),
                electorate: 4,
                yes: vec![public(10)],
                no: vec![public(1)],
                created_ms: 50,
                status,
            },
        );
    }
    delta.members.insert(public(20), true);
    delta.members.insert(public(21), false);
    let outcomes = [
        Outcome::Allowed(Basis::Owner),
        Outcome::Allowed(Basis::Guardian),
        Outcome::Allowed(Basis::Author),
        Outcome::Allowed(Basis::Consent([5; 16])),
        Outcome::Allowed(Basis::BreakGlass),
        Outcome::Allowed(Basis::BreakGlassOpened {
            reason: 2,
            until_ms: 300,
        }),
        Outcome::Denied(Reason::Consent(Denial::NoGrant)),
        Outcome::Denied(Reason::Consent(Denial::Expired)),
        Outcome::Denied(Reason::Auditor),
        Outcome::Denied(Reason::NotTheirs),
        Outcome::Denied(Reason::NotPermitted { operation: 4 }),
        Outcome::Denied(Reason::RetiredKey),
    ];
    for (entry, outcome) in outcomes.into_iter().enumerate() {
        delta.events.insert(
            (6, 1, entry as u16),
            AccessEvent {
                actor: public(11),
                patient: [1; 16],
                record: (entry % 2 == 0).then_some(([4; 16], 2)),
                purpose: 1,
                outcome,
                time_ms: 1_700_000_000_100,
                transaction: digest("read tx"),
                app: (entry == 1).then(|| "ehrchain-demo".to_string()),
            },
        );
    }
    let kinds = [
        FindingKind::DeniedAccess(Reason::Consent(Denial::Revoked)),
        FindingKind::BreakGlass { reason: 2 },
        FindingKind::ReadVolume {
            count: 500,
            window_start_ms: 3_600_000,
        },
        FindingKind::AfterRevocation,
        FindingKind::KeyRecovery,
        FindingKind::LateLog { lag_ms: 9_000 },
    ];
    for (seq, kind) in kinds.into_iter().enumerate() {
        delta.findings.insert(
            (6, 1, seq as u8),
            Finding {
                kind,
                actor: public(11),
                patient: [1; 16],
                time_ms: 1_700_000_000_100,
                transaction: digest("finding tx"),
            },
        );
    }
    delta.sessions.insert(
        public(30),
        SessionEntry {
            identity: public(12),
            expires_ms: 1_700_000_900_000,
            gateway: public(1),
            app: None,
        },
    );
    delta.sessions.insert(
        public(31),
        SessionEntry {
            identity: public(12),
            expires_ms: 1_700_043_200_000,
            gateway: public(1),
            app: Some("chart-app".into()),
        },
    );
    delta.apps.insert(
        "chart-app".into(),
        Some(ehrchain_contracts::facts::AppEntry {
            institution: public(1),
            name: "Chart App".into(),
            redirect_uris: vec!["http://localhost:9000/redirect".into()],
            jwk: None,
        }),
    );
    delta.apps.insert("retired-app".into(), None);
    delta.assertions.insert(digest("assertion"), public(30));
    delta.access_logs.insert(public(1), 12);
    delta.client_keys.insert(
        public(12),
        vec![
            ehrchain_crypto::jwk::ClientJwk {
                kid: "rsa-1".into(),
                key: ehrchain_crypto::jwk::ClientKey::Rs384 {
                    n: vec![0xC5; 256],
                    e: vec![1, 0, 1],
                },
            },
            ehrchain_crypto::jwk::ClientJwk {
                kid: "ec-1".into(),
                key: ehrchain_crypto::jwk::ClientKey::Es384 { point: [4; 97] },
            },
        ],
    );
    delta
}

fn access_log_entry(n: u8) -> AccessLogEntry {
    AccessLogEntry {
        session: public(30),
        record: [n; 16],
        purpose: 1,
        checked_ms: 1_700_000_000_000 + u64::from(n),
    }
}

/// Every pinned format and its encodings of the fixed cases.
fn formats() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let txs = transactions();
    let block = block();
    let mut formats: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    formats.insert(
        "types::transaction",
        txs.iter().map(|tx| tx.bytes().to_vec()).collect(),
    );
    formats.insert("types::block_header", vec![block.header.encode().to_vec()]);
    formats.insert("types::block", vec![block.encode()]);
    formats.insert(
        "types::wire::upload",
        vec![
            Upload::encode(txs[2].bytes(), &[wrap(3)], &[9; 50]),
            Upload::encode(txs[2].bytes(), &[wrap(3), wrap(4), wrap(5)], &[]),
        ],
    );
    formats.insert(
        "types::wire::consent",
        vec![encode_consent(
            txs[5].bytes(),
            &Share {
                entries: vec![(*digest("v1").as_ref().first_chunk().expect("32"), wrap(6))],
            }
            .encode(),
        )],
    );
    formats.insert(
        "crypto::share",
        vec![
            Share::default().encode(),
            Share {
                entries: vec![([1; 32], wrap(7)), ([2; 32], wrap(8))],
            }
            .encode(),
        ],
    );
    let delta = delta();
    let root = state::next_root(&state::genesis_root(1), 1, &delta);
    formats.insert(
        "contracts::state_root",
        vec![
            state::genesis_root(1).as_ref().to_vec(),
            Delta::default().digest().as_ref().to_vec(),
            delta.digest().as_ref().to_vec(),
            root.as_ref().to_vec(),
            state::epoch_root(&root, 2, &[public(1), public(2)])
                .as_ref()
                .to_vec(),
        ],
    );
    formats.insert(
        "storage::block_log",
        vec![
            ehrchain_storage::block_log::encode_record(0, &block.encode(), &[]),
            ehrchain_storage::block_log::encode_record(9, &block.encode(), &[0xCE; 300]),
        ],
    );
    formats.insert(
        "storage::pack",
        [
            ehrchain_storage::pack::STAGED,
            ehrchain_storage::pack::STORED,
            ehrchain_storage::pack::ERASED,
        ]
        .into_iter()
        .map(|state| {
            ehrchain_storage::pack::encode_entry(
                state,
                digest("envelope").as_ref().first_chunk().expect("32"),
                1_700_000_000_000,
                &[0xAB; 200],
            )
        })
        .collect(),
    );
    formats.insert(
        "storage::journal",
        (0..3)
            .map(|n| {
                let mut out = Vec::new();
                ehrchain_storage::journal::encode(
                    u64::from(n) + 40,
                    &access_log_entry(n),
                    &mut out,
                );
                out
            })
            .collect(),
    );
    formats
}

/// SHA-256 over each encoding's length (u64 BE) and bytes, in order.
fn hash(encodings: &[Vec<u8>]) -> String {
    let mut bytes = Vec::new();
    for encoding in encodings {
        bytes.extend_from_slice(&(encoding.len() as u64).to_be_bytes());
        bytes.extend_from_slice(encoding);
    }
    hex::encode(sha256(&[&bytes]))
}

fn render(formats: &BTreeMap<&'static str, Vec<Vec<u8>>>) -> String {
    let mut out = String::from(
        "# Pinned formats: `crates/chain/tests/conformance.rs`. Regenerate only for a deliberate\n\
         # format change: EHRCHAIN_CONFORMANCE_UPDATE=1 cargo test -p ehrchain-chain --test conformance\n",
    );
    for (name, encodings) in formats {
        out.push_str(&format!(
            "\n[\"{name}\"]\ncases = {}\nhash = \"{}\"\n",
            encodings.len(),
            hash(encodings)
        ));
    }
    out
}

#[test]
fn every_format_matches_its_pinned_hash() {
    let formats = formats();
    let rendered = render(&formats);
    if std::env::var_os("EHRCHAIN_CONFORMANCE_UPDATE").is_some() {
        std::fs::write(FIXTURE, &rendered).expect("write the fixture");
        return;
    }
    let pinned = std::fs::read_to_string(FIXTURE).expect("the conformance fixture");
    let changed: Vec<&str> = formats
        .iter()
        .filter(|(name, encodings)| {
            let section = format!(
                "[\"{name}\"]\ncases = {}\nhash = \"{}\"\n",
                encodings.len(),
                hash(encodings)
            );
            !pinned.contains(&section)
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(
        changed.is_empty(),
        "these formats changed: {changed:?}; if that is deliberate, regenerate the fixture \
         (see this file's header) and describe the change in the design notes"
    );
    assert_eq!(
        pinned, rendered,
        "the fixture lists formats that are no longer checked"
    );
}

#[test]
fn the_cases_decode_back_to_themselves() {
    // Pinning bytes is worth little if they do not round-trip: check the decoders too.
    for tx in transactions() {
        assert_eq!(Transaction::decode(tx.bytes()).unwrap(), tx);
    }
    let block = block();
    assert_eq!(Block::decode(&block.encode()).unwrap(), block);
    let entry = access_log_entry(3);
    let mut out = Vec::new();
    ehrchain_storage::journal::encode(41, &entry, &mut out);
    assert_eq!(ehrchain_storage::journal::decode(&out), Some((41, entry)));
    let upload = Upload::encode(transactions()[2].bytes(), &[wrap(3)], &[9; 50]);
    let decoded = Upload::decode(&upload).unwrap();
    assert_eq!(decoded.wraps, vec![wrap(3)]);
    // The same cases seed the fuzz corpus (one transaction of every kind, the sample block):
    // `EHRCHAIN_FUZZ_SEEDS=fuzz/corpus cargo test -p ehrchain-chain --test conformance`.
    if let Some(dir) = std::env::var_os("EHRCHAIN_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir);
        let seed = |target: &str, bytes: &[u8]| {
            let path = dir.join(target);
            std::fs::create_dir_all(&path).expect("the corpus directory");
            let name = hex::encode(&sha256(&[bytes]).as_ref()[..20]);
            std::fs::write(path.join(name), bytes).expect("write a seed");
        };
        for tx in transactions() {
            seed("transaction_decode", tx.bytes());
        }
        seed("block_decode", &block.encode());
        seed("record_upload_decode", &upload);
    }
}
