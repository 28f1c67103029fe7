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

/// What a walked value was, for its parent to judge: `null` is refused as a member but may be
/// an item of a primitive array paired with its `_name` extensions array
/// (`"given": ["a", null], "_given": [null, {...}]`), the one place FHIR JSON allows it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Null,
    /// An array with at least one `null` item.
    ArrayWithNull,
    Other,
}

const NULL_IN_ARRAY: &str = "null is allowed in an array only beside its primitive's _ array";

struct Walk<'a> {
    path: String,
    issues: &'a RefCell<Vec<Issue>>,
}

impl Walk<'_> {
    fn issue(&self, code: &'static str, what: &str) {
        issue(self.issues, code, &self.path, what);
    }
    fn child(&self, path: String) -> Self {
        Walk {
            path,
            issues: self.issues,
        }
    }
}

fn issue(issues: &RefCell<Vec<Issue>>, code: &'static str, path: &str, what: &str) {
    issues
        .borrow_mut()
        .push(Issue::new(code, path.to_owned(), what.to_owned()));
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Shape;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_str<E>(self, text: &str) -> Result<Shape, E> {
        if text.trim().is_empty() {
            self.issue("value", "a string must have non-whitespace content");
        }
        Ok(Shape::Other)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut index = 0usize;
        let mut nulls = false;
        while let Some(item) =
            seq.next_element_seed(self.child(format!("{}[{index}]", self.path)))?
        {
            match item {
                Shape::Null => nulls = true,
                Shape::ArrayWithNull => issue(
                    self.issues,
                    "structure",
                    &format!("{}[{index}]", self.path),
                    NULL_IN_ARRAY,
                ),
                Shape::Other => {}
            }
            index += 1;
        }
        if index == 0 {
            self.issue("structure", "an array must not be empty");
        }
        Ok(if nulls {
            Shape::ArrayWithNull
        } else {
            Shape::Other
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut keys = BTreeSet::new();
        // Arrays holding `null`, judged once every key of this object is known.
        let mut with_null = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !keys.insert(key.clone()) {
                issue(
                    self.issues,
                    "structure",
                    &path,
                    "a key appears twice in one object",
                );
            }
            match map.next_value_seed(self.child(path.clone()))? {
                Shape::Null => issue(
                    self.issues,
                    "structure",
                    &path,
                    "null is not a value in FHIR JSON",
                ),
                Shape::ArrayWithNull => with_null.push((key, path)),
                Shape::Other => {}
            }
        }
        if keys.is_empty() {
            self.issue("structure", "an object must not be empty");
        }
        for (key, path) in with_null {
            let partner = match key.strip_prefix('_') {
                Some(primitive) => primitive.to_owned(),
                None => format!("_{key}"),
            };
            if !keys.contains(&partner) {
                issue(self.issues, "structure", &path, NULL_IN_ARRAY);
            }
        }
        Ok(Shape::Other)
    }
}

/// What `serde_json::Value` cannot show of a document: duplicate keys, `null` (except beside
/// a primitive's extensions), empty arrays, objects and strings. Paths start at `root` (the
/// resource type). Malformed JSON gives no findings here; the parser reports it.
pub fn lint(bytes: &[u8], root: &str) -> Vec<Issue> {
    let issues = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let walk = Walk {
        path: root.to_owned(),
        issues: &issues,
    };
    // A top level that is not an object is refused by `validate` itself.
    match walk.deserialize(&mut deserializer) {
        Err(_) => Vec::new(),
        Ok(_) => issues.into_inner(),
    }
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
