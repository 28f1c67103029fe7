//! The ehrchain state machine: every rule a validator applies to a transaction, as pure,
//! deterministic code.
//!
//! Every validator runs this code on the same inputs and gets the same answer: there is no
//! clock (time is the block's timestamp, passed in), no randomness, and every collection is
//! ordered. The crate is layered, each module using only those above it in this list:
//!
//! - `consent`: the consent rule over plain keys (grants, requests, decisions);
//! - `facts`: the facts the state holds and their state-root encoding;
//! - `state`: the `Reader`/`Delta` boundary, the in-memory `State` and the state root;
//! - `access`, `governance`: the rules (identities, records, consent, reads, break-glass,
//!   supervision, sessions, governance);
//! - `execute`: one transaction and one block, dispatched to those rules.

pub mod access;
pub mod consent;
pub mod execute;
pub mod facts;
pub mod governance;
pub mod state;
