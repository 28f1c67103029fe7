//! Untrusted FHIR JSON: validation never panics, and every issue names an element path
//! without echoing the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ehrchain_fhir::validate(data) {
        Ok(resource) => assert!(resource.json.is_object()),
        Err(issues) => assert!(!issues.is_empty()),
    }
});
