//! What every FHIR interaction shares: limits, error helpers, body and answer handling, references
//! to identities.

use crate::{ApiError, ApiState};
use axum::{
    Json,
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use commonware_runtime::Blob;
use ehrchain_contracts::{facts::Role, state::Reader as _};
use ehrchain_types::PublicKey;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Value, value::RawValue};

pub use crate::error::FHIR_JSON;
/// Largest FHIR request body.
pub const FHIR_BODY_BYTES_MAX: usize = ehrchain_fhir::RESOURCE_SIZE_BYTES_MAX;
/// Default and largest page of a search.
pub const PAGE_DEFAULT: usize = 20;
pub const PAGE_MAX: usize = 100;
/// Most records one search reads when it must filter on content.
pub const SEARCH_READS_MAX: usize = 200;

pub(super) type Result<T> = std::result::Result<T, ApiError>;

pub(super) fn not_found(what: &str) -> ApiError {
    ApiError::fhir(StatusCode::NOT_FOUND, "not-found", what)
}

pub(super) fn invalid(what: &str) -> ApiError {
    ApiError::fhir(StatusCode::BAD_REQUEST, "invalid", what)
}

pub(super) fn forbidden(what: &str) -> ApiError {
    ApiError::fhir(StatusCode::FORBIDDEN, "forbidden", what)
}

pub(super) fn unavailable(error: ehrchain_storage::Error) -> ApiError {
    tracing::error!(%error, "blob store failed");
    ApiError::fhir(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the blob store is unavailable",
    )
}

/// Most bytes of a body read in all: past [`FHIR_BODY_BYTES_MAX`] the rest is discarded up
/// to this, so that a client still sending reads its 413 instead of a reset connection.
/// Beyond it the connection is closed.
pub const DRAIN_BYTES_MAX: usize = 2 * FHIR_BODY_BYTES_MAX;

/// A request body of at most [`FHIR_BODY_BYTES_MAX`] bytes; 413 for a longer one.
pub(super) async fn body_bytes(mut body: Body) -> Result<Bytes> {
    use http_body_util::BodyExt as _;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::fhir(
                StatusCode::BAD_REQUEST,
                "structure",
                "the request body could not be read whole",
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= FHIR_BODY_BYTES_MAX {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_BYTES_MAX {
            break;
        }
    }
    if seen > FHIR_BODY_BYTES_MAX {
        return Err(ApiError::fhir(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            &format!("the body is over the limit of {FHIR_BODY_BYTES_MAX} bytes"),
        ));
    }
    Ok(Bytes::from(kept))
}

pub(super) fn fhir_json(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The `resourceType` of a JSON text, read without building the whole document.
pub(super) fn resource_type_name(text: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "resourceType", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Kind>(text)
        .ok()?
        .kind
        .map(|k| k.into_owned())
}

/// A resource's text as served (`ehrchain_fhir::raw::present`), answered as it is.
pub(super) fn fhir_raw(status: StatusCode, resource: &RawValue) -> Response {
    let mut response = (status, resource.get().to_owned()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// One Bundle entry: its own elements (`fullUrl`, `search`, `request`, `response`, or a
/// server-made `resource`) and a stored resource's text as served.
pub(super) struct Entry {
    pub fields: Value,
    pub resource: Option<Box<RawValue>>,
}

struct Members<'a>(&'a serde_json::Map<String, Value>, &'a [&'a str]);

impl Members<'_> {
    fn write<M: SerializeMap>(&self, map: &mut M) -> std::result::Result<(), M::Error> {
        for key in self.1 {
            if let Some(value) = self.0.get(*key) {
                map.serialize_entry(key, value)?;
            }
        }
        for (key, value) in self.0 {
            if !self.1.contains(&key.as_str()) && key != "entry" {
                map.serialize_entry(key, value)?;
            }
        }
        Ok(())
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let empty = serde_json::Map::new();
        let fields = self.fields.as_object().unwrap_or(&empty);
        let mut map = serializer.serialize_map(None)?;
        Members(fields, &["fullUrl"]).write(&mut map)?;
        if let Some(resource) = &self.resource {
            map.serialize_entry("resource", resource)?;
        }
        map.end()
    }
}

struct Bundle<'a>(&'a Value, &'a [Entry]);

impl Serialize for Bundle<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let empty = serde_json::Map::new();
        let head = self.0.as_object().unwrap_or(&empty);
        let mut map = serializer.serialize_map(None)?;
        Members(head, &["resourceType", "id", "type", "total", "link"]).write(&mut map)?;
        if !self.1.is_empty() {
            map.serialize_entry("entry", self.1)?;
        }
        map.end()
    }
}

/// A Bundle answer: `head` (resourceType, type, total, links) and its entries, each resource
/// written as served rather than re-serialized, so the client's text survives.
pub(super) fn fhir_bundle(status: StatusCode, head: &Value, entries: &[Entry]) -> Response {
    let body = serde_json::to_vec(&Bundle(head, entries)).expect("a bundle serializes");
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

// ---- identities ----------------------------------------------------------------------------

pub(super) fn id16(text: &str) -> Option<[u8; 16]> {
    ehrchain_types::id_from_hex(text)
}

pub(super) fn key_of(reference: &str) -> Option<PublicKey> {
    let (_, id) = reference.rsplit_once('/')?;
    ehrchain_types::public_key_from_hex(id)
}

/// The FHIR reference of an identity: `Patient/..`, `Practitioner/..`, `Organization/..`.
pub(super) fn reference_of(role: Option<&Role>, key: &PublicKey) -> String {
    match role {
        Some(Role::Patient { patient }) => format!("Patient/{}", hex::encode(patient)),
        Some(Role::Institution) => format!("Organization/{}", hex::encode(key)),
        Some(Role::Clinician { .. }) => format!("Practitioner/{}", hex::encode(key)),
        _ => format!("Practitioner/{}", hex::encode(key)),
    }
}

pub(super) fn role_of<B: Blob>(state: &ApiState<B>, key: &PublicKey) -> Option<Role> {
    state.chain.read(|s| s.identity(key).map(|i| i.role))
}

pub(super) const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

pub(super) fn codes(value: &Value) -> Vec<String> {
    // A CodeableConcept or a Coding, or an array of either.
    let mut out = Vec::new();
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for item in items {
        if let Some(code) = item["code"].as_str() {
            out.push(code.to_string());
        }
        for coding in item["coding"].as_array().into_iter().flatten() {
            if let Some(code) = coding["code"].as_str() {
                out.push(code.to_string());
            }
        }
    }
    out
}

pub(super) fn unprocessable(what: &str) -> ApiError {
    ApiError::fhir(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what)
}
