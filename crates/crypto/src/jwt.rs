//! JWT client assertions, as SMART Backend Services uses them to ask for a token:
//! `header.payload.signature`, each part base64url without padding, the signature over the
//! ASCII bytes `header.payload`. Signed with the identity's own Ed25519 key (`EdDSA`, RFC
//! 8037), or with a client key the identity registered on chain as a JWK (`RS384`, `ES384`,
//! the two SMART requires; the header's `kid` names the key).
//!
//! Verification is the same on every node, so the chain can check an assertion
//! deterministically: Ed25519 strictly (RFC 8032 §5.1.7, canonical encodings, no small-order
//! keys), RSA PKCS#1 v1.5 and ECDSA P-384 by RustCrypto. The decoder takes a byte limit and
//! never allocates more than the input's size.

use crate::jwk::ClientJwk;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Longest assertion accepted anywhere (token endpoint, chain): room for an RSA-4096
/// signature (683 characters) beside the header and claims.
pub const ASSERTION_BYTES_MAX: usize = 2048;
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
    #[error("assertion algorithm must be EdDSA, RS384 or ES384")]
    Algorithm,
    #[error("assertion kid names no client key the identity registered for its alg")]
    UnknownKey,
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
    #[serde(default)]
    kid: Option<String>,
}

/// An assertion split and decoded, its signature not yet checked.
pub struct Parsed<'a> {
    pub claims: Claims,
    /// The header's `alg`: `EdDSA`, `RS384` or `ES384`.
    pub alg: String,
    pub kid: Option<String>,
    /// The signed bytes, `header.payload`.
    pub signed: &'a [u8],
    pub signature: Vec<u8>,
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
    /// The SMART app the person logs in to (SMART App Launch; RFC 9068 §2.2 names the claim):
    /// the session the assertion opens names it, so the trail shows which app read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The scopes the person approved for that app (`offline_access` among them makes the
    /// session long enough for refresh tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Split and decode an assertion without checking its signature: the caller learns whose
/// key to check it against.
pub fn parse(assertion: &str) -> Result<Parsed<'_>, JwtError> {
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
    if !matches!(header.alg.as_str(), "EdDSA" | "RS384" | "ES384") {
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
    Ok(Parsed {
        claims,
        alg: header.alg,
        kid: header.kid,
        signed: &assertion.as_bytes()[..header_len(assertion)],
        signature,
    })
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

/// Parse an assertion and check its signature, and that `sub` is `hex(identity)`: an
/// `EdDSA` assertion with the identity's Ed25519 key, an `RS384` or `ES384` one with the client
/// key of `client_keys` its `kid` names (with no `kid`, the one key of that algorithm, if the
/// identity registered exactly one). Expiry and audience are the caller's to check: the token
/// endpoint against its clock and URL, the chain against block time.
pub fn verify(
    assertion: &str,
    identity: &[u8; 32],
    client_keys: &[ClientJwk],
) -> Result<Claims, JwtError> {
    let parsed = parse(assertion)?;
    if parsed.claims.sub != hex_lower(identity) {
        return Err(JwtError::Subject);
    }
    if parsed.alg == "EdDSA" {
        let signature: [u8; 64] = parsed
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| JwtError::Encoding("signature"))?;
        let key = VerifyingKey::from_bytes(identity).map_err(|_| JwtError::Signature)?;
        key.verify_strict(parsed.signed, &Signature::from_bytes(&signature))
            .map_err(|_| JwtError::Signature)?;
        return Ok(parsed.claims);
    }
    let mut keys = client_keys.iter().filter(|k| k.key.alg() == parsed.alg);
    let key = match &parsed.kid {
        Some(kid) => keys.find(|k| &k.kid == kid),
        None => match (keys.next(), keys.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        },
    }
    .ok_or(JwtError::UnknownKey)?;
    if !key.key.verify(parsed.signed, &parsed.signature) {
        return Err(JwtError::Signature);
    }
    Ok(parsed.claims)
}

/// Parse an assertion an app signed for itself (`private_key_jwt`: `iss` and `sub` its
/// `client_id`) and check its signature with the app's registered `key`; a `kid`, when the
/// header names one, must be that key's.
pub fn verify_app(assertion: &str, client_id: &str, key: &ClientJwk) -> Result<Claims, JwtError> {
    let parsed = parse(assertion)?;
    if parsed.claims.sub != client_id {
        return Err(JwtError::Subject);
    }
    if parsed.alg != key.key.alg() || parsed.kid.as_ref().is_some_and(|kid| kid != &key.kid) {
        return Err(JwtError::UnknownKey);
    }
    if !key.key.verify(parsed.signed, &parsed.signature) {
        return Err(JwtError::Signature);
    }
    Ok(parsed.claims)
}

/// Sign a login assertion by the identity of `seed` (`iss` and `sub` its id in hex),
/// addressed to `aud`, issued at `now_s` and valid for `lifetime_s`: a Backend Services
/// client assertion (no `client_id`, no `scope`), or a person's SMART App Launch login,
/// whether the person's browser signs it or their home node with the key it keeps.
pub fn sign_assertion(
    seed: &[u8; 32],
    aud: &str,
    jti: String,
    now_s: u64,
    lifetime_s: u64,
    client_id: Option<String>,
    scope: Option<String>,
) -> String {
    let id = hex_lower(&public_key(seed));
    sign(
        seed,
        &Claims {
            iss: id.clone(),
            sub: id,
            aud: aud.to_string(),
            exp: now_s + lifetime_s,
            jti,
            iat: Some(now_s),
            nbf: None,
            client_id,
            scope,
        },
    )
}

/// Sign `claims` with an Ed25519 seed: what a client does to ask for a token.
pub fn sign(seed: &[u8; 32], claims: &Claims) -> String {
    sign_token(seed, None, claims)
}

/// Sign any JSON claims with an Ed25519 seed, the header naming `kid` when given: a node's
/// OpenID Connect ID token, published with its key at the node's JWKS.
pub fn sign_token(seed: &[u8; 32], kid: Option<&str>, claims: &impl Serialize) -> String {
    let header = match kid {
        Some(kid) => serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
        None => serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
    };
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
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
            client_id: None,
            scope: None,
        }
    }

    #[test]
    fn signed_assertions_verify_and_altered_ones_do_not() {
        let seed = [7u8; 32];
        let key = public_key(&seed);
        let jwt = sign(&seed, &claims(&hex_lower(&key)));
        assert_eq!(verify(&jwt, &key, &[]).unwrap(), claims(&hex_lower(&key)));
        // Another key, another subject, a changed payload: all refused.
        let other = public_key(&[8u8; 32]);
        assert_eq!(verify(&jwt, &other, &[]), Err(JwtError::Subject));
        let forged = sign(&[8u8; 32], &claims(&hex_lower(&key)));
        assert_eq!(verify(&forged, &key, &[]), Err(JwtError::Signature));
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                exp: u64::MAX,
                ..claims(&hex_lower(&key))
            })
            .unwrap(),
        );
        parts[1] = &evil;
        assert_eq!(
            verify(&parts.join("."), &key, &[]),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn garbage_gets_a_named_error() {
        let key = public_key(&[7u8; 32]);
        assert_eq!(verify("a.b", &key, &[]), Err(JwtError::NotCompact));
        assert_eq!(verify("a.b.c.d", &key, &[]), Err(JwtError::NotCompact));
        assert_eq!(
            verify("!.b.c", &key, &[]),
            Err(JwtError::Encoding("header"))
        );
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            verify(&format!("{none}.e30.AA"), &key, &[]),
            Err(JwtError::Algorithm)
        );
        let long = "a".repeat(ASSERTION_BYTES_MAX + 1);
        assert_eq!(verify(&long, &key, &[]), Err(JwtError::TooLong(long.len())));
    }

    /// A compact JWT with `header`, our claims for `sub`, and the signature `sign` makes.
    fn signed_with(header: &str, sub: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(sub)).unwrap())
        );
        let signature = sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    #[test]
    fn rs384_and_es384_assertions_verify_with_the_registered_key_only() {
        use crate::jwk::{ClientJwk, ClientKey};
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        use rsa::traits::PublicKeyParts as _;
        let identity = public_key(&[7u8; 32]);
        let sub = hex_lower(&identity);

        let ec = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let point: [u8; 97] = ec
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .try_into()
            .unwrap();
        let ec_key = ClientJwk {
            kid: "ec-1".into(),
            key: ClientKey::Es384 { point },
        };
        let es384 = |header: &str| {
            signed_with(header, &sub, |bytes| {
                let signature: p384::ecdsa::Signature = ec.sign(bytes);
                signature.to_bytes().to_vec()
            })
        };

        let private =
            rsa::PrivateKey::new(&mut rsa::rand_core::UnwrapErr(getrandom::SysRng), 2048).unwrap();
        let public = private.to_public_key();
        let rsa_key = ClientJwk {
            kid: "rsa-1".into(),
            key: ClientKey::Rs384 {
                n: public.n_bytes().to_vec(),
                e: public.e_bytes().to_vec(),
            },
        };
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(private);
        let rs384 = signed_with(r#"{"alg":"RS384","kid":"rsa-1"}"#, &sub, |bytes| {
            signer.sign(bytes).to_vec()
        });

        let keys = [ec_key.clone(), rsa_key.clone()];
        let by_kid = es384(r#"{"alg":"ES384","kid":"ec-1"}"#);
        assert_eq!(verify(&by_kid, &identity, &keys).unwrap(), claims(&sub));
        assert_eq!(verify(&rs384, &identity, &keys).unwrap(), claims(&sub));
        // No kid: the one key of the algorithm.
        let no_kid = es384(r#"{"alg":"ES384"}"#);
        assert_eq!(verify(&no_kid, &identity, &keys).unwrap(), claims(&sub));
        // Unregistered, a kid of another algorithm, another identity: refused.
        assert_eq!(verify(&by_kid, &identity, &[]), Err(JwtError::UnknownKey));
        assert_eq!(
            verify(&by_kid, &identity, std::slice::from_ref(&rsa_key)),
            Err(JwtError::UnknownKey)
        );
        let other = public_key(&[8u8; 32]);
        assert_eq!(verify(&by_kid, &other, &keys), Err(JwtError::Subject));
        // A signature by another key under a registered kid.
        let ec_other = p384::ecdsa::SigningKey::from_slice(&[10u8; 48]).unwrap();
        let forged = signed_with(r#"{"alg":"ES384","kid":"ec-1"}"#, &sub, |bytes| {
            let signature: p384::ecdsa::Signature = ec_other.sign(bytes);
            signature.to_bytes().to_vec()
        });
        assert_eq!(verify(&forged, &identity, &keys), Err(JwtError::Signature));
        // An RS384 signature presented as ES384 under the RSA key's kid finds no key.
        let swapped = rs384.replacen(
            &URL_SAFE_NO_PAD.encode(r#"{"alg":"RS384","kid":"rsa-1"}"#),
            &URL_SAFE_NO_PAD.encode(r#"{"alg":"ES384","kid":"rsa-1"}"#),
            1,
        );
        assert_eq!(
            verify(&swapped, &identity, &keys),
            Err(JwtError::UnknownKey)
        );
    }
}
