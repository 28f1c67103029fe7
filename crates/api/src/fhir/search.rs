//! Search: by patient, id, dates, codes and categories, over what the caller may read; paging links
//! carry no more than the caller may see.

use super::{
    common::{Result, SEARCH_READS_MAX, id16, invalid, role_of},
    params::{count_param, date_matches, patient_param, query_pairs, searchset, token_matches},
    read::{denied, present, purpose_for, record_reads, resource_type, reveal},
    time::instant,
};
use crate::{ApiState, session::caller};
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
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) async fn search<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let token = caller(&state, &headers)?;
    let kind = resource_type(&kind)?;
    let pairs = query_pairs(query)?;
    let (count, offset) = count_param(&pairs)?;
    let role = role_of(&state, &token.identity);
    let patient = match (patient_param(&pairs), &role) {
        (Some(p), _) => id16(p).ok_or_else(|| invalid("patient must be a Patient id"))?,
        (None, Some(Role::Patient { patient } | Role::Guardian { patient })) => *patient,
        (None, _) if kind == ResourceType::Patient => pairs
            .iter()
            .find(|(k, _)| k == "_id")
            .and_then(|(_, v)| id16(v))
            .ok_or_else(|| invalid("search Patient by _id"))?,
        (None, _) => return Err(invalid("a search names its patient (patient= or subject=)")),
    };
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
            .filter(|v| v.anchor.resource_type == kind.code())
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
        .filter(|(k, _)| matches!(k.as_str(), "code" | "category" | "date"))
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
    let outcomes = record_reads(&state, &token, &records, purpose_for(role.as_ref())).await?;
    if !outcomes.is_empty() && outcomes.iter().all(|o| o.is_err()) {
        let reason = outcomes[0].clone().err().unwrap_or_default();
        return Err(denied(&reason));
    }
    let mut matches = Vec::new();
    for (version, outcome) in to_read.iter().zip(&outcomes) {
        if outcome.is_err() {
            continue;
        }
        let plain = reveal(&state, &token.identity, version).await?;
        if !content.is_empty() {
            let Ok(resource) = ehrchain_fhir::validate(&plain) else {
                continue;
            };
            let keep = content.iter().all(|(k, v)| match *k {
                "code" => token_matches(v, &resource.codes),
                "category" => token_matches(v, &resource.categories),
                _ => date_matches(v, resource.date.as_deref()),
            });
            if !keep {
                continue;
            }
        }
        matches.push(present(&plain, version)?);
    }
    let (total, page): (usize, Vec<Value>) = match paged_already {
        Some(total) => (total, matches),
        None => (
            matches.len(),
            matches.into_iter().skip(offset).take(count).collect(),
        ),
    };
    let base = &state.gateway.public_url;
    let entries: Vec<Value> = page
        .into_iter()
        .map(|resource| {
            json!({
                "fullUrl": format!("{base}/fhir/{}/{}", kind.name(), resource["id"].as_str().unwrap_or("")),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
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
