//! `Provenance`: each version's author, institution and inclusion proof (`signature.data`).

use super::{
    common::{Result, fhir_json, forbidden, invalid, not_found, reference_of, role_of},
    params::{checked, outcome_json, query_pairs},
    read::{resource_type, versions_of},
    time::instant,
};
use crate::{ApiError, ApiState, session::Token, session::caller};
use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::facts::RecordVersion;
use ehrchain_fhir::ResourceType;
use serde_json::{Value, json};
use std::sync::Arc;

// ---- Provenance ----------------------------------------------------------------------------

/// The Provenance of one record version: who wrote it, its block and transaction, and the
/// inclusion proof (base64 JSON in `signature.data`) that `ehrchain proof verify` checks
/// offline against the genesis validators.
pub(super) async fn provenance_json<B: Blob>(
    state: &ApiState<B>,
    version: &RecordVersion,
) -> Result<Value> {
    let location = state.chain.location(&version.transaction).ok_or_else(|| {
        ApiError::fhir(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the anchor is not final here yet",
        )
    })?;
    let proof = crate::build_proof(
        &state.chain,
        &state.genesis,
        &version.transaction,
        location.height,
        location.index,
    )
    .await
    .map_err(|e| ApiError::fhir(e.status, "exception", &e.message))?
    .ok_or_else(|| {
        ApiError::fhir(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "no finalization certificate covers the block yet; retry shortly",
        )
    })?;
    let proof = serde_json::to_vec(&proof).map_err(|_| {
        ApiError::fhir(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "cannot encode the proof",
        )
    })?;
    let name = ResourceType::from_code(version.anchor.resource_type)
        .map_or("Resource", ResourceType::name);
    let author = reference_of(role_of(state, &version.author).as_ref(), &version.author);
    let when = instant(version.anchor.timestamp_ms);
    use base64::Engine as _;
    Ok(json!({
        "resourceType": "Provenance",
        // One per version: a FHIR transaction writes several versions in one chain
        // transaction, so the transaction alone would not name one.
        "id": format!("{}-{}", hex::encode(version.anchor.record), version.anchor.version),
        "extension": [
            {"url": "urn:ehrchain:fhir:block-height", "valueUnsignedInt": location.height},
            {"url": "urn:ehrchain:fhir:transaction", "valueString": hex::encode(version.transaction)},
            {"url": "urn:ehrchain:fhir:ciphertext-sha256", "valueString": hex::encode(version.anchor.ciphertext_hash)},
        ],
        "target": [{"reference": format!("{name}/{}/_history/{}", hex::encode(version.anchor.record), version.anchor.version)}],
        "recorded": when,
        "activity": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": if version.anchor.version == 1 { "CREATE" } else { "UPDATE" },
        }]},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
            "who": {"reference": author},
        }],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1", "display": "Author's Signature"}],
            "when": when,
            "who": {"reference": author},
            "sigFormat": "application/json",
            "data": base64::engine::general_purpose::STANDARD.encode(proof),
        }],
    }))
}

/// `Provenance?target={type}/{id}`: one Provenance per version, newest first.
pub(super) async fn provenance_search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (pairs, ignored) = checked(query_pairs(query)?, &["target"], &[], &headers)?;
    let target = pairs
        .iter()
        .find(|(k, _)| k == "target")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| invalid("search Provenance by target={type}/{id}"))?;
    let (kind, id) = target
        .split_once('/')
        .ok_or_else(|| invalid("target must be {type}/{id}"))?;
    let id = id.split('/').next().unwrap_or(id);
    let versions = versions_of(&state, resource_type(kind)?, id)?;
    provenance_visible(&state, token, &versions[0].anchor.record)?;
    let base = &state.gateway.public_url;
    let mut entries = Vec::new();
    for version in versions.iter().rev() {
        let resource = provenance_json(&state, version).await?;
        entries.push(json!({
            "fullUrl": format!("{base}/fhir/Provenance/{}", resource["id"].as_str().unwrap_or("")),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    let total = entries.len();
    entries.extend(ignored.map(outcome_json));
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// A Provenance follows the read rule of its target (`auth::may_see_record`): its author,
/// time and hash are the record's metadata.
pub(super) fn provenance_visible<B: Blob>(
    state: &ApiState<B>,
    token: Arc<Token>,
    record: &[u8; 16],
) -> Result<()> {
    let caller = crate::auth::Caller::of(state, token);
    if state
        .chain
        .read(|s| crate::auth::may_see_record(s, &caller, record))
    {
        Ok(())
    } else {
        Err(forbidden(
            "a Provenance is shown to those who may read its target, and to auditors",
        ))
    }
}

pub(super) async fn provenance_read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let none = || not_found("no such Provenance");
    let (record, number) = id.split_once('-').ok_or_else(none)?;
    let record: [u8; 16] = hex::decode(record)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(none)?;
    let number: u32 = number.parse().map_err(|_| none())?;
    let version = state
        .chain
        .read(|s| s.versions(&record))
        .into_iter()
        .find(|v| v.anchor.version == number)
        .ok_or_else(none)?;
    provenance_visible(&state, token, &version.anchor.record)?;
    let resource = provenance_json(&state, &version).await?;
    Ok(fhir_json(StatusCode::OK, &resource))
}
