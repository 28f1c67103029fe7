//! Define the ledger's blocks, transactions, limits and their canonical byte encoding.
//!
//! Everything here is pure: no clock, no randomness, no I/O. Decoders take explicit limits and
//! reject malformed or oversized bytes with a typed [`Error`] before any signature is checked.

pub mod block;
pub mod error_code;
pub mod genesis;
pub mod limits;
pub mod merkle;
pub mod proof;
pub mod transaction;
pub mod wire;

pub use block::{Block, BlockHeader};
pub use error_code::ErrorCode;
pub use genesis::Genesis;
pub use transaction::{
    AppRegistration, ConsentGrant, GovernanceAction, GrantId, PatientId, Payload, ProposalId,
    RecordAnchor, RecordId, TOMBSTONE_HASH, Transaction, TransactionBody,
};

pub use commonware_cryptography::{
    ed25519::{PrivateKey, PublicKey, Signature},
    sha256::Digest,
};

/// Namespace mixed into every transaction signature so that a signature made for
/// ehrchain can never be replayed as a consensus vote or a peer handshake.
pub const TRANSACTION_NAMESPACE: &[u8] = b"EHRCHAIN_TX_V1";

/// Namespace of consensus votes and certificates.
pub const CONSENSUS_NAMESPACE: &[u8] = b"EHRCHAIN_CONSENSUS_V1";

/// Namespace of authenticated peer connections.
pub const P2P_NAMESPACE: &[u8] = b"EHRCHAIN_P2P_V1";

/// Errors raised while decoding or checking ledger objects.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("transaction too large: size={0} bytes, limit={1} bytes")]
    TransactionTooLarge(usize, usize),
    #[error("block too large: size={0} bytes, limit={1} bytes")]
    BlockTooLarge(usize, usize),
    #[error("too many transactions in block: count={0}, limit={1}")]
    TooManyTransactions(usize, usize),
    #[error("truncated input: needed {0} more bytes")]
    Truncated(usize),
    #[error("trailing bytes after object: {0} bytes")]
    TrailingBytes(usize),
    #[error("unsupported format version {0}; this build reads version {1}")]
    UnsupportedVersion(u8, u8),
    #[error("unknown payload kind {0}")]
    UnknownPayload(u8),
    #[error("invalid public key encoding")]
    InvalidPublicKey,
    #[error("wrong chain id: transaction is for chain {0}, this chain is {1}")]
    WrongChain(u64, u64),
    #[error("bad signature")]
    BadSignature,
    #[error("transaction root mismatch")]
    TransactionRootMismatch,
    #[error("field out of range: {0}")]
    OutOfRange(&'static str),
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Digest {
    use commonware_cryptography::{Hasher, Sha256};
    Sha256::hash(parts)
}

/// Decode a hex string into a digest; used by APIs and the CLI.
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    let bytes = hex::decode(text).ok()?;
    let array: [u8; 32] = bytes.try_into().ok()?;
    Some(Digest::from(array))
}

/// Decode a 16-byte id (patient, record, grant, proposal) from 32 hex characters.
pub fn id_from_hex(text: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// Decode a 32-byte public key from hex.
pub fn public_key_from_hex(text: &str) -> Option<PublicKey> {
    use commonware_codec::DecodeExt;
    let bytes = hex::decode(text).ok()?;
    PublicKey::decode(commonware_codec::Copying(bytes.as_slice())).ok()
}

/// Decode a private key from its 32-byte seed.
pub fn private_key_from_seed(seed: &[u8]) -> Option<PrivateKey> {
    use commonware_codec::DecodeExt;
    if seed.len() != 32 {
        return None;
    }
    PrivateKey::decode(commonware_codec::Copying(seed)).ok()
}

/// Most decoded public keys remembered; the cache is emptied when full.
pub const PUBLIC_KEY_CACHE_MAX: usize = 65_536;

/// Decode a public key, reusing the decompressed point of a key seen before. Decompression
/// (a field square root) is about a third of an Ed25519 verification, and the same few
/// thousand signers' keys are decoded again for every transaction, gossip batch and block.
/// The cache holds only keys that decoded successfully, so it never changes an answer.
pub fn decode_public_key(bytes: [u8; 32]) -> Result<PublicKey, Error> {
    use commonware_codec::DecodeExt;
    use std::{
        collections::HashMap,
        sync::{Mutex, OnceLock},
    };
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], PublicKey>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(key) = cache.lock().expect("key cache").get(&bytes) {
        return Ok(key.clone());
    }
    let key = PublicKey::decode(commonware_codec::Copying(&bytes[..]))
        .map_err(|_| Error::InvalidPublicKey)?;
    let mut cache = cache.lock().expect("key cache");
    if cache.len() >= PUBLIC_KEY_CACHE_MAX {
        cache.clear();
    }
    cache.insert(bytes, key.clone());
    Ok(key)
}

/// A small cursor over untrusted bytes that never reads past the end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], Error> {
        if self.bytes.len() < len {
            return Err(Error::Truncated(len - self.bytes.len()));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn public_key(&mut self) -> Result<PublicKey, Error> {
        decode_public_key(self.array()?)
    }

    pub(crate) fn digest(&mut self) -> Result<Digest, Error> {
        Ok(Digest::from(self.array::<32>()?))
    }

    pub(crate) const fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes(self.bytes.len()))
        }
    }
}
