//! Search: by patient, id, dates, codes and categories, over what the caller may read; paging links
//! carry no more than the caller may see.

use super::{
    common::{Entry, Result, SEARCH_READS_MAX, id16, invalid, role_of},
    params::{
        PAGING, checked, count_param, date_matches, outcome_entry, patient_param, query_pairs,
        searchset,
    },
    read::{denied, hash_of, open_held, present, purpose_for, record_reads, resource_type, reveal},
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
    search_query(&state, &headers, &kind, query).await
}

/// The result parameters a search takes beside paging (see [`Order`]).
const RESULTS: [&str; 3] = ["_sort", "_summary", "_total"];

/// `GET /fhir/Patient/{id}/{kind}`: search in the patient's compartment, the same search as
/// `GET /fhir/{kind}?patient={id}` (the patient goes in the path, so not in the query too).
pub(super) async fn compartment<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    patient: String,
    kind: &str,
    query: Option<String>,
) -> Result<Response> {
    let pairs = query_pairs(query)?;
    if pairs.iter().any(|(k, _)| k == "patient" || k == "subject") {
        return Err(invalid(
            "a compartment search names its patient in the path; leave out patient= and subject=",
        ));
    }
    let pairs: Vec<(String, String)> = std::iter::once(("patient".to_string(), patient))
        .chain(pairs)
        .collect();
    let query =
        serde_urlencoded::to_string(&pairs).map_err(|_| invalid("malformed query string"))?;
    search_query(state, headers, kind, Some(query)).await
}

/// `POST /fhir/{kind}/_search`: the search whose parameters come as a form
/// (`application/x-www-form-urlencoded`), with any in the URL.
pub(super) async fn search_form<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    kind: &str,
    query: Option<String>,
    body: axum::body::Body,
) -> Result<Response> {
    let form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(crate::ApiError::fhir(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "POST _search takes its parameters as application/x-www-form-urlencoded",
        ));
    }
    let bytes = super::common::body_bytes(body).await?;
    let body = std::str::from_utf8(&bytes)
        .map_err(|_| invalid("the search parameters are not UTF-8"))?
        .trim();
    let query = [query.as_deref().unwrap_or(""), body]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    search_query(state, headers, kind, Some(query)).await
}

async fn search_query<B: Blob>(
    state: &ApiState<B>,
    headers: &HeaderMap,
    kind: &str,
    query: Option<String>,
) -> Result<Response> {
    let token = caller(state, headers)?;
    let kind = resource_type(kind)?;
    let params = search_params(kind);
    let names: Vec<&str> = params
        .iter()
        .map(|p| p.name)
        .chain(PAGING)
        .chain(RESULTS)
        .collect();
    let (pairs, ignored) = checked(
        query_pairs(query)?,
        &names,
        &["date", "_lastUpdated"],
        headers,
    )?;
    let (count, offset) = count_param(&pairs)?;
    // Result parameters are checked before anything is looked up, whatever matches.
    Order::of(&pairs, kind)?;
    let (total, page) = find(state, &token, kind, &pairs, (count, offset)).await?;
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
    let purpose = purpose_for(role.as_ref());
    let order = Order::of(pairs, kind)?;
    select(
        state,
        token,
        candidates,
        &content,
        &order,
        purpose,
        (count, offset),
    )
    .await
}

/// How a search's results are ordered and what it answers (`_sort`, `_summary`, `_total`).
pub(super) struct Order {
    /// Sort keys in order, each with whether it descends; empty: newest first.
    keys: Vec<(SortKey, bool)>,
    /// `_summary=count`: the total only, nothing read.
    count_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SortKey {
    /// The clinical date (from the search index).
    Date,
    LastUpdated,
    Id,
}

impl Order {
    fn of(pairs: &[(String, String)], kind: ResourceType) -> Result<Self> {
        let mut keys = Vec::new();
        let dated = search_params(kind).iter().any(|p| p.name == "date");
        for (_, value) in pairs.iter().filter(|(k, _)| k == "_sort") {
            for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let (descending, name) = match key.strip_prefix('-') {
                    Some(name) => (true, name),
                    None => (false, key),
                };
                let key = match name {
                    "date" if dated => SortKey::Date,
                    "_lastUpdated" => SortKey::LastUpdated,
                    "_id" => SortKey::Id,
                    _ => {
                        return Err(invalid(&format!(
                            "_sort takes {}_lastUpdated and _id (each with - for descending)",
                            if dated { "date, " } else { "" }
                        )));
                    }
                };
                keys.push((key, descending));
            }
        }
        let count_only = match pairs.iter().rfind(|(k, _)| k == "_summary") {
            None => false,
            Some((_, v)) if v == "count" => true,
            Some((_, v)) if v == "false" => false,
            Some(_) => return Err(invalid("_summary takes count or false")),
        };
        if let Some((_, v)) = pairs.iter().rfind(|(k, _)| k == "_total")
            && !matches!(v.as_str(), "none" | "estimate" | "accurate")
        {
            return Err(invalid("_total takes none, estimate or accurate"));
        }
        Ok(Self { keys, count_only })
    }

    fn needs_index(&self) -> bool {
        self.keys.iter().any(|(k, _)| *k == SortKey::Date)
    }

    /// Compare two hits by the sort keys, then newest first (a total order).
    fn compare(
        &self,
        (a, a_date): (&RecordVersion, Option<&str>),
        (b, b_date): (&RecordVersion, Option<&str>),
    ) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        for (key, descending) in &self.keys {
            let ordering = match key {
                // A hit without a date sorts last either way.
                SortKey::Date => match (a_date, b_date) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => return Ordering::Less,
                    (None, Some(_)) => return Ordering::Greater,
                    (None, None) => Ordering::Equal,
                },
                SortKey::LastUpdated => a.anchor.timestamp_ms.cmp(&b.anchor.timestamp_ms),
                SortKey::Id => a.anchor.record.cmp(&b.anchor.record),
            };
            let ordering = if *descending {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering.is_ne() {
                return ordering;
            }
        }
        (b.anchor.timestamp_ms, b.anchor.record).cmp(&(a.anchor.timestamp_ms, a.anchor.record))
    }
}

/// One search hit: the version, its indexed fields (when the search needed them) and the
/// resource as served (when it was read already, to filter it).
type Hit = (
    RecordVersion,
    Option<Arc<super::index::Fields>>,
    Option<Box<RawValue>>,
);

/// Answer a search: the candidates the searcher may read now (the contract's rule on this
/// node's final state), filtered by content parameters and sorted by date through the node's
/// search index (`index`); only the page of hits is read, each read recorded, then disclosed,
/// so `total` and the paging links count only what the searcher may read. No cap; a
/// version no key here opens (its shared keys still on their way, or one the patient's home
/// node must release) is read and filtered as before, at most [`SEARCH_READS_MAX`] of them.
async fn select<B: Blob>(
    state: &ApiState<B>,
    token: &Token,
    candidates: Vec<RecordVersion>,
    content: &[(&str, &str)],
    order: &Order,
    purpose: ehrchain_contracts::consent::Purpose,
    (count, offset): (usize, usize),
) -> Result<(usize, Vec<(RecordVersion, Box<RawValue>)>)> {
    let may_read: std::collections::BTreeSet<[u8; 16]> = state.chain.read(|s| {
        let Some(identity) = s
            .identity(&token.identity)
            .filter(|_| s.retired(&token.identity).is_none())
        else {
            return Default::default();
        };
        let now = s.time_ms();
        candidates
            .iter()
            .map(|v| v.anchor.record)
            .filter(|record| {
                ehrchain_contracts::access::decide_read(
                    s,
                    &token.identity,
                    &identity,
                    record,
                    purpose,
                    now,
                )
                .is_ok_and(|(_, _, outcome)| outcome.allowed())
            })
            .collect()
    });
    if may_read.is_empty() {
        // Nothing here the searcher may read: the refusal is recorded (on a bounded sample)
        // and answered as any refused read is; no candidates, an empty result.
        let sample: Vec<[u8; 16]> = candidates
            .iter()
            .take(SEARCH_READS_MAX)
            .map(|v| v.anchor.record)
            .collect();
        let outcomes = record_reads(state, token, &sample, purpose).await?;
        if let Some(Err(reason)) = outcomes.first()
            && outcomes.iter().all(|o| o.is_err())
        {
            return Err(denied(reason));
        }
        if !outcomes.is_empty() {
            return Err(crate::ApiError::fhir(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "consent changed during the search; retry",
            ));
        }
        return Ok((0, Vec::new()));
    }
    let index = &state.gateway.search_index;
    let use_index = !content.is_empty() || order.needs_index();
    let mut hits: Vec<Hit> = Vec::new();
    let mut unindexed = Vec::new();
    for version in candidates
        .into_iter()
        .filter(|v| may_read.contains(&v.anchor.record))
    {
        if !use_index {
            hits.push((version, None, None));
            continue;
        }
        let hash = hash_of(&version);
        let fields = match index.get(&hash) {
            Some(fields) => Some(fields),
            None => open_held(state, &token.identity, &version)
                .await?
                .map(|plain| indexed(state, &version, &plain)),
        };
        match fields {
            Some(fields) if fields.matches(content) => hits.push((version, Some(fields), None)),
            Some(_) => {}
            None => unindexed.push(version),
        }
    }
    if unindexed.len() > SEARCH_READS_MAX {
        return Err(invalid(&format!(
            "more than {SEARCH_READS_MAX} records whose keys are still reaching this node; retry shortly, or narrow the search (_lastUpdated, _id)"
        )));
    }
    if !unindexed.is_empty() {
        let records: Vec<[u8; 16]> = unindexed.iter().map(|v| v.anchor.record).collect();
        let outcomes = record_reads(state, token, &records, purpose).await?;
        for (version, outcome) in unindexed.iter().zip(&outcomes) {
            if outcome.is_err() {
                continue;
            }
            let plain = reveal(state, &token.identity, version).await?;
            let fields = indexed(state, version, &plain);
            if fields.matches(content) {
                hits.push((
                    version.clone(),
                    Some(fields),
                    Some(present(&plain, version)?),
                ));
            }
        }
    }
    // One order for every kind of hit: the `_sort` keys, then newest first.
    hits.sort_by(|(a, a_fields, _), (b, b_fields, _)| {
        order.compare(
            (a, a_fields.as_ref().and_then(|f| f.date())),
            (b, b_fields.as_ref().and_then(|f| f.date())),
        )
    });
    let total = hits.len();
    if order.count_only {
        return Ok((total, Vec::new()));
    }
    let page: Vec<_> = hits.into_iter().skip(offset).take(count).collect();
    // The page's hits not read yet are read now: each recorded on the trail, then disclosed.
    let to_read: Vec<[u8; 16]> = page
        .iter()
        .filter(|(_, _, served)| served.is_none())
        .map(|(v, _, _)| v.anchor.record)
        .collect();
    let mut outcomes = record_reads(state, token, &to_read, purpose)
        .await?
        .into_iter();
    let mut out = Vec::with_capacity(page.len());
    for (version, _, served) in page {
        match served {
            Some(resource) => out.push((version, resource)),
            None => {
                if outcomes.next().is_some_and(|o| o.is_ok()) {
                    let plain = reveal(state, &token.identity, &version).await?;
                    let resource = present(&plain, &version)?;
                    out.push((version, resource));
                }
            }
        }
    }
    Ok((total, out))
}

/// Index an opened version: its search fields, kept for the next search. Stored records
/// passed validation when written; one that no longer parses matches no content filter.
fn indexed<B: Blob>(
    state: &ApiState<B>,
    version: &RecordVersion,
    plain: &[u8],
) -> Arc<super::index::Fields> {
    let fields = serde_json::from_slice(plain)
        .ok()
        .and_then(|value| ehrchain_fhir::validate_value(value).ok())
        .map(|resource| super::index::Fields::of(&resource))
        .unwrap_or_else(super::index::Fields::none);
    let fields = Arc::new(fields);
    state
        .gateway
        .search_index
        .insert(hash_of(version), version.anchor.patient, fields.clone());
    fields
}
