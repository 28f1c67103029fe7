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
    Ok(Json(json!({
        "identity": token.identity.to_string(),
        "role": role.name(),
        "patient": token.patient.map(hex::encode),
        "custodial": custodial,
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
    Json(body): Json<Erase>,
) -> Result<Json<Value>, ApiError> {
    let token = caller(&state, &headers)?;
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
