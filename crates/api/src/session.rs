//! Sessions: the bearer tokens a node issued, each bound to an on-chain session key that signs
//! for its identity, and who is asking (`caller`).

use crate::{ApiError, ApiState};
use axum::http::{HeaderMap, StatusCode, header};
use commonware_cryptography::Signer as _;
use commonware_runtime::Blob;
use ehrchain_types::{PrivateKey, PublicKey};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// How long an access token lives (the on-chain session lasts as long, from its block).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Most live tokens one node keeps.
pub const TOKENS_MAX: usize = 10_000;
/// Most remembered assertion ids (each until its `exp`).
pub const JTIS_MAX: usize = 100_000;
/// Furthest ahead an assertion may expire (SMART Backend Services: 5 minutes), plus skew.
pub const ASSERTION_AHEAD: Duration = Duration::from_secs(5 * 60 + 60);

/// Clock difference allowed between a client and this node when checking `iat` and `nbf`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A live access token.
pub struct Token {
    pub identity: PublicKey,
    /// What the token may do on top of what the chain lets `identity` do.
    pub scopes: crate::scopes::Scopes,
    pub(crate) key: PrivateKey,
    /// The session key's next nonce, shared by every token of the session (a refreshed
    /// token signs with the same key).
    pub(crate) nonce: Arc<tokio::sync::Mutex<u64>>,
    pub(crate) expires: Instant,
    /// The SMART app the token was issued to (`None`: a Backend Services login).
    pub app: Option<String>,
    /// The patient in context: a patient's or guardian's own, or the one a clinician picked
    /// at a SMART login. What only `patient/` scopes allow holds for this patient alone.
    pub patient: Option<[u8; 16]>,
}

impl Token {
    /// A token for tests of authorization rules.
    #[cfg(test)]
    pub fn new_for_test(identity: PublicKey, key: PrivateKey) -> Self {
        Self {
            identity,
            scopes: crate::scopes::Scopes::parse(None, false).expect("the default scope parses"),
            key,
            nonce: Arc::new(tokio::sync::Mutex::new(0)),
            expires: Instant::now() + TOKEN_LIFETIME,
            app: None,
            patient: None,
        }
    }

    /// 403 `insufficient_scope` when `permission` on `kind` for `patient`'s records rests on
    /// `patient/` scopes alone and `patient` is not the one in context.
    pub fn within(&self, kind: &str, permission: u8, patient: &[u8; 16]) -> Result<(), ApiError> {
        if self.scopes.confined(kind, permission) && self.patient.as_ref() != Some(patient) {
            return Err(ApiError::fhir(
                StatusCode::FORBIDDEN,
                "forbidden",
                "insufficient_scope: this login's patient/ scopes cover only the patient it was opened for",
            ));
        }
        Ok(())
    }

    /// The session key the gateway signs with for this token.
    pub fn session(&self) -> PublicKey {
        self.key.public_key()
    }
}

/// The caller of a FHIR request, from its bearer token; 401 without a live one.
pub fn caller<B: Blob>(state: &ApiState<B>, headers: &HeaderMap) -> Result<Arc<Token>, ApiError> {
    let unauthorized = |why: &str| ApiError::fhir(StatusCode::UNAUTHORIZED, "login", why);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("a bearer token is required; get one at /auth/token"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    let token = {
        let tokens = state.gateway.tokens.lock().expect("token lock");
        match tokens.get(token.trim()) {
            Some(t) if t.expires > Instant::now() => t.clone(),
            _ => return Err(unauthorized("the token is unknown or has expired")),
        }
    };
    // The on-chain session decides too: closed (revoked), its app removed, its identity
    // rotated away or removed, and the token stops at once, not at its expiry.
    if !session_live(state, &token.session()) {
        return Err(unauthorized(
            "the session of this token has ended; log in again",
        ));
    }
    Ok(token)
}

/// Whether the on-chain session of `key` may still sign, as of this node's final state.
pub fn session_live<B: Blob>(state: &ApiState<B>, key: &PublicKey) -> bool {
    state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        matches!(
            ehrchain_contracts::access::live_session(s, key, s.time_ms()),
            Ok(Some(_))
        )
    })
}

/// Store a new access token for `token`, answering its text; 503 when the node holds
/// [`TOKENS_MAX`] live ones.
pub(crate) fn store_token<B: Blob>(state: &ApiState<B>, token: Token) -> Result<String, ApiError> {
    let access_token = hex::encode(crate::ambient::random_bytes::<32>());
    let mut tokens = state.gateway.tokens.lock().expect("token lock");
    let now = Instant::now();
    tokens.retain(|_, t| t.expires > now);
    if tokens.len() >= TOKENS_MAX {
        return Err(ApiError::oauth(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "too many live tokens; retry shortly",
        ));
    }
    tokens.insert(access_token.clone(), Arc::new(token));
    Ok(access_token)
}

/// Forget every access token of the session `key` at this node.
pub(crate) fn drop_session_tokens<B: Blob>(state: &ApiState<B>, key: &PublicKey) {
    let mut tokens = state.gateway.tokens.lock().expect("token lock");
    tokens.retain(|_, t| &t.session() != key);
}
