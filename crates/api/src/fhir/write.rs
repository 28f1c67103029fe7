//! Writes: `create` and `update`, sealed here for the readers the contract names, anchored, and
//! answered once committed.

use super::{
    common::{
        Result, body_bytes, fhir_json, fhir_raw, forbidden, id16, invalid, resource_type_name,
        role_of, unavailable,
    },
    params::{checked, patient_param, preferences, query_pairs},
    read::{allowed, present, resource_type, reveal, versions_of, with_version_headers},
    search::{find, search_params},
};
use crate::{
    ApiError, ApiState, ambient::now_ms, gateway, session::Token, session::caller, submit::commit,
    submit::submit_as, submit::submit_staged,
};
use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
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
    let readers = match readers(state, &token.identity, &patient, kind.code()) {
        Ok(readers) => readers,
        Err(refused) if refused.status == StatusCode::FORBIDDEN => {
            // A role that never writes (a patient, a guardian, an auditor): nothing is sealed;
            // an anchor of nothing goes to the chain, which refuses it and records the attempt.
            let nothing = version_anchor(kind, patient, record, version, [0; 32], 0);
            let tx = submit_as(state, token, Payload::RecordAnchor(nothing)).await?;
            commit(state, &tx).await?;
            return Err(refused);
        }
        Err(other) => return Err(other),
    };
    let (anchor, staged) =
        seal_version(state, &readers, kind, patient, record, version, json).await?;
    submit_staged(state, token, Payload::RecordAnchor(anchor), Some(staged)).await
}

/// The anchor of one version with the given content hash and size, stamped now.
pub(super) fn version_anchor(
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    hash: [u8; 32],
    size: u64,
) -> RecordAnchor {
    RecordAnchor {
        record,
        version,
        patient,
        resource_type: kind.code(),
        ciphertext_hash: Digest::from(hash),
        ciphertext_size: size,
        timestamp_ms: now_ms(),
    }
}

/// Seal one version for `readers` and stage its upload: the anchor to submit and the staged
/// upload's hash (to drop if the anchor is never submitted).
pub(super) async fn seal_version<B: Blob>(
    state: &ApiState<B>,
    readers: &[EncryptionPublicKey],
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    json: &[u8],
) -> Result<(RecordAnchor, [u8; 32])> {
    let binding = Binding {
        record,
        version,
        patient,
    };
    let (envelope, hash, wraps) =
        ehrchain_crypto::seal_for(&binding, json, readers).map_err(|_| {
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
    let anchor = version_anchor(kind, patient, record, version, hash, envelope.len() as u64);
    Ok((anchor, staged))
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

/// What `Prefer: return=` asks a write to answer with (FHIR R4 3.1.0.5.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Return {
    Representation,
    Minimal,
    OperationOutcome,
}

pub(super) fn prefer_return(headers: &HeaderMap) -> Return {
    let asked = preferences(headers)
        .filter_map(|p| p.strip_prefix("return="))
        .map(|v| v.trim_matches('"'))
        .last();
    match asked {
        Some("minimal") => Return::Minimal,
        Some("OperationOutcome") => Return::OperationOutcome,
        _ => Return::Representation,
    }
}

/// The answer to a create or update: the resource as stored (or, as `Prefer` asks, nothing
/// or an `OperationOutcome`), with its version headers and `Location`.
pub(super) fn created(
    state_base: &str,
    headers: &HeaderMap,
    version: &RecordVersion,
    json: &[u8],
    status: StatusCode,
) -> Result<Response> {
    let answer = match prefer_return(headers) {
        Return::Representation => fhir_raw(status, &present(json, version)?),
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => fhir_json(
            status,
            &operation_outcome(&[ehrchain_fhir::Issue {
                severity: "information",
                code: "informational",
                expression: String::new(),
                diagnostics: format!("version {} stored", version.anchor.version),
            }]),
        ),
    };
    let mut response = with_version_headers(answer, version, state_base);
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
    if let Some(condition) = headers.get("if-none-exist") {
        let condition = condition
            .to_str()
            .map_err(|_| invalid("If-None-Exist is not a query string"))?;
        let found = matching(&state, &token, kind, condition, &resource).await?;
        match found.as_slice() {
            [] => {}
            [(version, served)] => {
                // Already there: FHIR answers 200 with it and stores nothing.
                return Ok(with_version_headers(
                    fhir_raw(StatusCode::OK, served),
                    version,
                    &state.gateway.public_url,
                ));
            }
            _ => return Err(ambiguous("If-None-Exist")),
        }
    }
    create_record(&state, &headers, &token, kind, &bytes, resource).await
}

/// The records of `kind` a conditional interaction's query selects (at most two: one is a
/// match, two are ambiguous). A query that names no patient searches the resource's own.
pub(super) async fn matching<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    kind: ResourceType,
    query: &str,
    resource: &ehrchain_fhir::Resource,
) -> Result<Vec<(RecordVersion, Box<serde_json::value::RawValue>)>> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    let names: Vec<&str> = search_params(kind).iter().map(|p| p.name).collect();
    let (mut pairs, _) = checked(
        query_pairs(Some(query.to_owned()))?,
        &names,
        &["date", "_lastUpdated"],
        &HeaderMap::new(),
    )?;
    if pairs.is_empty() {
        return Err(invalid("a conditional interaction needs search criteria"));
    }
    if kind != ResourceType::Patient
        && patient_param(&pairs).is_none()
        && let Some(patient) = &resource.patient
    {
        pairs.push(("patient".into(), patient.clone()));
    }
    Ok(find(state, token, kind, &pairs, (2, 0)).await?.1)
}

fn ambiguous(what: &str) -> ApiError {
    ApiError::fhir(
        StatusCode::PRECONDITION_FAILED,
        "multiple-matches",
        &format!("{what} matches more than one record; make the criteria more selective"),
    )
}

/// `PUT [type]?query`: update the one record the query selects, or create one if none does.
pub(super) async fn conditional_update<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let bytes = body_bytes(body).await?;
    let resource = check(kind, &bytes)?;
    let found = matching(
        &state,
        &token,
        kind,
        query.as_deref().unwrap_or(""),
        &resource,
    )
    .await?;
    match found.as_slice() {
        [] => create_record(&state, &headers, &token, kind, &bytes, resource).await,
        [(version, _)] => {
            let id = hex::encode(version.anchor.record);
            update_record(&state, &headers, &token, kind, &id, &bytes, resource).await
        }
        _ => Err(ambiguous("the query")),
    }
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
    update_record(&state, &headers, &token, kind, &id, &bytes, resource).await
}

/// `PATCH [type]/[id]` with a JSON Patch (`application/json-patch+json`) or a JSON Merge Patch
/// (`application/merge-patch+json`, or a FHIR JSON object of changes): the current version
/// is read (a read like any other, recorded on chain), patched as served (so paths such as
/// `/meta/tag` mean what the client sees), checked whole, and written as the next version.
/// The text the patch does not touch keeps its bytes. If another version lands between the
/// read and the write, the write is refused (412) rather than lost.
pub(super) async fn patch<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let apply = match media.split(';').next().map(str::trim) {
        Some("application/json-patch+json") => ehrchain_fhir::patch::apply,
        // A JSON object of changes (RFC 7386), as fhirpy and Aidbox send it.
        Some("application/merge-patch+json" | "application/fhir+json" | "application/json") => {
            ehrchain_fhir::patch::merge
        }
        _ => {
            return Err(ApiError::fhir(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "PATCH takes a JSON Patch (application/json-patch+json) or a JSON Merge Patch (application/merge-patch+json); FHIRPath Patch is not served",
            ));
        }
    };
    let bytes = body_bytes(body).await?;
    let versions = versions_of(&state, kind, &id)?;
    let latest = versions.last().expect("non-empty").clone();
    if_match(&headers, latest.anchor.version)?;
    allowed(&state, &token, latest.anchor.record).await?;
    if latest.anchor.is_tombstone() {
        return Err(super::read::gone());
    }
    let plain = reveal(&state, &token.identity, &latest).await?;
    let served = present(&plain, &latest)?;
    let patched = apply(served.get(), &bytes).map_err(|error| {
        ApiError::fhir(
            StatusCode::UNPROCESSABLE_ENTITY,
            if error.test_failed {
                "conflict"
            } else {
                "invalid"
            },
            &error.to_string(),
        )
    })?;
    let patched = patched.into_bytes();
    let resource = check(kind, &patched)?;
    let mut pinned = headers.clone();
    pinned.insert(
        header::IF_MATCH,
        HeaderValue::from_str(&format!("W/\"{}\"", latest.anchor.version))
            .expect("a version is a header value"),
    );
    update_record(&state, &pinned, &token, kind, &id, &patched, resource).await
}

/// `DELETE [type]/[id]`: a logical delete. The next version is a tombstone (no content,
/// `ehrchain_types::TOMBSTONE_HASH`), written under the same contract rule as any version, so
/// only a writer of the record may delete it, and the chain records who did. From then on
/// the record reads 410, leaves searches and `$everything`, and its history ends with the
/// delete; an update brings it back as a new version. It is not erasure: the earlier
/// versions stay readable by vread to those who may read them (`patient erase` shreds them).
/// Deleting a deleted record changes nothing (204).
pub(super) async fn delete<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let versions = versions_of(&state, kind, &id)?;
    let latest = versions.last().expect("non-empty");
    if_match(&headers, latest.anchor.version)?;
    let version = if latest.anchor.is_tombstone() {
        latest.clone()
    } else {
        let tx = submit_as(
            &state,
            &token,
            Payload::RecordAnchor(RecordAnchor {
                record: latest.anchor.record,
                version: latest.anchor.version + 1,
                patient: latest.anchor.patient,
                resource_type: kind.code(),
                ciphertext_hash: Digest::from(ehrchain_types::TOMBSTONE_HASH),
                ciphertext_size: 0,
                timestamp_ms: now_ms(),
            }),
        )
        .await?;
        committed_version(&state, &tx, latest.anchor.record, latest.anchor.version + 1).await?
    };
    Ok(with_version_headers(
        StatusCode::NO_CONTENT.into_response(),
        &version,
        &state.gateway.public_url,
    ))
}

/// 412 unless `If-Match` is absent or names `version` (`W/"n"`).
fn if_match(headers: &HeaderMap, version: u32) -> Result<()> {
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        Some(expected) if expected.trim() != format!("W/\"{version}\"") => Err(ApiError::fhir(
            StatusCode::PRECONDITION_FAILED,
            "conflict",
            "If-Match does not name the current version",
        )),
        _ => Ok(()),
    }
}

/// Write `bytes` as the next version of record `id`, if `If-Match` allows.
async fn update_record<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    token: &Token,
    kind: ResourceType,
    id: &str,
    bytes: &[u8],
    resource: ehrchain_fhir::Resource,
) -> Result<Response> {
    if resource.id.as_deref().is_some_and(|given| given != id) {
        return Err(invalid("the resource id does not match the URL"));
    }
    let versions = versions_of(state, kind, id)?;
    let latest = versions.last().expect("non-empty");
    if_match(headers, latest.anchor.version)?;
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
        state,
        token,
        kind,
        patient,
        latest.anchor.record,
        latest.anchor.version + 1,
        bytes,
    )
    .await?;
    created(
        &state.gateway.public_url,
        headers,
        &version,
        bytes,
        StatusCode::OK,
    )
}

/// A `Parameters` body's `resource` parameter, as sent.
#[derive(serde::Deserialize)]
struct Parameters<'a> {
    #[serde(borrow, default)]
    parameter: Vec<Parameter<'a>>,
}

#[derive(serde::Deserialize)]
struct Parameter<'a> {
    name: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a serde_json::value::RawValue>,
}

/// `POST [type]/$validate`: the findings a create would give, and nothing stored. The body is
/// the resource, or a `Parameters` carrying it as `resource`. The operation succeeds (200)
/// whatever the resource's faults; its `OperationOutcome` lists them.
pub(super) async fn validate_operation<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, operation)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: Body,
) -> Result<Response> {
    if operation == "_search" {
        return super::search::search_form(&state, &headers, &kind, query, body).await;
    }
    caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    if operation != "$validate" {
        return Err(ApiError::fhir(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "POST to a resource instance is not an interaction; PUT updates it",
        ));
    }
    let bytes = body_bytes(body).await?;
    let resource: Vec<u8> = if resource_type_name(&bytes).as_deref() == Some("Parameters") {
        serde_json::from_slice::<Parameters>(&bytes)
            .ok()
            .and_then(|parameters| {
                parameters
                    .parameter
                    .iter()
                    .find(|p| p.name.as_deref() == Some("resource"))
                    .and_then(|p| p.resource)
                    .map(|r| r.get().as_bytes().to_vec())
            })
            .ok_or_else(|| invalid("Parameters carries no resource parameter"))?
    } else {
        bytes.to_vec()
    };
    match check(kind, &resource) {
        Ok(_) => Ok(fhir_json(
            StatusCode::OK,
            &operation_outcome(&[ehrchain_fhir::Issue {
                severity: "information",
                code: "informational",
                expression: String::new(),
                diagnostics: format!("the {} is valid", kind.name()),
            }]),
        )),
        Err(mut refused) => match refused.issues_mut() {
            Some(issues) => {
                let outcome = serde_json::json!({
                    "resourceType": "OperationOutcome",
                    "issue": issues.clone(),
                });
                Ok(fhir_json(StatusCode::OK, &outcome))
            }
            None => Err(refused),
        },
    }
}

/// Create a record from `bytes` (already checked as `resource`): a Patient registers its
/// patient (keeping a registered patient's id), anything else gets a fresh id.
async fn create_record<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    token: &Token,
    kind: ResourceType,
    bytes: &[u8],
    resource: ehrchain_fhir::Resource,
) -> Result<Response> {
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
            None => register_patient(state, token).await?,
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
    let version = write_version(state, token, kind, patient, record, 1, bytes).await?;
    created(
        &state.gateway.public_url,
        headers,
        &version,
        bytes,
        StatusCode::CREATED,
    )
}
