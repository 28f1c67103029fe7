//! `POST /auth/token`: SMART Backend Services login.
//!
//! A client signs a JWT assertion with its identity key and posts it here. The node checks it
//! (signature, `aud`, `exp` at most 5 minutes ahead, `jti` never seen), makes a fresh session
//! key, and commits an `OpenSession` carrying the assertion: every validator checks the
//! signature again, refuses a replayed assertion, and from then on counts what the session key
//! signs as the identity's own. The node cannot act for anyone who did not log in, and the
//! trail names the identity, not the gateway.

use crate::{ApiError, ApiState};
use crate::{
    ambient::{now_ms, random_bytes},
    scopes::Scopes,
    session::*,
    submit::commit,
};
use axum::http::{StatusCode, header};
use commonware_cryptography::Signer as _;
use commonware_runtime::Blob;
use ehrchain_chain::SubmitError;
use ehrchain_crypto::jwt;
use ehrchain_types::{Payload, PrivateKey, PublicKey, TransactionBody};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub(crate) fn invalid_client(why: impl Into<String>) -> ApiError {
    ApiError::oauth(StatusCode::UNAUTHORIZED, "invalid_client", why.into())
}

/// The form of a token request, every grant's fields (unknown ones are ignored).
#[derive(serde::Deserialize)]
pub(crate) struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
}

pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `POST /auth/token`: exchange a signed client assertion for a bearer token.
pub async fn token<B: Blob>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<B>>>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    let answer = issue_token(&state, body).await;
    match &answer {
        Ok(_) => state.gateway.metrics.tokens_issued.inc(),
        Err(_) => state.gateway.metrics.tokens_refused.inc(),
    };
    answer
}

async fn issue_token<B: Blob>(
    state: &Arc<ApiState<B>>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let request: TokenRequest = serde_urlencoded::from_bytes(&body).map_err(|_| {
        ApiError::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected an application/x-www-form-urlencoded body",
        )
    })?;
    match request.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some("authorization_code" | "refresh_token") => {
            return crate::smart::token_grant(state, request).await;
        }
        _ => {
            return Err(ApiError::oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials, authorization_code or refresh_token",
            ));
        }
    }
    if request.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return Err(ApiError::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("client_assertion_type must be {ASSERTION_TYPE}"),
        ));
    }
    let assertion = request.client_assertion.ok_or_else(|| {
        ApiError::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion is missing",
        )
    })?;
    let (identity, claims, role) = check_assertion(state, &assertion)?;
    let patient = role.patient();
    let scopes = Scopes::parse(request.scope.as_deref(), patient.is_some())
        .map_err(|why| ApiError::oauth(StatusCode::BAD_REQUEST, "invalid_scope", why))?;
    remember_jti(state, &claims)?;
    let key = open_session(state, &identity, assertion).await?;
    let access_token = crate::session::store_token(
        state,
        Token {
            identity,
            scopes: scopes.clone(),
            key,
            nonce: Arc::new(tokio::sync::Mutex::new(1)),
            expires: Instant::now() + TOKEN_LIFETIME - Duration::from_secs(30),
            app: None,
            patient,
        },
    )?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME.as_secs() - 30,
            "scope": scopes.text(),
        })),
    )
        .into_response())
}

/// Check a person's client assertion as every validator will (signature by the identity's
/// key or a client key it registered, `aud` this token endpoint, `exp` at most 5 minutes
/// ahead, `iat`/`nbf` not in the future): the identity, the claims and its role. Errors are
/// OAuth `invalid_client`. The caller, once it accepts the assertion, spends its `jti`
/// ([`remember_jti`]), so that a request refused for another reason can be sent again.
pub(crate) fn check_assertion<B: Blob>(
    state: &ApiState<B>,
    assertion: &str,
) -> Result<(PublicKey, jwt::Claims, ehrchain_contracts::facts::Role), ApiError> {
    let claims = jwt::parse(assertion)
        .map_err(|e| invalid_client(e.to_string()))?
        .claims;
    let identity = ehrchain_types::public_key_from_hex(&claims.sub)
        .ok_or_else(|| invalid_client("sub must be an identity id (64 hex characters)"))?;
    let (role, retired, client_keys) = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        (
            s.identity(&identity).map(|i| i.role),
            s.retired(&identity).is_some(),
            s.client_keys(&identity),
        )
    });
    let role = role.ok_or_else(|| invalid_client("unknown identity"))?;
    if retired {
        return Err(invalid_client(
            "this key is no longer accepted: it was rotated away or removed",
        ));
    }
    let key: [u8; 32] = identity.as_ref().try_into().expect("32-byte key");
    let claims =
        jwt::verify(assertion, &key, &client_keys).map_err(|e| invalid_client(e.to_string()))?;
    if claims.aud != state.gateway.token_url() {
        return Err(invalid_client(format!(
            "aud must be this token endpoint, {}",
            state.gateway.token_url()
        )));
    }
    check_times(claims.exp, claims.iat, claims.nbf)?;
    Ok((identity, claims, role))
}

/// An assertion's `exp` within 5 minutes from now, `iat` and `nbf` not in the future.
pub(crate) fn check_times(exp: u64, iat: Option<u64>, nbf: Option<u64>) -> Result<(), ApiError> {
    let now = now_ms();
    let exp_ms = exp.saturating_mul(1000);
    if exp_ms <= now {
        return Err(invalid_client("the assertion has expired"));
    }
    if exp_ms > now + ASSERTION_AHEAD.as_millis() as u64 {
        return Err(invalid_client("exp may be at most 5 minutes ahead"));
    }
    // An assertion from the future is not valid yet (RFC 7523 §3: nbf; iat is the issuer's
    // clock): a little skew is allowed, an hour is not.
    for (name, at) in [("iat", iat), ("nbf", nbf)] {
        if let Some(at) = at
            && at.saturating_mul(1000) > now + CLOCK_SKEW.as_millis() as u64
        {
            return Err(invalid_client(format!("{name} is in the future")));
        }
    }
    Ok(())
}

/// Spend a person's assertion: its `jti` is remembered until its `exp`, and refused if it
/// was seen (a replay).
pub(crate) fn remember_jti<B: Blob>(
    state: &ApiState<B>,
    claims: &jwt::Claims,
) -> Result<(), ApiError> {
    remember_id(state, &format!("{}:{}", claims.sub, claims.jti), claims.exp)
}

/// Remember an assertion id until `exp`; refused if it was seen (a replay).
pub(crate) fn remember_id<B: Blob>(
    state: &ApiState<B>,
    id: &str,
    exp: u64,
) -> Result<(), ApiError> {
    let now = now_ms();
    let mut jtis = state.gateway.jtis.lock().expect("jti lock");
    jtis.retain(|_, exp| *exp > now);
    if jtis.contains_key(id) {
        return Err(invalid_client("this assertion (jti) was already used"));
    }
    if jtis.len() >= JTIS_MAX {
        return Err(ApiError::oauth(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "too many logins; retry shortly",
        ));
    }
    jtis.insert(id.to_string(), exp.saturating_mul(1000));
    Ok(())
}

/// Commit an `OpenSession` for `identity` carrying `assertion`, signed by a fresh session
/// key this node keeps: the key, once every validator accepted the session.
pub(crate) async fn open_session<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    assertion: String,
) -> Result<PrivateKey, ApiError> {
    let gateway = state
        .gateway
        .institution
        .as_ref()
        .map(|account| account.key.public_key())
        .ok_or_else(|| {
            ApiError::oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "this node opens no sessions",
            )
        })?;
    // A fresh session key, authorized on chain by the assertion itself.
    let session = ehrchain_types::private_key_from_seed(&random_bytes::<32>())
        .expect("32 random bytes are a seed");
    let tx = TransactionBody {
        chain_id: state.genesis.chain_id,
        signer: session.public_key(),
        nonce: 0,
        payload: Payload::OpenSession {
            identity: identity.clone(),
            gateway,
            assertion: assertion.into_bytes(),
        },
    }
    .sign(&session);
    state
        .chain
        .submit(tx.bytes())
        .map_err(|e| login_refused(&e))?;
    commit(state, &tx).await.map_err(|e| {
        if e.status() == StatusCode::SERVICE_UNAVAILABLE {
            ApiError::oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                e.diagnostics().to_string(),
            )
        } else {
            invalid_client(e.diagnostics().to_string())
        }
    })?;
    Ok(session)
}

/// The OAuth answer when a login's `OpenSession` is not admitted: a busy node is not a bad
/// client, so a full pool is 503 `temporarily_unavailable` (retry), anything else 401.
fn login_refused(error: &SubmitError) -> ApiError {
    match error {
        SubmitError::Admission(ehrchain_chain::mempool::AdmissionError::Full(_)) => {
            ApiError::oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the node is busy; retry shortly",
            )
        }
        e => invalid_client(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_makes_a_login_wait_not_fail() {
        let full = login_refused(&SubmitError::Admission(
            ehrchain_chain::mempool::AdmissionError::Full(3_000),
        ));
        assert_eq!(
            (full.status(), full.oauth_error()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable")
            )
        );
        let stale = login_refused(&SubmitError::AlreadyCommitted);
        assert_eq!(
            (stale.status(), stale.oauth_error()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client"))
        );
    }
}
