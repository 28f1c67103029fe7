//! Search: by patient, id, dates, codes and categories, over what the caller may read; paging links
//! carry no more than the caller may see.

use super::{
    common::{Entry, Result, SEARCH_READS_MAX, id16, invalid, role_of},
    params::{
        PAGING, checked, count_param, date_matches, outcome_entry, patient_param, query_pairs,
        searchset, token_matches,
    },
    read::{denied, present, purpose_for, record_reads, resource_type, reveal},
    time::instant,
};
use crate::{ApiState, session::Token, session::caller};
use axum::{
    extract::{Path, RawQuery, State},
    http::HeaderMap,
    response::Response,
};
use commonware_runtime::Blob;
use ehrchain_contracts::{
    facts::{RecordVersion, Role},
    state::Reader as _,
};
use ehrchain_fhir::ResourceType;
use serde_json::{json, value::RawValue};
use std::sync::Arc;

/// One search parameter of a type: its R4 name, type and `definition`. The names are the
/// ones the search below filters on (`patient`/`subject`, `_id`, `_lastUpdated`, `date`,
/// `code`, `category`, `identifier`), claimed only for the types R4 defines them on.
pub(super) struct Param {
    pub name: &'static str,
    pub kind: &'static str,
    pub definition: String,
}

/// The search parameters `kind` serves, each under its R4 name for that type and only where
/// R4 defines it (`/fhir/metadata` lists exactly these; any other name is refused).
pub(super) fn search_params(kind: ResourceType) -> Vec<Param> {
    use ResourceType as T;
    let base = "http://hl7.org/fhir/SearchParameter";
    let param = |name, kind, definition: String| Param {
        name,
        kind,
        definition,
    };
    let mut params = vec![
        param("_id", "token", format!("{base}/Resource-id")),
        param(
            "_lastUpdated",
            "date",
            format!("{base}/Resource-lastUpdated"),
        ),
    ];
    let name = kind.name();
    // Patient search is by `_id` only (a search is always within one patient's records).
    if !matches!(kind, T::Patient | T::Binary) {
        let identifier = if kind == T::Immunization {
            format!("{base}/Immunization-identifier")
        } else {
            format!("{base}/clinical-identifier")
        };
        params.push(param("identifier", "token", identifier));
    }
    if !matches!(kind, T::Patient | T::Binary) {
        let patient = if kind == T::Immunization {
            format!("{base}/Immunization-patient")
        } else {
            format!("{base}/clinical-patient")
        };
        params.push(param("patient", "reference", patient));
    }
    if !matches!(
        kind,
        T::Patient | T::Binary | T::AllergyIntolerance | T::Immunization
    ) {
        params.push(param(
            "subject",
            "reference",
            format!("{base}/{name}-subject"),
        ));
    }
    match kind {
        T::Observation
        | T::DiagnosticReport
        | T::Procedure
        | T::Encounter
        | T::Immunization
        | T::AllergyIntolerance => {
            params.push(param("date", "date", format!("{base}/clinical-date")));
        }
        T::DocumentReference => {
            params.push(param(
                "date",
                "date",
                format!("{base}/DocumentReference-date"),
            ));
        }
        _ => {}
    }
    if matches!(
        kind,
        T::Observation
            | T::Condition
            | T::AllergyIntolerance
            | T::Procedure
            | T::DiagnosticReport
            | T::MedicationRequest
    ) {
        params.push(param("code", "token", format!("{base}/clinical-code")));
    }
    if matches!(
        kind,
        T::Observation
            | T::Condition
            | T::DiagnosticReport
            | T::DocumentReference
            | T::MedicationRequest
            | T::Procedure
    ) {
        params.push(param(
            "category",
            "token",
            format!("{base}/{name}-category"),
        ));
    }
    params
}

pub(super) async fn search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let params = search_params(kind);
    let names: Vec<&str> = params.iter().map(|p| p.name).chain(PAGING).collect();
    let (pairs, ignored) = checked(
        query_pairs(query)?,
        &names,
        &["date", "_lastUpdated"],
        &headers,
    )?;
    let (count, offset) = count_param(&pairs)?;
    let (total, page) = find(&state, &token, kind, &pairs, (count, offset)).await?;
    let base = &state.gateway.public_url;
    let entries: Vec<Entry> = page
        .into_iter()
        .map(|(version, resource)| Entry {
            fields: json!({
                "fullUrl": format!("{base}/fhir/{}/{}", kind.name(), hex::encode(version.anchor.record)),
                "search": {"mode": "match"},
            }),
            resource: Some(resource),
        })
        .chain(ignored.map(outcome_entry))
        .collect();
    Ok(searchset(
        base,
        kind.name(),
        &pairs,
        (offset, count),
        total,
        entries,
    ))
}

/// The records of `kind` that `pairs` (already `checked`) select and the caller may read: the
/// total and the page from `offset`, each read recorded, with each resource as served.
pub(super) async fn find<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    kind: ResourceType,
    pairs: &[(String, String)],
    (count, offset): (usize, usize),
) -> Result<(usize, Vec<(RecordVersion, Box<RawValue>)>)> {
    let role = role_of(state, &token.identity);
    let patient = match (patient_param(pairs), &role) {
        (Some(p), _) => id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?,
        (None, Some(Role::Patient { patient } | Role::Guardian { patient })) => *patient,
        // A clinician's SMART login with a patient picked: that patient's records.
        (None, _) if kind != ResourceType::Patient && token.patient.is_some() => {
            token.patient.expect("checked")
        }
        (None, _) if kind == ResourceType::Patient => pairs
            .iter()
            .find(|(k, _)| k == "_id")
            .and_then(|(_, v)| id16(v))
            .ok_or_else(|| invalid("search Patient by _id"))?,
        // `_id` alone (Binary has no patient parameter in R4): the patient of the records it
        // names. Unknown ids match nothing; ids of two patients need `patient=`.
        (None, _) if pairs.iter().any(|(k, _)| k == "_id") => {
            let patients: std::collections::BTreeSet<[u8; 16]> = state.chain.read(|s| {
                pairs
                    .iter()
                    .filter(|(k, _)| k == "_id")
                    .flat_map(|(_, v)| v.split(',').filter_map(id16))
                    .filter_map(|id| s.latest(&id).map(|v| v.anchor.patient))
                    .collect()
            });
            match patients.len() {
                0 => return Ok((0, Vec::new())),
                1 => *patients.first().expect("one"),
                _ => {
                    return Err(invalid(
                        "these _id values name records of more than one patient; add patient=",
                    ));
                }
            }
        }
        (None, _) => return Err(invalid("a search names its patient (patient= or subject=)")),
    };
    token.within(kind.name(), crate::scopes::SEARCH, &patient)?;
    let ids: Vec<[u8; 16]> = pairs
        .iter()
        .filter(|(k, _)| k == "_id")
        .flat_map(|(_, v)| v.split(',').filter_map(id16))
        .collect();
    let updated: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "_lastUpdated")
        .map(|(_, v)| v.as_str())
        .collect();
    // Candidates from on-chain metadata alone: the patient's records of this type.
    let mut candidates: Vec<RecordVersion> = state.chain.read(|s| {
        if s.patient(&patient)
            .is_none_or(|p| p.erased_height.is_some())
        {
            return Vec::new();
        }
        s.patient_records(&patient)
            .into_iter()
            .filter(|r| ids.is_empty() || ids.contains(r))
            .filter_map(|r| s.versions(&r).pop())
            .filter(|v| v.anchor.resource_type == kind.code() && !v.anchor.is_tombstone())
            .filter(|v| {
                updated
                    .iter()
                    .all(|p| date_matches(p, Some(&instant(v.anchor.timestamp_ms))))
            })
            .collect()
    });
    candidates.sort_by_key(|v| std::cmp::Reverse((v.anchor.timestamp_ms, v.anchor.record)));
    let content: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "code" | "category" | "date" | "identifier"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Without content filters only the page is read; with them, everything (bounded) is.
    let (to_read, paged_already) = if content.is_empty() {
        let total = candidates.len();
        (
            candidates
                .into_iter()
                .skip(offset)
                .take(count)
                .collect::<Vec<_>>(),
            Some(total),
        )
    } else {
        if candidates.len() > SEARCH_READS_MAX {
            return Err(invalid(&format!(
                "more than {SEARCH_READS_MAX} records to filter; narrow the search (_lastUpdated, _id)"
            )));
        }
        (candidates, None)
    };
    let records: Vec<[u8; 16]> = to_read.iter().map(|v| v.anchor.record).collect();
    let outcomes = record_reads(state, token, &records, purpose_for(role.as_ref())).await?;
    if !outcomes.is_empty() && outcomes.iter().all(|o| o.is_err()) {
        let reason = outcomes[0].clone().err().unwrap_or_default();
        return Err(denied(&reason));
    }
    let mut matches = Vec::new();
    for (version, outcome) in to_read.iter().zip(&outcomes) {
        if outcome.is_err() {
            continue;
        }
        let plain = reveal(state, &token.identity, version).await?;
        if !content.is_empty() {
            // Stored records passed validation when written: only their index is needed.
            let Some(resource) = serde_json::from_slice(&plain)
                .ok()
                .and_then(|value| ehrchain_fhir::validate_value(value).ok())
            else {
                continue;
            };
            let keep = content.iter().all(|(k, v)| match *k {
                "code" => token_matches(v, &resource.codes),
                "identifier" => token_matches(v, &resource.identifiers),
                "category" => token_matches(v, &resource.categories),
                _ => date_matches(v, resource.date.as_deref()),
            });
            if !keep {
                continue;
            }
        }
        matches.push((version.clone(), present(&plain, version)?));
    }
    Ok(match paged_already {
        Some(total) => (total, matches),
        None => (
            matches.len(),
            matches.into_iter().skip(offset).take(count).collect(),
        ),
    })
}
