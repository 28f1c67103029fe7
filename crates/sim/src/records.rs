//! The records scenario: blob replication and access-log batching, seeded, with a Byzantine
//! member and a crash.
//!
//! Four validators run what `ehrchain node` runs beside consensus: a blob store, the records
//! keeper on the blob channel, and a gateway's access log with its batcher. Validator 3 is
//! Byzantine twice over: it never answers a peer's blob request, and it signs access logs that
//! lie. Validator 2 is killed just after an upload was staged on it and its anchor submitted,
//! and restarts from its disk. Validator 1 is the honest gateway: the patient opens a session
//! there and the reads it decides go through its journal and batcher to the chain.
//!
//! Envelopes are seeded opaque bytes, not sealed records: the keeper only stores, hashes and
//! serves them, and sealing draws on the operating system's randomness, which a replay cannot
//! repeat. Their wraps name the patient's real encryption key, so the keeper's entitlement
//! filter keeps them.

use super::*;
use ehrchain_chain::account::Account;
use ehrchain_contracts::{
    consent::Purpose,
    facts::{FindingKind, Outcome},
    state::Reader as _,
};
use ehrchain_types::{PatientId, RecordAnchor, RecordId, transaction::AccessLogEntry};
use rand::Rng as _;

/// The Byzantine member: withholds blobs and lies in its access logs.
pub const BYZANTINE: usize = 3;
/// The honest gateway the patient reads through.
pub const GATEWAY: usize = 1;
/// The member killed between staging an upload and its anchor becoming final.
pub const VICTIM: usize = 2;
/// The honest validators, who must agree and end with every blob.
pub const HONEST: [usize; 3] = [0, 1, 2];
/// Record versions uploaded over the run (by validators 0 and 2, in turn).
pub const UPLOADS: usize = 8;
/// The upload after which the victim is killed.
const CRASH_AFTER: usize = 5;
/// Reads the patient makes through the honest gateway.
pub const READS: usize = 3;

/// The patient who reads, at home at validator 0.
const PATIENT: PatientId = [0x70; 16];
/// A patient at home at the victim, who writes their records.
const PATIENT_AT_VICTIM: PatientId = [0x71; 16];
const LIMIT: Duration = Duration::from_secs(180);

/// What the records scenario produced, for its test.
#[derive(Debug)]
pub struct RecordsOutcome {
    pub trace: String,
    /// Record versions final on chain at the end.
    pub anchored: usize,
    /// Per honest validator: how many of those its store holds.
    pub held: BTreeMap<usize, usize>,
    /// Per honest validator: reads on the trail through the honest gateway's log, allowed.
    pub logged_reads: BTreeMap<usize, usize>,
    /// Per honest validator: how many of the Byzantine gateway's lying logs it refused at
    /// admission (a session it did not open; a session no one opened).
    pub lies_refused: BTreeMap<usize, usize>,
    /// Per honest validator: whether the read the Byzantine gateway claimed, which the
    /// contract denies, is on the trail as denied with a finding.
    pub denied_on_trail: BTreeMap<usize, bool>,
    /// Per honest validator: the state root at the lowest height they all reached.
    pub roots: BTreeMap<usize, Digest>,
}

/// A fresh data directory for one run (two runs of a seed in one process must not share).
fn scratch(seed: u64) -> std::path::PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "ehrchain-sim-records-{}-{seed}-{run}",
        std::process::id()
    ))
}

/// A seeded stand-in for a sealed version and its wrap for `reader`.
fn upload(
    context: &mut Context,
    reader: ehrchain_crypto::EncryptionPublicKey,
) -> (Vec<u8>, Vec<ehrchain_crypto::Wrap>) {
    let mut envelope = vec![0u8; 200 + context.random_range(0..400)];
    context.fill_bytes(&mut envelope);
    let mut wrap = ehrchain_crypto::Wrap {
        recipient: reader,
        encapsulated: [0; 32],
        ciphertext: [0; 48],
    };
    context.fill_bytes(&mut wrap.encapsulated);
    context.fill_bytes(&mut wrap.ciphertext);
    (envelope, vec![wrap])
}

fn now_ms(context: &Context) -> u64 {
    context
        .current()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Open a session for `identity` at `gateway`, signed by a fresh session key (SMART Backend
/// Services: the identity's signed assertion). Returns the session key. The assertion is
/// signed here rather than by `client::smart::client_assertion`, whose `jti` is random: a
/// seeded run needs a seeded one.
fn open_session(
    context: &Context,
    chain: &Chain<Blob>,
    identity: &PrivateKey,
    gateway: &PublicKey,
    seed: u64,
) -> (PrivateKey, Digest) {
    use commonware_codec::Encode as _;
    let secret: [u8; 32] = identity.encode().as_ref().try_into().expect("32-byte seed");
    let id = hex::encode(identity.public_key().as_ref());
    let assertion = ehrchain_crypto::jwt::sign(
        &secret,
        &ehrchain_crypto::jwt::Claims {
            iss: id.clone(),
            sub: id,
            aud: "http://validator/auth/token".into(),
            exp: (now_ms(context) + 60_000) / 1000,
            jti: format!("sim-{seed}"),
            iat: None,
            nbf: None,
            client_id: None,
            scope: None,
        },
    );
    let session = PrivateKey::from_seed(seed);
    let tx = TransactionBody {
        chain_id: 1,
        signer: session.public_key(),
        nonce: 0,
        payload: Payload::OpenSession {
            identity: identity.public_key(),
            gateway: gateway.clone(),
            assertion: assertion.into_bytes(),
        },
    }
    .sign(&session);
    let id = chain.submit(tx.bytes()).expect("the session is admitted");
    (session, id)
}

/// Run the records scenario from `seed`.
pub fn run_records(seed: u64) -> RecordsOutcome {
    let config = deterministic::Config::default()
        .with_seed(seed)
        .with_timeout(Some(Duration::from_secs(900)));
    let dir = scratch(seed);
    let outcome = deterministic::Runner::new(config).start(|mut context| {
        let dir = dir.clone();
        async move {
            let keys: Vec<PrivateKey> = (0..4u64)
                .map(|i| PrivateKey::from_seed(1_000 + i))
                .collect();
            let publics: Vec<PublicKey> = keys.iter().map(Signer::public_key).collect();
            let (_, block) = genesis(&keys, Rules::default());
            let oracle = network(&context, keys.len(), publics.clone()).await;
            let link = Link {
                latency: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
                success_rate: Probability::from_f64(0.98).expect("probability"),
            };
            set_links(&oracle, &publics, &link, None).await;
            let services = |index: usize| Services {
                dir: dir.join(format!("validator-{index}")),
                withhold: index == BYZANTINE,
            };
            let mut nodes: BTreeMap<usize, Node> = BTreeMap::new();
            for index in 0..keys.len() {
                let node = start_node(
                    &context,
                    &oracle,
                    &keys,
                    keys.len(),
                    (&block, Rules::default()),
                    index,
                    Some(&services(index)),
                )
                .await;
                nodes.insert(index, node);
            }
            // The institutions' accounts, as their operators' tools sign with them.
            let accounts: Vec<Account> = keys.iter().cloned().map(Account::new).collect();
            let final_everywhere = |nodes: &BTreeMap<usize, Node>, id: &Digest| {
                HONEST
                    .iter()
                    .all(|i| nodes.get(i).is_some_and(|n| n.chain.location(id).is_some()))
            };
            wait_until(&context, "the first block", LIMIT, || {
                nodes[&0].chain.status().height > 0
            })
            .await;

            // Institution 0 registers the patient and enrols a clinician of its own.
            let patient = PrivateKey::from_seed(5_000);
            let patient_encryption = ehrchain_crypto::EncryptionKey::from_seed(&[0x55; 32]);
            let clinician = PrivateKey::from_seed(5_001);
            let other_encryption = ehrchain_crypto::EncryptionKey::from_seed(&[0x56; 32]);
            let mut setup = Vec::new();
            for (institution, payload) in [
                (
                    0,
                    Payload::RegisterPatient {
                        patient: PATIENT,
                        key: patient.public_key(),
                        encryption_key: patient_encryption.public().0,
                    },
                ),
                (
                    0,
                    Payload::EnrollClinician {
                        clinician: clinician.public_key(),
                        encryption_key: [0x5C; 32],
                    },
                ),
                (
                    VICTIM,
                    Payload::RegisterPatient {
                        patient: PATIENT_AT_VICTIM,
                        key: PrivateKey::from_seed(5_002).public_key(),
                        encryption_key: other_encryption.public().0,
                    },
                ),
            ] {
                let tx = accounts[institution]
                    .submit(&nodes[&institution].chain, payload)
                    .await
                    .expect("admitted");
                setup.push(tx.id());
            }
            wait_until(&context, "the patient's registration", LIMIT, || {
                setup.iter().all(|id| final_everywhere(&nodes, id))
            })
            .await;

            // Uploads: staged on the author's node (the home of the record's patient), then
            // anchored; the victim dies right after one of its own, and comes back from its
            // disk.
            let mut anchors: Vec<(usize, Payload, Digest)> = Vec::new();
            for n in 0..UPLOADS {
                let (author, owner, reader) = match n % 2 {
                    0 => (0, PATIENT, patient_encryption.public()),
                    _ => (VICTIM, PATIENT_AT_VICTIM, other_encryption.public()),
                };
                let record: RecordId = [n as u8 + 1; 16];
                let (envelope, wraps) = upload(&mut context, reader);
                let hash = nodes[&author]
                    .store
                    .as_ref()
                    .expect("services run")
                    .stage(&envelope, &wraps)
                    .await
                    .expect("staged");
                let payload = Payload::RecordAnchor(RecordAnchor {
                    record,
                    version: 1,
                    patient: owner,
                    resource_type: 1,
                    ciphertext_hash: Digest::from(hash),
                    ciphertext_size: envelope.len() as u64,
                    timestamp_ms: now_ms(&context),
                });
                let tx = accounts[author]
                    .submit(&nodes[&author].chain, payload.clone())
                    .await
                    .expect("admitted");
                anchors.push((author, payload, tx.id()));
                if n == CRASH_AFTER {
                    let delay = context.random_range(0..40u64);
                    context.sleep(Duration::from_millis(delay)).await;
                    // Its chain, store and log go with it (a crash leaves only the disk).
                    let Node { handle, .. } = nodes.remove(&VICTIM).expect("the victim runs");
                    handle.abort();
                    let _ = handle.await;
                    context.sleep(Duration::from_secs(3)).await;
                    let node = start_node(
                        &context,
                        &oracle,
                        &keys,
                        keys.len(),
                        (&block, Rules::default()),
                        VICTIM,
                        Some(&services(VICTIM)),
                    )
                    .await;
                    nodes.insert(VICTIM, node);
                }
                context.sleep(Duration::from_millis(200)).await;
            }
            // An anchor lost with the victim's pool is sent again, as its client would: the
            // upload is still staged on the victim's disk.
            context.sleep(Duration::from_secs(3)).await;
            for (author, payload, id) in &mut anchors {
                let lost = !final_everywhere(&nodes, id)
                    && nodes.values().all(|n| !n.chain.is_pending(id));
                if lost {
                    let tx = accounts[*author]
                        .submit(&nodes[author].chain, payload.clone())
                        .await
                        .expect("admitted again");
                    *id = tx.id();
                }
            }
            wait_until(&context, "every anchor", LIMIT, || {
                anchors
                    .iter()
                    .all(|(_, _, id)| final_everywhere(&nodes, id))
            })
            .await;

            // The patient reads through the honest gateway: it decides each read with the
            // contract against its final state and journals it; its batcher logs them.
            let gateway = &nodes[&GATEWAY];
            let (session, opened) =
                open_session(&context, &gateway.chain, &patient, &publics[GATEWAY], 7_000);
            wait_until(&context, "the patient's session", LIMIT, || {
                final_everywhere(&nodes, &opened)
            })
            .await;
            let gateway = &nodes[&GATEWAY];
            let entries: Vec<AccessLogEntry> = gateway.chain.read(|s| {
                let now = s.time_ms();
                let (actor, identity) = ehrchain_contracts::access::gateway_reader(
                    s,
                    &publics[GATEWAY],
                    &session.public_key(),
                    now,
                )
                .expect("the gateway opened this session");
                let identity = identity.expect("a live identity");
                // The patient's own records: uploads 0, 2, 4, ...
                (0..READS)
                    .map(|n| {
                        let record = [2 * n as u8 + 1; 16];
                        let (_, _, outcome) = ehrchain_contracts::access::decide_read(
                            s,
                            &actor,
                            &identity,
                            &record,
                            Purpose::PatientRequest,
                            now,
                        )
                        .expect("a known record");
                        assert!(outcome.allowed(), "the patient reads their own record");
                        AccessLogEntry {
                            session: session.public_key(),
                            record,
                            purpose: Purpose::PatientRequest as u8,
                            checked_ms: now,
                        }
                    })
                    .collect()
            });
            gateway
                .log
                .as_ref()
                .expect("services run")
                .record(entries)
                .await
                .expect("journalled");
            let logged = |nodes: &BTreeMap<usize, Node>, index: usize| {
                nodes[&index].chain.read(|s| {
                    s.patient_events(&PATIENT)
                        .iter()
                        .filter(|(_, e)| e.actor == patient.public_key() && e.outcome.allowed())
                        .count()
                })
            };
            wait_until(&context, "the gateway's access log on chain", LIMIT, || {
                HONEST.iter().all(|i| logged(&nodes, *i) == READS)
            })
            .await;

            // The Byzantine gateway's lies. Reads under the honest gateway's session, and
            // under a session no one opened: every honest validator refuses the log.
            let liar = &publics[BYZANTINE];
            let claim = |session: PublicKey, purpose: Purpose, checked_ms: u64| AccessLogEntry {
                session,
                record: [1; 16],
                purpose: purpose as u8,
                checked_ms,
            };
            let now = nodes[&0].chain.read(|s| s.time_ms());
            let lies = [
                claim(session.public_key(), Purpose::PatientRequest, now),
                claim(
                    PrivateKey::from_seed(7_001).public_key(),
                    Purpose::Treatment,
                    now,
                ),
            ];
            // Admission checks a log against the final state, where an entry decided after it
            // waits for its block: a lie may reach a block, where it must fail.
            let mut sent = Vec::new();
            for lie in &lies {
                let first = nodes[&0].chain.read(|s| s.access_log_next(liar));
                let payload = Payload::AccessLog {
                    first,
                    entries: vec![lie.clone()],
                };
                if let Ok(tx) = accounts[BYZANTINE].submit(&nodes[&0].chain, payload).await {
                    sent.push(tx.id());
                }
            }
            wait_until(&context, "the lies to be decided", LIMIT, || {
                sent.iter().all(|id| {
                    final_everywhere(&nodes, id)
                        || nodes
                            .values()
                            .all(|n| !n.chain.is_pending(id) && n.chain.location(id).is_none())
                })
            })
            .await;
            let on_trail = |nodes: &BTreeMap<usize, Node>, index: usize, id: &Digest| {
                nodes[&index].chain.read(|s| {
                    s.patient_events(&PATIENT)
                        .iter()
                        .any(|(_, e)| e.transaction == *id)
                })
            };
            let mut lies_refused = BTreeMap::new();
            for index in HONEST {
                let kept = sent.iter().filter(|id| on_trail(&nodes, index, id)).count();
                let sequence = nodes[&index].chain.read(|s| s.access_log_next(liar));
                lies_refused.insert(index, if sequence == 0 { lies.len() - kept } else { 0 });
            }
            // A read the contract denies (a clinician with no consent), claimed under a
            // session the liar did open: the log commits, and every validator records the
            // read as denied, with a finding, whatever the gateway did.
            let (clinician_session, opened) =
                open_session(&context, &nodes[&0].chain, &clinician, liar, 7_002);
            wait_until(&context, "the clinician's session", LIMIT, || {
                final_everywhere(&nodes, &opened)
            })
            .await;
            let denied_claim = nodes[&0].chain.read(|s| {
                let now = s.time_ms();
                let identity = s.identity(&clinician.public_key()).expect("enrolled");
                let (_, _, outcome) = ehrchain_contracts::access::decide_read(
                    s,
                    &clinician.public_key(),
                    &identity,
                    &[1; 16],
                    Purpose::Treatment,
                    now,
                )
                .expect("a known record");
                assert!(!outcome.allowed(), "no consent covers the clinician");
                claim(clinician_session.public_key(), Purpose::Treatment, now)
            });
            let first = nodes[&0].chain.read(|s| s.access_log_next(liar));
            let tx = accounts[BYZANTINE]
                .submit(
                    &nodes[&0].chain,
                    Payload::AccessLog {
                        first,
                        entries: vec![denied_claim],
                    },
                )
                .await
                .expect("a log of a session the liar opened is admitted");
            wait_until(&context, "the liar's log", LIMIT, || {
                final_everywhere(&nodes, &tx.id())
            })
            .await;
            let mut denied_on_trail = BTreeMap::new();
            for index in HONEST {
                let chain = &nodes[&index].chain;
                let location = chain.location(&tx.id()).expect("final");
                let denied = chain.read(|s| {
                    let event = s
                        .patient_events(&PATIENT)
                        .into_iter()
                        .find(|(_, e)| e.transaction == tx.id())
                        .map(|(_, e)| e.outcome);
                    let finding = s
                        .finding(location.height, location.index)
                        .is_some_and(|f| matches!(f.kind, FindingKind::DeniedAccess(_)));
                    matches!(event, Some(Outcome::Denied(_))) && finding
                });
                denied_on_trail.insert(index, denied);
            }

            // Every honest node ends with every final version's blob, although one peer never
            // answers and one died holding the only copy of an upload.
            let versions: Vec<[u8; 32]> = nodes[&0].chain.read(|s| {
                s.all_versions()
                    .map(|v| v.anchor.ciphertext_hash.as_ref().try_into().expect("32"))
                    .collect()
            });
            let mut held = BTreeMap::new();
            let start = context.current();
            loop {
                for index in HONEST {
                    let store = nodes[&index].store.as_ref().expect("services run");
                    let mut count = 0;
                    for hash in &versions {
                        if store.get(hash).await.expect("store reads").is_some() {
                            count += 1;
                        }
                    }
                    held.insert(index, count);
                }
                let waited = context.current().duration_since(start).unwrap_or_default();
                if held.values().all(|c| *c == versions.len()) || waited > LIMIT {
                    break;
                }
                context.sleep(Duration::from_millis(200)).await;
            }

            let height = HONEST
                .iter()
                .map(|i| nodes[i].chain.status().height)
                .min()
                .expect("honest nodes");
            let mut roots = BTreeMap::new();
            for index in HONEST {
                let record = nodes[&index].chain.record(height).await.expect("stored");
                let block = Block::decode(&record.block).expect("decodes");
                roots.insert(index, block.header.state_root);
            }
            let logged_reads = HONEST.iter().map(|i| (*i, logged(&nodes, *i))).collect();
            for node in nodes.into_values() {
                node.handle.abort();
            }
            RecordsOutcome {
                trace: context.auditor().state(),
                anchored: versions.len(),
                held,
                logged_reads,
                lies_refused,
                denied_on_trail,
                roots,
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
