//! Check FHIR R4 resources structurally and pull out the few elements we index or enforce.
//!
//! The record is the client's JSON exactly as sent: nothing here re-serializes it, and
//! [`raw`] serves it with only the server's `id` and `meta` versions changed. We type only
//! what the system acts on (resource type, id, the patient reference, status, codes,
//! categories, dates). Every element is checked against tables generated from the official
//! R4 StructureDefinitions ([`structure`]), the primitives against their lexical rules
//! ([`primitive`]), and the JSON text against what a parsed value hides ([`raw`]). Findings
//! come back as [`Issue`]s shaped like `OperationOutcome.issue`.

pub mod patch;
mod primitive;
pub mod raw;
mod structure;
mod validate;

pub use primitive::{is_date, is_date_time, is_instant};
pub use structure::is_resource_type;
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
