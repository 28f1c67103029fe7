//! Encrypted records over HTTP: upload an envelope with its anchor, read versions, envelopes
//! and wrapped keys. Everything here is ciphertext or pseudonymous metadata; plaintext never
//! passes through these routes.
//!
//! Upload body (`POST /records`, `application/octet-stream`):
//! ```text
//! tx_len u32 | transaction [tx_len] | wrap_count u16 | wraps [wrap_count x 112] | envelope [rest]
//! ```

use crate::{ApiError, ApiState, Result, submit_error};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use commonware_runtime::Blob;
use ehrchain_contracts::facts::{PatientEntry, RecordVersion, Role};
use ehrchain_contracts::state::Reader as _;
use ehrchain_crypto::{Wrap, envelope_hash};
use ehrchain_types::{Payload, Transaction, public_key_from_hex};
use serde_json::{Value, json};
use std::sync::Arc;

pub use ehrchain_types::wire::{UPLOAD_BYTES_MAX, UPLOAD_WRAPS_MAX, Upload};

pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route(
            "/records",
            post(upload::<B>).layer(DefaultBodyLimit::max(UPLOAD_BYTES_MAX)),
        )
        .route("/records/{record}", get(history::<B>))
        .route("/records/{record}/{version}/envelope", get(envelope::<B>))
        .route(
            "/records/{record}/{version}/wraps/{recipient}",
            get(wrap::<B>),
        )
        .route("/patients/{patient}", get(patient::<B>))
        .route("/patients/{patient}/readers", get(readers::<B>))
        .route("/identities/{key}", get(identity::<B>))
}

fn id16(text: &str, what: &str) -> Result<[u8; 16]> {
    ehrchain_types::id_from_hex(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} must be 32 hex characters"),
        )
    })
}

fn bad(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Stage an upload, then submit its anchor. If the anchor is refused the upload is dropped:
/// no blob without an anchor. Only a final anchor moves it into the store.
async fn upload<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let upload = Upload::decode(&body).map_err(bad)?;
    let tx = Transaction::decode(&upload.transaction)
        .map_err(|e| submit_error(&ehrchain_chain::SubmitError::Invalid(e)))?;
    let Payload::RecordAnchor(anchor) = &tx.body.payload else {
        return Err(bad("the transaction of an upload must be a record anchor"));
    };
    if anchor.ciphertext_size != upload.envelope.len() as u64
        || envelope_hash(&upload.envelope)
            != <[u8; 32]>::try_from(anchor.ciphertext_hash.as_ref()).expect("32")
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the envelope does not match the hash and size in its anchor",
        ));
    }
    let hash = state
        .store
        .stage(&upload.envelope, &upload.wraps)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot stage an upload");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the blob store is unavailable",
            )
        })?;
    match state.chain.submit(&upload.transaction) {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "hash": hex::encode(id),
                "record": hex::encode(anchor.record),
                "version": anchor.version,
                "ciphertext_hash": hex::encode(hash),
                "status": "pending",
            })),
        )),
        Err(error) => {
            if let Err(error) = state.store.unstage(&hash) {
                tracing::error!(%error, "cannot drop a refused upload");
            }
            Err(submit_error(&error))
        }
    }
}

fn version_json(v: &RecordVersion) -> Value {
    json!({
        "version": v.anchor.version,
        "resource_type": v.anchor.resource_type,
        "ciphertext_hash": hex::encode(v.anchor.ciphertext_hash),
        "ciphertext_size": v.anchor.ciphertext_size,
        "timestamp_ms": v.anchor.timestamp_ms,
        "author": v.author.to_string(),
        "height": v.height,
        "transaction": hex::encode(v.transaction),
    })
}

/// The versions of a record and the patient's entry, or the HTTP error for a missing or
/// erased record.
fn lookup<B: Blob>(
    state: &ApiState<B>,
    record: &[u8; 16],
) -> Result<(Vec<RecordVersion>, PatientEntry)> {
    let (versions, patient) = state.chain.read(|s| {
        let versions = s.versions(record);
        let patient = versions.first().and_then(|v| s.patient(&v.anchor.patient));
        (versions, patient)
    });
    let patient = patient.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such record"))?;
    Ok((versions, patient))
}

/// The envelope hash of a record version that may still be read (404 unknown, 410 erased).
fn live_hash<B: Blob>(state: &ApiState<B>, record: &str, version: u32) -> Result<[u8; 32]> {
    let record = id16(record, "record id")?;
    let (versions, patient) = lookup(state, &record)?;
    if patient.erased_height.is_some() {
        return Err(gone());
    }
    Ok(pick(&versions, version)?
        .anchor
        .ciphertext_hash
        .as_ref()
        .try_into()
        .expect("32-byte digest"))
}

fn gone() -> ApiError {
    ApiError::new(StatusCode::GONE, "the patient's records were erased")
}

async fn history<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(record): Path<String>,
) -> Result<Json<Value>> {
    let record = id16(&record, "record id")?;
    see_record(&state, &caller, &record)?;
    let (versions, patient) = lookup(&state, &record)?;
    Ok(Json(json!({
        "record": hex::encode(record),
        "patient": hex::encode(versions[0].anchor.patient),
        "erased_height": patient.erased_height,
        "versions": versions.iter().map(version_json).collect::<Vec<_>>(),
    })))
}

fn pick(versions: &[RecordVersion], version: u32) -> Result<&RecordVersion> {
    versions
        .iter()
        .find(|v| v.anchor.version == version)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such version"))
}

/// 403 unless `caller` may see `record` (`auth::may_see_record`).
fn see_record<B: Blob>(
    state: &ApiState<B>,
    caller: &crate::auth::Caller,
    record: &[u8; 16],
) -> Result<()> {
    if state
        .chain
        .read(|s| crate::auth::may_see_record(s, caller, record))
    {
        Ok(())
    } else {
        Err(crate::auth::forbidden(
            "a record is shown to those the consent contract lets read it, and to auditors",
        ))
    }
}

async fn envelope<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path((record, version)): Path<(String, u32)>,
) -> Result<Response> {
    see_record(&state, &caller, &id16(&record, "record id")?)?;
    let hash = live_hash(&state, &record, version)?;
    match state.store.get(&hash).await {
        Ok(Some((bytes, _))) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node does not hold the envelope yet; retry shortly or ask another node",
        )),
        Err(error) => {
            tracing::error!(%error, "blob store read failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the blob store is unavailable",
            ))
        }
    }
}

/// How long (in block time) an allowed access event releases keys.
pub const ACCESS_RELEASE_MS: u64 = 10 * 60 * 1_000;

/// Query of a key request: the access transaction that recorded the read.
#[derive(Debug, serde::Deserialize)]
pub struct KeyQuery {
    access: Option<String>,
}

/// Check that `access` names a final, allowed, recent access event of the holder of
/// `recipient` on `record`. Keys are released only then.
fn check_access<B: Blob>(
    state: &ApiState<B>,
    caller: &crate::auth::Caller,
    record: &[u8; 16],
    recipient: &[u8; 32],
    access: Option<&str>,
) -> Result<()> {
    let forbidden = |message: &str| ApiError::new(StatusCode::FORBIDDEN, message);
    let access = access.ok_or_else(|| {
        forbidden("a key is released only against a final access transaction: pass ?access=<hash>")
    })?;
    let id = ehrchain_types::digest_from_hex(access)
        .ok_or_else(|| bad("access must be a 64-hex-character transaction hash"))?;
    let location = state
        .chain
        .location(&id)
        .ok_or_else(|| forbidden("the access transaction is not final"))?;
    state.chain.read(|s| {
        let event = s
            .event(location.height, location.index)
            .ok_or_else(|| forbidden("that transaction is not an access"))?;
        if event.record.map(|(r, _)| r) != Some(*record) {
            return Err(forbidden("the access transaction is for another record"));
        }
        if let ehrchain_contracts::facts::Outcome::Denied(reason) = event.outcome {
            return Err(forbidden(&format!("access was denied: {}", reason.code())));
        }
        if event.actor != caller.identity {
            return Err(forbidden("the access transaction is someone else's"));
        }
        let actor = s
            .identity(&event.actor)
            .ok_or_else(|| forbidden("unknown actor"))?;
        if &actor.encryption_key != recipient {
            return Err(forbidden(
                "the key is asked for someone other than the reader",
            ));
        }
        if event.time_ms.saturating_add(ACCESS_RELEASE_MS) < s.time_ms() {
            return Err(forbidden(
                "the access transaction is too old; record a new one",
            ));
        }
        Ok(())
    })
}

async fn wrap<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path((record, version, recipient)): Path<(String, u32, String)>,
    axum::extract::Query(query): axum::extract::Query<KeyQuery>,
) -> Result<Response> {
    let recipient: [u8; 32] = hex::decode(&recipient)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("recipient must be a 64-hex-character X25519 public key"))?;
    let record_id = id16(&record, "record id")?;
    check_access(
        &state,
        &caller,
        &record_id,
        &recipient,
        query.access.as_deref(),
    )?;
    let hash = live_hash(&state, &record, version)?;
    let wraps = match state.store.get(&hash).await {
        Ok(Some((_, wraps))) => wraps,
        Ok(None) => Vec::new(),
        Err(error) => {
            tracing::error!(%error, "blob store read failed");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the blob store is unavailable",
            ));
        }
    };
    let rewrapped;
    let wrap = match wraps.iter().find(|w| w.recipient.0 == recipient) {
        Some(wrap) => wrap,
        None => {
            rewrapped = rewrap(&state, &record_id, version, &hash, &wraps, &recipient)?;
            &rewrapped
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        wrap.encode().to_vec(),
    )
        .into_response())
}

/// Release a key held by this node's institution to an allowed reader who has no wrap of
/// their own (a clinician under a grant to their institution, or under break-glass): unwrap
/// with the institution's key and wrap for the reader. The plaintext data key exists only in
/// this function's memory.
fn rewrap<B: Blob>(
    state: &ApiState<B>,
    record: &[u8; 16],
    version: u32,
    hash: &[u8; 32],
    wraps: &[Wrap],
    recipient: &[u8; 32],
) -> Result<Wrap> {
    let none = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no key is wrapped for this reader here; ask the node of an institution that holds one",
        )
    };
    let patient = state
        .chain
        .read(|s| s.latest(record).map(|v| v.anchor.patient))
        .ok_or_else(none)?;
    // The keys this node holds: its institution's, and a custodial patient's.
    let custodial = state.custody_dir.as_ref().and_then(|dir| {
        let text =
            std::fs::read_to_string(dir.join(format!("{}.key", hex::encode(patient)))).ok()?;
        let seed: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(ehrchain_crypto::EncryptionKey::from_seed(&seed))
    });
    let held_keys: Vec<&ehrchain_crypto::EncryptionKey> = state
        .institution_key
        .iter()
        .chain(custodial.iter())
        .collect();
    let (held, key) = held_keys
        .iter()
        .find_map(|k| {
            wraps
                .iter()
                .find(|w| w.recipient == k.public())
                .map(|w| (w, k))
        })
        .ok_or_else(none)?;
    let binding = ehrchain_crypto::Binding {
        record: *record,
        version,
        patient,
    };
    let internal = |error: ehrchain_crypto::Error| {
        tracing::error!(%error, "cannot re-wrap a key held by this institution");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot release the key")
    };
    let data_key = ehrchain_crypto::unwrap(held, key, &binding, hash).map_err(internal)?;
    ehrchain_crypto::wrap(
        &data_key,
        &ehrchain_crypto::EncryptionPublicKey(*recipient),
        &binding,
        hash,
    )
    .map_err(internal)
}

async fn patient<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(patient): Path<String>,
) -> Result<Json<Value>> {
    let id = id16(&patient, "patient id")?;
    if !crate::auth::may_see_patient(&caller, &id) {
        return Err(crate::auth::forbidden(
            "a patient's registration is shown to the patient, their guardians, auditors, \
             institutions and clinicians",
        ));
    }
    let found = state.chain.read(|s| {
        let entry = s
            .patients()
            .find(|(p, _)| **p == id)
            .map(|(_, e)| e.clone())?;
        let home = s
            .identities()
            .find(|(k, _)| **k == entry.home)
            .map(|(_, i)| i.encryption_key);
        // Only the records this caller may see are listed.
        let records: Vec<[u8; 16]> = s
            .patient_records(&id)
            .into_iter()
            .filter(|r| crate::auth::may_see_record(s, &caller, r))
            .collect();
        Some((entry, home, records))
    });
    let (entry, home_key, records) =
        found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown patient"))?;
    Ok(Json(json!({
        "patient": hex::encode(id),
        "key": entry.key.to_string(),
        "encryption_key": hex::encode(entry.encryption_key),
        "home": entry.home.to_string(),
        "home_encryption_key": home_key.map(hex::encode),
        "registered_height": entry.registered_height,
        "erased_height": entry.erased_height,
        "records": records.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

#[derive(serde::Deserialize)]
struct ReadersQuery {
    /// The resource type number of the version to be written.
    #[serde(rename = "type")]
    resource_type: u8,
    /// The record a new version is for; a new record when absent.
    record: Option<String>,
}

/// `GET /patients/{id}/readers?type=N[&record=R]`: the X25519 keys a new version of this
/// patient's record R (or a new record) of type N, written by the caller, must be wrapped for
/// (`access::wrap_readers`). Only someone who may write it asks.
async fn readers<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(patient): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ReadersQuery>,
) -> Result<Json<Value>> {
    use ehrchain_contracts::access::ReadersError;
    let id = id16(&patient, "patient id")?;
    let record = query
        .record
        .as_deref()
        .map(|r| id16(r, "record id"))
        .transpose()?;
    let keys = state
        .chain
        .read(|s| {
            ehrchain_contracts::access::wrap_readers_for_writer(
                s,
                &caller.identity,
                &id,
                query.resource_type,
                record.as_ref(),
            )
        })
        .map_err(|error| match error {
            ReadersError::UnknownPatient => ApiError::new(StatusCode::NOT_FOUND, "unknown patient"),
            ReadersError::Erased => gone(),
            ReadersError::NotAWriter => crate::auth::forbidden(
                "the readers of a record are shown to those who may write it",
            ),
        })?;
    Ok(Json(json!({
        "patient": hex::encode(id),
        "readers": keys.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

async fn identity<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    let key = public_key_from_hex(&key)
        .ok_or_else(|| bad("key must be a 64-hex-character Ed25519 public key"))?;
    let found = state.chain.read(|s| {
        let identity = s
            .identities()
            .find(|(k, _)| **k == key)
            .map(|(_, i)| i.clone())?;
        let institution_key = match &identity.role {
            Role::Clinician { institution } => s
                .identities()
                .find(|(k, _)| *k == institution)
                .map(|(_, i)| i.encryption_key),
            _ => None,
        };
        use ehrchain_contracts::state::Reader as _;
        Some((
            identity,
            institution_key,
            s.retired(&key),
            s.client_keys(&key),
        ))
    });
    let (identity, institution_key, retired_height, client_keys) =
        found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown identity"))?;
    let mut answer = json!({
        "key": key.to_string(),
        "role": identity.role.name(),
        "encryption_key": hex::encode(identity.encryption_key),
        // Set once the key was rotated away, removed by its institution or by governance.
        "retired_height": retired_height,
        // The keys it may also sign client assertions with (SMART Backend Services).
        "client_keys": client_keys
            .iter()
            .map(|k| json!({"kid": k.kid, "alg": k.key.alg()}))
            .collect::<Vec<_>>(),
    });
    match identity.role {
        Role::Clinician { institution } => {
            answer["institution"] = json!(institution.to_string());
            answer["institution_encryption_key"] = json!(institution_key.map(hex::encode));
        }
        Role::Patient { patient } | Role::Guardian { patient } => {
            answer["patient"] = json!(hex::encode(patient))
        }
        Role::Institution | Role::Auditor => {}
    }
    Ok(Json(answer))
}
