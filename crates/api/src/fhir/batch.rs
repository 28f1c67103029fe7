//! `batch` Bundles: every entry is its own request, answered on its own.
//!
//! Each entry goes through this node's FHIR router as a request of the caller (their bearer
//! token, the entry's method, URL and `ifMatch`/`ifNoneMatch`/`ifNoneExist` as headers), so an
//! entry is decided, recorded and answered exactly as the same request sent alone would be:
//! reads and searches included. One entry's failure is that entry's `response.outcome` and
//! touches no other.

use super::common::{
    Entry, FHIR_BODY_BYTES_MAX, FHIR_JSON, Result, fhir_bundle, invalid, resource_type_name,
};
use crate::ApiState;
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::Response,
};
use commonware_runtime::Blob;
use serde_json::{Value, json, value::RawValue};
use std::sync::Arc;
use tower::ServiceExt as _;

/// Largest answer one batch entry may bring back (a search page of large resources).
pub const ENTRY_ANSWER_BYTES_MAX: usize = 4 * FHIR_BODY_BYTES_MAX;
/// Most answer bytes one batch gathers; entries past it are answered 413 without being run.
pub const BATCH_ANSWER_BYTES_MAX: usize = 16 * FHIR_BODY_BYTES_MAX;

#[derive(serde::Deserialize)]
struct BatchBundle<'a> {
    #[serde(borrow, default)]
    entry: Vec<BatchEntry<'a>>,
}

#[derive(serde::Deserialize)]
struct BatchEntry<'a> {
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<BatchRequest>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchRequest {
    method: String,
    url: String,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_none_exist: Option<String>,
}

/// An entry's failure, as its `response`.
fn failed(status: StatusCode, diagnostics: &str) -> Entry {
    Entry {
        fields: json!({"response": {
            "status": status_line(status),
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": diagnostics}],
            },
        }}),
        resource: None,
    }
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// The entry's request as one to this router, or why it cannot be one.
fn request_of(
    base: &str,
    headers: &HeaderMap,
    entry: &BatchEntry,
) -> std::result::Result<Request<Body>, String> {
    let request = entry.request.as_ref().ok_or("the entry has no request")?;
    let method = match request.method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" => {
            Method::from_bytes(request.method.as_bytes()).map_err(|_| "bad method")?
        }
        _ => return Err("request.method must be GET, HEAD, POST, PUT, DELETE or PATCH".into()),
    };
    // Relative to the FHIR base, or absolute on this node's own base.
    let url = request.url.as_str();
    let url = url
        .strip_prefix(&format!("{base}/fhir/"))
        .unwrap_or(url)
        .trim_start_matches('/');
    if url.is_empty() || url.contains("://") || url.starts_with('?') {
        return Err("request.url must name a type or resource on this server".into());
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("/fhir/{url}"))
        .header(header::ACCEPT, FHIR_JSON);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    for (name, value) in [
        (header::IF_MATCH.as_str(), &request.if_match),
        (header::IF_NONE_MATCH.as_str(), &request.if_none_match),
        ("if-none-exist", &request.if_none_exist),
    ] {
        if let Some(value) = value {
            let value = HeaderValue::from_str(value).map_err(|_| format!("{name} is not text"))?;
            builder = builder.header(name, value);
        }
    }
    let body = match entry.resource {
        Some(resource) => {
            builder = builder.header(header::CONTENT_TYPE, FHIR_JSON);
            Body::from(resource.get().to_owned())
        }
        None => Body::empty(),
    };
    builder
        .body(body)
        .map_err(|_| "the entry's request is malformed".into())
}

/// Answer a `batch` Bundle (`bytes`), each entry on its own.
pub(super) async fn batch<B: Blob>(
    state: Arc<ApiState<B>>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response> {
    let parsed: BatchBundle =
        serde_json::from_slice(bytes).map_err(|_| invalid("Bundle.entry is malformed"))?;
    let base = state.gateway.public_url.clone();
    let router = super::routes::<B>(state.clone()).with_state(state);
    let mut entries = Vec::with_capacity(parsed.entry.len());
    let mut gathered = 0usize;
    for entry in &parsed.entry {
        if gathered >= BATCH_ANSWER_BYTES_MAX {
            entries.push(failed(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the batch's answers reached their limit; send this entry again",
            ));
            continue;
        }
        let nested = entry
            .resource
            .and_then(|r| resource_type_name(r.get().as_bytes()))
            .is_some_and(|kind| kind == "Bundle");
        if nested {
            entries.push(failed(
                StatusCode::BAD_REQUEST,
                "a batch does not carry Bundles",
            ));
            continue;
        }
        let request = match request_of(&base, headers, entry) {
            Ok(request) => request,
            Err(why) => {
                entries.push(failed(StatusCode::BAD_REQUEST, &why));
                continue;
            }
        };
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let mut answer = json!({"status": status_line(status)});
        // `lastModified` is an instant, so it comes from the resource's `meta.lastUpdated`
        // below rather than from the HTTP date of `Last-Modified`.
        for (name, key) in [(header::LOCATION, "location"), (header::ETAG, "etag")] {
            if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
                answer[key] = json!(value);
            }
        }
        let body = match axum::body::to_bytes(response.into_body(), ENTRY_ANSWER_BYTES_MAX).await {
            Ok(body) => body,
            Err(_) => {
                entries.push(failed(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the entry's answer is over {ENTRY_ANSWER_BYTES_MAX} bytes"),
                ));
                continue;
            }
        };
        gathered += body.len();
        let text = String::from_utf8(body.to_vec()).ok();
        let resource = text.and_then(|t| RawValue::from_string(t).ok());
        if status.is_success() {
            if let Some(updated) = resource
                .as_ref()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                .and_then(|v| v["meta"]["lastUpdated"].as_str().map(str::to_owned))
            {
                answer["lastModified"] = json!(updated);
            }
            entries.push(Entry {
                fields: json!({"response": answer}),
                resource,
            });
        } else {
            if let Some(outcome) =
                resource.and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            {
                answer["outcome"] = outcome;
            }
            entries.push(Entry {
                fields: json!({"response": answer}),
                resource: None,
            });
        }
    }
    let head = json!({
        "resourceType": "Bundle",
        "type": "batch-response",
        "link": [{"relation": "self", "url": format!("{base}/fhir")}],
    });
    Ok(fhir_bundle(StatusCode::OK, &head, &entries))
}
