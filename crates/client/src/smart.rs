//! SMART Backend Services login: the client assertion (an EdDSA JWT) that `POST
//! /fhir/auth/token` exchanges for a bearer token. The caller gives the time, so the same code
//! runs where there is no system clock (the browser passes `Date.now()`).

use crate::{Error, Transport};

/// How long an assertion is valid for.
pub const ASSERTION_LIFETIME_S: u64 = 240;

/// Sign a client assertion for the identity of `seed`, addressed to `token_url`, issued at
/// `now_s` (seconds since the Unix epoch).
pub fn client_assertion(seed: &[u8; 32], token_url: &str, now_s: u64) -> Result<String, Error> {
    let jti = hex::encode(crate::random16()?);
    Ok(sign_assertion(seed, token_url, jti, now_s, None, None))
}

/// Sign an assertion by the identity of `seed` (`iss` and `sub` its id), valid for
/// [`ASSERTION_LIFETIME_S`] from `now_s`.
fn sign_assertion(
    seed: &[u8; 32],
    token_url: &str,
    jti: String,
    now_s: u64,
    client_id: Option<String>,
    scope: Option<String>,
) -> String {
    ehrchain_crypto::jwt::sign_assertion(
        seed,
        token_url,
        jti,
        now_s,
        ASSERTION_LIFETIME_S,
        client_id,
        scope,
    )
}

/// Sign the login of a person to a SMART app (SMART App Launch, a self-held key): the
/// assertion answers the node's `challenge` (its `jti`), names the app and the scopes the
/// person approved, and is addressed to `token_url`. The node commits it as the person's
/// on-chain session, so the trail names them and the app.
pub fn app_login_assertion(
    seed: &[u8; 32],
    token_url: &str,
    challenge: &str,
    client_id: &str,
    scope: &str,
    now_s: u64,
) -> String {
    sign_assertion(
        seed,
        token_url,
        challenge.to_string(),
        now_s,
        Some(client_id.to_string()),
        Some(scope.to_string()),
    )
}

/// The identity id of a seed: the lowercase hex of its Ed25519 public key.
pub fn identity_of_seed(seed: &[u8; 32]) -> String {
    hex::encode(ehrchain_crypto::jwt::public_key(seed))
}

/// The X25519 public key (lowercase hex) that data keys are wrapped for, of a seed.
pub fn encryption_key_of_seed(seed: &[u8; 32]) -> String {
    hex::encode(ehrchain_crypto::EncryptionKey::from_seed(seed).public().0)
}

/// The seed in a key file's text: 64 hex characters (`ehrchain` key files) or 43 base64url
/// ones (`identities.json`'s `private_key`), surrounding whitespace ignored.
pub fn seed_from_key_text(text: &str) -> Result<[u8; 32], Error> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::Protocol("a key file holds 32 bytes as hex or base64url".into()))
}

/// The form fields of the token request that carries `assertion`.
pub fn token_request(assertion: &str) -> [(&'static str, &str); 3] {
    [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ]
}

/// Log in at the node whose API is `api` as the identity of `seed`, at `now_s`: discover its
/// token endpoint (`/.well-known/smart-configuration`), sign an assertion for it and exchange
/// the assertion for a bearer token.
pub fn login(
    transport: &impl Transport,
    api: &str,
    seed: &[u8; 32],
    now_s: u64,
) -> Result<String, Error> {
    let api = api.trim_end_matches('/');
    let config = transport.get_json(&format!("{api}/.well-known/smart-configuration"))?;
    let token_url = config["token_endpoint"]
        .as_str()
        .ok_or_else(|| Error::Protocol("the node advertises no token endpoint".into()))?;
    let assertion = client_assertion(seed, token_url, now_s)?;
    let answer = transport.post_form(token_url, &token_request(&assertion))?;
    answer["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Protocol("the token answer has no access_token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_verifies_for_its_key_and_audience() {
        let seed = [4; 32];
        let text = client_assertion(&seed, "https://node/fhir/auth/token", 1_000).unwrap();
        let claims =
            ehrchain_crypto::jwt::verify(&text, &ehrchain_crypto::jwt::public_key(&seed), &[])
                .unwrap();
        assert_eq!(claims.aud, "https://node/fhir/auth/token");
        assert_eq!(claims.exp, 1_000 + ASSERTION_LIFETIME_S);
        assert!(
            ehrchain_crypto::jwt::verify(&text, &ehrchain_crypto::jwt::public_key(&[5; 32]), &[])
                .is_err()
        );
    }
}
