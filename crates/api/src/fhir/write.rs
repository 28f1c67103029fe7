//! Writes: `create` and `update`, sealed here for the readers the contract names, anchored, and
//! answered once committed.

use super::{
    common::{Result, body_bytes, fhir_raw, forbidden, id16, invalid, role_of, unavailable},
    read::{present, resource_type, versions_of, with_version_headers},
};
use crate::{
    ApiError, ApiState, ambient::now_ms, gateway, session::Token, session::caller, submit::commit,
    submit::submit_as, submit::submit_staged,
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::{
    facts::{RecordVersion, Role},
    state::Reader as _,
};
use ehrchain_crypto::{Binding, EncryptionPublicKey};
use ehrchain_fhir::{ResourceType, operation_outcome};
use ehrchain_types::{Digest, Payload, PublicKey, RecordAnchor};
use std::sync::Arc;

/// The X25519 keys a new version of `patient`'s record of `kind` is wrapped for
/// (`access::wrap_readers`, the one statement of that rule).
pub(super) fn readers<B: Blob>(
    state: &ApiState<B>,
    author: &PublicKey,
    patient: &[u8; 16],
    kind: u8,
) -> Result<Vec<EncryptionPublicKey>> {
    use ehrchain_contracts::access::ReadersError;
    let keys = state
        .chain
        .read(|s| ehrchain_contracts::access::wrap_readers(s, author, patient, Some(kind)))
        .map_err(|error| match error {
            ReadersError::UnknownPatient => ApiError::fhir(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not-found",
                "the referenced patient is not registered",
            ),
            ReadersError::Erased => ApiError::fhir(
                StatusCode::GONE,
                "deleted",
                "the patient's records were erased",
            ),
            ReadersError::NotAWriter => {
                forbidden("only a clinician or an institution writes records")
            }
        })?;
    Ok(keys.into_iter().map(EncryptionPublicKey).collect())
}

/// Seal, store and anchor one version as the caller; wait for it to commit.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_version<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    json: &[u8],
) -> Result<RecordVersion> {
    let tx = submit_version(state, token, kind, patient, record, version, json).await?;
    committed_version(state, &tx, record, version).await
}

/// Wait for a submitted version to commit and return its on-chain facts.
pub(super) async fn committed_version<B: Blob>(
    state: &ApiState<B>,
    tx: &ehrchain_types::Transaction,
    record: [u8; 16],
    version: u32,
) -> Result<RecordVersion> {
    commit(state, tx).await?;
    state
        .chain
        .read(|s| s.versions(&record))
        .into_iter()
        .find(|v| v.anchor.version == version)
        .ok_or_else(|| {
            ApiError::fhir(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the committed version is missing",
            )
        })
}

/// Seal, stage and submit one version as the caller (not yet committed).
pub(super) async fn submit_version<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    json: &[u8],
) -> Result<ehrchain_types::Transaction> {
    let anchor = |hash: [u8; 32], size: usize| {
        Payload::RecordAnchor(RecordAnchor {
            record,
            version,
            patient,
            resource_type: kind.code(),
            ciphertext_hash: Digest::from(hash),
            ciphertext_size: size as u64,
            timestamp_ms: now_ms(),
        })
    };
    let readers = match readers(state, &token.identity, &patient, kind.code()) {
        Ok(readers) => readers,
        Err(refused) if refused.status == StatusCode::FORBIDDEN => {
            // A role that never writes (a patient, a guardian, an auditor): nothing is sealed;
            // an anchor of nothing goes to the chain, which refuses it and records the attempt.
            let tx = submit_as(state, token, anchor([0; 32], 0)).await?;
            commit(state, &tx).await?;
            return Err(refused);
        }
        Err(other) => return Err(other),
    };
    let binding = Binding {
        record,
        version,
        patient,
    };
    let (envelope, hash, wraps) =
        ehrchain_crypto::seal_for(&binding, json, &readers).map_err(|_| {
            ApiError::fhir(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too-long",
                "the record cannot be sealed (too large?)",
            )
        })?;
    let staged = state
        .store
        .stage(&envelope, &wraps)
        .await
        .map_err(unavailable)?;
    let tx = submit_staged(state, token, anchor(hash, envelope.len()), Some(staged)).await?;
    Ok(tx)
}

/// Validate a body as a resource of `kind`; invalid input gets its OperationOutcome.
pub(super) fn check(kind: ResourceType, bytes: &[u8]) -> Result<ehrchain_fhir::Resource> {
    let resource = ehrchain_fhir::validate(bytes).map_err(|issues| {
        let parse_error = issues
            .iter()
            .any(|i| i.code == "structure" && i.expression.is_empty());
        ApiError::fhir(
            if parse_error {
                StatusCode::BAD_REQUEST
            } else if issues.iter().any(|i| i.code == "too-long") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            },
            "invalid",
            "",
        )
        .with_issues(operation_outcome(&issues))
    })?;
    if resource.resource_type != kind {
        return Err(invalid(&format!(
            "the body is a {}, not a {}",
            resource.resource_type.name(),
            kind.name()
        )));
    }
    Ok(resource)
}

pub(super) fn created(
    state_base: &str,
    version: &RecordVersion,
    json: &[u8],
    status: StatusCode,
) -> Result<Response> {
    let body = present(json, version)?;
    let mut response = with_version_headers(fhir_raw(status, &body), version, state_base);
    let type_name = ResourceType::from_code(version.anchor.resource_type)
        .map_or("Resource", ResourceType::name);
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{state_base}/fhir/{type_name}/{}/_history/{}",
        hex::encode(version.anchor.record),
        version.anchor.version
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Register a new patient with this node as home and keeper of the patient's key.
pub(super) async fn register_patient<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
) -> Result<[u8; 16]> {
    let patient: [u8; 16] = crate::ambient::random_bytes();
    register_patient_as(state, token, patient).await?;
    Ok(patient)
}

/// Register `patient` (a fresh id) with this node as home and keeper of the key.
pub(super) async fn register_patient_as<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: [u8; 16],
) -> Result<()> {
    let institution = state
        .gateway
        .institution
        .as_ref()
        .map(|account| commonware_cryptography::Signer::public_key(&account.key))
        .ok_or_else(|| forbidden("this node registers no patients"))?;
    match role_of(state, &token.identity) {
        Some(Role::Clinician { institution: home }) if home == institution => {}
        _ => {
            return Err(forbidden(
                "patients are registered by a clinician of this node's institution",
            ));
        }
    }
    let dir = state
        .custody_dir
        .as_ref()
        .ok_or_else(|| forbidden("this node keeps no patient keys"))?;
    let seed: [u8; 32] = crate::ambient::random_bytes();
    gateway::write_secret(&dir.join(format!("{}.key", hex::encode(patient))), &seed).map_err(
        |error| {
            tracing::error!(%error, "cannot write a custodial key");
            ApiError::fhir(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "cannot store the patient's key",
            )
        },
    )?;
    let key = ehrchain_types::private_key_from_seed(&seed).expect("32 bytes");
    let tx = crate::submit::submit_as_institution(
        state,
        Payload::RegisterPatient {
            patient,
            key: commonware_cryptography::Signer::public_key(&key),
            encryption_key: ehrchain_crypto::EncryptionKey::from_seed(&seed).public().0,
        },
    )
    .await?;
    commit(state, &tx).await?;
    Ok(())
}

pub(super) async fn create<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let bytes = body_bytes(body).await?;
    let resource = check(kind, &bytes)?;
    let (patient, record) = if kind == ResourceType::Patient {
        // A registered patient without a Patient resource yet keeps its id; otherwise the
        // server assigns one and registers the patient, as FHIR create does.
        let existing = resource.id.as_deref().and_then(id16).filter(|p| {
            state
                .chain
                .read(|s| s.patient(p).is_some() && s.versions(p).is_empty())
        });
        let patient = match existing {
            Some(patient) => patient,
            None => register_patient(&state, &token).await?,
        };
        (patient, patient)
    } else {
        let patient = resource.patient.as_deref().and_then(id16).ok_or_else(|| {
            ApiError::fhir(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "the patient reference must be Patient/{id} of a registered patient",
            )
        })?;
        (patient, crate::ambient::random_bytes())
    };
    let version = write_version(&state, &token, kind, patient, record, 1, &bytes).await?;
    created(
        &state.gateway.public_url,
        &version,
        &bytes,
        StatusCode::CREATED,
    )
}

pub(super) async fn update<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let bytes = body_bytes(body).await?;
    let resource = check(kind, &bytes)?;
    if resource.id.as_deref().is_some_and(|given| given != id) {
        return Err(invalid("the resource id does not match the URL"));
    }
    let versions = versions_of(&state, kind, &id)?;
    let latest = versions.last().expect("non-empty");
    if let Some(expected) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && expected.trim() != format!("W/\"{}\"", latest.anchor.version)
    {
        return Err(ApiError::fhir(
            StatusCode::PRECONDITION_FAILED,
            "conflict",
            "If-Match does not name the current version",
        ));
    }
    let patient = latest.anchor.patient;
    if kind != ResourceType::Patient && resource.patient.as_deref().and_then(id16) != Some(patient)
    {
        return Err(ApiError::fhir(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "a record keeps its patient across versions",
        ));
    }
    let version = write_version(
        &state,
        &token,
        kind,
        patient,
        latest.anchor.record,
        latest.anchor.version + 1,
        &bytes,
    )
    .await?;
    created(&state.gateway.public_url, &version, &bytes, StatusCode::OK)
}
