//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305,
//! through the pure-Rust `hpke` crate: the path for targets without AWS-LC (the browser,
//! `wasm32-unknown-unknown`). Same functions and the same bytes as `hpke_lc`;
//! `tests::each_path_opens_what_the_other_seals` in `hpke_lc` checks it on every native run.

use hpke::{
    Deserializable as _, OpModeR, OpModeS, Serializable as _, aead::ChaCha20Poly1305,
    kdf::HkdfSha256, kem::X25519HkdfSha256,
};

type Kem = X25519HkdfSha256;

/// Seal `plaintext` for `recipient`: the encapsulated key and the ciphertext.
pub fn seal(recipient: &[u8; 32], info: &[u8], plaintext: &[u8]) -> Option<([u8; 32], Vec<u8>)> {
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient).ok()?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &public,
        info,
        plaintext,
        &[],
    )
    .ok()?;
    let enc: [u8; 32] = encapped.to_bytes().as_slice().try_into().ok()?;
    Some((enc, ciphertext))
}

/// Open what `seal` sealed, with the recipient's secret key.
pub fn open(secret: &[u8; 32], enc: &[u8; 32], info: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret).ok()?;
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &secret,
        &encapped,
        info,
        ciphertext,
        &[],
    )
    .ok()
}
