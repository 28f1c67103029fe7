//! Search parameters and paging shared by every search-like interaction: the query string, date and
//! token matching, `_count`/`_offset`, and paging links that carry only what was asked.

use super::common::{PAGE_DEFAULT, PAGE_MAX, Result, fhir_json, invalid};
use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

pub(super) fn query_pairs(query: Option<String>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| invalid("malformed query string"))
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
    entries: Vec<Value>,
) -> Response {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": bundle_links(base, path, pairs, offset, count, total),
        "entry": entries,
    });
    fhir_json(StatusCode::OK, &bundle)
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
}
