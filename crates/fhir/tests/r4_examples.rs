//! Every official R4 example of the eleven stored types (npm `hl7.fhir.r4.examples@4.0.1`,
//! which `scripts/test` installs) is checked against the generated R4 tables and served back
//! through `raw::present`: the answer must equal the example token for token (same key order,
//! same number text, same strings) outside `id` and `meta`, which the server sets. The
//! examples whose patient reference is not `Patient/{id}` (a Group, a contained `#newborn`, a
//! display alone) are the ones this system cannot store, since every record belongs to one
//! patient: they must be refused for that reason and no other. The FHIR client journey
//! (`tests/fhir_client/journey.py`) sends the same examples through the running API.

use ehrchain_fhir::{ResourceType, raw, validate};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::{fmt, path::PathBuf};

fn examples_dir() -> PathBuf {
    let dir = std::env::var_os("EHRCHAIN_R4_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/ehrchain/npm/node_modules/hl7.fhir.r4.examples")
        });
    assert!(
        dir.is_dir(),
        "R4 examples not found at {}: run ./scripts/test, or \
         `npm install --prefix ~/.cache/ehrchain/npm hl7.fhir.r4.examples@4.0.1`",
        dir.display()
    );
    dir
}

/// The examples of the stored types, by file name, sorted.
fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = examples_dir();
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            let (kind, _) = name.split_once('-')?;
            (name.ends_with(".json") && ResourceType::from_name(kind).is_some())
                .then(|| (name, std::fs::read(&path).unwrap()))
        })
        .collect();
    found.sort();
    found
}

/// Top-level members in order, each value's text with the whitespace between tokens removed.
fn members(text: &str) -> Vec<(String, String)> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                out.push((key, minify(value.get())));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Members).unwrap()
}

fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !ch.is_whitespace() {
            in_string = ch == '"';
            out.push(ch);
        }
    }
    out
}

/// Whether the example's patient element is a `Patient/{id}` reference.
fn names_a_patient(bytes: &[u8]) -> bool {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let element = match value["resourceType"].as_str().unwrap() {
        "Patient" => return true,
        "AllergyIntolerance" | "Immunization" => "patient",
        "Binary" => "securityContext",
        _ => "subject",
    };
    value[element]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .is_some_and(ehrchain_fhir::is_valid_id)
}

#[test]
fn every_example_validates_and_is_served_as_sent() {
    let examples = examples();
    assert!(examples.len() >= 180, "{} examples", examples.len());
    let mut stored = 0;
    for (name, bytes) in &examples {
        let result = validate(bytes);
        if !names_a_patient(bytes) {
            let issues = result.expect_err(name);
            assert!(
                issues
                    .iter()
                    .all(|i| i.diagnostics.contains("Patient/{id}")),
                "{name} is refused for more than its patient reference: {issues:?}"
            );
            continue;
        }
        if let Err(issues) = result {
            panic!("{name}: {issues:?}");
        }
        let text = std::str::from_utf8(bytes).unwrap();
        let served = raw::present(bytes, "server-id", "3", "2026-12-02T05:00:00.000Z").unwrap();
        let outside = |members: Vec<(String, String)>| -> Vec<(String, String)> {
            members
                .into_iter()
                .filter(|(k, _)| k != "id" && k != "meta")
                .collect()
        };
        let served_members = members(&served);
        assert_eq!(served_members[0].0, "resourceType", "{name}");
        assert_eq!(
            served_members[1],
            ("id".into(), "\"server-id\"".into()),
            "{name}"
        );
        assert_eq!(outside(served_members), outside(members(text)), "{name}");
        stored += 1;
    }
    // 184 examples of the eleven types in 4.0.1, of which 13 name no Patient/{id}.
    assert_eq!((examples.len(), stored), (184, 171));
}

#[test]
fn a_changed_example_is_refused_with_its_path() {
    let (_, bytes) = examples()
        .into_iter()
        .find(|(name, _)| name == "Observation-example.json")
        .expect("Observation-example.json");
    let text = String::from_utf8(bytes).unwrap();
    for (from, to, path) in [
        (
            "\"status\": \"final\"",
            "\"status\": \"done\"",
            "Observation.status",
        ),
        (
            "\"status\": \"final\"",
            "\"status\": \"final\", \"colour\": \"red\"",
            "Observation.colour",
        ),
        (
            "\"effectiveDateTime\": \"2016-03-28\"",
            "\"effectiveDateTime\": \"2016-02-30\"",
            "Observation.effectiveDateTime",
        ),
        (
            "\"effectiveDateTime\": \"2016-03-28\"",
            "\"effectiveDateTime\": \"2016-03-28\", \"effectivePeriod\": {\"start\": \"2016\"}",
            "Observation.effective[x]",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let issues = validate(text.replacen(from, to, 1).as_bytes()).unwrap_err();
        assert!(
            issues.iter().any(|i| i.expression == path),
            "{path}: {issues:?}"
        );
    }
}
