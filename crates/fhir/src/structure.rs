//! Every element of a resource checked against the R4 StructureDefinitions: unknown elements,
//! cardinality (required, single or array), one variant per choice (`value[x]`), the JSON
//! kind and lexical form of every primitive, and the codes of required bindings.
//!
//! The tables are `r4/definitions.json`, written by `scripts/gen-r4-definitions` from the
//! official R4 4.0.1 definitions; nothing here is written by hand per type. They are parsed
//! once, on first use. Contained resources are checked against their own type's table, so a
//! `contained` Medication or Practitioner is held to R4 like the resource around it.

use crate::{Issue, primitive::Primitive};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::{collections::HashMap, sync::LazyLock};

/// `[json name, min, many, type, choice, value set]`, as the generator writes it.
type Row = (String, u32, u8, String, String, i64);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    resources: Vec<String>,
    value_sets: Vec<Vec<String>>,
    types: HashMap<String, Vec<Row>>,
}

#[derive(Debug)]
enum Kind {
    Primitive(Primitive),
    Complex(usize),
    /// Any resource, by its `resourceType` (`contained`, `Bundle.entry.resource`).
    Resource,
}

#[derive(Debug)]
struct Element {
    many: bool,
    kind: Kind,
    /// The sorted codes of a required binding.
    codes: Option<usize>,
}

#[derive(Debug, Default)]
struct Type {
    name: String,
    elements: HashMap<String, Element>,
    /// Elements with min 1 that are not choices.
    required: Vec<String>,
    /// Each choice (`value[x]`) with its JSON names and whether one is required.
    choices: Vec<(String, Vec<String>, bool)>,
}

struct Definitions {
    types: Vec<Type>,
    by_name: HashMap<String, usize>,
    resources: Vec<String>,
    value_sets: Vec<Vec<String>>,
    element: usize,
}

static DEFINITIONS: LazyLock<Definitions> = LazyLock::new(|| {
    let file: File = serde_json::from_str(include_str!("r4/definitions.json"))
        .expect("r4/definitions.json is written by scripts/gen-r4-definitions");
    Definitions::new(file)
});

impl Definitions {
    fn new(file: File) -> Self {
        let mut names: Vec<&String> = file.types.keys().collect();
        names.sort();
        let by_name: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(index, name)| ((*name).clone(), index))
            .collect();
        let types = names
            .iter()
            .map(|name| {
                let mut ty = Type {
                    name: (*name).clone(),
                    ..Type::default()
                };
                for (json, min, many, kind, choice, value_set) in &file.types[*name] {
                    let kind = if kind == "Resource" {
                        Kind::Resource
                    } else if let Some(primitive) = Primitive::from_name(kind) {
                        Kind::Primitive(primitive)
                    } else {
                        Kind::Complex(by_name[kind])
                    };
                    if choice.is_empty() {
                        if *min > 0 {
                            ty.required.push(json.clone());
                        }
                    } else {
                        match ty.choices.iter_mut().find(|(name, ..)| name == choice) {
                            Some((_, variants, _)) => variants.push(json.clone()),
                            None => ty
                                .choices
                                .push((choice.clone(), vec![json.clone()], *min > 0)),
                        }
                    }
                    ty.elements.insert(
                        json.clone(),
                        Element {
                            many: *many == 1,
                            kind,
                            codes: usize::try_from(*value_set).ok(),
                        },
                    );
                }
                ty
            })
            .collect();
        let element = by_name["Element"];
        Self {
            types,
            by_name,
            resources: file.resources,
            value_sets: file.value_sets,
            element,
        }
    }
}

/// Check a resource (`resourceType` set) against its type's table. Paths start with the
/// resource type: `Observation.component[1].valueQuantity.value`.
pub(crate) fn check(resource: &Map<String, Value>) -> Vec<Issue> {
    let mut issues = Vec::new();
    let name = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    Walk {
        definitions: &DEFINITIONS,
        issues: &mut issues,
    }
    .resource(resource, name);
    issues
}

/// Whether `name` is an R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    DEFINITIONS
        .resources
        .binary_search_by(|r| r.as_str().cmp(name))
        .is_ok()
}

struct Walk<'a> {
    definitions: &'a Definitions,
    issues: &'a mut Vec<Issue>,
}

impl Walk<'_> {
    fn issue(&mut self, code: &'static str, path: &str, what: impl Into<String>) {
        self.issues.push(Issue::new(code, path.to_owned(), what));
    }

    fn resource(&mut self, object: &Map<String, Value>, path: &str) {
        let name = object.get("resourceType").and_then(Value::as_str);
        match name.filter(|name| is_resource_type(name)) {
            Some(name) => {
                let index = self.definitions.by_name[name];
                self.object(index, object, path);
            }
            None => self.issue(
                "structure",
                path,
                "a resource needs the resourceType of an R4 resource",
            ),
        }
    }

    fn object(&mut self, index: usize, object: &Map<String, Value>, path: &str) {
        let definitions = self.definitions;
        let ty = &definitions.types[index];
        let is_resource = is_resource_type(&ty.name);
        for (key, value) in object {
            let child = format!("{path}.{key}");
            if key == "resourceType" && is_resource {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                match ty.elements.get(base) {
                    Some(element) if matches!(element.kind, Kind::Primitive(_)) => {
                        self.extensions(element.many, value, &child)
                    }
                    _ => self.issue(
                        "structure",
                        &child,
                        format!("is not an element of {}", ty.name),
                    ),
                }
                continue;
            }
            match ty.elements.get(key) {
                Some(element) => self.value(element, value, &child),
                None => self.issue(
                    "structure",
                    &child,
                    format!("is not an element of {}", ty.name),
                ),
            }
        }
        let present =
            |name: &str| object.contains_key(name) || object.contains_key(&format!("_{name}"));
        for name in &ty.required {
            if !present(name) {
                self.issue("required", &format!("{path}.{name}"), "is required");
            }
        }
        for (choice, variants, required) in &ty.choices {
            let count = variants.iter().filter(|v| present(v)).count();
            if count > 1 {
                self.issue(
                    "structure",
                    &format!("{path}.{choice}"),
                    "has more than one variant; a choice takes exactly one",
                );
            } else if count == 0 && *required {
                self.issue("required", &format!("{path}.{choice}"), "is required");
            }
        }
    }

    /// The `_name` companion of a primitive: an Element (id, extension), or an array of them
    /// (with `null` where an item has none) beside a primitive array.
    fn extensions(&mut self, many: bool, value: &Value, path: &str) {
        let element = self.definitions.element;
        match (many, value) {
            (true, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(object) = item {
                        self.object(element, object, &format!("{path}[{i}]"));
                    }
                }
            }
            (false, Value::Object(object)) => self.object(element, object, path),
            (true, _) => self.issue(
                "structure",
                path,
                "must be an array, beside its primitive array",
            ),
            (false, _) => self.issue("structure", path, "must be an object (id, extension)"),
        }
    }

    fn value(&mut self, element: &Element, value: &Value, path: &str) {
        match (element.many, value) {
            (true, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.item(element, item, &format!("{path}[{i}]"));
                }
            }
            (true, Value::Null) | (false, Value::Null) => {}
            (true, _) => self.issue(
                "structure",
                path,
                "has cardinality 0..* and must be an array",
            ),
            (false, Value::Array(_)) => self.issue(
                "structure",
                path,
                "has cardinality 0..1 and must not be an array",
            ),
            (false, _) => self.item(element, value, path),
        }
    }

    fn item(&mut self, element: &Element, value: &Value, path: &str) {
        match (&element.kind, value) {
            // A null item of a primitive array is judged by the lint (paired with `_name`).
            (_, Value::Null) => {}
            (Kind::Primitive(primitive), _) => {
                if let Some(why) = primitive.check(value) {
                    self.issue("value", path, why);
                } else if let (Some(set), Some(code)) = (element.codes, value.as_str()) {
                    let codes = &self.definitions.value_sets[set];
                    if !code.is_empty() && codes.binary_search_by(|c| c.as_str().cmp(code)).is_err()
                    {
                        self.issue(
                            "code-invalid",
                            path,
                            "is not a code of the element's required value set",
                        );
                    }
                }
            }
            (Kind::Complex(index), Value::Object(object)) => self.object(*index, object, path),
            (Kind::Resource, Value::Object(object)) => self.resource(object, path),
            (Kind::Complex(_) | Kind::Resource, _) => {
                self.issue("structure", path, "must be a JSON object")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(resource: Value) -> Vec<(String, &'static str)> {
        check(resource.as_object().unwrap())
            .into_iter()
            .map(|i| (i.expression, i.code))
            .collect()
    }

    #[test]
    fn a_valid_observation_passes() {
        let issues = paths(json!({
            "resourceType": "Observation", "id": "a1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "comparator": "<"},
            "component": [{"code": {"text": "x"}, "valueString": "y",
                "referenceRange": [{"low": {"value": 1}}]}],
            "_status": {"extension": [{"url": "http://example.org/x", "valueBoolean": true}]},
            "contained": [{"resourceType": "Practitioner", "id": "p", "name": [{"given": ["A", null], "_given": [null, {"id": "g"}]}]}]
        }));
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn every_breach_is_named_by_path() {
        let issues = paths(json!({
            "resourceType": "Observation", "status": "done-ish",
            "colour": "red",
            "subject": {"reference": "Patient/p1", "display": 3},
            "effectiveDateTime": "2026-13-45",
            "effectivePeriod": {"start": "2024"},
            "valueInteger": 2147483648u64,
            "category": {"text": "x"},
            "component": [{"valueString": "y", "_valueString": 3}],
            "contained": [{"resourceType": "Spaceship"}, {"resourceType": "Patient", "gender": "robot"}]
        }));
        let expected = [
            ("Observation.category", "structure"),
            ("Observation.colour", "structure"),
            ("Observation.component[0]._valueString", "structure"),
            ("Observation.component[0].code", "required"),
            ("Observation.contained[0]", "structure"),
            ("Observation.contained[1].gender", "code-invalid"),
            ("Observation.effectiveDateTime", "value"),
            ("Observation.status", "code-invalid"),
            ("Observation.subject.display", "value"),
            ("Observation.valueInteger", "value"),
            ("Observation.code", "required"),
            ("Observation.effective[x]", "structure"),
        ];
        let expected: Vec<_> = expected.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        assert_eq!(issues, expected);
    }

    #[test]
    fn required_choices_and_arrays() {
        let issues = paths(
            json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p"}, "dosageInstruction": {"text": "daily"}}),
        );
        assert_eq!(
            issues,
            [
                (
                    "MedicationRequest.dosageInstruction".to_owned(),
                    "structure"
                ),
                ("MedicationRequest.medication[x]".to_owned(), "required")
            ]
        );
        assert!(is_resource_type("Patient") && !is_resource_type("Spaceship"));
    }
}
