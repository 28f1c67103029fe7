//! The web UI every node serves at `/`: plain ES modules and one stylesheet, compiled into the
//! binary (no CDN, no remote font, no build step), logging in through the node's own SMART
//! App Launch as the app [`PORTAL_APP`], which an institution registers with the node's URL as
//! its redirect URI (`ehrchain dev` does it for every dev node).
//!
//! The pages talk FHIR with the token they got (`$everything`, `Consent`, `AuditEvent`,
//! `Provenance`), and two JSON calls here: [`directory`], the institutions and clinicians a
//! patient may grant access to, by name where the chain has one (institutions' genesis names)
//! and by key; and [`genesis`], which the page checks each record's inclusion proof against
//! with the Rust client in wasm.

use crate::{ApiError, ApiState, session::caller};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use commonware_runtime::Blob;
use ehrchain_contracts::facts::Role;
use serde_json::{Value, json};
use std::sync::Arc;

/// The `client_id` of the node's own web UI.
pub const PORTAL_APP: &str = "ehrchain-portal";
/// Most clinicians the directory lists.
pub const DIRECTORY_CLINICIANS_MAX: usize = 1_000;

pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route("/", get(index::<B>))
        .route("/ui/directory", get(directory::<B>))
        .route("/ui/genesis", get(genesis::<B>))
        .route("/ui/me", get(me::<B>))
        .route("/ui/erase", axum::routing::post(erase::<B>))
        .route("/ui/patients", get(patients::<B>))
        .route("/ui/sealed", get(sealed::<B>))
        .route("/ui/guardians", axum::routing::post(appoint_guardian::<B>))
        .route(
            "/ui/guardians/{key}/remove",
            axum::routing::post(remove_guardian::<B>),
        )
        .route("/ui/break-glass", axum::routing::post(break_glass::<B>))
        .route(
            "/ui/findings/{height}/{index}/{seq}/review",
            axum::routing::post(review_finding::<B>),
        )
        .route(
            "/ui/clinicians",
            get(clinicians::<B>).post(enrol_clinician::<B>),
        )
        .route(
            "/ui/clinicians/{key}/remove",
            axum::routing::post(remove_clinician::<B>),
        )
        .route("/ui/{name}", get(asset::<B>))
}

async fn index<B: Blob>(State(_state): State<Arc<ApiState<B>>>) -> Response {
    let mut response = Html(include_str!("../assets/ui/index.html")).into_response();
    crate::smart::secure_page_headers(response.headers_mut());
    response
}

async fn asset<B: Blob>(
    State(_state): State<Arc<ApiState<B>>>,
    Path(name): Path<String>,
) -> Response {
    let (kind, body) = match name.as_str() {
        "portal.js" => ("text/javascript", include_str!("../assets/ui/portal.js")),
        "auth.js" => ("text/javascript", include_str!("../assets/ui/auth.js")),
        "render.js" => ("text/javascript", include_str!("../assets/ui/render.js")),
        "portal.css" => ("text/css", include_str!("../assets/ui/portal.css")),
        "common.js" => ("text/javascript", include_str!("../assets/ui/common.js")),
        "workspace.js" => ("text/javascript", include_str!("../assets/ui/workspace.js")),
        "console.js" => ("text/javascript", include_str!("../assets/ui/console.js")),
        "operator.js" => ("text/javascript", include_str!("../assets/ui/operator.js")),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    crate::smart::asset_response(kind, body)
}

/// `GET /ui/genesis`: the genesis this node runs, which the page checks proofs against in
/// wasm. Public (validator keys and names); the page keeps the first one it saw and refuses
/// to check against another (trust on first use: compare it with the consortium's own copy).
async fn genesis<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Json<ehrchain_types::Genesis> {
    Json(state.genesis.clone())
}

/// `GET /ui/me`: who the token is, and whether this node keeps their key (custodial) or they
/// hold their own, which the portal tells them.
async fn me<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let role = state
        .chain
        .read(|s| {
            use ehrchain_contracts::state::Reader;
            s.identity(&token.identity).map(|i| i.role)
        })
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "this identity is not registered"))?;
    let custodial = crate::passkey::custodial_seed(&state, &token.identity, &role).is_some();
    // The patient's guardians, for the patient and their guardians alone.
    let guardians: Vec<String> = role
        .patient()
        .and_then(|patient| {
            state.chain.read(|s| {
                use ehrchain_contracts::state::Reader;
                s.patient(&patient)
                    .map(|p| p.guardians.iter().map(ToString::to_string).collect())
            })
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "identity": token.identity.to_string(),
        "role": role.name(),
        "patient": token.patient.map(hex::encode),
        "custodial": custodial,
        "guardians": guardians,
    })))
}

#[derive(serde::Deserialize)]
struct Erase {
    /// The patient id, typed by the person to confirm.
    confirm: String,
}

/// `POST /ui/erase`: a patient (or guardian) asks, from this node's own UI only, for the
/// erasure of the patient's records (`ErasePatient`, signed by their session): every node
/// deletes the ciphertexts and keys; the chain keeps pseudonymous ids, hashes and the trail.
/// Another app's token cannot ask, whatever its scopes: erasure is not a FHIR interaction a
/// SMART scope names.
async fn erase<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let body: Erase = json_body(&body)?;
    if token.app.as_deref() != Some(PORTAL_APP) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "erasure is asked for from the node's own portal",
        ));
    }
    let patient = token.patient.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "only a patient's or guardian's login asks for erasure",
        )
    })?;
    if body.confirm.trim() != hex::encode(patient) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "type the patient id exactly to confirm the erasure",
        ));
    }
    let tx = crate::submit::submit_as(
        &state,
        &token,
        ehrchain_types::Payload::ErasePatient { patient },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    Ok(Json(
        json!({"erased": hex::encode(patient), "height": location.height}),
    ))
}

/// `GET /ui/directory`, with any live token: who a grant can name. Institutions by their
/// genesis name (members admitted later by key), clinicians by key and institution. Nothing
/// here is about a patient.
async fn directory<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &headers)?;
    let named: std::collections::BTreeMap<String, String> = state
        .genesis
        .validators
        .iter()
        .map(|v| (v.public_key.to_lowercase(), v.name.clone()))
        .collect();
    let (institutions, clinicians) = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        let mut institutions = Vec::new();
        let mut clinicians = Vec::new();
        for (key, identity) in s.identities() {
            if s.retired(key).is_some() {
                continue;
            }
            match &identity.role {
                Role::Institution => {
                    let id = key.to_string();
                    let name = named
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| format!("Member {}", &id[..8]));
                    institutions.push(json!({"id": id, "name": name}));
                }
                Role::Clinician { institution } if clinicians.len() < DIRECTORY_CLINICIANS_MAX => {
                    clinicians.push(
                        json!({"id": key.to_string(), "institution": institution.to_string()}),
                    );
                }
                _ => {}
            }
        }
        (institutions, clinicians)
    });
    Ok(Json(
        json!({"institutions": institutions, "clinicians": clinicians}),
    ))
}

/// A JSON body, read only once the caller is known (so that no one learns anything about
/// the endpoint without a token, not even how it parses).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde's message may quote the input: it is not echoed.
    serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is not the JSON this endpoint takes (see docs/API.md)",
        )
    })
}

fn forbidden(why: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, why)
}

/// The role on chain of the token's identity.
fn role_of<B: Blob>(state: &ApiState<B>, token: &crate::session::Token) -> Result<Role, ApiError> {
    state
        .chain
        .read(|s| {
            use ehrchain_contracts::state::Reader;
            s.identity(&token.identity).map(|i| i.role)
        })
        .ok_or_else(|| forbidden("this identity is not registered"))
}

/// `GET /ui/patients`, a clinician's token: the patients they may open now without breaking
/// the glass (registered at their institution, or who granted them or it access), and why.
/// Ids only; the workspace reads each one's `Patient` resource through FHIR, on the trail.
async fn patients<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let role = role_of(&state, &token)?;
    if !matches!(role, Role::Clinician { .. }) {
        return Err(forbidden("only a clinician has a patient list"));
    }
    let list: Vec<Value> = crate::smart::pickable(&state, &token.identity, &role)
        .into_iter()
        .map(|(patient, why)| json!({"patient": hex::encode(patient), "why": why}))
        .collect();
    Ok(Json(json!({"patients": list})))
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default = "sealed_page")]
    count: usize,
}

fn sealed_page() -> usize {
    crate::fhir::SEALED_PAGE_MAX
}

/// `GET /ui/sealed?offset=&count=`, a patient who holds their own key: a page of their record
/// as ciphertext (each envelope with the wrap of its key for them), which the portal opens in
/// the browser with the `client` crate in wasm. The node decides and records each read as it
/// does any other, and decrypts nothing.
async fn sealed<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let Role::Patient { patient } = role_of(&state, &token)? else {
        return Err(forbidden(
            "the sealed record is the patient's own: their key opens it",
        ));
    };
    let axum::extract::Query(page) = query.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "offset and count are whole numbers",
        )
    })?;
    Ok(Json(
        crate::fhir::sealed(&state, &token, &patient, page.offset, page.count).await?,
    ))
}

#[derive(serde::Deserialize)]
struct BreakGlass {
    patient: String,
    /// A code of `GET /access/reasons` (`break_glass`).
    reason: u8,
}

/// `POST /ui/break-glass`, a clinician's token: open `patient`'s record in an emergency
/// (`BreakGlass`, signed by their session, committed). The chain time-boxes it, flags it to
/// the patient and to the auditors, and the answer says until when it runs.
async fn break_glass<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let body: BreakGlass = json_body(&body)?;
    if !matches!(role_of(&state, &token)?, Role::Clinician { .. }) {
        return Err(forbidden("only an enrolled clinician breaks the glass"));
    }
    let patient = ehrchain_types::id_from_hex(&body.patient).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the patient id is 32 hex characters",
        )
    })?;
    let tx = crate::submit::submit_as(
        &state,
        &token,
        ehrchain_types::Payload::BreakGlass {
            patient,
            reason: body.reason,
        },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    let entry = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.break_glass(&token.identity, &patient)
    });
    let entry = entry.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "the emergency access did not open; see the trail",
        )
    })?;
    Ok(Json(json!({
        "patient": body.patient,
        "reason": entry.reason,
        "opened_ms": entry.opened_ms,
        "until_ms": entry.until_ms,
        "height": location.height,
    })))
}

#[derive(serde::Deserialize)]
struct ReviewBody {
    /// `justified` or `not-justified`.
    verdict: String,
}

/// `POST /ui/findings/{height}/{index}/{seq}/review` `{verdict}`, an auditor's token: review
/// a finding (`ReviewFinding`, signed by the auditor's session, committed). Once per finding.
async fn review_finding<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path((height, index, seq)): Path<(u64, u32, u8)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    if role_of(&state, &token)? != Role::Auditor {
        return Err(forbidden("only an auditor reviews a finding"));
    }
    let body: ReviewBody = json_body(&body)?;
    let verdict = match body.verdict.as_str() {
        "justified" => ehrchain_contracts::facts::Verdict::Justified,
        "not-justified" => ehrchain_contracts::facts::Verdict::NotJustified,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the verdict is justified or not-justified",
            ));
        }
    };
    let key = (height, index, seq);
    let (exists, reviewed) = state.chain.read(|s| {
        (
            s.findings().any(|(k, _)| *k == key),
            s.review_of(&key).is_some(),
        )
    });
    if !exists {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such finding"));
    }
    if reviewed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "that finding is reviewed already",
        ));
    }
    let tx = crate::submit::submit_as(
        &state,
        &token,
        ehrchain_types::Payload::ReviewFinding {
            height,
            index,
            seq,
            verdict: verdict as u8,
        },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    let review = state.chain.read(|s| s.review_of(&key).cloned());
    let review = review.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "the review was not recorded; see the trail",
        )
    })?;
    Ok(Json(json!({
        "verdict": review.verdict.code(),
        "time_ms": review.time_ms,
        "height": location.height,
    })))
}

/// The token of this node's own institution, whose custody directory enrolment writes to:
/// another member's login here cannot enrol or remove this institution's clinicians.
fn own_institution<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
) -> Result<Arc<crate::session::Token>, ApiError> {
    use commonware_cryptography::Signer as _;
    let token = caller(state, headers)?;
    let ours = state
        .gateway
        .institution
        .as_ref()
        .is_some_and(|account| account.key.public_key() == token.identity);
    if !ours || !matches!(role_of(state, &token)?, Role::Institution) {
        return Err(forbidden(
            "only this node's institution manages its clinicians here",
        ));
    }
    Ok(token)
}

/// `GET /ui/clinicians`, this node's institution: its enrolled clinicians, and whether this
/// node keeps each one's key (then they log in with a passkey from an enrolment code).
async fn clinicians<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = own_institution(&state, &headers)?;
    let list: Vec<(ehrchain_types::PublicKey, Role)> = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.identities()
            .filter(|(key, identity)| {
                s.retired(key).is_none()
                    && matches!(&identity.role, Role::Clinician { institution } if *institution == token.identity)
            })
            .take(DIRECTORY_CLINICIANS_MAX)
            .map(|(key, identity)| (key.clone(), identity.role.clone()))
            .collect()
    });
    let list: Vec<Value> = list
        .iter()
        .map(|(key, role)| {
            json!({
                "id": key.to_string(),
                "custodial": crate::passkey::custodial_seed(&state, key, role).is_some(),
            })
        })
        .collect();
    Ok(Json(json!({"clinicians": list})))
}

/// `POST /ui/clinicians`, this node's institution: enrol a new clinician. The node makes
/// their key (kept in its custody directory, as a patient's custodial key), signs
/// `EnrollClinician` with the institution's key, and answers a one-time code with which
/// the clinician enrols a passkey at `/auth/enrol`. The code is shown once and not kept.
async fn enrol_clinician<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    use commonware_cryptography::Signer as _;
    own_institution(&state, &headers)?;
    let dir = state
        .custody_dir
        .clone()
        .ok_or_else(|| forbidden("this node keeps no keys for anyone"))?;
    let seed: [u8; 32] = crate::ambient::random_bytes();
    let key = ehrchain_types::private_key_from_seed(&seed).expect("a 32-byte seed");
    let clinician = key.public_key();
    let encryption = ehrchain_crypto::EncryptionKey::from_seed(&seed);
    let store = |name: String, secret: &[u8; 32]| {
        crate::gateway::write_secret(&dir.join(name), secret).map_err(|error| {
            tracing::error!(%error, "cannot write a clinician's custodial key");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node cannot store the clinician's key",
            )
        })
    };
    // Keys of an identity that never made it on chain do not stay on disk.
    let abandon = |error: ApiError| {
        shred_custody(&dir, &clinician);
        error
    };
    store(format!("{clinician}.seed"), &seed).map_err(abandon)?;
    store(format!("{clinician}.enc"), &encryption.secret_bytes()).map_err(abandon)?;
    // Signed with the institution's own key, which this node holds: a gateway session may not
    // carry a change of roles (the chain refuses it), and the caller has just proved to be
    // that institution.
    let tx = crate::submit::submit_as_institution(
        &state,
        ehrchain_types::Payload::EnrollClinician {
            clinician: clinician.clone(),
            encryption_key: encryption.public().0,
        },
    )
    .await
    .map_err(abandon)?;
    if let Err(error) = crate::submit::commit(&state, &tx).await {
        // Refused for good: abandon the keys. Not final in time: it may still commit, so the
        // keys stay for the identity it would be.
        return Err(if state.chain.rejection(&tx.id()).is_some() {
            abandon(error)
        } else {
            error
        });
    }
    let code = crate::passkey::write_enrolment_code(
        &dir,
        &clinician,
        crate::ambient::now_ms(),
        crate::passkey::ENROLMENT_CODE_LIFETIME,
    )
    .map_err(|error| {
        tracing::error!(%error, "cannot write an enrolment code");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node cannot store the enrolment code",
        )
    })?;
    Ok(Json(json!({
        "id": clinician.to_string(),
        "code": code,
        "enrol_url": format!("{}/auth/enrol", state.gateway.browser_url()),
        "expires_days": crate::passkey::ENROLMENT_CODE_LIFETIME.as_secs() / 86_400,
    })))
}

/// `POST /ui/clinicians/{key}/remove`, this node's institution: remove one of its clinicians
/// (`RemoveClinician`, signed with the institution's key and committed; their sessions end
/// with it), then delete the keys this node
/// kept for them.
async fn remove_clinician<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    own_institution(&state, &headers)?;
    let clinician = ehrchain_types::public_key_from_hex(&key)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "the key is 64 hex characters"))?;
    let tx = crate::submit::submit_as_institution(
        &state,
        ehrchain_types::Payload::RemoveClinician {
            clinician: clinician.clone(),
        },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    if let Some(dir) = &state.custody_dir {
        shred_custody(dir, &clinician);
    }
    Ok(Json(
        json!({"removed": clinician.to_string(), "height": location.height}),
    ))
}

#[derive(serde::Deserialize)]
struct Guardian {
    /// The guardian's identity (Ed25519 public key) and X25519 key, in hex: a key the page
    /// made for them in the browser, or one they made themselves.
    identity: String,
    encryption_key: String,
}

/// `POST /ui/guardians`, the patient's own login: appoint a guardian (`AppointGuardian`,
/// signed by the patient's session, committed). The guardian then logs in with their key and
/// acts for the patient: the record, grants, the trail.
async fn appoint_guardian<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let body: Guardian = json_body(&body)?;
    let Role::Patient { patient } = role_of(&state, &token)? else {
        return Err(forbidden("only the patient appoints a guardian"));
    };
    let bad = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, why);
    let guardian = ehrchain_types::public_key_from_hex(&body.identity)
        .ok_or_else(|| bad("the guardian's identity is 64 hex characters"))?;
    let encryption_key: [u8; 32] = hex::decode(&body.encryption_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the guardian's encryption key is 64 hex characters"))?;
    let tx = crate::submit::submit_as(
        &state,
        &token,
        ehrchain_types::Payload::AppointGuardian {
            patient,
            guardian: guardian.clone(),
            encryption_key,
        },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    Ok(Json(
        json!({"guardian": guardian.to_string(), "height": location.height}),
    ))
}

/// `POST /ui/guardians/{key}/remove`, the patient's own login: remove a guardian
/// (`RemoveGuardian`, signed by the patient's session, committed). The chain retires the
/// guardian's key, so their sessions end and nothing they sign applies.
async fn remove_guardian<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
    let Role::Patient { patient } = role_of(&state, &token)? else {
        return Err(forbidden("only the patient removes a guardian"));
    };
    let guardian = ehrchain_types::public_key_from_hex(&key).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the guardian's identity is 64 hex characters",
        )
    })?;
    let is_guardian = |state: &ApiState<B>| {
        state.chain.read(|s| {
            use ehrchain_contracts::state::Reader;
            s.patient(&patient)
                .is_some_and(|p| p.guardians.contains(&guardian))
        })
    };
    if !is_guardian(&state) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "that key is not one of your guardians",
        ));
    }
    let tx = crate::submit::submit_as(
        &state,
        &token,
        ehrchain_types::Payload::RemoveGuardian {
            patient,
            guardian: guardian.clone(),
        },
    )
    .await?;
    let location = crate::submit::commit(&state, &tx).await?;
    if is_guardian(&state) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the guardian was not removed; see the trail",
        ));
    }
    Ok(Json(
        json!({"removed": guardian.to_string(), "height": location.height}),
    ))
}

/// Delete the keys this node keeps for `clinician` (signing seed and decryption key), where
/// present. One that cannot be deleted halts the node, as any failed storage write does.
fn shred_custody(dir: &std::path::Path, clinician: &ehrchain_types::PublicKey) {
    for name in [format!("{clinician}.seed"), format!("{clinician}.enc")] {
        let path = dir.join(name);
        if path.exists()
            && let Err(error) = ehrchain_chain::records::shred(&path)
        {
            tracing::error!(%error, "cannot delete a clinician's custodial key; halting the node");
            std::process::exit(3);
        }
    }
}
