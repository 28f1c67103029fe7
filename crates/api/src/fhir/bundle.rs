//! `transaction` and `batch` Bundles.

use super::{
    common::{Result, body_bytes, fhir_json, id16, invalid, unprocessable},
    read::versions_of,
    time::instant,
    write::{check, committed_version, register_patient_as, submit_version},
};
use crate::{ApiError, ApiState, session::caller};
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_fhir::ResourceType;
use serde_json::{Value, json, value::RawValue};
use std::sync::Arc;

// ---- Bundle transaction and batch ----------------------------------------------------------

/// Most entries one Bundle may carry.
pub const BUNDLE_ENTRIES_MAX: usize = 1_000;

/// The text of each entry's resource as the client sent it.
#[derive(serde::Deserialize)]
struct RawBundle<'a> {
    #[serde(borrow, default)]
    entry: Vec<RawEntry<'a>>,
}

#[derive(serde::Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
}

/// One write of a Bundle, checked and with its ids fixed.
pub(super) struct Planned {
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    json: Vec<u8>,
    new_patient: bool,
}

/// `POST /fhir` with a `transaction` or `batch` Bundle of creates (POST) and updates (PUT).
///
/// Every entry is parsed, validated and its `urn:uuid:` references resolved before anything
/// is written: an invalid entry fails the whole transaction with nothing stored. New patients
/// are registered first; then every version is sealed and submitted, and all commit together
/// (usually in one block). The chain has no multi-transaction atomicity, so a write refused
/// at admission after validation (a consent withdrawn in between) fails the request with the
/// entries before it already written; the answer says which.
pub(super) async fn bundle<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
    let raw: RawBundle =
        serde_json::from_slice(&bytes).map_err(|_| invalid("Bundle.entry is malformed"))?;
    if value["resourceType"] != "Bundle" {
        return Err(invalid("POST /fhir takes a Bundle"));
    }
    let kind_of_bundle = match value["type"].as_str() {
        Some("transaction") => "transaction-response",
        Some("batch") => "batch-response",
        _ => return Err(unprocessable("Bundle.type must be transaction or batch")),
    };
    let entries = value["entry"].as_array().map_or(&[][..], Vec::as_slice);
    if entries.len() > BUNDLE_ENTRIES_MAX {
        return Err(ApiError::fhir(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            &format!("a Bundle carries at most {BUNDLE_ENTRIES_MAX} entries"),
        ));
    }
    // Pass 1: server ids for every POST, so references between entries resolve.
    let mut ids = Vec::new();
    let mut assigned = Vec::with_capacity(entries.len());
    let mut full_urls = std::collections::HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = |what: &str| unprocessable(&format!("entry {index}: {what}"));
        // A fullUrl names one entry: two entries with the same one make references between
        // entries ambiguous (FHIR R4 Bundle rule bdl-7), so the Bundle is refused whole.
        if let Some(full) = entry["fullUrl"].as_str()
            && !full_urls.insert(full)
        {
            return Err(invalid(&format!(
                "entry {index}: fullUrl is not unique in the Bundle (bdl-7)"
            )));
        }
        let method = entry["request"]["method"].as_str().unwrap_or("");
        let kind = entry["resource"]["resourceType"]
            .as_str()
            .and_then(ResourceType::from_name)
            .ok_or_else(|| at("the resource type is missing or not supported"))?;
        let id = match method {
            "POST" => {
                let id: [u8; 16] = crate::ambient::random_bytes();
                if let Some(full) = entry["fullUrl"].as_str() {
                    ids.push((
                        full.to_string(),
                        format!("{}/{}", kind.name(), hex::encode(id)),
                    ));
                }
                (id, true)
            }
            "PUT" => {
                let url = entry["request"]["url"].as_str().unwrap_or("");
                let id = url
                    .strip_prefix(kind.name())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(id16)
                    .ok_or_else(|| at("request.url must be {type}/{id}"))?;
                (id, false)
            }
            _ => return Err(at("request.method must be POST or PUT")),
        };
        assigned.push((kind, id));
    }
    // Pass 2: resolve, validate, plan. Nothing is written until every entry passes.
    let mut plans = Vec::with_capacity(entries.len());
    for (index, (kind, (id, create))) in assigned.iter().enumerate() {
        // The resource's own text, its `urn:uuid:` references rewritten in place.
        let text = raw
            .entry
            .get(index)
            .and_then(|e| e.resource)
            .map(RawValue::get)
            .unwrap_or("null");
        let json = ehrchain_fhir::raw::replace_strings(text, &ids).into_bytes();
        let checked = check(*kind, &json).map_err(|mut error| {
            error.message = format!("entry {index}: {}", error.message);
            if let Some(issues) = error.issues_mut() {
                for issue in issues {
                    issue["diagnostics"] = json!(format!(
                        "entry {index}: {}",
                        issue["diagnostics"].as_str().unwrap_or("")
                    ));
                }
            }
            error
        })?;
        let (patient, version, new_patient) = if *create {
            if *kind == ResourceType::Patient {
                (*id, 1, true)
            } else {
                let patient = checked.patient.as_deref().and_then(id16).ok_or_else(|| {
                    unprocessable(&format!(
                        "entry {index}: the patient reference must be Patient/{{id}}"
                    ))
                })?;
                (patient, 1, false)
            }
        } else {
            let versions = versions_of(&state, *kind, &hex::encode(id))?;
            let latest = versions.last().expect("non-empty");
            (latest.anchor.patient, latest.anchor.version + 1, false)
        };
        plans.push(Planned {
            kind: *kind,
            patient,
            record: *id,
            version,
            json,
            new_patient,
        });
    }
    for plan in plans.iter().filter(|p| p.new_patient) {
        register_patient_as(&state, &token, plan.patient).await?;
    }
    let mut submitted = Vec::with_capacity(plans.len());
    for (index, plan) in plans.iter().enumerate() {
        let tx = submit_version(
            &state,
            &token,
            plan.kind,
            plan.patient,
            plan.record,
            plan.version,
            &plan.json,
        )
        .await
        .map_err(|mut error| {
            error.message = format!(
                "entry {index}: {} ({index} earlier entries were written)",
                error.message
            );
            error
        })?;
        submitted.push(tx);
    }
    let base = &state.gateway.public_url;
    let mut responses = Vec::with_capacity(plans.len());
    for (plan, tx) in plans.iter().zip(&submitted) {
        let version = committed_version(&state, tx, plan.record, plan.version).await?;
        responses.push(json!({
            "response": {
                "status": if plan.version == 1 { "201 Created" } else { "200 OK" },
                "location": format!("{}/{}/_history/{}", plan.kind.name(), hex::encode(plan.record), plan.version),
                "etag": format!("W/\"{}\"", plan.version),
                "lastModified": instant(version.anchor.timestamp_ms),
            },
        }));
    }
    let answer = json!({
        "resourceType": "Bundle",
        "type": kind_of_bundle,
        "link": [{"relation": "self", "url": format!("{base}/fhir")}],
        "entry": responses,
    });
    Ok(fhir_json(StatusCode::OK, &answer))
}
