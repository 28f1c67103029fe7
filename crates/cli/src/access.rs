//! `ehrchain consent|access|breakglass`: consent grants and revocations, the access trail,
//! supervision findings and emergency access, from the client side.
//!
//! A patient's grant carries a share bundle: the client reads (and records reading) each
//! covered record version, unwraps the data key with the patient's key, and wraps it for the
//! grantee. The nodes never see a data key in the clear.

use crate::{
    client::{get_json, post_bytes},
    records::{Session, Signer},
};
use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use ehrchain_contracts::consent::Purpose;
use ehrchain_crypto::{EncryptionPublicKey, Share, Wrap};
use ehrchain_types::{ConsentGrant, Digest, Payload, Transaction, public_key_from_hex};
use serde_json::{Value, json};
use std::{path::PathBuf, process::ExitCode};

#[derive(Subcommand)]
pub enum ConsentCommand {
    /// Give a clinician or an institution access to the patient's records, signed by the
    /// patient (or a guardian). With the patient's own key, the data keys of the covered
    /// existing records are wrapped for the grantee; new records are wrapped for it by their
    /// authors while the grant is active.
    ///
    /// Example: ehrchain consent grant --api https://127.0.0.1:8700 --key alice.key --patient <id> --grantee <key> --purpose TREAT --days 30
    Grant {
        #[arg(long)]
        api: String,
        /// The patient's (or guardian's) key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
        /// The grantee's Ed25519 public key (hex): a clinician or an institution.
        #[arg(long)]
        grantee: String,
        /// FHIR consentaction codes: access (read), correct (write).
        #[arg(long = "action", default_value = "access")]
        actions: Vec<String>,
        /// FHIR resource types covered (e.g. Observation); all when absent.
        #[arg(long = "type")]
        types: Vec<String>,
        /// v3-ActReason purposes (TREAT, ETREAT, HRESCH, HPAYMT, HOPERAT); any when absent.
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// Validity from now, in days.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Validity from now, in seconds (instead of --days).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Revoke a grant: reads under it are refused and the grantee's keys are deleted on every
    /// node.
    ///
    /// Example: ehrchain consent revoke --api https://127.0.0.1:8700 --key alice.key --patient <id> --grant <grant id>
    Revoke {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        grant: String,
    },
    /// List a patient's grants with their status (active, pending, expired, revoked).
    ///
    /// Example: ehrchain consent list --api https://127.0.0.1:8700 --patient <id>
    List {
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
pub enum AccessCommand {
    /// Print the access trail: a patient's (--patient), or everyone's (for the auditor).
    ///
    /// Example: ehrchain access log --api https://127.0.0.1:8700 --patient <id>
    Log {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        patient: Option<String>,
        /// Only entries after this height.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Print the supervision findings: denied attempts, break-glass, unusual read volume,
    /// attempts after revocation.
    ///
    /// Example: ehrchain access findings --api https://127.0.0.1:8700
    Findings {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum GovernanceCommand {
    /// Propose a change to the consortium, signed by a member institution (its own vote is
    /// yes). Exactly one of the change flags. Passes with more than 2/3 of the members.
    ///
    /// Example: ehrchain governance propose --api https://127.0.0.1:8700 --key net/node-0/validator.key --appoint-auditor <key>
    Propose {
        #[arg(long)]
        api: String,
        /// The proposing institution's key file.
        #[arg(long)]
        key: PathBuf,
        /// Admit a member institution: its Ed25519 public key (hex)...
        #[arg(long)]
        add_member: Option<String>,
        /// ...and its X25519 encryption key (hex).
        #[arg(long, requires = "add_member")]
        encryption_key: Option<String>,
        /// ...and the `ip:port` its validator's peers dial.
        #[arg(long, requires = "add_member")]
        p2p_address: Option<std::net::SocketAddr>,
        #[arg(long)]
        remove_member: Option<String>,
        #[arg(long)]
        appoint_auditor: Option<String>,
        #[arg(long)]
        remove_auditor: Option<String>,
    },
    /// Vote on an open proposal, as a member institution.
    ///
    /// Example: ehrchain governance vote --api https://127.0.0.1:8701 --key net/node-1/validator.key --proposal <id> --approve true
    Vote {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        proposal: String,
        /// true for yes, false for no.
        #[arg(long, action = clap::ArgAction::Set)]
        approve: bool,
    },
    /// List the members and every proposal with its votes and status.
    ///
    /// Example: ehrchain governance list --api https://127.0.0.1:8700
    List {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
    },
}

fn key_arg(text: &str, what: &str) -> Result<ehrchain_types::PublicKey> {
    public_key_from_hex(text)
        .with_context(|| format!("{what} must be a 64-hex-character Ed25519 public key"))
}

pub fn governance(command: GovernanceCommand) -> Result<ExitCode> {
    let (GovernanceCommand::Propose { api, key, .. }
    | GovernanceCommand::Vote { api, key, .. }
    | GovernanceCommand::List { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    use ehrchain_types::GovernanceAction as A;
    match command {
        GovernanceCommand::Propose {
            api,
            key,
            add_member,
            encryption_key,
            p2p_address,
            remove_member,
            appoint_auditor,
            remove_auditor,
        } => {
            let mut actions = Vec::new();
            if let Some(member) = add_member {
                let encryption_key: [u8; 32] = hex::decode(
                    encryption_key
                        .as_deref()
                        .context("--add-member needs --encryption-key")?,
                )
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--encryption-key must be 64 hex characters")?;
                actions.push(A::AddMember {
                    key: key_arg(&member, "--add-member")?,
                    encryption_key,
                    p2p_address: p2p_address.context("--add-member needs --p2p-address")?,
                });
            }
            if let Some(k) = remove_member {
                actions.push(A::RemoveMember {
                    key: key_arg(&k, "--remove-member")?,
                });
            }
            if let Some(k) = appoint_auditor {
                actions.push(A::AppointAuditor {
                    key: key_arg(&k, "--appoint-auditor")?,
                });
            }
            if let Some(k) = remove_auditor {
                actions.push(A::RemoveAuditor {
                    key: key_arg(&k, "--remove-auditor")?,
                });
            }
            ensure!(actions.len() == 1, "give exactly one change to propose");
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let member = crate::records::load_signer(&key)?;
            let proposal = crate::records::random16();
            let (tx, status) = session.send(
                &member,
                Payload::Propose {
                    proposal,
                    action: actions.remove(0),
                },
            )?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "proposal": hex::encode(proposal),
                    "transaction": hex::encode(tx.id()),
                    "height": status["height"],
                }))?
            );
        }
        GovernanceCommand::Vote {
            api,
            key,
            proposal,
            approve,
        } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let member = crate::records::load_signer(&key)?;
            let (tx, status) = session.send(
                &member,
                Payload::Vote {
                    proposal: id16(&proposal, "--proposal")?,
                    approve,
                },
            )?;
            println!(
                "voted {} on {proposal} at height {} (transaction {})",
                if approve { "yes" } else { "no" },
                status["height"],
                hex::encode(tx.id())
            );
        }
        GovernanceCommand::List { api, .. } => {
            let list = get_json(&format!(
                "{}/governance/proposals",
                api.trim_end_matches('/')
            ))?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Open a patient's records without consent, in an emergency. The access is time-boxed (24
/// hours unless genesis says otherwise), flagged on the patient's trail and reported to the
/// auditor. Reasons are codes: 1 emergency treatment (patient cannot consent), 2
/// life-threatening condition, 3 urgent continuity of care, 4 other.
///
/// Example: ehrchain breakglass --api https://127.0.0.1:8700 --key dr-bauer.key --patient <id> --reason 1
#[derive(clap::Args)]
pub struct BreakGlassArgs {
    #[arg(long)]
    api: String,
    /// The clinician's key file.
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    patient: String,
    #[arg(long)]
    reason: u8,
}

fn id16(text: &str, what: &str) -> Result<[u8; 16]> {
    ehrchain_types::id_from_hex(text).with_context(|| format!("{what} must be 32 hex characters"))
}

fn purpose(code: &str) -> Result<Purpose> {
    Purpose::from_code(code).with_context(|| {
        format!("unknown purpose {code}: use TREAT, ETREAT, HRESCH, HPAYMT, HOPERAT or PATRQT")
    })
}

/// Submit transactions as one batch (consecutive nonces) and wait for the last.
fn submit_all(session: &Session, transactions: &[Transaction]) -> Result<()> {
    let Some(last) = transactions.last() else {
        return Ok(());
    };
    let mut body = (transactions.len() as u32).to_be_bytes().to_vec();
    for tx in transactions {
        body.extend_from_slice(&(tx.bytes().len() as u32).to_be_bytes());
        body.extend_from_slice(tx.bytes());
    }
    let answer = post_bytes(&format!("{}/chain/transactions/batch", session.api), body)?;
    ensure!(
        answer["rejected"].as_array().is_none_or(|r| r.is_empty()),
        "some transactions were refused: {}",
        answer["rejected"]
    );
    session.wait(&hex::encode(last.id()))?;
    Ok(())
}

/// Record reads of `records` by `signer` (one access transaction each, in one batch) and
/// return the transaction hashes, in order.
pub fn record_reads(
    session: &Session,
    signer: &Signer,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Result<Vec<String>> {
    let mut attempt = 0;
    loop {
        match try_record_reads(session, signer, records, purpose) {
            // This node may not yet have committed the signer's last transaction, sent
            // through another node: its nonce is then still taken here. Ask again.
            Err(error) if attempt < 5 && crate::client::retryable(&error) => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            other => return other,
        }
    }
}

fn try_record_reads(
    session: &Session,
    signer: &Signer,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Result<Vec<String>> {
    let first = session.nonce(&signer.public)?;
    let transactions: Vec<Transaction> = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            signer.sign(
                session.chain_id,
                first + i as u64,
                Payload::Access {
                    record: *record,
                    purpose: purpose as u8,
                },
            )
        })
        .collect();
    for chunk in transactions.chunks(1_000) {
        submit_all(session, chunk)?;
    }
    Ok(transactions.iter().map(|t| hex::encode(t.id())).collect())
}

/// Fetch the data key of a version wrapped for `signer`, released against `access`.
pub fn fetch_wrap(
    api: &str,
    record: &[u8; 16],
    version: u32,
    signer: &Signer,
    access: &str,
) -> Result<Wrap> {
    let bytes = crate::records::get_bytes(&format!(
        "{api}/records/{}/{version}/wraps/{}?access={access}",
        hex::encode(record),
        signer.encryption.public().to_hex()
    ))?;
    Ok(Wrap::decode(&bytes)?)
}

/// Wrap the data keys of the patient's covered record versions for `grantee`.
fn build_share(
    session: &Session,
    owner: &Signer,
    patient: &[u8; 16],
    types: &[u8],
    grantee: &EncryptionPublicKey,
) -> Result<Share> {
    let entry = get_json(&format!(
        "{}/patients/{}",
        session.api,
        hex::encode(patient)
    ))?;
    let mut versions = Vec::new();
    for record in entry["records"].as_array().into_iter().flatten() {
        let record = id16(record.as_str().unwrap_or(""), "record id")?;
        let history = get_json(&format!("{}/records/{}", session.api, hex::encode(record)))?;
        for version in history["versions"].as_array().into_iter().flatten() {
            let resource_type = version["resource_type"].as_u64().unwrap_or(0) as u8;
            // A version with no content (a FHIR DELETE's tombstone) has no key to share.
            if (!types.is_empty() && !types.contains(&resource_type))
                || version["ciphertext_size"].as_u64() == Some(0)
            {
                continue;
            }
            let number = version["version"].as_u64().context("no version")? as u32;
            let hash: [u8; 32] = hex::decode(version["ciphertext_hash"].as_str().unwrap_or(""))
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("bad ciphertext hash")?;
            versions.push((record, number, hash));
        }
    }
    let mut records: Vec<[u8; 16]> = versions.iter().map(|v| v.0).collect();
    records.dedup();
    let reads = record_reads(session, owner, &records, Purpose::PatientRequest)?;
    let access: std::collections::HashMap<[u8; 16], String> =
        records.into_iter().zip(reads).collect();
    let versions = versions
        .into_iter()
        .map(|(record, version, hash)| {
            Ok(ehrchain_client::share::Version {
                record,
                version,
                hash,
                wrap: fetch_wrap(&session.api, &record, version, owner, &access[&record])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ehrchain_client::share::build(
        owner, patient, &versions, grantee,
    )?)
}

pub fn consent(command: ConsentCommand) -> Result<ExitCode> {
    let (ConsentCommand::Grant { api, key, .. }
    | ConsentCommand::Revoke { api, key, .. }
    | ConsentCommand::List { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    match command {
        ConsentCommand::Grant {
            api,
            key,
            patient,
            grantee,
            actions,
            types,
            purposes,
            days,
            seconds,
        } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let owner = crate::records::load_signer(&key)?;
            let patient = id16(&patient, "--patient")?;
            let grantee_key = public_key_from_hex(&grantee)
                .context("--grantee must be a 64-hex-character Ed25519 public key")?;
            let identity = get_json(&format!("{}/identities/{grantee}", session.api))?;
            let grantee_encryption = EncryptionPublicKey(
                hex::decode(identity["encryption_key"].as_str().unwrap_or(""))
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .context("the grantee has no encryption key")?,
            );
            let mut action_bits = 0u8;
            for action in &actions {
                action_bits |= match action.as_str() {
                    "access" => 1,
                    "correct" => 2,
                    other => bail!("unknown action {other}: use access or correct"),
                };
            }
            let mut type_codes = Vec::new();
            for name in &types {
                let t = ehrchain_fhir::ResourceType::from_name(name)
                    .with_context(|| format!("unsupported resource type {name}"))?;
                type_codes.push(t.code());
            }
            let purpose_codes = purposes
                .iter()
                .map(|p| purpose(p).map(|p| p as u8))
                .collect::<Result<Vec<_>>>()?;
            ensure!(
                type_codes.len() <= ehrchain_types::transaction::GRANT_LIST_MAX
                    && purpose_codes.len() <= ehrchain_types::transaction::GRANT_LIST_MAX,
                "too many types or purposes"
            );
            // Only the patient's own key can unwrap existing records; a guardian's grant
            // covers records written from now on.
            let is_patient = get_json(&format!("{}/identities/{}", session.api, owner.public))?["role"]
                == "patient";
            let share = if is_patient && action_bits & 1 != 0 {
                build_share(&session, &owner, &patient, &type_codes, &grantee_encryption)?
            } else {
                Share::default()
            };
            let share_bytes = if share.entries.is_empty() {
                Vec::new()
            } else {
                share.encode()
            };
            let share_hash = if share_bytes.is_empty() {
                Digest::from([0; 32])
            } else {
                Digest::from(ehrchain_crypto::envelope_hash(&share_bytes))
            };
            let now = crate::records::now_ms();
            let id = crate::records::random16();
            let tx = session.sign(
                &owner,
                Payload::Grant(ConsentGrant {
                    id,
                    patient,
                    grantee: grantee_key,
                    actions: action_bits,
                    types: type_codes,
                    purposes: purpose_codes,
                    valid_from_ms: now.saturating_sub(60_000),
                    valid_until_ms: now
                        + seconds.map_or(days.max(1) * 86_400_000, |s| s.max(1) * 1_000),
                    share: share_hash,
                }),
            )?;
            post_bytes(
                &format!("{}/consents", session.api),
                ehrchain_types::wire::encode_consent(tx.bytes(), &share_bytes),
            )?;
            let status = session.wait(&hex::encode(tx.id()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "grant": hex::encode(id),
                    "records_shared": share.entries.len(),
                    "transaction": hex::encode(tx.id()),
                    "height": status["height"],
                }))?
            );
        }
        ConsentCommand::Revoke {
            api,
            key,
            patient,
            grant,
        } => {
            let session = Session::open(crate::client::Http::AS_CURRENT, &api)?;
            let owner = crate::records::load_signer(&key)?;
            let (tx, status) = session.send(
                &owner,
                Payload::Revoke {
                    patient: id16(&patient, "--patient")?,
                    grant: id16(&grant, "--grant")?,
                },
            )?;
            println!(
                "revoked: grant {grant} at height {} (transaction {})",
                status["height"],
                hex::encode(tx.id())
            );
        }
        ConsentCommand::List { api, patient, .. } => {
            let patient = id16(&patient, "--patient")?;
            let list = get_json(&format!(
                "{}/patients/{}/consents",
                api.trim_end_matches('/'),
                hex::encode(patient)
            ))?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn after_query(after: Option<u64>) -> String {
    after.map_or(String::new(), |h| format!("?after={h}"))
}

pub fn access(command: AccessCommand) -> Result<ExitCode> {
    let (AccessCommand::Log { api, key, .. } | AccessCommand::Findings { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    let answer: Value = match command {
        AccessCommand::Log {
            api,
            patient,
            after,
            ..
        } => {
            let api = api.trim_end_matches('/');
            match patient {
                Some(patient) => get_json(&format!(
                    "{api}/patients/{}/access{}",
                    hex::encode(id16(&patient, "--patient")?),
                    after_query(after)
                ))?,
                None => get_json(&format!("{api}/access/events{}", after_query(after)))?,
            }
        }
        AccessCommand::Findings { api, after, .. } => get_json(&format!(
            "{}/access/findings{}",
            api.trim_end_matches('/'),
            after_query(after)
        ))?,
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

pub fn break_glass(args: BreakGlassArgs) -> Result<ExitCode> {
    crate::client::use_key(&args.api, &args.key)?;
    let session = Session::open(crate::client::Http::AS_CURRENT, &args.api)?;
    let clinician = crate::records::load_signer(&args.key)?;
    let (tx, status) = session.send(
        &clinician,
        Payload::BreakGlass {
            patient: id16(&args.patient, "--patient")?,
            reason: args.reason,
        },
    )?;
    println!(
        "break-glass open: patient {} from height {} (transaction {}); every read is flagged and reported",
        args.patient,
        status["height"],
        hex::encode(tx.id())
    );
    Ok(ExitCode::SUCCESS)
}
