//! Passkeys: the relying-party checks of WebAuthn Level 2 (§7.1 registration, §7.2
//! authentication) for ES256 credentials, the algorithm every platform authenticator offers.
//!
//! A credential is enrolled with `attestation: "none"`: the browser hands over the public key
//! as SPKI DER (`AuthenticatorAttestationResponse.getPublicKey()`), so no CBOR is parsed;
//! the credential id is checked against the attested credential data in the authenticator
//! data. A login checks the client data (type, challenge, origin), the authenticator data
//! (RP id hash, user present and verified, signature counter) and the P-256 signature over
//! `authenticatorData || SHA-256(clientDataJSON)`, by RustCrypto's `p256`.
//!
//! Every input has a byte limit; errors name the rule, never the bytes.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

/// Longest client data JSON read.
pub const CLIENT_DATA_BYTES_MAX: usize = 2_048;
/// Longest authenticator data read (attested credential data included, no extensions).
pub const AUTHENTICATOR_DATA_BYTES_MAX: usize = 1_024;
/// Longest credential id (WebAuthn: at most 1023 bytes; platform authenticators use 16–64).
pub const CREDENTIAL_ID_BYTES_MAX: usize = 255;
/// Longest SPKI public key read.
pub const PUBLIC_KEY_BYTES_MAX: usize = 256;
/// COSE algorithm id of ES256 (ECDSA P-256 with SHA-256).
pub const ES256: i64 = -7;

const FLAG_USER_PRESENT: u8 = 0x01;
const FLAG_USER_VERIFIED: u8 = 0x04;
const FLAG_ATTESTED: u8 = 0x40;

/// Why a passkey ceremony was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebAuthnError {
    #[error("{0} is longer than its limit")]
    TooLong(&'static str),
    #[error("client data is not the JSON of a {0} ceremony")]
    ClientData(&'static str),
    #[error("the challenge is not the one this node issued")]
    Challenge,
    #[error("the origin is not this node's")]
    Origin,
    #[error("authenticator data is malformed")]
    AuthenticatorData,
    #[error("the authenticator data is for another relying party")]
    RelyingParty,
    #[error("the user was not verified by the authenticator")]
    NotVerified,
    #[error("the credential id does not match the attested credential")]
    CredentialId,
    #[error("the public key is not an ES256 (P-256) SPKI key")]
    PublicKey,
    #[error("the signature does not verify with the enrolled passkey")]
    Signature,
    #[error("the signature counter went back: the passkey may be cloned")]
    Counter,
}

/// What a relying party expects of every ceremony.
pub struct RelyingParty<'a> {
    /// The RP id: the host of the node's public URL.
    pub id: &'a str,
    /// The origin pages run at: `scheme://host[:port]` of the node's public URL.
    pub origin: &'a str,
}

/// An enrolled ES256 passkey: its SPKI public key and last signature counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub public_key: Vec<u8>,
    pub counter: u32,
}

#[derive(serde::Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
}

impl RelyingParty<'_> {
    fn client_data(
        &self,
        json: &[u8],
        kind: &'static str,
        challenge: &[u8],
    ) -> Result<(), WebAuthnError> {
        if json.len() > CLIENT_DATA_BYTES_MAX {
            return Err(WebAuthnError::TooLong("client data"));
        }
        let data: ClientData =
            serde_json::from_slice(json).map_err(|_| WebAuthnError::ClientData(kind))?;
        if data.kind != kind {
            return Err(WebAuthnError::ClientData(kind));
        }
        if data.challenge != URL_SAFE_NO_PAD.encode(challenge) {
            return Err(WebAuthnError::Challenge);
        }
        if data.origin != self.origin {
            return Err(WebAuthnError::Origin);
        }
        Ok(())
    }

    /// The flags and counter of authenticator data for this RP, user present and verified.
    fn authenticator_data(&self, data: &[u8]) -> Result<(u8, u32), WebAuthnError> {
        if data.len() > AUTHENTICATOR_DATA_BYTES_MAX {
            return Err(WebAuthnError::TooLong("authenticator data"));
        }
        if data.len() < 37 {
            return Err(WebAuthnError::AuthenticatorData);
        }
        if data[..32] != Sha256::digest(self.id.as_bytes())[..] {
            return Err(WebAuthnError::RelyingParty);
        }
        let flags = data[32];
        if flags & FLAG_USER_PRESENT == 0 || flags & FLAG_USER_VERIFIED == 0 {
            return Err(WebAuthnError::NotVerified);
        }
        let counter = u32::from_be_bytes(data[33..37].try_into().expect("4 bytes"));
        Ok((flags, counter))
    }

    /// Check a registration (`navigator.credentials.create`) answering `challenge`: the
    /// enrolled credential, to store under `credential_id`.
    pub fn register(
        &self,
        challenge: &[u8],
        client_data_json: &[u8],
        authenticator_data: &[u8],
        credential_id: &[u8],
        public_key: &[u8],
        algorithm: i64,
    ) -> Result<Credential, WebAuthnError> {
        self.client_data(client_data_json, "webauthn.create", challenge)?;
        let (flags, counter) = self.authenticator_data(authenticator_data)?;
        if credential_id.is_empty() || credential_id.len() > CREDENTIAL_ID_BYTES_MAX {
            return Err(WebAuthnError::CredentialId);
        }
        // Attested credential data: AAGUID (16), id length (2), id, then the COSE key.
        let attested = authenticator_data.get(37..).unwrap_or_default();
        if flags & FLAG_ATTESTED == 0 || attested.len() < 18 {
            return Err(WebAuthnError::AuthenticatorData);
        }
        let len = usize::from(u16::from_be_bytes([attested[16], attested[17]]));
        if attested.get(18..18 + len) != Some(credential_id) {
            return Err(WebAuthnError::CredentialId);
        }
        if algorithm != ES256 || public_key.len() > PUBLIC_KEY_BYTES_MAX {
            return Err(WebAuthnError::PublicKey);
        }
        verifying_key(public_key)?;
        Ok(Credential {
            public_key: public_key.to_vec(),
            counter,
        })
    }

    /// Check a login (`navigator.credentials.get`) answering `challenge` with `credential`:
    /// its new signature counter, to store.
    pub fn authenticate(
        &self,
        credential: &Credential,
        challenge: &[u8],
        client_data_json: &[u8],
        authenticator_data: &[u8],
        signature: &[u8],
    ) -> Result<u32, WebAuthnError> {
        self.client_data(client_data_json, "webauthn.get", challenge)?;
        let (_, counter) = self.authenticator_data(authenticator_data)?;
        let key = verifying_key(&credential.public_key)?;
        let signature =
            p256::ecdsa::Signature::from_der(signature).map_err(|_| WebAuthnError::Signature)?;
        let mut signed = authenticator_data.to_vec();
        signed.extend_from_slice(&Sha256::digest(client_data_json));
        key.verify(&signed, &signature)
            .map_err(|_| WebAuthnError::Signature)?;
        // §7.2 step 21: a counter that does not grow (when either is non-zero) is a clone.
        if (counter != 0 || credential.counter != 0) && counter <= credential.counter {
            return Err(WebAuthnError::Counter);
        }
        Ok(counter)
    }
}

fn verifying_key(spki: &[u8]) -> Result<p256::ecdsa::VerifyingKey, WebAuthnError> {
    use p256::pkcs8::DecodePublicKey as _;
    p256::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|_| WebAuthnError::PublicKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer as _};

    const RP: RelyingParty<'static> = RelyingParty {
        id: "localhost",
        origin: "http://localhost:8080",
    };

    fn client_data(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"{kind}","challenge":"{}","origin":"{origin}","crossOrigin":false}}"#,
            URL_SAFE_NO_PAD.encode(challenge)
        )
        .into_bytes()
    }

    fn authenticator_data(rp: &str, flags: u8, counter: u32, credential: Option<&[u8]>) -> Vec<u8> {
        let mut data = Sha256::digest(rp.as_bytes()).to_vec();
        data.push(flags);
        data.extend_from_slice(&counter.to_be_bytes());
        if let Some(id) = credential {
            data.extend_from_slice(&[0; 16]);
            data.extend_from_slice(&(id.len() as u16).to_be_bytes());
            data.extend_from_slice(id);
            data.extend_from_slice(&[0xa5]); // the COSE key would follow: not read
        }
        data
    }

    fn spki(key: &SigningKey) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey as _;
        key.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    /// Seeds for `fuzz/fuzz_targets/webauthn_ceremony.rs` (its layout: four u16-prefixed
    /// parts, client data, authenticator data, credential id, public key, then a signature),
    /// a registration and a login that pass: `EHRCHAIN_FUZZ_SEEDS=fuzz/corpus cargo test -p
    /// ehrchain-crypto webauthn` (paths from the crate directory: `../../fuzz/corpus`).
    #[test]
    fn valid_ceremonies_seed_the_fuzz_corpus() {
        let Some(dir) = std::env::var_os("EHRCHAIN_FUZZ_SEEDS") else {
            return;
        };
        let key = SigningKey::from_slice(&[7; 32]).unwrap();
        let challenge = [7u8; 32];
        let id = [9u8; 32];
        let seed = |parts: [&[u8]; 4], tail: &[u8]| {
            let mut out = Vec::new();
            for part in parts {
                out.extend_from_slice(&(part.len() as u16).to_be_bytes());
                out.extend_from_slice(part);
            }
            out.extend_from_slice(tail);
            let path = std::path::Path::new(&dir).join("webauthn_ceremony");
            std::fs::create_dir_all(&path).unwrap();
            let name = hex::encode(&Sha256::digest(&out)[..20]);
            std::fs::write(path.join(name), out).unwrap();
        };
        let create = client_data("webauthn.create", &challenge, RP.origin);
        let attested = authenticator_data("localhost", 0x45, 0, Some(&id));
        RP.register(&challenge, &create, &attested, &id, &spki(&key), ES256)
            .unwrap();
        seed([&create, &attested, &id, &spki(&key)], &[]);
        let get = client_data("webauthn.get", &challenge, RP.origin);
        let data = authenticator_data("localhost", 0x05, 2, None);
        let mut signed = data.clone();
        signed.extend_from_slice(&Sha256::digest(&get));
        let signature: p256::ecdsa::Signature = key.sign(&signed);
        let stored = Credential {
            public_key: spki(&key),
            counter: 1,
        };
        let der = signature.to_der();
        assert_eq!(
            RP.authenticate(&stored, &challenge, &get, &data, der.as_bytes()),
            Ok(2)
        );
        seed([&get, &data, &id, &spki(&key)], der.as_bytes());
    }

    #[test]
    fn a_passkey_enrols_and_logs_in_once_per_challenge_and_counter() {
        let key = SigningKey::from_slice(&[7; 32]).unwrap();
        let id = [9u8; 32];
        let enrol = [1u8; 32];
        let credential = RP
            .register(
                &enrol,
                &client_data("webauthn.create", &enrol, RP.origin),
                &authenticator_data("localhost", 0x45, 0, Some(&id)),
                &id,
                &spki(&key),
                ES256,
            )
            .unwrap();
        // The credential id must be the attested one, the algorithm ES256, the user verified.
        assert_eq!(
            RP.register(
                &enrol,
                &client_data("webauthn.create", &enrol, RP.origin),
                &authenticator_data("localhost", 0x45, 0, Some(&id)),
                &[8; 32],
                &spki(&key),
                ES256,
            ),
            Err(WebAuthnError::CredentialId)
        );
        assert_eq!(
            RP.register(
                &enrol,
                &client_data("webauthn.create", &enrol, RP.origin),
                &authenticator_data("localhost", 0x41, 0, Some(&id)),
                &id,
                &spki(&key),
                ES256,
            ),
            Err(WebAuthnError::NotVerified)
        );
        let login = [2u8; 32];
        let sign = |data: &[u8], client: &[u8]| {
            let mut signed = data.to_vec();
            signed.extend_from_slice(&Sha256::digest(client));
            let signature: p256::ecdsa::Signature = key.sign(&signed);
            signature.to_der().as_bytes().to_vec()
        };
        let client = client_data("webauthn.get", &login, RP.origin);
        let data = authenticator_data("localhost", 0x05, 1, None);
        assert_eq!(
            RP.authenticate(&credential, &login, &client, &data, &sign(&data, &client)),
            Ok(1)
        );
        // Another challenge, origin, RP, a replayed counter or a bad signature: refused.
        assert_eq!(
            RP.authenticate(&credential, &[3; 32], &client, &data, &sign(&data, &client)),
            Err(WebAuthnError::Challenge)
        );
        let elsewhere = client_data("webauthn.get", &login, "http://evil.example");
        assert_eq!(
            RP.authenticate(
                &credential,
                &login,
                &elsewhere,
                &data,
                &sign(&data, &elsewhere)
            ),
            Err(WebAuthnError::Origin)
        );
        let other_rp = authenticator_data("evil.example", 0x05, 1, None);
        assert_eq!(
            RP.authenticate(
                &credential,
                &login,
                &client,
                &other_rp,
                &sign(&other_rp, &client)
            ),
            Err(WebAuthnError::RelyingParty)
        );
        let used = Credential {
            counter: 1,
            ..credential.clone()
        };
        assert_eq!(
            RP.authenticate(&used, &login, &client, &data, &sign(&data, &client)),
            Err(WebAuthnError::Counter)
        );
        let mut forged = sign(&data, &client);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(
            RP.authenticate(&credential, &login, &client, &data, &forged)
                .is_err()
        );
    }
}
