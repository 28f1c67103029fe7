//! Submission: signing with a caller's session key (or the institution's key), submitting, and
//! waiting for the commit. The nonce advances only when the node admits the transaction.

use crate::session::Token;
use crate::{ApiError, ApiState, WAIT_MAX};
use axum::http::StatusCode;
use commonware_cryptography::Signer as _;
use commonware_runtime::Blob;
use ehrchain_chain::{SubmitError, application::Location};
use ehrchain_types::{Payload, Transaction, TransactionBody};

fn submit_failure(error: &SubmitError) -> ApiError {
    crate::submit_error(error).as_fhir("processing")
}

/// Refuse a write that rests on `patient/` scopes for another patient than the login's.
fn within_context(token: &Token, payload: &Payload) -> Result<(), ApiError> {
    use crate::scopes::{CREATE, DELETE, UPDATE};
    for anchor in payload.record_anchors() {
        let kind = ehrchain_fhir::ResourceType::from_code(anchor.resource_type)
            .map_or("Resource", ehrchain_fhir::ResourceType::name);
        let permission = if anchor.is_tombstone() {
            DELETE
        } else if anchor.version == 1 {
            CREATE
        } else {
            UPDATE
        };
        token.within(kind, permission, &anchor.patient)?;
    }
    match payload {
        Payload::Grant(grant) => token.within("Consent", CREATE, &grant.patient),
        Payload::Revoke { patient, .. } => token.within("Consent", UPDATE, patient),
        _ => Ok(()),
    }
}

/// Sign `payload` with the caller's session key and submit it. The nonce advances only when
/// the node admits the transaction, so a refusal leaves no gap for the next request.
pub async fn submit_as<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    payload: Payload,
) -> Result<Transaction, ApiError> {
    within_context(token, &payload)?;
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
) -> Result<Transaction, ApiError> {
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
) -> Result<Transaction, ApiError> {
    let account = state.gateway.institution.as_ref().ok_or_else(|| {
        ApiError::fhir(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this node registers no patients",
        )
    })?;
    match account.submit(&state.chain, payload).await {
        Ok(tx) => Ok(tx),
        Err(error) if ehrchain_chain::account::is_busy(&error) => Err(ApiError::fhir(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the institution's account is busy; retry",
        )),
        Err(error) => Err(submit_failure(&error)),
    }
}

/// Wait until `tx` commits; its rejection or a timeout is an error.
pub async fn commit<B: Blob>(state: &ApiState<B>, tx: &Transaction) -> Result<Location, ApiError> {
    let id = tx.id();
    let mut committed = state.chain.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        if let Some(location) = state.chain.location(&id) {
            if let Some(reason) = crate::denial(state, &location) {
                return Err(ApiError::fhir(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("{reason}; the attempt is recorded on chain"),
                ));
            }
            return Ok(location);
        }
        if let Some((_, reason)) = state.chain.rejection(&id) {
            return Err(ApiError::fhir(StatusCode::CONFLICT, "conflict", &reason));
        }
        if tokio::time::timeout_at(deadline, committed.changed())
            .await
            .is_err()
        {
            return Err(ApiError::fhir(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the transaction did not commit in time; retry",
            ));
        }
    }
}
