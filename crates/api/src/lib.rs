//! Serve the chain over HTTP: status, blocks, transaction submission, proofs.
//!
//! This is the only crate that knows HTTP. Errors come back as JSON `{"error": "..."}` with a
//! 4xx status that names the problem; they never carry request contents.

pub mod access;
pub use ehrchain_chain::access_log;
pub mod ambient;
pub mod auth;
pub mod error;
pub mod fhir;
pub mod gateway;
pub mod login;
pub mod passkey;
pub mod records;
pub mod scopes;
pub mod serve;
pub mod session;
pub mod smart;
pub mod submit;
pub mod ui;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use commonware_runtime::Blob;
use ehrchain_chain::{Chain, SubmitError};
use ehrchain_types::proof::InclusionProof;
use ehrchain_types::{
    Block, ErrorCode, Genesis, Payload, digest_from_hex, limits::REQUEST_BODY_BYTES_MAX,
};
pub use error::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

/// Longest a client may ask to wait for its transaction to commit.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

pub struct ApiState<B: Blob> {
    pub chain: Chain<B>,
    pub genesis: Genesis,
    /// Renders the node's metrics registry (`commonware_runtime::Metrics::encode`).
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// The node's off-chain store of record envelopes and wrapped keys.
    pub store: Arc<ehrchain_storage::BlobStore>,
    /// This node's institution's X25519 key, if it releases keys wrapped for its institution.
    pub institution_key: Option<ehrchain_crypto::EncryptionKey>,
    /// Where this node keeps the keys it holds for others: custodial patients'
    /// (`<patient id>.key`) and the decryption keys of identities it serves (`<key>.enc`).
    pub custody_dir: Option<std::path::PathBuf>,
    /// The FHIR gateway: tokens and on-chain sessions.
    pub gateway: gateway::Gateway,
    /// The API's open connections and those refused or closed by its limits.
    pub connections: Arc<serve::Connections>,
    /// Record blobs of final blocks this node does not hold yet (kept by the records keeper).
    pub blobs_missing: commonware_runtime::telemetry::metrics::Gauge,
    /// Data keys this node holds none for, asked of a patient's home node over the p2p
    /// network (a break-glass read of another institution's patient).
    pub releases: Option<ehrchain_chain::records::Releases>,
}

type Result<T> = std::result::Result<T, ApiError>;

pub fn router<B: Blob>(state: Arc<ApiState<B>>) -> Router {
    // Everything but metrics and the FHIR router (which checks its own callers and serves
    // its discovery documents and token endpoint openly) sits behind `require_token`.
    let protected = Router::new()
        .route("/chain/status", get(status::<B>))
        .route("/chain/blocks/{height}", get(block::<B>))
        .route("/chain/transactions", post(submit::<B>))
        .route("/chain/transactions/batch", post(submit_batch::<B>))
        .route("/chain/transactions/{hash}", get(transaction::<B>))
        .route("/chain/blocks/{height}/transactions", get(block_ids::<B>))
        .route("/chain/blocks/{height}/proof", get(block_proof::<B>))
        .route("/chain/accounts/{key}", get(account::<B>))
        .merge(records::routes::<B>())
        .merge(access::routes::<B>())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token::<B>,
        ))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX));
    Router::new()
        .route("/metrics", get(metrics::<B>))
        .merge(protected)
        .merge(fhir::routes::<B>(state.clone()))
        .merge(smart::routes::<B>().layer(DefaultBodyLimit::max(smart::AUTH_BODY_BYTES_MAX)))
        .merge(ui::routes::<B>().layer(DefaultBodyLimit::max(smart::AUTH_BODY_BYTES_MAX)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            smart::cors::<B>,
        ))
        .with_state(state)
}

/// `GET /metrics`: the node's registry, as OpenMetrics. Every figure is registered where it
/// is counted (chain and mempool, blob store, records keeper, gateway, access log, API
/// connections, and the engine's own), under the runtime's metrics context.
async fn metrics<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (state.metrics)(),
    )
        .into_response()
}

async fn status<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<auth::Caller>,
) -> Json<Value> {
    let status = state.chain.status();
    // The validators of the epoch the next block belongs to: the genesis set until
    // governance changes it.
    let epoch = (status.height + 1) / state.genesis.rules.epoch_blocks.max(1);
    let validators: Vec<Value> = state.chain.read(|s| {
        s.epoch_validators(epoch)
            .unwrap_or_default()
            .iter()
            .map(|key| {
                let hex = key.to_string();
                let name = state
                    .genesis
                    .validators
                    .iter()
                    .find(|v| v.public_key == hex)
                    .map_or("admitted by governance", |v| v.name.as_str());
                let encryption_key = ehrchain_contracts::state::Reader::identity(s, key)
                    .map(|i| hex::encode(i.encryption_key))
                    .unwrap_or_default();
                json!({"name": name, "public_key": hex, "encryption_key": encryption_key})
            })
            .collect()
    });
    let mut answer = json!({
        "chain_id": status.chain_id,
        "height": status.height,
        "last_block_hash": hex::encode(status.digest),
        "state_root": hex::encode(status.state_root),
        "timestamp_ms": status.timestamp_ms,
        "transactions": status.transactions,
        "mempool": status.mempool,
        "epoch": epoch,
        "validators": validators,
        "blobs_missing": state.blobs_missing.get(),
    });
    // How many reads the network has served, and how many this node still owes the chain,
    // are figures about everyone's trail: for members and auditors only.
    if caller.is_institution() || caller.is_auditor() {
        answer["access_events"] = json!(state.chain.read(|s| s.event_count()));
        answer["access_log_unrecorded"] =
            json!(state.gateway.access_log.as_ref().map(|l| l.unrecorded()));
    }
    Json(answer)
}

fn anchor_json(anchor: &ehrchain_types::RecordAnchor) -> Value {
    json!({
        "kind": "record_anchor",
        "record": hex::encode(anchor.record),
        "version": anchor.version,
        "patient": hex::encode(anchor.patient),
        "resource_type": anchor.resource_type,
        "ciphertext_hash": hex::encode(anchor.ciphertext_hash),
        "ciphertext_size": anchor.ciphertext_size,
        "timestamp_ms": anchor.timestamp_ms,
    })
}

fn payload_json(payload: &Payload) -> Value {
    match payload {
        Payload::Anchor { label, digest } => json!({
            "kind": "anchor",
            "label": label,
            "digest": hex::encode(digest),
        }),
        Payload::RegisterPatient {
            patient,
            key,
            encryption_key,
        } => json!({
            "kind": "register_patient",
            "patient": hex::encode(patient),
            "key": key.to_string(),
            "encryption_key": hex::encode(encryption_key),
        }),
        Payload::EnrollClinician {
            clinician,
            encryption_key,
        } => json!({
            "kind": "enroll_clinician",
            "clinician": clinician.to_string(),
            "encryption_key": hex::encode(encryption_key),
        }),
        Payload::RecordAnchor(anchor) => anchor_json(anchor),
        Payload::RecordSet(anchors) => json!({
            "kind": "record_set",
            "versions": anchors
                .iter()
                .map(anchor_json)
                .collect::<Vec<_>>(),
        }),
        Payload::RegisterClientKey { jwk } => json!({
            "kind": "register_client_key",
            // The public JWK as registered (validated on chain: no private member).
            "jwk": serde_json::from_slice::<Value>(jwk).unwrap_or(Value::Null),
        }),
        Payload::RemoveClientKey { kid } => json!({
            "kind": "remove_client_key",
            "kid": kid,
        }),
        Payload::RegisterApp(app) => json!({
            "kind": "register_app",
            "client_id": app.client_id,
            "name": app.name,
            "redirect_uris": app.redirect_uris,
            "jwk": app.jwk.as_deref().map(|jwk| serde_json::from_slice::<Value>(jwk).unwrap_or(Value::Null)),
        }),
        Payload::RemoveApp { client_id } => json!({
            "kind": "remove_app",
            "client_id": client_id,
        }),
        Payload::CloseSession { session } => json!({
            "kind": "close_session",
            "session": session.to_string(),
        }),
        Payload::ErasePatient { patient } => json!({
            "kind": "erase_patient",
            "patient": hex::encode(patient),
        }),
        Payload::Grant(grant) => json!({
            "kind": "grant",
            "grant": hex::encode(grant.id),
            "patient": hex::encode(grant.patient),
            "grantee": grant.grantee.to_string(),
            "actions": grant.actions,
            "types": grant.types,
            "purposes": grant.purposes,
            "valid_from_ms": grant.valid_from_ms,
            "valid_until_ms": grant.valid_until_ms,
            "share": hex::encode(grant.share),
        }),
        Payload::Revoke { patient, grant } => json!({
            "kind": "revoke",
            "patient": hex::encode(patient),
            "grant": hex::encode(grant),
        }),
        Payload::Access { record, purpose } => json!({
            "kind": "access",
            "record": hex::encode(record),
            "purpose": purpose,
        }),
        Payload::BreakGlass { patient, reason } => json!({
            "kind": "break_glass",
            "patient": hex::encode(patient),
            "reason": reason,
        }),
        Payload::AppointGuardian {
            patient,
            guardian,
            encryption_key,
        } => json!({
            "kind": "appoint_guardian",
            "patient": hex::encode(patient),
            "guardian": guardian.to_string(),
            "encryption_key": hex::encode(encryption_key),
        }),
        Payload::RemoveGuardian { patient, guardian } => json!({
            "kind": "remove_guardian",
            "patient": hex::encode(patient),
            "guardian": guardian.to_string(),
        }),
        Payload::ReviewFinding {
            height,
            index,
            seq,
            verdict,
        } => json!({
            "kind": "review_finding",
            "finding": {"height": height, "index": index, "seq": seq},
            "verdict": verdict,
        }),
        Payload::Propose { proposal, action } => json!({
            "kind": "propose",
            "proposal": hex::encode(proposal),
            "action": access::action_json(action),
        }),
        Payload::Vote { proposal, approve } => json!({
            "kind": "vote",
            "proposal": hex::encode(proposal),
            "approve": approve,
        }),
        Payload::RotateKey {
            new_key,
            encryption_key,
        } => json!({
            "kind": "rotate_key",
            "new_key": new_key.to_string(),
            "encryption_key": hex::encode(encryption_key),
        }),
        Payload::RecoverKey {
            patient,
            new_key,
            encryption_key,
        } => json!({
            "kind": "recover_key",
            "patient": hex::encode(patient),
            "new_key": new_key.to_string(),
            "encryption_key": hex::encode(encryption_key),
        }),
        Payload::OpenSession {
            identity,
            gateway,
            assertion,
        } => json!({
            "kind": "open_session",
            "identity": identity.to_string(),
            "gateway": gateway.to_string(),
            "assertion_sha256": hex::encode(ehrchain_types::sha256(&[assertion])),
        }),
        Payload::RemoveClinician { clinician } => json!({
            "kind": "remove_clinician",
            "clinician": clinician.to_string(),
        }),
        Payload::TrailQuery { patient } => json!({
            "kind": "trail_query",
            "patient": hex::encode(patient),
        }),
        Payload::AccessLog { first, entries } => json!({
            "kind": "access_log",
            "first": first,
            "entries": entries.iter().map(|e| json!({
                "session": e.session.to_string(),
                "record": hex::encode(e.record),
                "purpose": e.purpose,
                "checked_ms": e.checked_ms,
            })).collect::<Vec<_>>(),
        }),
    }
}

async fn load_block<B: Blob>(chain: &Chain<B>, height: u64) -> Result<(Block, Vec<u8>)> {
    Ok(ehrchain_chain::proofs::load_block(chain, height).await?)
}

impl From<ehrchain_chain::proofs::BlockError> for ApiError {
    fn from(error: ehrchain_chain::proofs::BlockError) -> Self {
        use ehrchain_chain::proofs::BlockError;
        let status = match error {
            BlockError::Missing(_) => StatusCode::NOT_FOUND,
            BlockError::Damaged(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

/// A block: its header and certificate for everyone; each transaction's signer and payload
/// only for member institutions and auditors (who see the chain's metadata), and for the
/// caller whom it concerns. Others see the transaction's hash alone.
async fn block<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<auth::Caller>,
    Path(height): Path<u64>,
) -> Result<Json<Value>> {
    let (block, finalization) = load_block(&state.chain, height).await?;
    let header = &block.header;
    let everything = caller.is_auditor() || caller.is_institution();
    Ok(Json(json!({
        "height": header.height,
        "hash": hex::encode(block.digest()),
        "parent": hex::encode(header.parent),
        "timestamp_ms": header.timestamp_ms,
        "proposer": hex::encode(header.proposer.as_ref()),
        "tx_root": hex::encode(header.tx_root),
        "state_root": hex::encode(header.state_root),
        "header": hex::encode(header.encode()),
        "finalization": (!finalization.is_empty()).then(|| hex::encode(&finalization)),
        "transactions": block.transactions.iter().map(|tx| {
            if everything || auth::concerns(&caller, &tx.body.signer, &tx.body.payload) {
                json!({
                    "hash": hex::encode(tx.id()),
                    "signer": hex::encode(tx.body.signer.as_ref()),
                    "nonce": tx.body.nonce,
                    "payload": payload_json(&tx.body.payload),
                })
            } else {
                json!({"hash": hex::encode(tx.id())})
            }
        }).collect::<Vec<_>>(),
    })))
}

/// Accepts the canonical transaction bytes (`application/octet-stream`) or JSON
/// `{"transaction": "<hex>"}`.
async fn submit<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = if is_json {
        #[derive(Deserialize)]
        struct Submission {
            transaction: String,
        }
        let submission: Submission = serde_json::from_slice(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "expected {\"transaction\": \"<hex>\"}",
            )
        })?;
        hex::decode(submission.transaction)
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "transaction is not hex"))?
    } else {
        body.to_vec()
    };
    match state.chain.submit(&bytes) {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "hash": hex::encode(id), "status": "pending" })),
        )),
        Err(error) => Err(submit_error(&error)),
    }
}

/// The HTTP answer to a refused transaction. The reason names a rule, never content.
pub(crate) fn submit_error(error: &SubmitError) -> ApiError {
    use ehrchain_chain::mempool::AdmissionError;
    use ehrchain_contracts::facts::Rejection;
    let status = match error {
        SubmitError::Invalid(ehrchain_types::Error::TransactionTooLarge(..)) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        SubmitError::Invalid(ehrchain_types::Error::BadSignature)
        | SubmitError::Invalid(ehrchain_types::Error::WrongChain(..)) => StatusCode::UNAUTHORIZED,
        SubmitError::Invalid(_) => StatusCode::BAD_REQUEST,
        SubmitError::AlreadyCommitted => StatusCode::CONFLICT,
        SubmitError::Admission(AdmissionError::Full(_)) => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::Admission(AdmissionError::UnknownSigner) => StatusCode::FORBIDDEN,
        SubmitError::Admission(AdmissionError::TooManyGapped(_)) => StatusCode::TOO_MANY_REQUESTS,
        SubmitError::Admission(AdmissionError::Rejected(Rejection::Unauthorized(_))) => {
            StatusCode::FORBIDDEN
        }
        SubmitError::Admission(AdmissionError::Rejected(Rejection::UnknownPatient)) => {
            StatusCode::NOT_FOUND
        }
        SubmitError::Admission(AdmissionError::Rejected(Rejection::PatientErased)) => {
            StatusCode::GONE
        }
        SubmitError::Admission(AdmissionError::Rejected(Rejection::RetiredKey)) => {
            StatusCode::UNAUTHORIZED
        }
        SubmitError::Admission(AdmissionError::Rejected(Rejection::UnknownRecord)) => {
            StatusCode::NOT_FOUND
        }
        SubmitError::Admission(AdmissionError::Rejected(Rejection::Refused(
            ehrchain_contracts::consent::Refusal::NotTheOwner,
        ))) => StatusCode::FORBIDDEN,
        SubmitError::Admission(AdmissionError::Rejected(Rejection::Malformed(_))) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        SubmitError::Admission(_) => StatusCode::CONFLICT,
    };
    ApiError::new(status, format!("transaction rejected: {error}")).with_code(error.code())
}

/// Bulk import: the body is `count u32 | (len u32 | transaction)*`, as peers gossip it.
async fn submit_batch<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    body: Bytes,
) -> Result<Json<Value>> {
    let transactions = ehrchain_chain::engine::decode_batch(&body)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "malformed transaction batch"))?;
    let results = state
        .chain
        .admit_batch(&mut rand::rng(), transactions, true);
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let rejected: Vec<Value> = results
        .iter()
        .enumerate()
        .filter_map(|(index, r)| {
            r.as_ref()
                .err()
                .map(|e| json!({"index": index, "error": e.to_string(), "code": e.code().as_str()}))
        })
        .take(100)
        .collect();
    Ok(Json(json!({ "accepted": accepted, "rejected": rejected })))
}

/// The ids of a block's transactions as raw 32-byte digests, for tools that follow the chain.
async fn block_ids<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(height): Path<u64>,
) -> Result<Response> {
    let (block, _) = load_block(&state.chain, height).await?;
    let mut bytes = Vec::with_capacity(block.transactions.len() * 32);
    for id in block.transaction_ids() {
        bytes.extend_from_slice(id.as_ref());
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    /// Wait up to this many milliseconds for the transaction to commit.
    wait_ms: Option<u64>,
}

async fn transaction<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(hash): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Value>> {
    let id = digest_from_hex(&hash)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "hash must be 64 hex characters"))?;
    let chain = &state.chain;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(WAIT_MAX);
    let mut committed = chain.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let location = loop {
        if let Some(location) = chain.location(&id) {
            break Some(location);
        }
        if tokio::time::timeout_at(deadline, committed.changed())
            .await
            .is_err()
        {
            break None;
        }
    };
    let Some(location) = location else {
        if let Some((code, reason)) = chain.rejection(&id) {
            return Ok(Json(
                json!({ "hash": hash, "status": "rejected", "reason": reason, "code": code.as_str() }),
            ));
        }
        let status = if chain.is_pending(&id) {
            "pending"
        } else {
            "unknown"
        };
        let code = if status == "pending" {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        if code == StatusCode::NOT_FOUND {
            return Err(ApiError::new(code, "transaction unknown to this node")
                .with_code(ErrorCode::UnknownTransaction));
        }
        return Ok(Json(json!({ "hash": hash, "status": status })));
    };
    let proof = build_proof(
        &state.chain,
        &state.genesis,
        &id,
        location.height,
        location.index,
    )
    .await?;
    let denied = denial(state.as_ref(), &location).map(|reason| {
        json!({
            "reason": reason.code(),
            "message": reason.to_string(),
        })
    });
    Ok(Json(json!({
        "hash": hex::encode(id),
        "status": "committed",
        // Set when the operation was refused and only the attempt was recorded.
        "denied": denied,
        "height": location.height,
        "index": location.index,
        "proof": proof,
    })))
}

/// The rule that refused a committed transaction whose attempt was recorded as denied (a
/// write, consent change, break-glass, guardian, erasure or recovery the signer may not do).
/// Read attempts are left to the read path, which reports their outcome itself.
pub fn denial<B: Blob>(
    state: &ApiState<B>,
    location: &ehrchain_chain::Location,
) -> Option<ehrchain_contracts::facts::Reason> {
    state.chain.read(
        |s| match s.finding(location.height, location.index).map(|f| f.kind) {
            Some(ehrchain_contracts::facts::FindingKind::DeniedAccess(
                reason @ ehrchain_contracts::facts::Reason::NotPermitted { .. },
            )) => Some(reason),
            _ => None,
        },
    )
}

/// `GET /chain/blocks/{height}/proof`: the block's finality proof (its header, the headers up
/// to a certified one, the certificate and the validator-set changes), which a block explorer
/// checks against the genesis with no trust in this node. 404 while no certificate covers it.
async fn block_proof<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(height): Path<u64>,
) -> Result<Json<ehrchain_types::proof::BlockProof>> {
    match ehrchain_chain::proofs::block_proof(&state.chain, &state.genesis, height).await? {
        Some((_, proof)) => Ok(Json(proof)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no finalization certificate covers this block yet",
        )),
    }
}

/// Build an inclusion proof; `None` while no finalization certificate covers the block yet.
pub async fn build_proof<B: Blob>(
    chain: &Chain<B>,
    genesis: &Genesis,
    id: &ehrchain_types::Digest,
    height: u64,
    index: u32,
) -> Result<Option<InclusionProof>> {
    Ok(ehrchain_chain::proofs::inclusion_proof(chain, genesis, id, height, index).await?)
}

async fn account<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    let key = ehrchain_types::public_key_from_hex(&key)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "key must be 64 hex characters"))?;
    Ok(Json(json!({ "next_nonce": state.chain.nonce(&key) })))
}
