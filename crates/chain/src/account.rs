//! An account a node signs with itself: its institution key, with the nonce it last used.
//!
//! The gateway registers patients and the access-log batcher submits logs under the same
//! key, and the operator's CLI may sign with it too. The account starts each submission from
//! the chain's own view of the key (the next nonce after what is pending, never below what
//! is committed) and steps past a nonce another client of the key holds.

use crate::{Chain, SubmitError, mempool::AdmissionError};
use commonware_cryptography::Signer as _;
use commonware_runtime::Blob;
use ehrchain_contracts::facts::Rejection;
use ehrchain_types::{Payload, PrivateKey, Transaction, TransactionBody};

/// Most nonces stepped over in one submission before it gives up as busy.
pub const NONCE_STEPS_MAX: usize = 8;

/// A key this node signs with, and the nonce after its last admitted transaction.
pub struct Account {
    pub key: PrivateKey,
    last: tokio::sync::Mutex<u64>,
}

impl Account {
    pub fn new(key: PrivateKey) -> Self {
        Self {
            key,
            last: tokio::sync::Mutex::new(0),
        }
    }

    /// Sign `payload` and submit it to `chain`. The nonce advances only when the node admits
    /// the transaction. After [`NONCE_STEPS_MAX`] nonces held by others, the last refusal
    /// (a duplicate or a stale nonce) is returned: the account is busy.
    pub async fn submit<B: Blob>(
        &self,
        chain: &Chain<B>,
        payload: Payload,
    ) -> Result<Transaction, SubmitError> {
        let mut last = self.last.lock().await;
        // After the pool dropped one of ours, start again after the last one alive.
        let signer = self.key.public_key();
        let mut nonce = (*last)
            .min(chain.next_nonce(&signer))
            .max(chain.nonce(&signer));
        let mut refusal = None;
        for _ in 0..NONCE_STEPS_MAX {
            let tx = TransactionBody {
                chain_id: chain.chain_id(),
                signer: signer.clone(),
                nonce,
                payload: payload.clone(),
            }
            .sign(&self.key);
            match chain.submit(tx.bytes()) {
                Ok(_) => {
                    *last = nonce + 1;
                    return Ok(tx);
                }
                Err(error) if is_busy(&error) => {
                    nonce += 1;
                    refusal = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(refusal.expect("at least one attempt"))
    }
}

/// Whether a refusal means only that the account's nonces are taken (retry shortly).
pub fn is_busy(error: &SubmitError) -> bool {
    matches!(
        error,
        SubmitError::Admission(AdmissionError::Duplicate)
            | SubmitError::Admission(AdmissionError::Rejected(Rejection::StaleNonce { .. }))
    )
}
