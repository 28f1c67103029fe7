//! JSON Patch (RFC 6902, [`apply`]) and JSON Merge Patch (RFC 7386, [`merge`]) applied to the
//! client's text, not to a parsed `Value`.
//!
//! A resource is split into a tree whose leaves keep their text exactly (`1.50` stays `1.50`,
//! members keep their order), the operations run on that tree, and it is written back
//! compactly. Values an operation adds are kept as the patch wrote them. Nothing an operation
//! carries is quoted in an error: the error names the operation's index and its rule.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Most operations one patch may carry.
pub const PATCH_OPERATIONS_MAX: usize = 1_000;

/// Why a patch could not be applied: the index of the operation, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub operation: Option<usize>,
    pub reason: String,
    /// A failed `test` (RFC 6902 5: the patch is not applied; FHIR answers 422 or 412).
    pub test_failed: bool,
}

impl PatchError {
    /// An error of the patch as a whole, not of one operation.
    fn whole(reason: String) -> Self {
        Self {
            operation: None,
            reason,
            test_failed: false,
        }
    }
}

/// The stored resource as a tree whose leaves keep their text.
fn document_tree(document: &str) -> Result<Node, PatchError> {
    let raw: Box<RawValue> = serde_json::from_str(document)
        .map_err(|_| PatchError::whole("the stored resource is not JSON".into()))?;
    tree(&raw, 0).map_err(PatchError::whole)
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.operation {
            Some(i) => write!(f, "patch operation {i}: {}", self.reason),
            None => write!(f, "patch: {}", self.reason),
        }
    }
}

enum Node {
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Leaf(Box<RawValue>),
}

fn tree(raw: &RawValue, depth: usize) -> Result<Node, String> {
    if depth > crate::JSON_DEPTH_MAX {
        return Err(format!(
            "nested deeper than {} levels",
            crate::JSON_DEPTH_MAX
        ));
    }
    let text = raw.get().trim_start();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members = members(text).map_err(|e| e.to_string())?;
            members
                .into_iter()
                .map(|(k, v)| Ok((k, tree(&v, depth + 1)?)))
                .collect::<Result<_, String>>()
                .map(Node::Object)
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            items
                .iter()
                .map(|v| tree(v, depth + 1))
                .collect::<Result<_, String>>()
                .map(Node::Array)
        }
        _ => Ok(Node::Leaf(raw.to_owned())),
    }
}

fn members(text: &str) -> Result<Vec<(String, Box<RawValue>)>, serde_json::Error> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    serde_json::Deserializer::from_str(text).deserialize_map(Members)
}

fn write(node: &Node, out: &mut String) {
    match node {
        Node::Leaf(raw) => out.push_str(raw.get().trim()),
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Node::Object(members) => {
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                out.push(':');
                write(value, out);
            }
            out.push('}');
        }
    }
}

fn to_value(node: &Node) -> serde_json::Value {
    let mut text = String::new();
    write(node, &mut text);
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn clone(node: &Node) -> Node {
    match node {
        Node::Leaf(raw) => Node::Leaf(raw.clone()),
        Node::Array(items) => Node::Array(items.iter().map(clone).collect()),
        Node::Object(members) => {
            Node::Object(members.iter().map(|(k, v)| (k.clone(), clone(v))).collect())
        }
    }
}

/// One operation as sent; `value` keeps its text.
#[derive(serde::Deserialize)]
struct Operation<'a> {
    op: String,
    path: String,
    from: Option<String>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

/// A JSON Pointer (RFC 6901) as its reference tokens.
fn pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rest = text
        .strip_prefix('/')
        .ok_or("a path must be empty or start with /")?;
    rest.split('/')
        .map(|token| {
            if token.contains('~') {
                let mut out = String::new();
                let mut chars = token.chars();
                while let Some(c) = chars.next() {
                    match (c, c == '~') {
                        (_, true) => match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => return Err("~ must be followed by 0 or 1".to_string()),
                        },
                        (c, false) => out.push(c),
                    }
                }
                Ok(out)
            } else {
                Ok(token.to_owned())
            }
        })
        .collect()
}

fn index(token: &str, len: usize, appending: bool) -> Result<usize, String> {
    if appending && token == "-" {
        return Ok(len);
    }
    if token.is_empty()
        || (token.len() > 1 && token.starts_with('0'))
        || !token.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("an array index must be a number without leading zeros".into());
    }
    let i: usize = token.parse().map_err(|_| "the array index is too large")?;
    let limit = if appending {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > limit || (!appending && len == 0) {
        return Err("the array index is out of range".into());
    }
    Ok(i)
}

fn get<'a>(mut node: &'a Node, path: &[String]) -> Result<&'a Node, String> {
    for token in path {
        node = match node {
            Node::Object(members) => members
                .iter()
                .find(|(k, _)| k == token)
                .map(|(_, v)| v)
                .ok_or("the path names no member")?,
            Node::Array(items) => &items[index(token, items.len(), false)?],
            Node::Leaf(_) => return Err("the path goes through a primitive".into()),
        };
    }
    Ok(node)
}

fn parent<'a>(root: &'a mut Node, path: &[String]) -> Result<(&'a mut Node, String), String> {
    let (last, init) = path
        .split_last()
        .ok_or("the operation cannot target the whole resource")?;
    let mut node = root;
    for token in init {
        node = match node {
            Node::Object(members) => members
                .iter_mut()
                .find(|(k, _)| k == token)
                .map(|(_, v)| v)
                .ok_or("the path names no member")?,
            Node::Array(items) => {
                let i = index(token, items.len(), false)?;
                &mut items[i]
            }
            Node::Leaf(_) => return Err("the path goes through a primitive".into()),
        };
    }
    Ok((node, last.clone()))
}

fn add(root: &mut Node, path: &[String], value: Node) -> Result<(), String> {
    let (target, last) = parent(root, path)?;
    match target {
        Node::Object(members) => match members.iter_mut().find(|(k, _)| *k == last) {
            Some((_, slot)) => *slot = value,
            None => members.push((last, value)),
        },
        Node::Array(items) => {
            let i = index(&last, items.len(), true)?;
            items.insert(i, value);
        }
        Node::Leaf(_) => return Err("the path goes through a primitive".into()),
    }
    Ok(())
}

fn remove(root: &mut Node, path: &[String]) -> Result<Node, String> {
    let (target, last) = parent(root, path)?;
    match target {
        Node::Object(members) => {
            let at = members
                .iter()
                .position(|(k, _)| *k == last)
                .ok_or("the path names no member")?;
            Ok(members.remove(at).1)
        }
        Node::Array(items) => {
            let i = index(&last, items.len(), false)?;
            Ok(items.remove(i))
        }
        Node::Leaf(_) => Err("the path goes through a primitive".into()),
    }
}

/// Apply the JSON Patch document `patch` to the JSON object `document`, and write the result
/// compactly with every untouched value's text as it was.
pub fn apply(document: &str, patch: &[u8]) -> Result<String, PatchError> {
    let whole = PatchError::whole;
    if patch.len() > crate::RESOURCE_SIZE_BYTES_MAX {
        return Err(whole(format!(
            "the patch is larger than {} bytes",
            crate::RESOURCE_SIZE_BYTES_MAX
        )));
    }
    let operations: Vec<Operation> = serde_json::from_slice(patch).map_err(|_| {
        whole("the body must be a JSON Patch: an array of {op, path, value?, from?}".into())
    })?;
    if operations.len() > PATCH_OPERATIONS_MAX {
        return Err(whole(format!(
            "a patch carries at most {PATCH_OPERATIONS_MAX} operations"
        )));
    }
    let mut root = document_tree(document)?;
    for (i, operation) in operations.iter().enumerate() {
        let at = |reason: String| PatchError {
            operation: Some(i),
            reason,
            test_failed: false,
        };
        let path = pointer(&operation.path).map_err(at)?;
        let value = || -> Result<Node, PatchError> {
            let raw = operation
                .value
                .ok_or_else(|| at(format!("{} needs a value", operation.op)))?;
            tree(raw, path.len()).map_err(at)
        };
        let from = || -> Result<Vec<String>, PatchError> {
            let from = operation
                .from
                .as_deref()
                .ok_or_else(|| at(format!("{} needs from", operation.op)))?;
            pointer(from).map_err(at)
        };
        match operation.op.as_str() {
            "add" => add(&mut root, &path, value()?).map_err(at)?,
            "remove" => {
                remove(&mut root, &path).map_err(at)?;
            }
            "replace" => {
                get(&root, &path).map_err(at)?;
                let value = value()?;
                if path.is_empty() {
                    root = value;
                } else {
                    let (target, last) = parent(&mut root, &path).map_err(at)?;
                    match target {
                        Node::Object(members) => {
                            if let Some((_, slot)) = members.iter_mut().find(|(k, _)| *k == last) {
                                *slot = value;
                            }
                        }
                        Node::Array(items) => {
                            let i = index(&last, items.len(), false).map_err(at)?;
                            items[i] = value;
                        }
                        Node::Leaf(_) => {}
                    }
                }
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(at("a value cannot move into itself".into()));
                }
                let moved = remove(&mut root, &from).map_err(at)?;
                add(&mut root, &path, moved).map_err(at)?;
            }
            "copy" => {
                let copied = clone(get(&root, &from()?).map_err(at)?);
                add(&mut root, &path, copied).map_err(at)?;
            }
            "test" => {
                let expected = to_value(&value()?);
                if to_value(get(&root, &path).map_err(at)?) != expected {
                    return Err(PatchError {
                        operation: Some(i),
                        reason: "test failed: the value differs".into(),
                        test_failed: true,
                    });
                }
            }
            _ => {
                return Err(at(
                    "op must be add, remove, replace, move, copy or test".into()
                ));
            }
        }
    }
    let mut out = String::with_capacity(document.len());
    write(&root, &mut out);
    Ok(out)
}

/// Apply the JSON Merge Patch `patch` (an object: a member set to `null` is removed, an object
/// merged into an object member, any other value replaces) to the JSON object `document`,
/// keeping every untouched value's text as it was. fhirpy and Aidbox send this shape.
pub fn merge(document: &str, patch: &[u8]) -> Result<String, PatchError> {
    let whole = PatchError::whole;
    if patch.len() > crate::RESOURCE_SIZE_BYTES_MAX {
        return Err(whole(format!(
            "the patch is larger than {} bytes",
            crate::RESOURCE_SIZE_BYTES_MAX
        )));
    }
    let patch: Box<RawValue> = serde_json::from_slice(patch)
        .map_err(|_| whole("the body must be a JSON object (a merge patch)".into()))?;
    let patch = tree(&patch, 0).map_err(whole)?;
    if !matches!(patch, Node::Object(_)) {
        return Err(whole("a merge patch is a JSON object".into()));
    }
    let mut root = document_tree(document)?;
    merge_into(&mut root, patch);
    let mut out = String::with_capacity(document.len());
    write(&root, &mut out);
    Ok(out)
}

fn is_null(node: &Node) -> bool {
    matches!(node, Node::Leaf(raw) if raw.get().trim() == "null")
}

fn merge_into(target: &mut Node, patch: Node) {
    let Node::Object(changes) = patch else {
        *target = patch;
        return;
    };
    if !matches!(target, Node::Object(_)) {
        *target = Node::Object(Vec::new());
    }
    let Node::Object(members) = target else {
        unreachable!("made an object above")
    };
    for (key, change) in changes {
        let at = members.iter().position(|(k, _)| *k == key);
        match (at, is_null(&change)) {
            (Some(i), true) => {
                members.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_into(&mut members[i].1, change),
            (None, false) => {
                let mut fresh = Node::Leaf(RawValue::from_string("null".into()).expect("null"));
                merge_into(&mut fresh, change);
                members.push((key, fresh));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"resourceType":"Observation","status":"preliminary","valueQuantity":{"value":1.50,"unit":"mg"},"note":[{"text":"a"}]}"#;

    #[test]
    fn operations_keep_the_text_they_do_not_touch() {
        let patch = br#"[
            {"op":"replace","path":"/status","value":"final"},
            {"op":"add","path":"/note/-","value":{"text":"b","x":2.10}},
            {"op":"add","path":"/note/0","value":{"text":"first"}},
            {"op":"test","path":"/valueQuantity/value","value":1.5},
            {"op":"copy","from":"/valueQuantity/unit","path":"/valueQuantity/code"},
            {"op":"move","from":"/note/2","path":"/extra"},
            {"op":"remove","path":"/extra"}
        ]"#;
        let out = apply(DOC, patch).unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":1.50,"unit":"mg","code":"mg"},"note":[{"text":"first"},{"text":"a"}]}"#
        );
    }

    #[test]
    fn a_broken_operation_is_named_by_index() {
        for (patch, index) in [
            (&br#"[{"op":"remove","path":"/nothing"}]"#[..], Some(0)),
            (br#"[{"op":"replace","path":"/status","value":"x"},{"op":"add","path":"/note/5","value":1}]"#, Some(1)),
            (br#"[{"op":"jump","path":"/status"}]"#, Some(0)),
            (br#"[{"op":"add","path":"status","value":1}]"#, Some(0)),
            (br#"[{"op":"move","from":"/note","path":"/note/0"}]"#, Some(0)),
            (br#"{"op":"add"}"#, None),
        ] {
            let error = apply(DOC, patch).unwrap_err();
            assert_eq!(error.operation, index, "{error}");
        }
        let failed =
            apply(DOC, br#"[{"op":"test","path":"/status","value":"final"}]"#).unwrap_err();
        assert!(failed.test_failed);
        assert!(!failed.to_string().contains("final"));
    }

    #[test]
    fn a_merge_patch_sets_removes_and_merges() {
        let out = merge(
            DOC,
            br#"{"status":"final","valueQuantity":{"unit":null,"code":"mg"},"note":[{"text":"z"}],"issued":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":1.50,"code":"mg"},"note":[{"text":"z"}],"issued":"2026-01-01T00:00:00Z"}"#
        );
        assert!(merge(DOC, b"[1]").is_err());
        assert!(merge(DOC, b"{").is_err());
    }

    #[test]
    fn pointers_unescape() {
        assert_eq!(pointer("/a~1b/c~0d").unwrap(), ["a/b", "c~d"]);
        assert!(pointer("/a~2").is_err());
        let out = apply(
            r#"{"a/b":1}"#,
            br#"[{"op":"replace","path":"/a~1b","value":2}]"#,
        )
        .unwrap();
        assert_eq!(out, r#"{"a/b":2}"#);
    }
}
