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
    pub(crate) nonce: tokio::sync::Mutex<u64>,
    pub(crate) expires: Instant,
}

impl Token {
    /// A token for tests of authorization rules.
    #[cfg(test)]
    pub fn new_for_test(identity: PublicKey, key: PrivateKey) -> Self {
        Self {
            identity,
            scopes: crate::scopes::Scopes::parse(None, false).expect("the default scope parses"),
            key,
            nonce: tokio::sync::Mutex::new(0),
            expires: Instant::now() + TOKEN_LIFETIME,
        }
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
    let tokens = state.gateway.tokens.lock().expect("token lock");
    match tokens.get(token.trim()) {
        Some(t) if t.expires > Instant::now() => Ok(t.clone()),
        _ => Err(unauthorized("the token is unknown or has expired")),
    }
}
