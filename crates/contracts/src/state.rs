//! The application state and its deterministic state transition.
//!
//! The state is what finalized transactions have done: each signer's next nonce, the registry
//! of anchored digests, the identities (institutions from genesis, clinicians, patients), and
//! the on-chain facts of every record version. It is executed identically on every validator: iteration is
//! over `BTreeMap`s, nothing reads a clock or a random source.
//!
//! The state root is a commitment chain: `root_h = SHA-256("ehrchain-state-v1" | root_{h-1} |
//! height | SHA-256(writes_h))`, where `writes_h` is the block's state writes in key order. Two
//! validators with the same root have applied the same writes in the same order from the same
//! genesis, so they hold the same state.

use crate::consent::{Grant, GrantId};
use crate::facts::{
    AccessEvent, AnchorRecord, AppEntry, BreakGlassEntry, EventKey, Finding, FindingKey, Identity,
    PatientEntry, Proposal, ProposalStatus, RecordVersion, Review, Role, SessionEntry,
};
use ehrchain_crypto::jwk::ClientJwk;
use ehrchain_types::{Digest, PatientId, ProposalId, PublicKey, RecordId, genesis::Rules, sha256};
use std::collections::BTreeMap;

/// A state read interface, so execution can run over the finalized state plus overlays.
pub trait Reader {
    fn nonce(&self, signer: &PublicKey) -> u64;
    fn anchored(&self, digest: &Digest) -> bool;
    fn identity(&self, key: &PublicKey) -> Option<Identity>;
    fn patient(&self, patient: &PatientId) -> Option<PatientEntry>;
    /// The newest version of a record.
    fn latest(&self, record: &RecordId) -> Option<RecordVersion>;
    /// Whether `key` wrote some version of `record`.
    fn authored(&self, record: &RecordId, key: &PublicKey) -> bool;
    fn grant(&self, patient: &PatientId, id: &GrantId) -> Option<Grant>;
    /// Every grant of a patient, in id order.
    fn grants(&self, patient: &PatientId) -> Vec<Grant>;
    fn break_glass(&self, actor: &PublicKey, patient: &PatientId) -> Option<BreakGlassEntry>;
    /// The height at which `key` was rotated away, if it was.
    fn retired(&self, key: &PublicKey) -> Option<u64>;
    fn proposal(&self, id: &ProposalId) -> Option<Proposal>;
    /// Block time of the newest block this view includes.
    fn time_ms(&self) -> u64;
    /// How many member institutions there are.
    fn member_count(&self) -> u32;
    /// The member institutions' keys, sorted.
    fn member_keys(&self) -> Vec<PublicKey>;
    /// Reads by `actor` counted in supervision window `window`.
    fn reads(&self, actor: &PublicKey, window: u64) -> u32;
    fn rules(&self) -> Rules;
    /// The session a key signs for, if it is a session key.
    fn session(&self, key: &PublicKey) -> Option<SessionEntry>;
    /// Whether a client assertion (by its SHA-256) already opened a session.
    fn assertion_used(&self, hash: &Digest) -> bool;
    /// The next entry number an institution's access log must record.
    fn access_log_next(&self, institution: &PublicKey) -> u64;
    /// The client keys (JWKs) an identity registered for its assertions, in registration order.
    fn client_keys(&self, identity: &PublicKey) -> Vec<ClientJwk>;
    /// The SMART app registered under `client_id`, if any.
    fn app(&self, client_id: &str) -> Option<AppEntry>;
    /// A supervision finding, by its position.
    fn finding_at(&self, key: &FindingKey) -> Option<Finding>;
    /// The auditor's review of a finding, once it has one.
    fn review(&self, key: &FindingKey) -> Option<Review>;
}

/// The writes of one block, keyed for deterministic ordering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub nonces: BTreeMap<PublicKey, u64>,
    pub anchors: BTreeMap<Digest, AnchorRecord>,
    pub identities: BTreeMap<PublicKey, Identity>,
    pub patients: BTreeMap<PatientId, PatientEntry>,
    pub versions: BTreeMap<(RecordId, u32), RecordVersion>,
    pub grants: BTreeMap<(PatientId, GrantId), Grant>,
    /// The share bundle of a grant, when it has one.
    pub shares: BTreeMap<(PatientId, GrantId), [u8; 32]>,
    pub break_glass: BTreeMap<(PublicKey, PatientId), BreakGlassEntry>,
    pub reads: BTreeMap<(PublicKey, u64), u32>,
    /// Keys rotated away, with the height.
    pub retired: BTreeMap<PublicKey, u64>,
    pub proposals: BTreeMap<ProposalId, Proposal>,
    /// Members admitted (true) or removed (false).
    pub members: BTreeMap<PublicKey, bool>,
    /// The access trail.
    pub events: BTreeMap<EventKey, AccessEvent>,
    /// Supervision findings, by (height, position in block, sequence).
    pub findings: BTreeMap<(u64, u32, u8), Finding>,
    /// Auditors' reviews of findings, by the finding's position.
    pub reviews: BTreeMap<FindingKey, Review>,
    /// Gateway sessions, by session key.
    pub sessions: BTreeMap<PublicKey, SessionEntry>,
    /// Client assertions that opened a session (SHA-256), with the session key.
    pub assertions: BTreeMap<Digest, PublicKey>,
    /// The next access-log entry number of each institution that has logged reads.
    pub access_logs: BTreeMap<PublicKey, u64>,
    /// Each identity's client keys after this block (the whole list, replaced on change).
    pub client_keys: BTreeMap<PublicKey, Vec<ClientJwk>>,
    /// SMART apps registered (`Some`) or removed (`None`) by `client_id`.
    pub apps: BTreeMap<String, Option<AppEntry>>,
    /// Block time of the block these writes belong to.
    pub time_ms: u64,
}

fn grants_in<'a>(
    grants: &'a BTreeMap<(PatientId, GrantId), Grant>,
    patient: &PatientId,
) -> impl Iterator<Item = (&'a GrantId, &'a Grant)> {
    grants
        .range((*patient, [0; 16])..=(*patient, [u8::MAX; 16]))
        .map(|((_, id), g)| (id, g))
}

fn authored_in(
    versions: &BTreeMap<(RecordId, u32), RecordVersion>,
    record: &RecordId,
    key: &PublicKey,
) -> bool {
    versions
        .range((*record, 0)..=(*record, u32::MAX))
        .any(|(_, v)| &v.author == key)
}

fn latest_in(
    versions: &BTreeMap<(RecordId, u32), RecordVersion>,
    record: &RecordId,
) -> Option<RecordVersion> {
    versions
        .range((*record, 0)..=(*record, u32::MAX))
        .next_back()
        .map(|(_, v)| v.clone())
}

impl Delta {
    /// Digest of the writes, in key order.
    pub fn digest(&self) -> Digest {
        let mut bytes = Vec::with_capacity(self.nonces.len() * 40 + self.anchors.len() * 110);
        bytes.extend_from_slice(&(self.nonces.len() as u64).to_be_bytes());
        for (signer, nonce) in &self.nonces {
            bytes.extend_from_slice(signer.as_ref());
            bytes.extend_from_slice(&nonce.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.anchors.len() as u64).to_be_bytes());
        for (digest, record) in &self.anchors {
            bytes.extend_from_slice(digest.as_ref());
            bytes.extend_from_slice(&record.label.to_be_bytes());
            bytes.extend_from_slice(record.signer.as_ref());
            bytes.extend_from_slice(&record.height.to_be_bytes());
            bytes.extend_from_slice(record.transaction.as_ref());
        }
        bytes.extend_from_slice(&(self.identities.len() as u64).to_be_bytes());
        for (key, identity) in &self.identities {
            bytes.extend_from_slice(key.as_ref());
            bytes.push(identity.role.code());
            match &identity.role {
                Role::Institution => {}
                Role::Clinician { institution } => bytes.extend_from_slice(institution.as_ref()),
                Role::Patient { patient } | Role::Guardian { patient } => {
                    bytes.extend_from_slice(patient)
                }
                Role::Auditor => {}
            }
            bytes.extend_from_slice(&identity.encryption_key);
            bytes.push(identity.previous.len() as u8);
            for key in &identity.previous {
                bytes.extend_from_slice(key.as_ref());
            }
        }
        bytes.extend_from_slice(&(self.patients.len() as u64).to_be_bytes());
        for (id, patient) in &self.patients {
            bytes.extend_from_slice(id);
            bytes.extend_from_slice(patient.key.as_ref());
            bytes.extend_from_slice(&patient.encryption_key);
            bytes.extend_from_slice(patient.home.as_ref());
            bytes.extend_from_slice(&patient.registered_height.to_be_bytes());
            bytes.extend_from_slice(&patient.erased_height.map_or(u64::MAX, |h| h).to_be_bytes());
            bytes.push(patient.guardians.len() as u8);
            for guardian in &patient.guardians {
                bytes.extend_from_slice(guardian.as_ref());
            }
        }
        bytes.extend_from_slice(&(self.versions.len() as u64).to_be_bytes());
        for ((record, version), entry) in &self.versions {
            bytes.extend_from_slice(record);
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&entry.anchor.patient);
            bytes.push(entry.anchor.resource_type);
            bytes.extend_from_slice(entry.anchor.ciphertext_hash.as_ref());
            bytes.extend_from_slice(&entry.anchor.ciphertext_size.to_be_bytes());
            bytes.extend_from_slice(&entry.anchor.timestamp_ms.to_be_bytes());
            bytes.extend_from_slice(entry.author.as_ref());
            bytes.extend_from_slice(&entry.height.to_be_bytes());
            bytes.extend_from_slice(entry.transaction.as_ref());
        }
        bytes.extend_from_slice(&(self.grants.len() as u64).to_be_bytes());
        for ((patient, id), grant) in &self.grants {
            bytes.extend_from_slice(patient);
            bytes.extend_from_slice(id);
            bytes.extend_from_slice(&grant.granted_by);
            bytes.extend_from_slice(&grant.grantee);
            bytes.push(grant.actions);
            bytes.push(grant.types.len() as u8);
            bytes.extend_from_slice(&grant.types);
            bytes.push(grant.purposes.len() as u8);
            bytes.extend(grant.purposes.iter().map(|p| *p as u8));
            bytes.extend_from_slice(&grant.valid_from_ms.to_be_bytes());
            bytes.extend_from_slice(&grant.valid_until_ms.to_be_bytes());
            bytes.extend_from_slice(&grant.revoked_at_ms.unwrap_or(u64::MAX).to_be_bytes());
        }
        bytes.extend_from_slice(&(self.shares.len() as u64).to_be_bytes());
        for ((patient, id), share) in &self.shares {
            bytes.extend_from_slice(patient);
            bytes.extend_from_slice(id);
            bytes.extend_from_slice(share);
        }
        bytes.extend_from_slice(&(self.break_glass.len() as u64).to_be_bytes());
        for ((actor, patient), entry) in &self.break_glass {
            bytes.extend_from_slice(actor.as_ref());
            bytes.extend_from_slice(patient);
            bytes.push(entry.reason);
            bytes.extend_from_slice(&entry.opened_ms.to_be_bytes());
            bytes.extend_from_slice(&entry.until_ms.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.reads.len() as u64).to_be_bytes());
        for ((actor, window), count) in &self.reads {
            bytes.extend_from_slice(actor.as_ref());
            bytes.extend_from_slice(&window.to_be_bytes());
            bytes.extend_from_slice(&count.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.retired.len() as u64).to_be_bytes());
        for (key, height) in &self.retired {
            bytes.extend_from_slice(key.as_ref());
            bytes.extend_from_slice(&height.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.proposals.len() as u64).to_be_bytes());
        for (id, proposal) in &self.proposals {
            bytes.extend_from_slice(id);
            proposal.write(&mut bytes);
        }
        bytes.extend_from_slice(&(self.members.len() as u64).to_be_bytes());
        for (key, admitted) in &self.members {
            bytes.extend_from_slice(key.as_ref());
            bytes.push(u8::from(*admitted));
        }
        bytes.extend_from_slice(&(self.events.len() as u64).to_be_bytes());
        for ((height, index, entry), event) in &self.events {
            bytes.extend_from_slice(&height.to_be_bytes());
            bytes.extend_from_slice(&index.to_be_bytes());
            bytes.extend_from_slice(&entry.to_be_bytes());
            bytes.extend_from_slice(event.actor.as_ref());
            bytes.extend_from_slice(&event.patient);
            match &event.record {
                Some((record, resource_type)) => {
                    bytes.push(1);
                    bytes.extend_from_slice(record);
                    bytes.push(*resource_type);
                }
                None => bytes.push(0),
            }
            bytes.push(event.purpose);
            event.outcome.write(&mut bytes);
            bytes.extend_from_slice(&event.time_ms.to_be_bytes());
            bytes.extend_from_slice(event.transaction.as_ref());
        }
        bytes.extend_from_slice(&(self.findings.len() as u64).to_be_bytes());
        for ((height, index, seq), finding) in &self.findings {
            bytes.extend_from_slice(&height.to_be_bytes());
            bytes.extend_from_slice(&index.to_be_bytes());
            bytes.push(*seq);
            finding.kind.write(&mut bytes);
            bytes.extend_from_slice(finding.actor.as_ref());
            bytes.extend_from_slice(&finding.patient);
            bytes.extend_from_slice(&finding.time_ms.to_be_bytes());
            bytes.extend_from_slice(finding.transaction.as_ref());
        }
        bytes.extend_from_slice(&(self.sessions.len() as u64).to_be_bytes());
        for (key, session) in &self.sessions {
            bytes.extend_from_slice(key.as_ref());
            bytes.extend_from_slice(session.identity.as_ref());
            bytes.extend_from_slice(&session.expires_ms.to_be_bytes());
            bytes.extend_from_slice(session.gateway.as_ref());
        }
        bytes.extend_from_slice(&(self.assertions.len() as u64).to_be_bytes());
        for (hash, key) in &self.assertions {
            bytes.extend_from_slice(hash.as_ref());
            bytes.extend_from_slice(key.as_ref());
        }
        bytes.extend_from_slice(&(self.access_logs.len() as u64).to_be_bytes());
        for (institution, next) in &self.access_logs {
            bytes.extend_from_slice(institution.as_ref());
            bytes.extend_from_slice(&next.to_be_bytes());
        }
        bytes.extend_from_slice(&(self.client_keys.len() as u64).to_be_bytes());
        for (identity, keys) in &self.client_keys {
            bytes.extend_from_slice(identity.as_ref());
            bytes.push(keys.len() as u8);
            for key in keys {
                key.write(&mut bytes);
            }
        }
        // Rows added with SMART App Launch, written only when present so that the roots of
        // blocks before it are unchanged; each opens with a tag, and nothing follows them.
        let app_sessions: Vec<_> = self
            .sessions
            .iter()
            .filter_map(|(key, s)| s.app.as_ref().map(|app| (key, app)))
            .collect();
        if !app_sessions.is_empty() {
            bytes.push(1);
            bytes.extend_from_slice(&(app_sessions.len() as u64).to_be_bytes());
            for (key, app) in app_sessions {
                bytes.extend_from_slice(key.as_ref());
                bytes.push(app.len() as u8);
                bytes.extend_from_slice(app.as_bytes());
            }
        }
        if !self.apps.is_empty() {
            bytes.push(2);
            bytes.extend_from_slice(&(self.apps.len() as u64).to_be_bytes());
            for (client_id, app) in &self.apps {
                bytes.push(client_id.len() as u8);
                bytes.extend_from_slice(client_id.as_bytes());
                let Some(app) = app else {
                    bytes.push(0);
                    continue;
                };
                bytes.push(1);
                bytes.extend_from_slice(app.institution.as_ref());
                bytes.push(app.name.len() as u8);
                bytes.extend_from_slice(app.name.as_bytes());
                bytes.push(app.redirect_uris.len() as u8);
                for uri in &app.redirect_uris {
                    bytes.extend_from_slice(&(uri.len() as u16).to_be_bytes());
                    bytes.extend_from_slice(uri.as_bytes());
                }
                match &app.jwk {
                    Some(key) => {
                        bytes.push(1);
                        key.write(&mut bytes);
                    }
                    None => bytes.push(0),
                }
            }
        }
        // Added with finding reviews: written only when present (tag 3), as above.
        if !self.reviews.is_empty() {
            bytes.push(3);
            bytes.extend_from_slice(&(self.reviews.len() as u64).to_be_bytes());
            for ((height, index, seq), review) in &self.reviews {
                bytes.extend_from_slice(&height.to_be_bytes());
                bytes.extend_from_slice(&index.to_be_bytes());
                bytes.push(*seq);
                bytes.extend_from_slice(review.auditor.as_ref());
                bytes.push(review.verdict as u8);
                bytes.extend_from_slice(&review.time_ms.to_be_bytes());
            }
        }
        let app_events: Vec<_> = self
            .events
            .iter()
            .filter_map(|(key, e)| e.app.as_ref().map(|app| (key, app)))
            .collect();
        if !app_events.is_empty() {
            bytes.push(3);
            bytes.extend_from_slice(&(app_events.len() as u64).to_be_bytes());
            for ((height, index, entry), app) in app_events {
                bytes.extend_from_slice(&height.to_be_bytes());
                bytes.extend_from_slice(&index.to_be_bytes());
                bytes.extend_from_slice(&entry.to_be_bytes());
                bytes.push(app.len() as u8);
                bytes.extend_from_slice(app.as_bytes());
            }
        }
        sha256(&[&bytes])
    }
}

/// The next state root after applying `delta` at `height`.
pub fn next_root(previous: &Digest, height: u64, delta: &Delta) -> Digest {
    sha256(&[
        b"ehrchain-state-v1",
        previous.as_ref(),
        &height.to_be_bytes(),
        delta.digest().as_ref(),
    ])
}

/// The state root a block header carries. It is `next_root`, except for the last block of an
/// epoch, whose root also commits to the next epoch's validators (the members after the
/// block): `epoch_root(next_root, epoch, validators)`. A finalization of that block by the
/// outgoing validators so certifies the incoming ones, which lets a proof verifier follow
/// validator-set changes from genesis offline.
pub fn block_root(base: &impl Reader, previous: &Digest, height: u64, delta: &Delta) -> Digest {
    let root = next_root(previous, height, delta);
    let epoch_blocks = base.rules().epoch_blocks.max(1);
    if !closes_epoch(height, epoch_blocks) {
        return root;
    }
    let members = Layered { base, delta }.member_keys();
    epoch_root(&root, (height + 1) / epoch_blocks, &members)
}

/// Whether the block at `height` is the last of its epoch.
pub fn closes_epoch(height: u64, epoch_blocks: u64) -> bool {
    (height + 1).is_multiple_of(epoch_blocks.max(1))
}

pub use ehrchain_types::proof::epoch_root;

/// Root of the empty state at genesis.
pub fn genesis_root(chain_id: u64) -> Digest {
    sha256(&[b"ehrchain-genesis-v1", &chain_id.to_be_bytes()])
}

/// State reads over `base` with `delta` (the block being built or checked) on top.
pub struct Layered<'a, R: Reader> {
    pub base: &'a R,
    pub delta: &'a Delta,
}

impl<R: Reader> Reader for Layered<'_, R> {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        self.delta
            .nonces
            .get(signer)
            .copied()
            .unwrap_or_else(|| self.base.nonce(signer))
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.delta.anchors.contains_key(digest) || self.base.anchored(digest)
    }

    fn identity(&self, key: &PublicKey) -> Option<Identity> {
        match self.delta.identities.get(key) {
            Some(identity) => Some(identity.clone()),
            None => self.base.identity(key),
        }
    }

    fn patient(&self, patient: &PatientId) -> Option<PatientEntry> {
        match self.delta.patients.get(patient) {
            Some(entry) => Some(entry.clone()),
            None => self.base.patient(patient),
        }
    }

    fn latest(&self, record: &RecordId) -> Option<RecordVersion> {
        latest_in(&self.delta.versions, record).or_else(|| self.base.latest(record))
    }

    fn authored(&self, record: &RecordId, key: &PublicKey) -> bool {
        authored_in(&self.delta.versions, record, key) || self.base.authored(record, key)
    }

    fn grant(&self, patient: &PatientId, id: &GrantId) -> Option<Grant> {
        match self.delta.grants.get(&(*patient, *id)) {
            Some(grant) => Some(grant.clone()),
            None => self.base.grant(patient, id),
        }
    }

    fn grants(&self, patient: &PatientId) -> Vec<Grant> {
        merge_grants(self.base.grants(patient), [self.delta], patient)
    }

    fn break_glass(&self, actor: &PublicKey, patient: &PatientId) -> Option<BreakGlassEntry> {
        match self.delta.break_glass.get(&(actor.clone(), *patient)) {
            Some(entry) => Some(*entry),
            None => self.base.break_glass(actor, patient),
        }
    }

    fn reads(&self, actor: &PublicKey, window: u64) -> u32 {
        match self.delta.reads.get(&(actor.clone(), window)) {
            Some(count) => *count,
            None => self.base.reads(actor, window),
        }
    }

    fn retired(&self, key: &PublicKey) -> Option<u64> {
        self.delta
            .retired
            .get(key)
            .copied()
            .or_else(|| self.base.retired(key))
    }

    fn proposal(&self, id: &ProposalId) -> Option<Proposal> {
        match self.delta.proposals.get(id) {
            Some(p) => Some(p.clone()),
            None => self.base.proposal(id),
        }
    }

    fn member_count(&self) -> u32 {
        member_change(self.base.member_count(), [self.delta])
    }

    fn member_keys(&self) -> Vec<PublicKey> {
        apply_members(self.base.member_keys(), [self.delta])
    }

    fn time_ms(&self) -> u64 {
        self.delta.time_ms.max(self.base.time_ms())
    }

    fn rules(&self) -> Rules {
        self.base.rules()
    }

    fn session(&self, key: &PublicKey) -> Option<SessionEntry> {
        match self.delta.sessions.get(key) {
            Some(session) => Some(session.clone()),
            None => self.base.session(key),
        }
    }

    fn assertion_used(&self, hash: &Digest) -> bool {
        self.delta.assertions.contains_key(hash) || self.base.assertion_used(hash)
    }

    fn access_log_next(&self, institution: &PublicKey) -> u64 {
        match self.delta.access_logs.get(institution) {
            Some(next) => *next,
            None => self.base.access_log_next(institution),
        }
    }

    fn client_keys(&self, identity: &PublicKey) -> Vec<ClientJwk> {
        match self.delta.client_keys.get(identity) {
            Some(keys) => keys.clone(),
            None => self.base.client_keys(identity),
        }
    }

    fn app(&self, client_id: &str) -> Option<AppEntry> {
        match self.delta.apps.get(client_id) {
            Some(app) => app.clone(),
            None => self.base.app(client_id),
        }
    }

    fn finding_at(&self, key: &FindingKey) -> Option<Finding> {
        match self.delta.findings.get(key) {
            Some(finding) => Some(finding.clone()),
            None => self.base.finding_at(key),
        }
    }

    fn review(&self, key: &FindingKey) -> Option<Review> {
        match self.delta.reviews.get(key) {
            Some(review) => Some(review.clone()),
            None => self.base.review(key),
        }
    }
}

/// A member count after the admissions and removals of `deltas`.
fn member_change<'a>(base: u32, deltas: impl IntoIterator<Item = &'a Delta>) -> u32 {
    let mut count = i64::from(base);
    for delta in deltas {
        for admitted in delta.members.values() {
            count += if *admitted { 1 } else { -1 };
        }
    }
    count.clamp(0, i64::from(u32::MAX)) as u32
}

/// The member keys of `base` after `deltas` (oldest first), sorted.
fn apply_members<'a>(
    base: Vec<PublicKey>,
    deltas: impl IntoIterator<Item = &'a Delta>,
) -> Vec<PublicKey> {
    let mut members: std::collections::BTreeSet<PublicKey> = base.into_iter().collect();
    for delta in deltas {
        for (key, admitted) in &delta.members {
            if *admitted {
                members.insert(key.clone());
            } else {
                members.remove(key);
            }
        }
    }
    members.into_iter().collect()
}

/// A patient's grants from `base`, overwritten by `deltas` applied oldest first.
fn merge_grants<'a>(
    base: Vec<Grant>,
    deltas: impl IntoIterator<Item = &'a Delta>,
    patient: &PatientId,
) -> Vec<Grant> {
    let mut merged: BTreeMap<GrantId, Grant> = base.into_iter().map(|g| (g.id, g)).collect();
    for delta in deltas {
        for (id, grant) in grants_in(&delta.grants, patient) {
            merged.insert(*id, grant.clone());
        }
    }
    merged.into_values().collect()
}

/// The finalized state, held in memory and rebuilt from the block log at start-up.
#[derive(Clone, Debug, Default)]
pub struct State {
    nonces: BTreeMap<PublicKey, u64>,
    anchors: BTreeMap<Digest, AnchorRecord>,
    identities: BTreeMap<PublicKey, Identity>,
    patients: BTreeMap<PatientId, PatientEntry>,
    versions: BTreeMap<(RecordId, u32), RecordVersion>,
    grants: BTreeMap<(PatientId, GrantId), Grant>,
    shares: BTreeMap<(PatientId, GrantId), [u8; 32]>,
    break_glass: BTreeMap<(PublicKey, PatientId), BreakGlassEntry>,
    reads: BTreeMap<(PublicKey, u64), u32>,
    retired: BTreeMap<PublicKey, u64>,
    proposals: BTreeMap<ProposalId, Proposal>,
    members: std::collections::BTreeSet<PublicKey>,
    events: BTreeMap<EventKey, AccessEvent>,
    findings: BTreeMap<(u64, u32, u8), Finding>,
    reviews: BTreeMap<FindingKey, Review>,
    sessions: BTreeMap<PublicKey, SessionEntry>,
    assertions: BTreeMap<Digest, PublicKey>,
    access_logs: BTreeMap<PublicKey, u64>,
    client_keys: BTreeMap<PublicKey, Vec<ClientJwk>>,
    apps: BTreeMap<String, AppEntry>,
    rules: Rules,
    /// Block time of the newest committed block.
    time_ms: u64,
    /// Derived index: the records of each patient.
    patient_records: BTreeMap<(PatientId, RecordId), ()>,
    /// Derived index: the access events of each patient.
    patient_events: BTreeMap<(PatientId, EventKey), ()>,
    /// Derived index: the sessions of each identity.
    identity_sessions: BTreeMap<PublicKey, std::collections::BTreeSet<PublicKey>>,
    /// Derived index: record versions by envelope hash.
    version_hashes: BTreeMap<Digest, (RecordId, u32)>,
    /// Derived index: grants by the end of their validity.
    grant_expiry: BTreeMap<(u64, PatientId, GrantId), ()>,
    /// Derived: the validator set of each consensus epoch, fixed at the epoch's first block.
    epoch_validators: BTreeMap<u64, Vec<PublicKey>>,
    /// Derived: for each epoch after genesis, the `next_root` of the block before it (the
    /// root its header carries is that bound to the validators, see `block_root`).
    epoch_state_roots: BTreeMap<u64, Digest>,
    /// Derived: the peer address of each member admitted by governance.
    member_addresses: BTreeMap<PublicKey, std::net::SocketAddr>,
}

impl State {
    /// The state at genesis: the member institutions with their encryption keys, the
    /// auditors, and the rules of the access contracts.
    pub fn new(
        institutions: &[(PublicKey, [u8; 32])],
        auditors: &[PublicKey],
        rules: Rules,
    ) -> Self {
        let mut state = Self {
            rules,
            ..Self::default()
        };
        for key in auditors {
            state.identities.insert(
                key.clone(),
                Identity {
                    role: Role::Auditor,
                    encryption_key: [0; 32],
                    previous: Vec::new(),
                },
            );
        }
        for (key, encryption_key) in institutions {
            state.members.insert(key.clone());
            state.identities.insert(
                key.clone(),
                Identity {
                    role: Role::Institution,
                    encryption_key: *encryption_key,
                    previous: Vec::new(),
                },
            );
        }
        let genesis_set = state.members.iter().cloned().collect();
        state.epoch_validators.insert(0, genesis_set);
        state
    }

    /// Commit the writes of the finalized block at `height` (whose parent's root is
    /// `previous_root`), and close its epoch if it is an epoch's last block: the members now
    /// are the next epoch's validators. Every node does this at the same height over the same
    /// state, so every node agrees on every epoch's set. Returns the epoch it opened, if any.
    pub fn commit_block(
        &mut self,
        height: u64,
        previous_root: &Digest,
        delta: Delta,
    ) -> Option<u64> {
        let epoch_blocks = self.rules.epoch_blocks.max(1);
        if !closes_epoch(height, epoch_blocks) {
            self.commit(delta);
            return None;
        }
        let state_root = next_root(previous_root, height, &delta);
        self.commit(delta);
        let next = (height + 1) / epoch_blocks;
        let set = self.members.iter().cloned().collect();
        self.epoch_validators.insert(next, set);
        self.epoch_state_roots.insert(next, state_root);
        Some(next)
    }

    /// The `next_root` of epoch `epoch`'s boundary block (see `block_root`).
    pub fn epoch_state_root(&self, epoch: u64) -> Option<Digest> {
        self.epoch_state_roots.get(&epoch).copied()
    }

    /// The validators of consensus epoch `epoch` (sorted by key), once it is known.
    pub fn epoch_validators(&self, epoch: u64) -> Option<&[PublicKey]> {
        self.epoch_validators.get(&epoch).map(Vec::as_slice)
    }

    /// Every epoch whose validator set is known, with the set.
    pub fn epochs(&self) -> impl Iterator<Item = (u64, &[PublicKey])> {
        self.epoch_validators
            .iter()
            .map(|(e, v)| (*e, v.as_slice()))
    }

    /// The address a member admitted by governance gave for its validator.
    pub fn member_address(&self, key: &PublicKey) -> Option<std::net::SocketAddr> {
        self.member_addresses.get(key).copied()
    }

    pub fn commit(&mut self, delta: Delta) {
        self.nonces.extend(delta.nonces);
        self.anchors.extend(delta.anchors);
        self.identities.extend(delta.identities);
        self.patients.extend(delta.patients);
        for (key, version) in delta.versions {
            self.patient_records
                .insert((version.anchor.patient, key.0), ());
            // A tombstone has no envelope: its shared marker hash names no version.
            if !version.anchor.is_tombstone() {
                self.version_hashes
                    .insert(version.anchor.ciphertext_hash, key);
            }
            self.versions.insert(key, version);
        }
        self.shares.extend(delta.shares);
        for (key, grant) in delta.grants {
            self.grant_expiry
                .insert((grant.valid_until_ms, key.0, key.1), ());
            self.grants.insert(key, grant);
        }
        self.break_glass.extend(delta.break_glass);
        self.reads.extend(delta.reads);
        self.retired.extend(delta.retired);
        for proposal in delta.proposals.values() {
            if let (
                ProposalStatus::Passed { .. },
                ehrchain_types::GovernanceAction::AddMember {
                    key, p2p_address, ..
                },
            ) = (&proposal.status, &proposal.action)
            {
                self.member_addresses.insert(key.clone(), *p2p_address);
            }
        }
        self.proposals.extend(delta.proposals);
        for (key, admitted) in delta.members {
            if admitted {
                self.members.insert(key);
            } else {
                self.members.remove(&key);
            }
        }
        for (key, event) in delta.events {
            self.patient_events.insert((event.patient, key), ());
            self.events.insert(key, event);
        }
        self.findings.extend(delta.findings);
        self.reviews.extend(delta.reviews);
        for (key, session) in delta.sessions {
            self.identity_sessions
                .entry(session.identity.clone())
                .or_default()
                .insert(key.clone());
            self.sessions.insert(key, session);
        }
        self.assertions.extend(delta.assertions);
        self.access_logs.extend(delta.access_logs);
        for (identity, keys) in delta.client_keys {
            if keys.is_empty() {
                self.client_keys.remove(&identity);
            } else {
                self.client_keys.insert(identity, keys);
            }
        }
        for (client_id, app) in delta.apps {
            match app {
                Some(app) => self.apps.insert(client_id, app),
                None => self.apps.remove(&client_id),
            };
        }
        self.time_ms = self.time_ms.max(delta.time_ms);
    }

    /// The sessions ever opened for `identity`, by session key (ended ones too: their
    /// `expires_ms` says when).
    pub fn sessions_of(&self, identity: &PublicKey) -> Vec<(PublicKey, SessionEntry)> {
        self.identity_sessions
            .get(identity)
            .into_iter()
            .flatten()
            .filter_map(|key| self.sessions.get(key).map(|s| (key.clone(), s.clone())))
            .collect()
    }

    /// Every registered SMART app, by `client_id`.
    pub fn apps(&self) -> impl Iterator<Item = (&String, &AppEntry)> {
        self.apps.iter()
    }

    /// A patient's access trail, oldest first.
    pub fn patient_events(&self, patient: &PatientId) -> Vec<(EventKey, &AccessEvent)> {
        self.patient_events
            .range((*patient, (0, 0, 0))..=(*patient, (u64::MAX, u32::MAX, u16::MAX)))
            .filter_map(|((_, key), ())| self.events.get(key).map(|e| (*key, e)))
            .collect()
    }

    /// The whole access trail, oldest first.
    pub fn events(&self) -> impl Iterator<Item = (&EventKey, &AccessEvent)> {
        self.events.iter()
    }

    /// The access event recorded by the transaction at (height, index) (its first entry).
    pub fn event(&self, height: u64, index: u32) -> Option<&AccessEvent> {
        self.events.get(&(height, index, 0))
    }

    /// The access event at `key`.
    pub fn event_at(&self, key: &EventKey) -> Option<&AccessEvent> {
        self.events.get(key)
    }

    /// How many access events the trail holds.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// The first finding raised by the transaction at `index` of block `height`.
    pub fn finding(&self, height: u64, index: u32) -> Option<&Finding> {
        self.findings.get(&(height, index, 0))
    }

    /// Every supervision finding, oldest first.
    pub fn findings(&self) -> impl Iterator<Item = (&(u64, u32, u8), &Finding)> {
        self.findings.iter()
    }

    /// The review of a finding, once an auditor made it.
    pub fn review_of(&self, key: &FindingKey) -> Option<&Review> {
        self.reviews.get(key)
    }

    /// Grants whose validity ends in `(after_ms, until_ms]`, with their patient.
    pub fn grants_expiring(&self, after_ms: u64, until_ms: u64) -> Vec<Grant> {
        if until_ms <= after_ms {
            return Vec::new();
        }
        self.grant_expiry
            .range((after_ms + 1, [0; 16], [0; 16])..=(until_ms, [u8::MAX; 16], [u8::MAX; 16]))
            .filter_map(|((_, p, g), ())| self.grants.get(&(*p, *g)).cloned())
            .collect()
    }

    /// The share bundle hash of a grant, if it has one.
    pub fn grant_share(&self, patient: &PatientId, id: &GrantId) -> Option<[u8; 32]> {
        self.shares.get(&(*patient, *id)).copied()
    }

    /// The record version whose envelope has this hash.
    pub fn version_by_hash(&self, hash: &[u8; 32]) -> Option<RecordVersion> {
        let key = self.version_hashes.get(&Digest::from(*hash))?;
        self.versions.get(key).cloned()
    }

    /// Every governance proposal, in id order.
    pub fn proposals(&self) -> impl Iterator<Item = (&ProposalId, &Proposal)> {
        self.proposals.iter()
    }

    /// The member institutions, in key order.
    pub fn members(&self) -> impl Iterator<Item = &PublicKey> {
        self.members.iter()
    }

    /// Every grant of every patient, in (patient, id) order.
    pub fn all_grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// Every version of a record, oldest first.
    pub fn versions(&self, record: &RecordId) -> Vec<RecordVersion> {
        self.versions
            .range((*record, 0)..=(*record, u32::MAX))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The records of a patient, in id order.
    pub fn patient_records(&self, patient: &PatientId) -> Vec<RecordId> {
        self.patient_records
            .range((*patient, [0; 16])..=(*patient, [u8::MAX; 16]))
            .map(|((_, record), ())| *record)
            .collect()
    }

    /// All patients, in id order.
    pub fn patients(&self) -> impl Iterator<Item = (&PatientId, &PatientEntry)> {
        self.patients.iter()
    }

    /// All record versions, in key order.
    pub fn all_versions(&self) -> impl Iterator<Item = &RecordVersion> {
        self.versions.values()
    }

    /// All identities, in key order.
    pub fn identities(&self) -> impl Iterator<Item = (&PublicKey, &Identity)> {
        self.identities.iter()
    }

    pub fn anchor(&self, digest: &Digest) -> Option<&AnchorRecord> {
        self.anchors.get(digest)
    }

    pub fn accounts(&self) -> usize {
        self.nonces.len()
    }
}

impl Reader for State {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        self.nonces.get(signer).copied().unwrap_or(0)
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.anchors.contains_key(digest)
    }

    fn identity(&self, key: &PublicKey) -> Option<Identity> {
        self.identities.get(key).cloned()
    }

    fn patient(&self, patient: &PatientId) -> Option<PatientEntry> {
        self.patients.get(patient).cloned()
    }

    fn latest(&self, record: &RecordId) -> Option<RecordVersion> {
        latest_in(&self.versions, record)
    }

    fn authored(&self, record: &RecordId, key: &PublicKey) -> bool {
        authored_in(&self.versions, record, key)
    }

    fn grant(&self, patient: &PatientId, id: &GrantId) -> Option<Grant> {
        self.grants.get(&(*patient, *id)).cloned()
    }

    fn grants(&self, patient: &PatientId) -> Vec<Grant> {
        grants_in(&self.grants, patient)
            .map(|(_, g)| g.clone())
            .collect()
    }

    fn break_glass(&self, actor: &PublicKey, patient: &PatientId) -> Option<BreakGlassEntry> {
        self.break_glass.get(&(actor.clone(), *patient)).copied()
    }

    fn reads(&self, actor: &PublicKey, window: u64) -> u32 {
        self.reads
            .get(&(actor.clone(), window))
            .copied()
            .unwrap_or(0)
    }

    fn retired(&self, key: &PublicKey) -> Option<u64> {
        self.retired.get(key).copied()
    }

    fn proposal(&self, id: &ProposalId) -> Option<Proposal> {
        self.proposals.get(id).cloned()
    }

    fn member_count(&self) -> u32 {
        self.members.len() as u32
    }

    fn member_keys(&self) -> Vec<PublicKey> {
        self.members.iter().cloned().collect()
    }

    fn time_ms(&self) -> u64 {
        self.time_ms
    }

    fn rules(&self) -> Rules {
        self.rules
    }

    fn session(&self, key: &PublicKey) -> Option<SessionEntry> {
        self.sessions.get(key).cloned()
    }

    fn assertion_used(&self, hash: &Digest) -> bool {
        self.assertions.contains_key(hash)
    }

    fn access_log_next(&self, institution: &PublicKey) -> u64 {
        self.access_logs.get(institution).copied().unwrap_or(0)
    }

    fn client_keys(&self, identity: &PublicKey) -> Vec<ClientJwk> {
        self.client_keys.get(identity).cloned().unwrap_or_default()
    }

    fn app(&self, client_id: &str) -> Option<AppEntry> {
        self.apps.get(client_id).cloned()
    }

    fn finding_at(&self, key: &FindingKey) -> Option<Finding> {
        self.findings.get(key).cloned()
    }

    fn review(&self, key: &FindingKey) -> Option<Review> {
        self.reviews.get(key).cloned()
    }
}

/// A chain of not-yet-finalized deltas over the finalized state, newest first.
pub struct Overlay<'a> {
    pub base: &'a State,
    pub deltas: Vec<&'a Delta>,
}

impl Reader for Overlay<'_> {
    fn nonce(&self, signer: &PublicKey) -> u64 {
        for delta in &self.deltas {
            if let Some(nonce) = delta.nonces.get(signer) {
                return *nonce;
            }
        }
        self.base.nonce(signer)
    }

    fn anchored(&self, digest: &Digest) -> bool {
        self.deltas.iter().any(|d| d.anchors.contains_key(digest)) || self.base.anchored(digest)
    }

    fn identity(&self, key: &PublicKey) -> Option<Identity> {
        self.deltas
            .iter()
            .find_map(|d| d.identities.get(key).cloned())
            .or_else(|| self.base.identity(key))
    }

    fn patient(&self, patient: &PatientId) -> Option<PatientEntry> {
        self.deltas
            .iter()
            .find_map(|d| d.patients.get(patient).cloned())
            .or_else(|| self.base.patient(patient))
    }

    fn latest(&self, record: &RecordId) -> Option<RecordVersion> {
        self.deltas
            .iter()
            .find_map(|d| latest_in(&d.versions, record))
            .or_else(|| self.base.latest(record))
    }

    fn authored(&self, record: &RecordId, key: &PublicKey) -> bool {
        self.deltas
            .iter()
            .any(|d| authored_in(&d.versions, record, key))
            || self.base.authored(record, key)
    }

    fn grant(&self, patient: &PatientId, id: &GrantId) -> Option<Grant> {
        self.deltas
            .iter()
            .find_map(|d| d.grants.get(&(*patient, *id)).cloned())
            .or_else(|| self.base.grant(patient, id))
    }

    fn grants(&self, patient: &PatientId) -> Vec<Grant> {
        merge_grants(
            self.base.grants(patient),
            self.deltas.iter().rev().copied(),
            patient,
        )
    }

    fn break_glass(&self, actor: &PublicKey, patient: &PatientId) -> Option<BreakGlassEntry> {
        let key = (actor.clone(), *patient);
        self.deltas
            .iter()
            .find_map(|d| d.break_glass.get(&key).copied())
            .or_else(|| self.base.break_glass(actor, patient))
    }

    fn reads(&self, actor: &PublicKey, window: u64) -> u32 {
        let key = (actor.clone(), window);
        self.deltas
            .iter()
            .find_map(|d| d.reads.get(&key).copied())
            .unwrap_or_else(|| self.base.reads(actor, window))
    }

    fn retired(&self, key: &PublicKey) -> Option<u64> {
        self.deltas
            .iter()
            .find_map(|d| d.retired.get(key).copied())
            .or_else(|| self.base.retired(key))
    }

    fn proposal(&self, id: &ProposalId) -> Option<Proposal> {
        self.deltas
            .iter()
            .find_map(|d| d.proposals.get(id).cloned())
            .or_else(|| self.base.proposal(id))
    }

    fn member_count(&self) -> u32 {
        member_change(self.base.member_count(), self.deltas.iter().copied())
    }

    fn member_keys(&self) -> Vec<PublicKey> {
        // Deltas are newest first; admissions and removals apply oldest first.
        apply_members(self.base.member_keys(), self.deltas.iter().rev().copied())
    }

    fn time_ms(&self) -> u64 {
        self.deltas
            .iter()
            .map(|d| d.time_ms)
            .fold(self.base.time_ms(), u64::max)
    }

    fn rules(&self) -> Rules {
        self.base.rules()
    }

    fn session(&self, key: &PublicKey) -> Option<SessionEntry> {
        self.deltas
            .iter()
            .find_map(|d| d.sessions.get(key).cloned())
            .or_else(|| self.base.session(key))
    }

    fn assertion_used(&self, hash: &Digest) -> bool {
        self.deltas.iter().any(|d| d.assertions.contains_key(hash))
            || self.base.assertion_used(hash)
    }

    fn access_log_next(&self, institution: &PublicKey) -> u64 {
        self.deltas
            .iter()
            .find_map(|d| d.access_logs.get(institution).copied())
            .unwrap_or_else(|| self.base.access_log_next(institution))
    }

    fn client_keys(&self, identity: &PublicKey) -> Vec<ClientJwk> {
        self.deltas
            .iter()
            .find_map(|d| d.client_keys.get(identity).cloned())
            .unwrap_or_else(|| self.base.client_keys(identity))
    }

    fn app(&self, client_id: &str) -> Option<AppEntry> {
        self.deltas
            .iter()
            .find_map(|d| d.apps.get(client_id).cloned())
            .unwrap_or_else(|| self.base.app(client_id))
    }

    fn finding_at(&self, key: &FindingKey) -> Option<Finding> {
        self.deltas
            .iter()
            .find_map(|d| d.findings.get(key).cloned())
            .or_else(|| self.base.finding_at(key))
    }

    fn review(&self, key: &FindingKey) -> Option<Review> {
        self.deltas
            .iter()
            .find_map(|d| d.reviews.get(key).cloned())
            .or_else(|| self.base.review(key))
    }
}
