//! The FHIR gateway's side of identity: SMART Backend Services tokens bound to on-chain
//! sessions, the keys this node holds for the identities it serves, and committing
//! transactions on their behalf.
//!
//! A client signs a JWT assertion with its identity key and posts it to `/auth/token`. The
//! node checks it (signature, `aud`, `exp` at most 5 minutes ahead, `jti` never seen), makes a
//! fresh session key, and commits an `OpenSession` carrying the assertion: every validator
//! checks the signature again, refuses a replayed assertion, and from then on counts what the
//! session key signs as the identity's own. The node cannot act for anyone who did not log in,
//! and the trail names the identity, not the gateway.

use crate::{ApiState, WAIT_MAX, fhir::FhirError};
use axum::http::{HeaderMap, StatusCode, header};
use commonware_cryptography::Signer as _;
use commonware_runtime::{
    Blob,
    telemetry::metrics::{Counter, MetricsExt as _, Registered},
};
use ehrchain_chain::{SubmitError, application::Location};
use ehrchain_crypto::jwt;
use ehrchain_types::{Payload, PrivateKey, PublicKey, Transaction, TransactionBody};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    key: PrivateKey,
    nonce: tokio::sync::Mutex<u64>,
    expires: Instant,
}

impl Token {
    /// A token for tests of authorization rules.
    #[cfg(test)]
    pub fn new_for_test(identity: PublicKey, key: PrivateKey) -> Self {
        Self {
            identity,
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

/// The node's gateway: its URL, its institution's signing key, live tokens.
pub struct Gateway {
    /// The base URL clients reach this node at (`aud` is `{public_url}/auth/token`).
    pub public_url: String,
    /// The institution's (validator's) key, to register patients it is the home of.
    pub institution: Option<PrivateKey>,
    tokens: Mutex<HashMap<String, Arc<Token>>>,
    jtis: Mutex<HashMap<String, u64>>,
    institution_nonce: tokio::sync::Mutex<u64>,
    /// Custodial keys already read and parsed, by file, with the file's modification time.
    custody_keys: Mutex<HashMap<PathBuf, (SystemTime, ehrchain_crypto::EncryptionKey)>>,
    /// The journal of reads this gateway decided and served, on their way to the chain.
    /// Without one, every read waits for its own `Access` transaction to commit.
    pub access_log: Option<crate::access_log::AccessLog>,
    pub metrics: GatewayMetrics,
}

/// What the gateway counts, where it happens.
pub struct GatewayMetrics {
    /// Reads decided by this gateway and journalled.
    pub reads_logged: Counter,
    /// Reads sent to the chain as their own `Access` transaction.
    pub reads_on_chain: Counter,
    /// Reads the contract denied (on the trail).
    pub reads_denied: Counter,
    /// Bearer tokens issued, and token requests refused.
    pub tokens_issued: Counter,
    pub tokens_refused: Counter,
}

impl GatewayMetrics {
    /// Counted, not exported.
    pub fn detached() -> Self {
        Self {
            reads_logged: Registered::detached(Default::default()),
            reads_on_chain: Registered::detached(Default::default()),
            reads_denied: Registered::detached(Default::default()),
            tokens_issued: Registered::detached(Default::default()),
            tokens_refused: Registered::detached(Default::default()),
        }
    }

    /// Counted and exported through `context` (the node's metrics registry).
    pub fn register(context: &impl commonware_runtime::Metrics) -> Self {
        Self {
            reads_logged: context.counter(
                "reads_logged",
                "Consented reads this gateway decided itself and journalled.",
            ),
            reads_on_chain: context.counter(
                "reads_on_chain",
                "Reads sent to the chain as their own Access transaction.",
            ),
            reads_denied: context.counter(
                "reads_denied",
                "Reads the contract denied (each is on the trail).",
            ),
            tokens_issued: context.counter("tokens_issued", "Bearer tokens issued."),
            tokens_refused: context.counter("tokens_refused", "Token requests refused."),
        }
    }
}

/// Most custodial keys kept parsed in memory (the cache is emptied when full).
pub const CUSTODY_KEYS_CACHED_MAX: usize = 100_000;

impl Gateway {
    pub fn new(public_url: String, institution: Option<PrivateKey>) -> Self {
        Self {
            public_url,
            institution,
            tokens: Mutex::default(),
            jtis: Mutex::default(),
            institution_nonce: tokio::sync::Mutex::new(0),
            custody_keys: Mutex::default(),
            access_log: None,
            metrics: GatewayMetrics::detached(),
        }
    }

    /// Count through `metrics` (`GatewayMetrics::register` exports them).
    pub fn with_metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serve consented reads through an access log journalled in `dir` (see `access_log`).
    /// `recorded` is the institution's next log entry number on chain.
    pub fn with_access_log(
        mut self,
        dir: &std::path::Path,
        recorded: u64,
        metrics: crate::access_log::AccessLogMetrics,
    ) -> std::io::Result<Self> {
        self.access_log = Some(crate::access_log::AccessLog::open(dir, recorded, metrics)?);
        Ok(self)
    }

    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.public_url)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::Rng;
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// An OAuth error answer (RFC 6749 §5.2).
pub struct OAuthError(StatusCode, &'static str, String);

impl axum::response::IntoResponse for OAuthError {
    fn into_response(self) -> axum::response::Response {
        (
            self.0,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({
                "error": self.1,
                "error_description": self.2,
            })),
        )
            .into_response()
    }
}

fn invalid_client(why: impl Into<String>) -> OAuthError {
    OAuthError(StatusCode::UNAUTHORIZED, "invalid_client", why.into())
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `POST /auth/token`: exchange a signed client assertion for a bearer token.
pub async fn token<B: Blob>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<B>>>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, OAuthError> {
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
) -> Result<axum::response::Response, OAuthError> {
    use axum::response::IntoResponse;
    let request: TokenRequest = serde_urlencoded::from_bytes(&body).map_err(|_| {
        OAuthError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected an application/x-www-form-urlencoded body".into(),
        )
    })?;
    if request.grant_type.as_deref() != Some("client_credentials") {
        return Err(OAuthError(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials".into(),
        ));
    }
    if request.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return Err(OAuthError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("client_assertion_type must be {ASSERTION_TYPE}"),
        ));
    }
    let assertion = request.client_assertion.ok_or_else(|| {
        OAuthError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion is missing".into(),
        )
    })?;
    let (claims, _, _) = jwt::parse(&assertion).map_err(|e| invalid_client(e.to_string()))?;
    let identity = ehrchain_types::public_key_from_hex(&claims.sub)
        .ok_or_else(|| invalid_client("sub must be an identity id (64 hex characters)"))?;
    let (known, retired) = state.chain.read(|s| {
        use ehrchain_contracts::state::Reader;
        (
            s.identity(&identity).is_some(),
            s.retired(&identity).is_some(),
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
    let key: [u8; 32] = identity.as_ref().try_into().expect("32-byte key");
    let claims = jwt::verify(&assertion, &key).map_err(|e| invalid_client(e.to_string()))?;
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
            return Err(OAuthError(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many logins; retry shortly".into(),
            ));
        }
        jtis.insert(id, exp_ms);
    }
    let gateway = state
        .gateway
        .institution
        .as_ref()
        .map(|key| key.public_key())
        .ok_or_else(|| {
            OAuthError(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "this node opens no sessions".into(),
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
            OAuthError(
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
            return Err(OAuthError(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many live tokens; retry shortly".into(),
            ));
        }
        tokens.insert(
            access_token.clone(),
            Arc::new(Token {
                identity,
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
            "scope": "system/*.*",
        })),
    )
        .into_response())
}

/// The OAuth answer when a login's `OpenSession` is not admitted: a busy node is not a bad
/// client, so a full pool is 503 `temporarily_unavailable` (retry), anything else 401.
fn login_refused(error: &SubmitError) -> OAuthError {
    match error {
        SubmitError::Admission(ehrchain_chain::mempool::AdmissionError::Full(_)) => OAuthError(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the node is busy; retry shortly".into(),
        ),
        e => invalid_client(e.to_string()),
    }
}

/// The caller of a FHIR request, from its bearer token; 401 without a live one.
pub fn caller<B: Blob>(state: &ApiState<B>, headers: &HeaderMap) -> Result<Arc<Token>, FhirError> {
    let unauthorized = |why: &str| FhirError::new(StatusCode::UNAUTHORIZED, "login", why);
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

fn submit_failure(error: &SubmitError) -> FhirError {
    let response = crate::submit_error(error);
    FhirError::new(response.status, "processing", &response.message)
}

/// Sign `payload` with the caller's session key and submit it. The nonce advances only when
/// the node admits the transaction, so a refusal leaves no gap for the next request.
pub async fn submit_as<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    payload: Payload,
) -> Result<Transaction, FhirError> {
    let mut nonce = token.nonce.lock().await;
    // A session transaction the pool dropped (one that can never apply takes its successors
    // with it) leaves a gap no later nonce can cross: start again after the last one alive.
    let next = state.chain.next_nonce(&token.key.public_key());
    if *nonce > next {
        *nonce = next;
    }
    let tx = TransactionBody {
        chain_id: state.genesis.chain_id,
        signer: token.key.public_key(),
        nonce: *nonce,
        payload,
    }
    .sign(&token.key);
    state
        .chain
        .submit(tx.bytes())
        .map_err(|e| submit_failure(&e))?;
    *nonce += 1;
    Ok(tx)
}

/// Sign and submit with the session key; a blob staged for it is dropped on refusal.
pub async fn submit_staged<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    payload: Payload,
    staged: Option<[u8; 32]>,
) -> Result<Transaction, FhirError> {
    let result = submit_as(state, token, payload).await;
    if result.is_err()
        && let Some(hash) = staged
        && let Err(error) = state.store.unstage(&hash)
    {
        tracing::error!(%error, "cannot drop a refused upload");
    }
    result
}

/// Sign and submit with the institution's own key (patient registration).
pub async fn submit_as_institution<B: Blob>(
    state: &ApiState<B>,
    payload: Payload,
) -> Result<Transaction, FhirError> {
    let key = state.gateway.institution.as_ref().ok_or_else(|| {
        FhirError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this node registers no patients",
        )
    })?;
    let mut last = state.gateway.institution_nonce.lock().await;
    // After the pool dropped one of ours, start again after the last one alive.
    let signer = key.public_key();
    let mut nonce = (*last)
        .min(state.chain.next_nonce(&signer))
        .max(state.chain.nonce(&signer));
    // Another client of the same key (the operator's CLI) may hold a nonce: step past it.
    for _ in 0..8 {
        let tx = TransactionBody {
            chain_id: state.genesis.chain_id,
            signer: key.public_key(),
            nonce,
            payload: payload.clone(),
        }
        .sign(key);
        match state.chain.submit(tx.bytes()) {
            Ok(_) => {
                *last = nonce + 1;
                return Ok(tx);
            }
            Err(SubmitError::Admission(ehrchain_chain::mempool::AdmissionError::Duplicate))
            | Err(SubmitError::Admission(ehrchain_chain::mempool::AdmissionError::Rejected(
                ehrchain_contracts::facts::Rejection::StaleNonce { .. },
            ))) => nonce += 1,
            Err(error) => return Err(submit_failure(&error)),
        }
    }
    Err(FhirError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the institution's account is busy; retry",
    ))
}

/// Wait until `tx` commits; its rejection or a timeout is an error.
pub async fn commit<B: Blob>(state: &ApiState<B>, tx: &Transaction) -> Result<Location, FhirError> {
    let id = tx.id();
    let mut committed = state.chain.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        if let Some(location) = state.chain.location(&id) {
            if let Some(reason) = crate::denial(state, &location) {
                return Err(FhirError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("{reason}; the attempt is recorded on chain"),
                ));
            }
            return Ok(location);
        }
        if let Some((_, reason)) = state.chain.rejection(&id) {
            return Err(FhirError::new(StatusCode::CONFLICT, "conflict", &reason));
        }
        if tokio::time::timeout_at(deadline, committed.changed())
            .await
            .is_err()
        {
            return Err(FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the transaction did not commit in time; retry",
            ));
        }
    }
}

/// The X25519 keys this node holds that may open records for `identity` of `patient`: the
/// identity's custodial key (`custody/<identity>.enc`), the institution's key, and the
/// custodial key of the patient (`custody/<patient>.key`). Which one opens a record is decided
/// by the wraps; whether it may is decided by the chain before this is called.
pub fn held_keys<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    patient: &[u8; 16],
) -> Vec<ehrchain_crypto::EncryptionKey> {
    let mut keys = Vec::new();
    if let Some(dir) = &state.custody_dir {
        let gateway = &state.gateway;
        if let Some(key) = gateway.custody_key(
            dir.join(format!("{}.enc", hex::encode(identity))),
            |secret| ehrchain_crypto::EncryptionKey::from_secret_bytes(&secret).ok(),
        ) {
            keys.push(key);
        }
        if let Some(key) = gateway
            .custody_key(dir.join(format!("{}.key", hex::encode(patient))), |seed| {
                Some(ehrchain_crypto::EncryptionKey::from_seed(&seed))
            })
        {
            keys.push(key);
        }
    }
    keys.extend(state.institution_key.iter().cloned());
    keys
}

impl Gateway {
    /// The key in a custody file, parsed once and reused while the file is unchanged (its
    /// modification time is checked on every use, so a rotated or deleted key is noticed).
    fn custody_key(
        &self,
        path: PathBuf,
        parse: impl FnOnce([u8; 32]) -> Option<ehrchain_crypto::EncryptionKey>,
    ) -> Option<ehrchain_crypto::EncryptionKey> {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified());
        let mut cache = self.custody_keys.lock().expect("custody key cache");
        let Ok(modified) = modified else {
            cache.remove(&path);
            return None;
        };
        if let Some((at, key)) = cache.get(&path)
            && *at == modified
        {
            return Some(key.clone());
        }
        drop(cache);
        let key = parse(read_hex32(path.clone())?)?;
        let mut cache = self.custody_keys.lock().expect("custody key cache");
        if cache.len() >= CUSTODY_KEYS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(path, (modified, key.clone()));
        Some(key)
    }
}

fn read_hex32(path: PathBuf) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path).ok()?;
    hex::decode(text.trim()).ok()?.try_into().ok()
}

/// Write a 32-byte secret as hex to a new file with mode 0600.
pub fn write_secret(path: &std::path::Path, secret: &[u8; 32]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex::encode(secret).as_bytes())?;
    file.sync_all()
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
            (full.0, full.1),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        );
        let stale = login_refused(&SubmitError::AlreadyCommitted);
        assert_eq!(
            (stale.0, stale.1),
            (StatusCode::UNAUTHORIZED, "invalid_client")
        );
    }
}
