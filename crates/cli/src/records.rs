//! `ehrchain record|patient|identity`: write and read encrypted records from the client side.
//!
//! The CLI validates, seals and wraps on the user's machine: the node receives only the
//! envelope, the wrapped keys and the signed anchor, and never the plaintext. Reading
//! fetches the envelope and the key wrapped for the user's own key, checks the envelope
//! against its on-chain hash, and decrypts locally.

use crate::client::{answer, get_json, post_bytes};
use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use ehrchain_crypto::{Binding, EncryptionPublicKey};
use ehrchain_types::{digest_from_hex, sha256};
use serde_json::Value;
use std::{path::PathBuf, process::ExitCode};

#[derive(Subcommand)]
pub enum RecordCommand {
    /// Validate a FHIR R4 resource, encrypt it for the patient, the author's institution
    /// and the author, store it and anchor it; prints the record id and version.
    ///
    /// Example: ehrchain record put --api https://127.0.0.1:8700 --key clinician.key --file obs.json
    /// Update (a new version): ehrchain record put ... --record <id> --file obs-v2.json
    Put {
        #[arg(long)]
        api: String,
        /// The author's key file (a clinician or an institution).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        file: PathBuf,
        /// Record id to update; a new record when absent.
        #[arg(long)]
        record: Option<String>,
        /// Extra readers' X25519 keys (hex) to wrap the data key for.
        #[arg(long = "reader")]
        readers: Vec<String>,
    },
    /// Record the read on chain (allowed or denied), then fetch the version, check it against
    /// its anchor, fetch the data key released against that read, decrypt it with KEY and
    /// print the FHIR JSON exactly as written.
    ///
    /// Example: ehrchain record get --api https://127.0.0.1:8700 --key patient.key --record <id>
    Get {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        record: String,
        /// Version to read; the newest when absent.
        #[arg(long)]
        version: Option<u32>,
        /// Why (v3-ActReason): TREAT, ETREAT, HRESCH, HPAYMT, HOPERAT, or PATRQT for a
        /// patient's own read. Recorded on chain with the read.
        #[arg(long, default_value = "TREAT")]
        purpose: String,
    },
    /// Print a record's versions: hashes, sizes, authors, heights and transactions.
    ///
    /// Example: ehrchain record history --api https://127.0.0.1:8700 --record <id>
    History {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        record: String,
    },
    /// Check that the stored envelope matches its on-chain anchor (anyone can; no key needed).
    ///
    /// Example: ehrchain record verify --api https://127.0.0.1:8700 --record <id> --version 1
    Verify {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        record: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum PatientCommand {
    /// Register a patient at their home institution, with a new key written to OUT (mode
    /// 0600); prints the pseudonymous patient id.
    ///
    /// Example: ehrchain patient register --api https://127.0.0.1:8700 --key net/node-0/validator.key --out alice.key
    Register {
        #[arg(long)]
        api: String,
        /// The home institution's key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the patient's new key (a self-held key).
        #[arg(long, required_unless_present = "custody", conflicts_with = "custody")]
        out: Option<PathBuf>,
        /// A custodial key instead: the home node's custody directory (`<data_dir>/custody`),
        /// where the key is written as `<patient id>.key`. Run on the node's host.
        #[arg(long)]
        custody: Option<PathBuf>,
    },
    /// Erase a patient's records everywhere (crypto-shredding), signed by the patient or their
    /// home institution. The chain keeps a tombstone and the hashes.
    ///
    /// Example: ehrchain patient erase --api https://127.0.0.1:8700 --key alice.key --patient <id>
    Erase {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
    },
    /// Print a patient's registration and record ids.
    ///
    /// Example: ehrchain patient show --api https://127.0.0.1:8700 --patient <id>
    Show {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
    },
}

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Enrol a clinician at an institution, with a new key written to OUT (mode 0600).
    /// With --custody (the node's `<data_dir>/custody`), the node also keeps the clinician's
    /// decryption key (X25519 only, it cannot sign) to open records for them over FHIR.
    ///
    /// Example: ehrchain identity enroll --api https://127.0.0.1:8700 --key net/node-0/validator.key --out dr-bauer.key --custody net/node-0/data/custody
    Enroll {
        #[arg(long)]
        api: String,
        /// The institution's key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        custody: Option<PathBuf>,
    },
    /// Appoint a guardian for a patient, signed by the patient, with a new key written to OUT
    /// (mode 0600). The guardian may then grant and revoke consent for the patient.
    ///
    /// Example: ehrchain identity guardian --api https://127.0.0.1:8700 --key alice.key --patient <id> --out bob.key
    Guardian {
        #[arg(long)]
        api: String,
        /// The patient's key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Move an identity (clinician, patient, guardian, auditor) to a new key written to OUT
    /// (mode 0600). From the rotation on, the old key is rejected; grants and authorship
    /// follow the identity.
    ///
    /// Example: ehrchain identity rotate --api https://127.0.0.1:8700 --key dr-bauer.key --out dr-bauer-2026.key
    Rotate {
        #[arg(long)]
        api: String,
        /// The current key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace a patient's lost key, signed by a guardian or the home institution; a new key
    /// is written to OUT (mode 0600). The recovery is reported to the auditor.
    ///
    /// Example: ehrchain identity recover --api https://127.0.0.1:8700 --key net/node-0/validator.key --patient <id> --out alice-new.key
    Recover {
        #[arg(long)]
        api: String,
        /// The guardian's or home institution's key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove a clinician, signed by their institution: from the next block their key (and
    /// any FHIR session of theirs) is refused, and every node deletes the data keys wrapped
    /// for them.
    ///
    /// Example: ehrchain identity remove --api https://127.0.0.1:8700 --key net/node-0/validator.key --clinician <public key>
    Remove {
        #[arg(long)]
        api: String,
        /// The institution's key file.
        #[arg(long)]
        key: PathBuf,
        /// The clinician's public key (hex), as `identity enroll` printed it.
        #[arg(long)]
        clinician: String,
    },
    /// Register a public key (a JWK file: RSA 2048 to 4096 bits for RS384, or EC P-384 for
    /// ES384, with a `kid`) that the identity of --key signs SMART client assertions with, as
    /// a backend service whose stack has no Ed25519. A key with the same `kid` is replaced;
    /// a JWK with a private member is refused before anything is sent.
    ///
    /// Example: ehrchain identity add-client-key --api https://127.0.0.1:8700 --key lab-system.key --jwk lab-system.public.jwk.json
    AddClientKey {
        #[arg(long)]
        api: String,
        /// The identity's key file (it signs the registration).
        #[arg(long)]
        key: PathBuf,
        /// The public JWK (JSON).
        #[arg(long)]
        jwk: PathBuf,
    },
    /// Withdraw a client key by its `kid`: assertions it signs no longer log in.
    ///
    /// Example: ehrchain identity remove-client-key --api https://127.0.0.1:8700 --key lab-system.key --kid lab-2026
    RemoveClientKey {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
    },
    /// Print an identity's role and keys.
    ///
    /// Example: ehrchain identity show --api https://127.0.0.1:8700 --key-file dr-bauer.key
    Show {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking (by default the shown identity itself).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        key_file: PathBuf,
    },
}

pub use ehrchain_client::Signer;

/// The signing identity of a key file.
pub fn load_signer(path: &std::path::Path) -> Result<Signer> {
    Ok(Signer::from_seed(&crate::config::read_seed(path)?))
}

/// A node's API with the chain id and each signer's next nonce, over the CLI's HTTP agent
/// (`ehrchain_client::Session`).
pub type Session = ehrchain_client::Session<crate::client::Http>;

fn id16(text: &str, what: &str) -> Result<[u8; 16]> {
    ehrchain_types::id_from_hex(text).with_context(|| format!("{what} must be 32 hex characters"))
}

fn key32(value: &Value, what: &str) -> Result<EncryptionPublicKey> {
    let text = value.as_str().with_context(|| format!("no {what}"))?;
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{what} is not 64 hex characters"))?;
    Ok(EncryptionPublicKey(bytes))
}

pub(crate) fn random16() -> [u8; 16] {
    ehrchain_client::random16().expect("the operating system's random source")
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use ehrchain_client::record::{Checked, Prepared};

/// Validate a FHIR resource; an invalid one is refused with its OperationOutcome.
pub fn check(json: &[u8]) -> Result<Checked<'_>> {
    Ok(ehrchain_client::record::check(json)?)
}

/// Seal, wrap and sign one checked record version (`ehrchain_client::record::prepare`),
/// stamped with this machine's clock.
pub fn prepare(
    chain_id: u64,
    author: &Signer,
    nonce: u64,
    checked: &Checked<'_>,
    record: Option<[u8; 16]>,
    version: u32,
    readers: &[EncryptionPublicKey],
) -> Result<Prepared> {
    let write = ehrchain_client::record::Write {
        chain_id,
        nonce,
        record,
        version,
        timestamp_ms: now_ms(),
    };
    Ok(ehrchain_client::record::prepare(
        author, checked, &write, readers,
    )?)
}

/// The readers a new record version is wrapped for, as the chain states the rule
/// (`GET /patients/{id}/readers`, asked as the author): the patient, the author's institution
/// and the author, and (given the resource type) every grantee whose active grant covers
/// reads of that type.
pub fn readers_for(
    api: &str,
    author: &Signer,
    patient: &[u8; 16],
    resource_type: u8,
    record: Option<&[u8; 16]>,
) -> Result<Vec<EncryptionPublicKey>> {
    let record = record.map_or(String::new(), |r| format!("&record={}", hex::encode(r)));
    let url = format!(
        "{api}/patients/{}/readers?type={resource_type}{record}",
        hex::encode(patient)
    );
    let token = crate::client::token_for(api, &author.seed)?;
    let response = crate::client::agent()
        .get(&url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    if response.status() == 403 {
        // Not a writer of this record: the chain will refuse (and record) the attempt, and
        // nothing of it is stored, so the version is wrapped for its author alone.
        return Ok(vec![author.encryption.public()]);
    }
    let answer = answer(&url, response)?;
    answer["readers"]
        .as_array()
        .context("no readers in the answer")?
        .iter()
        .map(|key| key32(key, "reader encryption key"))
        .collect()
}

fn upload_and_wait(session: &Session, prepared: &Prepared) -> Result<Value> {
    post_bytes(&format!("{}/records", session.api), prepared.upload.clone())?;
    Ok(session.wait(&hex::encode(prepared.transaction.id()))?)
}

fn latest_version(api: &str, record: &[u8; 16]) -> Result<Option<u32>> {
    let url = format!("{api}/records/{}", hex::encode(record));
    let response = crate::client::get_request(&url)?
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    if response.status() == 404 {
        return Ok(None);
    }
    let history = answer(&url, response)?;
    Ok(history["versions"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v["version"].as_u64())
        .map(|v| v as u32))
}

pub(crate) fn get_bytes(url: &str) -> Result<Vec<u8>> {
    let mut response = crate::client::get_request(url)?
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        bail!(
            "{url}: {status}: {}",
            body["error"].as_str().unwrap_or("no detail")
        );
    }
    let bytes = response
        .body_mut()
        .with_config()
        .limit(ehrchain_types::wire::UPLOAD_BYTES_MAX as u64)
        .read_to_vec()?;
    Ok(bytes)
}

/// Fetch a version's envelope and check it against the on-chain hash.
fn fetch_checked(api: &str, record: &[u8; 16], version: Option<u32>) -> Result<(Value, Vec<u8>)> {
    let history = get_json(&format!("{api}/records/{}", hex::encode(record)))?;
    let versions = history["versions"].as_array().context("no versions")?;
    let entry = match version {
        Some(v) => versions
            .iter()
            .find(|e| e["version"].as_u64() == Some(u64::from(v))),
        None => versions.last(),
    }
    .context("no such version")?
    .clone();
    let number = entry["version"].as_u64().context("no version")?;
    if entry["ciphertext_size"].as_u64() == Some(0) {
        bail!(
            "version {number} of this record is a delete (FHIR DELETE): it has no content; read an earlier version"
        );
    }
    let envelope = get_bytes(&format!(
        "{api}/records/{}/{number}/envelope",
        hex::encode(record)
    ))?;
    let anchored =
        digest_from_hex(entry["ciphertext_hash"].as_str().unwrap_or("")).context("bad hash")?;
    ensure!(
        sha256(&[&envelope]) == anchored,
        "the envelope served does not match its on-chain hash: refusing it"
    );
    let mut entry = entry;
    entry["patient"] = history["patient"].clone();
    Ok((entry, envelope))
}

pub fn record(command: RecordCommand) -> Result<ExitCode> {
    let (RecordCommand::Put { api, key, .. }
    | RecordCommand::Get { api, key, .. }
    | RecordCommand::History { api, key, .. }
    | RecordCommand::Verify { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    match command {
        RecordCommand::Put {
            api,
            key,
            file,
            record,
            readers,
        } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let author = crate::records::load_signer(&key)?;
            let json =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let record = record.as_deref().map(|r| id16(r, "--record")).transpose()?;
            let version = match record {
                Some(r) => {
                    latest_version(&session.api, &r)?.context("no such record to update")? + 1
                }
                None => 1,
            };
            let checked = check(&json)?;
            let mut wrap_for = readers_for(
                &session.api,
                &author,
                &checked.patient,
                checked.resource_type.code(),
                record.as_ref(),
            )?;
            for reader in &readers {
                wrap_for.push(key32(&Value::from(reader.as_str()), "--reader")?);
            }
            let nonce = session.nonce(&author.public)?;
            let prepared = prepare(
                session.chain_id,
                &author,
                nonce,
                &checked,
                record,
                version,
                &wrap_for,
            )?;
            let status = upload_and_wait(&session, &prepared)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "record": hex::encode(prepared.record),
                    "version": prepared.version,
                    "transaction": hex::encode(prepared.transaction.id()),
                    "height": status["height"],
                }))?
            );
        }
        RecordCommand::Get {
            api,
            key,
            record,
            version,
            purpose,
        } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let api = session.api.as_str();
            let reader = crate::records::load_signer(&key)?;
            let record = id16(&record, "--record")?;
            let purpose = ehrchain_contracts::consent::Purpose::from_code(&purpose)
                .with_context(|| format!("unknown purpose {purpose}"))?;
            let access = crate::access::record_reads(&session, &reader, &[record], purpose)?
                .pop()
                .context("no access transaction")?;
            let event = get_json(&format!("{api}/access/events/{access}"))?;
            ensure!(
                event["outcome"] == "allowed",
                "access was denied: {} (recorded in transaction {access})",
                event["reason"].as_str().unwrap_or("no reason given")
            );
            let (entry, envelope) = fetch_checked(api, &record, version)?;
            let number = entry["version"].as_u64().context("no version")? as u32;
            let wrap = crate::access::fetch_wrap(api, &record, number, &reader, &access)
                .with_context(|| format!("the read was recorded (transaction {access})"))?;
            let patient = id16(entry["patient"].as_str().unwrap_or(""), "patient")?;
            let binding = Binding {
                record,
                version: number,
                patient,
            };
            let plain =
                ehrchain_crypto::open_for(&binding, &envelope, &[wrap], &reader.encryption)?;
            use std::io::Write;
            std::io::stdout().write_all(&plain)?;
            println!();
        }
        RecordCommand::History { api, record, .. } => {
            let record = id16(&record, "--record")?;
            let history = get_json(&format!(
                "{}/records/{}",
                api.trim_end_matches('/'),
                hex::encode(record)
            ))?;
            println!("{}", serde_json::to_string_pretty(&history)?);
        }
        RecordCommand::Verify {
            api,
            record,
            version,
            ..
        } => {
            let record = id16(&record, "--record")?;
            match fetch_checked(api.trim_end_matches('/'), &record, version) {
                Ok((entry, envelope)) => println!(
                    "match: version {} of record {} ({} bytes) has SHA-256 {} as anchored in transaction {} at height {}",
                    entry["version"],
                    hex::encode(record),
                    envelope.len(),
                    entry["ciphertext_hash"].as_str().unwrap_or(""),
                    entry["transaction"].as_str().unwrap_or(""),
                    entry["height"]
                ),
                Err(error) => {
                    println!("mismatch: {error:#}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Make a new key file at `out`, have the holder of key file `key` (an institution, a patient,
/// a guardian, or the identity itself) sign the payload `register` builds for it, and wait
/// until that is final.
/// A public JWK file (RS384 or ES384), read and checked here first (its size too) for a
/// precise message; every validator checks it again.
pub(crate) fn read_client_jwk(
    path: &std::path::Path,
) -> Result<(Vec<u8>, ehrchain_crypto::jwk::ClientJwk)> {
    let text =
        std::fs::read(path).with_context(|| format!("cannot read the JWK {}", path.display()))?;
    let parsed = ehrchain_crypto::jwk::ClientJwk::parse(&text)
        .with_context(|| format!("{} is not a client key we accept", path.display()))?;
    Ok((text, parsed))
}

fn register_new(
    api: &str,
    key: &std::path::Path,
    out: &std::path::Path,
    register: impl FnOnce(&Signer) -> ehrchain_types::Payload,
) -> Result<Signer> {
    let session = Session::open(crate::client::Http::AS_CURRENT, api)?;
    let institution = crate::records::load_signer(key)?;
    let seed = crate::config::random_seed();
    let new = Signer::from_seed(&seed);
    crate::config::write_key(out, &seed)?;
    session.send(&institution, register(&new))?;
    Ok(new)
}

pub fn patient(command: PatientCommand) -> Result<ExitCode> {
    let (PatientCommand::Register { api, key, .. }
    | PatientCommand::Erase { api, key, .. }
    | PatientCommand::Show { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    match command {
        PatientCommand::Register {
            api,
            key,
            out,
            custody,
        } => {
            let patient = random16();
            let out = match (out, custody) {
                (Some(out), _) => out,
                (None, Some(dir)) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    dir.join(format!("{}.key", hex::encode(patient)))
                }
                (None, None) => bail!("give --out or --custody"),
            };
            register_new(&api, &key, &out, |new| {
                ehrchain_types::Payload::RegisterPatient {
                    patient,
                    key: new.public.clone(),
                    encryption_key: new.encryption.public().0,
                }
            })?;
            println!("{}", hex::encode(patient));
        }
        PatientCommand::Erase { api, key, patient } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let signer = crate::records::load_signer(&key)?;
            let patient = id16(&patient, "--patient")?;
            let (tx, status) =
                session.send(&signer, ehrchain_types::Payload::ErasePatient { patient })?;
            println!(
                "erased: patient {} at height {} (transaction {})",
                hex::encode(patient),
                status["height"],
                hex::encode(tx.id())
            );
        }
        PatientCommand::Show { api, patient, .. } => {
            let patient = id16(&patient, "--patient")?;
            let entry = get_json(&format!(
                "{}/patients/{}",
                api.trim_end_matches('/'),
                hex::encode(patient)
            ))?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn identity(command: IdentityCommand) -> Result<ExitCode> {
    let (IdentityCommand::Enroll { api, key, .. }
    | IdentityCommand::Guardian { api, key, .. }
    | IdentityCommand::Rotate { api, key, .. }
    | IdentityCommand::Recover { api, key, .. }
    | IdentityCommand::Remove { api, key, .. }
    | IdentityCommand::AddClientKey { api, key, .. }
    | IdentityCommand::RemoveClientKey { api, key, .. }
    | IdentityCommand::Show {
        api,
        key: Some(key),
        ..
    }
    | IdentityCommand::Show {
        api,
        key: None,
        key_file: key,
    }) = &command;
    crate::client::use_key(api, key)?;
    match command {
        IdentityCommand::Enroll {
            api,
            key,
            out,
            custody,
        } => {
            let clinician = register_new(&api, &key, &out, |new| {
                ehrchain_types::Payload::EnrollClinician {
                    clinician: new.public.clone(),
                    encryption_key: new.encryption.public().0,
                }
            })?;
            if let Some(dir) = custody {
                ehrchain_api::gateway::write_secret(
                    &dir.join(format!("{}.enc", clinician.public)),
                    &clinician.encryption.secret_bytes(),
                )?;
            }
            println!("{}", clinician.public);
        }
        IdentityCommand::Guardian {
            api,
            key,
            patient,
            out,
        } => {
            let patient = id16(&patient, "--patient")?;
            let guardian = register_new(&api, &key, &out, |new| {
                ehrchain_types::Payload::AppointGuardian {
                    patient,
                    guardian: new.public.clone(),
                    encryption_key: new.encryption.public().0,
                }
            })?;
            println!("{}", guardian.public);
        }
        IdentityCommand::Rotate { api, key, out } => {
            let new = register_new(&api, &key, &out, |new| ehrchain_types::Payload::RotateKey {
                new_key: new.public.clone(),
                encryption_key: new.encryption.public().0,
            })?;
            println!("{}", new.public);
        }
        IdentityCommand::Recover {
            api,
            key,
            patient,
            out,
        } => {
            let patient = id16(&patient, "--patient")?;
            let new = register_new(&api, &key, &out, |new| {
                ehrchain_types::Payload::RecoverKey {
                    patient,
                    new_key: new.public.clone(),
                    encryption_key: new.encryption.public().0,
                }
            })?;
            println!("{}", new.public);
        }
        IdentityCommand::Remove {
            api,
            key,
            clinician,
        } => {
            let clinician = ehrchain_types::public_key_from_hex(&clinician)
                .context("--clinician must be a 64-hex-character public key")?;
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let institution = crate::records::load_signer(&key)?;
            let (tx, status) = session.send(
                &institution,
                ehrchain_types::Payload::RemoveClinician {
                    clinician: clinician.clone(),
                },
            )?;
            println!(
                "removed: clinician {clinician} at height {} (transaction {})",
                status["height"],
                hex::encode(tx.id())
            );
        }
        IdentityCommand::AddClientKey { api, key, jwk } => {
            let (text, parsed) = read_client_jwk(&jwk)?;
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let signer = crate::records::load_signer(&key)?;
            let (tx, status) = session.send(
                &signer,
                ehrchain_types::Payload::RegisterClientKey { jwk: text },
            )?;
            println!(
                "registered: client key {} ({}) at height {} (transaction {})",
                parsed.kid,
                parsed.key.alg(),
                status["height"],
                hex::encode(tx.id())
            );
        }
        IdentityCommand::RemoveClientKey { api, key, kid } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let signer = crate::records::load_signer(&key)?;
            let (tx, status) = session.send(
                &signer,
                ehrchain_types::Payload::RemoveClientKey { kid: kid.clone() },
            )?;
            println!(
                "removed: client key {kid} at height {} (transaction {})",
                status["height"],
                hex::encode(tx.id())
            );
        }
        IdentityCommand::Show { api, key_file, .. } => {
            let signer = crate::records::load_signer(&key_file)?;
            let entry = get_json(&format!(
                "{}/identities/{}",
                api.trim_end_matches('/'),
                signer.public
            ))?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
