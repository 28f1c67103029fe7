//! Run the ehrchain ledger: execute, store and agree on blocks of signed transactions.

pub mod application;
pub mod engine;
pub mod log;
pub mod mempool;
pub mod reporter;
pub mod state;

pub use application::{Chain, ChainConfig, Finalization, Scheme, Status, SubmitError};
