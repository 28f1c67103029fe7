//! The facts the state holds: identities, patients, record versions, sessions, the access
//! trail and its findings, break-glass entries and proposals, and why a transaction is
//! rejected. Plain data with its state-root encoding; the rules that write these facts sit
//! above, in `access`, `governance` and `execute`.

use crate::consent::{self, Denial, Refusal};
use ehrchain_types::{
    Digest, Error as TypesError, ErrorCode, GovernanceAction, PatientId, PublicKey, RecordAnchor,
    RecordId,
};

/// Why a transaction cannot be applied on top of a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("stale nonce: expected {expected}, got {got} (already used; this looks like a replay)")]
    StaleNonce { expected: u64, got: u64 },
    #[error("future nonce: expected {expected}, got {got}")]
    FutureNonce { expected: u64, got: u64 },
    #[error("digest already anchored")]
    AlreadyAnchored,
    #[error("access log entry {got} leaves a gap: the log's next entry is {expected}")]
    AccessLogGap { expected: u64, got: u64 },
    #[error("the signer's role may not do this: {0}")]
    Unauthorized(&'static str),
    #[error("unknown patient")]
    UnknownPatient,
    #[error("the patient's records were erased")]
    PatientErased,
    #[error("already registered")]
    AlreadyRegistered,
    #[error("wrong record version: expected {expected}, got {got}")]
    WrongVersion { expected: u32, got: u32 },
    #[error("a record keeps its patient and resource type across versions")]
    RecordMismatch,
    #[error("record too large: size={0} bytes, limit={1} bytes")]
    RecordTooLarge(u64, u64),
    #[error("unknown record")]
    UnknownRecord,
    #[error("this key was rotated away and is no longer accepted")]
    RetiredKey,
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Invalid(#[from] TypesError),
}

impl Rejection {
    /// The stable code of this rejection, for clients (`ehrchain_types::ErrorCode`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::StaleNonce { .. } => ErrorCode::StaleNonce,
            Self::FutureNonce { .. } => ErrorCode::FutureNonce,
            Self::AlreadyAnchored
            | Self::AlreadyRegistered
            | Self::AccessLogGap { .. }
            | Self::WrongVersion { .. } => ErrorCode::Conflict,
            Self::Unauthorized(_) | Self::Refused(Refusal::NotTheOwner) => ErrorCode::NotPermitted,
            Self::UnknownPatient | Self::UnknownRecord => ErrorCode::UnknownRecord,
            Self::PatientErased => ErrorCode::Gone,
            Self::RecordTooLarge(..) => ErrorCode::TooLarge,
            Self::RetiredKey => ErrorCode::RetiredKey,
            Self::Refused(_) | Self::RecordMismatch | Self::Malformed(_) => ErrorCode::Invalid,
            Self::Invalid(TypesError::BadSignature) => ErrorCode::BadSignature,
            Self::Invalid(TypesError::WrongChain(..)) => ErrorCode::WrongChain,
            Self::Invalid(_) => ErrorCode::Invalid,
        }
    }
}

/// Where an anchored digest was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorRecord {
    pub label: u16,
    pub signer: PublicKey,
    pub height: u64,
    pub transaction: Digest,
}

/// Largest record envelope an anchor may describe.
pub const RECORD_CIPHERTEXT_BYTES_MAX: u64 = 9 * 1024 * 1024;

/// What an identity is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A consortium member (from genesis).
    Institution,
    /// A clinician enrolled by `institution`.
    Clinician { institution: PublicKey },
    /// A patient: the key registered with their pseudonymous id.
    Patient { patient: PatientId },
    /// A guardian appointed by the patient.
    Guardian { patient: PatientId },
    /// An auditor appointed by the consortium: reads the trail, never a key.
    Auditor,
}

impl Role {
    pub fn code(&self) -> u8 {
        match self {
            Self::Institution => 1,
            Self::Clinician { .. } => 2,
            Self::Patient { .. } => 3,
            Self::Guardian { .. } => 4,
            Self::Auditor => 5,
        }
    }

    /// The patient a patient or guardian speaks for; `None` for every other role.
    pub fn patient(&self) -> Option<PatientId> {
        match self {
            Self::Patient { patient } | Self::Guardian { patient } => Some(*patient),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Institution => "institution",
            Self::Clinician { .. } => "clinician",
            Self::Patient { .. } => "patient",
            Self::Guardian { .. } => "guardian",
            Self::Auditor => "auditor",
        }
    }
}

/// A registered identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// X25519 key that data keys are wrapped for.
    pub encryption_key: [u8; 32],
    /// Keys this identity used before, oldest first (grants and authorship follow it).
    pub previous: Vec<PublicKey>,
}

/// A registered patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientEntry {
    pub key: PublicKey,
    pub encryption_key: [u8; 32],
    /// The home institution, which registered the patient (and holds a custodial key).
    pub home: PublicKey,
    pub registered_height: u64,
    /// Height of the erasure, once erased. The tombstone: the hashes stay, the data goes.
    pub erased_height: Option<u64>,
    /// Guardians appointed by the patient, in appointment order.
    pub guardians: Vec<PublicKey>,
}

/// The on-chain facts of one record version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordVersion {
    pub anchor: RecordAnchor,
    pub author: PublicKey,
    pub height: u64,
    pub transaction: Digest,
}

/// A gateway session: transactions signed by its key count as `identity`'s own until
/// `expires_ms` (block time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub identity: PublicKey,
    pub expires_ms: u64,
    /// The member institution whose gateway holds the session key.
    pub gateway: PublicKey,
    /// The SMART app the person logged in to, by `client_id` (none: a Backend Services
    /// login by the identity's own program).
    pub app: Option<String>,
}

/// A SMART app registered by a member institution (`Payload::RegisterApp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEntry {
    pub institution: PublicKey,
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// A confidential app's key; `None` for a public app.
    pub jwk: Option<ehrchain_crypto::jwk::ClientJwk>,
}

/// Where an access event sits on the trail: block height, position of its transaction in the
/// block, and entry within that transaction (0 unless it is an access log).
pub type EventKey = (u64, u32, u16);

/// Most guardians one patient may have.
pub const GUARDIANS_MAX: usize = 8;

/// Most earlier keys an identity remembers (older ones lose their grants and authorship).
pub const PREVIOUS_KEYS_MAX: usize = 16;

/// Break-glass reason codes: a fixed list, because free text could carry PHI.
pub const BREAK_GLASS_REASONS: [(u8, &str); 4] = [
    (1, "emergency treatment; the patient cannot consent"),
    (2, "life-threatening condition"),
    (3, "urgent continuity of care"),
    (4, "other; documented in the institution's own records"),
];

/// Where, in the chain, an event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub height: u64,
    /// Block time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Position of the transaction in its block.
    pub index: u32,
}

/// Why a read was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The patient reads their own record.
    Owner,
    /// A guardian of the patient.
    Guardian,
    /// The reader wrote a version of the record.
    Author,
    /// A consent grant, by id.
    Consent([u8; 16]),
    /// An open break-glass access.
    BreakGlass,
    /// The break-glass declaration itself (no record is read by it).
    BreakGlassOpened { reason: u8, until_ms: u64 },
}

/// Why a read was denied. Reasons name rules, never record content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("{0}")]
    Consent(Denial),
    #[error("auditors never receive keys")]
    Auditor,
    #[error("a patient reads only their own records")]
    NotTheirs,
    /// A registered identity tried an operation on a patient's records that its role and
    /// the patient's consent do not allow (a write, a grant, an erasure, ...), by payload kind.
    #[error("{}", not_permitted(*operation))]
    NotPermitted { operation: u8 },
    /// A gateway logged a read of an identity whose key was retired before the log reached
    /// the chain (removed, or rotated away and no longer found).
    #[error("the reader's key was retired")]
    RetiredKey,
}

/// The refusal of an operation, by payload kind: names the rule, never content.
fn not_permitted(operation: u8) -> &'static str {
    match operation {
        2 => "only a member institution registers patients",
        3 => "only a member institution enrols clinicians",
        11 => "a member institution's key is its validator key: change it by governance",
        13 => "only a member institution proposes",
        14 => "only a member institution votes",
        16 => "only the clinician's own institution removes them",
        4 => "this identity may not write this patient's records",
        5 => "only the patient or their home institution asks for erasure",
        6 | 7 => "only the patient or a guardian grants and revokes consent",
        9 => "only an enrolled clinician opens break-glass access",
        10 => "only the patient appoints a guardian",
        12 => "only a guardian or the home institution recovers a patient's key",
        17 => "the trail is shown to its patient, their guardians and auditors",
        18 => "a member institution logs only reads made in sessions its gateway opened",
        _ => "this identity may not do this",
    }
}

impl Reason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Consent(Denial::NoGrant) => "no-consent",
            Self::Consent(Denial::PurposeNotGranted) => "purpose-not-granted",
            Self::Consent(Denial::TypeNotGranted) => "type-not-granted",
            Self::Consent(Denial::ActionNotGranted) => "action-not-granted",
            Self::Consent(Denial::NotYetValid) => "consent-not-yet-valid",
            Self::Consent(Denial::Expired) => "consent-expired",
            Self::Consent(Denial::Revoked) => "consent-revoked",
            Self::Auditor => "auditor",
            Self::NotTheirs => "not-their-record",
            Self::NotPermitted { .. } => "not-permitted",
            Self::RetiredKey => "retired-key",
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Consent(d) => out.push(1 + *d as u8),
            Self::Auditor => out.push(20),
            Self::NotTheirs => out.push(21),
            Self::NotPermitted { operation } => out.extend_from_slice(&[22, *operation]),
            Self::RetiredKey => out.push(23),
        }
    }
}

/// The outcome of an access attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed(Basis),
    Denied(Reason),
}

impl Outcome {
    pub const fn allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Allowed(basis) => {
                out.push(1);
                match basis {
                    Basis::Owner => out.push(1),
                    Basis::Guardian => out.push(2),
                    Basis::Author => out.push(3),
                    Basis::Consent(id) => {
                        out.push(4);
                        out.extend_from_slice(id);
                    }
                    Basis::BreakGlass => out.push(5),
                    Basis::BreakGlassOpened { reason, until_ms } => {
                        out.push(6);
                        out.push(*reason);
                        out.extend_from_slice(&until_ms.to_be_bytes());
                    }
                }
            }
            Self::Denied(reason) => {
                out.push(2);
                reason.write(out);
            }
        }
    }
}

/// One entry of the access trail: a read attempt or a break-glass declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEvent {
    pub actor: PublicKey,
    pub patient: PatientId,
    /// The record read and its resource type; `None` for a break-glass declaration.
    pub record: Option<(RecordId, u8)>,
    /// v3-ActReason purpose number.
    pub purpose: u8,
    pub outcome: Outcome,
    pub time_ms: u64,
    pub transaction: Digest,
    /// The SMART app (`client_id`) whose session made the read, when one did.
    pub app: Option<String>,
}

/// What automatic supervision found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// A read attempt was denied.
    DeniedAccess(Reason),
    /// A break-glass access was opened.
    BreakGlass { reason: u8 },
    /// One identity read more than the genesis threshold within one window.
    ReadVolume { count: u32, window_start_ms: u64 },
    /// A read was attempted under a revoked grant.
    AfterRevocation,
    /// A patient's key was replaced by a guardian or the home institution.
    KeyRecovery,
    /// A gateway logged a read later than `ACCESS_LOG_LAG_MS` after deciding it (it was
    /// down, or it held the log back): the read is on the trail, decided as of then.
    LateLog { lag_ms: u64 },
}

impl FindingKind {
    pub fn code(&self) -> &'static str {
        match self {
            Self::DeniedAccess(_) => "denied-access",
            Self::BreakGlass { .. } => "break-glass",
            Self::ReadVolume { .. } => "read-volume",
            Self::AfterRevocation => "after-revocation",
            Self::KeyRecovery => "key-recovery",
            Self::LateLog { .. } => "late-log",
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::DeniedAccess(reason) => {
                out.push(1);
                reason.write(out);
            }
            Self::BreakGlass { reason } => {
                out.push(2);
                out.push(*reason);
            }
            Self::ReadVolume {
                count,
                window_start_ms,
            } => {
                out.push(3);
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&window_start_ms.to_be_bytes());
            }
            Self::AfterRevocation => out.push(4),
            Self::KeyRecovery => out.push(5),
            Self::LateLog { lag_ms } => {
                out.push(6);
                out.extend_from_slice(&lag_ms.to_be_bytes());
            }
        }
    }
}

/// A supervision finding, for the auditor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub actor: PublicKey,
    pub patient: PatientId,
    pub time_ms: u64,
    pub transaction: Digest,
}

/// Where a finding sits on the chain: (height, position in block, sequence).
pub type FindingKey = (u64, u32, u8);

/// An auditor's review of a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    pub auditor: PublicKey,
    pub verdict: Verdict,
    /// Block time of the review.
    pub time_ms: u64,
}

/// What the auditor concluded (a code on chain, never free text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Justified = 1,
    NotJustified = 2,
}

impl Verdict {
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Justified),
            2 => Some(Self::NotJustified),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Justified => "justified",
            Self::NotJustified => "not-justified",
        }
    }
}

/// An open break-glass access of one clinician to one patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakGlassEntry {
    pub reason: u8,
    pub opened_ms: u64,
    pub until_ms: u64,
}

/// The 32 bytes of a public key, as the contracts crate names identities.
pub fn key_bytes(key: &PublicKey) -> consent::Key {
    key.as_ref().try_into().expect("32-byte public key")
}

/// A public key from its 32 bytes, if they encode one.
pub fn public_key(bytes: &consent::Key) -> Option<PublicKey> {
    ehrchain_types::decode_public_key(*bytes).ok()
}

/// The keys that may grant and revoke for a patient: their own and their guardians'.
/// How long a proposal stays open for votes (block time).
pub const PROPOSAL_OPEN_MS: u64 = 7 * 24 * 3_600_000;

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalStatus {
    Open,
    Passed { height: u64, effective_height: u64 },
    Rejected { height: u64 },
}

/// A governance proposal and its votes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub action: GovernanceAction,
    pub proposer: PublicKey,
    /// Members when it was proposed: the thresholds count against this.
    pub electorate: u32,
    pub yes: Vec<PublicKey>,
    pub no: Vec<PublicKey>,
    pub created_ms: u64,
    pub status: ProposalStatus,
}

impl Proposal {
    /// More than two thirds of the electorate said yes.
    pub fn passes(&self) -> bool {
        self.yes.len() as u64 * 3 > u64::from(self.electorate) * 2
    }

    /// So many said no that two thirds can no longer be reached.
    pub fn fails(&self) -> bool {
        self.no.len() as u64 * 3 >= u64::from(self.electorate)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        self.action.write(out);
        out.extend_from_slice(self.proposer.as_ref());
        out.extend_from_slice(&self.electorate.to_be_bytes());
        for votes in [&self.yes, &self.no] {
            out.extend_from_slice(&(votes.len() as u32).to_be_bytes());
            for key in votes {
                out.extend_from_slice(key.as_ref());
            }
        }
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        match self.status {
            ProposalStatus::Open => out.push(0),
            ProposalStatus::Passed {
                height,
                effective_height,
            } => {
                out.push(1);
                out.extend_from_slice(&height.to_be_bytes());
                out.extend_from_slice(&effective_height.to_be_bytes());
            }
            ProposalStatus::Rejected { height } => {
                out.push(2);
                out.extend_from_slice(&height.to_be_bytes());
            }
        }
    }
}
