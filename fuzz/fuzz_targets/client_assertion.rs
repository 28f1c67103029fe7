//! Untrusted client-key bytes (a `RegisterClientKey` payload) and client assertions (the token
//! endpoint, an `OpenSession` payload): parsing never panics, a parsed key's canonical bytes
//! have the layout `ehrchain_crypto::jwk` documents, and verifying any assertion against it
//! never panics either.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A length (u16, big-endian), that many bytes of JWK, then an assertion to check.
    let [a, b, rest @ ..] = data else {
        return;
    };
    let at = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
    let (jwk, assertion) = rest.split_at(at);
    let keys: Vec<_> = ehrchain_crypto::jwk::ClientJwk::parse(jwk)
        .into_iter()
        .collect();
    for key in &keys {
        let mut bytes = Vec::new();
        key.write(&mut bytes);
        assert_eq!(usize::from(bytes[0]), key.kid.len());
        assert!(!key.kid.is_empty() && key.kid.len() <= ehrchain_crypto::jwk::KID_BYTES_MAX);
    }
    if let Ok(text) = std::str::from_utf8(assertion) {
        let _ = ehrchain_crypto::jwt::verify(text, &[7; 32], &keys);
    }
});
