//! Consent, the access trail and supervision findings over HTTP. Everything here is
//! pseudonymous: ids and keys, never names or clinical content.
//!
//! Grant body (`POST /consents`, `application/octet-stream`):
//! ```text
//! tx_len u32 | transaction [tx_len] | share bundle [rest, may be empty]
//! ```
//! The bundle (see `ehrchain_crypto::Share`) must hash to the grant's `share` field. It is
//! staged like a record upload and kept only once the grant is final.

use crate::{ApiError, ApiState, Result, submit_error};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::{Grant, Purpose};
use ehrchain_contracts::{
    facts::{AccessEvent, BREAK_GLASS_REASONS, Basis, Finding, FindingKind, Outcome},
    state::{Reader as _, State as ChainState},
};
use ehrchain_crypto::{Share, envelope_hash};
use ehrchain_types::{
    Payload, Transaction,
    wire::{CONSENT_BYTES_MAX, decode_consent},
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most trail entries one page carries.
pub const PAGE_MAX: usize = 1_000;

pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route(
            "/consents",
            post(grant::<B>).layer(DefaultBodyLimit::max(CONSENT_BYTES_MAX)),
        )
        .route("/patients/{patient}/consents", get(consents::<B>))
        .route("/patients/{patient}/access", get(patient_trail::<B>))
        .route("/access/events", get(all_events::<B>))
        .route("/access/events/{transaction}", get(one_event::<B>))
        .route("/access/findings", get(findings::<B>))
        .route("/access/reasons", get(reasons))
        .route("/governance/proposals", get(proposals::<B>))
}

fn bad(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn unavailable(error: ehrchain_storage::Error) -> ApiError {
    tracing::error!(%error, "blob store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the blob store is unavailable",
    )
}

async fn grant<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let (tx_bytes, share) = decode_consent(&body).map_err(bad)?;
    let tx = Transaction::decode(tx_bytes)
        .map_err(|e| submit_error(&ehrchain_chain::SubmitError::Invalid(e)))?;
    let Payload::Grant(body) = &tx.body.payload else {
        return Err(bad("the transaction of a consent must be a grant"));
    };
    let declared: [u8; 32] = body.share.as_ref().try_into().expect("32");
    let staged = if share.is_empty() {
        if declared != [0; 32] {
            return Err(bad("the grant names a share bundle that is not attached"));
        }
        None
    } else {
        Share::decode(share).map_err(|_| bad("malformed share bundle"))?;
        if envelope_hash(share) != declared {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the share bundle does not match the hash in its grant",
            ));
        }
        Some(state.store.stage(share, &[]).await.map_err(unavailable)?)
    };
    match state.chain.submit(tx_bytes) {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "hash": hex::encode(id),
                "grant": hex::encode(body.id),
                "status": "pending",
            })),
        )),
        Err(error) => {
            if let Some(hash) = staged
                && let Err(error) = state.store.unstage(&hash)
            {
                tracing::error!(%error, "cannot drop a refused share bundle");
            }
            Err(submit_error(&error))
        }
    }
}

fn id16(text: &str) -> Result<[u8; 16]> {
    ehrchain_types::id_from_hex(text).ok_or_else(|| bad("patient id must be 32 hex characters"))
}

fn key_hex(key: &[u8; 32]) -> String {
    hex::encode(key)
}

/// A grant as JSON, with its status at block time `now_ms`.
pub fn grant_json(state: &ChainState, grant: &Grant, now_ms: u64) -> Value {
    let status = if grant.revoked_at_ms.is_some() {
        "revoked"
    } else if now_ms >= grant.valid_until_ms {
        "expired"
    } else if now_ms < grant.valid_from_ms {
        "pending"
    } else {
        "active"
    };
    let grantee_key = ehrchain_contracts::facts::public_key(&grant.grantee);
    let grantee = grantee_key.as_ref().and_then(|k| state.identity(k));
    // A key rotated away or removed gets no new wraps: no encryption key to wrap for.
    let retired = grantee_key.is_some_and(|k| state.retired(&k).is_some());
    let actions: Vec<&str> = [(1u8, "access"), (2, "correct")]
        .iter()
        .filter(|(bit, _)| grant.actions & bit != 0)
        .map(|(_, code)| *code)
        .collect();
    json!({
        "id": hex::encode(grant.id),
        "patient": hex::encode(grant.patient),
        "granted_by": key_hex(&grant.granted_by),
        "grantee": key_hex(&grant.grantee),
        "grantee_role": grantee.as_ref().map(|i| i.role.name()),
        "grantee_encryption_key": grantee
            .filter(|_| !retired)
            .map(|i| hex::encode(i.encryption_key)),
        "grantee_retired": retired,
        "actions": actions,
        "types": grant.types,
        "purposes": grant.purposes.iter().map(|p| p.code()).collect::<Vec<_>>(),
        "valid_from_ms": grant.valid_from_ms,
        "valid_until_ms": grant.valid_until_ms,
        "revoked_at_ms": grant.revoked_at_ms,
        "status": status,
    })
}

/// A patient's grants: all of them for the patient, their guardians and auditors; for anyone
/// else only the grants made to them (a clinician checking what they were given).
async fn consents<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(patient): Path<String>,
) -> Result<Json<Value>> {
    let id = id16(&patient)?;
    let all = crate::auth::may_see_trail(&caller, &id);
    let answer = state.chain.read(|s| {
        let grants: Vec<Value> = {
            let now = s.time_ms();
            s.grants(&id)
                .iter()
                .filter(|g| {
                    all || ehrchain_contracts::facts::public_key(&g.grantee)
                        .is_some_and(|k| caller.is(&k))
                })
                .map(|g| grant_json(s, g, now))
                .collect()
        };
        // Only those who may see everything learn whether the patient exists.
        if all {
            s.patient(&id)?;
        }
        Some(json!({
            "patient": hex::encode(id),
            "time_ms": s.time_ms(),
            "consents": grants,
        }))
    });
    answer
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown patient"))
}

fn purpose_code(number: u8) -> &'static str {
    Purpose::from_number(number).map_or("unknown", |p| p.code())
}

/// An access event as JSON.
pub fn event_json(
    state: &ehrchain_contracts::state::State,
    position: ehrchain_contracts::facts::EventKey,
    event: &AccessEvent,
) -> Value {
    let (outcome, basis, reason) = match &event.outcome {
        Outcome::Allowed(basis) => {
            let basis = match basis {
                Basis::Owner => json!({"kind": "owner"}),
                Basis::Guardian => json!({"kind": "guardian"}),
                Basis::Author => json!({"kind": "author"}),
                Basis::Consent(id) => json!({"kind": "consent", "grant": hex::encode(id)}),
                Basis::BreakGlass => json!({"kind": "break-glass"}),
                // The opening's finding is at the same position; its review, once made.
                Basis::BreakGlassOpened { reason, until_ms } => json!({
                    "kind": "break-glass-opened",
                    "reason": reason,
                    "until_ms": until_ms,
                    "review": review_json(state.review_of(&(position.0, position.1, 0))),
                }),
            };
            ("allowed", basis, Value::Null)
        }
        Outcome::Denied(reason) => ("denied", Value::Null, json!(reason.code())),
    };
    json!({
        "height": position.0,
        "index": position.1,
        "entry": position.2,
        "transaction": hex::encode(event.transaction),
        "time_ms": event.time_ms,
        "actor": event.actor.to_string(),
        "patient": hex::encode(event.patient),
        "record": event.record.map(|(r, _)| hex::encode(r)),
        "resource_type": event.record.map(|(_, t)| t),
        "purpose": purpose_code(event.purpose),
        "outcome": outcome,
        "basis": basis,
        "reason": reason,
        "app": event.app,
    })
}

/// A finding's review: `pending` until an auditor made it.
fn review_json(review: Option<&ehrchain_contracts::facts::Review>) -> Value {
    match review {
        None => json!({"state": "pending"}),
        Some(review) => json!({
            "state": review.verdict.code(),
            "auditor": review.auditor.to_string(),
            "time_ms": review.time_ms,
        }),
    }
}

fn finding_json(
    position: (u64, u32, u8),
    finding: &Finding,
    review: Option<&ehrchain_contracts::facts::Review>,
) -> Value {
    let detail = match finding.kind {
        FindingKind::DeniedAccess(reason) => json!({"reason": reason.code()}),
        FindingKind::BreakGlass { reason } => json!({"reason": reason}),
        FindingKind::ReadVolume {
            count,
            window_start_ms,
        } => json!({"count": count, "window_start_ms": window_start_ms}),
        FindingKind::LateLog { lag_ms } => json!({"lag_ms": lag_ms}),
        FindingKind::AfterRevocation | FindingKind::KeyRecovery => json!({}),
    };
    json!({
        "height": position.0,
        "index": position.1,
        "seq": position.2,
        "review": review_json(review),
        "kind": finding.kind.code(),
        "detail": detail,
        "actor": finding.actor.to_string(),
        // An identity or governance operation names no patient.
        "patient": (finding.patient != ehrchain_contracts::access::NO_PATIENT)
            .then(|| hex::encode(finding.patient)),
        "time_ms": finding.time_ms,
        "transaction": hex::encode(finding.transaction),
    })
}

/// Paging over the trail: entries after height `after` (exclusive), at most `limit`.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX)
    }

    fn admits(&self, height: u64) -> bool {
        self.after.is_none_or(|after| height > after)
    }
}

fn trail_forbidden() -> ApiError {
    crate::auth::forbidden("the trail is shown to its patient, their guardians and auditors")
}

async fn patient_trail<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(patient): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    let id = id16(&patient)?;
    if !crate::auth::may_see_trail(&caller, &id) {
        return Err(trail_forbidden());
    }
    let answer = state.chain.read(|s| {
        s.patient(&id)?;
        let events: Vec<Value> = s
            .patient_events(&id)
            .into_iter()
            .filter(|(p, _)| page.admits(p.0))
            .take(page.limit())
            .map(|(p, e)| event_json(s, p, e))
            .collect();
        Some(json!({"patient": hex::encode(id), "events": events}))
    });
    answer
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown patient"))
}

fn auditors_only(caller: &crate::auth::Caller) -> Result<()> {
    if caller.is_auditor() {
        Ok(())
    } else {
        Err(crate::auth::forbidden(
            "the whole trail and the findings are shown to auditors",
        ))
    }
}

async fn all_events<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    auditors_only(&caller)?;
    let events: Vec<Value> = state.chain.read(|s| {
        s.events()
            .filter(|(p, _)| page.admits(p.0))
            .take(page.limit())
            .map(|(p, e)| event_json(s, *p, e))
            .collect()
    });
    Ok(Json(json!({"events": events})))
}

/// The access event a transaction recorded: how the contract decided that read.
async fn one_event<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(transaction): Path<String>,
) -> Result<Json<Value>> {
    let id = ehrchain_types::digest_from_hex(&transaction)
        .ok_or_else(|| bad("transaction must be 64 hex characters"))?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no final access event for that transaction",
        )
    };
    // Shown to its reader, its patient and guardians, and auditors; to anyone else it is as
    // if there were none.
    let location = state.chain.location(&id).ok_or_else(not_found)?;
    state
        .chain
        .read(|s| {
            s.event(location.height, location.index)
                .filter(|e| {
                    caller.is_auditor() || caller.is(&e.actor) || caller.speaks_for(&e.patient)
                })
                .map(|e| event_json(s, (location.height, location.index, 0), e))
        })
        .map(Json)
        .ok_or_else(not_found)
}

async fn findings<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    auditors_only(&caller)?;
    let findings: Vec<Value> = state.chain.read(|s| {
        s.findings()
            .filter(|(p, _)| page.admits(p.0))
            .take(page.limit())
            .map(|(p, f)| finding_json(*p, f, s.review_of(p)))
            .collect()
    });
    Ok(Json(json!({"findings": findings})))
}

/// A governance action as JSON.
pub fn action_json(action: &ehrchain_types::GovernanceAction) -> Value {
    use ehrchain_types::GovernanceAction as A;
    match action {
        A::AddMember {
            key,
            encryption_key,
            p2p_address,
        } => {
            json!({"kind": "add-member", "key": key.to_string(), "encryption_key": hex::encode(encryption_key), "p2p_address": p2p_address.to_string()})
        }
        A::RemoveMember { key } => json!({"kind": "remove-member", "key": key.to_string()}),
        A::AppointAuditor { key } => json!({"kind": "appoint-auditor", "key": key.to_string()}),
        A::RemoveAuditor { key } => json!({"kind": "remove-auditor", "key": key.to_string()}),
    }
}

/// Governance: shown to the consortium's members and auditors, who take part in it.
async fn proposals<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Result<Json<Value>> {
    if !(caller.is_institution() || caller.is_auditor()) {
        return Err(crate::auth::forbidden(
            "governance is shown to member institutions and auditors",
        ));
    }
    use ehrchain_contracts::facts::{PROPOSAL_OPEN_MS, ProposalStatus as Status};
    let answer = state.chain.read(|s| {
        let now = s.time_ms();
        let proposals: Vec<Value> = s
            .proposals()
            .map(|(id, p)| {
                let (status, height, effective) = match p.status {
                    Status::Open if now >= p.created_ms.saturating_add(PROPOSAL_OPEN_MS) => {
                        ("expired", None, None)
                    }
                    Status::Open => ("open", None, None),
                    Status::Passed {
                        height,
                        effective_height,
                    } => ("passed", Some(height), Some(effective_height)),
                    Status::Rejected { height } => ("rejected", Some(height), None),
                };
                json!({
                    "id": hex::encode(id),
                    "action": action_json(&p.action),
                    "proposer": p.proposer.to_string(),
                    "electorate": p.electorate,
                    "yes": p.yes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "no": p.no.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "yes_needed": p.electorate * 2 / 3 + 1,
                    "status": status,
                    "decided_height": height,
                    "effective_height": effective,
                })
            })
            .collect();
        let epoch_blocks = s.rules().epoch_blocks.max(1);
        let epochs: Vec<Value> = s
            .epochs()
            .map(|(epoch, set)| {
                json!({
                    "epoch": epoch,
                    "first_height": epoch * epoch_blocks,
                    "validators": set.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "members": s.members().map(ToString::to_string).collect::<Vec<_>>(),
            "proposals": proposals,
            "epoch_blocks": epoch_blocks,
            "validator_sets": epochs,
        })
    });
    Ok(Json(answer))
}

async fn reasons() -> Json<Value> {
    Json(json!({
        "break_glass": BREAK_GLASS_REASONS
            .iter()
            .map(|(code, text)| json!({"code": code, "text": text}))
            .collect::<Vec<_>>(),
        "purposes": Purpose::ALL.iter().map(|p| json!({"number": *p as u8, "code": p.code()})).collect::<Vec<_>>(),
    }))
}
