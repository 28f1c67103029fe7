//! Search parameters and paging shared by every search-like interaction: the query string, date and
//! token matching, `_count`/`_offset`, and paging links that carry only what was asked.

use super::common::{Entry, PAGE_DEFAULT, PAGE_MAX, Result, fhir_bundle, invalid};
use crate::ApiError;
use axum::{
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

pub(super) fn query_pairs(query: Option<String>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| invalid("malformed query string"))
}

/// A query string's parameters, in order.
pub(super) type Pairs = Vec<(String, String)>;

/// The one result parameter every FHIR search accepts beside its own (the format, checked by
/// the router's negotiation).
const RESULT_PARAMS: &[&str] = &["_format"];
/// The paging parameters of a paged search: `_count` and the cursor `_offset` its links carry.
pub(super) const PAGING: [&str; 2] = ["_count", "_offset"];

/// Whether `value` is a date search value this server compares: an optional prefix, then
/// `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or a dateTime.
fn is_date_value(value: &str) -> bool {
    let date = match value.get(..2) {
        Some("eq" | "ne" | "ge" | "gt" | "le" | "lt") => &value[2..],
        _ => value,
    };
    let (day, time) = date.split_once('T').unwrap_or((date, ""));
    let parts: Vec<&str> = day.split('-').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let in_range =
        |s: &str, lo: u32, hi: u32| s.parse::<u32>().is_ok_and(|v| (lo..=hi).contains(&v));
    let day_ok = match parts.as_slice() {
        [y] => digits(y, 4),
        [y, m] => digits(y, 4) && digits(m, 2) && in_range(m, 1, 12),
        [y, m, d] => {
            digits(y, 4) && digits(m, 2) && in_range(m, 1, 12) && digits(d, 2) && in_range(d, 1, 31)
        }
        _ => false,
    };
    day_ok
        && (time.is_empty()
            || (parts.len() == 3
                && time.len() >= 5
                && time[..2].parse::<u32>().is_ok_and(|h| h < 24)
                && time.as_bytes()[2] == b':'
                && time[3..5].parse::<u32>().is_ok_and(|m| m < 60)))
}

/// The preferences of a request's `Prefer` headers (RFC 7240), each `name=value` as written.
pub(super) fn preferences(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(str::trim)
}

/// Refuse (400, naming it) any parameter, modifier or result parameter this search does not
/// serve, and any malformed date value; under `Prefer: handling=lenient` drop them instead
/// and say so in an `OperationOutcome` for the Bundle. `supported` names this search's own
/// parameters; `dates` those of them that take dates. Nothing is ever ignored in silence.
pub(super) fn checked(
    pairs: Pairs,
    supported: &[&str],
    dates: &[&str],
    headers: &HeaderMap,
) -> Result<(Pairs, Option<Value>)> {
    let lenient = preferences(headers).any(|p| p.eq_ignore_ascii_case("handling=lenient"));
    let mut kept = Vec::with_capacity(pairs.len());
    let mut ignored = Vec::new();
    for (name, value) in pairs {
        let problem =
            if !supported.contains(&name.as_str()) && !RESULT_PARAMS.contains(&name.as_str()) {
                Some(match name.split_once(':') {
                    Some((base, modifier)) if supported.contains(&base) => {
                        format!("the modifier :{modifier} of {base} is not supported")
                    }
                    _ => format!("the search parameter {name} is not supported"),
                })
            } else if dates.contains(&name.as_str()) && !value.split(',').all(is_date_value) {
                Some(format!("{name} is not a valid date search value"))
            } else {
                None
            };
        match problem {
            None => kept.push((name, value)),
            Some(problem) if lenient => ignored.push(problem),
            Some(problem) => {
                return Err(ApiError::fhir(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    &format!("{problem}; see /fhir/metadata (or send Prefer: handling=lenient)"),
                ));
            }
        }
    }
    let outcome = (!ignored.is_empty()).then(|| {
        json!({
            "resourceType": "OperationOutcome",
            "issue": ignored.iter().map(|d| json!({
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": format!("{d}; ignored (Prefer: handling=lenient)"),
            })).collect::<Vec<_>>(),
        })
    });
    Ok((kept, outcome))
}

/// The Bundle entry that tells a lenient search what it ignored, as JSON.
pub(super) fn outcome_json(outcome: Value) -> Value {
    json!({"resource": outcome, "search": {"mode": "outcome"}})
}

/// [`outcome_json`] as an [`Entry`].
pub(super) fn outcome_entry(outcome: Value) -> Entry {
    Entry {
        fields: outcome_json(outcome),
        resource: None,
    }
}

/// A date comparison: `ge2024-01-01` and friends; `None` for a malformed one.
pub(super) fn date_matches(param: &str, value: Option<&str>) -> bool {
    let (op, date) = match param.get(..2) {
        Some(p @ ("eq" | "ne" | "ge" | "gt" | "le" | "lt")) => (p, &param[2..]),
        _ => ("eq", param),
    };
    let Some(value) = value else { return false };
    let n = date.len().min(value.len());
    let (v, d) = (&value[..n], &date[..n]);
    match op {
        "eq" => v == d,
        "ne" => v != d,
        "ge" => v >= d,
        "gt" => v > d,
        "le" => v <= d,
        _ => v < d,
    }
}

pub(super) fn token_matches(param: &str, codes: &[String]) -> bool {
    param.split(',').any(|wanted| {
        codes.iter().any(|code| {
            if wanted.contains('|') {
                code == wanted
            } else {
                code.rsplit('|').next() == Some(wanted)
            }
        })
    })
}

pub(super) fn patient_param(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(k, _)| k == "patient" || k == "subject")
        .map(|(_, v)| v.strip_prefix("Patient/").unwrap_or(v))
}

pub(super) fn count_param(pairs: &[(String, String)]) -> Result<(usize, usize)> {
    let mut count = PAGE_DEFAULT;
    let mut offset = 0;
    for (k, v) in pairs {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| invalid("_count must be a number"))?
                    .min(PAGE_MAX)
            }
            "_offset" => offset = v.parse().map_err(|_| invalid("_offset must be a number"))?,
            _ => {}
        }
    }
    Ok((count, offset))
}

pub(super) fn bundle_links(
    base: &str,
    path: &str,
    pairs: &[(String, String)],
    offset: usize,
    count: usize,
    total: usize,
) -> Vec<Value> {
    let keep: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_offset" && k != "_count")
        .cloned()
        .collect();
    let url = |offset: usize| {
        let mut pairs = keep.clone();
        pairs.push(("_count".into(), count.to_string()));
        pairs.push(("_offset".into(), offset.to_string()));
        format!(
            "{base}/fhir/{path}?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let mut links = vec![json!({"relation": "self", "url": url(offset)})];
    if offset + count < total {
        links.push(json!({"relation": "next", "url": url(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": url(offset.saturating_sub(count))}));
    }
    links
}

/// One page of search results as a `searchset` Bundle: its total and the paging links of
/// `path` (both only over what the caller may see).
pub(super) fn searchset(
    base: &str,
    path: &str,
    pairs: &[(String, String)],
    (offset, count): (usize, usize),
    total: usize,
    entries: Vec<Entry>,
) -> Response {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": bundle_links(base, path, pairs, offset, count, total),
    });
    fhir_bundle(StatusCode::OK, &bundle, &entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_comparisons() {
        assert!(date_matches("ge2024-01-01", Some("2024-03-02T10:00:00Z")));
        assert!(!date_matches("lt2024-01-01", Some("2024-03-02")));
        assert!(date_matches("2024-03", Some("2024-03-02")));
        assert!(!date_matches("ge2024", None));
        let codes = vec!["http://loinc.org|8867-4".to_string()];
        assert!(token_matches("8867-4", &codes));
        assert!(token_matches("http://loinc.org|8867-4", &codes));
        assert!(!token_matches("http://snomed.info/sct|8867-4", &codes));
        assert!(token_matches("x,8867-4", &codes));
    }

    #[test]
    fn unsupported_parameters_are_refused_or_reported_never_dropped() {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let strict = HeaderMap::new();
        let mut lenient = HeaderMap::new();
        lenient.insert("prefer", "handling=lenient".parse().unwrap());
        let supported = ["patient", "date", "_count"];
        for bad in [
            ("clinical-status", "resolved"),
            ("_sort", "date"),
            ("patient:missing", "true"),
            ("date", "2026-13-45"),
            ("date", "yesterday"),
        ] {
            let refused = checked(pairs(&[bad]), &supported, &["date"], &strict).unwrap_err();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad:?}");
            let (kept, outcome) = checked(
                pairs(&[("patient", "p"), bad]),
                &supported,
                &["date"],
                &lenient,
            )
            .unwrap();
            assert_eq!(kept, pairs(&[("patient", "p")]));
            assert!(outcome.is_some(), "{bad:?}");
        }
        let good = pairs(&[("patient", "p"), ("date", "ge2024-01"), ("_count", "5")]);
        assert_eq!(
            checked(good.clone(), &supported, &["date"], &strict).unwrap(),
            (good, None)
        );
        assert!(is_date_value("2024-03-02T10:00:00Z"));
        assert!(!is_date_value("2024-03-02T25:00"));
    }
}
