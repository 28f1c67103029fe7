//! Untrusted WebAuthn answers (`/auth/enrol/finish`, `/auth/authorize/passkey`): client data
//! JSON, authenticator data, a credential's public key and a signature, as a browser (or an
//! attacker) sends them. Checking a registration or a login never panics, whatever the
//! bytes, and a registration it accepts holds an ES256 key within the size limit.
#![no_main]
use ehrchain_crypto::webauthn::{Credential, ES256, PUBLIC_KEY_BYTES_MAX, RelyingParty};
use libfuzzer_sys::fuzz_target;

const RP: RelyingParty<'static> = RelyingParty {
    id: "localhost",
    origin: "http://localhost:8080",
};
const CHALLENGE: [u8; 32] = [7; 32];

/// A length (u16, big-endian), then that many bytes (cut at the input's end).
fn part(data: &[u8]) -> (&[u8], &[u8]) {
    let [a, b, rest @ ..] = data else {
        return (&[], &[]);
    };
    let at = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
    rest.split_at(at)
}

fuzz_target!(|data: &[u8]| {
    let (client_data, rest) = part(data);
    let (authenticator_data, rest) = part(rest);
    let (credential_id, rest) = part(rest);
    let (public_key, signature) = part(rest);
    if let Ok(credential) = RP.register(
        &CHALLENGE,
        client_data,
        authenticator_data,
        credential_id,
        public_key,
        ES256,
    ) {
        assert!(credential.public_key.len() <= PUBLIC_KEY_BYTES_MAX);
        let _ = RP.authenticate(&credential, &CHALLENGE, client_data, authenticator_data, signature);
    }
    let stored = Credential {
        public_key: public_key.to_vec(),
        counter: 1,
    };
    let _ = RP.authenticate(&stored, &CHALLENGE, client_data, authenticator_data, signature);
});
