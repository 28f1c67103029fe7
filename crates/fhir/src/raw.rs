//! The client's JSON as sent: checks `serde_json::Value` cannot make, and the few edits the
//! server makes, done on the original text.
//!
//! A `Value` keeps the last of two duplicate keys, sorts keys and turns `1.50` into `1.5`, so
//! nothing served is ever re-serialized from one. [`lint`] walks the bytes once for what a
//! `Value` hides (duplicate keys, `null`, empty arrays, objects and strings). [`present`]
//! writes a stored resource with the server's `id` and `meta.versionId`/`meta.lastUpdated`,
//! and every other member's text exactly as the client sent it, in the client's order.
//! [`replace_strings`] rewrites whole JSON strings (a Bundle's `urn:uuid:` references) in the
//! text itself.

use crate::Issue;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::{cell::RefCell, collections::BTreeSet, fmt};

/// What one walk collects; `null` array items are kept aside until the enclosing object shows
/// whether they pair with a primitive's extensions (`"given": ["a", null], "_given": [...]`,
/// the one place FHIR JSON allows `null`).
struct Findings {
    issues: Vec<Issue>,
}

struct Walk<'a> {
    path: String,
    findings: &'a RefCell<Findings>,
    /// Set by a walk over an array item that was `null`.
    null_item: Option<&'a RefCell<bool>>,
}

impl Walk<'_> {
    fn issue(&self, code: &'static str, what: &str) {
        self.findings.borrow_mut().issues.push(Issue::new(
            code,
            self.path.clone(),
            what.to_owned(),
        ));
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        if text.trim().is_empty() {
            self.issue("value", "a string must have non-whitespace content");
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        match self.null_item {
            Some(flag) => *flag.borrow_mut() = true,
            None => self.issue("structure", "null is not a value in FHIR JSON"),
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        let nulls = RefCell::new(false);
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{index}]", self.path),
                findings: self.findings,
                null_item: Some(&nulls),
            })?
            .is_some()
        {
            index += 1;
        }
        if index == 0 {
            self.issue("structure", "an array must not be empty");
        }
        if *nulls.borrow() {
            // Decided by the enclosing object (see `visit_map`): reported as this path.
            self.findings.borrow_mut().issues.push(Issue::new(
                "null-item",
                self.path.clone(),
                String::new(),
            ));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = BTreeSet::new();
        let mark = self.findings.borrow().issues.len();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !keys.insert(key.clone()) {
                self.findings.borrow_mut().issues.push(Issue::new(
                    "structure",
                    path.clone(),
                    "a key appears twice in one object".to_owned(),
                ));
            }
            map.next_value_seed(Walk {
                path,
                findings: self.findings,
                null_item: None,
            })?;
        }
        if keys.is_empty() {
            self.issue("structure", "an object must not be empty");
        }
        // Arrays of this object holding `null`: allowed where a primitive array pairs with
        // its `_name` extensions array, refused anywhere else.
        let prefix = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}.", self.path)
        };
        let mut findings = self.findings.borrow_mut();
        for issue in &mut findings.issues[mark..] {
            if issue.code != "null-item" {
                continue;
            }
            let Some(key) = issue.expression.strip_prefix(&prefix) else {
                continue;
            };
            if key.contains(['.', '[']) {
                continue;
            }
            let partner = match key.strip_prefix('_') {
                Some(primitive) => primitive.to_owned(),
                None => format!("_{key}"),
            };
            *issue = if keys.contains(&partner) {
                Issue::new("null-item", String::new(), "paired".to_owned())
            } else {
                Issue::new(
                    "structure",
                    issue.expression.clone(),
                    "null is allowed in an array only beside its primitive's _ array".to_owned(),
                )
            };
        }
        findings
            .issues
            .retain(|i| !(i.code == "null-item" && i.diagnostics == "paired"));
        Ok(())
    }
}

/// What `serde_json::Value` cannot show of a document: duplicate keys, `null` (except beside
/// a primitive's extensions), empty arrays, objects and strings. Paths start at `root` (the
/// resource type). Malformed JSON gives no findings here; the parser reports it.
pub fn lint(bytes: &[u8], root: &str) -> Vec<Issue> {
    let findings = RefCell::new(Findings { issues: Vec::new() });
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let walk = Walk {
        path: root.to_owned(),
        findings: &findings,
        null_item: None,
    };
    if walk.deserialize(&mut deserializer).is_err() {
        return Vec::new();
    }
    let mut issues = findings.into_inner().issues;
    // A still-undecided `null` item (in an array at the top level's own items) is refused.
    for issue in &mut issues {
        if issue.code == "null-item" {
            issue.code = "structure";
            issue.diagnostics =
                "null is allowed in an array only beside its primitive's _ array".into();
        }
    }
    issues
}

/// An object's members in the client's order, each value's text as sent.
fn members(text: &str) -> Option<Vec<(String, &RawValue)>> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                out.push((key, map.next_value::<&RawValue>()?));
            }
            Ok(out)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let members = de::Deserializer::deserialize_map(&mut deserializer, Members).ok()?;
    deserializer.end().ok()?;
    Some(members)
}

fn push_member(out: &mut String, first: &mut bool, key: &str, value: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    out.push_str(&serde_json::to_string(key).expect("a string serializes"));
    out.push(':');
    out.push_str(value);
}

/// The resource as served: `resourceType`, the server's `id`, `meta` with the server's
/// `versionId` and `lastUpdated` (and the client's other meta elements as sent), then every
/// other member as sent, in order. `None` if `stored` is not a JSON object.
pub fn present(stored: &[u8], id: &str, version_id: &str, last_updated: &str) -> Option<String> {
    let text = std::str::from_utf8(stored).ok()?;
    let members = members(text)?;
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut meta = String::from("{");
    let mut first = true;
    push_member(&mut meta, &mut first, "versionId", &quote(version_id));
    push_member(&mut meta, &mut first, "lastUpdated", &quote(last_updated));
    if let Some((_, client_meta)) = members.iter().find(|(k, _)| k == "meta")
        && let Some(inner) = self::members(client_meta.get())
    {
        for (key, value) in inner {
            if key != "versionId" && key != "lastUpdated" {
                push_member(&mut meta, &mut first, &key, value.get());
            }
        }
    }
    meta.push('}');
    let mut out = String::with_capacity(text.len() + 96);
    out.push('{');
    let mut first = true;
    if let Some((_, kind)) = members.iter().find(|(k, _)| k == "resourceType") {
        push_member(&mut out, &mut first, "resourceType", kind.get());
    }
    push_member(&mut out, &mut first, "id", &quote(id));
    push_member(&mut out, &mut first, "meta", &meta);
    for (key, value) in &members {
        if !matches!(key.as_str(), "resourceType" | "id" | "meta") {
            push_member(&mut out, &mut first, key, value.get());
        }
    }
    out.push('}');
    Some(out)
}

/// Replace every JSON string whose whole value is a key of `replacements` with its value,
/// leaving all other text as it is. Strings are matched as written (a client escaping
/// characters of a `urn:uuid:` is not matched, which FHIR's own examples never do).
pub fn replace_strings(text: &str, replacements: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        // A string token: find its closing quote, skipping escapes.
        let start = i;
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            break; // unterminated: not JSON, left as it is
        }
        let end = i + 1;
        let inner = &text[start + 1..i];
        if let Some((_, to)) = replacements.iter().find(|(from, _)| from == inner) {
            out.push_str(&text[copied..start]);
            out.push_str(&serde_json::to_string(to).expect("a string serializes"));
            copied = end;
        }
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(issues: &[Issue]) -> Vec<(&str, &str)> {
        issues
            .iter()
            .map(|i| (i.code, i.expression.as_str()))
            .collect()
    }

    #[test]
    fn lint_finds_what_a_value_hides() {
        let bytes = br#"{"resourceType":"Observation","status":"final","status":"final",
            "note":[],"code":{},"valueString":" ","subject":null,
            "component":[{"code":{"text":"a"},"interpretation":[null]}]}"#;
        assert_eq!(
            codes(&lint(bytes, "Observation")),
            vec![
                ("structure", "Observation.status"),
                ("structure", "Observation.note"),
                ("structure", "Observation.code"),
                ("value", "Observation.valueString"),
                ("structure", "Observation.subject"),
                ("structure", "Observation.component[0].interpretation"),
            ]
        );
    }

    #[test]
    fn null_beside_a_primitive_extension_is_allowed() {
        let bytes = br#"{"resourceType":"Patient","name":[{"given":["Ann",null],
            "_given":[null,{"extension":[{"url":"http://x","valueString":"y"}]}]}]}"#;
        assert!(lint(bytes, "Patient").is_empty());
    }

    #[test]
    fn present_keeps_the_clients_text_and_order() {
        let stored = br#"{"resourceType":"Observation","status":"final","meta":{"profile":["http://p"],"versionId":"9"},"valueQuantity":{"value":1.50,"unit":"mg"},"id":"client","zeta":12345678901234567890.0001,"extension":[{"url":"http://e","valueDecimal":1.00}]}"#;
        let served = present(stored, "abc", "2", "2026-01-01T00:00:00.000Z").unwrap();
        assert_eq!(
            served,
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000Z","profile":["http://p"]},"status":"final","valueQuantity":{"value":1.50,"unit":"mg"},"zeta":12345678901234567890.0001,"extension":[{"url":"http://e","valueDecimal":1.00}]}"#
        );
        assert!(present(b"[1]", "a", "1", "x").is_none());
        assert!(present(b"{\"a\":1} x", "a", "1", "x").is_none());
    }

    #[test]
    fn replace_strings_rewrites_whole_strings_only() {
        let text = r#"{"subject":{"reference":"urn:uuid:1"},"note":[{"text":"see urn:uuid:1"}],"x":"a\"urn:uuid:1\"","y":"urn:uuid:1"}"#;
        let map = vec![("urn:uuid:1".to_owned(), "Patient/p".to_owned())];
        assert_eq!(
            replace_strings(text, &map),
            r#"{"subject":{"reference":"Patient/p"},"note":[{"text":"see urn:uuid:1"}],"x":"a\"urn:uuid:1\"","y":"Patient/p"}"#
        );
    }
}
