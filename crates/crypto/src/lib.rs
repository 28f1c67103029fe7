//! Seal health records and wrap their data keys for the parties entitled to read them.
//!
//! A record version is sealed with ChaCha20-Poly1305 under a fresh random 256-bit data key.
//! The associated data binds the ciphertext to its record id, version and pseudonymous
//! patient id, so a ciphertext cannot be replayed as another record. The data key is wrapped
//! for each reader with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305); the HPKE `info` binds the wrap to the same record version and to the
//! SHA-256 of the envelope.
//!
//! ```text
//! envelope: magic "EHRE" | format u8 (=1) | aead u8 (=1, ChaCha20-Poly1305) | nonce [12]
//!           | ciphertext+tag [n+16]
//! wrap:     recipient X25519 public key [32] | HPKE enc [32] | wrapped data key + tag [48]
//! ```
//! This crate does no I/O and holds no clock: it runs in tests, fuzzers and the CLI alike.

pub mod jwk;
pub mod jwt;
pub mod webauthn;

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit,
    aead::{Aead, Payload},
};
// AWS-LC where it links (its X25519 is several times faster); the pure-Rust `hpke` crate
// elsewhere (wasm32). Both speak the same RFC 9180 suite byte for byte.
#[cfg(not(target_arch = "wasm32"))]
mod hpke_lc;
#[cfg(target_arch = "wasm32")]
use hpke_rust as hpke_lc;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod hpke_rust;

use hpke::{Deserializable, Kem as _, Serializable, kem::X25519HkdfSha256};
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Magic bytes that open every envelope.
pub const ENVELOPE_MAGIC: &[u8; 4] = b"EHRE";
/// Envelope format this build writes and reads.
pub const ENVELOPE_FORMAT: u8 = 1;
/// AEAD identifier for ChaCha20-Poly1305.
pub const AEAD_CHACHA20_POLY1305: u8 = 1;
/// Envelope bytes before the ciphertext.
pub const ENVELOPE_HEADER_BYTES: usize = 4 + 1 + 1 + 12;
/// AEAD tag length.
pub const TAG_BYTES: usize = 16;
/// Encoded size of one wrapped key.
pub const WRAP_BYTES: usize = 32 + 32 + 32 + TAG_BYTES;
/// Largest plaintext record this build seals (and so the largest envelope it opens).
pub const RECORD_SIZE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest envelope.
pub const ENVELOPE_SIZE_BYTES_MAX: usize =
    ENVELOPE_HEADER_BYTES + RECORD_SIZE_BYTES_MAX + TAG_BYTES;

const AAD_LABEL: &[u8] = b"ehrchain-record-v1";
const WRAP_LABEL: &[u8] = b"ehrchain-wrap-v1";
const DERIVE_LABEL: &[u8] = b"ehrchain-x25519-from-ed25519-seed-v1";

/// Why sealing, wrapping or opening failed. Messages never include key or record bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("record too large: size={0} bytes, limit={1} bytes")]
    TooLarge(usize, usize),
    #[error("not an ehrchain envelope (bad magic or truncated header)")]
    NotAnEnvelope,
    #[error("unsupported envelope format {0} or AEAD {1}")]
    Unsupported(u8, u8),
    #[error("decryption failed: wrong key, or the envelope or its binding was altered")]
    Decryption,
    #[error("key unwrap failed: this wrap is not for this key, or it was altered")]
    Unwrap,
    #[error("malformed wrapped key: expected {WRAP_BYTES} bytes, got {0}")]
    MalformedWrap(usize),
    #[error("invalid public key")]
    InvalidPublicKey,
    #[error("the system random source failed")]
    Random,
    #[error("malformed share bundle: {0}")]
    MalformedShare(&'static str),
}

/// What a ciphertext and its wraps are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub record: [u8; 16],
    pub version: u32,
    pub patient: [u8; 16],
}

impl Binding {
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AAD_LABEL.len() + 36);
        out.extend_from_slice(AAD_LABEL);
        out.extend_from_slice(&self.record);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.patient);
        out
    }
}

/// A 256-bit record data key. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| Error::Random)?;
        Ok(Self(key))
    }
}

/// An X25519 public key that data keys are wrapped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EncryptionPublicKey(pub [u8; 32]);

impl EncryptionPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let key = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map_err(|_| Error::InvalidPublicKey)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&key.to_bytes());
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An X25519 private key. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct EncryptionKey {
    secret: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: EncryptionPublicKey,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey(public={})", self.public.to_hex())
    }
}

impl EncryptionKey {
    /// Derive the X25519 key that belongs to an identity's 32-byte Ed25519 seed, with RFC 9180
    /// `DeriveKeyPair` over a labelled input. One seed file thus serves for signing and for
    /// receiving wrapped keys, and the two keys are independent as far as anyone can tell.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut ikm = Vec::with_capacity(DERIVE_LABEL.len() + 32);
        ikm.extend_from_slice(DERIVE_LABEL);
        ikm.extend_from_slice(seed);
        let (secret, public) = X25519HkdfSha256::derive_keypair(&ikm);
        ikm.zeroize();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        Self {
            secret,
            public: EncryptionPublicKey(bytes),
        }
    }

    pub fn public(&self) -> EncryptionPublicKey {
        self.public
    }

    /// The X25519 private key itself, for a custodial key file: it decrypts, but unlike the
    /// identity's seed it cannot sign.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&self.secret.to_bytes());
        bytes
    }

    /// A key from [`Self::secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let secret = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| Error::InvalidPublicKey)?;
        let public = X25519HkdfSha256::sk_to_pk(&secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(&public.to_bytes());
        Ok(Self {
            secret,
            public: EncryptionPublicKey(out),
        })
    }
}

/// A data key wrapped for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrap {
    pub recipient: EncryptionPublicKey,
    pub encapsulated: [u8; 32],
    pub ciphertext: [u8; 32 + TAG_BYTES],
}

impl Wrap {
    pub fn encode(&self) -> [u8; WRAP_BYTES] {
        let mut out = [0u8; WRAP_BYTES];
        out[..32].copy_from_slice(&self.recipient.0);
        out[32..64].copy_from_slice(&self.encapsulated);
        out[64..].copy_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != WRAP_BYTES {
            return Err(Error::MalformedWrap(bytes.len()));
        }
        let mut recipient = [0u8; 32];
        recipient.copy_from_slice(&bytes[..32]);
        let mut encapsulated = [0u8; 32];
        encapsulated.copy_from_slice(&bytes[32..64]);
        let mut ciphertext = [0u8; 48];
        ciphertext.copy_from_slice(&bytes[64..]);
        Ok(Self {
            recipient: EncryptionPublicKey(recipient),
            encapsulated,
            ciphertext,
        })
    }
}

/// SHA-256 of an envelope: its address in the blob store and the hash anchored on chain.
pub fn envelope_hash(envelope: &[u8]) -> [u8; 32] {
    Sha256::digest(envelope).into()
}

/// Seal `plaintext` under a fresh data key. Returns the envelope and the key to wrap.
pub fn seal(binding: &Binding, plaintext: &[u8]) -> Result<(Vec<u8>, DataKey), Error> {
    let key = DataKey::generate()?;
    let envelope = seal_with(&key, binding, plaintext)?;
    Ok((envelope, key))
}

/// Seal `plaintext` under `key` (a fresh random nonce each time).
pub fn seal_with(key: &DataKey, binding: &Binding, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    if plaintext.len() > RECORD_SIZE_BYTES_MAX {
        return Err(Error::TooLarge(plaintext.len(), RECORD_SIZE_BYTES_MAX));
    }
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| Error::Random)?;
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    let aad = binding.aad();
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Decryption)?;
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_BYTES + ciphertext.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.push(ENVELOPE_FORMAT);
    out.push(AEAD_CHACHA20_POLY1305);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Open an envelope with its data key. Any altered byte, wrong key or wrong binding fails.
pub fn open(key: &DataKey, binding: &Binding, envelope: &[u8]) -> Result<Vec<u8>, Error> {
    if envelope.len() > ENVELOPE_SIZE_BYTES_MAX {
        return Err(Error::TooLarge(envelope.len(), ENVELOPE_SIZE_BYTES_MAX));
    }
    if envelope.len() < ENVELOPE_HEADER_BYTES + TAG_BYTES || &envelope[..4] != ENVELOPE_MAGIC {
        return Err(Error::NotAnEnvelope);
    }
    if envelope[4] != ENVELOPE_FORMAT || envelope[5] != AEAD_CHACHA20_POLY1305 {
        return Err(Error::Unsupported(envelope[4], envelope[5]));
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&envelope[6..18]);
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    let aad = binding.aad();
    cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &envelope[ENVELOPE_HEADER_BYTES..],
                aad: &aad,
            },
        )
        .map_err(|_| Error::Decryption)
}

fn wrap_info(binding: &Binding, envelope_hash: &[u8; 32]) -> Vec<u8> {
    let mut info = Vec::with_capacity(WRAP_LABEL.len() + 68);
    info.extend_from_slice(WRAP_LABEL);
    info.extend_from_slice(&binding.record);
    info.extend_from_slice(&binding.version.to_be_bytes());
    info.extend_from_slice(&binding.patient);
    info.extend_from_slice(envelope_hash);
    info
}

/// Wrap `key` for `recipient`, bound to the record version and its envelope hash.
pub fn wrap(
    key: &DataKey,
    recipient: &EncryptionPublicKey,
    binding: &Binding,
    envelope_hash: &[u8; 32],
) -> Result<Wrap, Error> {
    // A point that is not a valid X25519 public key is refused before anything is sealed.
    <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|_| Error::InvalidPublicKey)?;
    let info = wrap_info(binding, envelope_hash);
    let (enc, ciphertext) =
        hpke_lc::seal(&recipient.0, &info, &key.0).ok_or(Error::InvalidPublicKey)?;
    let mut ct = [0u8; 48];
    if ciphertext.len() != ct.len() {
        return Err(Error::MalformedWrap(ciphertext.len()));
    }
    ct.copy_from_slice(&ciphertext);
    Ok(Wrap {
        recipient: *recipient,
        encapsulated: enc,
        ciphertext: ct,
    })
}

/// Unwrap a data key with the recipient's private key.
pub fn unwrap(
    wrap: &Wrap,
    key: &EncryptionKey,
    binding: &Binding,
    envelope_hash: &[u8; 32],
) -> Result<DataKey, Error> {
    if wrap.recipient != key.public {
        return Err(Error::Unwrap);
    }
    let info = wrap_info(binding, envelope_hash);
    // Zeroed when dropped.
    let secret = key.secret_bytes();
    let mut plain =
        hpke_lc::open(&secret, &wrap.encapsulated, &info, &wrap.ciphertext).ok_or(Error::Unwrap)?;
    if plain.len() != 32 {
        plain.zeroize();
        return Err(Error::Unwrap);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&plain);
    plain.zeroize();
    Ok(DataKey(out))
}

/// A sealed record version: the envelope, its SHA-256, and the data key wrapped per recipient.
pub type Sealed = (Vec<u8>, [u8; 32], Vec<Wrap>);

/// Seal a record and wrap its data key for every recipient, in one step.
pub fn seal_for(
    binding: &Binding,
    plaintext: &[u8],
    recipients: &[EncryptionPublicKey],
) -> Result<Sealed, Error> {
    let (envelope, key) = seal(binding, plaintext)?;
    let hash = envelope_hash(&envelope);
    let mut wraps = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        if wraps.iter().any(|w: &Wrap| w.recipient == *recipient) {
            continue;
        }
        wraps.push(wrap(&key, recipient, binding, &hash)?);
    }
    Ok((envelope, hash, wraps))
}

/// Unwrap this key's data key from `wraps` and open the envelope.
pub fn open_for(
    binding: &Binding,
    envelope: &[u8],
    wraps: &[Wrap],
    key: &EncryptionKey,
) -> Result<Vec<u8>, Error> {
    let hash = envelope_hash(envelope);
    let wrap = wraps
        .iter()
        .find(|w| w.recipient == key.public)
        .ok_or(Error::Unwrap)?;
    let data_key = unwrap(wrap, key, binding, &hash)?;
    open(&data_key, binding, envelope)
}

/// Magic of a share bundle.
pub const SHARE_MAGIC: &[u8; 4] = b"EHRS";
/// Format of the share bundles this build writes and reads.
pub const SHARE_FORMAT: u8 = 1;
/// Most entries one share bundle carries (it must fit the blob store's envelope limit).
pub const SHARE_ENTRIES_MAX: usize = 50_000;
/// Bytes of one share entry: the envelope hash, then the wrap.
pub const SHARE_ENTRY_BYTES: usize = 32 + WRAP_BYTES;

/// The data keys of existing record versions, wrapped for a new grantee by the patient's key
/// holder: the off-chain half of a consent grant, stored content-addressed like an envelope.
///
/// ```text
/// "EHRS" | format u8 (=1) | count u32 | count x (envelope_hash [32] | wrap [112])
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    pub entries: Vec<([u8; 32], Wrap)>,
}

impl Share {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.entries.len() * SHARE_ENTRY_BYTES);
        out.extend_from_slice(SHARE_MAGIC);
        out.push(SHARE_FORMAT);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (hash, wrap) in &self.entries {
            out.extend_from_slice(hash);
            out.extend_from_slice(&wrap.encode());
        }
        out
    }

    /// Decode a bundle from untrusted bytes, with limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < 9 || &bytes[..4] != SHARE_MAGIC {
            return Err(Error::MalformedShare("bad magic or truncated header"));
        }
        if bytes[4] != SHARE_FORMAT {
            return Err(Error::MalformedShare("unsupported format"));
        }
        let count = u32::from_be_bytes(bytes[5..9].try_into().expect("4")) as usize;
        if count > SHARE_ENTRIES_MAX {
            return Err(Error::MalformedShare("too many entries"));
        }
        let body = &bytes[9..];
        if body.len() != count * SHARE_ENTRY_BYTES {
            return Err(Error::MalformedShare("length does not match the count"));
        }
        let entries = body
            .chunks(SHARE_ENTRY_BYTES)
            .map(|chunk| {
                let hash: [u8; 32] = chunk[..32].try_into().expect("32");
                Ok((hash, Wrap::decode(&chunk[32..])?))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self { entries })
    }
}

const _: () = assert!(9 + SHARE_ENTRIES_MAX * SHARE_ENTRY_BYTES <= ENVELOPE_SIZE_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            record: [1; 16],
            version: 1,
            patient: [2; 16],
        }
    }

    #[test]
    fn seal_wrap_unwrap_open() {
        let alice = EncryptionKey::from_seed(&[7; 32]);
        let bob = EncryptionKey::from_seed(&[8; 32]);
        let text = br#"{"resourceType":"Observation"}"#;
        let (envelope, hash, wraps) = seal_for(
            &binding(),
            text,
            &[alice.public(), bob.public(), alice.public()],
        )
        .unwrap();
        assert_eq!(wraps.len(), 2, "duplicate recipients are wrapped once");
        assert_eq!(hash, envelope_hash(&envelope));
        assert_eq!(
            open_for(&binding(), &envelope, &wraps, &alice).unwrap(),
            text
        );
        assert_eq!(open_for(&binding(), &envelope, &wraps, &bob).unwrap(), text);
        assert!(!envelope.windows(13).any(|w| w == b"resourceType\""));
    }

    #[test]
    fn wrong_key_gets_nothing() {
        let alice = EncryptionKey::from_seed(&[7; 32]);
        let mallory = EncryptionKey::from_seed(&[9; 32]);
        let (envelope, hash, wraps) = seal_for(&binding(), b"secret", &[alice.public()]).unwrap();
        assert_eq!(
            open_for(&binding(), &envelope, &wraps, &mallory),
            Err(Error::Unwrap)
        );
        // Even a wrap relabelled as Mallory's does not open with Mallory's key.
        let mut stolen = wraps[0].clone();
        stolen.recipient = mallory.public();
        assert_eq!(
            unwrap(&stolen, &mallory, &binding(), &hash).map(|_| ()),
            Err(Error::Unwrap)
        );
    }

    #[test]
    fn any_altered_byte_or_binding_is_detected() {
        let alice = EncryptionKey::from_seed(&[7; 32]);
        let (envelope, _, wraps) = seal_for(&binding(), b"{\"a\":1}", &[alice.public()]).unwrap();
        for index in 0..envelope.len() {
            let mut altered = envelope.clone();
            altered[index] ^= 0x01;
            assert!(
                open_for(&binding(), &altered, &wraps, &alice).is_err(),
                "byte {index}"
            );
        }
        for other in [
            Binding {
                version: 2,
                ..binding()
            },
            Binding {
                record: [3; 16],
                ..binding()
            },
            Binding {
                patient: [4; 16],
                ..binding()
            },
        ] {
            assert!(open_for(&other, &envelope, &wraps, &alice).is_err());
        }
        let mut wrap = wraps[0].encode();
        wrap[70] ^= 1;
        let altered = [Wrap::decode(&wrap).unwrap()];
        assert_eq!(
            open_for(&binding(), &envelope, &altered, &alice),
            Err(Error::Unwrap)
        );
    }

    #[test]
    fn custodial_secret_bytes_give_back_the_same_key() {
        let key = EncryptionKey::from_seed(&[5; 32]);
        let again = EncryptionKey::from_secret_bytes(&key.secret_bytes()).unwrap();
        assert_eq!(again.public(), key.public());
    }

    #[test]
    fn derivation_is_stable_and_keys_differ() {
        // Pinned: a change would orphan every wrapped key ever written.
        let key = EncryptionKey::from_seed(&[0; 32]);
        assert_eq!(key.public(), EncryptionKey::from_seed(&[0; 32]).public());
        assert_ne!(key.public(), EncryptionKey::from_seed(&[1; 32]).public());
        assert_eq!(key.public().to_hex().len(), 64);
        assert_eq!(
            EncryptionPublicKey::from_bytes(&key.public().0).unwrap(),
            key.public()
        );
    }

    #[test]
    fn limits_and_garbage() {
        let key = DataKey::generate().unwrap();
        assert_eq!(open(&key, &binding(), b"EHRE"), Err(Error::NotAnEnvelope));
        assert_eq!(Wrap::decode(&[0; 5]), Err(Error::MalformedWrap(5)));
        let big = vec![0u8; RECORD_SIZE_BYTES_MAX + 1];
        assert!(matches!(seal(&binding(), &big), Err(Error::TooLarge(..))));
    }

    #[test]
    fn share_bundles_round_trip_and_reject_garbage() {
        let recipient = EncryptionKey::from_seed(&[4; 32]);
        let binding = Binding {
            record: [1; 16],
            version: 1,
            patient: [2; 16],
        };
        let (envelope, key) = seal(&binding, b"{}").unwrap();
        let hash = envelope_hash(&envelope);
        let wrapped = wrap(&key, &recipient.public(), &binding, &hash).unwrap();
        let share = Share {
            entries: vec![(hash, wrapped)],
        };
        let bytes = share.encode();
        assert_eq!(Share::decode(&bytes).unwrap(), share);
        for cut in 0..bytes.len() {
            assert!(Share::decode(&bytes[..cut]).is_err());
        }
        let mut count = bytes.clone();
        count[8] = 2;
        assert!(Share::decode(&count).is_err());
        let mut huge = bytes[..9].to_vec();
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Share::decode(&huge).is_err());
    }
}
