//! `AuditEvent`: the on-chain access trail, shown to those it concerns.

use super::{
    common::{ACT_REASON, Entry, Result, forbidden, id16, invalid, reference_of, role_of},
    params::{PAGING, checked, count_param, outcome_entry, patient_param, query_pairs, searchset},
    time::instant,
};
use crate::{ApiState, session::caller};
use axum::{
    extract::{RawQuery, State},
    http::HeaderMap,
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::Purpose;
use ehrchain_contracts::{
    facts::{Outcome, Role},
    state::Reader as _,
};
use ehrchain_fhir::ResourceType;
use serde_json::{Value, json};
use std::sync::Arc;

// ---- AuditEvent ----------------------------------------------------------------------------

/// An AuditEvent's id: the hash of the transaction that recorded it, and for a later entry of
/// a gateway's access log, a prefix of it with the entry number (FHIR ids are 64 at most).
pub(super) fn audit_event_id(
    position: ehrchain_contracts::facts::EventKey,
    event: &ehrchain_contracts::facts::AccessEvent,
) -> String {
    let hash = hex::encode(event.transaction);
    match position.2 {
        0 => hash,
        entry => format!("{}-{entry}", &hash[..56]),
    }
}

pub(super) fn audit_event_json<B: Blob>(
    state: &ApiState<B>,
    position: ehrchain_contracts::facts::EventKey,
    event: &ehrchain_contracts::facts::AccessEvent,
) -> Value {
    let role = role_of(state, &event.actor);
    let purpose = Purpose::from_number(event.purpose).map_or("TREAT", Purpose::code);
    let (outcome, description) = match event.outcome {
        Outcome::Allowed(_) => ("0", "allowed".to_string()),
        Outcome::Denied(reason) => ("4", format!("denied: {}", reason.code())),
    };
    let mut entities = vec![json!({
        "what": {"reference": format!("Patient/{}", hex::encode(event.patient))},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
    })];
    // A refused write or consent change, recorded as an attempt (not a read).
    let refused_operation = match event.outcome {
        Outcome::Denied(ehrchain_contracts::facts::Reason::NotPermitted { operation }) => {
            Some(operation)
        }
        _ => None,
    };
    let subtype = match event.record {
        Some((record, kind)) => {
            let name = ResourceType::from_code(kind).map_or("Resource", ResourceType::name);
            entities.push(json!({
                "what": {"reference": format!("{name}/{}", hex::encode(record))},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
            }));
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"})
        }
        None => {
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT", "display": "break-glass"})
        }
    };
    let (subtype, action) = match refused_operation {
        Some(4) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "update", "display": "write"}),
            "U",
        ),
        Some(17) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search the trail"}),
            "E",
        ),
        Some(_) => (
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"}),
            "E",
        ),
        None => (subtype, "R"),
    };
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "who": {"reference": reference_of(role.as_ref(), &event.actor)},
        "requestor": true,
    })];
    // The SMART app the person read through, by its registered name while it is registered.
    if let Some(client_id) = &event.app {
        let name = state.chain.read(|s| s.app(client_id).map(|a| a.name));
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
            "who": {
                "identifier": {"system": "urn:ehrchain:smart-client-id", "value": client_id},
                "display": name.unwrap_or_else(|| format!("{client_id} (no longer registered)")),
            },
            "requestor": false,
        }));
    }
    // A break-glass opening carries the auditors' review of it: pending until one is made.
    let review = matches!(
        event.outcome,
        Outcome::Allowed(ehrchain_contracts::facts::Basis::BreakGlassOpened { .. })
    )
    .then(|| {
        let review = state
            .chain
            .read(|s| s.review_of(&(position.0, position.1, 0)).map(|r| r.verdict));
        json!([{
            "url": BREAK_GLASS_REVIEW,
            "valueCode": review.map_or("pending", |v| v.code()),
        }])
    });
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "id": audit_event_id(position, event),
        "meta": {"profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read"]},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [subtype],
        "action": action,
        "recorded": instant(event.time_ms),
        "outcome": outcome,
        "outcomeDesc": description,
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose}]}],
        "agent": agents,
        "source": {
            "site": match position.2 {
                0 => format!("block {} transaction {}", position.0, position.1),
                entry => format!("block {} transaction {} entry {entry}", position.0, position.1),
            },
            "observer": {"display": "ehrchain consortium ledger"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    });
    if let Some(review) = review {
        resource["extension"] = review;
    }
    resource
}

/// The extension on a break-glass opening's AuditEvent that says whether an auditor reviewed
/// it: `pending`, `justified` or `not-justified`.
pub const BREAK_GLASS_REVIEW: &str =
    "https://ehrchain.org/fhir/StructureDefinition/break-glass-review";

pub(super) async fn audit_events<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (pairs, ignored) = checked(
        query_pairs(query)?,
        &["patient", PAGING[0], PAGING[1]],
        &[],
        &headers,
    )?;
    let (count, offset) = count_param(&pairs)?;
    let asked = match patient_param(&pairs) {
        Some(p) => Some(id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?),
        None => None,
    };
    let patient = match (role_of(&state, &token.identity), asked) {
        (Some(Role::Auditor), asked) => asked,
        (Some(Role::Patient { patient } | Role::Guardian { patient }), None) => Some(patient),
        (Some(Role::Patient { patient } | Role::Guardian { patient }), Some(asked))
            if asked == patient =>
        {
            Some(patient)
        }
        (_, asked) => {
            // Asked for one patient's trail: the chain decides and records the refusal.
            if let Some(patient) = asked
                && state.chain.read(|s| s.patient(&patient).is_some())
            {
                let tx = crate::submit::submit_as(
                    &state,
                    &token,
                    ehrchain_types::Payload::TrailQuery { patient },
                )
                .await?;
                crate::submit::commit(&state, &tx).await?;
            }
            return Err(forbidden(
                "the trail is shown to its patient, their guardians and auditors",
            ));
        }
    };
    let (total, page) = state.chain.read(|s| {
        let events: Vec<(
            ehrchain_contracts::facts::EventKey,
            ehrchain_contracts::facts::AccessEvent,
        )> = match &patient {
            Some(p) => s
                .patient_events(p)
                .into_iter()
                .map(|(k, e)| (k, e.clone()))
                .collect(),
            None => s.events().map(|(k, e)| (*k, e.clone())).collect(),
        };
        let total = events.len();
        // Newest first.
        let page: Vec<_> = events.into_iter().rev().skip(offset).take(count).collect();
        (total, page)
    });
    let base = &state.gateway.public_url;
    let entries: Vec<Entry> = page
        .iter()
        .map(|(position, event)| Entry {
            fields: json!({
                "fullUrl": format!("{base}/fhir/AuditEvent/{}", audit_event_id(*position, event)),
                "resource": audit_event_json(&state, *position, event),
                "search": {"mode": "match"},
            }),
            resource: None,
        })
        .chain(ignored.map(outcome_entry))
        .collect();
    Ok(searchset(
        base,
        "AuditEvent",
        &pairs,
        (offset, count),
        total,
        entries,
    ))
}
