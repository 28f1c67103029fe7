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
use ehrchain_types::{Payload, TransactionBody};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

fn invalid_client(why: impl Into<String>) -> ApiError {
    ApiError::oauth(StatusCode::UNAUTHORIZED, "invalid_client", why.into())
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
    if request.grant_type.as_deref() != Some("client_credentials") {
        return Err(ApiError::oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        ));
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
    let claims = jwt::parse(&assertion)
        .map_err(|e| invalid_client(e.to_string()))?
        .claims;
    let identity = ehrchain_types::public_key_from_hex(&claims.sub)
        .ok_or_else(|| invalid_client("sub must be an identity id (64 hex characters)"))?;
    let (known, retired, speaks_for_patient, client_keys) = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        let role = s.identity(&identity).map(|i| i.role);
        (
            role.is_some(),
            s.retired(&identity).is_some(),
            matches!(
                role,
                Some(
                    ehrchain_contracts::facts::Role::Patient { .. }
                        | ehrchain_contracts::facts::Role::Guardian { .. }
                )
            ),
            s.client_keys(&identity),
        )
    });
    if !known {
        return Err(invalid_client("unknown identity"));
    }
    if retired {
        return Err(invalid_client(
            "this key is no longer accepted: it was rotated away or removed",
        ));
    }
    let scopes = Scopes::parse(request.scope.as_deref(), speaks_for_patient)
        .map_err(|why| ApiError::oauth(StatusCode::BAD_REQUEST, "invalid_scope", why))?;
    let key: [u8; 32] = identity.as_ref().try_into().expect("32-byte key");
    let claims =
        jwt::verify(&assertion, &key, &client_keys).map_err(|e| invalid_client(e.to_string()))?;
    if claims.aud != state.gateway.token_url() {
        return Err(invalid_client(format!(
            "aud must be this token endpoint, {}",
            state.gateway.token_url()
        )));
    }
    let now = now_ms();
    let exp_ms = claims.exp.saturating_mul(1000);
    if exp_ms <= now {
        return Err(invalid_client("the assertion has expired"));
    }
    if exp_ms > now + ASSERTION_AHEAD.as_millis() as u64 {
        return Err(invalid_client("exp may be at most 5 minutes ahead"));
    }
    // An assertion from the future is not valid yet (RFC 7523 §3: nbf; iat is the issuer's
    // clock): a little skew is allowed, an hour is not.
    for (name, at) in [("iat", claims.iat), ("nbf", claims.nbf)] {
        if let Some(at) = at
            && at.saturating_mul(1000) > now + CLOCK_SKEW.as_millis() as u64
        {
            return Err(invalid_client(format!("{name} is in the future")));
        }
    }
    {
        let mut jtis = state.gateway.jtis.lock().expect("jti lock");
        jtis.retain(|_, exp| *exp > now);
        let id = format!("{}:{}", claims.sub, claims.jti);
        if jtis.contains_key(&id) {
            return Err(invalid_client("this assertion (jti) was already used"));
        }
        if jtis.len() >= JTIS_MAX {
            return Err(ApiError::oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many logins; retry shortly",
            ));
        }
        jtis.insert(id, exp_ms);
    }
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
    let access_token = hex::encode(random_bytes::<32>());
    {
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
        tokens.insert(
            access_token.clone(),
            Arc::new(Token {
                identity,
                scopes: scopes.clone(),
                key: session,
                nonce: tokio::sync::Mutex::new(1),
                expires: now + TOKEN_LIFETIME - Duration::from_secs(30),
            }),
        );
    }
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
