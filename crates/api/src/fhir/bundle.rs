//! `transaction` and `batch` Bundles.

use super::{
    common::{Result, body_bytes, fhir_json, id16, invalid, unprocessable},
    read::versions_of,
    time::instant,
    write::{
        check, committed_version, matching, readers, register_patient_as, seal_version,
        version_anchor,
    },
};
use crate::{ApiError, ApiState, session::caller};
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::state::Reader as _;
use ehrchain_fhir::ResourceType;
use ehrchain_types::{Payload, RecordAnchor, transaction::RECORD_SET_MAX};
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
    /// The entry's place in the Bundle.
    index: usize,
    kind: ResourceType,
    patient: [u8; 16],
    record: [u8; 16],
    version: u32,
    json: Vec<u8>,
    new_patient: bool,
    /// A `DELETE` entry: the version is a tombstone.
    delete: bool,
}

impl Planned {
    /// This entry's version with no content: the anchor of nothing that records a refused
    /// write (all-zero hash), or a delete's tombstone (`TOMBSTONE_HASH`).
    fn content_free_anchor(&self, hash: [u8; 32]) -> RecordAnchor {
        version_anchor(self.kind, self.patient, self.record, self.version, hash, 0)
    }
}

/// `POST /fhir` with a `transaction` Bundle of creates (POST, `ifNoneExist` honoured),
/// updates (PUT, `ifMatch` honoured) and deletes (DELETE, a tombstone version), or a `batch` (`super::batch`, each entry on its own).
///
/// A transaction is checked whole before anything is written: every entry parsed, its
/// `urn:uuid:` references resolved, validated, its `ifMatch` and `ifNoneExist` evaluated, and
/// its write checked against this node's final state with the contract's own rule. Any
/// failure answers that entry's `OperationOutcome` with nothing written; a refused write is
/// first sent alone to the chain, which records the refusal. New patients are registered
/// next, then every version is sealed and all go to the chain as one `RecordSet`, which
/// writes every version or none: a refusal there (a consent withdrawn in the moment after
/// these checks) leaves nothing written but the patients registered for it.
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
    if kind_of_bundle == "batch-response" {
        return super::batch::batch(state, &headers, &bytes).await;
    }
    // Pass 1: server ids for every POST, so references between entries resolve.
    let mut ids = Vec::new();
    let mut assigned = Vec::with_capacity(entries.len());
    // Entries an `ifNoneExist` matched, with the record that stands for each.
    let mut kept: Vec<(usize, ehrchain_contracts::facts::RecordVersion)> = Vec::new();
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
        // A DELETE carries no resource: its type is the URL's.
        let kind = if method == "DELETE" {
            entry["request"]["url"]
                .as_str()
                .and_then(|url| url.split('/').next())
        } else {
            entry["resource"]["resourceType"].as_str()
        }
        .and_then(ResourceType::from_name)
        .ok_or_else(|| at("the resource type is missing or not supported"))?;
        // The token's scopes bound every entry, as they bound the same request sent alone.
        let permission = match method {
            "PUT" => crate::scopes::UPDATE,
            "DELETE" => crate::scopes::DELETE,
            _ => crate::scopes::CREATE,
        };
        if !token.scopes.allows(kind.name(), permission) {
            let mut error = super::insufficient_scope(kind.name(), permission);
            error.message = format!("entry {index}: {}; nothing was written", error.message);
            return Err(error);
        }
        // `ifNoneExist`: a record the condition selects stands for this entry, which then
        // writes nothing (and references to its fullUrl name that record).
        let existing = match entry["request"]["ifNoneExist"].as_str() {
            Some(condition) if method == "POST" => {
                let text = raw
                    .entry
                    .get(index)
                    .and_then(|e| e.resource)
                    .map_or("null", RawValue::get);
                // A resource whose patient is new in this Bundle (a `urn:uuid:`) matches
                // nothing yet; an invalid one is reported by its validation below.
                let found = match ehrchain_fhir::validate(text.as_bytes()) {
                    Ok(resource)
                        if kind == ResourceType::Patient
                            || resource.patient.as_deref().and_then(id16).is_some() =>
                    {
                        matching(&state, &token, kind, condition, &resource).await?
                    }
                    _ => Vec::new(),
                };
                match found.as_slice() {
                    [] => None,
                    [(version, _)] => Some(version.clone()),
                    _ => {
                        return Err(ApiError::fhir(
                            StatusCode::PRECONDITION_FAILED,
                            "multiple-matches",
                            &format!(
                                "entry {index}: ifNoneExist matches more than one record; nothing was written"
                            ),
                        ));
                    }
                }
            }
            _ => None,
        };
        if let Some(version) = existing {
            if let Some(full) = entry["fullUrl"].as_str() {
                ids.push((
                    full.to_string(),
                    format!("{}/{}", kind.name(), hex::encode(version.anchor.record)),
                ));
            }
            kept.push((index, version));
            continue;
        }
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
            "PUT" | "DELETE" => {
                let url = entry["request"]["url"].as_str().unwrap_or("");
                let id = url
                    .strip_prefix(kind.name())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(id16)
                    .ok_or_else(|| at("request.url must be {type}/{id}"))?;
                (id, false)
            }
            _ => return Err(at("request.method must be POST, PUT or DELETE")),
        };
        assigned.push((index, kind, id));
    }
    // Pass 2: resolve, validate, plan. Nothing is written until every entry passes.
    let mut plans = Vec::with_capacity(entries.len());
    for (index, kind, (id, create)) in &assigned {
        let index = *index;
        if entries[index]["request"]["method"] == "DELETE" {
            let versions = versions_of(&state, *kind, &hex::encode(id))?;
            let latest = versions.last().expect("non-empty");
            if let Some(expected) = entries[index]["request"]["ifMatch"].as_str()
                && expected.trim() != format!("W/\"{}\"", latest.anchor.version)
            {
                return Err(ApiError::fhir(
                    StatusCode::PRECONDITION_FAILED,
                    "conflict",
                    &format!(
                        "entry {index}: ifMatch does not name the current version; nothing was written"
                    ),
                ));
            }
            if latest.anchor.is_tombstone() {
                // Deleted already: nothing to write, answered as it stands.
                kept.push((index, latest.clone()));
            } else {
                plans.push(Planned {
                    index,
                    kind: *kind,
                    patient: latest.anchor.patient,
                    record: *id,
                    version: latest.anchor.version + 1,
                    json: Vec::new(),
                    new_patient: false,
                    delete: true,
                });
            }
            continue;
        }
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
        if !*create
            && let Some(expected) = entries[index]["request"]["ifMatch"].as_str()
            && expected.trim() != format!("W/\"{}\"", version - 1)
        {
            return Err(ApiError::fhir(
                StatusCode::PRECONDITION_FAILED,
                "conflict",
                &format!(
                    "entry {index}: ifMatch does not name the current version; nothing was written"
                ),
            ));
        }
        plans.push(Planned {
            index,
            kind: *kind,
            patient,
            record: *id,
            version,
            json,
            new_patient,
            delete: false,
        });
    }
    // The versions commit in one chain transaction, which holds at most RECORD_SET_MAX.
    if plans.len() > RECORD_SET_MAX {
        return Err(ApiError::fhir(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            &format!(
                "a transaction writes at most {RECORD_SET_MAX} resources, all or none (this one writes {}); split it, or send a batch; nothing was written",
                plans.len()
            ),
        ));
    }
    // Every write is allowed, or nothing is written: each is checked against this node's
    // final state with the contract's own rule, and the first refused one goes to the chain
    // alone (an anchor of nothing, which the chain refuses and records) before the answer.
    let new_patients: Vec<[u8; 16]> = plans
        .iter()
        .filter(|p| p.new_patient)
        .map(|p| p.patient)
        .collect();
    for plan in plans.iter().filter(|p| !new_patients.contains(&p.patient)) {
        let entry_error = |mut error: ApiError| {
            error.message = format!(
                "entry {}: {}; nothing was written",
                plan.index, error.message
            );
            error
        };
        // An unknown or erased patient fails as the write itself would (`write::readers`);
        // a role that never writes, or a writer without the right, is a refusal to record.
        let refused = match readers(&state, &token.identity, &plan.patient, plan.kind.code()) {
            Err(error) if error.status == StatusCode::FORBIDDEN => true,
            Err(error) => return Err(entry_error(error)),
            Ok(_) => state.chain.read(|s| {
                s.patient(&plan.patient).is_some_and(|entry| {
                    ehrchain_contracts::access::may_write_record(
                        s,
                        &token.identity,
                        crate::ambient::now_ms(),
                        &entry,
                        (&plan.record, &plan.patient, plan.kind.code()),
                    )
                    .is_err()
                })
            }),
        };
        if refused {
            let nothing = Payload::RecordAnchor(plan.content_free_anchor([0; 32]));
            let tx = crate::submit::submit_as(&state, &token, nothing).await?;
            let recorded = crate::submit::commit(&state, &tx).await.err();
            return Err(entry_error(recorded.unwrap_or_else(|| {
                ApiError::fhir(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the write is not allowed",
                )
            })));
        }
    }
    for plan in plans.iter().filter(|p| p.new_patient) {
        register_patient_as(&state, &token, plan.patient).await?;
    }
    // Seal every version, then submit them all as one `RecordSet`: the chain writes every
    // one or none (a refusal there, after the checks above, writes nothing).
    let mut anchors = Vec::with_capacity(plans.len());
    let mut staged = Vec::with_capacity(plans.len());
    let drop_staged = |staged: &[[u8; 32]]| {
        for hash in staged {
            if let Err(error) = state.store.unstage(hash) {
                tracing::error!(%error, "cannot drop an unsubmitted upload");
            }
        }
    };
    for plan in &plans {
        if plan.delete {
            anchors.push(plan.content_free_anchor(ehrchain_types::TOMBSTONE_HASH));
            continue;
        }
        let sealed = async {
            let readers = readers(&state, &token.identity, &plan.patient, plan.kind.code())?;
            seal_version(
                &state,
                &readers,
                plan.kind,
                plan.patient,
                plan.record,
                plan.version,
                &plan.json,
            )
            .await
        };
        match sealed.await {
            Ok((anchor, hash)) => {
                anchors.push(anchor);
                staged.push(hash);
            }
            Err(mut error) => {
                drop_staged(&staged);
                error.message = format!(
                    "entry {}: {}; nothing was written",
                    plan.index, error.message
                );
                return Err(error);
            }
        }
    }
    let mut written = None;
    if !anchors.is_empty() {
        let tx = match crate::submit::submit_as(&state, &token, Payload::RecordSet(anchors)).await {
            Ok(tx) => tx,
            Err(error) => {
                drop_staged(&staged);
                return Err(error);
            }
        };
        crate::submit::commit(&state, &tx)
            .await
            .map_err(|mut error| {
                error.message = format!("{}; nothing was written", error.message);
                error
            })?;
        written = Some(tx);
    }
    let base = &state.gateway.public_url;
    let mut responses: Vec<(usize, Value)> = kept
        .iter()
        .map(|(index, version)| {
            let name = ResourceType::from_code(version.anchor.resource_type).map_or("Resource", ResourceType::name);
            (*index, json!({"response": {
                "status": "200 OK",
                "location": format!("{name}/{}/_history/{}", hex::encode(version.anchor.record), version.anchor.version),
                "etag": format!("W/\"{}\"", version.anchor.version),
                "lastModified": instant(version.anchor.timestamp_ms),
            }}))
        })
        .collect();
    for plan in &plans {
        let tx = written.as_ref().expect("planned writes were submitted");
        let version = committed_version(&state, tx, plan.record, plan.version).await?;
        responses.push((plan.index, json!({
            "response": {
                "status": if plan.delete { "204 No Content" } else if plan.version == 1 { "201 Created" } else { "200 OK" },
                "location": format!("{}/{}/_history/{}", plan.kind.name(), hex::encode(plan.record), plan.version),
                "etag": format!("W/\"{}\"", plan.version),
                "lastModified": instant(version.anchor.timestamp_ms),
            },
        })));
    }
    // In the order of the Bundle's entries (FHIR: response entry i answers request entry i).
    responses.sort_by_key(|(index, _)| *index);
    let answer = json!({
        "resourceType": "Bundle",
        "type": kind_of_bundle,
        "link": [{"relation": "self", "url": format!("{base}/fhir")}],
        "entry": responses.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
    });
    Ok(fhir_json(StatusCode::OK, &answer))
}
