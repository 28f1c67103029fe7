//! SMART Backend Services login: the client assertion (an EdDSA JWT) that `POST
//! /fhir/auth/token` exchanges for a bearer token. The caller gives the time, so the same code
//! runs where there is no system clock (the browser passes `Date.now()`).

use crate::{Error, Transport};

/// How long an assertion is valid for.
pub const ASSERTION_LIFETIME_S: u64 = 240;

/// Sign a client assertion for the identity of `seed`, addressed to `token_url`, issued at
/// `now_s` (seconds since the Unix epoch).
pub fn client_assertion(seed: &[u8; 32], token_url: &str, now_s: u64) -> Result<String, Error> {
    let id = hex::encode(ehrchain_crypto::jwt::public_key(seed));
    Ok(ehrchain_crypto::jwt::sign(
        seed,
        &ehrchain_crypto::jwt::Claims {
            iss: id.clone(),
            sub: id,
            aud: token_url.to_string(),
            exp: now_s + ASSERTION_LIFETIME_S,
            jti: hex::encode(crate::random16()?),
            iat: Some(now_s),
            nbf: None,
        },
    ))
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
