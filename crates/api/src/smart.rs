//! SMART App Launch 2.2: every node is an authorization server for the apps member
//! institutions registered on chain (authorization code with PKCE S256).
//!
//! A login is still one on-chain session, as with Backend Services (`crate::login`): the
//! person proves who they are on the node's own page (`GET /auth/authorize`), either by
//! signing the node's challenge with their own Ed25519 key in the browser (the `client`
//! crate in wasm32: the key never leaves the page) or with a passkey enrolled at their home
//! node, which then signs for them with the custodial key it holds (`crate::passkey`). The
//! signed assertion names the app and the scopes the person approved; every validator checks
//! it and records a session naming the person, the app and the node. The code the app gets
//! is exchanged at `/auth/token` for an access token bound to that session, with a refresh
//! token (rotated on use) when `offline_access` was approved, and an ID token signed by the
//! node's key when `openid fhirUser` was.
//!
//! Node-local state (pending requests, codes, refresh tokens) is bounded by named limits and
//! lives in memory: a node restart ends the logins in progress, never an on-chain session.
//! Revocation closes the on-chain session (`CloseSession`), so no node accepts it from the
//! next block.

use crate::{
    ApiError, ApiState,
    ambient::{now_ms, random_bytes},
    login::{
        TokenRequest, check_assertion, check_times, invalid_client, open_session, remember_jti,
    },
    scopes::Scopes,
    session::{TOKEN_LIFETIME, Token, caller, drop_session_tokens, session_live, store_token},
    submit::{commit, submit_as},
};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use commonware_runtime::Blob;
use ehrchain_contracts::facts::{AppEntry, Role};
use ehrchain_crypto::jwt;
use ehrchain_types::{Payload, PublicKey};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Most authorization requests in progress at one node (each until [`REQUEST_LIFETIME`]).
pub const PENDING_MAX: usize = 10_000;
/// How long a person has to log in and approve on the node's page.
pub const REQUEST_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Most authorization codes not yet exchanged (each until [`CODE_LIFETIME`]).
pub const CODES_MAX: usize = 10_000;
/// How long an authorization code may wait for its exchange (RFC 6749 §4.1.2: short).
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Most live refresh tokens at one node.
pub const REFRESH_TOKENS_MAX: usize = 10_000;
/// Longest `state`, `nonce` or `code_challenge` parameter read.
pub const PARAMETER_BYTES_MAX: usize = 512;
/// How long the assertion a node signs for a passkey login is valid: it is committed at once.
pub const CUSTODIAL_ASSERTION_LIFETIME_S: u64 = 120;
/// Longest request body of the login, enrolment and portal endpoints (small JSON or forms).
pub const AUTH_BODY_BYTES_MAX: usize = 64 * 1024;
/// Most sessions `GET /auth/sessions` lists: the newest.
pub const SESSIONS_LISTED_MAX: usize = 100;

/// The node's SMART App Launch state: requests, codes and refresh tokens in flight.
#[derive(Default)]
pub struct Smart {
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<String, Code>>,
    refresh: Mutex<HashMap<String, Refresh>>,
    /// Passkey enrolments in progress (`crate::passkey`).
    pub(crate) enrolments: Mutex<HashMap<String, crate::passkey::Enrolling>>,
}

/// How the person on the page proved who they are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Their own key, in the browser: the approval carries their signed assertion.
    Key,
    /// A passkey enrolled at this node: the node signs with the custodial key it holds.
    Passkey,
}

struct Pending {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    /// The scopes the app asked for, as sent.
    requested: Vec<String>,
    /// Signed by the person (as the assertion's `jti`) or by their passkey.
    challenge: [u8; 32],
    who: Option<(PublicKey, Via)>,
    /// The patients offered to a clinician for the login's patient context (`pickable`).
    offered: Vec<[u8; 16]>,
    created: Instant,
}

/// What an exchanged code or a refresh token issues: a token of the session.
#[derive(Clone)]
struct Grant {
    identity: PublicKey,
    scopes: Scopes,
    /// The scope text the person approved (resource and identity scopes alike).
    approved: String,
    key: ehrchain_types::PrivateKey,
    nonce: Arc<tokio::sync::Mutex<u64>>,
    client_id: String,
    patient: Option<[u8; 16]>,
    fhir_user: String,
    oidc_nonce: Option<String>,
}

impl Grant {
    fn has(&self, scope: &str) -> bool {
        self.approved.split_ascii_whitespace().any(|s| s == scope)
    }

    fn token(&self) -> Token {
        Token {
            identity: self.identity.clone(),
            scopes: self.scopes.clone(),
            key: self.key.clone(),
            nonce: self.nonce.clone(),
            expires: Instant::now() + TOKEN_LIFETIME - Duration::from_secs(30),
            app: Some(self.client_id.clone()),
            patient: self.patient,
        }
    }
}

struct Code {
    grant: Grant,
    redirect_uri: String,
    code_challenge: String,
    expires: Instant,
    used: bool,
}

struct Refresh {
    grant: Grant,
    expires: Instant,
}

fn oauth(status: StatusCode, error: &'static str, why: impl Into<String>) -> ApiError {
    ApiError::oauth(status, error, why)
}

fn bad_request(error: &'static str, why: impl Into<String>) -> ApiError {
    oauth(StatusCode::BAD_REQUEST, error, why)
}

/// The routes of the authorization server, its pages and their assets.
pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route("/auth/authorize", get(authorize::<B>))
        .route("/auth/authorize/who", post(who_by_key::<B>))
        .route("/auth/authorize/passkey", post(who_by_passkey::<B>))
        .route("/auth/authorize/approve", post(approve::<B>))
        .route("/auth/authorize/deny", post(deny::<B>))
        .route("/auth/revoke", post(revoke::<B>))
        .route("/auth/introspect", post(introspect::<B>))
        .route("/auth/jwks", get(jwks::<B>))
        .route("/auth/sessions", get(sessions::<B>))
        .route("/auth/sessions/{key}/end", post(end_session::<B>))
        .route("/auth/enrol", get(crate::passkey::enrol_page::<B>))
        .route(
            "/auth/enrol/options",
            post(crate::passkey::enrol_options::<B>),
        )
        .route(
            "/auth/enrol/finish",
            post(crate::passkey::enrol_finish::<B>),
        )
        .route("/auth/enrol/key", post(crate::passkey::enrol_key::<B>))
        .route("/auth/assets/{name}", get(asset::<B>))
}

// ---- the authorization request and the node's page ------------------------------------------

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    aud: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
}

/// An error shown on the node's page: RFC 6749 §4.1.2.1 forbids redirecting when the
/// client or its redirect URI is not known to be the app's.
fn error_page(error: &str, why: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Login refused</title>\
         <link rel=\"stylesheet\" href=\"/auth/assets/login.css\"></head><body><main>\
         <h1>This login cannot go on</h1><p role=\"alert\"><strong>{}</strong>: {}</p>\
         <p>Go back to the app and try again, or ask its publisher.</p></main></body></html>",
        escape(error),
        escape(why)
    );
    let mut response = (StatusCode::BAD_REQUEST, Html(body)).into_response();
    secure_page_headers(response.headers_mut());
    response
}

/// Send the browser back to the app with an OAuth error (RFC 6749 §4.1.2.1).
fn redirect_error(redirect_uri: &str, state: Option<&str>, error: &str, why: &str) -> Response {
    Redirect::to(&error_uri(redirect_uri, state, error, why)).into_response()
}

/// The app's redirect URI with `pairs` and the request's `state` (RFC 6749 §4.1.2).
fn back_to_app(redirect_uri: &str, state: Option<&str>, pairs: &[(&str, &str)]) -> String {
    let mut query = pairs.to_vec();
    if let Some(state) = state {
        query.push(("state", state));
    }
    with_query(redirect_uri, &query)
}

/// The app's redirect URI carrying an OAuth error.
fn error_uri(redirect_uri: &str, state: Option<&str>, error: &str, why: &str) -> String {
    back_to_app(
        redirect_uri,
        state,
        &[("error", error), ("error_description", why)],
    )
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(pairs).expect("pairs encode");
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{query}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page's own headers: no framing (clickjacking of the consent button), scripts only
/// from this node (and wasm compiled by them), no caching, no referrer to the app.
pub(crate) fn secure_page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn app_of<B: Blob>(state: &ApiState<B>, client_id: &str) -> Option<AppEntry> {
    state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.app(client_id)
    })
}

/// `GET /auth/authorize`: check the request and serve the login and consent page.
async fn authorize<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    let Some(client_id) = query.client_id.as_deref() else {
        return error_page("invalid_request", "client_id is missing");
    };
    let Some(app) = app_of(&state, client_id) else {
        return error_page(
            "unauthorized_client",
            "no member institution registered an app with this client_id",
        );
    };
    let Some(redirect_uri) = query.redirect_uri.as_deref() else {
        return error_page("invalid_request", "redirect_uri is missing");
    };
    if !app.redirect_uris.iter().any(|u| u == redirect_uri) {
        return error_page(
            "invalid_request",
            "redirect_uri is not one the app registered",
        );
    }
    let back =
        |error: &str, why: &str| redirect_error(redirect_uri, query.state.as_deref(), error, why);
    if query.response_type.as_deref() != Some("code") {
        return back("unsupported_response_type", "response_type must be code");
    }
    let too_long = [&query.state, &query.nonce, &query.code_challenge]
        .iter()
        .any(|p| p.as_ref().is_some_and(|p| p.len() > PARAMETER_BYTES_MAX));
    if too_long {
        return back("invalid_request", "a parameter is longer than 512 bytes");
    }
    let Some(code_challenge) = query.code_challenge.clone().filter(|c| c.len() == 43) else {
        return back(
            "invalid_request",
            "PKCE is required: code_challenge (43 characters) is missing or malformed",
        );
    };
    if query.code_challenge_method.as_deref() != Some("S256") {
        return back("invalid_request", "code_challenge_method must be S256");
    }
    let fhir = state.gateway.fhir_urls();
    if !query
        .aud
        .as_deref()
        .is_some_and(|aud| fhir.iter().any(|f| f == aud.trim_end_matches('/')))
    {
        return back("invalid_request", "aud must be this node's FHIR base URL");
    }
    let scope = query.scope.as_deref().unwrap_or_default();
    let requested: Vec<String> = scope.split_ascii_whitespace().map(str::to_string).collect();
    // Parsed as a patient would hold them: what the person may approve is checked again
    // against their role once they are known.
    if let Err(why) = Scopes::parse(Some(scope), true) {
        return back("invalid_scope", &why);
    }
    let request = hex::encode(random_bytes::<16>());
    let challenge = random_bytes::<32>();
    {
        let mut pending = state.gateway.smart.pending.lock().expect("pending lock");
        pending.retain(|_, p| p.created.elapsed() < REQUEST_LIFETIME);
        if pending.len() >= PENDING_MAX {
            return back("temporarily_unavailable", "too many logins in progress");
        }
        pending.insert(
            request.clone(),
            Pending {
                client_id: client_id.to_string(),
                redirect_uri: redirect_uri.to_string(),
                state: query.state.clone(),
                nonce: query.nonce.clone(),
                code_challenge,
                requested: requested.clone(),
                challenge,
                who: None,
                offered: Vec::new(),
                created: Instant::now(),
            },
        );
    }
    let config = json!({
        "request": request,
        "app": {"client_id": client_id, "name": app.name},
        "scopes": requested.iter().map(|s| json!({"scope": s, "words": scope_words(s)})).collect::<Vec<_>>(),
        "challenge": B64.encode(challenge),
        "token_url": state.gateway.token_url(),
        "rp_id": state.gateway.rp_id(),
        "wasm": state.gateway.client_wasm.is_some(),
    });
    login_page(&app.name, &config)
}

fn login_page(app_name: &str, config: &Value) -> Response {
    // JSON in a non-executing script element: `<` is escaped so that no value closes it.
    let config = config.to_string().replace('<', "\\u003c");
    let body = include_str!("../assets/login.html")
        .replace("{{app_name}}", &escape(app_name))
        .replace("{{config}}", &config);
    let mut response = Html(body).into_response();
    secure_page_headers(response.headers_mut());
    response
}

/// A SMART scope in plain words, for the consent screen.
pub fn scope_words(scope: &str) -> String {
    match scope {
        "openid" | "fhirUser" => return "know who you are (your ehrchain identity)".into(),
        "profile" => return "see your identity's profile".into(),
        "launch/patient" => return "know which patient's record this login is for".into(),
        "offline_access" => {
            return "stay connected for up to 12 hours without asking again".into();
        }
        "online_access" => return "stay connected while you use it".into(),
        _ => {}
    }
    let Some((context, rest)) = scope.split_once('/') else {
        return format!("{scope} (not a scope this node knows)");
    };
    let (kind, permissions) = rest.split_once('.').unwrap_or((rest, ""));
    let kind = if kind == "*" {
        "all kinds of records".to_string()
    } else {
        format!("{kind} records")
    };
    let verbs: Vec<&str> = match permissions {
        "read" => vec!["read", "search"],
        "write" => vec!["create", "change", "delete"],
        "*" => vec!["read", "search", "create", "change", "delete"],
        letters => letters
            .chars()
            .filter_map(|c| match c {
                'c' => Some("create"),
                'r' => Some("read"),
                'u' => Some("change"),
                'd' => Some("delete"),
                's' => Some("search"),
                _ => None,
            })
            .collect(),
    };
    let whose = match context {
        "patient" => "of the patient this login is for",
        "user" => "that you may see",
        _ => "on this node",
    };
    format!("{} {kind} {whose}", verbs.join(", "))
}

#[derive(serde::Deserialize)]
struct WhoByKey {
    request: String,
    /// An assertion signed with the person's key, `jti` the request's challenge followed by
    /// `.who`: the node says whom a key belongs to only to the holder of that key.
    proof: String,
}

/// Most patients the consent page offers a clinician to pick from.
pub const PICKER_PATIENTS_MAX: usize = 200;

/// Whether a scope request needs a patient in context (`launch/patient`, or a `patient/` scope).
fn needs_patient<'a>(mut scopes: impl Iterator<Item = &'a str>) -> bool {
    scopes.any(|s| s == "launch/patient" || s.starts_with("patient/"))
}

/// The patients a clinician may pick as a login's context: those their institution registered
/// and those who granted them or their institution access now, by pseudonymous id (names are
/// in the encrypted records: reading them would be reads of their own, on the trail). The
/// chain still decides every read; the pick only narrows `patient/` scopes to one patient.
pub(crate) fn pickable<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    role: &Role,
) -> Vec<([u8; 16], &'static str)> {
    let Role::Clinician { institution } = role else {
        return Vec::new();
    };
    state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        let now = s.time_ms();
        let mut why: BTreeMap<[u8; 16], &str> = BTreeMap::new();
        for (id, entry) in s.patients() {
            if entry.erased_height.is_none() && &entry.home == institution {
                why.insert(*id, "registered at your institution");
            }
        }
        for grant in s.all_grants() {
            let to_them = [identity, institution]
                .iter()
                .any(|k| k.as_ref() == grant.grantee.as_slice());
            let live = grant.revoked_at_ms.is_none()
                && grant.valid_from_ms <= now
                && now < grant.valid_until_ms;
            if to_them
                && live
                && s.patient(&grant.patient)
                    .is_some_and(|p| p.erased_height.is_none())
            {
                why.insert(grant.patient, "granted you access");
            }
        }
        why.into_iter().take(PICKER_PATIENTS_MAX).collect()
    })
}

/// What the consent screen shows of the person who logged in, for a request asking for
/// `requested`, and the patients offered to pick from. Computed outside the lock on the
/// requests in progress: the picker reads the chain's state.
fn who_json<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    requested: &[String],
) -> Result<(Value, Vec<[u8; 16]>), ApiError> {
    let role = role_of(state, identity)
        .ok_or_else(|| bad_request("access_denied", "this identity is not registered"))?;
    let (kind, patient) = match role {
        Role::Patient { patient } => ("patient", Some(hex::encode(patient))),
        Role::Guardian { patient } => ("guardian", Some(hex::encode(patient))),
        Role::Clinician { .. } => ("clinician", None),
        Role::Institution => ("institution", None),
        Role::Auditor => ("auditor", None),
    };
    let patients = match patient {
        None if needs_patient(requested.iter().map(String::as_str)) => {
            pickable(state, identity, &role)
        }
        _ => Vec::new(),
    };
    let context = patient.is_some() || !patients.is_empty();
    let allowed = Scopes::parse(Some(&requested.join(" ")), context).is_ok();
    let answer = json!({
        "identity": identity.to_string(),
        "role": kind,
        "patient": patient,
        "patients": patients
            .iter()
            .map(|(id, why)| json!({"id": hex::encode(id), "why": why}))
            .collect::<Vec<_>>(),
        "scopes_fit": allowed,
    });
    Ok((answer, patients.into_iter().map(|(id, _)| id).collect()))
}

/// Record who logged in on a request (and the patients offered them), if the request is
/// still the one whose `challenge` they answered.
fn logged_in(
    smart: &Smart,
    request: &str,
    challenge: [u8; 32],
    who: (PublicKey, Via),
    offered: Vec<[u8; 16]>,
) -> Result<(), ApiError> {
    with_pending(smart, request, |p| {
        if p.challenge != challenge {
            return Err(bad_request(
                "invalid_request",
                "the login changed meanwhile",
            ));
        }
        p.who = Some(who);
        p.offered = offered;
        Ok(())
    })
}

fn role_of<B: Blob>(state: &ApiState<B>, identity: &PublicKey) -> Option<Role> {
    state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        if s.retired(identity).is_some() {
            return None;
        }
        s.identity(identity).map(|i| i.role)
    })
}

fn with_pending<T>(
    smart: &Smart,
    request: &str,
    f: impl FnOnce(&mut Pending) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut pending = smart.pending.lock().expect("pending lock");
    match pending.get_mut(request) {
        Some(p) if p.created.elapsed() < REQUEST_LIFETIME => f(p),
        _ => Err(bad_request(
            "invalid_request",
            "this login expired or is unknown: start again from the app",
        )),
    }
}

/// `POST /auth/authorize/who`: the person will sign with their own key; who are they?
async fn who_by_key<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<WhoByKey>,
) -> Result<Json<Value>, ApiError> {
    let (identity, claims, _) = check_assertion(&state, &body.proof)?;
    let (challenge, requested) = with_pending(&state.gateway.smart, &body.request, |p| {
        if claims.jti != format!("{}.who", B64.encode(p.challenge))
            || claims.client_id.as_deref() != Some(&p.client_id)
        {
            return Err(invalid_client(
                "the proof of the key does not answer this request (challenge or app)",
            ));
        }
        Ok((p.challenge, p.requested.clone()))
    })?;
    remember_jti(&state, &claims)?;
    let (answer, offered) = who_json(&state, &identity, &requested)?;
    logged_in(
        &state.gateway.smart,
        &body.request,
        challenge,
        (identity, Via::Key),
        offered,
    )?;
    Ok(Json(answer))
}

#[derive(serde::Deserialize)]
struct WhoByPasskey {
    request: String,
    id: String,
    client_data_json: String,
    authenticator_data: String,
    signature: String,
}

/// `POST /auth/authorize/passkey`: a passkey assertion answering the request's challenge.
async fn who_by_passkey<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<WhoByPasskey>,
) -> Result<Json<Value>, ApiError> {
    let (challenge, requested) = with_pending(&state.gateway.smart, &body.request, |p| {
        Ok((p.challenge, p.requested.clone()))
    })?;
    let decode = |text: &str| {
        B64.decode(text)
            .map_err(|_| bad_request("invalid_request", "the passkey answer is not base64url"))
    };
    let identity = crate::passkey::authenticate(
        &state,
        &decode(&body.id)?,
        &challenge,
        &decode(&body.client_data_json)?,
        &decode(&body.authenticator_data)?,
        &decode(&body.signature)?,
    )?;
    let (answer, offered) = who_json(&state, &identity, &requested)?;
    logged_in(
        &state.gateway.smart,
        &body.request,
        challenge,
        (identity, Via::Passkey),
        offered,
    )?;
    Ok(Json(answer))
}

#[derive(serde::Deserialize)]
struct Approve {
    request: String,
    /// The scopes the person approved: a subset of those asked for.
    scope: String,
    /// For a self-held key: the assertion the page signed in wasm.
    assertion: Option<String>,
    /// For a clinician whose app asked for a patient in context: the one they picked.
    patient: Option<String>,
}

/// `POST /auth/authorize/approve`: open the session and send the browser back with a code.
async fn approve<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<Approve>,
) -> Result<Json<Value>, ApiError> {
    // One approval per request: taken out whatever happens next.
    let pending = {
        let mut all = state.gateway.smart.pending.lock().expect("pending lock");
        all.remove(&body.request)
            .filter(|p| p.created.elapsed() < REQUEST_LIFETIME)
    }
    .ok_or_else(|| {
        bad_request(
            "invalid_request",
            "this login expired or is unknown: start again from the app",
        )
    })?;
    let back = |error: &str, why: &str| json!({"redirect": error_uri(&pending.redirect_uri, pending.state.as_deref(), error, why)});
    let Some((identity, via)) = pending.who.clone() else {
        return Err(bad_request("invalid_request", "log in before approving"));
    };
    let approved: Vec<&str> = body.scope.split_ascii_whitespace().collect();
    if approved
        .iter()
        .any(|s| !pending.requested.iter().any(|r| r == s))
    {
        return Err(bad_request(
            "invalid_scope",
            "only scopes the app asked for can be approved",
        ));
    }
    let approved = approved.join(" ");
    let role = role_of(&state, &identity)
        .ok_or_else(|| bad_request("access_denied", "this identity is not registered"))?;
    let patient = match role.patient() {
        Some(patient) => Some(patient),
        None if needs_patient(approved.split_ascii_whitespace()) => {
            let picked = body
                .patient
                .as_deref()
                .and_then(ehrchain_types::id_from_hex)
                .filter(|id| pending.offered.contains(id));
            if picked.is_none() {
                return Ok(Json(back(
                    "access_denied",
                    "pick one of the patients offered for the app's patient context",
                )));
            }
            picked
        }
        None => None,
    };
    let scopes = match Scopes::parse(Some(&approved), patient.is_some()) {
        Ok(scopes) if !approved.is_empty() => scopes,
        Ok(_) => return Ok(Json(back("invalid_scope", "no scope was approved"))),
        Err(why) => return Ok(Json(back("invalid_scope", &why))),
    };
    let challenge = B64.encode(pending.challenge);
    let assertion = match via {
        Via::Key => {
            let assertion = body
                .assertion
                .ok_or_else(|| bad_request("invalid_request", "the signed login is missing"))?;
            let (signer, claims, _) = check_assertion(&state, &assertion)?;
            if signer != identity
                || claims.jti != challenge
                || claims.client_id.as_deref() != Some(&pending.client_id)
                || claims.scope.as_deref() != Some(&approved)
            {
                return Err(invalid_client(
                    "the signed login does not answer this request (identity, challenge, app or scopes)",
                ));
            }
            remember_jti(&state, &claims)?;
            assertion
        }
        Via::Passkey => {
            let seed =
                crate::passkey::custodial_seed(&state, &identity, &role).ok_or_else(|| {
                    bad_request(
                        "access_denied",
                        "this node no longer holds the key it acts with",
                    )
                })?;
            jwt::sign_assertion(
                &seed,
                &state.gateway.token_url(),
                challenge,
                now_ms() / 1000,
                CUSTODIAL_ASSERTION_LIFETIME_S,
                Some(pending.client_id.clone()),
                Some(approved.clone()),
            )
        }
    };
    let key = open_session(&state, &identity, assertion).await?;
    let fhir_user = match (&role, patient) {
        (Role::Patient { .. }, Some(patient)) => {
            format!(
                "{}/fhir/Patient/{}",
                state.gateway.public_url,
                hex::encode(patient)
            )
        }
        _ => format!(
            "{}/fhir/Practitioner/{}",
            state.gateway.public_url, identity
        ),
    };
    let grant = Grant {
        identity,
        scopes,
        approved,
        key,
        nonce: Arc::new(tokio::sync::Mutex::new(1)),
        client_id: pending.client_id.clone(),
        patient,
        fhir_user,
        oidc_nonce: pending.nonce.clone(),
    };
    let code = B64.encode(random_bytes::<32>());
    {
        let mut codes = state.gateway.smart.codes.lock().expect("code lock");
        let now = Instant::now();
        codes.retain(|_, c| c.expires > now);
        if codes.len() >= CODES_MAX {
            return Ok(Json(back(
                "temporarily_unavailable",
                "too many logins; retry",
            )));
        }
        codes.insert(
            code.clone(),
            Code {
                grant,
                redirect_uri: pending.redirect_uri.clone(),
                code_challenge: pending.code_challenge.clone(),
                expires: now + CODE_LIFETIME,
                used: false,
            },
        );
    }
    let redirect = back_to_app(
        &pending.redirect_uri,
        pending.state.as_deref(),
        &[("code", &code)],
    );
    Ok(Json(json!({ "redirect": redirect })))
}

#[derive(serde::Deserialize)]
struct Deny {
    request: String,
}

/// `POST /auth/authorize/deny`: the person said no; the app hears `access_denied`.
async fn deny<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<Deny>,
) -> Result<Json<Value>, ApiError> {
    let pending = state
        .gateway
        .smart
        .pending
        .lock()
        .expect("pending lock")
        .remove(&body.request)
        .ok_or_else(|| bad_request("invalid_request", "this login is unknown"))?;
    let redirect = error_uri(
        &pending.redirect_uri,
        pending.state.as_deref(),
        "access_denied",
        "the person did not approve",
    );
    Ok(Json(json!({ "redirect": redirect })))
}

// ---- the token endpoint's grants ----------------------------------------------------------

/// The app making a token, revocation or introspection request: a public app by its
/// `client_id`, a confidential one by its `private_key_jwt` assertion.
fn authenticate_app<B: Blob>(
    state: &ApiState<B>,
    client_id: Option<&str>,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
) -> Result<String, ApiError> {
    let named = match (assertion, client_id) {
        (Some(assertion), _) => {
            jwt::parse(assertion)
                .map_err(|e| invalid_client(e.to_string()))?
                .claims
                .sub
        }
        (None, Some(id)) => id.to_string(),
        (None, None) => return Err(invalid_client("client_id is missing")),
    };
    if client_id.is_some_and(|id| id != named) {
        return Err(invalid_client("client_id and the assertion's sub differ"));
    }
    let app = app_of(state, &named).ok_or_else(|| invalid_client("unknown client_id"))?;
    match (&app.jwk, assertion) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(invalid_client(
                "this app is public: it authenticates with PKCE, not an assertion",
            ));
        }
        (Some(_), None) => {
            return Err(invalid_client(
                "this app is confidential: client_assertion (private_key_jwt) is required",
            ));
        }
        (Some(key), Some(assertion)) => {
            if assertion_type != Some(crate::login::ASSERTION_TYPE) {
                return Err(invalid_client(format!(
                    "client_assertion_type must be {}",
                    crate::login::ASSERTION_TYPE
                )));
            }
            let claims = jwt::verify_app(assertion, &named, key)
                .map_err(|e| invalid_client(e.to_string()))?;
            if claims.aud != state.gateway.token_url() {
                return Err(invalid_client("aud must be this token endpoint"));
            }
            check_times(claims.exp, claims.iat, claims.nbf)?;
            crate::login::remember_id(state, &format!("app:{named}:{}", claims.jti), claims.exp)?;
        }
    }
    Ok(named)
}

/// `authorization_code` and `refresh_token` grants of `POST /auth/token`.
pub(crate) async fn token_grant<B: Blob>(
    state: &Arc<ApiState<B>>,
    request: TokenRequest,
) -> Result<Response, ApiError> {
    // A public app may refresh without naming itself (RFC 6749 §6 asks only confidential
    // clients to authenticate): its refresh token names it.
    let named = request.client_id.clone().or_else(|| {
        let refresh = request.refresh_token.as_deref()?;
        (request.client_assertion.is_none())
            .then(|| {
                let all = state.gateway.smart.refresh.lock().expect("refresh lock");
                all.get(refresh).map(|r| r.grant.client_id.clone())
            })
            .flatten()
    });
    let client_id = authenticate_app(
        state,
        named.as_deref(),
        request.client_assertion_type.as_deref(),
        request.client_assertion.as_deref(),
    )?;
    let grant = if request.grant_type.as_deref() == Some("authorization_code") {
        let code = request
            .code
            .ok_or_else(|| bad_request("invalid_request", "code is missing"))?;
        let mut codes = state.gateway.smart.codes.lock().expect("code lock");
        let Some(entry) = codes.get_mut(&code) else {
            return Err(bad_request(
                "invalid_grant",
                "the code is unknown or expired",
            ));
        };
        if entry.used {
            // RFC 6749 §4.1.2: a code used twice revokes what it gave.
            let key = commonware_cryptography::Signer::public_key(&entry.grant.key);
            codes.remove(&code);
            drop(codes);
            drop_session_tokens(state, &key);
            forget_refresh(state, &key);
            return Err(bad_request(
                "invalid_grant",
                "the code was already used; the tokens it gave are revoked",
            ));
        }
        if entry.expires <= Instant::now() {
            codes.remove(&code);
            return Err(bad_request("invalid_grant", "the code has expired"));
        }
        if entry.grant.client_id != client_id {
            return Err(bad_request(
                "invalid_grant",
                "the code was issued to another app",
            ));
        }
        if request.redirect_uri.as_deref() != Some(entry.redirect_uri.as_str()) {
            return Err(bad_request(
                "invalid_grant",
                "redirect_uri differs from the authorization request's",
            ));
        }
        let verifier = request
            .code_verifier
            .as_deref()
            .ok_or_else(|| bad_request("invalid_request", "code_verifier is missing"))?;
        // RFC 7636 §4.1: 43 to 128 unreserved characters; §4.6: S256 must match.
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        let hashed = B64.encode(ehrchain_types::sha256(&[verifier.as_bytes()]));
        if !well_formed || hashed != entry.code_challenge {
            return Err(bad_request(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            ));
        }
        entry.used = true;
        entry.grant.clone()
    } else {
        let presented = request
            .refresh_token
            .ok_or_else(|| bad_request("invalid_request", "refresh_token is missing"))?;
        let mut refresh = state.gateway.smart.refresh.lock().expect("refresh lock");
        let Some(entry) = refresh.remove(&presented) else {
            return Err(bad_request(
                "invalid_grant",
                "the refresh token is unknown, used or revoked",
            ));
        };
        if entry.grant.client_id != client_id {
            return Err(bad_request(
                "invalid_grant",
                "the refresh token was issued to another app",
            ));
        }
        if entry.expires <= Instant::now() {
            return Err(bad_request(
                "invalid_grant",
                "the refresh token has expired",
            ));
        }
        entry.grant
    };
    let key = commonware_cryptography::Signer::public_key(&grant.key);
    if !session_live(state, &key) {
        return Err(bad_request(
            "invalid_grant",
            "the session has ended: revoked, its app removed or its identity rotated",
        ));
    }
    let session_end_ms = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.session(&key).map_or(0, |s| s.expires_ms)
    });
    let left = Duration::from_millis(session_end_ms.saturating_sub(now_ms()));
    let mut token = grant.token();
    let lifetime = (TOKEN_LIFETIME - Duration::from_secs(30)).min(left);
    token.expires = Instant::now() + lifetime;
    let access_token = store_token(state, token)?;
    let mut answer = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": grant.approved,
    });
    if let Some(patient) = grant.patient {
        answer["patient"] = json!(hex::encode(patient));
    }
    if grant.has("fhirUser") || grant.has("openid") {
        answer["fhirUser"] = json!(grant.fhir_user);
    }
    if grant.has("openid") && grant.has("fhirUser") {
        answer["id_token"] = json!(id_token(state, &grant)?);
    }
    if grant.has("offline_access") {
        let refresh_token = B64.encode(random_bytes::<32>());
        let mut refresh = state.gateway.smart.refresh.lock().expect("refresh lock");
        let now = Instant::now();
        refresh.retain(|_, r| r.expires > now);
        if refresh.len() >= REFRESH_TOKENS_MAX {
            return Err(oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many live refresh tokens; retry shortly",
            ));
        }
        refresh.insert(
            refresh_token.clone(),
            Refresh {
                grant,
                expires: now + left,
            },
        );
        answer["refresh_token"] = json!(refresh_token);
    }
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(answer),
    )
        .into_response())
}

fn forget_refresh<B: Blob>(state: &ApiState<B>, key: &PublicKey) {
    let mut refresh = state.gateway.smart.refresh.lock().expect("refresh lock");
    refresh.retain(|_, r| &commonware_cryptography::Signer::public_key(&r.grant.key) != key);
}

/// The node's Ed25519 seed (its institution key), for ID tokens.
fn node_seed<B: Blob>(state: &ApiState<B>) -> Result<[u8; 32], ApiError> {
    use commonware_codec::Encode as _;
    let account = state.gateway.institution.as_ref().ok_or_else(|| {
        oauth(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "this node signs no ID tokens",
        )
    })?;
    Ok(account
        .key
        .encode()
        .as_ref()
        .try_into()
        .expect("a 32-byte seed"))
}

/// The kid of the node's ID-token key: the first 16 hex characters of its public key.
fn node_kid<B: Blob>(state: &ApiState<B>) -> Option<String> {
    let account = state.gateway.institution.as_ref()?;
    let key = commonware_cryptography::Signer::public_key(&account.key).to_string();
    Some(key[..16].to_string())
}

fn id_token<B: Blob>(state: &ApiState<B>, grant: &Grant) -> Result<String, ApiError> {
    let now_s = now_ms() / 1000;
    let mut claims = json!({
        "iss": format!("{}/fhir", state.gateway.public_url),
        "sub": grant.identity.to_string(),
        "aud": grant.client_id,
        "exp": now_s + TOKEN_LIFETIME.as_secs(),
        "iat": now_s,
        "fhirUser": grant.fhir_user,
    });
    if let Some(nonce) = &grant.oidc_nonce {
        claims["nonce"] = json!(nonce);
    }
    Ok(jwt::sign_token(
        &node_seed(state)?,
        node_kid(state).as_deref(),
        &claims,
    ))
}

/// `GET /auth/jwks`: the key ID tokens are signed with (OKP Ed25519, RFC 8037).
async fn jwks<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Json<Value> {
    let keys: Vec<Value> = state
        .gateway
        .institution
        .iter()
        .map(|account| {
            let key = commonware_cryptography::Signer::public_key(&account.key);
            json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                "kid": node_kid(&state),
                "x": B64.encode(key.as_ref()),
            })
        })
        .collect();
    Json(json!({ "keys": keys }))
}

// ---- revocation, introspection, the person's sessions ----------------------------------------

#[derive(serde::Deserialize)]
struct TokenForm {
    token: Option<String>,
    client_id: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

fn form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_urlencoded::from_bytes(body).map_err(|_| {
        bad_request(
            "invalid_request",
            "expected an application/x-www-form-urlencoded body",
        )
    })
}

/// The session a token (access or refresh) of this node belongs to: its token, to sign with.
fn token_of<B: Blob>(state: &ApiState<B>, presented: &str) -> Option<Arc<Token>> {
    if let Some(token) = state
        .gateway
        .tokens
        .lock()
        .expect("token lock")
        .get(presented)
    {
        return Some(token.clone());
    }
    state
        .gateway
        .smart
        .refresh
        .lock()
        .expect("refresh lock")
        .get(presented)
        .map(|r| Arc::new(r.grant.token()))
}

/// Close the on-chain session `session`, signing with `token` (a token of the same identity),
/// and forget its tokens here. A session already ended is not an error.
async fn close_session<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    session: &PublicKey,
) -> Result<(), ApiError> {
    let tx = submit_as(
        state,
        token,
        Payload::CloseSession {
            session: session.clone(),
        },
    )
    .await?;
    let closed = commit(state, &tx).await;
    drop_session_tokens(state, session);
    forget_refresh(state, session);
    match closed {
        Ok(_) => Ok(()),
        Err(_) if !session_live(state, session) => Ok(()),
        Err(error) => Err(error),
    }
}

/// `POST /auth/revoke` (RFC 7009): end the session of an access or refresh token on chain.
async fn revoke<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: TokenForm = form(&body)?;
    let client_id = authenticate_app(
        &state,
        request.client_id.as_deref(),
        request.client_assertion_type.as_deref(),
        request.client_assertion.as_deref(),
    )?;
    let presented = request
        .token
        .ok_or_else(|| bad_request("invalid_request", "token is missing"))?;
    // RFC 7009 §2.2: an unknown or already invalid token is answered 200 as well.
    if let Some(token) = token_of(&state, &presented) {
        if token.app.as_deref() != Some(&client_id) {
            return Err(bad_request(
                "invalid_request",
                "the token was issued to another app",
            ));
        }
        let session = token.session();
        if session_live(&state, &session) {
            close_session(&state, &token, &session).await?;
        } else {
            drop_session_tokens(&state, &session);
            forget_refresh(&state, &session);
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// `POST /auth/introspect` (RFC 7662), for a caller with a token of its own: active only for
/// the caller's own tokens, so that nobody learns of anyone else's.
async fn introspect<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let me = caller(&state, &headers)?;
    let request: TokenForm = form(&body)?;
    let presented = request
        .token
        .ok_or_else(|| bad_request("invalid_request", "token is missing"))?;
    let token = {
        let tokens = state.gateway.tokens.lock().expect("token lock");
        tokens.get(&presented).cloned()
    };
    let Some(token) = token.filter(|t| {
        t.identity == me.identity
            && t.expires > Instant::now()
            && session_live(&state, &t.session())
    }) else {
        return Ok(Json(json!({"active": false})));
    };
    let left = token.expires.saturating_duration_since(Instant::now());
    Ok(Json(json!({
        "active": true,
        "scope": token.scopes.text(),
        "client_id": token.app,
        "sub": token.identity.to_string(),
        "token_type": "Bearer",
        "exp": (now_ms() + left.as_millis() as u64) / 1000,
    })))
}

/// `GET /auth/sessions`: the caller's own sessions on chain, with the app and node of each.
async fn sessions<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let me = caller(&state, &headers)?;
    let list = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        let now = s.time_ms();
        let mut sessions = s.sessions_of(&me.identity);
        sessions.sort_by_key(|(key, session)| std::cmp::Reverse((session.expires_ms, key.clone())));
        sessions
            .into_iter()
            .take(SESSIONS_LISTED_MAX)
            .map(|(key, session)| {
                json!({
                    "session": key.to_string(),
                    "app": session.app,
                    "app_name": session.app.as_deref().and_then(|a| s.app(a)).map(|a| a.name),
                    "gateway": session.gateway.to_string(),
                    "expires_ms": session.expires_ms,
                    "active": session.expires_ms > now,
                    "current": key == me.session(),
                })
            })
            .collect::<Vec<_>>()
    });
    Ok(Json(json!({ "sessions": list })))
}

/// `POST /auth/sessions/{key}/end`: the caller ends one of their own sessions.
async fn end_session<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let me = caller(&state, &headers)?;
    let session = ehrchain_types::public_key_from_hex(&key).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "a session key is 64 hex characters",
        )
    })?;
    let mine = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.session(&session)
            .is_some_and(|s| s.identity == me.identity)
    });
    if !mine {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no session of yours has this key",
        ));
    }
    close_session(&state, &me, &session).await?;
    Ok(Json(json!({"ended": key})))
}

// ---- assets --------------------------------------------------------------------------------

/// `GET /auth/assets/{name}`: the page's script, style and the client library in wasm.
async fn asset<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(name): Path<String>,
) -> Response {
    let (kind, body): (&str, axum::body::Bytes) = match name.as_str() {
        "login.js" => ("text/javascript", include_str!("../assets/login.js").into()),
        "enrol.js" => ("text/javascript", include_str!("../assets/enrol.js").into()),
        "ehrchain-client.js" => (
            "text/javascript",
            include_str!("../assets/ehrchain-client.js").into(),
        ),
        "login.css" => ("text/css", include_str!("../assets/login.css").into()),
        "ehrchain_client.wasm" => match &state.gateway.client_wasm {
            Some(bytes) => ("application/wasm", bytes.clone()),
            None => return StatusCode::NOT_FOUND.into_response(),
        },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    asset_response(kind, body)
}

/// A page's script, style or module: revalidated on each load (a node upgrade changes it),
/// never sniffed as another type.
pub(crate) fn asset_response(kind: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.into(),
    )
        .into_response()
}

// ---- CORS ----------------------------------------------------------------------------------

/// Cross-origin requests from registered apps: a browser app at the origin of one of its
/// redirect URIs may call the token endpoint and the FHIR API (bearer tokens, no cookies).
/// Any other origin gets no CORS headers, so the browser keeps the answer from it.
pub async fn cors<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = origin.filter(|origin| origin_allowed(&state, origin));
    let preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = allowed
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location, ETag, Content-Location, WWW-Authenticate"),
        );
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "authorization, content-type, accept, prefer, if-match, if-none-match, if-none-exist",
                ),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    response
}

fn origin_of(uri: &str) -> Option<&str> {
    let scheme_end = uri.find("://")? + 3;
    let end = uri[scheme_end..]
        .find(['/', '?'])
        .map_or(uri.len(), |i| scheme_end + i);
    Some(&uri[..end])
}

fn origin_allowed<B: Blob>(state: &ApiState<B>, origin: &str) -> bool {
    state.chain.read(|s| {
        s.apps().any(|(_, app)| {
            app.redirect_uris
                .iter()
                .any(|u| origin_of(u) == Some(origin))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_as_plain_words() {
        assert_eq!(
            scope_words("patient/Observation.rs"),
            "read, search Observation records of the patient this login is for"
        );
        assert_eq!(
            scope_words("user/*.cruds"),
            "create, read, change, delete, search all kinds of records that you may see"
        );
        assert_eq!(
            scope_words("offline_access"),
            "stay connected for up to 12 hours without asking again"
        );
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        assert_eq!(
            origin_of("http://127.0.0.1:9000/app/redirect?x=1"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            origin_of("https://app.example"),
            Some("https://app.example")
        );
        assert_eq!(origin_of("not a uri"), None);
        assert_eq!(
            with_query("http://a/cb", &[("code", "x y"), ("state", "s")]),
            "http://a/cb?code=x+y&state=s"
        );
        assert_eq!(escape("<b>\"x\"</b>"), "&lt;b&gt;&quot;x&quot;&lt;/b&gt;");
    }
}
