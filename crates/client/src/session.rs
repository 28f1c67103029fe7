//! A session with one node: its chain id, each signer's next nonce, submission and the wait
//! for the commit, and signing again when another transaction of the same signer took the
//! nonce first (an eviction or a race between nodes). Whether to sign again is decided by the
//! stable code of the refusal ([`Error::resign`]), never by its wording.
//!
//! The session does no I/O of its own: the caller gives it a [`Transport`] (the CLI's ureq
//! agent with its trusted roots and bearer tokens; a browser's `fetch` later). It reads no
//! clock either: the wait for a commit is a bounded number of long polls.

use crate::{Error, Signer};
use ehrchain_types::{ErrorCode, Payload, PublicKey, Transaction};
use serde_json::Value;
use std::time::Duration;

/// How many times one payload is signed again after its nonce was taken.
pub const RESIGN_ATTEMPTS_MAX: u32 = 5;

/// The pause before signing again.
pub const RESIGN_PAUSE: Duration = Duration::from_millis(300);

/// How long one status request may wait on the node for the commit (`wait_ms`).
pub const WAIT_POLL_MS: u64 = 10_000;

/// How many such waits a submission gets before the session gives up on it (2 minutes).
pub const WAIT_POLLS_MAX: u32 = 12;

/// How a session reaches its node. Every call answers the JSON body of a 2xx answer, or the
/// error [`Error::from_answer`] makes of any other (so the stable code survives).
pub trait Transport {
    /// `GET url`.
    fn get_json(&self, url: &str) -> Result<Value, Error>;
    /// `POST url` with an `application/octet-stream` body.
    fn post_bytes(&self, url: &str, body: Vec<u8>) -> Result<Value, Error>;
    /// `POST url` with an `application/x-www-form-urlencoded` body, and no bearer token (a
    /// login).
    fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Value, Error>;
    /// Wait before asking again.
    fn pause(&self, duration: Duration);
}

/// A node's API, its chain id, and the transport that reaches it.
pub struct Session<T> {
    pub transport: T,
    /// The API's base URL, without a trailing slash.
    pub api: String,
    pub chain_id: u64,
}

impl<T: Transport> Session<T> {
    /// Open a session with the node at `api`: ask it for its chain id.
    pub fn open(transport: T, api: &str) -> Result<Self, Error> {
        let api = api.trim_end_matches('/').to_owned();
        let status = transport.get_json(&format!("{api}/chain/status"))?;
        let chain_id = status["chain_id"]
            .as_u64()
            .ok_or_else(|| Error::Protocol("the status has no chain_id".into()))?;
        Ok(Self {
            transport,
            api,
            chain_id,
        })
    }

    /// The next nonce of `signer`, as the node's final state has it.
    pub fn nonce(&self, signer: &PublicKey) -> Result<u64, Error> {
        let account = self
            .transport
            .get_json(&format!("{}/chain/accounts/{signer}", self.api))?;
        account["next_nonce"]
            .as_u64()
            .ok_or_else(|| Error::Protocol("the account has no next_nonce".into()))
    }

    /// Sign `payload` with the signer's next nonce.
    pub fn sign(&self, signer: &Signer, payload: Payload) -> Result<Transaction, Error> {
        Ok(signer.sign(self.chain_id, self.nonce(&signer.public)?, payload))
    }

    /// Sign `payload` with the signer's next nonce, submit it and wait for the commit. If
    /// another transaction of the same signer took that nonce first, sign again with the next
    /// one, up to [`RESIGN_ATTEMPTS_MAX`] times; a transient refusal is asked again the same
    /// way.
    pub fn send(&self, signer: &Signer, payload: Payload) -> Result<(Transaction, Value), Error> {
        let mut attempt = 0;
        loop {
            let tx = self.sign(signer, payload.clone())?;
            match self.submit_and_wait(&tx) {
                Ok(status) => return Ok((tx, status)),
                Err(error)
                    if attempt < RESIGN_ATTEMPTS_MAX && (error.resign() || error.transient()) =>
                {
                    attempt += 1;
                    self.transport.pause(RESIGN_PAUSE);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Submit a signed transaction and wait until it is committed.
    pub fn submit_and_wait(&self, tx: &Transaction) -> Result<Value, Error> {
        self.transport.post_bytes(
            &format!("{}/chain/transactions", self.api),
            tx.bytes().to_vec(),
        )?;
        self.wait(&hex::encode(tx.id()))
    }

    /// Wait until the transaction `hash` (hex) is committed: its status, or why not. A
    /// committed transaction whose operation the contract refused (only the attempt is on
    /// chain) is [`Error::Denied`].
    pub fn wait(&self, hash: &str) -> Result<Value, Error> {
        for _ in 0..WAIT_POLLS_MAX {
            let status = self.transport.get_json(&format!(
                "{}/chain/transactions/{hash}?wait_ms={WAIT_POLL_MS}",
                self.api
            ))?;
            match status["status"].as_str() {
                Some("committed") => {
                    if let Some(message) = status["denied"]["message"].as_str() {
                        return Err(Error::Denied {
                            code: ErrorCode::NotPermitted,
                            message: message.to_string(),
                        });
                    }
                    return Ok(status);
                }
                Some("rejected") => {
                    let code = status["code"].as_str().and_then(ErrorCode::parse);
                    return Err(Error::Rejected {
                        code: code.unwrap_or(ErrorCode::Rejected),
                        message: format!(
                            "transaction {hash}: {}",
                            status["reason"].as_str().unwrap_or("no reason given")
                        ),
                    });
                }
                _ => {}
            }
        }
        Err(Error::Timeout(format!(
            "transaction {hash} not committed within {} s",
            u64::from(WAIT_POLLS_MAX) * WAIT_POLL_MS / 1_000
        )))
    }
}
