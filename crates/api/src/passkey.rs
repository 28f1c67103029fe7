//! Passkeys for people whose home node holds their key (custodial patients, and clinicians
//! whose institution keeps their keys): enrolment with a one-time code from the institution,
//! and the WebAuthn login the authorization page uses (`crate::smart`).
//!
//! Files, in the node's custody directory beside the keys they unlock:
//! - `enrolments/<sha256(code) hex>.json`: `{"identity", "expires_ms"}`, written by the
//!   operator (`ehrchain passkey enrolment-code`, or `ehrchain dev`); deleted when used. Only
//!   the code's hash is on disk, so a copy of the directory enrols nobody.
//! - `passkeys/<credential id, base64url>.json`: `{"identity", "public_key" (SPKI hex),
//!   "counter"}`, written when a person enrols.
//!
//! A passkey login lets the node sign the person's session assertion with the custodial
//! signing key it holds: `<patient id>.key` for a patient, `<identity>.seed` for anyone else.
//! Without that key the node cannot act for the person, and no code is issued for them.

use crate::{ApiError, ApiState, ambient::random_bytes};
use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use commonware_runtime::Blob;
use ehrchain_contracts::facts::Role;
use ehrchain_crypto::webauthn::{Credential, RelyingParty};
use ehrchain_types::PublicKey;
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// How long an enrolment code stays valid by default.
pub const ENROLMENT_CODE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most passkey enrolments in progress at once (each for [`ENROLLING_LIFETIME`]).
pub const ENROLLING_MAX: usize = 1_000;
/// How long a person has to answer the enrolment's passkey prompt.
pub const ENROLLING_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Longest enrolment code read.
pub const ENROLMENT_CODE_BYTES_MAX: usize = 64;

/// An enrolment between its options and its finish.
pub struct Enrolling {
    code: String,
    identity: PublicKey,
    challenge: [u8; 32],
    created: Instant,
}

fn refused(status: StatusCode, why: &str) -> ApiError {
    ApiError::new(status, why)
}

fn custody<B: Blob>(state: &ApiState<B>) -> Result<&Path, ApiError> {
    state
        .custody_dir
        .as_deref()
        .ok_or_else(|| refused(StatusCode::NOT_FOUND, "this node keeps no keys for anyone"))
}

fn code_path(dir: &Path, code: &str) -> PathBuf {
    let hash = ehrchain_types::sha256(&[b"ehrchain-enrolment", code.trim().as_bytes()]);
    dir.join("enrolments")
        .join(format!("{}.json", hex::encode(hash)))
}

/// Write a one-time enrolment code for `identity` into the custody directory `dir`, valid
/// for `lifetime` from `now_ms`: the code, to hand to the person (it is not kept).
pub fn write_enrolment_code(
    dir: &Path,
    identity: &PublicKey,
    now_ms: u64,
    lifetime: Duration,
) -> std::io::Result<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes: [u8; 15] = random_bytes();
    let letters: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    let code = format!("{}-{}-{}", &letters[..5], &letters[5..10], &letters[10..]);
    let path = code_path(dir, &code);
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    let entry = json!({
        "identity": identity.to_string(),
        "expires_ms": now_ms + lifetime.as_millis() as u64,
    });
    write_file(&path, entry.to_string().as_bytes())?;
    Ok(code)
}

/// Write `bytes` to `path` whole: a temporary file, synced, then renamed over it.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Longest enrolment or passkey file read.
const ENTRY_BYTES_MAX: u64 = 4096;

fn read_json(path: &Path) -> Option<Value> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(ENTRY_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= ENTRY_BYTES_MAX).then_some(())?;
    serde_json::from_slice(&bytes).ok()
}

/// The identity an unexpired enrolment code is for.
fn code_identity(dir: &Path, code: &str) -> Option<PublicKey> {
    if code.len() > ENROLMENT_CODE_BYTES_MAX {
        return None;
    }
    let entry = read_json(&code_path(dir, code))?;
    if entry["expires_ms"].as_u64()? <= crate::ambient::now_ms() {
        return None;
    }
    ehrchain_types::public_key_from_hex(entry["identity"].as_str()?)
}

/// Where a node keeps the custodial signing seed of `identity` of `role`.
fn custodial_path(dir: &Path, identity: &PublicKey, role: &Role) -> PathBuf {
    dir.join(match role {
        Role::Patient { patient } => format!("{}.key", hex::encode(patient)),
        _ => format!("{identity}.seed"),
    })
}

/// The custodial signing seed this node holds for `identity` of `role`, if any.
pub fn custodial_seed<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    role: &Role,
) -> Option<[u8; 32]> {
    let dir = state.custody_dir.as_ref()?;
    let seed = crate::gateway::read_hex32(custodial_path(dir, identity, role))?;
    // The file must hold this identity's key: a patient's key may have been rotated away.
    (ehrchain_crypto::jwt::public_key(&seed) == identity.as_ref()).then_some(seed)
}

fn relying_party<B: Blob>(state: &ApiState<B>) -> (String, String) {
    (state.gateway.rp_id(), state.gateway.browser_url())
}

/// `GET /auth/enrol`: the page where a person enrols a passkey with their code.
pub async fn enrol_page<B: Blob>(State(_state): State<Arc<ApiState<B>>>) -> Response {
    let mut response = Html(include_str!("../assets/enrol.html")).into_response();
    crate::smart::secure_page_headers(response.headers_mut());
    response
}

#[derive(serde::Deserialize)]
pub struct EnrolOptions {
    code: String,
}

/// `POST /auth/enrol/options`: check the code, and answer the passkey creation options.
pub async fn enrol_options<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<EnrolOptions>,
) -> Result<Json<Value>, ApiError> {
    let dir = custody(&state)?;
    let identity = code_identity(dir, &body.code).ok_or_else(|| {
        refused(
            StatusCode::FORBIDDEN,
            "the enrolment code is unknown, used or expired: ask your institution for a new one",
        )
    })?;
    let role = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        s.identity(&identity).map(|i| i.role)
    });
    let role =
        role.ok_or_else(|| refused(StatusCode::FORBIDDEN, "the identity is not registered"))?;
    if custodial_seed(&state, &identity, &role).is_none() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "this node holds no key for this identity, so a passkey could not act for it",
        ));
    }
    let enrolment = hex::encode(random_bytes::<16>());
    let challenge = random_bytes::<32>();
    {
        let mut enrolling = state
            .gateway
            .smart
            .enrolments
            .lock()
            .expect("enrolment lock");
        enrolling.retain(|_, e| e.created.elapsed() < ENROLLING_LIFETIME);
        if enrolling.len() >= ENROLLING_MAX {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many enrolments in progress; retry shortly",
            ));
        }
        enrolling.insert(
            enrolment.clone(),
            Enrolling {
                code: body.code.trim().to_string(),
                identity: identity.clone(),
                challenge,
                created: Instant::now(),
            },
        );
    }
    let (rp_id, _) = relying_party(&state);
    let label = match role {
        Role::Patient { patient } => format!("patient {}", &hex::encode(patient)[..8]),
        _ => format!("identity {}", &identity.to_string()[..8]),
    };
    Ok(Json(json!({
        "enrolment": enrolment,
        // For a key made in the browser instead: where its proof is addressed.
        "token_url": state.gateway.token_url(),
        "wasm": state.gateway.client_wasm.is_some(),
        "publicKey": {
            "challenge": B64.encode(challenge),
            "rp": {"id": rp_id, "name": "ehrchain"},
            "user": {"id": B64.encode(identity.as_ref()), "name": label, "displayName": label},
            "pubKeyCredParams": [{"type": "public-key", "alg": ehrchain_crypto::webauthn::ES256}],
            "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
            "attestation": "none",
            "timeout": ENROLLING_LIFETIME.as_millis() as u64,
        },
    })))
}

/// Take an enrolment in progress out (it is answered once), with its code still unused.
fn take_enrolling<B: Blob>(
    state: &ApiState<B>,
    dir: &Path,
    enrolment: &str,
) -> Result<Enrolling, ApiError> {
    let enrolling = state
        .gateway
        .smart
        .enrolments
        .lock()
        .expect("enrolment lock")
        .remove(enrolment)
        .filter(|e| e.created.elapsed() < ENROLLING_LIFETIME)
        .ok_or_else(|| {
            refused(
                StatusCode::BAD_REQUEST,
                "this enrolment expired: start again",
            )
        })?;
    // The code may have been used by another enrolment meanwhile.
    if code_identity(dir, &enrolling.code).as_ref() != Some(&enrolling.identity) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the enrolment code was used meanwhile",
        ));
    }
    Ok(enrolling)
}

#[derive(serde::Deserialize)]
pub struct EnrolFinish {
    enrolment: String,
    id: String,
    client_data_json: String,
    authenticator_data: String,
    public_key: String,
    public_key_algorithm: i64,
}

/// `POST /auth/enrol/finish`: check the new passkey, store it, and use up the code.
pub async fn enrol_finish<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<EnrolFinish>,
) -> Result<Json<Value>, ApiError> {
    let dir = custody(&state)?;
    let enrolling = take_enrolling(&state, dir, &body.enrolment)?;
    let decode = |text: &str| {
        B64.decode(text).map_err(|_| {
            refused(
                StatusCode::BAD_REQUEST,
                "the passkey answer is not base64url",
            )
        })
    };
    let id = decode(&body.id)?;
    let (rp_id, origin) = relying_party(&state);
    let rp = RelyingParty {
        id: &rp_id,
        origin: &origin,
    };
    let credential = rp
        .register(
            &enrolling.challenge,
            &decode(&body.client_data_json)?,
            &decode(&body.authenticator_data)?,
            &id,
            &decode(&body.public_key)?,
            body.public_key_algorithm,
        )
        .map_err(|e| refused(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let store = |what: std::io::Result<()>| {
        what.map_err(|error| {
            tracing::error!(%error, "cannot store a passkey");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the passkey; retry",
            )
        })
    };
    store(std::fs::create_dir_all(dir.join("passkeys")))?;
    store(write_credential(dir, &id, &enrolling.identity, &credential))?;
    store(std::fs::remove_file(code_path(dir, &enrolling.code)))?;
    Ok(Json(
        json!({"enrolled": true, "identity": enrolling.identity.to_string()}),
    ))
}

#[derive(serde::Deserialize)]
pub struct EnrolKey {
    enrolment: String,
    /// The new key's X25519 public key (hex), derived in the browser from the same seed.
    encryption_key: String,
    /// A JWT signed by the new key: `sub` its identity id, `aud` this node's token URL,
    /// `jti` the enrolment's challenge (base64url) followed by `.key`, and `scope`
    /// `encryption_key:<hex>`, binding both public keys to the one signature.
    proof: String,
}

/// `POST /auth/enrol/key`: the person made a key of their own in the browser; move their
/// identity to it (`RotateKey`, signed with the custodial key), then delete the custodial
/// key and the code. From then on the node cannot act for them: they log in with their key.
pub async fn enrol_key<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Json(body): Json<EnrolKey>,
) -> Result<Json<Value>, ApiError> {
    let dir = custody(&state)?;
    let enrolling = take_enrolling(&state, dir, &body.enrolment)?;
    let bad = |why: &str| refused(StatusCode::BAD_REQUEST, why);
    let encryption_key: [u8; 32] = hex::decode(&body.encryption_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("encryption_key must be 64 hex characters"))?;
    let claims = ehrchain_crypto::jwt::parse(&body.proof)
        .map_err(|e| bad(&format!("the proof of the new key: {e}")))?
        .claims;
    let new_key = ehrchain_types::public_key_from_hex(&claims.sub)
        .ok_or_else(|| bad("the proof's sub must be the new identity id"))?;
    let raw: [u8; 32] = new_key.as_ref().try_into().expect("32-byte key");
    let claims = ehrchain_crypto::jwt::verify(&body.proof, &raw, &[])
        .map_err(|e| bad(&format!("the proof of the new key: {e}")))?;
    crate::login::check_times(claims.exp, claims.iat, claims.nbf)?;
    if claims.aud != state.gateway.token_url()
        || claims.jti != format!("{}.key", B64.encode(enrolling.challenge))
        || claims.scope.as_deref() != Some(&format!("encryption_key:{}", body.encryption_key))
    {
        return Err(bad(
            "the proof of the new key does not answer this enrolment (audience, challenge or encryption key)",
        ));
    }
    let role = state
        .chain
        .read(|s| {
            use ehrchain_contracts::state::Reader;
            s.identity(&enrolling.identity).map(|i| i.role)
        })
        .ok_or_else(|| refused(StatusCode::FORBIDDEN, "the identity is not registered"))?;
    let seed = custodial_seed(&state, &enrolling.identity, &role).ok_or_else(|| {
        refused(
            StatusCode::FORBIDDEN,
            "this node no longer holds a key for this identity",
        )
    })?;
    let key = ehrchain_types::private_key_from_seed(&seed).expect("a 32-byte seed");
    let tx = ehrchain_types::TransactionBody {
        chain_id: state.genesis.chain_id,
        signer: enrolling.identity.clone(),
        nonce: state.chain.next_nonce(&enrolling.identity),
        payload: ehrchain_types::Payload::RotateKey {
            new_key: new_key.clone(),
            encryption_key,
        },
    }
    .sign(&key);
    state
        .chain
        .submit(tx.bytes())
        .map_err(|e| crate::submit_error(&e))?;
    crate::submit::commit(&state, &tx).await?;
    // The identity has moved: the custodial key is retired and must not stay on disk.
    if let Err(error) =
        ehrchain_chain::records::shred(&custodial_path(dir, &enrolling.identity, &role))
    {
        // A retired key that cannot be deleted: stop, as for any failed storage write.
        tracing::error!(%error, "cannot delete a custodial key after its person moved to their own; halting the node");
        std::process::exit(3);
    }
    // A code left behind is harmless (its identity is retired), but should not linger.
    if let Err(error) = std::fs::remove_file(code_path(dir, &enrolling.code)) {
        tracing::warn!(%error, "cannot delete a used enrolment code");
    }
    let patient = role.patient().map(hex::encode);
    Ok(Json(json!({
        "identity": new_key.to_string(),
        "previous": enrolling.identity.to_string(),
        "patient": patient,
    })))
}

fn credential_path(dir: &Path, id: &[u8]) -> PathBuf {
    dir.join("passkeys")
        .join(format!("{}.json", B64.encode(id)))
}

fn write_credential(
    dir: &Path,
    id: &[u8],
    identity: &PublicKey,
    credential: &Credential,
) -> std::io::Result<()> {
    let entry = json!({
        "identity": identity.to_string(),
        "public_key": hex::encode(&credential.public_key),
        "counter": credential.counter,
    });
    write_file(&credential_path(dir, id), entry.to_string().as_bytes())
}

/// Check a passkey login answering `challenge`: the identity it was enrolled for.
pub fn authenticate<B: Blob>(
    state: &ApiState<B>,
    id: &[u8],
    challenge: &[u8],
    client_data_json: &[u8],
    authenticator_data: &[u8],
    signature: &[u8],
) -> Result<PublicKey, ApiError> {
    let denied = |why: &str| ApiError::oauth(StatusCode::BAD_REQUEST, "access_denied", why);
    let dir = custody(state)?;
    if id.is_empty() || id.len() > ehrchain_crypto::webauthn::CREDENTIAL_ID_BYTES_MAX {
        return Err(denied("this passkey is not enrolled here"));
    }
    let entry = read_json(&credential_path(dir, id))
        .ok_or_else(|| denied("this passkey is not enrolled here"))?;
    let identity = entry["identity"]
        .as_str()
        .and_then(ehrchain_types::public_key_from_hex)
        .ok_or_else(|| denied("this passkey is not enrolled here"))?;
    let credential = Credential {
        public_key: entry["public_key"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| denied("this passkey is not enrolled here"))?,
        counter: entry["counter"].as_u64().unwrap_or(0) as u32,
    };
    let (rp_id, origin) = relying_party(state);
    let rp = RelyingParty {
        id: &rp_id,
        origin: &origin,
    };
    let counter = rp
        .authenticate(
            &credential,
            challenge,
            client_data_json,
            authenticator_data,
            signature,
        )
        .map_err(|e| denied(&e.to_string()))?;
    let updated = Credential {
        counter,
        ..credential
    };
    write_credential(dir, id, &identity, &updated).map_err(|error| {
        tracing::error!(%error, "cannot update a passkey's counter");
        ApiError::oauth(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "cannot record the login; retry",
        )
    })?;
    Ok(identity)
}
