//! Check FHIR R4 resources structurally and pull out the few elements we index or enforce.
//!
//! The record is the client's JSON exactly as sent: nothing here re-serializes it, and
//! [`raw`] serves it with only the server's `id` and `meta` versions changed. We type only
//! what the system acts on (resource type, id, the patient reference, status, codes,
//! categories, dates) and check by hand the required elements and cardinalities of every
//! supported type. Findings come back as [`Issue`]s shaped like `OperationOutcome.issue`.

pub mod raw;
mod validate;

pub use validate::{Issue, Resource, ResourceType, validate, validate_value};

/// Largest FHIR JSON body this crate parses.
pub const RESOURCE_SIZE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Deepest JSON nesting accepted (serde_json also stops at 128).
pub const JSON_DEPTH_MAX: usize = 64;

/// Whether `id` is a valid FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Build an `OperationOutcome` JSON value from issues.
pub fn operation_outcome(issues: &[Issue]) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}
