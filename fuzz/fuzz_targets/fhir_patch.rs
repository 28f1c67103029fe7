//! Untrusted JSON Patch bodies against stored resources: applying never panics, and a patch
//! that applies gives JSON that parses. The input is a resource and a patch, split at the first
//! 0xFF byte (which valid UTF-8 JSON never holds); without one, the patch runs on a small
//! Observation.
#![no_main]
use libfuzzer_sys::fuzz_target;

const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"a","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50},"note":[{"text":"a"},{"text":"b"}]}"#;

fuzz_target!(|data: &[u8]| {
    let (document, patch) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => match std::str::from_utf8(&data[..at]) {
            Ok(text)
                if serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object()) =>
            {
                (text, &data[at + 1..])
            }
            _ => return,
        },
        None => (OBSERVATION, data),
    };
    match ehrchain_fhir::patch::apply(document, patch) {
        Ok(out) => {
            serde_json::from_str::<serde_json::Value>(&out).expect("a patched resource parses");
        }
        Err(error) => assert!(!error.reason.is_empty()),
    }
});
