//! Stable, machine-readable error codes. Every error the HTTP API returns carries one beside
//! its human message (`{"error": "...", "code": "stale-nonce"}`, and under `/fhir` in the
//! `OperationOutcome`'s `issue[0].details.coding`), and the client library decides what to do
//! (retry, re-sign, give up) from the code alone. Messages may be reworded at any time; a code,
//! once published, never changes its meaning.

/// The code system the FHIR API names these codes under.
pub const CODE_SYSTEM: &str = "https://ehrchain.org/fhir/CodeSystem/error";

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// Why a request failed, as a stable code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code as it appears on the wire.
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $text,)*
                }
            }

            /// The code named by `text`, if it is one.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// The request is malformed (syntax, an unknown field, a bad id).
    BadRequest = "bad-request",
    /// No credentials, or credentials that do not authenticate.
    Unauthenticated = "unauthenticated",
    /// Authenticated, but not allowed.
    Forbidden = "forbidden",
    /// No such resource (or none the caller may know of).
    NotFound = "not-found",
    /// The resource existed and is gone (an erased patient).
    Gone = "gone",
    /// The request conflicts with the current state.
    Conflict = "conflict",
    /// The body is larger than the limit.
    TooLarge = "too-large",
    /// Well-formed, but its content is invalid.
    Invalid = "invalid",
    /// Too many requests from this caller; try again later.
    RateLimited = "rate-limited",
    /// The node cannot serve this now (full queue, store down); try again later.
    Unavailable = "unavailable",
    /// The node failed; not the caller's fault.
    Internal = "internal",
    /// The HTTP method is not supported here.
    MethodNotAllowed = "method-not-allowed",
    /// A transaction's nonce was used already.
    StaleNonce = "stale-nonce",
    /// A transaction's nonce is ahead of the signer's next one.
    FutureNonce = "future-nonce",
    /// Another transaction of the signer took this nonce first: sign again with the next one.
    NonceTaken = "nonce-taken",
    /// The same transaction is already waiting in the mempool.
    AlreadyPending = "already-pending",
    /// The transaction is committed already.
    AlreadyCommitted = "already-committed",
    /// The transaction is unknown to this node (not yet gossiped here, or dropped).
    UnknownTransaction = "unknown-transaction",
    /// The signer's key is not registered on chain.
    UnknownSigner = "unknown-signer",
    /// The signer's key was rotated away or removed.
    RetiredKey = "retired-key",
    /// A transaction's signature does not verify.
    BadSignature = "bad-signature",
    /// A transaction names another chain.
    WrongChain = "wrong-chain",
    /// The contracts refused the operation for the signer's role or consent.
    NotPermitted = "not-permitted",
    /// The record or patient is unknown to the chain.
    UnknownRecord = "unknown-record",
    /// The transaction was rejected by the chain for a rule it breaks.
    Rejected = "rejected",
    /// The access decision was a denial (recorded on the trail).
    AccessDenied = "access-denied",
    /// The node's final state lags too far behind to decide.
    NotReady = "not-ready",
}

impl ErrorCode {
    /// Whether a client may retry the same request unchanged after a pause.
    pub const fn transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::NotReady | Self::UnknownTransaction
        )
    }

    /// Whether a client should sign the same payload again with a fresh nonce: its last
    /// transaction lost its nonce to another, or this node has not yet seen the signer's
    /// previous transaction commit.
    pub const fn resign(&self) -> bool {
        matches!(
            self,
            Self::NonceTaken | Self::StaleNonce | Self::AlreadyPending | Self::FutureNonce
        )
    }

    /// The code an HTTP status stands for when nothing more precise is known.
    pub const fn of_status(status: u16) -> Self {
        match status {
            400 => Self::BadRequest,
            401 => Self::Unauthenticated,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            410 => Self::Gone,
            413 => Self::TooLarge,
            422 => Self::Invalid,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            _ if status >= 500 => Self::Internal,
            _ => Self::BadRequest,
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
        }
        assert_eq!(ErrorCode::parse("no-such-code"), None);
    }
}
