//! JWT client assertions signed with EdDSA (Ed25519, RFC 8037), as SMART Backend Services
//! uses them to ask for a token: `header.payload.signature`, each part base64url without
//! padding, the signature over the ASCII bytes `header.payload`.
//!
//! Verification is strict (RFC 8032 §5.1.7 with canonical encodings and no small-order
//! keys), the same on every node, so the chain can check an assertion deterministically. The
//! decoder takes a byte limit and never allocates more than the input's size.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Longest assertion accepted anywhere (token endpoint, chain).
pub const ASSERTION_BYTES_MAX: usize = 1024;
/// Longest `jti` accepted.
pub const JTI_BYTES_MAX: usize = 128;

/// Why an assertion was refused. Messages name the rule, never the token's contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("assertion too long: {0} bytes, limit {ASSERTION_BYTES_MAX}")]
    TooLong(usize),
    #[error("assertion is not a compact JWT (header.payload.signature)")]
    NotCompact,
    #[error("assertion {0} is not base64url JSON")]
    Encoding(&'static str),
    #[error("assertion algorithm must be EdDSA (Ed25519)")]
    Algorithm,
    #[error("assertion claim {0} is missing or invalid")]
    Claim(&'static str),
    #[error("assertion iss and sub must both be the identity's id")]
    Subject,
    #[error("assertion signature does not verify with the identity's key")]
    Signature,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// The claims of a client assertion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub jti: String,
    /// Issued at, seconds since the Unix epoch (optional in SMART Backend Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the Unix epoch (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Split and decode an assertion without checking its signature: the caller learns whose
/// key to check it against. Returns the claims, the signed bytes and the signature.
pub fn parse(assertion: &str) -> Result<(Claims, &[u8], Signature), JwtError> {
    if assertion.len() > ASSERTION_BYTES_MAX {
        return Err(JwtError::TooLong(assertion.len()));
    }
    let mut parts = assertion.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotCompact);
    };
    let header: Header = decode_json(header, "header")?;
    if header.alg != "EdDSA" {
        return Err(JwtError::Algorithm);
    }
    let claims: Claims = decode_json(payload, "payload")?;
    if claims.iss != claims.sub {
        return Err(JwtError::Subject);
    }
    if claims.jti.is_empty() || claims.jti.len() > JTI_BYTES_MAX {
        return Err(JwtError::Claim("jti"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Encoding("signature"))?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| JwtError::Encoding("signature"))?;
    let signed = &assertion.as_bytes()[..header_len(assertion)];
    Ok((claims, signed, Signature::from_bytes(&signature)))
}

fn header_len(assertion: &str) -> usize {
    assertion.rfind('.').expect("three parts were found")
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    part: &str,
    what: &'static str,
) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Encoding(what))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Encoding(what))
}

/// Parse an assertion and check its signature with `key` (an Ed25519 public key) and that
/// `sub` is `hex(key)`. Expiry and audience are the caller's to check: the token endpoint
/// against its clock and URL, the chain against block time.
pub fn verify(assertion: &str, key: &[u8; 32]) -> Result<Claims, JwtError> {
    let (claims, signed, signature) = parse(assertion)?;
    if claims.sub != hex_lower(key) {
        return Err(JwtError::Subject);
    }
    let key = VerifyingKey::from_bytes(key).map_err(|_| JwtError::Signature)?;
    key.verify_strict(signed, &signature)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

/// Sign `claims` with an Ed25519 seed: what a client does to ask for a token.
pub fn sign(seed: &[u8; 32], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signed = format!("{header}.{payload}");
    let signature = SigningKey::from_bytes(seed).sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// The Ed25519 public key of a seed (the identity id is its lowercase hex).
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Claims {
        Claims {
            iss: sub.into(),
            sub: sub.into(),
            aud: "http://127.0.0.1:8700/auth/token".into(),
            exp: 1_800_000_000,
            jti: "one".into(),
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn signed_assertions_verify_and_altered_ones_do_not() {
        let seed = [7u8; 32];
        let key = public_key(&seed);
        let jwt = sign(&seed, &claims(&hex_lower(&key)));
        assert_eq!(verify(&jwt, &key).unwrap(), claims(&hex_lower(&key)));
        // Another key, another subject, a changed payload: all refused.
        let other = public_key(&[8u8; 32]);
        assert_eq!(verify(&jwt, &other), Err(JwtError::Subject));
        let forged = sign(&[8u8; 32], &claims(&hex_lower(&key)));
        assert_eq!(verify(&forged, &key), Err(JwtError::Signature));
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                exp: u64::MAX,
                ..claims(&hex_lower(&key))
            })
            .unwrap(),
        );
        parts[1] = &evil;
        assert_eq!(verify(&parts.join("."), &key), Err(JwtError::Signature));
    }

    #[test]
    fn garbage_gets_a_named_error() {
        let key = public_key(&[7u8; 32]);
        assert_eq!(verify("a.b", &key), Err(JwtError::NotCompact));
        assert_eq!(verify("a.b.c.d", &key), Err(JwtError::NotCompact));
        assert_eq!(verify("!.b.c", &key), Err(JwtError::Encoding("header")));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            verify(&format!("{none}.e30.AA"), &key),
            Err(JwtError::Algorithm)
        );
        let long = "a".repeat(ASSERTION_BYTES_MAX + 1);
        assert_eq!(verify(&long, &key), Err(JwtError::TooLong(long.len())));
    }
}
