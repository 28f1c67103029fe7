//! `Consent`: grants and revocations as the patient's (or guardian's) signed transactions, with
//! their share bundles.

use super::{
    common::{
        ACT_REASON, Result, body_bytes, codes, fhir_json, forbidden, id16, invalid, key_of,
        not_found, reference_of, role_of, unavailable, unprocessable,
    },
    params::{checked, outcome_json, patient_param, query_pairs},
    read::{denied, record_reads},
    time::{instant, parse_time},
};
use crate::{
    ApiState, ambient::now_ms, gateway, session::Token, session::caller, submit::commit,
    submit::submit_as, submit::submit_staged,
};
use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::{Action, Grant, Purpose};
use ehrchain_contracts::{
    facts::{RecordVersion, Role},
    state::Reader as _,
};
use ehrchain_crypto::{Binding, EncryptionPublicKey, Share, envelope_hash};
use ehrchain_fhir::ResourceType;
use ehrchain_types::{ConsentGrant, Digest, Payload, PublicKey};
use serde_json::{Value, json};
use std::sync::Arc;

// ---- Consent -------------------------------------------------------------------------------

pub(super) const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";

pub(super) fn consent_json<B: Blob>(state: &ApiState<B>, grant: &Grant, now_ms: u64) -> Value {
    let grantee = ehrchain_types::decode_public_key(grant.grantee).ok();
    let role = grantee.as_ref().and_then(|k| role_of(state, k));
    let actor = grantee
        .as_ref()
        .map(|k| reference_of(role.as_ref(), k))
        .unwrap_or_default();
    let active = grant.revoked_at_ms.is_none() && now_ms < grant.valid_until_ms;
    let mut actions = Vec::new();
    for action in [Action::Read, Action::Write] {
        if grant.allows_action(action) {
            actions.push(json!({"coding": [{"system": CONSENT_ACTION, "code": action.code()}]}));
        }
    }
    let mut provision = json!({
        "type": "permit",
        "period": {"start": instant(grant.valid_from_ms), "end": instant(grant.valid_until_ms)},
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": actor},
        }],
        "action": actions,
    });
    if !grant.purposes.is_empty() {
        provision["purpose"] = grant
            .purposes
            .iter()
            .map(|p| json!({"system": ACT_REASON, "code": p.code()}))
            .collect();
    }
    if !grant.types.is_empty() {
        provision["class"] = grant
            .types
            .iter()
            .filter_map(|t| ResourceType::from_code(*t))
            .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t.name()}))
            .collect();
    }
    json!({
        "resourceType": "Consent",
        "id": hex::encode(grant.id),
        "status": if active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", hex::encode(grant.patient))},
        "dateTime": instant(grant.valid_from_ms),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

/// The grant a Consent asks for.
pub(super) struct Asked {
    patient: [u8; 16],
    grantee: PublicKey,
    actions: u8,
    types: Vec<u8>,
    purposes: Vec<u8>,
    from_ms: u64,
    until_ms: u64,
}

pub(super) fn parse_consent(value: &Value, now: u64) -> Result<Asked> {
    if value["resourceType"] != "Consent" {
        return Err(invalid("the body is not a Consent"));
    }
    let patient = value["patient"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(id16)
        .ok_or_else(|| unprocessable("Consent.patient must reference Patient/{id}"))?;
    let provision = &value["provision"];
    let actors = provision["actor"].as_array().map_or(&[][..], Vec::as_slice);
    if actors.len() != 1 {
        return Err(unprocessable(
            "Consent.provision.actor must name exactly one grantee",
        ));
    }
    let grantee = actors[0]["reference"]["reference"]
        .as_str()
        .filter(|r| r.starts_with("Practitioner/") || r.starts_with("Organization/"))
        .and_then(key_of)
        .ok_or_else(|| {
            unprocessable(
                "Consent.provision.actor.reference must be Practitioner/{id} or Organization/{id}",
            )
        })?;
    let mut actions = 0u8;
    for code in codes(&provision["action"]) {
        actions |= match code.as_str() {
            "access" => 1,
            "correct" => 2,
            _ => {
                return Err(unprocessable(
                    "Consent.provision.action codes are access and correct",
                ));
            }
        };
    }
    if actions == 0 {
        actions = 1;
    }
    let mut purposes = Vec::new();
    for code in codes(&provision["purpose"]) {
        let purpose = Purpose::from_code(&code).ok_or_else(|| {
            unprocessable("Consent.provision.purpose: unsupported v3-ActReason code")
        })?;
        purposes.push(purpose as u8);
    }
    let mut types = Vec::new();
    for code in codes(&provision["class"]) {
        let kind = ResourceType::from_name(&code)
            .ok_or_else(|| unprocessable("Consent.provision.class: unsupported resource type"))?;
        types.push(kind.code());
    }
    let period = &provision["period"];
    let from_ms = match period["start"].as_str() {
        Some(text) => parse_time(text)
            .ok_or_else(|| unprocessable("Consent.provision.period.start is not a dateTime"))?,
        None => now,
    };
    let until_ms = match period["end"].as_str() {
        Some(text) => parse_time(text)
            .ok_or_else(|| unprocessable("Consent.provision.period.end is not a dateTime"))?,
        None => now + 365 * 86_400_000,
    };
    Ok(Asked {
        patient,
        grantee,
        actions,
        types,
        purposes,
        from_ms,
        until_ms,
    })
}

/// Wrap the data keys of the patient's covered records for the grantee, reading (and
/// recording) each as the patient. Needs the patient's key at this node (custodial).
pub(super) async fn build_share<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    asked: &Asked,
    grantee_key: EncryptionPublicKey,
) -> Result<Option<Share>> {
    let versions: Vec<RecordVersion> = state.chain.read(|s| {
        s.patient_records(&asked.patient)
            .into_iter()
            .flat_map(|r| s.versions(&r))
            // A tombstone (a deleted record's last version) has no content key to share.
            .filter(|v| !v.anchor.is_tombstone())
            .filter(|v| asked.types.is_empty() || asked.types.contains(&v.anchor.resource_type))
            .collect()
    });
    if versions.is_empty() || asked.actions & 1 == 0 {
        return Ok(None);
    }
    let mut records: Vec<[u8; 16]> = versions.iter().map(|v| v.anchor.record).collect();
    records.sort();
    records.dedup();
    let outcomes = record_reads(state, token, &records, Purpose::PatientRequest).await?;
    if let Some(Err(reason)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Err(denied(&reason));
    }
    let mut share = Share::default();
    for version in &versions {
        let hash: [u8; 32] = version
            .anchor
            .ciphertext_hash
            .as_ref()
            .try_into()
            .expect("32");
        let Some((_, wraps)) = state.store.get(&hash).await.map_err(unavailable)? else {
            continue;
        };
        let binding = Binding {
            record: version.anchor.record,
            version: version.anchor.version,
            patient: version.anchor.patient,
        };
        let patient_keys = gateway::held_keys(state, &token.identity, &asked.patient);
        let data_key = patient_keys.iter().find_map(|key| {
            let wrap = wraps.iter().find(|w| w.recipient == key.public())?;
            ehrchain_crypto::unwrap(wrap, key, &binding, &hash).ok()
        });
        let Some(data_key) = data_key else {
            return Err(forbidden(
                "this node does not hold the patient's key: grant with the patient's own client (ehrchain consent grant)",
            ));
        };
        let wrap = ehrchain_crypto::wrap(&data_key, &grantee_key, &binding, &hash)
            .map_err(|_| unprocessable("the grantee's encryption key is invalid"))?;
        share.entries.push((hash, wrap));
    }
    Ok(Some(share))
}

pub(super) async fn consent_create<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
    if value["status"].as_str() != Some("active") {
        return Err(unprocessable("a new Consent has status active"));
    }
    let asked = parse_consent(&value, now_ms())?;
    let grant = |id: [u8; 16], share_hash: [u8; 32]| {
        Payload::Grant(ConsentGrant {
            id,
            patient: asked.patient,
            grantee: asked.grantee.clone(),
            actions: asked.actions,
            types: asked.types.clone(),
            purposes: asked.purposes.clone(),
            valid_from_ms: asked.from_ms,
            valid_until_ms: asked.until_ms,
            share: Digest::from(share_hash),
        })
    };
    match role_of(&state, &token.identity) {
        Some(Role::Patient { patient } | Role::Guardian { patient })
            if patient == asked.patient => {}
        _ => {
            // Not the caller's to give: the chain refuses it and records the attempt on the
            // patient's trail (commit answers 403), sharing nothing.
            let tx = submit_as(
                &state,
                &token,
                grant(crate::ambient::random_bytes(), [0; 32]),
            )
            .await?;
            commit(&state, &tx).await?;
            return Err(forbidden(
                "only the patient or a guardian grants consent for the patient's records",
            ));
        }
    }
    let grantee_key = state
        .chain
        .read(|s| s.identity(&asked.grantee).map(|i| i.encryption_key))
        .map(EncryptionPublicKey)
        .ok_or_else(|| unprocessable("the grantee is not an enrolled clinician or member"))?;
    let share = build_share(&state, &token, &asked, grantee_key).await?;
    let (share_hash, staged) = match &share {
        Some(share) => {
            let bytes = share.encode();
            let hash = envelope_hash(&bytes);
            let staged = state.store.stage(&bytes, &[]).await.map_err(unavailable)?;
            (hash, Some(staged))
        }
        None => ([0u8; 32], None),
    };
    let id: [u8; 16] = crate::ambient::random_bytes();
    let tx = submit_staged(&state, &token, grant(id, share_hash), staged).await?;
    commit(&state, &tx).await?;
    let (grant, now) = state
        .chain
        .read(|s| (s.grant(&asked.patient, &id), s.time_ms()));
    let grant = grant.ok_or_else(|| not_found("the grant did not commit"))?;
    let body = consent_json(&state, &grant, now);
    let mut response = fhir_json(StatusCode::CREATED, &body);
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{}/fhir/Consent/{}",
        state.gateway.public_url,
        hex::encode(id)
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(super) fn find_grant<B: Blob>(state: &ApiState<B>, id: &str) -> Result<(Grant, u64)> {
    let id = id16(id).ok_or_else(|| not_found("no such Consent"))?;
    state
        .chain
        .read(|s| {
            s.all_grants()
                .find(|g| g.id == id)
                .cloned()
                .map(|g| (g, s.time_ms()))
        })
        .ok_or_else(|| not_found("no such Consent"))
}

/// Consents are visible to the patient, guardians, the grantee and auditors.
pub(super) fn may_see_consent<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    patient: &[u8; 16],
    grantee: Option<&[u8; 32]>,
) -> bool {
    match role_of(state, &token.identity) {
        Some(Role::Patient { patient: p } | Role::Guardian { patient: p }) => &p == patient,
        Some(Role::Auditor) => true,
        Some(_) => grantee.is_some_and(|g| g.as_slice() == token.identity.as_ref()),
        None => false,
    }
}

pub(super) async fn consent_read<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (grant, now) = find_grant(&state, &id)?;
    if !may_see_consent(&state, &token, &grant.patient, Some(&grant.grantee)) {
        return Err(forbidden("this Consent is not yours to see"));
    }
    Ok(fhir_json(
        StatusCode::OK,
        &consent_json(&state, &grant, now),
    ))
}

pub(super) async fn consent_update<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let bytes = body_bytes(body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the body is not JSON"))?;
    // An update names its resource twice, in the URL and in the body: both must agree
    // (FHIR R4 http.html#update), or the request is refused before anything is changed.
    if value["resourceType"] != "Consent" {
        return Err(invalid("the body must be a Consent"));
    }
    if value["id"].as_str() != Some(id.as_str()) {
        return Err(invalid("the resource id must be present and match the URL"));
    }
    let (grant, _) = find_grant(&state, &id)?;
    match value["status"].as_str() {
        Some("inactive" | "rejected") => {}
        Some("active") if grant.revoked_at_ms.is_none() => {
            return Err(unprocessable(
                "a grant's terms do not change; create a new Consent and set this one inactive",
            ));
        }
        _ => return Err(unprocessable("set status to inactive to revoke a Consent")),
    }
    if grant.revoked_at_ms.is_none() {
        let tx = submit_as(
            &state,
            &token,
            Payload::Revoke {
                patient: grant.patient,
                grant: grant.id,
            },
        )
        .await?;
        commit(&state, &tx).await?;
    }
    let (grant, now) = find_grant(&state, &id)?;
    Ok(fhir_json(
        StatusCode::OK,
        &consent_json(&state, &grant, now),
    ))
}

pub(super) async fn consent_search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let (pairs, ignored) = checked(query_pairs(query)?, &["patient"], &[], &headers)?;
    let patient = match (patient_param(&pairs), role_of(&state, &token.identity)) {
        (Some(p), _) => id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?,
        (None, Some(Role::Patient { patient } | Role::Guardian { patient })) => patient,
        _ => return Err(invalid("a Consent search names its patient")),
    };
    let (grants, now) = state.chain.read(|s| (s.grants(&patient), s.time_ms()));
    let visible: Vec<&Grant> = grants
        .iter()
        .filter(|g| may_see_consent(&state, &token, &patient, Some(&g.grantee)))
        .collect();
    let base = &state.gateway.public_url;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": visible.len(),
        "link": [{"relation": "self", "url": format!("{base}/fhir/Consent?patient={}", hex::encode(patient))}],
        "entry": visible.iter().map(|g| json!({
            "fullUrl": format!("{base}/fhir/Consent/{}", hex::encode(g.id)),
            "resource": consent_json(&state, g, now),
            "search": {"mode": "match"},
        })).chain(ignored.map(outcome_json)).collect::<Vec<_>>(),
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}
