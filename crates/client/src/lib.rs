//! The ehrchain client library: what a program acting for a person or an institution does on
//! its own side, so that nodes only ever see ciphertext, wrapped keys and signatures.
//!
//! - [`Signer`]: an identity's Ed25519 signing key and X25519 encryption key, from one seed;
//! - [`record`]: validate, seal, wrap and sign a record version, and open one with its key
//!   and anchor check;
//! - [`share`]: re-wrap a patient's data keys for a new grantee (a consent share);
//! - [`session`]: a node's chain id, nonces, submit-and-wait and signing again after an
//!   eviction, over the caller's [`Transport`];
//! - [`smart`]: a SMART Backend Services login (its signed client assertion);
//! - [`proof`]: offline inclusion-proof checks against a genesis;
//! - [`Error`]: typed errors from the API's stable codes (`ehrchain_types::ErrorCode`).
//!
//! The crate does no I/O and reads no clock: callers pass times, bytes and a transport in, so the same code
//! runs in the CLI, the benchmarks, the tests and the browser (`wasm32-unknown-unknown`, where
//! HPKE takes its pure-Rust path).

pub mod error;
pub mod proof;
pub mod record;
pub mod session;
pub mod share;
pub mod signer;
pub mod smart;

pub use error::Error;
pub use session::{Session, Transport};
pub use signer::Signer;

/// 16 random bytes (record ids, JWT ids), from the platform's secure source.
pub fn random16() -> Result<[u8; 16], Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(bytes)
}
