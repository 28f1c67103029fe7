//! FHIR R4 REST over the chain: `/fhir` on every node.
//!
//! Every request carries a bearer token from `/auth/token` (see [`crate::gateway`]); what it
//! does becomes a transaction signed by the caller's on-chain session. A read is decided here
//! by the contract's own code against this node's final state when the gateway may decide it
//! (`contracts::access::gateway_reader`): an allowed read is journalled and flushed before the
//! record is opened, and reaches the chain in the next access-log batch. Any other read (a
//! denial, an unknown record, a stale state) goes to the chain as an `Access` transaction and
//! waits for its outcome; a denied read is answered 403 and stays on chain. A create or update
//! is sealed here (fresh data key, wrapped for `contracts::access::version_readers`) and
//! anchored. `Consent` maps to grants,
//! `AuditEvent` to the on-chain trail. Errors are `OperationOutcome`s that name the rule and
//! never echo content.

use crate::{
    ApiState,
    gateway::{self, Token, caller, commit, now_ms, submit_as, submit_staged},
};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::{Action, Grant, Purpose};
use ehrchain_contracts::{
    facts::{Outcome, RecordVersion, Role},
    state::Reader as _,
};
use ehrchain_crypto::{Binding, EncryptionPublicKey, Share, envelope_hash};
use ehrchain_fhir::{ResourceType, operation_outcome};
use ehrchain_types::{ConsentGrant, Digest, Payload, PublicKey, RecordAnchor};
use serde_json::{Value, json};
use std::sync::Arc;

/// `Content-Type` of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// Largest FHIR request body.
pub const FHIR_BODY_BYTES_MAX: usize = ehrchain_fhir::RESOURCE_SIZE_BYTES_MAX;
/// Default and largest page of a search.
pub const PAGE_DEFAULT: usize = 20;
pub const PAGE_MAX: usize = 100;
/// Most records one search reads when it must filter on content.
pub const SEARCH_READS_MAX: usize = 200;

/// An error answered as an `OperationOutcome`.
#[derive(Debug)]
pub struct FhirError {
    status: StatusCode,
    code: &'static str,
    diagnostics: String,
    issues: Option<Value>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: &'static str, diagnostics: &str) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.to_string(),
            issues: None,
        }
    }

    pub fn diagnostics(&self) -> &str {
        &self.diagnostics
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = self.issues.unwrap_or_else(|| {
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "error",
                    "code": self.code,
                    "diagnostics": self.diagnostics,
                }],
            })
        });
        let mut response = (self.status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        response
    }
}

type Result<T> = std::result::Result<T, FhirError>;

fn not_found(what: &str) -> FhirError {
    FhirError::new(StatusCode::NOT_FOUND, "not-found", what)
}

fn invalid(what: &str) -> FhirError {
    FhirError::new(StatusCode::BAD_REQUEST, "invalid", what)
}

fn forbidden(what: &str) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, "forbidden", what)
}

fn unavailable(error: ehrchain_storage::Error) -> FhirError {
    tracing::error!(%error, "blob store failed");
    FhirError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the blob store is unavailable",
    )
}

pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route(
            "/.well-known/smart-configuration",
            get(smart_configuration::<B>),
        )
        // SMART discovery lives under the FHIR base URL (SMART App Launch 2.x, 2.1).
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration::<B>),
        )
        .route("/auth/token", post(gateway::token::<B>))
        .route("/fhir/metadata", get(metadata::<B>))
        .route("/fhir", post(bundle::<B>))
        .route("/fhir/AuditEvent", get(audit_events::<B>))
        .route(
            "/fhir/Consent",
            post(consent_create::<B>).get(consent_search::<B>),
        )
        .route(
            "/fhir/Consent/{id}",
            get(consent_read::<B>).put(consent_update::<B>),
        )
        .route("/fhir/{kind}", post(create::<B>).get(search::<B>))
        .route("/fhir/{kind}/{id}", get(read::<B>).put(update::<B>))
        .route("/fhir/Provenance", get(provenance_search::<B>))
        .route("/fhir/Provenance/{id}", get(provenance_read::<B>))
        .route(
            "/fhir/{kind}/{id}/{operation}",
            get(instance_operation::<B>),
        )
        .route("/fhir/{kind}/{id}/_history/{vid}", get(vread::<B>))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn body_bytes(body: Body) -> Result<Bytes> {
    axum::body::to_bytes(body, FHIR_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                &format!("the body is over the limit of {FHIR_BODY_BYTES_MAX} bytes"),
            )
        })
}

fn fhir_json(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

// ---- time ----------------------------------------------------------------------------------

fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A FHIR `instant`: `2026-11-25T17:00:00.000Z`.
pub fn instant(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil(days);
    let rest = ms % 86_400_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

/// An HTTP date (RFC 9110): `Wed, 25 Nov 2026 17:00:00 GMT`.
pub fn http_date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil(days);
    let rest = ms / 1_000 % 86_400;
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days + 4).rem_euclid(7) as usize],
        MONTHS[m as usize - 1],
        rest / 3_600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Parse a FHIR date, dateTime or instant (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or with
/// `Thh:mm[:ss[.fff]]` and `Z` or `±hh:mm`) into milliseconds, at the start of the period.
pub fn parse_time(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    let d: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(time) = time {
        let (clock, offset_ms) = if let Some(clock) = time.strip_suffix('Z') {
            (clock, 0i64)
        } else if let Some(at) = time.rfind(['+', '-']) {
            let (h, mi) = time[at + 1..].split_once(':')?;
            let sign = if &time[at..at + 1] == "-" { -1 } else { 1 };
            let offset = (h.parse::<i64>().ok()? * 60 + mi.parse::<i64>().ok()?) * 60_000;
            (&time[..at], sign * offset)
        } else {
            (time, 0)
        };
        let mut fields = clock.split(':');
        let h: i64 = fields.next()?.parse().ok()?;
        let mi: i64 = fields.next()?.parse().ok()?;
        let s: f64 = fields.next().map_or(Some(0.0), |s| s.parse().ok())?;
        ms += h * 3_600_000 + mi * 60_000 + (s * 1000.0) as i64 - offset_ms;
    }
    u64::try_from(ms).ok()
}

// ---- identities ----------------------------------------------------------------------------

fn id16(text: &str) -> Option<[u8; 16]> {
    ehrchain_types::id_from_hex(text)
}

fn key_of(reference: &str) -> Option<PublicKey> {
    let (_, id) = reference.rsplit_once('/')?;
    ehrchain_types::public_key_from_hex(id)
}

/// The FHIR reference of an identity: `Patient/..`, `Practitioner/..`, `Organization/..`.
fn reference_of(role: Option<&Role>, key: &PublicKey) -> String {
    match role {
        Some(Role::Patient { patient }) => format!("Patient/{}", hex::encode(patient)),
        Some(Role::Institution) => format!("Organization/{}", hex::encode(key)),
        Some(Role::Clinician { .. }) => format!("Practitioner/{}", hex::encode(key)),
        _ => format!("Practitioner/{}", hex::encode(key)),
    }
}

fn role_of<B: Blob>(state: &ApiState<B>, key: &PublicKey) -> Option<Role> {
    state.chain.read(|s| s.identity(key).map(|i| i.role))
}

// ---- discovery -----------------------------------------------------------------------------

async fn smart_configuration<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Json<Value> {
    Json(json!({
        "token_endpoint": state.gateway.token_url(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.*"],
        "capabilities": ["client-confidential-asymmetric"],
    }))
}

async fn metadata<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Response {
    let record_params = json!([
        {"name": "patient", "type": "reference", "documentation": "The patient (Patient/{id} or {id})"},
        {"name": "subject", "type": "reference", "documentation": "Same as patient"},
        {"name": "_id", "type": "token"},
        {"name": "_lastUpdated", "type": "date", "documentation": "When the version was written (eq, ge, gt, le, lt)"},
        {"name": "date", "type": "date", "documentation": "The type's clinical date (eq, ge, gt, le, lt)"},
        {"name": "code", "type": "token", "documentation": "system|code or code"},
        {"name": "category", "type": "token", "documentation": "system|code or code"},
        {"name": "_count", "type": "number"},
    ]);
    let mut resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|t| {
            json!({
                "type": t.name(),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"},
                    {"code": "history-instance"}, {"code": "create"}, {"code": "search-type"},
                ],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": false,
                "searchParam": record_params,
            })
        })
        .collect();
    if let Some(patient) = resources.first_mut() {
        patient["operation"] = json!([{
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }]);
    }
    resources.push(json!({
        "type": "Provenance",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": "target", "type": "reference", "documentation": "{type}/{id}: one Provenance per version, with its inclusion proof"}],
    }));
    resources.push(json!({
        "type": "Consent",
        "interaction": [{"code": "create"}, {"code": "read"}, {"code": "update"}, {"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference"}],
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference"}, {"name": "_count", "type": "number"}],
    }));
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now_ms())[..10],
        "publisher": "ehrchain",
        "kind": "instance",
        "software": {"name": "ehrchain", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "ehrchain node", "url": format!("{}/fhir", state.gateway.public_url)},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }]}],
                "description": "SMART Backend Services: POST a JWT client assertion (EdDSA) to the token endpoint",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": state.gateway.token_url()}],
                }],
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    });
    fhir_json(StatusCode::OK, &statement)
}

// ---- records -------------------------------------------------------------------------------

fn resource_type(kind: &str) -> Result<ResourceType> {
    ResourceType::from_name(kind).ok_or_else(|| {
        not_found(&format!(
            "resource type {kind:?} is not supported here; see /fhir/metadata"
        ))
    })
}

/// The resource as served: the stored JSON with `id` and `meta.versionId`/`lastUpdated`.
fn present(plain: &[u8], version: &RecordVersion) -> Result<Value> {
    let mut value: Value = serde_json::from_slice(plain).map_err(|_| {
        FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored record is not JSON",
        )
    })?;
    let object = value.as_object_mut().ok_or_else(|| {
        FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored record is not a JSON object",
        )
    })?;
    object.insert("id".into(), json!(hex::encode(version.anchor.record)));
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["versionId"] = json!(version.anchor.version.to_string());
    meta["lastUpdated"] = json!(instant(version.anchor.timestamp_ms));
    Ok(value)
}

fn with_version_headers(mut response: Response, version: &RecordVersion, base: &str) -> Response {
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
fn purpose_for(role: Option<&Role>) -> Purpose {
    match role {
        Some(Role::Patient { .. } | Role::Guardian { .. }) => Purpose::PatientRequest,
        _ => Purpose::Treatment,
    }
}

/// Decide reads here, with the contract's code against this node's final state (read once for
/// all of them): for each allowed one the time it was decided at, for the access log; `None`
/// where the chain must decide (a denial, an unknown record, a session this gateway cannot log
/// for, a final state too old to trust).
fn decided_here<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    records: &[[u8; 16]],
    purpose: Purpose,
) -> Vec<Option<u64>> {
    let gateway = match (&state.gateway.access_log, &state.gateway.institution) {
        (Some(_), Some(key)) => commonware_cryptography::Signer::public_key(key),
        _ => return vec![None; records.len()],
    };
    let session = token.session();
    let wall = crate::gateway::now_ms();
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

/// Record read attempts and learn their outcome: `Ok(())` allowed. A read this gateway allows
/// by the contract is journalled in its access log (durable before this returns) and reaches
/// the chain in the next log batch; any other goes to the chain as its own `Access`
/// transaction and waits for its outcome there.
async fn record_reads<B: Blob>(
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
                FhirError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", &e.to_string())
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

fn denied(reason: &str) -> FhirError {
    forbidden(&format!(
        "access denied ({reason}); the attempt is recorded on chain"
    ))
}

/// Open a version with a key this node holds for the caller (called only after an allowed
/// read of the record committed).
async fn reveal<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    version: &RecordVersion,
) -> Result<Vec<u8>> {
    let hash: [u8; 32] = version
        .anchor
        .ciphertext_hash
        .as_ref()
        .try_into()
        .expect("32");
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
                                FhirError::new(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "exception",
                                    "a stored record does not decrypt",
                                )
                            },
                        );
                    }
                }
                if !shared {
                    return Err(forbidden(
                        "this node holds no key that opens this record for you; use your institution's node",
                    ));
                }
                if tries >= 30 {
                    return Err(FhirError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the keys shared with you are still reaching this node; retry shortly",
                    ));
                }
            }
            // A new record's envelope may still be on its way from the author's node.
            None if tries < 50 => {}
            None => {
                return Err(FhirError::new(
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

fn versions_of<B: Blob>(
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
        Some(_) if erased => Err(FhirError::new(
            StatusCode::GONE,
            "deleted",
            "the patient's records were erased",
        )),
        Some(_) => Ok(versions),
    }
}

/// Read access to one record for the caller, recorded on chain; 403 if denied.
async fn allowed<B: Blob>(state: &ApiState<B>, token: &Token, record: [u8; 16]) -> Result<()> {
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

async fn read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response> {
    read_version(&state, &headers, &kind, &id, None).await
}

async fn vread<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id, vid)): Path<(String, String, String)>,
) -> Result<Response> {
    read_version(&state, &headers, &kind, &id, Some(&vid)).await
}

/// Read the latest version, or version `vid`: recorded on chain, then opened here.
async fn read_version<B: Blob>(
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
    let plain = reveal(state, &token.identity, version).await?;
    let body = present(&plain, version)?;
    Ok(with_version_headers(
        fhir_json(StatusCode::OK, &body),
        version,
        &state.gateway.public_url,
    ))
}

/// `_history` of any record, `$everything` of a Patient.
async fn instance_operation<B: Blob>(
    state: State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((kind, id, operation)): Path<(String, String, String)>,
    query: RawQuery,
) -> Result<Response> {
    match operation.as_str() {
        "_history" => history(state, headers, kind, id).await,
        "$everything" if kind == "Patient" => everything(state, headers, id, query).await,
        _ => Err(not_found("unknown operation; see /fhir/metadata")),
    }
}

/// `Patient/{id}/$everything`: the patient's records the caller may read, each read
/// recorded on chain, paged by `_count`/`_offset`, the Patient resource first.
async fn everything<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    id: String,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let pairs = query_pairs(query)?;
    let (count, offset) = count_param(&pairs)?;
    let patient = id16(&id).ok_or_else(|| not_found("no such Patient"))?;
    let (mut versions, erased) = state.chain.read(|s| {
        let erased = s.patient(&patient).map(|p| p.erased_height.is_some());
        let versions: Vec<RecordVersion> = s
            .patient_records(&patient)
            .into_iter()
            .filter_map(|r| s.versions(&r).pop())
            .collect();
        (versions, erased)
    });
    match erased {
        None => return Err(not_found("no such Patient")),
        Some(true) => {
            return Err(FhirError::new(
                StatusCode::GONE,
                "deleted",
                "the patient's records were erased",
            ));
        }
        Some(false) => {}
    }
    // The Patient first, then newest first.
    versions.sort_by_key(|v| {
        (
            v.anchor.resource_type != ResourceType::Patient.code(),
            std::cmp::Reverse((v.anchor.timestamp_ms, v.anchor.record)),
        )
    });
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
            entries.push(json!({
                "fullUrl": format!("{base}/fhir/{name}/{}", hex::encode(version.anchor.record)),
                "resource": present(&plain, version)?,
                "search": {"mode": "match"},
            }));
        }
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": bundle_links(base, &format!("Patient/{id}/$everything"), &pairs, offset, count, total),
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

async fn history<B: Blob>(
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
        let plain = reveal(&state, &token.identity, version).await?;
        entries.push(json!({
            "fullUrl": format!("{base}/fhir/{kind}/{id}"),
            "resource": present(&plain, version)?,
            "request": {"method": if version.anchor.version == 1 { "POST" } else { "PUT" },
                        "url": format!("{kind}/{id}")},
            "response": {"status": if version.anchor.version == 1 { "201" } else { "200" },
                         "etag": format!("W/\"{}\"", version.anchor.version),
                         "lastModified": instant(version.anchor.timestamp_ms)},
        }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/fhir/{kind}/{id}/_history")}],
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// The X25519 keys a new version of `patient`'s record of `kind` is wrapped for
/// (`access::wrap_readers`, the one statement of that rule).
fn readers<B: Blob>(
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
            ReadersError::UnknownPatient => FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not-found",
                "the referenced patient is not registered",
            ),
            ReadersError::Erased => FhirError::new(
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
async fn write_version<B: Blob>(
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
async fn committed_version<B: Blob>(
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
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the committed version is missing",
            )
        })
}

/// Seal, stage and submit one version as the caller (not yet committed).
async fn submit_version<B: Blob>(
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
            FhirError::new(
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
fn check(kind: ResourceType, bytes: &[u8]) -> Result<ehrchain_fhir::Resource> {
    let resource = ehrchain_fhir::validate(bytes).map_err(|issues| {
        let parse_error = issues
            .iter()
            .any(|i| i.code == "structure" && i.expression.is_empty());
        FhirError {
            status: if parse_error {
                StatusCode::BAD_REQUEST
            } else if issues.iter().any(|i| i.code == "too-long") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            },
            code: "invalid",
            diagnostics: String::new(),
            issues: Some(operation_outcome(&issues)),
        }
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

fn created(
    state_base: &str,
    version: &RecordVersion,
    json: &[u8],
    status: StatusCode,
) -> Result<Response> {
    let body = present(json, version)?;
    let mut response = with_version_headers(fhir_json(status, &body), version, state_base);
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
async fn register_patient<B: Blob>(state: &ApiState<B>, token: &Token) -> Result<[u8; 16]> {
    let patient: [u8; 16] = gateway::random_bytes();
    register_patient_as(state, token, patient).await?;
    Ok(patient)
}

/// Register `patient` (a fresh id) with this node as home and keeper of the key.
async fn register_patient_as<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: [u8; 16],
) -> Result<()> {
    let institution = state
        .gateway
        .institution
        .as_ref()
        .map(commonware_cryptography::Signer::public_key)
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
    let seed: [u8; 32] = gateway::random_bytes();
    gateway::write_secret(&dir.join(format!("{}.key", hex::encode(patient))), &seed).map_err(
        |error| {
            tracing::error!(%error, "cannot write a custodial key");
            FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "cannot store the patient's key",
            )
        },
    )?;
    let key = ehrchain_types::private_key_from_seed(&seed).expect("32 bytes");
    let tx = gateway::submit_as_institution(
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

async fn create<B: Blob>(
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
            FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "the patient reference must be Patient/{id} of a registered patient",
            )
        })?;
        (patient, gateway::random_bytes())
    };
    let version = write_version(&state, &token, kind, patient, record, 1, &bytes).await?;
    created(
        &state.gateway.public_url,
        &version,
        &bytes,
        StatusCode::CREATED,
    )
}

async fn update<B: Blob>(
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
        return Err(FhirError::new(
            StatusCode::PRECONDITION_FAILED,
            "conflict",
            "If-Match does not name the current version",
        ));
    }
    let patient = latest.anchor.patient;
    if kind != ResourceType::Patient && resource.patient.as_deref().and_then(id16) != Some(patient)
    {
        return Err(FhirError::new(
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

fn query_pairs(query: Option<String>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| invalid("malformed query string"))
}

/// A date comparison: `ge2024-01-01` and friends; `None` for a malformed one.
fn date_matches(param: &str, value: Option<&str>) -> bool {
    let (op, date) = match param.get(..2) {
        Some(p @ ("eq" | "ne" | "ge" | "gt" | "le" | "lt")) => (p, &param[2..]),
        _ => ("eq", param),
    };
    let Some(value) = value else { return false };
    let n = date.len().min(value.len());
    let (v, d) = (&value[..n], &date[..n]);
    match op {
        "eq" => v == d,
        "ne" => v != d,
        "ge" => v >= d,
        "gt" => v > d,
        "le" => v <= d,
        _ => v < d,
    }
}

fn token_matches(param: &str, codes: &[String]) -> bool {
    param.split(',').any(|wanted| {
        codes.iter().any(|code| {
            if wanted.contains('|') {
                code == wanted
            } else {
                code.rsplit('|').next() == Some(wanted)
            }
        })
    })
}

fn patient_param(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(k, _)| k == "patient" || k == "subject")
        .map(|(_, v)| v.strip_prefix("Patient/").unwrap_or(v))
}

fn count_param(pairs: &[(String, String)]) -> Result<(usize, usize)> {
    let mut count = PAGE_DEFAULT;
    let mut offset = 0;
    for (k, v) in pairs {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| invalid("_count must be a number"))?
                    .min(PAGE_MAX)
            }
            "_offset" => offset = v.parse().map_err(|_| invalid("_offset must be a number"))?,
            _ => {}
        }
    }
    Ok((count, offset))
}

fn bundle_links(
    base: &str,
    path: &str,
    pairs: &[(String, String)],
    offset: usize,
    count: usize,
    total: usize,
) -> Vec<Value> {
    let keep: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_offset" && k != "_count")
        .cloned()
        .collect();
    let url = |offset: usize| {
        let mut pairs = keep.clone();
        pairs.push(("_count".into(), count.to_string()));
        pairs.push(("_offset".into(), offset.to_string()));
        format!(
            "{base}/fhir/{path}?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let mut links = vec![json!({"relation": "self", "url": url(offset)})];
    if offset + count < total {
        links.push(json!({"relation": "next", "url": url(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": url(offset.saturating_sub(count))}));
    }
    links
}

async fn search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let pairs = query_pairs(query)?;
    let (count, offset) = count_param(&pairs)?;
    let role = role_of(&state, &token.identity);
    let patient = match (patient_param(&pairs), &role) {
        (Some(p), _) => id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?,
        (None, Some(Role::Patient { patient } | Role::Guardian { patient })) => *patient,
        (None, _) if kind == ResourceType::Patient => pairs
            .iter()
            .find(|(k, _)| k == "_id")
            .and_then(|(_, v)| id16(v))
            .ok_or_else(|| invalid("search Patient by _id"))?,
        (None, _) => return Err(invalid("a search names its patient (patient= or subject=)")),
    };
    let ids: Vec<[u8; 16]> = pairs
        .iter()
        .filter(|(k, _)| k == "_id")
        .flat_map(|(_, v)| v.split(',').filter_map(id16))
        .collect();
    let updated: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "_lastUpdated")
        .map(|(_, v)| v.as_str())
        .collect();
    // Candidates from on-chain metadata alone: the patient's records of this type.
    let mut candidates: Vec<RecordVersion> = state.chain.read(|s| {
        if s.patient(&patient)
            .is_none_or(|p| p.erased_height.is_some())
        {
            return Vec::new();
        }
        s.patient_records(&patient)
            .into_iter()
            .filter(|r| ids.is_empty() || ids.contains(r))
            .filter_map(|r| s.versions(&r).pop())
            .filter(|v| v.anchor.resource_type == kind.code())
            .filter(|v| {
                updated
                    .iter()
                    .all(|p| date_matches(p, Some(&instant(v.anchor.timestamp_ms))))
            })
            .collect()
    });
    candidates.sort_by_key(|v| std::cmp::Reverse((v.anchor.timestamp_ms, v.anchor.record)));
    let content: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "code" | "category" | "date"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Without content filters only the page is read; with them, everything (bounded) is.
    let (to_read, paged_already) = if content.is_empty() {
        let total = candidates.len();
        (
            candidates
                .into_iter()
                .skip(offset)
                .take(count)
                .collect::<Vec<_>>(),
            Some(total),
        )
    } else {
        if candidates.len() > SEARCH_READS_MAX {
            return Err(invalid(&format!(
                "more than {SEARCH_READS_MAX} records to filter; narrow the search (_lastUpdated, _id)"
            )));
        }
        (candidates, None)
    };
    let records: Vec<[u8; 16]> = to_read.iter().map(|v| v.anchor.record).collect();
    let outcomes = record_reads(&state, &token, &records, purpose_for(role.as_ref())).await?;
    if !outcomes.is_empty() && outcomes.iter().all(|o| o.is_err()) {
        let reason = outcomes[0].clone().err().unwrap_or_default();
        return Err(denied(&reason));
    }
    let mut matches = Vec::new();
    for (version, outcome) in to_read.iter().zip(&outcomes) {
        if outcome.is_err() {
            continue;
        }
        let plain = reveal(&state, &token.identity, version).await?;
        if !content.is_empty() {
            let Ok(resource) = ehrchain_fhir::validate(&plain) else {
                continue;
            };
            let keep = content.iter().all(|(k, v)| match *k {
                "code" => token_matches(v, &resource.codes),
                "category" => token_matches(v, &resource.categories),
                _ => date_matches(v, resource.date.as_deref()),
            });
            if !keep {
                continue;
            }
        }
        matches.push(present(&plain, version)?);
    }
    let (total, page): (usize, Vec<Value>) = match paged_already {
        Some(total) => (total, matches),
        None => (
            matches.len(),
            matches.into_iter().skip(offset).take(count).collect(),
        ),
    };
    let base = &state.gateway.public_url;
    let entries: Vec<Value> = page
        .into_iter()
        .map(|resource| {
            json!({
                "fullUrl": format!("{base}/fhir/{}/{}", kind.name(), resource["id"].as_str().unwrap_or("")),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": bundle_links(base, kind.name(), &pairs, offset, count, total),
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

// ---- Bundle transaction and batch ----------------------------------------------------------

/// Most entries one Bundle may carry.
pub const BUNDLE_ENTRIES_MAX: usize = 1_000;

/// Replace every `reference` naming a key of `ids` (`urn:uuid:…`) with its server id.
fn resolve_references(value: &mut Value, ids: &std::collections::HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("reference")
                && let Some(resolved) = ids.get(reference.as_str())
            {
                *reference = resolved.clone();
            }
            for child in map.values_mut() {
                resolve_references(child, ids);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve_references(v, ids)),
        _ => {}
    }
}

/// One write of a Bundle, checked and with its ids fixed.
struct Planned {
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
async fn bundle<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
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
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            &format!("a Bundle carries at most {BUNDLE_ENTRIES_MAX} entries"),
        ));
    }
    // Pass 1: server ids for every POST, so references between entries resolve.
    let mut ids = std::collections::HashMap::new();
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
                let id: [u8; 16] = gateway::random_bytes();
                if let Some(full) = entry["fullUrl"].as_str() {
                    ids.insert(
                        full.to_string(),
                        format!("{}/{}", kind.name(), hex::encode(id)),
                    );
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
    for (index, (entry, (kind, (id, create)))) in entries.iter().zip(&assigned).enumerate() {
        let mut resource = entry["resource"].clone();
        resolve_references(&mut resource, &ids);
        let json = serde_json::to_vec(&resource).map_err(|_| invalid("unserializable entry"))?;
        let checked = check(*kind, &json).map_err(|mut error| {
            error.diagnostics = format!("entry {index}: {}", error.diagnostics);
            if let Some(issues) = error
                .issues
                .as_mut()
                .and_then(|o| o["issue"].as_array_mut())
            {
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
            error.diagnostics = format!(
                "entry {index}: {} ({index} earlier entries were written)",
                error.diagnostics
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

// ---- Provenance ----------------------------------------------------------------------------

/// The Provenance of one record version: who wrote it, its block and transaction, and the
/// inclusion proof (base64 JSON in `signature.data`) that `ehrchain proof verify` checks
/// offline against the genesis validators.
async fn provenance_json<B: Blob>(state: &ApiState<B>, version: &RecordVersion) -> Result<Value> {
    let location = state.chain.location(&version.transaction).ok_or_else(|| {
        FhirError::new(
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
    .map_err(|e| FhirError::new(e.status, "exception", &e.message))?
    .ok_or_else(|| {
        FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "no finalization certificate covers the block yet; retry shortly",
        )
    })?;
    let proof = serde_json::to_vec(&proof).map_err(|_| {
        FhirError::new(
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
        "id": hex::encode(version.transaction),
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
async fn provenance_search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let pairs = query_pairs(query)?;
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
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// A Provenance follows the read rule of its target (`auth::may_see_record`): its author,
/// time and hash are the record's metadata.
fn provenance_visible<B: Blob>(
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

async fn provenance_read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let hash =
        ehrchain_types::digest_from_hex(&id).ok_or_else(|| not_found("no such Provenance"))?;
    let version = state
        .chain
        .read(|s| s.all_versions().find(|v| v.transaction == hash).cloned())
        .ok_or_else(|| not_found("no such Provenance"))?;
    provenance_visible(&state, token, &version.anchor.record)?;
    let resource = provenance_json(&state, &version).await?;
    Ok(fhir_json(StatusCode::OK, &resource))
}

// ---- Consent -------------------------------------------------------------------------------

const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";

fn consent_json<B: Blob>(state: &ApiState<B>, grant: &Grant, now_ms: u64) -> Value {
    let grantee = ehrchain_types::decode_public_key(grant.grantee).ok();
    let role = grantee.as_ref().and_then(|k| role_of(state, k));
    let actor = grantee
        .as_ref()
        .map(|k| reference_of(role.as_ref(), k))
        .unwrap_or_default();
    let active = grant.revoked_at_ms.is_none() && now_ms < grant.valid_until_ms;
    let mut actions = Vec::new();
    for action in [Action::Read, Action::Write] {
        if grant.allows_action(action) {
            actions.push(json!({"coding": [{"system": CONSENT_ACTION, "code": action.code()}]}));
        }
    }
    let mut provision = json!({
        "type": "permit",
        "period": {"start": instant(grant.valid_from_ms), "end": instant(grant.valid_until_ms)},
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": actor},
        }],
        "action": actions,
    });
    if !grant.purposes.is_empty() {
        provision["purpose"] = grant
            .purposes
            .iter()
            .map(|p| json!({"system": ACT_REASON, "code": p.code()}))
            .collect();
    }
    if !grant.types.is_empty() {
        provision["class"] = grant
            .types
            .iter()
            .filter_map(|t| ResourceType::from_code(*t))
            .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t.name()}))
            .collect();
    }
    json!({
        "resourceType": "Consent",
        "id": hex::encode(grant.id),
        "status": if active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", hex::encode(grant.patient))},
        "dateTime": instant(grant.valid_from_ms),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

/// The grant a Consent asks for.
struct Asked {
    patient: [u8; 16],
    grantee: PublicKey,
    actions: u8,
    types: Vec<u8>,
    purposes: Vec<u8>,
    from_ms: u64,
    until_ms: u64,
}

fn codes(value: &Value) -> Vec<String> {
    // A CodeableConcept or a Coding, or an array of either.
    let mut out = Vec::new();
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for item in items {
        if let Some(code) = item["code"].as_str() {
            out.push(code.to_string());
        }
        for coding in item["coding"].as_array().into_iter().flatten() {
            if let Some(code) = coding["code"].as_str() {
                out.push(code.to_string());
            }
        }
    }
    out
}

fn unprocessable(what: &str) -> FhirError {
    FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what)
}

fn parse_consent(value: &Value, now: u64) -> Result<Asked> {
    if value["resourceType"] != "Consent" {
        return Err(invalid("the body is not a Consent"));
    }
    let patient = value["patient"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(id16)
        .ok_or_else(|| unprocessable("Consent.patient must reference Patient/{id}"))?;
    let provision = &value["provision"];
    let actors = provision["actor"].as_array().map_or(&[][..], Vec::as_slice);
    if actors.len() != 1 {
        return Err(unprocessable(
            "Consent.provision.actor must name exactly one grantee",
        ));
    }
    let grantee = actors[0]["reference"]["reference"]
        .as_str()
        .filter(|r| r.starts_with("Practitioner/") || r.starts_with("Organization/"))
        .and_then(key_of)
        .ok_or_else(|| {
            unprocessable(
                "Consent.provision.actor.reference must be Practitioner/{id} or Organization/{id}",
            )
        })?;
    let mut actions = 0u8;
    for code in codes(&provision["action"]) {
        actions |= match code.as_str() {
            "access" => 1,
            "correct" => 2,
            _ => {
                return Err(unprocessable(
                    "Consent.provision.action codes are access and correct",
                ));
            }
        };
    }
    if actions == 0 {
        actions = 1;
    }
    let mut purposes = Vec::new();
    for code in codes(&provision["purpose"]) {
        let purpose = Purpose::from_code(&code).ok_or_else(|| {
            unprocessable("Consent.provision.purpose: unsupported v3-ActReason code")
        })?;
        purposes.push(purpose as u8);
    }
    let mut types = Vec::new();
    for code in codes(&provision["class"]) {
        let kind = ResourceType::from_name(&code)
            .ok_or_else(|| unprocessable("Consent.provision.class: unsupported resource type"))?;
        types.push(kind.code());
    }
    let period = &provision["period"];
    let from_ms = match period["start"].as_str() {
        Some(text) => parse_time(text)
            .ok_or_else(|| unprocessable("Consent.provision.period.start is not a dateTime"))?,
        None => now,
    };
    let until_ms = match period["end"].as_str() {
        Some(text) => parse_time(text)
            .ok_or_else(|| unprocessable("Consent.provision.period.end is not a dateTime"))?,
        None => now + 365 * 86_400_000,
    };
    Ok(Asked {
        patient,
        grantee,
        actions,
        types,
        purposes,
        from_ms,
        until_ms,
    })
}

/// Wrap the data keys of the patient's covered records for the grantee, reading (and
/// recording) each as the patient. Needs the patient's key at this node (custodial).
async fn build_share<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    asked: &Asked,
    grantee_key: EncryptionPublicKey,
) -> Result<Option<Share>> {
    let versions: Vec<RecordVersion> = state.chain.read(|s| {
        s.patient_records(&asked.patient)
            .into_iter()
            .flat_map(|r| s.versions(&r))
            .filter(|v| asked.types.is_empty() || asked.types.contains(&v.anchor.resource_type))
            .collect()
    });
    if versions.is_empty() || asked.actions & 1 == 0 {
        return Ok(None);
    }
    let mut records: Vec<[u8; 16]> = versions.iter().map(|v| v.anchor.record).collect();
    records.sort();
    records.dedup();
    let outcomes = record_reads(state, token, &records, Purpose::PatientRequest).await?;
    if let Some(Err(reason)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Err(denied(&reason));
    }
    let mut share = Share::default();
    for version in &versions {
        let hash: [u8; 32] = version
            .anchor
            .ciphertext_hash
            .as_ref()
            .try_into()
            .expect("32");
        let Some((_, wraps)) = state.store.get(&hash).await.map_err(unavailable)? else {
            continue;
        };
        let binding = Binding {
            record: version.anchor.record,
            version: version.anchor.version,
            patient: version.anchor.patient,
        };
        let patient_keys = gateway::held_keys(state, &token.identity, &asked.patient);
        let data_key = patient_keys.iter().find_map(|key| {
            let wrap = wraps.iter().find(|w| w.recipient == key.public())?;
            ehrchain_crypto::unwrap(wrap, key, &binding, &hash).ok()
        });
        let Some(data_key) = data_key else {
            return Err(forbidden(
                "this node does not hold the patient's key: grant with the patient's own client (ehrchain consent grant)",
            ));
        };
        let wrap = ehrchain_crypto::wrap(&data_key, &grantee_key, &binding, &hash)
            .map_err(|_| unprocessable("the grantee's encryption key is invalid"))?;
        share.entries.push((hash, wrap));
    }
    Ok(Some(share))
}

async fn consent_create<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
    if value["status"].as_str() != Some("active") {
        return Err(unprocessable("a new Consent has status active"));
    }
    let asked = parse_consent(&value, now_ms())?;
    let grant = |id: [u8; 16], share_hash: [u8; 32]| {
        Payload::Grant(ConsentGrant {
            id,
            patient: asked.patient,
            grantee: asked.grantee.clone(),
            actions: asked.actions,
            types: asked.types.clone(),
            purposes: asked.purposes.clone(),
            valid_from_ms: asked.from_ms,
            valid_until_ms: asked.until_ms,
            share: Digest::from(share_hash),
        })
    };
    match role_of(&state, &token.identity) {
        Some(Role::Patient { patient } | Role::Guardian { patient })
            if patient == asked.patient => {}
        _ => {
            // Not the caller's to give: the chain refuses it and records the attempt on the
            // patient's trail (commit answers 403), sharing nothing.
            let tx = submit_as(&state, &token, grant(gateway::random_bytes(), [0; 32])).await?;
            commit(&state, &tx).await?;
            return Err(forbidden(
                "only the patient or a guardian grants consent for the patient's records",
            ));
        }
    }
    let grantee_key = state
        .chain
        .read(|s| s.identity(&asked.grantee).map(|i| i.encryption_key))
        .map(EncryptionPublicKey)
        .ok_or_else(|| unprocessable("the grantee is not an enrolled clinician or member"))?;
    let share = build_share(&state, &token, &asked, grantee_key).await?;
    let (share_hash, staged) = match &share {
        Some(share) => {
            let bytes = share.encode();
            let hash = envelope_hash(&bytes);
            let staged = state.store.stage(&bytes, &[]).await.map_err(unavailable)?;
            (hash, Some(staged))
        }
        None => ([0u8; 32], None),
    };
    let id: [u8; 16] = gateway::random_bytes();
    let tx = submit_staged(&state, &token, grant(id, share_hash), staged).await?;
    commit(&state, &tx).await?;
    let (grant, now) = state
        .chain
        .read(|s| (s.grant(&asked.patient, &id), s.time_ms()));
    let grant = grant.ok_or_else(|| not_found("the grant did not commit"))?;
    let body = consent_json(&state, &grant, now);
    let mut response = fhir_json(StatusCode::CREATED, &body);
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{}/fhir/Consent/{}",
        state.gateway.public_url,
        hex::encode(id)
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn find_grant<B: Blob>(state: &ApiState<B>, id: &str) -> Result<(Grant, u64)> {
    let id = id16(id).ok_or_else(|| not_found("no such Consent"))?;
    state
        .chain
        .read(|s| {
            s.all_grants()
                .find(|g| g.id == id)
                .cloned()
                .map(|g| (g, s.time_ms()))
        })
        .ok_or_else(|| not_found("no such Consent"))
}

/// Consents are visible to the patient, guardians, the grantee and auditors.
fn may_see_consent<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: &[u8; 16],
    grantee: Option<&[u8; 32]>,
) -> bool {
    match role_of(state, &token.identity) {
        Some(Role::Patient { patient: p } | Role::Guardian { patient: p }) => &p == patient,
        Some(Role::Auditor) => true,
        Some(_) => grantee.is_some_and(|g| g.as_slice() == token.identity.as_ref()),
        None => false,
    }
}

async fn consent_read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (grant, now) = find_grant(&state, &id)?;
    if !may_see_consent(&state, &token, &grant.patient, Some(&grant.grantee)) {
        return Err(forbidden("this Consent is not yours to see"));
    }
    Ok(fhir_json(
        StatusCode::OK,
        &consent_json(&state, &grant, now),
    ))
}

async fn consent_update<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
    // An update names its resource twice, in the URL and in the body: both must agree
    // (FHIR R4 http.html#update), or the request is refused before anything is changed.
    if value["resourceType"] != "Consent" {
        return Err(invalid("the body must be a Consent"));
    }
    if value["id"].as_str() != Some(id.as_str()) {
        return Err(invalid("the resource id must be present and match the URL"));
    }
    let (grant, _) = find_grant(&state, &id)?;
    match value["status"].as_str() {
        Some("inactive" | "rejected") => {}
        Some("active") if grant.revoked_at_ms.is_none() => {
            return Err(unprocessable(
                "a grant's terms do not change; create a new Consent and set this one inactive",
            ));
        }
        _ => return Err(unprocessable("set status to inactive to revoke a Consent")),
    }
    if grant.revoked_at_ms.is_none() {
        let tx = submit_as(
            &state,
            &token,
            Payload::Revoke {
                patient: grant.patient,
                grant: grant.id,
            },
        )
        .await?;
        commit(&state, &tx).await?;
    }
    let (grant, now) = find_grant(&state, &id)?;
    Ok(fhir_json(
        StatusCode::OK,
        &consent_json(&state, &grant, now),
    ))
}

async fn consent_search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let pairs = query_pairs(query)?;
    let patient = match (patient_param(&pairs), role_of(&state, &token.identity)) {
        (Some(p), _) => id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?,
        (None, Some(Role::Patient { patient } | Role::Guardian { patient })) => patient,
        _ => return Err(invalid("a Consent search names its patient")),
    };
    let (grants, now) = state.chain.read(|s| (s.grants(&patient), s.time_ms()));
    let visible: Vec<&Grant> = grants
        .iter()
        .filter(|g| may_see_consent(&state, &token, &patient, Some(&g.grantee)))
        .collect();
    let base = &state.gateway.public_url;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": visible.len(),
        "link": [{"relation": "self", "url": format!("{base}/fhir/Consent?patient={}", hex::encode(patient))}],
        "entry": visible.iter().map(|g| json!({
            "fullUrl": format!("{base}/fhir/Consent/{}", hex::encode(g.id)),
            "resource": consent_json(&state, g, now),
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

// ---- AuditEvent ----------------------------------------------------------------------------

/// An AuditEvent's id: the hash of the transaction that recorded it, and for a later entry of
/// a gateway's access log, a prefix of it with the entry number (FHIR ids are 64 at most).
fn audit_event_id(
    position: ehrchain_contracts::facts::EventKey,
    event: &ehrchain_contracts::facts::AccessEvent,
) -> String {
    let hash = hex::encode(event.transaction);
    match position.2 {
        0 => hash,
        entry => format!("{}-{entry}", &hash[..56]),
    }
}

fn audit_event_json<B: Blob>(
    state: &ApiState<B>,
    position: ehrchain_contracts::facts::EventKey,
    event: &ehrchain_contracts::facts::AccessEvent,
) -> Value {
    let role = role_of(state, &event.actor);
    let purpose = Purpose::from_number(event.purpose).map_or("TREAT", Purpose::code);
    let (outcome, description) = match event.outcome {
        Outcome::Allowed(_) => ("0", "allowed".to_string()),
        Outcome::Denied(reason) => ("4", format!("denied: {}", reason.code())),
    };
    let mut entities = vec![json!({
        "what": {"reference": format!("Patient/{}", hex::encode(event.patient))},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
    })];
    // A refused write or consent change, recorded as an attempt (not a read).
    let refused_operation = match event.outcome {
        Outcome::Denied(ehrchain_contracts::facts::Reason::NotPermitted { operation }) => {
            Some(operation)
        }
        _ => None,
    };
    let subtype = match event.record {
        Some((record, kind)) => {
            let name = ResourceType::from_code(kind).map_or("Resource", ResourceType::name);
            entities.push(json!({
                "what": {"reference": format!("{name}/{}", hex::encode(record))},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
            }));
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"})
        }
        None => {
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT", "display": "break-glass"})
        }
    };
    let (subtype, action) = match refused_operation {
        Some(4) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "update", "display": "write"}),
            "U",
        ),
        Some(17) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search the trail"}),
            "E",
        ),
        Some(_) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"}),
            "E",
        ),
        None => (subtype, "R"),
    };
    json!({
        "resourceType": "AuditEvent",
        "id": audit_event_id(position, event),
        "meta": {"profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read"]},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [subtype],
        "action": action,
        "recorded": instant(event.time_ms),
        "outcome": outcome,
        "outcomeDesc": description,
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose}]}],
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": {"reference": reference_of(role.as_ref(), &event.actor)},
            "requestor": true,
        }],
        "source": {
            "site": match position.2 {
                0 => format!("block {} transaction {}", position.0, position.1),
                entry => format!("block {} transaction {} entry {entry}", position.0, position.1),
            },
            "observer": {"display": "ehrchain consortium ledger"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    })
}

async fn audit_events<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let pairs = query_pairs(query)?;
    let (count, offset) = count_param(&pairs)?;
    let asked = match patient_param(&pairs) {
        Some(p) => Some(id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?),
        None => None,
    };
    let patient = match (role_of(&state, &token.identity), asked) {
        (Some(Role::Auditor), asked) => asked,
        (Some(Role::Patient { patient } | Role::Guardian { patient }), None) => Some(patient),
        (Some(Role::Patient { patient } | Role::Guardian { patient }), Some(asked))
            if asked == patient =>
        {
            Some(patient)
        }
        (_, asked) => {
            // Asked for one patient's trail: the chain decides and records the refusal.
            if let Some(patient) = asked
                && state.chain.read(|s| s.patient(&patient).is_some())
            {
                let tx = crate::gateway::submit_as(
                    &state,
                    &token,
                    ehrchain_types::Payload::TrailQuery { patient },
                )
                .await?;
                crate::gateway::commit(&state, &tx).await?;
            }
            return Err(forbidden(
                "the trail is shown to its patient, their guardians and auditors",
            ));
        }
    };
    let (total, page) = state.chain.read(|s| {
        let events: Vec<(
            ehrchain_contracts::facts::EventKey,
            ehrchain_contracts::facts::AccessEvent,
        )> = match &patient {
            Some(p) => s
                .patient_events(p)
                .into_iter()
                .map(|(k, e)| (k, e.clone()))
                .collect(),
            None => s.events().map(|(k, e)| (*k, e.clone())).collect(),
        };
        let total = events.len();
        // Newest first.
        let page: Vec<_> = events.into_iter().rev().skip(offset).take(count).collect();
        (total, page)
    });
    let base = &state.gateway.public_url;
    let entries: Vec<Value> = page
        .iter()
        .map(|(position, event)| {
            json!({
                "fullUrl": format!("{base}/fhir/AuditEvent/{}", audit_event_id(*position, event)),
                "resource": audit_event_json(&state, *position, event),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": bundle_links(base, "AuditEvent", &pairs, offset, count, total),
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_format_as_fhir_and_http_want() {
        let ms = parse_time("2026-11-25T17:04:05.123Z").unwrap();
        assert_eq!(instant(ms), "2026-11-25T17:04:05.123Z");
        assert_eq!(http_date(ms), "Wed, 25 Nov 2026 17:04:05 GMT");
        assert_eq!(parse_time("2026-11-25").unwrap(), ms - 61_445_123);
        assert_eq!(parse_time("2026-11-25T19:04:05.123+02:00").unwrap(), ms);
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        for bad in ["", "2026-13-01", "x", "2026-11-25T", "1969-01-01"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn search_comparisons() {
        assert!(date_matches("ge2024-01-01", Some("2024-03-02T10:00:00Z")));
        assert!(!date_matches("lt2024-01-01", Some("2024-03-02")));
        assert!(date_matches("2024-03", Some("2024-03-02")));
        assert!(!date_matches("ge2024", None));
        let codes = vec!["http://loinc.org|8867-4".to_string()];
        assert!(token_matches("8867-4", &codes));
        assert!(token_matches("http://loinc.org|8867-4", &codes));
        assert!(!token_matches("http://snomed.info/sct|8867-4", &codes));
        assert!(token_matches("x,8867-4", &codes));
    }
}
