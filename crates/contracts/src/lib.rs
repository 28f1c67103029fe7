//! Decide access to health records: the consent contract as a pure, deterministic state machine.
//!
//! Every validator runs this code on the same inputs and gets the same answer: there is no
//! clock (time is the block's timestamp, passed in), no randomness, and every collection is
//! ordered. Keys and ids are plain byte arrays so the crate runs in tests, fuzzers and the
//! simulator alike.

pub mod consent;
