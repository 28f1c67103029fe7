//! Client keys as JWKs (RFC 7517, RFC 7518 §6): the RSA and P-384 public keys a SMART Backend
//! Services client signs its assertions with (RS384, ES384), besides an identity's own
//! Ed25519 key.
//!
//! The chain holds each key in a canonical form, so every validator verifies alike:
//!
//! ```text
//! key:  kid_len u8 | kid [kid_len] | tag u8 | body
//! body: tag 1 (RSA):   n_len u16 | n [n_len] (big-endian, no leading zero) | e_len u8 | e [e_len]
//!       tag 2 (P-384): 0x04 | x [48] | y [48]   (SEC1 uncompressed point)
//! ```
//!
//! A JWK is refused unless it is a public signing key we verify: RSA of 2048 to 4096 bits, or
//! a point on P-384; `alg`, `use` and `key_ops` must agree with that when given; and a JWK that
//! carries any private member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`) is refused whole,
//! so a private key pasted by mistake never reaches the chain.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

/// Longest JWK text accepted (an RSA-4096 public JWK is about 800 bytes).
pub const JWK_BYTES_MAX: usize = 2_048;
/// Longest key id.
pub const KID_BYTES_MAX: usize = 64;
/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A).
pub const RSA_BITS_MIN: usize = 2_048;
/// Largest RSA modulus accepted, in bits (bounds the cost of one verification).
pub const RSA_BITS_MAX: usize = 4_096;

/// A client's public key, by algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKey {
    /// RSASSA-PKCS1-v1_5 with SHA-384 (`RS384`): modulus and exponent, big-endian.
    Rs384 { n: Vec<u8>, e: Vec<u8> },
    /// ECDSA on P-384 with SHA-384 (`ES384`): the SEC1 uncompressed point.
    Es384 { point: [u8; 97] },
}

/// A registered client key with its `kid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientJwk {
    pub kid: String,
    pub key: ClientKey,
}

/// Why a JWK was refused. Messages name the rule, never the key's contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwkError {
    #[error("the JWK is longer than {JWK_BYTES_MAX} bytes")]
    TooLong,
    #[error("the JWK is not a JSON object")]
    NotJson,
    #[error("the JWK carries a private key member ({0}); register the public key only")]
    Private(&'static str),
    #[error("the JWK member {0} is missing or invalid")]
    Member(&'static str),
    #[error("the JWK must be an RSA key (RS384) or an EC key on P-384 (ES384)")]
    Unsupported,
    #[error("the RSA modulus must be {RSA_BITS_MIN} to {RSA_BITS_MAX} bits with a valid exponent")]
    RsaSize,
    #[error("the EC point is not on P-384")]
    Point,
}

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl ClientKey {
    /// The JWS `alg` this key verifies.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Rs384 { .. } => "RS384",
            Self::Es384 { .. } => "ES384",
        }
    }

    /// Whether `signature` (the JWS signature bytes) signs `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier as _;
        match self {
            Self::Rs384 { n, e } => {
                let Some(key) = rsa_key(n, e) else {
                    return false;
                };
                let Ok(signature) = rsa::pkcs1v15::Signature::try_from(signature) else {
                    return false;
                };
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key)
                    .verify(message, &signature)
                    .is_ok()
            }
            Self::Es384 { point } => {
                let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
                    return false;
                };
                // JWS ES384 signatures are r || s, 48 bytes each (RFC 7518 §3.4).
                let Ok(signature) = p384::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                p384::ecdsa::signature::Verifier::verify(&key, message, &signature).is_ok()
            }
        }
    }
}

impl ClientJwk {
    /// Parse and check a public JWK (see the module notes for what is refused).
    pub fn parse(text: &[u8]) -> Result<Self, JwkError> {
        if text.len() > JWK_BYTES_MAX {
            return Err(JwkError::TooLong);
        }
        let object: Map<String, Value> =
            serde_json::from_slice(text).map_err(|_| JwkError::NotJson)?;
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
            return Err(JwkError::Private(member));
        }
        let text_of = |name: &'static str| -> Result<Option<&str>, JwkError> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(JwkError::Member(name)),
            }
        };
        let kid = text_of("kid")?.ok_or(JwkError::Member("kid"))?;
        if kid.is_empty() || kid.len() > KID_BYTES_MAX || !kid.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(JwkError::Member("kid"));
        }
        if text_of("use")?.is_some_and(|u| u != "sig") {
            return Err(JwkError::Member("use"));
        }
        if let Some(ops) = object.get("key_ops")
            && !ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op == "verify"))
        {
            return Err(JwkError::Member("key_ops"));
        }
        let bytes = |name: &'static str| -> Result<Vec<u8>, JwkError> {
            let text = text_of(name)?.ok_or(JwkError::Member(name))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| JwkError::Member(name))
        };
        let key = match text_of("kty")? {
            Some("RSA") => {
                let (n, e) = (bytes("n")?, bytes("e")?);
                // The canonical form: no leading zero octets (RFC 7518 §6.3.1.1).
                if n.first() == Some(&0) || e.first() == Some(&0) || e.len() > 8 {
                    return Err(JwkError::RsaSize);
                }
                rsa_key(&n, &e).ok_or(JwkError::RsaSize)?;
                ClientKey::Rs384 { n, e }
            }
            Some("EC") => {
                if text_of("crv")? != Some("P-384") {
                    return Err(JwkError::Unsupported);
                }
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 48 {
                    return Err(JwkError::Member("x"));
                }
                if y.len() != 48 {
                    return Err(JwkError::Member("y"));
                }
                let mut point = [0u8; 97];
                point[0] = 4;
                point[1..49].copy_from_slice(&x);
                point[49..].copy_from_slice(&y);
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| JwkError::Point)?;
                ClientKey::Es384 { point }
            }
            _ => return Err(JwkError::Unsupported),
        };
        if text_of("alg")?.is_some_and(|alg| alg != key.alg()) {
            return Err(JwkError::Member("alg"));
        }
        Ok(Self {
            kid: kid.to_string(),
            key,
        })
    }

    /// The canonical bytes of this key (module notes): what the state root commits to.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kid.len() as u8);
        out.extend_from_slice(self.kid.as_bytes());
        match &self.key {
            ClientKey::Rs384 { n, e } => {
                out.push(1);
                out.extend_from_slice(&(n.len() as u16).to_be_bytes());
                out.extend_from_slice(n);
                out.push(e.len() as u8);
                out.extend_from_slice(e);
            }
            ClientKey::Es384 { point } => {
                out.push(2);
                out.extend_from_slice(point);
            }
        }
    }
}

fn rsa_key(n: &[u8], e: &[u8]) -> Option<rsa::PublicKey> {
    let n = rsa::BoxedUint::from_be_slice_vartime(n);
    let e = rsa::BoxedUint::from_be_slice_vartime(e);
    rsa::PublicKey::new_with_size_limits(n, e, RSA_BITS_MIN..=RSA_BITS_MAX).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_jwk(extra: &str) -> String {
        // The P-384 generator: a point on the curve.
        let x = hex::decode("aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7").unwrap();
        let y = hex::decode("3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f").unwrap();
        format!(
            r#"{{"kty":"EC","crv":"P-384","kid":"k1","x":"{}","y":"{}"{extra}}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        )
    }

    #[test]
    fn a_p384_public_key_parses_and_anything_else_gets_a_named_error() {
        let key = ClientJwk::parse(ec_jwk(r#","alg":"ES384","use":"sig""#).as_bytes()).unwrap();
        assert_eq!(key.kid, "k1");
        assert_eq!(key.key.alg(), "ES384");
        let mut bytes = Vec::new();
        key.write(&mut bytes);
        assert_eq!(bytes.len(), 1 + 2 + 1 + 97);
        assert_eq!(
            ClientJwk::parse(ec_jwk(r#","d":"AA""#).as_bytes()),
            Err(JwkError::Private("d"))
        );
        assert_eq!(
            ClientJwk::parse(ec_jwk(r#","alg":"RS384""#).as_bytes()),
            Err(JwkError::Member("alg"))
        );
        assert_eq!(
            ClientJwk::parse(ec_jwk(r#","use":"enc""#).as_bytes()),
            Err(JwkError::Member("use"))
        );
        let off_curve = ec_jwk("").replace("\"y\":\"N", "\"y\":\"M");
        assert_eq!(ClientJwk::parse(off_curve.as_bytes()), Err(JwkError::Point));
        assert_eq!(ClientJwk::parse(b"[]"), Err(JwkError::NotJson));
        assert_eq!(
            ClientJwk::parse(br#"{"kty":"oct","kid":"a"}"#),
            Err(JwkError::Unsupported)
        );
        assert_eq!(
            ClientJwk::parse(br#"{"kty":"OKP","kid":"a"}"#),
            Err(JwkError::Unsupported)
        );
        assert_eq!(
            ClientJwk::parse(br#"{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}"#),
            Err(JwkError::RsaSize)
        );
        assert_eq!(
            ClientJwk::parse(&vec![b' '; JWK_BYTES_MAX + 1]),
            Err(JwkError::TooLong)
        );
    }
}
