//! Typed client errors. An error from a node is classified by the stable code the API returns
//! beside its message (`{"error": "...", "code": "..."}`, or an `OperationOutcome` under
//! `/fhir`), never by the message's wording.

use ehrchain_types::ErrorCode;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error.
    #[error("{status}: {message} ({code})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// A transaction was rejected by the chain after it was accepted.
    #[error("transaction rejected: {message} ({code})")]
    Rejected { code: ErrorCode, message: String },
    /// The transaction committed, but the contract refused its operation: only the attempt
    /// is on chain.
    #[error("refused: {message}; the attempt is recorded on chain ({code})")]
    Denied { code: ErrorCode, message: String },
    /// The node did not answer in time, or a transaction did not commit in time.
    #[error("{0}")]
    Timeout(String),
    /// The node could not be reached.
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The input is not something the client can send (invalid FHIR, a bad id).
    #[error("{0}")]
    Invalid(String),
    /// The node's answer is not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Crypto(#[from] ehrchain_crypto::Error),
    /// An inclusion proof that does not check out.
    #[error("{0}")]
    Proof(#[from] ehrchain_types::proof::ProofError),
    #[error("no secure random source")]
    Random,
}

impl Error {
    /// The error a node's answer `body` with HTTP `status` stands for. The code comes from the
    /// body when it names one, else from the status.
    pub fn from_answer(status: u16, body: &Value) -> Self {
        let named = body["code"]
            .as_str()
            .or_else(|| body["issue"][0]["details"]["coding"][0]["code"].as_str());
        let code = named
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::of_status(status));
        // An OAuth error names its kind in `error` and explains in `error_description`.
        let message = body["error_description"]
            .as_str()
            .or_else(|| body["error"].as_str())
            .or_else(|| body["issue"][0]["diagnostics"].as_str())
            .unwrap_or("no detail")
            .to_string();
        Self::Api {
            status,
            code,
            message,
        }
    }

    /// The stable code, for errors that came from a node.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } | Self::Rejected { code, .. } | Self::Denied { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }

    /// Whether the same payload should be signed again with a fresh nonce.
    pub fn resign(&self) -> bool {
        self.code().is_some_and(|c| c.resign())
    }

    /// Whether the same request may be sent again unchanged after a pause.
    pub fn transient(&self) -> bool {
        self.code().is_some_and(|c| c.transient())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_code_decides_not_the_message() {
        let error = Error::from_answer(
            409,
            &json!({"error": "reworded at will", "code": "nonce-taken"}),
        );
        assert_eq!(error.code(), Some(ErrorCode::NonceTaken));
        assert!(error.resign());
        let error = Error::from_answer(409, &json!({"error": "took this nonce"}));
        assert_eq!(error.code(), Some(ErrorCode::Conflict));
        assert!(!error.resign(), "a message alone is never matched");
        let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "transient", "diagnostics": "later",
            "details": {"coding": [{"system": ehrchain_types::error_code::CODE_SYSTEM, "code": "unavailable"}]}
        }]});
        let error = Error::from_answer(503, &outcome);
        assert_eq!(error.code(), Some(ErrorCode::Unavailable));
        assert!(error.transient());
    }
}
