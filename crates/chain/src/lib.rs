//! Run the ehrchain ledger: execute, store and agree on blocks of signed transactions.

pub mod access_log;
pub mod account;
pub mod application;
pub mod committed;
pub mod engine;
pub mod epochs;
pub use ehrchain_storage::block_log as log;
pub mod mempool;
pub mod proofs;
pub mod records;
pub mod reporter;

pub use application::{Chain, ChainConfig, Finalization, Location, Scheme, Status, SubmitError};

/// The member institutions named by a genesis, with their encryption keys. A validator
/// without an encryption key gets all zeroes, for which no one can unwrap: records are then
/// not wrapped for that institution.
pub fn institutions(
    genesis: &ehrchain_types::Genesis,
) -> Result<Vec<(ehrchain_types::PublicKey, [u8; 32])>, ehrchain_types::Error> {
    let keys = genesis.validator_keys()?;
    Ok(keys
        .into_iter()
        .zip(genesis.encryption_keys())
        .map(|(key, encryption)| (key, encryption.unwrap_or([0; 32])))
        .collect())
}
