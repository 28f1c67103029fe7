//! The `ehrchain` command line as a library: node start-up, local networks, key files, the
//! HTTP client's login and session, and each command's handler. The `ehrchain` binary is a
//! thin `main` over it; the benchmarks (`crates/bench`) reuse its network set-up.

pub mod access;
pub mod apps;
pub mod backup;
pub mod client;
pub mod config;
pub mod dev;
pub mod logging;
pub mod network;
pub mod node;
pub mod records;
pub mod tls;
pub mod verify;
