//! Named maxima for everything the ledger decodes or queues.

/// Largest encoded transaction (body and signature).
pub const TRANSACTION_SIZE_BYTES_MAX: usize = 4 * 1024;

/// Largest payload carried by one transaction (a full access log is the largest).
pub const PAYLOAD_SIZE_BYTES_MAX: usize = 3584;

/// Longest client assertion (JWT) an `OpenSession` carries: the one limit the token
/// endpoint and every validator check assertions against.
pub const SESSION_ASSERTION_BYTES_MAX: usize = ehrchain_crypto::jwt::ASSERTION_BYTES_MAX;

/// Most transactions one block may carry.
pub const BLOCK_TRANSACTIONS_MAX: usize = 16_384;

/// Largest encoded block.
pub const BLOCK_SIZE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most validators a genesis may name.
pub const VALIDATORS_MAX: usize = 64;

/// Largest request body the HTTP API accepts.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Most transactions one mempool holds.
pub const MEMPOOL_TRANSACTIONS_MAX: usize = 200_000;

/// Most transactions one gossip message carries.
pub const GOSSIP_BATCH_TRANSACTIONS_MAX: usize = 2_048;

/// Largest gossip message.
pub const GOSSIP_MESSAGE_BYTES_MAX: usize =
    4 + GOSSIP_BATCH_TRANSACTIONS_MAX * (4 + TRANSACTION_SIZE_BYTES_MAX);

const _: () = assert!(PAYLOAD_SIZE_BYTES_MAX < TRANSACTION_SIZE_BYTES_MAX);
const _: () = assert!(32 + 32 + 2 + SESSION_ASSERTION_BYTES_MAX <= PAYLOAD_SIZE_BYTES_MAX);
const _: () = assert!(
    // The count byte, then the versions.
    crate::transaction::RECORD_SET_MAX * crate::transaction::RecordAnchor::SIZE_BYTES
        < PAYLOAD_SIZE_BYTES_MAX
);
const _: () = assert!(2 + crate::transaction::CLIENT_JWK_BYTES_MAX <= PAYLOAD_SIZE_BYTES_MAX);
const _: () = assert!(
    8 + 2
        + crate::transaction::ACCESS_LOG_ENTRIES_MAX
            * crate::transaction::AccessLogEntry::SIZE_BYTES
        <= PAYLOAD_SIZE_BYTES_MAX
);
const _: () = assert!(
    crate::transaction::TRANSACTION_SIZE_BYTES_MIN + PAYLOAD_SIZE_BYTES_MAX
        <= TRANSACTION_SIZE_BYTES_MAX
);
const _: () = assert!(
    BLOCK_TRANSACTIONS_MAX * (4 + crate::transaction::TRANSACTION_SIZE_BYTES_MIN)
        <= BLOCK_SIZE_BYTES_MAX
);
const _: () = assert!(crate::block::HEADER_SIZE_BYTES < BLOCK_SIZE_BYTES_MAX);

/// Highest FHIR resource type code (`ehrchain-fhir` numbers its types 1 to this).
pub const RESOURCE_TYPE_CODE_MAX: u8 = 11;
const _: () = assert!(
    // client_id, name, the redirect URIs and the JWK with their length prefixes.
    1 + crate::transaction::APP_CLIENT_ID_BYTES_MAX
        + 1
        + crate::transaction::APP_NAME_BYTES_MAX
        + 1
        + crate::transaction::APP_REDIRECT_URIS_MAX
            * (2 + crate::transaction::APP_REDIRECT_URI_BYTES_MAX)
        + 2
        + crate::transaction::CLIENT_JWK_BYTES_MAX
        <= PAYLOAD_SIZE_BYTES_MAX
);
