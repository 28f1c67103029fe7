//! An identity's keys: one 32-byte seed gives the Ed25519 key that signs transactions and
//! login assertions, and the X25519 key that data keys are wrapped for.

use commonware_cryptography::Signer as _;
use ehrchain_crypto::EncryptionKey;
use ehrchain_types::{Payload, PrivateKey, PublicKey, Transaction, TransactionBody};

pub struct Signer {
    /// The seed: it signs, derives the encryption key, and logs in.
    pub seed: [u8; 32],
    pub key: PrivateKey,
    pub public: PublicKey,
    pub encryption: EncryptionKey,
}

impl Signer {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = ehrchain_types::private_key_from_seed(seed).expect("32-byte seed");
        Self {
            seed: *seed,
            public: key.public_key(),
            encryption: EncryptionKey::from_seed(seed),
            key,
        }
    }

    /// Sign `payload` for chain `chain_id` with nonce `nonce`.
    pub fn sign(&self, chain_id: u64, nonce: u64, payload: Payload) -> Transaction {
        TransactionBody {
            chain_id,
            signer: self.public.clone(),
            nonce,
            payload,
        }
        .sign(&self.key)
    }
}
