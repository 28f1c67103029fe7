//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305,
//! through AWS-LC's `EVP_HPKE` (already linked: the consensus engine's crypto uses AWS-LC).
//!
//! Why not the pure-Rust `hpke` crate for this: its X25519 is curve25519-dalek's portable
//! Montgomery ladder, and wrapping a data key for three readers cost the load generator most
//! of its time; AWS-LC runs X25519 on s2n-bignum's verified x86-64 (ADX) and AArch64 code.
//! The two implement the same RFC byte for byte, and `tests::interoperates_with_the_hpke_crate`
//! checks that each opens what the other seals. The `hpke` crate still derives keys from seeds
//! (`DeriveKeyPair`, which `EVP_HPKE` does not offer).

use aws_lc_sys as sys;
use zeroize::Zeroize as _;

struct Context(*mut sys::EVP_HPKE_CTX);

impl Context {
    fn new() -> Option<Self> {
        // SAFETY: allocation only; a null answer is checked.
        let ctx = unsafe { sys::EVP_HPKE_CTX_new() };
        (!ctx.is_null()).then_some(Self(ctx))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `EVP_HPKE_CTX_new` and is freed once; the free cleans up
        // the key schedule (secrets included).
        unsafe { sys::EVP_HPKE_CTX_free(self.0) }
    }
}

struct Key(*mut sys::EVP_HPKE_KEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `EVP_HPKE_KEY_new` and is freed once. The free cleanses
        // and releases the private-key buffer `EVP_HPKE_KEY_init` allocated. (An
        // `EVP_HPKE_KEY_zero` before it, as this once did, wipes the pointer to that buffer:
        // every unwrap then leaked the recipient's private key, uncleansed, in 72 bytes of heap.
        // The envelope_open fuzz target found it under LeakSanitizer.)
        unsafe { sys::EVP_HPKE_KEY_free(self.0) }
    }
}

/// Seal `plaintext` for `recipient`: the encapsulated key and the ciphertext with its tag.
pub fn seal(recipient: &[u8; 32], info: &[u8], plaintext: &[u8]) -> Option<([u8; 32], Vec<u8>)> {
    let ctx = Context::new()?;
    let mut enc = [0u8; 32];
    let mut enc_len = 0usize;
    let mut out = vec![0u8; plaintext.len() + 16];
    let mut out_len = 0usize;
    // SAFETY: every pointer is valid for the length passed with it; `enc` and `out` are
    // writable buffers of the stated capacities; the algorithm descriptors are static.
    let sealed = unsafe {
        sys::EVP_HPKE_CTX_setup_sender(
            ctx.0,
            enc.as_mut_ptr(),
            &mut enc_len,
            enc.len(),
            sys::EVP_hpke_x25519_hkdf_sha256(),
            sys::EVP_hpke_hkdf_sha256(),
            sys::EVP_hpke_chacha20_poly1305(),
            recipient.as_ptr(),
            recipient.len(),
            info.as_ptr(),
            info.len(),
        ) == 1
            && enc_len == enc.len()
            && sys::EVP_HPKE_CTX_seal(
                ctx.0,
                out.as_mut_ptr(),
                &mut out_len,
                out.len(),
                plaintext.as_ptr(),
                plaintext.len(),
                [].as_ptr(),
                0,
            ) == 1
    };
    if !sealed {
        return None;
    }
    out.truncate(out_len);
    Some((enc, out))
}

/// Open what [`seal`] sealed, with the recipient's X25519 private key.
pub fn open(secret: &[u8; 32], enc: &[u8; 32], info: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: allocation only; a null answer is checked.
    let key = Key(unsafe { sys::EVP_HPKE_KEY_new() });
    if key.0.is_null() {
        return None;
    }
    let ctx = Context::new()?;
    let mut out = vec![0u8; ciphertext.len()];
    let mut out_len = 0usize;
    // SAFETY: as in `seal`; `key` is initialised before the context uses it and outlives it.
    let opened = unsafe {
        sys::EVP_HPKE_KEY_init(
            key.0,
            sys::EVP_hpke_x25519_hkdf_sha256(),
            secret.as_ptr(),
            secret.len(),
        ) == 1
            && sys::EVP_HPKE_CTX_setup_recipient(
                ctx.0,
                key.0,
                sys::EVP_hpke_hkdf_sha256(),
                sys::EVP_hpke_chacha20_poly1305(),
                enc.as_ptr(),
                enc.len(),
                info.as_ptr(),
                info.len(),
            ) == 1
            && sys::EVP_HPKE_CTX_open(
                ctx.0,
                out.as_mut_ptr(),
                &mut out_len,
                out.len(),
                ciphertext.as_ptr(),
                ciphertext.len(),
                [].as_ptr(),
                0,
            ) == 1
    };
    if !opened {
        out.zeroize();
        return None;
    }
    out.truncate(out_len);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EncryptionKey;
    use hpke::{
        Deserializable as _, OpModeR, OpModeS, Serializable as _, aead::ChaCha20Poly1305,
        kdf::HkdfSha256, kem::X25519HkdfSha256,
    };

    /// The browser's path (pure Rust) and the node's (AWS-LC) each open what the other
    /// seals, for every data key and binding tried.
    #[test]
    fn each_path_opens_what_the_other_seals() {
        for seed in 0..32u8 {
            let key = EncryptionKey::from_seed(&[seed; 32]);
            let secret = key.secret_bytes();
            let info = [b"ehrchain wrap ".as_slice(), &[seed]].concat();
            let data_key = [seed.wrapping_mul(7); 32];
            let (enc, ciphertext) =
                crate::hpke_rust::seal(&key.public().0, &info, &data_key).unwrap();
            assert_eq!(open(&secret, &enc, &info, &ciphertext).unwrap(), data_key);
            let (enc, ciphertext) = seal(&key.public().0, &info, &data_key).unwrap();
            assert_eq!(
                crate::hpke_rust::open(&secret, &enc, &info, &ciphertext).unwrap(),
                data_key
            );
            assert!(crate::hpke_rust::open(&secret, &enc, b"other", &ciphertext).is_none());
        }
    }

    #[test]
    fn interoperates_with_the_hpke_crate() {
        let key = EncryptionKey::from_seed(&[7; 32]);
        let secret = key.secret_bytes();
        let info = b"ehrchain wrap test";
        let data_key = [42u8; 32];

        // AWS-LC seals, the hpke crate opens.
        let (enc, ciphertext) = seal(&key.public().0, info, &data_key).unwrap();
        let encapped = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&enc).unwrap();
        let opened = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &key.secret,
            &encapped,
            info,
            &ciphertext,
            &[],
        )
        .unwrap();
        assert_eq!(opened, data_key);

        // The hpke crate seals, AWS-LC opens.
        let public =
            <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&key.public().0).unwrap();
        let (encapped, ciphertext) = hpke::single_shot_seal::<
            ChaCha20Poly1305,
            HkdfSha256,
            X25519HkdfSha256,
        >(&OpModeS::Base, &public, info, &data_key, &[])
        .unwrap();
        let enc: [u8; 32] = encapped.to_bytes().as_slice().try_into().unwrap();
        assert_eq!(open(&secret, &enc, info, &ciphertext).unwrap(), data_key);

        // Another context, another key or one flipped bit opens nothing.
        assert!(open(&secret, &enc, b"another record", &ciphertext).is_none());
        let other = EncryptionKey::from_seed(&[8; 32]);
        assert!(open(&other.secret_bytes(), &enc, info, &ciphertext).is_none());
        let mut flipped = ciphertext.clone();
        flipped[0] ^= 1;
        assert!(open(&secret, &enc, info, &flipped).is_none());
    }
}
