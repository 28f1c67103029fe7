//! Reads: `read`, `vread`, `_history`, `$everything`; each decided by the gateway or on chain,
//! journalled before it is revealed.

use super::{
    common::{
        Entry, Result, fhir_bundle, fhir_raw, forbidden, id16, not_found, role_of, unavailable,
    },
    params::{PAGING, checked, count_param, outcome_entry, query_pairs, searchset},
    time::{http_date, instant},
};
use crate::{
    ApiError, ApiState, gateway, session::Token, session::caller, submit::commit, submit::submit_as,
};
use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::Purpose;
use ehrchain_contracts::{
    facts::{Outcome, RecordVersion, Role},
    state::Reader as _,
};
use ehrchain_crypto::Binding;
use ehrchain_fhir::ResourceType;
use ehrchain_types::{Payload, PublicKey};
use serde_json::{json, value::RawValue};
use std::sync::Arc;

// ---- records -------------------------------------------------------------------------------

pub(super) fn resource_type(kind: &str) -> Result<ResourceType> {
    ResourceType::from_name(kind).ok_or_else(|| {
        not_found(&format!(
            "resource type {kind:?} is not supported here; see /fhir/metadata"
        ))
    })
}

/// The resource as served: the stored JSON as the client sent it, with the server's `id` and
/// `meta.versionId`/`lastUpdated` (`ehrchain_fhir::raw::present`).
pub(super) fn present(plain: &[u8], version: &RecordVersion) -> Result<Box<RawValue>> {
    ehrchain_fhir::raw::present(
        plain,
        &hex::encode(version.anchor.record),
        &version.anchor.version.to_string(),
        &instant(version.anchor.timestamp_ms),
    )
    .and_then(|text| RawValue::from_string(text).ok())
    .ok_or_else(|| {
        ApiError::fhir(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored record is not a JSON object",
        )
    })
}

pub(super) fn with_version_headers(
    mut response: Response,
    version: &RecordVersion,
    base: &str,
) -> Response {
    let headers = response.headers_mut();
    let type_name = ResourceType::from_code(version.anchor.resource_type)
        .map_or("Resource", ResourceType::name);
    for (name, value) in [
        (header::ETAG, format!("W/\"{}\"", version.anchor.version)),
        (
            header::LAST_MODIFIED,
            http_date(version.anchor.timestamp_ms),
        ),
        (
            header::CONTENT_LOCATION,
            format!(
                "{base}/fhir/{type_name}/{}/_history/{}",
                hex::encode(version.anchor.record),
                version.anchor.version
            ),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The purpose a caller reads for: a patient or guardian for themselves, anyone else for
/// treatment (a break-glass is decided by the chain whatever the purpose).
pub(super) fn purpose_for(role: Option<&Role>) -> Purpose {
    match role {
        Some(Role::Patient { .. } | Role::Guardian { .. }) => Purpose::PatientRequest,
        _ => Purpose::Treatment,
    }
}

/// Decide reads here, with the contract's code against this node's final state (read once for
/// all of them): for each allowed one the time it was decided at, for the access log; `None`
/// where the chain must decide (a denial, an unknown record, a session this gateway cannot log
/// for, a final state too old to trust).
pub(super) fn decided_here<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Vec<Option<u64>> {
    let gateway = match (&state.gateway.access_log, &state.gateway.institution) {
        (Some(_), Some(account)) => commonware_cryptography::Signer::public_key(&account.key),
        _ => return vec![None; records.len()],
    };
    let session = token.session();
    let wall = crate::ambient::now_ms();
    state.chain.read(|s| {
        let now = s.time_ms();
        let fresh = crate::access_log::state_is_fresh(&state.chain, wall, now);
        // The contract's own rule for a gateway's decision; a retired reader goes to the chain.
        let reader = ehrchain_contracts::access::gateway_reader(s, &gateway, &session, now)
            .ok()
            .and_then(|(actor, identity)| identity.filter(|_| fresh && actor == token.identity));
        records
            .iter()
            .map(|record| {
                let identity = reader.as_ref()?;
                let (_, _, outcome) = ehrchain_contracts::access::decide_read(
                    s,
                    &token.identity,
                    identity,
                    record,
                    purpose,
                    now,
                )
                .ok()?;
                outcome.allowed().then_some(now)
            })
            .collect()
    })
}

/// Why a read outside the login's patient is refused (it never reaches the chain: the token
/// forbids it, whatever the contract would say).
pub(super) const OUTSIDE_PATIENT: &str = "outside-patient-context";

/// Record read attempts and learn their outcome: `Ok(())` allowed. A read this gateway allows
/// by the contract is journalled in its access log (durable before this returns) and reaches
/// the chain in the next log batch; any other goes to the chain as its own `Access`
/// transaction and waits for its outcome there. A read the token's `patient/` scopes do not
/// reach (another patient than the login's) is refused here, unrecorded.
pub(super) async fn record_reads<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Result<Vec<std::result::Result<(), String>>> {
    let outside: Vec<bool> = state.chain.read(|s| {
        records
            .iter()
            .map(|record| {
                s.latest(record).is_some_and(|v| {
                    let kind = ResourceType::from_code(v.anchor.resource_type)
                        .map_or("Resource", ResourceType::name);
                    token
                        .within(kind, crate::scopes::READ, &v.anchor.patient)
                        .is_err()
                })
            })
            .collect()
    });
    if !outside.contains(&true) {
        return reads_in_context(state, token, records, purpose).await;
    }
    let inside: Vec<[u8; 16]> = records
        .iter()
        .zip(&outside)
        .filter(|(_, out)| !**out)
        .map(|(r, _)| *r)
        .collect();
    let mut decided = reads_in_context(state, token, &inside, purpose)
        .await?
        .into_iter();
    Ok(outside
        .iter()
        .map(|out| match out {
            true => Err(OUTSIDE_PATIENT.to_string()),
            false => decided.next().expect("one outcome per read in context"),
        })
        .collect())
}

async fn reads_in_context<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Result<Vec<std::result::Result<(), String>>> {
    let logged = decided_here(state, token, records, purpose);
    if let Some(log) = &state.gateway.access_log {
        let entries: Vec<_> = records
            .iter()
            .zip(&logged)
            .filter_map(|(record, checked_ms)| {
                Some(ehrchain_types::transaction::AccessLogEntry {
                    session: token.session(),
                    record: *record,
                    purpose: purpose as u8,
                    checked_ms: (*checked_ms)?,
                })
            })
            .collect();
        if !entries.is_empty() {
            let count = entries.len() as u64;
            log.record(entries).await.map_err(|e| {
                ApiError::fhir(StatusCode::SERVICE_UNAVAILABLE, "transient", &e.to_string())
            })?;
            state.gateway.metrics.reads_logged.inc_by(count);
        }
    }
    let mut transactions = Vec::new();
    for (record, _) in records.iter().zip(&logged).filter(|(_, l)| l.is_none()) {
        transactions.push(
            submit_as(
                state,
                token,
                Payload::Access {
                    record: *record,
                    purpose: purpose as u8,
                },
            )
            .await?,
        );
    }
    let mut outcomes = Vec::with_capacity(records.len());
    let mut transactions = transactions.iter();
    for logged in logged {
        if logged.is_some() {
            outcomes.push(Ok(()));
            continue;
        }
        let tx = transactions
            .next()
            .expect("one transaction per read not logged");
        state.gateway.metrics.reads_on_chain.inc();
        let location = commit(state, tx).await?;
        let outcome = state.chain.read(|s| {
            s.event(location.height, location.index)
                .map(|event| event.outcome)
        });
        outcomes.push(match outcome {
            Some(Outcome::Allowed(_)) => Ok(()),
            Some(Outcome::Denied(reason)) => {
                state.gateway.metrics.reads_denied.inc();
                Err(reason.code().to_string())
            }
            None => Err("not-recorded".to_string()),
        });
    }
    Ok(outcomes)
}

pub(super) fn denied(reason: &str) -> ApiError {
    forbidden(&format!(
        "access denied ({reason}); the attempt is recorded on chain"
    ))
}

/// Open a version with a key this node holds for the caller (called only after an allowed
/// read of the record committed).
pub(super) async fn reveal<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    version: &RecordVersion,
) -> Result<Vec<u8>> {
    let hash = hash_of(version);
    let binding = Binding {
        record: version.anchor.record,
        version: version.anchor.version,
        patient: version.anchor.patient,
    };
    // A share bundle for a grant to the caller (or its institution) may still be applying
    // on this node when the read commits: then its keys are waited for, not refused.
    let shared = state.chain.read(|s| {
        let institution = match s.identity(identity).map(|i| i.role) {
            Some(Role::Clinician { institution }) => Some(institution),
            _ => None,
        };
        let now = s.time_ms();
        s.grants(&version.anchor.patient).iter().any(|g| {
            g.active(now)
                && s.grant_share(&g.patient, &g.id)
                    .is_some_and(|h| h != [0; 32])
                && (g.grantee == ehrchain_contracts::facts::key_bytes(identity)
                    || institution
                        .as_ref()
                        .is_some_and(|i| g.grantee == ehrchain_contracts::facts::key_bytes(i)))
        })
    });
    let held = gateway::held_keys(state, identity, &version.anchor.patient);
    let mut tries = 0;
    loop {
        match state.store.get(&hash).await.map_err(unavailable)? {
            Some((envelope, wraps)) => {
                for key in &held {
                    if let Some(wrap) = wraps.iter().find(|w| w.recipient == key.public())
                        && let Ok(data_key) = ehrchain_crypto::unwrap(wrap, key, &binding, &hash)
                    {
                        return ehrchain_crypto::open(&data_key, &binding, &envelope).map_err(
                            |_| {
                                ApiError::fhir(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "exception",
                                    "a stored record does not decrypt",
                                )
                            },
                        );
                    }
                }
                if !shared {
                    // No key here (another institution's patient, read under break-glass):
                    // the patient's home node releases one if the contract allows the read.
                    if let Some(wrap) = released(state, identity, version, hash).await {
                        for key in &held {
                            if let Ok(data_key) =
                                ehrchain_crypto::unwrap(&wrap, key, &binding, &hash)
                            {
                                return ehrchain_crypto::open(&data_key, &binding, &envelope)
                                    .map_err(|_| {
                                        ApiError::fhir(
                                            StatusCode::INTERNAL_SERVER_ERROR,
                                            "exception",
                                            "a stored record does not decrypt",
                                        )
                                    });
                            }
                        }
                    }
                    return Err(forbidden(
                        "this node holds no key that opens this record for you, and the patient's home institution released none; retry shortly",
                    ));
                }
                if tries >= 30 {
                    return Err(ApiError::fhir(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the keys shared with you are still reaching this node; retry shortly",
                    ));
                }
            }
            // A new record's envelope may still be on its way from the author's node.
            None if tries < 50 => {}
            None => {
                return Err(ApiError::fhir(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "this node does not hold the record yet; retry shortly",
                ));
            }
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The envelope hash a version anchors.
pub(super) fn hash_of(version: &RecordVersion) -> [u8; 32] {
    version
        .anchor
        .ciphertext_hash
        .as_ref()
        .try_into()
        .expect("32-byte digest")
}

/// Open `version` with a key this node holds (its institution's, the patient's custodial key,
/// or `identity`'s), for the search index: nothing is disclosed, so no read is recorded.
/// `None` when no such key opens it (or its envelope is not here yet).
pub(super) async fn open_held<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    version: &RecordVersion,
) -> Result<Option<Vec<u8>>> {
    let hash = hash_of(version);
    let Some((envelope, wraps)) = state.store.get(&hash).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let binding = Binding {
        record: version.anchor.record,
        version: version.anchor.version,
        patient: version.anchor.patient,
    };
    let held = gateway::held_keys(state, identity, &version.anchor.patient);
    Ok(held.iter().find_map(|key| {
        let wrap = wraps.iter().find(|w| w.recipient == key.public())?;
        let data_key = ehrchain_crypto::unwrap(wrap, key, &binding, &hash).ok()?;
        ehrchain_crypto::open(&data_key, &binding, &envelope).ok()
    }))
}

/// The data key of `version` wrapped for `identity`, released by the patient's home node
/// (which checks the consent contract itself), if this node asks for releases.
async fn released<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    version: &RecordVersion,
    hash: [u8; 32],
) -> Option<ehrchain_crypto::Wrap> {
    let releases = state.releases.as_ref()?;
    let ask = ehrchain_chain::records::KeyAsk {
        hash,
        record: version.anchor.record,
        version: version.anchor.version,
        reader: ehrchain_contracts::facts::key_bytes(identity),
    };
    tokio::time::timeout(ehrchain_chain::records::RELEASE_WAIT, releases.ask(ask))
        .await
        .ok()
        .flatten()
}

pub(super) fn versions_of<B: Blob>(
    state: &ApiState<B>,
    kind: ResourceType,
    id: &str,
) -> Result<Vec<RecordVersion>> {
    let record = id16(id).ok_or_else(|| not_found("no such resource"))?;
    let (versions, erased) = state.chain.read(|s| {
        let versions = s.versions(&record);
        let erased = versions.last().is_some_and(|v| {
            s.patient(&v.anchor.patient)
                .is_none_or(|p| p.erased_height.is_some())
        });
        (versions, erased)
    });
    match versions.last() {
        None => Err(not_found("no such resource")),
        Some(v) if v.anchor.resource_type != kind.code() => Err(not_found("no such resource")),
        Some(_) if erased => Err(ApiError::fhir(
            StatusCode::GONE,
            "deleted",
            "the patient's records were erased",
        )),
        Some(_) => Ok(versions),
    }
}

/// Read access to one record for the caller, recorded on chain; 403 if denied.
pub(super) async fn allowed<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    record: [u8; 16],
) -> Result<()> {
    let purpose = purpose_for(role_of(state, &token.identity).as_ref());
    match record_reads(state, token, &[record], purpose)
        .await?
        .pop()
        .expect("one read")
    {
        Ok(()) => Ok(()),
        Err(reason) => Err(denied(&reason)),
    }
}

pub(super) async fn read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response> {
    read_version(&state, &headers, &kind, &id, None).await
}

pub(super) async fn vread<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id, vid)): Path<(String, String, String)>,
) -> Result<Response> {
    read_version(&state, &headers, &kind, &id, Some(&vid)).await
}

/// Read the latest version, or version `vid`: recorded on chain, then opened here.
pub(super) async fn read_version<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    kind: &str,
    id: &str,
    vid: Option<&str>,
) -> Result<Response> {
    let token = caller(state, headers)?;
    let versions = versions_of(state, resource_type(kind)?, id)?;
    let version = match vid {
        None => versions.last().expect("non-empty"),
        Some(vid) => vid
            .parse::<u32>()
            .ok()
            .and_then(|n| versions.iter().find(|v| v.anchor.version == n))
            .ok_or_else(|| not_found("no such version"))?,
    };
    allowed(state, &token, version.anchor.record).await?;
    if version.anchor.is_tombstone() {
        return Ok(with_version_headers(
            gone().into_response(),
            version,
            &state.gateway.public_url,
        ));
    }
    if vid.is_none() && names_version(headers, version.anchor.version) {
        // The caller holds this version already: nothing is opened or sent.
        return Ok(with_version_headers(
            StatusCode::NOT_MODIFIED.into_response(),
            version,
            &state.gateway.public_url,
        ));
    }
    let plain = reveal(state, &token.identity, version).await?;
    let body = present(&plain, version)?;
    Ok(with_version_headers(
        fhir_raw(StatusCode::OK, &body),
        version,
        &state.gateway.public_url,
    ))
}

/// 410 for a record whose current (or asked-for) version is a logical delete.
pub(super) fn gone() -> ApiError {
    ApiError::fhir(
        StatusCode::GONE,
        "deleted",
        "the resource was deleted; its history keeps the earlier versions",
    )
}

/// Whether `If-None-Match` names `version` (`W/"3"`, `"3"` or `*`).
pub(super) fn names_version(headers: &HeaderMap, version: u32) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == format!("\"{version}\""))
}

/// `_history` of any record (GET), `$everything` of a Patient (GET or POST).
pub(super) async fn instance_operation<B: Blob>(
    method: axum::http::Method,
    state: State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id, operation)): Path<(String, String, String)>,
    query: RawQuery,
) -> Result<Response> {
    match operation.as_str() {
        "_history" if method == axum::http::Method::GET => history(state, headers, kind, id).await,
        "$everything" if kind == "Patient" => everything(state, headers, id, query).await,
        other
            if kind == "Patient"
                && method == axum::http::Method::GET
                && resource_type(other).is_ok() =>
        {
            super::search::compartment(&state.0, &headers, id, other, query.0).await
        }
        _ => Err(not_found("unknown operation; see /fhir/metadata")),
    }
}

/// `Patient/{id}/$everything`: the patient's records the caller may read, each read
/// recorded on chain, paged by `_count`/`_offset`, the Patient resource first.
pub(super) async fn everything<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    id: String,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (pairs, ignored) = checked(query_pairs(query)?, &PAGING, &[], &headers)?;
    let (count, offset) = count_param(&pairs)?;
    let patient = id16(&id).ok_or_else(|| not_found("no such Patient"))?;
    let versions = whole_record(&state, &token, &patient)?;
    let total = versions.len();
    let page: Vec<RecordVersion> = versions.into_iter().skip(offset).take(count).collect();
    let records: Vec<[u8; 16]> = page.iter().map(|v| v.anchor.record).collect();
    let role = role_of(&state, &token.identity);
    let outcomes = record_reads(&state, &token, &records, purpose_for(role.as_ref())).await?;
    if !outcomes.is_empty() && outcomes.iter().all(|o| o.is_err()) {
        return Err(denied(&outcomes[0].clone().err().unwrap_or_default()));
    }
    let base = &state.gateway.public_url;
    let mut entries = Vec::new();
    for (version, outcome) in page.iter().zip(&outcomes) {
        if outcome.is_ok() {
            let plain = reveal(&state, &token.identity, version).await?;
            let name = ResourceType::from_code(version.anchor.resource_type)
                .map_or("Resource", ResourceType::name);
            entries.push(Entry {
                fields: json!({
                    "fullUrl": format!("{base}/fhir/{name}/{}", hex::encode(version.anchor.record)),
                    "search": {"mode": "match"},
                }),
                resource: Some(present(&plain, version)?),
            });
        }
    }
    entries.extend(ignored.map(outcome_entry));
    Ok(searchset(
        base,
        &format!("Patient/{id}/$everything"),
        &pairs,
        (offset, count),
        total,
        entries,
    ))
}

/// The latest version of each of `patient`'s records that the token's scopes reach: the
/// Patient first, then newest first (`$everything`'s order, and the portal's sealed pages').
fn whole_record<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: &[u8; 16],
) -> Result<Vec<RecordVersion>> {
    token.within("Patient", crate::scopes::READ, patient)?;
    let (mut versions, erased) = state.chain.read(|s| {
        let erased = s.patient(patient).map(|p| p.erased_height.is_some());
        let versions: Vec<RecordVersion> = s
            .patient_records(patient)
            .into_iter()
            .filter_map(|r| s.versions(&r).pop())
            .filter(|v| !v.anchor.is_tombstone())
            // Only the types the token's scopes let it read (the Patient's own was checked
            // above).
            .filter(|v| {
                ResourceType::from_code(v.anchor.resource_type)
                    .is_some_and(|t| token.scopes.allows(t.name(), crate::scopes::READ))
            })
            .collect();
        (versions, erased)
    });
    match erased {
        None => return Err(not_found("no such Patient")),
        Some(true) => {
            return Err(ApiError::fhir(
                StatusCode::GONE,
                "deleted",
                "the patient's records were erased",
            ));
        }
        Some(false) => {}
    }
    versions.sort_by_key(|v| {
        (
            v.anchor.resource_type != ResourceType::Patient.code(),
            std::cmp::Reverse((v.anchor.timestamp_ms, v.anchor.record)),
        )
    });
    Ok(versions)
}

/// Most sealed records in one page of [`sealed`].
pub const SEALED_PAGE_MAX: usize = 100;

/// A page of a patient's own record, sealed: each latest version's envelope and the wrap of
/// its data key for the patient's own encryption key, for a patient who holds their key and
/// opens their record in the browser (the `client` crate in wasm). Each read is decided and
/// recorded exactly as `$everything`'s are; nothing here is decrypted.
pub(crate) async fn sealed<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: &[u8; 16],
    offset: usize,
    count: usize,
) -> Result<serde_json::Value> {
    use base64::Engine as _;
    let count = count.min(SEALED_PAGE_MAX);
    let versions = whole_record(state, token, patient)?;
    let total = versions.len();
    let page: Vec<RecordVersion> = versions.into_iter().skip(offset).take(count).collect();
    let records: Vec<[u8; 16]> = page.iter().map(|v| v.anchor.record).collect();
    let reader = state
        .chain
        .read(|s| s.identity(&token.identity).map(|i| i.encryption_key))
        .ok_or_else(|| forbidden("this identity is not registered"))?;
    let role = role_of(state, &token.identity);
    let outcomes = record_reads(state, token, &records, purpose_for(role.as_ref())).await?;
    let mut entries = Vec::with_capacity(page.len());
    for (version, outcome) in page.iter().zip(&outcomes) {
        let record = hex::encode(version.anchor.record);
        if let Err(reason) = outcome {
            entries.push(json!({"record": record, "denied": reason}));
            continue;
        }
        let hash = hash_of(version);
        let (envelope, wraps) = stored(state, &hash).await?;
        let Some(wrap) = wraps.iter().find(|w| w.recipient.0 == reader) else {
            entries.push(json!({"record": record, "denied": "no-key-for-reader"}));
            continue;
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        entries.push(json!({
            "record": record,
            "version": version.anchor.version,
            "patient": hex::encode(version.anchor.patient),
            "resource_type": ResourceType::from_code(version.anchor.resource_type)
                .map_or("Resource", ResourceType::name),
            "last_updated": instant(version.anchor.timestamp_ms),
            "author": version.author.to_string(),
            "ciphertext_hash": hex::encode(hash),
            "envelope": b64.encode(&envelope),
            "wrap": b64.encode(wrap.encode()),
        }));
    }
    Ok(json!({"total": total, "offset": offset, "count": count, "entries": entries}))
}

/// A version's envelope and wraps from this node's store, waiting a little for one still on
/// its way from its author's node.
async fn stored<B: Blob>(
    state: &ApiState<B>,
    hash: &[u8; 32],
) -> Result<(Vec<u8>, Vec<ehrchain_crypto::Wrap>)> {
    for _ in 0..50 {
        if let Some(found) = state.store.get(hash).await.map_err(unavailable)? {
            return Ok(found);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(ApiError::fhir(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "this node does not hold the record yet; retry shortly",
    ))
}

pub(super) async fn history<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    kind: String,
    id: String,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let versions = versions_of(&state, resource_type(&kind)?, &id)?;
    allowed(&state, &token, versions[0].anchor.record).await?;
    let base = &state.gateway.public_url;
    let mut entries = Vec::new();
    for version in versions.iter().rev() {
        if version.anchor.is_tombstone() {
            entries.push(Entry {
                fields: json!({
                "fullUrl": format!("{base}/fhir/{kind}/{id}"),
                "request": {"method": "DELETE", "url": format!("{kind}/{id}")},
                "response": {"status": "204",
                             "etag": format!("W/\"{}\"", version.anchor.version),
                             "lastModified": instant(version.anchor.timestamp_ms)},
                }),
                resource: None,
            });
            continue;
        }
        let plain = reveal(&state, &token.identity, version).await?;
        entries.push(Entry {
            fields: json!({
            "fullUrl": format!("{base}/fhir/{kind}/{id}"),
            "request": {"method": if version.anchor.version == 1 { "POST" } else { "PUT" },
                        "url": format!("{kind}/{id}")},
            "response": {"status": if version.anchor.version == 1 { "201" } else { "200" },
                         "etag": format!("W/\"{}\"", version.anchor.version),
                         "lastModified": instant(version.anchor.timestamp_ms)},
            }),
            resource: Some(present(&plain, version)?),
        });
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/fhir/{kind}/{id}/_history")}],
    });
    Ok(fhir_bundle(StatusCode::OK, &bundle, &entries))
}
