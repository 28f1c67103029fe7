//! Untrusted FHIR JSON: validation never panics, and every issue names an element path
//! without echoing the input. Serving it (`raw::present`) gives a JSON object with the
//! server's id and version, and rewriting a Bundle's references (`raw::replace_strings`)
//! keeps valid JSON valid.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ehrchain_fhir::validate(data) {
        Ok(resource) => assert!(resource.json.is_object()),
        Err(issues) => assert!(!issues.is_empty()),
    }
    // Only what parses is ever stored (a number beyond f64's range, say, does not).
    let parses = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    if parses
        && let Some(served) = ehrchain_fhir::raw::present(data, "x1", "2", "2026-01-01T00:00:00Z")
    {
        let value: serde_json::Value = serde_json::from_str(&served).expect("served JSON parses");
        assert_eq!(value["id"], "x1");
        assert_eq!(value["meta"]["versionId"], "2");
    }
    if parses && let Ok(text) = std::str::from_utf8(data) {
        let rewritten = ehrchain_fhir::raw::replace_strings(
            text,
            &[("urn:uuid:1".to_owned(), "Patient/\"p\"".to_owned())],
        );
        assert!(serde_json::from_str::<serde_json::Value>(&rewritten).is_ok());
    }
});
