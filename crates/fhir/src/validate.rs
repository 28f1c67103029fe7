//! Structural checks for the supported R4 resource types.

use crate::{JSON_DEPTH_MAX, RESOURCE_SIZE_BYTES_MAX, is_valid_id};
use serde_json::{Map, Value};

/// The resource types this system stores. The discriminant is the on-chain category byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ResourceType {
    Patient = 1,
    Observation = 2,
    Condition = 3,
    AllergyIntolerance = 4,
    MedicationRequest = 5,
    Immunization = 6,
    Procedure = 7,
    Encounter = 8,
    DiagnosticReport = 9,
    DocumentReference = 10,
    Binary = 11,
}

impl ResourceType {
    pub const ALL: [ResourceType; 11] = [
        Self::Patient,
        Self::Observation,
        Self::Condition,
        Self::AllergyIntolerance,
        Self::MedicationRequest,
        Self::Immunization,
        Self::Procedure,
        Self::Encounter,
        Self::DiagnosticReport,
        Self::DocumentReference,
        Self::Binary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Patient => "Patient",
            Self::Observation => "Observation",
            Self::Condition => "Condition",
            Self::AllergyIntolerance => "AllergyIntolerance",
            Self::MedicationRequest => "MedicationRequest",
            Self::Immunization => "Immunization",
            Self::Procedure => "Procedure",
            Self::Encounter => "Encounter",
            Self::DiagnosticReport => "DiagnosticReport",
            Self::DocumentReference => "DocumentReference",
            Self::Binary => "Binary",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The element that names the patient, or `None` for Patient itself.
    fn patient_element(self) -> Option<&'static str> {
        match self {
            Self::Patient => None,
            Self::AllergyIntolerance | Self::Immunization => Some("patient"),
            Self::Binary => Some("securityContext"),
            _ => Some("subject"),
        }
    }

    /// Element that carries the clinically relevant date, for `date` search.
    fn date_elements(self) -> &'static [&'static str] {
        match self {
            Self::Patient => &["birthDate"],
            Self::Observation => &["effectiveDateTime", "effectivePeriod.start", "issued"],
            Self::Condition => &["onsetDateTime", "recordedDate"],
            Self::AllergyIntolerance => &["onsetDateTime", "recordedDate"],
            Self::MedicationRequest => &["authoredOn"],
            Self::Immunization => &["occurrenceDateTime"],
            Self::Procedure => &["performedDateTime", "performedPeriod.start"],
            Self::Encounter => &["period.start"],
            Self::DiagnosticReport => &["effectiveDateTime", "effectivePeriod.start", "issued"],
            Self::DocumentReference => &["date"],
            Self::Binary => &[],
        }
    }

    fn code_element(self) -> Option<&'static str> {
        match self {
            Self::Observation
            | Self::Condition
            | Self::AllergyIntolerance
            | Self::Procedure
            | Self::DiagnosticReport => Some("code"),
            Self::MedicationRequest => Some("medicationCodeableConcept"),
            Self::Immunization => Some("vaccineCode"),
            Self::DocumentReference | Self::Encounter => Some("type"),
            Self::Patient | Self::Binary => None,
        }
    }
}

/// One finding, as an `OperationOutcome.issue`. Never carries element values (they may be PHI),
/// only paths and rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// `error` or `fatal`.
    pub severity: &'static str,
    /// An IssueType code: `structure`, `required`, `value`, `invalid`, `too-long`, ...
    pub code: &'static str,
    /// FHIRPath of the element, e.g. `Observation.status`.
    pub expression: String,
    pub diagnostics: String,
}

impl Issue {
    pub fn new(
        code: &'static str,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Self {
        Self {
            severity: "error",
            code,
            expression: expression.into(),
            diagnostics: diagnostics.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut issue = serde_json::json!({
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = Value::from(vec![self.expression.clone()]);
        }
        issue
    }
}

/// A resource that passed the checks, with the elements we index.
#[derive(Clone, Debug)]
pub struct Resource {
    pub resource_type: ResourceType,
    pub id: Option<String>,
    /// The Patient id this resource belongs to (its own id for a Patient).
    pub patient: Option<String>,
    pub status: Option<String>,
    /// `system|code` of every coding in the type's main code element.
    pub codes: Vec<String>,
    /// `system|code` of every coding in `category` (and the resource type name).
    pub categories: Vec<String>,
    /// `system|value` of every `identifier` (`|value` without a system).
    pub identifiers: Vec<String>,
    /// The clinically relevant date, as written (`YYYY`, `YYYY-MM-DD` or a dateTime).
    pub date: Option<String>,
    pub json: Value,
}

/// Parse and check a resource from untrusted bytes.
pub fn validate(bytes: &[u8]) -> Result<Resource, Vec<Issue>> {
    if bytes.len() > RESOURCE_SIZE_BYTES_MAX {
        return Err(vec![Issue::new(
            "too-long",
            "",
            format!(
                "resource is {} bytes; the limit is {RESOURCE_SIZE_BYTES_MAX}",
                bytes.len()
            ),
        )]);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        vec![Issue::new(
            "structure",
            "",
            format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        )]
    })?;
    let root = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut issues = crate::raw::lint(bytes, &root);
    match validate_value(value) {
        Ok(resource) if issues.is_empty() => Ok(resource),
        Ok(_) => Err(issues),
        Err(more) => {
            issues.extend(more);
            Err(issues)
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Check an already parsed resource.
pub fn validate_value(value: Value) -> Result<Resource, Vec<Issue>> {
    let mut issues = Vec::new();
    let Some(object) = value.as_object() else {
        return Err(vec![Issue::new(
            "structure",
            "",
            "a resource must be a JSON object",
        )]);
    };
    if depth(&value) > JSON_DEPTH_MAX {
        return Err(vec![Issue::new(
            "structure",
            "",
            format!("JSON nested deeper than {JSON_DEPTH_MAX} levels"),
        )]);
    }
    let Some(type_name) = object.get("resourceType").and_then(Value::as_str) else {
        return Err(vec![Issue::new(
            "required",
            "resourceType",
            "resourceType is required",
        )]);
    };
    let Some(resource_type) = ResourceType::from_name(type_name) else {
        return Err(vec![Issue::new(
            "not-supported",
            "resourceType",
            "this resource type is not supported; see the CapabilityStatement at /fhir/metadata",
        )]);
    };
    let name = resource_type.name();
    issues.extend(crate::structure::check(object));
    let id = object.get("id").and_then(Value::as_str).map(str::to_owned);
    let mut checker = Checker {
        object,
        name,
        issues: &mut issues,
    };

    let patient = match resource_type.patient_element() {
        None => id.clone(),
        Some(element) => checker.patient_reference(element),
    };
    let status = object
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let codes = resource_type
        .code_element()
        .map(|element| match object.get(element) {
            Some(Value::Array(items)) => items.iter().flat_map(codings).collect(),
            Some(concept) => codings(concept),
            None => Vec::new(),
        })
        .unwrap_or_default();
    let mut categories: Vec<String> = match object.get("category") {
        Some(Value::Array(items)) => items
            .iter()
            .flat_map(|item| match item {
                Value::String(code) => vec![code.clone()],
                other => codings(other),
            })
            .collect(),
        Some(concept) => codings(concept),
        None => Vec::new(),
    };
    categories.push(name.to_owned());
    let identifiers = match object.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    }
    .into_iter()
    .filter_map(|identifier| {
        let value = identifier.get("value")?.as_str()?;
        let system = identifier
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or("");
        Some(format!("{system}|{value}"))
    })
    .collect();
    let date = resource_type.date_elements().iter().find_map(|path| {
        lookup(object, path)
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if !issues.is_empty() {
        // The patient rule and the R4 table may both name a missing subject.
        let mut seen = std::collections::BTreeSet::new();
        issues.retain(|i| seen.insert((i.expression.clone(), i.code)));
        return Err(issues);
    }
    Ok(Resource {
        resource_type,
        id,
        patient,
        status,
        codes,
        categories,
        identifiers,
        date,
        json: value,
    })
}

fn lookup<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = object.get(parts.next()?)?;
    for part in parts {
        current = current.get(part)?;
    }
    Some(current)
}

fn codings(concept: &Value) -> Vec<String> {
    let Some(codings) = concept.get("coding").and_then(Value::as_array) else {
        return Vec::new();
    };
    codings
        .iter()
        .filter_map(|coding| {
            let code = coding.get("code")?.as_str()?;
            let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
            Some(format!("{system}|{code}"))
        })
        .collect()
}

struct Checker<'a> {
    object: &'a Map<String, Value>,
    name: &'static str,
    issues: &'a mut Vec<Issue>,
}

impl<'a> Checker<'a> {
    fn error(&mut self, code: &'static str, element: impl AsRef<str>, message: &str) {
        let element = element.as_ref();
        let expression = if element.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}.{element}", self.name)
        };
        self.issues.push(Issue::new(code, expression, message));
    }

    /// The patient reference: required, and of the form `Patient/{id}`.
    fn patient_reference(&mut self, element: &str) -> Option<String> {
        let Some(value) = self.object.get(element) else {
            self.error(
                "required",
                element,
                "must reference the Patient (Patient/{id})",
            );
            return None;
        };
        let Some(reference) = value.get("reference").and_then(Value::as_str) else {
            self.error(
                "required",
                format!("{element}.reference"),
                "must reference the Patient (Patient/{id})",
            );
            return None;
        };
        match reference.strip_prefix("Patient/") {
            Some(id) if is_valid_id(id) => Some(id.to_owned()),
            _ => {
                self.error(
                    "value",
                    format!("{element}.reference"),
                    "must be a reference of the form Patient/{id}",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: Value) -> Result<Resource, Vec<Issue>> {
        validate(&serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn an_observation_is_indexed() {
        let resource = check(json!({
            "resourceType": "Observation", "id": "a1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min"}
        }))
        .unwrap();
        assert_eq!(resource.resource_type, ResourceType::Observation);
        assert_eq!(resource.patient.as_deref(), Some("p1"));
        assert_eq!(resource.codes, ["http://loinc.org|8867-4"]);
        assert!(
            resource
                .categories
                .iter()
                .any(|c| c.ends_with("|vital-signs"))
        );
        assert_eq!(resource.date.as_deref(), Some("2024-03-01T10:00:00Z"));
    }

    #[test]
    fn every_problem_is_listed_without_values() {
        let issues = check(json!({
            "resourceType": "Observation", "status": "done-ish",
            "subject": {"reference": "Group/secret-name"},
            "category": {"text": "x"}
        }))
        .unwrap_err();
        let mut paths: Vec<_> = issues.iter().map(|i| i.expression.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "Observation.category",
                "Observation.code",
                "Observation.status",
                "Observation.subject.reference"
            ]
        );
        assert!(
            issues
                .iter()
                .all(|i| !i.diagnostics.contains("secret-name")
                    && !i.diagnostics.contains("done-ish"))
        );
    }

    #[test]
    fn unsupported_and_malformed() {
        assert_eq!(
            check(json!({"resourceType": "Spaceship"})).unwrap_err()[0].code,
            "not-supported"
        );
        assert_eq!(check(json!([1])).unwrap_err()[0].code, "structure");
        assert_eq!(
            validate(b"{\"resourceType\":").unwrap_err()[0].code,
            "structure"
        );
        let mut deep = json!(1);
        for _ in 0..70 {
            deep = json!([deep]);
        }
        assert_eq!(
            check(json!({"resourceType": "Patient", "x": deep})).unwrap_err()[0].code,
            "structure"
        );
    }

    #[test]
    fn required_elements_per_type() {
        for (resource, missing) in [
            (json!({"resourceType": "Condition"}), "Condition.subject"),
            (
                json!({"resourceType": "AllergyIntolerance"}),
                "AllergyIntolerance.patient",
            ),
            (
                json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/p"}}),
                "MedicationRequest.medication[x]",
            ),
            (
                json!({"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "flu"}, "patient": {"reference": "Patient/p"}}),
                "Immunization.occurrence[x]",
            ),
            (
                json!({"resourceType": "Procedure", "subject": {"reference": "Patient/p"}}),
                "Procedure.status",
            ),
            (
                json!({"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/p"}}),
                "Encounter.class",
            ),
            (
                json!({"resourceType": "DiagnosticReport", "status": "final", "subject": {"reference": "Patient/p"}}),
                "DiagnosticReport.code",
            ),
            (
                json!({"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p"}, "content": []}),
                "DocumentReference.content",
            ),
            (
                json!({"resourceType": "Binary", "securityContext": {"reference": "Patient/p"}}),
                "Binary.contentType",
            ),
        ] {
            let issues = check(resource).unwrap_err();
            assert!(
                issues.iter().any(|i| i.expression == missing),
                "{missing}: {issues:?}"
            );
        }
    }
}
