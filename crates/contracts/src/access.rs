//! The access contracts: guardians, consent grants and revocations, recorded reads,
//! break-glass, and automatic supervision. Executed by every validator inside block execution
//! (see `execute::apply`), so every node reaches the same decision at the same height; time is
//! the block's timestamp.
//!
//! A read attempt is never rejected for lack of a right: it is recorded with its outcome, so
//! denied attempts stay on the trail and feed supervision. Keys are released by a node only
//! against an allowed, final access event (see `ehrchain-api`).

use crate::consent::{self, Action, Denial, Grant, Purpose, Refusal, Request};
use crate::facts::{
    AccessEvent, At, BREAK_GLASS_REASONS, Basis, BreakGlassEntry, Finding, FindingKind,
    GUARDIANS_MAX, Identity, Outcome, PREVIOUS_KEYS_MAX, PatientEntry, Reason, Rejection, Role,
    key_bytes,
};
use crate::state::{Delta, Reader};
use ehrchain_types::{
    ConsentGrant, Digest, PatientId, PublicKey, RecordId, genesis::Rules,
    limits::RESOURCE_TYPE_CODE_MAX,
};

fn owners(view: &impl Reader, patient: &PatientId) -> Result<Vec<consent::Key>, Rejection> {
    let entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    let mut owners = vec![key_bytes(&entry.key)];
    owners.extend(entry.guardians.iter().map(key_bytes));
    Ok(owners)
}

pub(crate) fn appoint_guardian(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    patient: &PatientId,
    guardian: &PublicKey,
    encryption_key: &[u8; 32],
) -> Result<(), Rejection> {
    let mut entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    if &entry.key != signer {
        return Err(Rejection::Unauthorized(
            "only the patient appoints a guardian",
        ));
    }
    if view.identity(guardian).is_some() || view.retired(guardian).is_some() {
        return Err(Rejection::AlreadyRegistered);
    }
    if entry.guardians.len() >= GUARDIANS_MAX {
        return Err(Rejection::Malformed("too many guardians"));
    }
    entry.guardians.push(guardian.clone());
    delta.patients.insert(*patient, entry);
    delta.identities.insert(
        guardian.clone(),
        Identity {
            role: Role::Guardian { patient: *patient },
            encryption_key: *encryption_key,
            previous: Vec::new(),
        },
    );
    Ok(())
}

/// The patient removes a guardian they appointed: the guardian leaves the patient's entry (so
/// grants, revocations and reads as guardian end) and the guardian's key is retired, which
/// ends its sessions and refuses anything it signs from then on.
pub(crate) fn remove_guardian(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    patient: &PatientId,
    guardian: &PublicKey,
) -> Result<(), Rejection> {
    let mut entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    if &entry.key != signer {
        return Err(Rejection::Unauthorized(
            "only the patient removes a guardian",
        ));
    }
    let Some(position) = entry.guardians.iter().position(|g| g == guardian) else {
        return Err(Rejection::Malformed("not a guardian of this patient"));
    };
    entry.guardians.remove(position);
    delta.patients.insert(*patient, entry);
    delta.retired.insert(guardian.clone(), at.height);
    Ok(())
}

/// An auditor reviews a finding: once, with a verdict code.
pub(crate) fn review_finding(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    key: crate::facts::FindingKey,
    verdict: u8,
) -> Result<(), Rejection> {
    let auditor = view
        .identity(signer)
        .is_some_and(|i| i.role == Role::Auditor);
    if !auditor || view.retired(signer).is_some() {
        return Err(Rejection::Unauthorized("only an auditor reviews a finding"));
    }
    let verdict = crate::facts::Verdict::from_u8(verdict).ok_or(Rejection::Malformed(
        "a verdict is 1 (justified) or 2 (not justified)",
    ))?;
    if view.finding_at(&key).is_none() {
        return Err(Rejection::Malformed("no finding at that position"));
    }
    if view.review(&key).is_some() {
        return Err(Rejection::Malformed("that finding is reviewed already"));
    }
    delta.reviews.insert(
        key,
        crate::facts::Review {
            auditor: signer.clone(),
            verdict,
            time_ms: at.time_ms,
        },
    );
    Ok(())
}

pub(crate) fn grant(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    body: &ConsentGrant,
) -> Result<(), Rejection> {
    let owners = owners(view, &body.patient)?;
    match view.identity(&body.grantee).map(|i| i.role) {
        Some(Role::Clinician { .. } | Role::Institution)
            if view.retired(&body.grantee).is_none() => {}
        _ => {
            return Err(Rejection::Malformed(
                "a grantee is an enrolled clinician or a member institution",
            ));
        }
    }
    if body
        .types
        .iter()
        .any(|t| !(1..=RESOURCE_TYPE_CODE_MAX).contains(t))
    {
        return Err(Rejection::Malformed("unknown resource type in grant"));
    }
    let mut purposes = Vec::with_capacity(body.purposes.len());
    for number in &body.purposes {
        purposes.push(
            Purpose::from_number(*number)
                .ok_or(Rejection::Malformed("unknown purpose in grant"))?,
        );
    }
    if body.valid_until_ms <= at.time_ms {
        return Err(Rejection::Malformed("the grant would already be expired"));
    }
    if view.grant(&body.patient, &body.id).is_some() {
        return Err(Rejection::Refused(Refusal::DuplicateGrant));
    }
    let grant = Grant {
        id: body.id,
        patient: body.patient,
        granted_by: key_bytes(signer),
        grantee: key_bytes(&body.grantee),
        actions: body.actions,
        types: body.types.clone(),
        purposes,
        valid_from_ms: body.valid_from_ms,
        valid_until_ms: body.valid_until_ms,
        revoked_at_ms: None,
    };
    consent::check_grant(&grant, &owners).map_err(Rejection::Refused)?;
    delta.grants.insert((body.patient, body.id), grant);
    let share: [u8; 32] = body.share.as_ref().try_into().expect("32-byte digest");
    if share != [0; 32] {
        delta.shares.insert((body.patient, body.id), share);
    }
    Ok(())
}

pub(crate) fn revoke(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    patient: &PatientId,
    id: &[u8; 16],
) -> Result<(), Rejection> {
    let owners = owners(view, patient)?;
    if !owners.contains(&key_bytes(signer)) {
        return Err(Rejection::Refused(Refusal::NotTheOwner));
    }
    let mut grant = view
        .grant(patient, id)
        .ok_or(Rejection::Refused(Refusal::UnknownGrant))?;
    if grant.revoked_at_ms.is_some() {
        return Err(Rejection::Refused(Refusal::AlreadyRevoked));
    }
    grant.revoked_at_ms = Some(at.time_ms);
    delta.grants.insert((*patient, *id), grant);
    Ok(())
}

pub(crate) fn break_glass(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    transaction: Digest,
    patient: &PatientId,
    reason: u8,
) -> Result<(), Rejection> {
    if !matches!(
        view.identity(signer).map(|i| i.role),
        Some(Role::Clinician { .. })
    ) {
        return Err(Rejection::Unauthorized(
            "only an enrolled clinician breaks the glass",
        ));
    }
    if !BREAK_GLASS_REASONS.iter().any(|(code, _)| *code == reason) {
        return Err(Rejection::Malformed("unknown break-glass reason code"));
    }
    let entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    let until_ms = at.time_ms.saturating_add(view.rules().break_glass_ms);
    delta.break_glass.insert(
        (signer.clone(), *patient),
        BreakGlassEntry {
            reason,
            opened_ms: at.time_ms,
            until_ms,
        },
    );
    delta.events.insert(
        (at.height, at.index, 0),
        AccessEvent {
            actor: signer.clone(),
            patient: *patient,
            record: None,
            purpose: Purpose::Emergency as u8,
            outcome: Outcome::Allowed(Basis::BreakGlassOpened { reason, until_ms }),
            time_ms: at.time_ms,
            transaction,
            app: None,
        },
    );
    delta.findings.insert(
        (at.height, at.index, 0),
        Finding {
            kind: FindingKind::BreakGlass { reason },
            actor: signer.clone(),
            patient: *patient,
            time_ms: at.time_ms,
            transaction,
        },
    );
    Ok(())
}

/// Move an identity from `old` to `new_key`: same role, new encryption key, the old key
/// remembered (for grants and authorship) and retired (rejected from now on).
fn move_identity(
    view: &impl Reader,
    delta: &mut Delta,
    at: At,
    old: &PublicKey,
    new_key: &PublicKey,
    encryption_key: &[u8; 32],
) -> Result<(), Rejection> {
    if view.identity(new_key).is_some() || view.retired(new_key).is_some() {
        return Err(Rejection::AlreadyRegistered);
    }
    let identity = view.identity(old).ok_or(Rejection::Unauthorized(
        "only a registered identity rotates its key",
    ))?;
    let mut previous = identity.previous.clone();
    previous.push(old.clone());
    if previous.len() > PREVIOUS_KEYS_MAX {
        previous.remove(0);
    }
    match &identity.role {
        Role::Institution => {
            return Err(Rejection::Unauthorized(
                "a member institution's key is its validator key: change it by governance",
            ));
        }
        Role::Patient { patient } => {
            let mut entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
            entry.key = new_key.clone();
            entry.encryption_key = *encryption_key;
            delta.patients.insert(*patient, entry);
        }
        Role::Guardian { patient } => {
            let mut entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
            for guardian in &mut entry.guardians {
                if guardian == old {
                    *guardian = new_key.clone();
                }
            }
            delta.patients.insert(*patient, entry);
        }
        Role::Clinician { .. } | Role::Auditor => {}
    }
    delta.identities.insert(
        new_key.clone(),
        Identity {
            role: identity.role,
            encryption_key: *encryption_key,
            previous,
        },
    );
    delta.retired.insert(old.clone(), at.height);
    // Client keys were registered by the old key; the new key registers its own.
    if !view.client_keys(old).is_empty() {
        delta.client_keys.insert(old.clone(), Vec::new());
    }
    Ok(())
}

pub(crate) fn rotate_key(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    new_key: &PublicKey,
    encryption_key: &[u8; 32],
) -> Result<(), Rejection> {
    move_identity(view, delta, at, signer, new_key, encryption_key)
}

/// A registered identity's refused attempt is itself recorded, with the rule that refused
/// it: on a patient's records (a write, a consent change, break-glass, a guardian, an erasure,
/// a key recovery, a look at the trail) as an event on the patient's trail (a set of versions:
/// one event per version, on each one's patient's trail) and a finding for the auditor; an identity or governance operation (which names no patient) as a finding
/// whose patient is all zeros. False when the attempt cannot be recorded (an unknown or
/// retired signer, no such patient, a session carrying what it may not): then it is refused
/// outright and never reaches a block.
pub(crate) fn record_denial(
    view: &impl Reader,
    delta: &mut Delta,
    at: At,
    tx: &ehrchain_types::Transaction,
) -> bool {
    use ehrchain_types::Payload as P;
    // Where the attempt goes on the trail: each record version it would have written (a set
    // names several, each on its patient's trail), or the one patient it concerns.
    let on_trail: Vec<(PatientId, Option<(RecordId, u8)>)> = match &tx.body.payload {
        P::RecordAnchor(_) | P::RecordSet(_) => tx
            .body
            .payload
            .record_anchors()
            .iter()
            .map(|a| (a.patient, Some((a.record, a.resource_type))))
            .collect(),
        P::Grant(grant) => vec![(grant.patient, None)],
        P::Revoke { patient, .. }
        | P::BreakGlass { patient, .. }
        | P::AppointGuardian { patient, .. }
        | P::RemoveGuardian { patient, .. }
        | P::ErasePatient { patient }
        | P::RecoverKey { patient, .. }
        | P::TrailQuery { patient } => vec![(*patient, None)],
        P::RegisterPatient { .. }
        | P::EnrollClinician { .. }
        | P::AccessLog { .. }
        | P::RemoveClinician { .. }
        | P::RotateKey { .. }
        | P::RegisterClientKey { .. }
        | P::RemoveClientKey { .. }
        | P::RegisterApp(_)
        | P::RemoveApp { .. }
        | P::CloseSession { .. }
        | P::Propose { .. }
        | P::Vote { .. }
        | P::ReviewFinding { .. } => Vec::new(),
        P::Anchor { .. } | P::Access { .. } | P::OpenSession { .. } => return false,
    };
    let Ok(actor) = actor(view, at, &tx.body.signer, &tx.body.payload) else {
        return false;
    };
    if view.identity(&actor).is_none()
        || view.retired(&actor).is_some()
        || on_trail.iter().any(|(p, _)| view.patient(p).is_none())
    {
        return false;
    }
    let reason = Reason::NotPermitted {
        operation: tx.body.payload.kind(),
    };
    for (entry, (patient, record)) in on_trail.iter().enumerate() {
        delta.events.insert(
            (at.height, at.index, entry as u16),
            AccessEvent {
                actor: actor.clone(),
                patient: *patient,
                record: *record,
                purpose: 0,
                outcome: Outcome::Denied(reason),
                time_ms: at.time_ms,
                transaction: tx.id(),
                app: view.session(&tx.body.signer).and_then(|s| s.app),
            },
        );
    }
    // One finding for the auditor, on the first patient (none for identity or governance).
    let patient = on_trail.first().map_or(NO_PATIENT, |(p, _)| *p);
    delta.findings.insert(
        (at.height, at.index, 0),
        Finding {
            kind: FindingKind::DeniedAccess(reason),
            actor,
            patient,
            time_ms: at.time_ms,
            transaction: tx.id(),
        },
    );
    true
}

/// A request to see `patient`'s trail: the patient, a guardian and auditors may (and nothing
/// is written); anyone else is refused, and the refusal is recorded (`record_denial`).
pub(crate) fn trail_query(
    view: &impl Reader,
    signer: &PublicKey,
    at: At,
    tx: &ehrchain_types::Transaction,
    patient: &PatientId,
) -> Result<(), Rejection> {
    let actor = actor(view, at, signer, &tx.body.payload)?;
    view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    match view.identity(&actor).map(|i| i.role) {
        Some(Role::Patient { patient: own } | Role::Guardian { patient: own })
            if own == *patient =>
        {
            Ok(())
        }
        Some(Role::Auditor) => Ok(()),
        _ => Err(Rejection::Unauthorized(
            "the trail is shown to its patient, their guardians and auditors",
        )),
    }
}

/// The patient of a finding about an operation that names none (identity, governance).
pub const NO_PATIENT: PatientId = [0; 16];

/// An institution removes one of its clinicians. The key (and every earlier key of the
/// identity) is retired at this height, so it signs nothing more and no session acts for it;
/// grants to it wrap nothing new, and the keeper deletes the data keys wrapped for it.
pub(crate) fn remove_clinician(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    clinician: &PublicKey,
) -> Result<(), Rejection> {
    let identity = view.identity(clinician).ok_or(Rejection::Unauthorized(
        "only an enrolled clinician is removed",
    ))?;
    match &identity.role {
        Role::Clinician { institution } if institution == signer => {}
        Role::Clinician { .. } => {
            return Err(Rejection::Unauthorized(
                "only the clinician's own institution removes them",
            ));
        }
        _ => {
            return Err(Rejection::Unauthorized(
                "only an enrolled clinician is removed",
            ));
        }
    }
    if view.retired(clinician).is_some() {
        return Err(Rejection::RetiredKey);
    }
    delta.retired.insert(clinician.clone(), at.height);
    Ok(())
}

/// A guardian or the home institution replaces a patient's lost key. Audited: a finding
/// for the auditor and an entry on the patient's trail.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recover_key(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    transaction: Digest,
    patient: &PatientId,
    new_key: &PublicKey,
    encryption_key: &[u8; 32],
) -> Result<(), Rejection> {
    let entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    if &entry.home != signer && !entry.guardians.contains(signer) {
        return Err(Rejection::Unauthorized(
            "only a guardian or the home institution recovers a patient's key",
        ));
    }
    move_identity(view, delta, at, &entry.key, new_key, encryption_key)?;
    delta.findings.insert(
        (at.height, at.index, 0),
        Finding {
            kind: FindingKind::KeyRecovery,
            actor: signer.clone(),
            patient: *patient,
            time_ms: at.time_ms,
            transaction,
        },
    );
    Ok(())
}

/// Whether `signer` (an institution or a clinician) may write a record of `patient`: the
/// patient's home institution and its clinicians (the care relationship of registration);
/// the author of an earlier version of the same record; a grant with write (`correct`)
/// covering the type, to the signer or its institution; or an open break-glass.
pub(crate) fn may_write(
    view: &impl Reader,
    signer: &PublicKey,
    at: At,
    patient: &PatientEntry,
    anchor: &ehrchain_types::RecordAnchor,
) -> Result<(), Rejection> {
    may_write_record(
        view,
        signer,
        at.time_ms,
        patient,
        (&anchor.record, &anchor.patient, anchor.resource_type),
    )
}

/// `may_write` for a record `(id, patient, resource type)` at block time `now_ms`.
pub fn may_write_record(
    view: &impl Reader,
    signer: &PublicKey,
    now_ms: u64,
    patient: &PatientEntry,
    (record, patient_id, resource_type): (&RecordId, &PatientId, u8),
) -> Result<(), Rejection> {
    let identity = view
        .identity(signer)
        .ok_or(Rejection::Unauthorized("unknown writer"))?;
    let institution = match &identity.role {
        Role::Institution => signer.clone(),
        Role::Clinician { institution } => institution.clone(),
        _ => {
            return Err(Rejection::Unauthorized(
                "only an institution or an enrolled clinician writes records",
            ));
        }
    };
    if institution == patient.home {
        return Ok(());
    }
    let keys: Vec<&PublicKey> = std::iter::once(signer)
        .chain(identity.previous.iter())
        .collect();
    if keys.iter().any(|k| view.authored(record, k)) {
        return Ok(());
    }
    let grants = view.grants(patient_id);
    let granted = keys.iter().any(|key| {
        grants.iter().any(|g| {
            g.active(now_ms)
                && g.allows_action(Action::Write)
                && (g.types.is_empty() || g.types.contains(&resource_type))
                && (g.grantee == key_bytes(key) || g.grantee == key_bytes(&institution))
        })
    });
    let glass = view
        .break_glass(signer, patient_id)
        .is_some_and(|g| now_ms < g.until_ms);
    if granted || glass {
        Ok(())
    } else {
        Err(Rejection::Unauthorized(
            "no consent to write this patient's records",
        ))
    }
}

/// How long a gateway session lasts, from the block that opens it (block time).
pub const SESSION_MS: u64 = 15 * 60 * 1000;

/// How long a session lasts when the person approved `offline_access` for a SMART app: the
/// app's refresh tokens work until then (or until the session is closed).
pub const OFFLINE_SESSION_MS: u64 = 12 * 60 * 60 * 1000;
/// How far past block time a client assertion may expire (SMART: at most 5 minutes after it
/// was made; the rest is room for clock skew and the time to commit).
pub const ASSERTION_AHEAD_MS: u64 = 10 * 60 * 1000;

/// The session of `key` if it may still act at `time_ms` (`None`: `key` is no session key),
/// or why not: it ended (closed or expired), its identity was rotated away or removed, or
/// its app was removed. The one statement of a live session: validators judge transactions
/// by it, and gateways their tokens (`api::session::session_live`).
pub fn live_session(
    view: &impl Reader,
    key: &PublicKey,
    time_ms: u64,
) -> Result<Option<crate::facts::SessionEntry>, Rejection> {
    let Some(session) = view.session(key) else {
        return Ok(None);
    };
    if time_ms >= session.expires_ms {
        return Err(Rejection::Unauthorized(
            "the session has ended; ask for a new token",
        ));
    }
    if view.retired(&session.identity).is_some() || view.identity(&session.identity).is_none() {
        return Err(Rejection::RetiredKey);
    }
    if session
        .app
        .as_deref()
        .is_some_and(|app| view.app(app).is_none())
    {
        return Err(Rejection::Unauthorized(
            "the app this session was opened for has been removed",
        ));
    }
    Ok(Some(session))
}

/// Who a transaction acts for: its signer, or, when the signer is a live gateway session key,
/// the session's identity. A session carries only record and consent operations.
pub(crate) fn actor(
    view: &impl Reader,
    at: At,
    signer: &PublicKey,
    payload: &ehrchain_types::Payload,
) -> Result<PublicKey, Rejection> {
    use ehrchain_types::Payload as P;
    let Some(session) = live_session(view, signer, at.time_ms)? else {
        return Ok(signer.clone());
    };
    match payload {
        P::RecordAnchor(_)
        | P::RecordSet(_)
        | P::Access { .. }
        | P::Grant(_)
        | P::Revoke { .. }
        | P::BreakGlass { .. }
        | P::ErasePatient { .. }
        | P::AppointGuardian { .. }
        | P::RemoveGuardian { .. }
        | P::ReviewFinding { .. }
        | P::TrailQuery { .. }
        | P::CloseSession { .. } => Ok(session.identity),
        _ => Err(Rejection::Unauthorized(
            "a gateway session may not carry this operation",
        )),
    }
}

/// Open a gateway session for `identity`: the signer is a fresh session key, the assertion a
/// JWT signed by the identity's key (EdDSA) that has not expired and opened no session before.
pub(crate) fn open_session(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    identity: &PublicKey,
    gateway: &PublicKey,
    assertion: &[u8],
) -> Result<(), Rejection> {
    if view.identity(signer).is_some() || view.session(signer).is_some() {
        return Err(Rejection::AlreadyRegistered);
    }
    if view.identity(gateway).map(|i| i.role) != Some(Role::Institution)
        || view.retired(gateway).is_some()
    {
        return Err(Rejection::Unauthorized(
            "a session's gateway must be a member institution",
        ));
    }
    if view.identity(identity).is_none() || view.retired(identity).is_some() {
        return Err(Rejection::Unauthorized(
            "sessions are opened for registered identities only",
        ));
    }
    let text = std::str::from_utf8(assertion)
        .map_err(|_| Rejection::Malformed("malformed client assertion"))?;
    let key: [u8; 32] = identity.as_ref().try_into().expect("32-byte key");
    let client_keys = view.client_keys(identity);
    let claims =
        ehrchain_crypto::jwt::verify(text, &key, &client_keys).map_err(|error| match error {
            ehrchain_crypto::jwt::JwtError::Signature
            | ehrchain_crypto::jwt::JwtError::Subject
            | ehrchain_crypto::jwt::JwtError::UnknownKey => Rejection::Unauthorized(
                "the client assertion is not signed by the identity's key or a client key it registered",
            ),
            _ => Rejection::Malformed("malformed client assertion"),
        })?;
    let exp_ms = claims.exp.saturating_mul(1000);
    if exp_ms <= at.time_ms {
        return Err(Rejection::Unauthorized("the client assertion has expired"));
    }
    if exp_ms > at.time_ms.saturating_add(ASSERTION_AHEAD_MS) {
        return Err(Rejection::Unauthorized(
            "the client assertion expires too far ahead",
        ));
    }
    // One session per (identity, jti): an ECDSA signature can be altered into another valid
    // one, so the assertion's own bytes would not name it once.
    let hash = assertion_id(identity, &claims.jti);
    if view.assertion_used(&hash) {
        return Err(Rejection::Unauthorized(
            "this client assertion was already used",
        ));
    }
    // A login to a SMART app names a registered app; with `offline_access` approved the
    // session lasts long enough for the app's refresh tokens.
    let lasts_ms = match &claims.client_id {
        Some(app) if view.app(app).is_none() => {
            return Err(Rejection::Unauthorized(
                "the client assertion names an app no institution registered",
            ));
        }
        Some(_)
            if claims
                .scope
                .as_deref()
                .is_some_and(|s| s.split_ascii_whitespace().any(|s| s == "offline_access")) =>
        {
            OFFLINE_SESSION_MS
        }
        _ => SESSION_MS,
    };
    delta.assertions.insert(hash, signer.clone());
    delta.sessions.insert(
        signer.clone(),
        crate::facts::SessionEntry {
            identity: identity.clone(),
            expires_ms: at.time_ms.saturating_add(lasts_ms),
            gateway: gateway.clone(),
            app: claims.client_id,
        },
    );
    Ok(())
}

/// What names a client assertion once opened: SHA-256 of a label, the identity and its `jti`.
pub fn assertion_id(identity: &PublicKey, jti: &str) -> ehrchain_types::Digest {
    ehrchain_types::sha256(&[b"ehrchain-assertion", identity.as_ref(), jti.as_bytes()])
}

/// How long after deciding a read a gateway may log it before the entry raises a `late-log`
/// finding (block time). Reads are never dropped for lateness: the trail keeps them all.
pub const ACCESS_LOG_LAG_MS: u64 = 30_000;

/// The outcome of a read attempt by `identity` (acting with key `signer`) on `record` at
/// `now_ms`, decided against `view`, with the record's patient and resource type. A pure
/// function of the state: the node that answers a FHIR read and every validator that records
/// it decide alike. Consent is judged as of `now_ms` (a grant revoked later still counted).
pub fn decide_read(
    view: &impl Reader,
    signer: &PublicKey,
    identity: &Identity,
    record: &RecordId,
    purpose: Purpose,
    now_ms: u64,
) -> Result<(PatientId, u8, Outcome), Rejection> {
    let latest = view.latest(record).ok_or(Rejection::UnknownRecord)?;
    let patient = latest.anchor.patient;
    let resource_type = latest.anchor.resource_type;
    if view
        .patient(&patient)
        .is_none_or(|p| p.erased_height.is_some())
    {
        return Err(Rejection::PatientErased);
    }
    let outcome = read_outcome(
        view,
        signer,
        identity,
        record,
        (patient, resource_type),
        purpose,
        now_ms,
    );
    Ok((patient, resource_type, outcome))
}

/// The consent decision of `decide_read`, for a record of `(patient, resource type)`.
fn read_outcome(
    view: &impl Reader,
    signer: &PublicKey,
    identity: &Identity,
    record: &RecordId,
    (patient, resource_type): (PatientId, u8),
    purpose: Purpose,
    now_ms: u64,
) -> Outcome {
    match identity.role {
        Role::Patient { patient: own } if own == patient => Outcome::Allowed(Basis::Owner),
        Role::Patient { .. } => Outcome::Denied(Reason::NotTheirs),
        Role::Guardian { patient: own } if own == patient => Outcome::Allowed(Basis::Guardian),
        Role::Guardian { .. } => Outcome::Denied(Reason::NotTheirs),
        Role::Auditor => Outcome::Denied(Reason::Auditor),
        Role::Institution | Role::Clinician { .. } => {
            // An identity that rotated its key keeps what its earlier keys were given.
            let keys: Vec<&PublicKey> = std::iter::once(signer)
                .chain(identity.previous.iter())
                .collect();
            if keys.iter().any(|k| view.authored(record, k)) {
                Outcome::Allowed(Basis::Author)
            } else {
                let institution = match &identity.role {
                    Role::Clinician { institution } => Some(key_bytes(institution)),
                    _ => None,
                };
                let grants = view.grants(&patient);
                let decision = keys
                    .iter()
                    .map(|key| {
                        consent::decide(
                            &grants,
                            &Request {
                                actor: key_bytes(key),
                                actor_institution: institution,
                                patient,
                                action: Action::Read,
                                resource_type,
                                purpose,
                                now_ms,
                            },
                        )
                    })
                    .reduce(|a, b| match (a, b) {
                        (Ok(id), _) | (_, Ok(id)) => Ok(id),
                        (Err(x), Err(y)) => Err(x.max(y)),
                    })
                    .expect("at least the signer's key");
                match decision {
                    Ok(id) => Outcome::Allowed(Basis::Consent(id)),
                    Err(denial) => {
                        let glass = view
                            .break_glass(signer, &patient)
                            .is_some_and(|g| now_ms < g.until_ms);
                        if glass {
                            Outcome::Allowed(Basis::BreakGlass)
                        } else {
                            Outcome::Denied(Reason::Consent(denial))
                        }
                    }
                }
            }
        }
    }
}

/// Decide a read attempt and record it, with any findings; `app` names the SMART app whose
/// session signed it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn access(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    transaction: Digest,
    record: &RecordId,
    purpose_number: u8,
    app: Option<String>,
) -> Result<(), Rejection> {
    let purpose =
        Purpose::from_number(purpose_number).ok_or(Rejection::Malformed("unknown purpose"))?;
    let identity = view.identity(signer).ok_or(Rejection::Unauthorized(
        "only a registered identity reads records",
    ))?;
    let decided = decide_read(view, signer, &identity, record, purpose, at.time_ms)?;
    let mut seq = 0;
    record_read(
        view,
        delta,
        Read {
            actor: signer,
            record,
            purpose: purpose_number,
            decided,
            time_ms: at.time_ms,
            app,
        },
        (at.height, at.index, 0),
        &mut seq,
        transaction,
        None,
    );
    Ok(())
}

/// One decided read, to be put on the trail.
struct Read<'a> {
    actor: &'a PublicKey,
    record: &'a RecordId,
    purpose: u8,
    decided: (PatientId, u8, Outcome),
    time_ms: u64,
    /// The app whose session made the read, if any.
    app: Option<String>,
}

/// Write a decided read's event and its findings (numbered from `seq` within the transaction).
#[allow(clippy::too_many_arguments)]
fn record_read(
    view: &impl Reader,
    delta: &mut Delta,
    read: Read,
    key: crate::facts::EventKey,
    seq: &mut u8,
    transaction: Digest,
    late: Option<u64>,
) {
    let (patient, resource_type, outcome) = read.decided;
    let actor = read.actor;
    delta.events.insert(
        key,
        AccessEvent {
            actor: actor.clone(),
            patient,
            record: Some((*read.record, resource_type)),
            purpose: read.purpose,
            outcome,
            time_ms: read.time_ms,
            transaction,
            app: read.app,
        },
    );
    let mut findings = Vec::new();
    if let Outcome::Denied(reason) = outcome {
        findings.push(FindingKind::DeniedAccess(reason));
        if reason == Reason::Consent(Denial::Revoked) {
            findings.push(FindingKind::AfterRevocation);
        }
    }
    if let Some(lag_ms) = late {
        findings.push(FindingKind::LateLog { lag_ms });
    }
    // Read volume, counted in tumbling windows of block time.
    let rules = view.rules();
    let window = read.time_ms / rules.read_volume_window_ms;
    let count = crate::state::Layered { base: view, delta }
        .reads(actor, window)
        .saturating_add(1);
    delta.reads.insert((actor.clone(), window), count);
    if count == rules.read_volume_max.saturating_add(1) {
        findings.push(FindingKind::ReadVolume {
            count,
            window_start_ms: window * rules.read_volume_window_ms,
        });
    }
    for kind in findings {
        delta.findings.insert(
            (key.0, key.1, *seq),
            Finding {
                kind,
                actor: actor.clone(),
                patient,
                time_ms: read.time_ms,
                transaction,
            },
        );
        *seq = seq.saturating_add(1);
    }
}

/// A member institution's gateway logs reads it decided and served (`Payload::AccessLog`).
///
/// Entries before the institution's next entry number were logged already (a gateway that
/// restarted sends its journal again) and are skipped; a gap is refused. Each new entry must
/// name a session this institution's gateway opened, live at the entry's decision time, and a
/// decision time no later than this block. Every validator decides the read again as of that
/// time, with the same code the gateway used, and records what it finds: a read the gateway
/// should not have served is on the trail as denied, with its finding. A decision logged more
/// than `ACCESS_LOG_LAG_MS` after it was made is kept and raises a `late-log` finding.
pub(crate) fn access_log(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    transaction: Digest,
    first: u64,
    entries: &[ehrchain_types::transaction::AccessLogEntry],
) -> Result<(), Rejection> {
    if view.identity(signer).map(|i| i.role) != Some(Role::Institution) {
        return Err(Rejection::Unauthorized(
            "only a member institution logs its gateway's reads",
        ));
    }
    let next = view.access_log_next(signer);
    if first > next {
        return Err(Rejection::AccessLogGap {
            expected: next,
            got: first,
        });
    }
    let skip = (next - first).min(entries.len() as u64) as usize;
    // Admission checks against the admitting node's final state (height 0), which may be a
    // block behind the gateway's: a decision after that state's time, or a record it does not
    // know yet, is judged when the log executes in a block, which always follows the block
    // the gateway decided on.
    let admission = at.height == 0;
    let mut seq = 0u8;
    for (number, entry) in entries.iter().enumerate().skip(skip) {
        let purpose =
            Purpose::from_number(entry.purpose).ok_or(Rejection::Malformed("unknown purpose"))?;
        if entry.checked_ms > at.time_ms {
            if admission {
                continue;
            }
            return Err(Rejection::Malformed(
                "an access log entry is decided after its block",
            ));
        }
        let (actor, identity) = gateway_reader(view, signer, &entry.session, entry.checked_ms)?;
        let Some(latest) = view.latest(&entry.record) else {
            if admission {
                continue;
            }
            return Err(Rejection::Malformed(
                "an access log names an unknown record",
            ));
        };
        let target = (latest.anchor.patient, latest.anchor.resource_type);
        // Erasure since the read does not undo it: the read stays on the trail, decided as of
        // its time. An identity whose key was retired since is recorded as refused.
        let outcome = match identity {
            Some(identity) => read_outcome(
                view,
                &actor,
                &identity,
                &entry.record,
                target,
                purpose,
                entry.checked_ms,
            ),
            None => Outcome::Denied(Reason::RetiredKey),
        };
        let lag = at.time_ms - entry.checked_ms;
        record_read(
            view,
            delta,
            Read {
                actor: &actor,
                record: &entry.record,
                purpose: entry.purpose,
                decided: (target.0, target.1, outcome),
                time_ms: entry.checked_ms,
                app: view.session(&entry.session).and_then(|s| s.app),
            },
            (at.height, at.index, number as u16),
            &mut seq,
            transaction,
            (lag > ACCESS_LOG_LAG_MS).then_some(lag),
        );
    }
    delta
        .access_logs
        .insert(signer.clone(), next.max(first + entries.len() as u64));
    Ok(())
}

/// Why no reader list can be given for a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadersError {
    UnknownPatient,
    Erased,
    /// The author is neither an enrolled clinician nor an institution, or may not write this.
    NotAWriter,
}

/// The X25519 keys a new version of `patient`'s record of `resource_type`, written by
/// `author`, is wrapped for: the patient, the author, the author's institution, and (for a
/// known type) every grantee whose active grant covers reads of that type (keys rotated away
/// or removed left out), sorted and without repeats. The one statement of the rule: the FHIR gateway seals
/// with it, and `GET /patients/{id}/readers` serves it to clients that seal themselves.
pub fn wrap_readers(
    view: &impl Reader,
    author: &PublicKey,
    patient: &PatientId,
    resource_type: Option<u8>,
) -> Result<Vec<[u8; 32]>, ReadersError> {
    let entry = view.patient(patient).ok_or(ReadersError::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(ReadersError::Erased);
    }
    wrap_readers_of(view, author, patient, resource_type)
}

/// `wrap_readers` for a caller who asks before writing: only someone who may write this
/// record (`record`, or a new one) of that type learns who may read it.
pub fn wrap_readers_for_writer(
    view: &impl Reader,
    author: &PublicKey,
    patient: &PatientId,
    resource_type: u8,
    record: Option<&RecordId>,
) -> Result<Vec<[u8; 32]>, ReadersError> {
    let entry = view.patient(patient).ok_or(ReadersError::UnknownPatient)?;
    if entry.erased_height.is_some() {
        return Err(ReadersError::Erased);
    }
    let fresh = [0u8; 16];
    may_write_record(
        view,
        author,
        view.time_ms(),
        &entry,
        (record.unwrap_or(&fresh), patient, resource_type),
    )
    .map_err(|_| ReadersError::NotAWriter)?;
    wrap_readers_of(view, author, patient, Some(resource_type))
}

fn wrap_readers_of(
    view: &impl Reader,
    author: &PublicKey,
    patient: &PatientId,
    resource_type: Option<u8>,
) -> Result<Vec<[u8; 32]>, ReadersError> {
    let identity = view.identity(author).ok_or(ReadersError::NotAWriter)?;
    if !matches!(identity.role, Role::Clinician { .. } | Role::Institution) {
        return Err(ReadersError::NotAWriter);
    }
    Ok(version_readers(
        view,
        author,
        patient,
        resource_type,
        view.time_ms(),
    ))
}

/// Who may read a version of `patient`'s record of `resource_type` written by `author`, at
/// `now_ms`: the X25519 keys of the patient, the author, the author's institution (for a
/// clinician), and (for a known type) every grantee whose active grant covers reads of that
/// type, leaving out keys rotated away or removed; sorted, without repeats.
///
/// The one statement of "who a version is wrapped for": the FHIR gateway seals new versions
/// with it, `GET /patients/{id}/readers` serves it to clients that seal themselves, and the
/// records keeper keeps each stored version's wraps to exactly this set.
pub fn version_readers(
    view: &impl Reader,
    author: &PublicKey,
    patient: &PatientId,
    resource_type: Option<u8>,
    now_ms: u64,
) -> Vec<[u8; 32]> {
    let mut keys = Vec::new();
    if let Some(entry) = view.patient(patient) {
        keys.push(entry.encryption_key);
    }
    if let Some(identity) = view.identity(author) {
        keys.push(identity.encryption_key);
        if let Role::Clinician { institution } = &identity.role
            && let Some(institution) = view.identity(institution)
        {
            keys.push(institution.encryption_key);
        }
    }
    let grantees = resource_type.map_or_else(Vec::new, |kind| {
        consent::readers(&view.grants(patient), kind, now_ms)
    });
    for grantee in grantees {
        if let Ok(key) = ehrchain_types::decode_public_key(grantee)
            && view.retired(&key).is_none()
            && let Some(grantee) = view.identity(&key)
        {
            keys.push(grantee.encryption_key);
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// May `gateway` decide, at `decided_ms`, a read made in gateway session `session` itself,
/// serve it, and log it later (`Payload::AccessLog`)? Only for a session that gateway opened,
/// still live at that time. It gives the reader and their identity, whose read the consent
/// rule then decides (`decide_read`); no identity means the reader's key was retired since, so
/// the read is denied (`Reason::RetiredKey`). An error refuses the log entry.
///
/// The one statement of the rule: the gateway asks it before it serves a read from its own
/// decision, and every validator asks it again for each entry of the log.
pub fn gateway_reader(
    view: &impl Reader,
    gateway: &PublicKey,
    session: &PublicKey,
    decided_ms: u64,
) -> Result<(PublicKey, Option<Identity>), Rejection> {
    let session = view
        .session(session)
        .filter(|s| &s.gateway == gateway)
        .ok_or(Rejection::Unauthorized(
            "an access log names a session its gateway did not open",
        ))?;
    if decided_ms >= session.expires_ms {
        return Err(Rejection::Unauthorized(
            "an access log entry is decided after its session ended",
        ));
    }
    let actor = session.identity;
    let identity = view
        .identity(&actor)
        .filter(|_| view.retired(&actor).is_none());
    Ok((actor, identity))
}

/// The rules a chain runs under (re-exported for callers that build a state).
pub type AccessRules = Rules;

#[cfg(test)]
mod tests {
    //! The contracts at the state level: who may do what, and what the trail records.
    use super::*;
    use crate::state::{self, State};
    use commonware_cryptography::Signer as _;
    use ehrchain_types::{Payload, PrivateKey, RecordAnchor, Transaction, TransactionBody, sha256};

    const P1: PatientId = [1; 16];
    const P2: PatientId = [2; 16];
    const R1: RecordId = [0x11; 16];
    const HOUR: u64 = 3_600_000;

    struct World {
        state: State,
        nonces: std::collections::HashMap<PublicKey, u64>,
        height: u64,
        time_ms: u64,
    }

    fn key(seed: u64) -> PrivateKey {
        PrivateKey::from_seed(seed)
    }

    // Actors.
    fn hospital_a() -> PrivateKey {
        key(1)
    }
    fn hospital_b() -> PrivateKey {
        key(2)
    }
    fn auditor() -> PrivateKey {
        key(3)
    }
    fn clinician_a() -> PrivateKey {
        key(10)
    }
    fn clinician_b() -> PrivateKey {
        key(11)
    }
    fn patient_1() -> PrivateKey {
        key(20)
    }
    fn patient_2() -> PrivateKey {
        key(21)
    }
    fn guardian_1() -> PrivateKey {
        key(22)
    }
    fn stranger() -> PrivateKey {
        key(99)
    }

    impl World {
        fn new(rules: Rules) -> Self {
            let state = State::new(
                &[
                    (hospital_a().public_key(), [0xA0; 32]),
                    (hospital_b().public_key(), [0xB0; 32]),
                ],
                &[auditor().public_key()],
                rules,
            );
            let mut world = Self {
                state,
                nonces: Default::default(),
                height: 0,
                time_ms: 1_000 * HOUR,
            };
            world.ok(
                &hospital_a(),
                Payload::EnrollClinician {
                    clinician: clinician_a().public_key(),
                    encryption_key: [0xA1; 32],
                },
            );
            world.ok(
                &hospital_b(),
                Payload::EnrollClinician {
                    clinician: clinician_b().public_key(),
                    encryption_key: [0xB1; 32],
                },
            );
            for (patient, key, enc) in [(P1, patient_1(), 0xC1), (P2, patient_2(), 0xC2)] {
                world.ok(
                    &hospital_a(),
                    Payload::RegisterPatient {
                        patient,
                        key: key.public_key(),
                        encryption_key: [enc; 32],
                    },
                );
            }
            world.ok(
                &clinician_a(),
                Payload::RecordAnchor(RecordAnchor {
                    record: R1,
                    version: 1,
                    patient: P1,
                    resource_type: 2,
                    ciphertext_hash: sha256(&[b"r1"]),
                    ciphertext_size: 100,
                    timestamp_ms: 0,
                }),
            );
            world
        }

        fn sign(&mut self, signer: &PrivateKey, payload: Payload) -> Transaction {
            let nonce = self.nonces.entry(signer.public_key()).or_default();
            TransactionBody {
                chain_id: 1,
                signer: signer.public_key(),
                nonce: *nonce,
                payload,
            }
            .sign(signer)
        }

        /// Execute one transaction in its own block; commit it if it applies.
        fn run(&mut self, signer: &PrivateKey, payload: Payload) -> Result<Transaction, Rejection> {
            let tx = self.sign(signer, payload);
            self.height += 1;
            self.time_ms += 1_000;
            let mut delta = state::Delta {
                time_ms: self.time_ms,
                ..Default::default()
            };
            let at = At {
                height: self.height,
                time_ms: self.time_ms,
                index: 0,
            };
            crate::execute::apply(&self.state, &mut delta, at, &tx)?;
            *self.nonces.get_mut(&signer.public_key()).expect("signed") += 1;
            self.state.commit(delta);
            Ok(tx)
        }

        fn ok(&mut self, signer: &PrivateKey, payload: Payload) -> Transaction {
            self.run(signer, payload).expect("applies")
        }

        /// A read attempt by `signer`: its recorded outcome.
        fn read(&mut self, signer: &PrivateKey, record: RecordId) -> Result<Outcome, Rejection> {
            self.run(
                signer,
                Payload::Access {
                    record,
                    purpose: Purpose::Treatment as u8,
                },
            )?;
            Ok(self
                .state
                .event(self.height, 0)
                .expect("every read is recorded")
                .outcome)
        }

        fn grant(
            &mut self,
            by: &PrivateKey,
            grantee: &PrivateKey,
            id: u8,
            until_ms: u64,
        ) -> Result<Transaction, Rejection> {
            let now = self.time_ms;
            self.run(
                by,
                Payload::Grant(ConsentGrant {
                    id: [id; 16],
                    patient: P1,
                    grantee: grantee.public_key(),
                    actions: 1,
                    types: Vec::new(),
                    purposes: vec![Purpose::Treatment as u8],
                    valid_from_ms: now,
                    valid_until_ms: until_ms,
                    share: Digest::from([0; 32]),
                }),
            )
        }

        /// The operation kind refused by the last block, if its attempt was recorded as
        /// denied (a `not-permitted` finding, and for a patient's records an event on the
        /// trail too).
        fn recorded_denial(&self) -> Option<u8> {
            let finding = match self.state.finding(self.height, 0).map(|f| f.kind) {
                Some(FindingKind::DeniedAccess(Reason::NotPermitted { operation })) => {
                    Some(operation)
                }
                _ => None,
            };
            if let Some(event) = self.state.event(self.height, 0) {
                assert_eq!(
                    event.outcome,
                    Outcome::Denied(Reason::NotPermitted {
                        operation: finding?
                    })
                );
            }
            finding
        }

        /// Run an attempt that must be refused, with the refusal recorded on chain.
        fn denied_on_record(&mut self, signer: &PrivateKey, payload: Payload) {
            let kind = payload.kind();
            let result = self.run(signer, payload);
            assert!(result.is_ok(), "not recorded: {result:?}");
            assert_eq!(self.recorded_denial(), Some(kind));
        }

        fn findings(&self) -> Vec<&'static str> {
            self.state.findings().map(|(_, f)| f.kind.code()).collect()
        }
    }

    fn denied(reason: Reason) -> Result<Outcome, Rejection> {
        Ok(Outcome::Denied(reason))
    }

    #[test]
    fn authorization_matrix_for_reads() {
        let mut w = World::new(Rules::default());
        let now = w.time_ms;
        // The patient on their own record and on another's.
        assert_eq!(w.read(&patient_1(), R1), Ok(Outcome::Allowed(Basis::Owner)));
        assert_eq!(w.read(&patient_2(), R1), denied(Reason::NotTheirs));
        // The author keeps access to what they wrote.
        assert_eq!(
            w.read(&clinician_a(), R1),
            Ok(Outcome::Allowed(Basis::Author))
        );
        // A clinician without consent, another institution, an auditor, an anonymous key.
        let none = Reason::Consent(Denial::NoGrant);
        assert_eq!(w.read(&clinician_b(), R1), denied(none));
        assert_eq!(w.read(&hospital_b(), R1), denied(none));
        assert_eq!(w.read(&auditor(), R1), denied(Reason::Auditor));
        assert!(matches!(
            w.read(&stranger(), R1),
            Err(Rejection::Unauthorized(_))
        ));
        // With consent.
        let grant = w
            .grant(&patient_1(), &clinician_b(), 1, now + 2 * HOUR)
            .unwrap();
        let _ = grant;
        assert_eq!(
            w.read(&clinician_b(), R1),
            Ok(Outcome::Allowed(Basis::Consent([1; 16])))
        );
        // Consent given to an institution covers its clinicians.
        w.grant(&patient_1(), &hospital_b(), 2, now + HOUR).unwrap();
        assert_eq!(
            w.read(&hospital_b(), R1),
            Ok(Outcome::Allowed(Basis::Consent([2; 16])))
        );
        // Revoked: refused, with a finding for the attempt after revocation.
        w.ok(
            &patient_1(),
            Payload::Revoke {
                patient: P1,
                grant: [1; 16],
            },
        );
        w.ok(
            &patient_1(),
            Payload::Revoke {
                patient: P1,
                grant: [2; 16],
            },
        );
        assert_eq!(
            w.read(&clinician_b(), R1),
            denied(Reason::Consent(Denial::Revoked))
        );
        assert!(w.findings().contains(&"after-revocation"));
        // Expired: a grant that ran out by block time.
        w.grant(&patient_1(), &clinician_b(), 3, w.time_ms + 1_500)
            .unwrap();
        w.time_ms += 10_000;
        assert_eq!(
            w.read(&clinician_b(), R1),
            denied(Reason::Consent(Denial::Revoked))
        );
        // Every attempt above is on the patient's trail, in order.
        let trail = w.state.patient_events(&P1);
        assert_eq!(trail.len(), 10);
        assert!(trail.windows(2).all(|p| p[0].0 < p[1].0));
    }

    /// The actor kinds of the authorization matrix (the issue's list, plus the patient's
    /// home institution, which has rights of its own).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Actor {
        OwnPatient,
        OtherPatient,
        Consented,
        NoConsent,
        Expired,
        Revoked,
        HomeInstitution,
        OtherInstitution,
        Auditor,
        Anonymous,
    }

    impl Actor {
        const ALL: [Self; 10] = [
            Self::OwnPatient,
            Self::OtherPatient,
            Self::Consented,
            Self::NoConsent,
            Self::Expired,
            Self::Revoked,
            Self::HomeInstitution,
            Self::OtherInstitution,
            Self::Auditor,
            Self::Anonymous,
        ];

        fn key(self) -> PrivateKey {
            match self {
                Self::OwnPatient => patient_1(),
                Self::OtherPatient => patient_2(),
                Self::Consented => clinician_b(),
                Self::NoConsent => key(12),
                Self::Expired => key(13),
                Self::Revoked => key(14),
                Self::HomeInstitution => hospital_a(),
                Self::OtherInstitution => hospital_b(),
                Self::Auditor => auditor(),
                Self::Anonymous => stranger(),
            }
        }
    }

    /// Every operation a transaction can carry, aimed at patient 1 and their record R1.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Operation {
        Read,
        WriteVersion,
        WriteRecord,
        /// A tombstone version (FHIR DELETE): a write like any other.
        Delete,
        Grant,
        Revoke,
        BreakGlass,
        AppointGuardian,
        RemoveGuardian,
        Erase,
        RecoverKey,
        RegisterPatient,
        EnrollClinician,
        RemoveClinician,
        Propose,
        Vote,
        RotateKey,
        OpenSession,
        Anchor,
        TrailQuery,
        WriteSet,
        RegisterClientKey,
        RegisterApp,
    }

    impl Operation {
        const ALL: [Self; 23] = [
            Self::RemoveGuardian,
            Self::WriteSet,
            Self::RegisterClientKey,
            Self::RegisterApp,
            Self::Read,
            Self::WriteVersion,
            Self::WriteRecord,
            Self::Delete,
            Self::Grant,
            Self::Revoke,
            Self::BreakGlass,
            Self::AppointGuardian,
            Self::Erase,
            Self::RecoverKey,
            Self::RegisterPatient,
            Self::EnrollClinician,
            Self::RemoveClinician,
            Self::Propose,
            Self::Vote,
            Self::RotateKey,
            Self::OpenSession,
            Self::Anchor,
            Self::TrailQuery,
        ];

        /// The policy, written out plainly (docs/design/access.md), independent of the code.
        fn authorized(self, actor: Actor) -> bool {
            use Actor as A;
            match self {
                Self::Read => matches!(actor, A::OwnPatient | A::Consented),
                // The home institution (care relationship) or a `correct` grant.
                Self::WriteVersion | Self::WriteRecord | Self::Delete | Self::WriteSet => {
                    matches!(actor, A::HomeInstitution | A::Consented)
                }
                Self::Grant | Self::Revoke | Self::AppointGuardian | Self::RemoveGuardian => {
                    actor == A::OwnPatient
                }
                // Any enrolled clinician, consent or not: that is what break-glass is for.
                Self::BreakGlass => {
                    matches!(actor, A::Consented | A::NoConsent | A::Expired | A::Revoked)
                }
                Self::Erase => matches!(actor, A::OwnPatient | A::HomeInstitution),
                Self::RecoverKey | Self::RemoveClinician => actor == A::HomeInstitution,
                Self::RegisterPatient | Self::EnrollClinician | Self::Propose => {
                    matches!(actor, A::HomeInstitution | A::OtherInstitution)
                }
                // The home institution proposed, and so already voted.
                Self::Vote => actor == A::OtherInstitution,
                // Any registered identity but a member (whose key is its validator key).
                Self::RotateKey => !matches!(
                    actor,
                    A::HomeInstitution | A::OtherInstitution | A::Anonymous
                ),
                // A session for patient 1 opens only on an assertion signed by patient 1.
                Self::OpenSession => actor == A::OwnPatient,
                // A bare anchor of a digest: any signer (the ledger's own operation).
                Self::Anchor => true,
                // Any registered identity, for its own assertions.
                Self::RegisterClientKey => actor != A::Anonymous,
                // Member institutions, for the apps their people use.
                Self::RegisterApp => matches!(actor, A::HomeInstitution | A::OtherInstitution),
                // The trail: its patient (and guardians) and auditors.
                Self::TrailQuery => matches!(actor, A::OwnPatient | A::Auditor),
            }
        }

        fn payload(self, actor: Actor, time_ms: u64) -> (PrivateKey, Payload) {
            let signer = actor.key();
            let anchor = |record: RecordId, version: u32| {
                Payload::RecordAnchor(RecordAnchor {
                    record,
                    version,
                    patient: P1,
                    resource_type: 2,
                    ciphertext_hash: sha256(&[&record, &version.to_be_bytes()]),
                    ciphertext_size: 100,
                    timestamp_ms: 0,
                })
            };
            let payload = match self {
                Self::Read => Payload::Access {
                    record: R1,
                    purpose: Purpose::Treatment as u8,
                },
                Self::WriteVersion => anchor(R1, 2),
                Self::WriteRecord => anchor([0x12; 16], 1),
                Self::Delete => Payload::RecordAnchor(RecordAnchor {
                    record: R1,
                    version: 2,
                    patient: P1,
                    resource_type: 2,
                    ciphertext_hash: Digest::from(ehrchain_types::TOMBSTONE_HASH),
                    ciphertext_size: 0,
                    timestamp_ms: 0,
                }),
                Self::Grant => Payload::Grant(ConsentGrant {
                    id: [9; 16],
                    patient: P1,
                    grantee: key(12).public_key(),
                    actions: 1,
                    types: Vec::new(),
                    purposes: Vec::new(),
                    valid_from_ms: time_ms,
                    valid_until_ms: time_ms + HOUR,
                    share: Digest::from([0; 32]),
                }),
                Self::Revoke => Payload::Revoke {
                    patient: P1,
                    grant: [1; 16],
                },
                Self::BreakGlass => Payload::BreakGlass {
                    patient: P1,
                    reason: 1,
                },
                Self::AppointGuardian => Payload::AppointGuardian {
                    patient: P1,
                    guardian: key(50).public_key(),
                    encryption_key: [0x50; 32],
                },
                Self::RemoveGuardian => Payload::RemoveGuardian {
                    patient: P1,
                    guardian: key(55).public_key(),
                },
                Self::Erase => Payload::ErasePatient { patient: P1 },
                Self::RecoverKey => Payload::RecoverKey {
                    patient: P1,
                    new_key: key(51).public_key(),
                    encryption_key: [0x51; 32],
                },
                Self::RegisterPatient => Payload::RegisterPatient {
                    patient: [3; 16],
                    key: key(52).public_key(),
                    encryption_key: [0x52; 32],
                },
                Self::EnrollClinician => Payload::EnrollClinician {
                    clinician: key(53).public_key(),
                    encryption_key: [0x53; 32],
                },
                Self::RemoveClinician => Payload::RemoveClinician {
                    clinician: clinician_a().public_key(),
                },
                Self::Propose => Payload::Propose {
                    proposal: [8; 16],
                    action: ehrchain_types::GovernanceAction::AppointAuditor {
                        key: key(41).public_key(),
                    },
                },
                Self::Vote => Payload::Vote {
                    proposal: [7; 16],
                    approve: true,
                },
                Self::RotateKey => Payload::RotateKey {
                    new_key: key(54).public_key(),
                    encryption_key: [0x54; 32],
                },
                Self::OpenSession => {
                    use commonware_codec::Encode as _;
                    let seed: [u8; 32] = signer.encode().as_ref().try_into().unwrap();
                    let patient = hex::encode(patient_1().public_key().as_ref());
                    let assertion = ehrchain_crypto::jwt::sign(
                        &seed,
                        &ehrchain_crypto::jwt::Claims {
                            iss: patient.clone(),
                            sub: patient,
                            aud: "http://node/auth/token".into(),
                            exp: (time_ms + 120_000) / 1000,
                            jti: "matrix".into(),
                            iat: None,
                            nbf: None,
                            client_id: None,
                            scope: None,
                        },
                    );
                    // The signer of an OpenSession is the gateway's fresh session key.
                    return (
                        key(60),
                        Payload::OpenSession {
                            identity: patient_1().public_key(),
                            gateway: hospital_a().public_key(),
                            assertion: assertion.into_bytes(),
                        },
                    );
                }
                Self::Anchor => Payload::Anchor {
                    label: 1,
                    digest: Digest::from([0xAB; 32]),
                },
                Self::TrailQuery => Payload::TrailQuery { patient: P1 },
                // A new version of R1 and a new record, as one unit.
                Self::WriteSet => Payload::RecordSet(
                    [anchor(R1, 2), anchor([0x13; 16], 1)]
                        .into_iter()
                        .flat_map(|p| p.record_anchors().to_vec())
                        .collect(),
                ),
                Self::RegisterClientKey => Payload::RegisterClientKey {
                    jwk: P384_JWK.as_bytes().to_vec(),
                },
                Self::RegisterApp => Payload::RegisterApp(chart_app("matrix-app")),
            };
            (signer, payload)
        }
    }

    /// A public P-384 JWK (the curve's generator point).
    const P384_JWK: &str = r#"{"kty":"EC","crv":"P-384","kid":"k1","x":"qofKIr6LBTeOscce8yCtdG4dO2KLp5uYWfdB4IJUKjhVAvJdv1UpbDpUXjhydgq3","y":"NhfeSpYmLG9dnpi_kpLcKfj0Hb0omhR86doxE7XwuMAKYLHOHX6BnXpDHXyQ6g5f"}"#;

    /// Patient 1 granted `Consented` (clinician B) read and write on everything, `Expired`
    /// a grant that ran out by block time and `Revoked` one that it took back; `NoConsent` is
    /// enrolled at hospital B with nothing. Hospital A has an open proposal. Patient 1 has
    /// appointed a guardian (key 55).
    fn matrix_world() -> World {
        let mut w = World::new(Rules::default());
        w.ok(
            &patient_1(),
            Payload::AppointGuardian {
                patient: P1,
                guardian: key(55).public_key(),
                encryption_key: [0x55; 32],
            },
        );
        for (seed, enc) in [(12, 0xB2), (13, 0xB3), (14, 0xB4)] {
            w.ok(
                &hospital_b(),
                Payload::EnrollClinician {
                    clinician: key(seed).public_key(),
                    encryption_key: [enc; 32],
                },
            );
        }
        let now = w.time_ms;
        let grant = |id: u8, grantee: PrivateKey, until_ms: u64| {
            Payload::Grant(ConsentGrant {
                id: [id; 16],
                patient: P1,
                grantee: grantee.public_key(),
                actions: 3,
                types: Vec::new(),
                purposes: Vec::new(),
                valid_from_ms: now,
                valid_until_ms: until_ms,
                share: Digest::from([0; 32]),
            })
        };
        w.ok(&patient_1(), grant(1, clinician_b(), now + 10 * HOUR));
        w.ok(&patient_1(), grant(2, key(13), now + 5_000));
        w.ok(&patient_1(), grant(3, key(14), now + 10 * HOUR));
        w.ok(
            &patient_1(),
            Payload::Revoke {
                patient: P1,
                grant: [3; 16],
            },
        );
        w.ok(
            &hospital_a(),
            Payload::Propose {
                proposal: [7; 16],
                action: ehrchain_types::GovernanceAction::AppointAuditor {
                    key: key(40).public_key(),
                },
            },
        );
        w.time_ms += 60_000;
        w
    }

    #[test]
    fn authorization_matrix_every_operation_by_every_actor() {
        let mut unauthorized_successes = Vec::new();
        let mut wrongly_refused = Vec::new();
        let mut unrecorded = Vec::new();
        for operation in Operation::ALL {
            for actor in Actor::ALL {
                // A fresh world per attempt: an earlier success must not change the next.
                let mut w = matrix_world();
                let (signer, payload) = operation.payload(actor, w.time_ms);
                let kind = payload.kind();
                let result = w.run(&signer, payload);
                let succeeded = match (&result, operation) {
                    // A read attempt is recorded either way; it succeeds when allowed.
                    (Ok(_), Operation::Read) => matches!(
                        w.state.event(w.height, 0).map(|e| e.outcome),
                        Some(Outcome::Allowed(_))
                    ),
                    // Any other refused attempt by a registered identity is recorded as
                    // denied; that is not a success either.
                    (Ok(_), _) => {
                        !matches!(
                            w.state.event(w.height, 0).map(|e| e.outcome),
                            Some(Outcome::Denied(_))
                        ) && w.recorded_denial().is_none()
                    }
                    (Err(_), _) => false,
                };
                let authorized = operation.authorized(actor);
                if succeeded && !authorized {
                    unauthorized_successes.push((operation, actor));
                }
                // A registered identity's refused attempt is recorded (reads by the read
                // contract itself; a second vote is malformed, not unauthorized).
                let recordable = !matches!(
                    (operation, actor),
                    (
                        Operation::Read | Operation::Anchor | Operation::OpenSession,
                        _
                    ) | (_, Actor::Anonymous)
                        | (Operation::Vote, Actor::HomeInstitution)
                );
                if recordable && !authorized && w.recorded_denial() != Some(kind) {
                    unrecorded.push((operation, actor));
                }
                if !succeeded && authorized {
                    wrongly_refused.push((operation, actor, result.err()));
                }
            }
        }
        assert_eq!(unauthorized_successes, Vec::new(), "unauthorized successes");
        assert!(wrongly_refused.is_empty(), "refused: {wrongly_refused:?}");
        assert!(
            unrecorded.is_empty(),
            "refused but not recorded: {unrecorded:?}"
        );
    }

    #[test]
    fn an_institution_removes_its_clinician_and_the_key_stops_working() {
        let mut w = World::new(Rules::default());
        let remove = |who: &PrivateKey| Payload::RemoveClinician {
            clinician: who.public_key(),
        };
        // Only the clinician's own institution.
        // Refused, and each attempt is a finding for the auditor.
        for other in [hospital_b(), clinician_a(), patient_1(), auditor()] {
            w.denied_on_record(&other, remove(&clinician_a()));
        }
        w.denied_on_record(&hospital_a(), remove(&patient_1()));
        assert!(w.state.findings().all(|(_, f)| f.patient == NO_PATIENT));
        w.ok(&hospital_a(), remove(&clinician_a()));
        // Refused from now on: a read attempt, a write, a second removal, a grant to it.
        assert_eq!(w.read(&clinician_a(), R1), Err(Rejection::RetiredKey));
        assert_eq!(
            w.run(&hospital_a(), remove(&clinician_a())).err(),
            Some(Rejection::RetiredKey)
        );
        let now = w.time_ms;
        assert!(
            w.grant(&patient_1(), &clinician_a(), 5, now + HOUR)
                .is_err()
        );
        // The records it wrote stay with the patient.
        assert_eq!(w.read(&patient_1(), R1), Ok(Outcome::Allowed(Basis::Owner)));
    }

    #[test]
    fn expired_grants_deny_with_expired_when_no_revocation_competes() {
        let mut w = World::new(Rules::default());
        w.grant(&patient_1(), &clinician_b(), 1, w.time_ms + 1_500)
            .unwrap();
        w.time_ms += 10_000;
        assert_eq!(
            w.read(&clinician_b(), R1),
            denied(Reason::Consent(Denial::Expired))
        );
        assert_eq!(w.findings(), vec!["denied-access"]);
    }

    #[test]
    fn only_owners_grant_and_revoke() {
        let mut w = World::new(Rules::default());
        let until = w.time_ms + HOUR;
        for intruder in [
            clinician_a(),
            clinician_b(),
            hospital_a(),
            auditor(),
            patient_2(),
        ] {
            // Refused, and the attempt is on the patient's trail.
            assert!(w.grant(&intruder, &clinician_b(), 1, until).is_ok());
            assert_eq!(w.recorded_denial(), Some(6));
            assert!(w.state.grant(&P1, &[1; 16]).is_none());
        }
        // A guardian appointed by the patient may grant and revoke.
        w.denied_on_record(
            &clinician_a(),
            Payload::AppointGuardian {
                patient: P1,
                guardian: guardian_1().public_key(),
                encryption_key: [0xD1; 32],
            },
        );
        w.ok(
            &patient_1(),
            Payload::AppointGuardian {
                patient: P1,
                guardian: guardian_1().public_key(),
                encryption_key: [0xD1; 32],
            },
        );
        w.grant(&guardian_1(), &clinician_b(), 1, until).unwrap();
        w.denied_on_record(
            &clinician_b(),
            Payload::Revoke {
                patient: P1,
                grant: [1; 16],
            },
        );
        w.ok(
            &guardian_1(),
            Payload::Revoke {
                patient: P1,
                grant: [1; 16],
            },
        );
        assert_eq!(
            w.run(
                &patient_1(),
                Payload::Revoke {
                    patient: P1,
                    grant: [1; 16]
                }
            )
            .map(|_| ()),
            Err(Rejection::Refused(consent::Refusal::AlreadyRevoked))
        );
        // A grantee must be a clinician or an institution; a grant must not be born expired.
        assert!(matches!(
            w.grant(&patient_1(), &patient_2(), 2, until),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            w.grant(&patient_1(), &clinician_b(), 3, w.time_ms),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn break_glass_is_time_boxed_flagged_and_visible() {
        let rules = Rules {
            break_glass_ms: 60_000,
            ..Rules::default()
        };
        let mut w = World::new(rules);
        // Only an enrolled clinician, with a listed reason.
        for other in [patient_2(), hospital_b(), auditor()] {
            w.denied_on_record(
                &other,
                Payload::BreakGlass {
                    patient: P1,
                    reason: 1,
                },
            );
        }
        assert!(matches!(
            w.run(
                &clinician_b(),
                Payload::BreakGlass {
                    patient: P1,
                    reason: 77
                }
            ),
            Err(Rejection::Malformed(_))
        ));
        w.ok(
            &clinician_b(),
            Payload::BreakGlass {
                patient: P1,
                reason: 1,
            },
        );
        assert_eq!(
            w.read(&clinician_b(), R1),
            Ok(Outcome::Allowed(Basis::BreakGlass))
        );
        // The patient sees it, after the three refused attempts; the auditor has findings.
        let trail = w.state.patient_events(&P1);
        assert!(trail[..3].iter().all(|(_, e)| matches!(
            e.outcome,
            Outcome::Denied(Reason::NotPermitted { operation: 9 })
        )));
        assert!(matches!(
            trail[3].1.outcome,
            Outcome::Allowed(Basis::BreakGlassOpened { reason: 1, .. })
        ));
        assert_eq!(w.findings()[3..], ["break-glass"]);
        // After the time box, refused again.
        w.time_ms += 61_000;
        assert_eq!(
            w.read(&clinician_b(), R1),
            denied(Reason::Consent(Denial::NoGrant))
        );
    }

    #[test]
    fn read_volume_above_the_genesis_threshold_is_flagged_once_per_window() {
        let rules = Rules {
            read_volume_max: 3,
            read_volume_window_ms: HOUR,
            ..Rules::default()
        };
        let mut w = World::new(rules);
        w.time_ms = 2_000 * HOUR;
        for _ in 0..6 {
            w.read(&clinician_a(), R1).unwrap();
        }
        assert_eq!(w.findings(), vec!["read-volume"]);
        w.time_ms += HOUR;
        for _ in 0..4 {
            w.read(&clinician_a(), R1).unwrap();
        }
        assert_eq!(w.findings(), vec!["read-volume", "read-volume"]);
    }

    #[test]
    fn erased_patients_and_unknown_records_are_refused_not_recorded() {
        let mut w = World::new(Rules::default());
        assert_eq!(
            w.read(&clinician_a(), [0x99; 16]),
            Err(Rejection::UnknownRecord)
        );
        w.ok(&patient_1(), Payload::ErasePatient { patient: P1 });
        assert_eq!(w.read(&patient_1(), R1), Err(Rejection::PatientErased));
        assert!(w.state.patient_events(&P1).is_empty());
    }

    #[test]
    fn rotated_keys_are_rejected_and_rights_follow_the_identity() {
        let mut w = World::new(Rules::default());
        let until = w.time_ms + HOUR;
        w.grant(&patient_1(), &clinician_b(), 1, until).unwrap();
        let (b2, a2, p1b) = (key(111), key(110), key(120));
        w.ok(
            &clinician_b(),
            Payload::RotateKey {
                new_key: b2.public_key(),
                encryption_key: [0xB2; 32],
            },
        );
        w.ok(
            &clinician_a(),
            Payload::RotateKey {
                new_key: a2.public_key(),
                encryption_key: [0xA2; 32],
            },
        );
        // The old keys are refused for anything, even a read attempt.
        assert_eq!(w.read(&clinician_b(), R1), Err(Rejection::RetiredKey));
        // The grant and the authorship follow the identity to its new key.
        assert_eq!(
            w.read(&b2, R1),
            Ok(Outcome::Allowed(Basis::Consent([1; 16])))
        );
        assert_eq!(w.read(&a2, R1), Ok(Outcome::Allowed(Basis::Author)));
        // A retired key can be neither reused nor granted to.
        assert!(matches!(
            w.run(
                &patient_2(),
                Payload::RotateKey {
                    new_key: clinician_b().public_key(),
                    encryption_key: [1; 32],
                }
            ),
            Err(Rejection::AlreadyRegistered)
        ));
        assert!(matches!(
            w.grant(&patient_1(), &clinician_b(), 2, until),
            Err(Rejection::Malformed(_))
        ));
        // A patient rotates: the new key owns the records, the old one is gone.
        w.ok(
            &patient_1(),
            Payload::RotateKey {
                new_key: p1b.public_key(),
                encryption_key: [0xC3; 32],
            },
        );
        assert_eq!(w.state.patient(&P1).unwrap().key, p1b.public_key());
        assert_eq!(w.read(&p1b, R1), Ok(Outcome::Allowed(Basis::Owner)));
        w.ok(
            &p1b,
            Payload::Revoke {
                patient: P1,
                grant: [1; 16],
            },
        );
        // Institutions change keys by governance, not by rotation.
        w.denied_on_record(
            &hospital_a(),
            Payload::RotateKey {
                new_key: key(130).public_key(),
                encryption_key: [1; 32],
            },
        );
    }

    #[test]
    fn an_auditor_reviews_a_break_glass_finding_once() {
        let mut w = World::new(Rules::default());
        w.ok(
            &clinician_b(),
            Payload::BreakGlass {
                patient: P1,
                reason: BREAK_GLASS_REASONS[0].0,
            },
        );
        let (&(height, index, seq), finding) = w
            .state
            .findings()
            .find(|(_, f)| matches!(f.kind, FindingKind::BreakGlass { .. }))
            .expect("a break-glass finding");
        assert_eq!(finding.actor, clinician_b().public_key());
        let review = |verdict| Payload::ReviewFinding {
            height,
            index,
            seq,
            verdict,
        };
        // Only an auditor reviews: not the clinician, the patient or an institution.
        for other in [clinician_b(), patient_1(), hospital_a()] {
            let _ = w.run(&other, review(1));
            assert!(w.state.review_of(&(height, index, seq)).is_none());
        }
        assert!(w.run(&auditor(), review(3)).is_err(), "no such verdict");
        let elsewhere = Payload::ReviewFinding {
            height: height + 100,
            index,
            seq,
            verdict: 1,
        };
        assert!(w.run(&auditor(), elsewhere).is_err(), "no such finding");
        w.ok(&auditor(), review(1));
        let done = w.state.review_of(&(height, index, seq)).expect("reviewed");
        assert_eq!(
            (done.auditor.clone(), done.verdict),
            (auditor().public_key(), crate::facts::Verdict::Justified)
        );
        // Once: a second review is refused and changes nothing.
        assert!(w.run(&auditor(), review(2)).is_err());
        assert_eq!(
            w.state.review_of(&(height, index, seq)).unwrap().verdict,
            crate::facts::Verdict::Justified
        );
    }

    #[test]
    fn a_removed_guardian_no_longer_acts_for_the_patient() {
        let mut w = World::new(Rules::default());
        let appoint = Payload::AppointGuardian {
            patient: P1,
            guardian: guardian_1().public_key(),
            encryption_key: [0xD1; 32],
        };
        w.ok(&patient_1(), appoint);
        assert_eq!(
            w.read(&guardian_1(), R1),
            Ok(Outcome::Allowed(Basis::Guardian))
        );
        let remove = Payload::RemoveGuardian {
            patient: P1,
            guardian: guardian_1().public_key(),
        };
        // Only the patient removes: not the guardian, not the home institution.
        for other in [guardian_1(), hospital_a(), patient_2()] {
            // Refused (a registered identity's attempt is recorded as denied on the trail).
            let _ = w.run(&other, remove.clone());
            assert_eq!(w.state.patient(&P1).unwrap().guardians.len(), 1);
        }
        w.ok(&patient_1(), remove.clone());
        assert!(w.state.patient(&P1).unwrap().guardians.is_empty());
        // The guardian's key is retired: no read, no grant, no second removal.
        assert_eq!(w.read(&guardian_1(), R1), Err(Rejection::RetiredKey));
        assert!(w.run(&patient_1(), remove).is_err());
        assert_eq!(w.read(&patient_1(), R1), Ok(Outcome::Allowed(Basis::Owner)));
    }

    #[test]
    fn a_lost_patient_key_is_recovered_by_guardian_or_home_institution_and_audited() {
        let mut w = World::new(Rules::default());
        let (lost_replaced, by_guardian) = (key(140), key(141));
        for outsider in [hospital_b(), clinician_a(), patient_2(), auditor()] {
            w.denied_on_record(
                &outsider,
                Payload::RecoverKey {
                    patient: P1,
                    new_key: lost_replaced.public_key(),
                    encryption_key: [0xE1; 32],
                },
            );
        }
        assert_eq!(w.findings(), vec!["denied-access"; 4]);
        w.ok(
            &hospital_a(),
            Payload::RecoverKey {
                patient: P1,
                new_key: lost_replaced.public_key(),
                encryption_key: [0xE1; 32],
            },
        );
        assert_eq!(w.findings()[4..], ["key-recovery"]);
        assert_eq!(w.read(&patient_1(), R1), Err(Rejection::RetiredKey));
        assert_eq!(
            w.read(&lost_replaced, R1),
            Ok(Outcome::Allowed(Basis::Owner))
        );
        // A guardian, appointed by the (new) key, recovers again.
        w.ok(
            &lost_replaced,
            Payload::AppointGuardian {
                patient: P1,
                guardian: guardian_1().public_key(),
                encryption_key: [0xD1; 32],
            },
        );
        w.ok(
            &guardian_1(),
            Payload::RecoverKey {
                patient: P1,
                new_key: by_guardian.public_key(),
                encryption_key: [0xE2; 32],
            },
        );
        assert_eq!(w.state.patient(&P1).unwrap().encryption_key, [0xE2; 32]);
        assert_eq!(w.findings()[4..], ["key-recovery", "key-recovery"]);
    }

    #[test]
    fn governance_needs_more_than_two_thirds_and_a_failed_vote_changes_nothing() {
        use crate::facts::ProposalStatus as Status;
        use ehrchain_types::GovernanceAction;
        let mut w = World::new(Rules::default());
        let (new_auditor, hospital_c) = (key(200), key(201));
        let propose = |w: &mut World, by: &PrivateKey, id: u8, action: GovernanceAction| {
            w.run(
                by,
                Payload::Propose {
                    proposal: [id; 16],
                    action,
                },
            )
        };
        // Only members propose and vote.
        for outsider in [clinician_a(), patient_1(), auditor()] {
            w.denied_on_record(
                &outsider,
                Payload::Propose {
                    proposal: [1; 16],
                    action: GovernanceAction::AppointAuditor {
                        key: new_auditor.public_key(),
                    },
                },
            );
        }
        // Two members: one yes is not more than 2/3; a no settles it as rejected.
        propose(
            &mut w,
            &hospital_a(),
            1,
            GovernanceAction::AppointAuditor {
                key: new_auditor.public_key(),
            },
        )
        .unwrap();
        assert_eq!(w.state.proposal(&[1; 16]).unwrap().status, Status::Open);
        w.ok(
            &hospital_b(),
            Payload::Vote {
                proposal: [1; 16],
                approve: false,
            },
        );
        assert!(matches!(
            w.state.proposal(&[1; 16]).unwrap().status,
            Status::Rejected { .. }
        ));
        assert!(w.state.identity(&new_auditor.public_key()).is_none());
        assert!(matches!(
            w.run(
                &hospital_b(),
                Payload::Vote {
                    proposal: [1; 16],
                    approve: true,
                }
            ),
            Err(Rejection::Malformed(_))
        ));
        // Both yes: the auditor is appointed; a member admitted; then three must agree.
        propose(
            &mut w,
            &hospital_a(),
            2,
            GovernanceAction::AppointAuditor {
                key: new_auditor.public_key(),
            },
        )
        .unwrap();
        w.ok(
            &hospital_b(),
            Payload::Vote {
                proposal: [2; 16],
                approve: true,
            },
        );
        assert_eq!(
            w.state.identity(&new_auditor.public_key()).map(|i| i.role),
            Some(Role::Auditor)
        );
        assert_eq!(w.read(&new_auditor, R1), denied(Reason::Auditor));
        propose(
            &mut w,
            &hospital_b(),
            3,
            GovernanceAction::AddMember {
                key: hospital_c.public_key(),
                encryption_key: [0xCC; 32],
                p2p_address: "10.0.0.3:9000".parse().unwrap(),
            },
        )
        .unwrap();
        w.ok(
            &hospital_a(),
            Payload::Vote {
                proposal: [3; 16],
                approve: true,
            },
        );
        let passed = w.state.proposal(&[3; 16]).unwrap().status;
        let Status::Passed {
            height,
            effective_height,
        } = passed
        else {
            panic!("not passed: {passed:?}");
        };
        assert!(effective_height > height);
        assert_eq!(
            effective_height % ehrchain_types::genesis::Rules::default().epoch_blocks,
            0
        );
        assert_eq!(w.state.member_count(), 3);
        // The new member acts as one: registers a patient.
        w.ok(
            &hospital_c,
            Payload::RegisterPatient {
                patient: [3; 16],
                key: key(202).public_key(),
                encryption_key: [0xC4; 32],
            },
        );
        // Removing a member now takes 3 of 3 (2 of 3 is not more than 2/3).
        propose(
            &mut w,
            &hospital_a(),
            4,
            GovernanceAction::RemoveMember {
                key: hospital_b().public_key(),
            },
        )
        .unwrap();
        w.ok(
            &hospital_c,
            Payload::Vote {
                proposal: [4; 16],
                approve: true,
            },
        );
        assert!(matches!(
            w.state.proposal(&[4; 16]).unwrap().status,
            Status::Open
        ));
        w.ok(
            &hospital_b(),
            Payload::Vote {
                proposal: [4; 16],
                approve: true,
            },
        );
        assert_eq!(w.state.member_count(), 2);
        assert_eq!(
            w.run(
                &hospital_b(),
                Payload::EnrollClinician {
                    clinician: key(203).public_key(),
                    encryption_key: [1; 32],
                }
            )
            .map(|_| ()),
            Err(Rejection::RetiredKey)
        );
    }

    #[test]
    fn writes_need_the_home_institution_an_earlier_version_or_write_consent() {
        let mut w = World::new(Rules::default());
        let anchor = |record: RecordId, version: u32, resource_type: u8| {
            Payload::RecordAnchor(RecordAnchor {
                record,
                version,
                patient: P1,
                resource_type,
                ciphertext_hash: sha256(&[&record, &version.to_be_bytes()]),
                ciphertext_size: 10,
                timestamp_ms: 0,
            })
        };
        // Clinician B works at hospital B; patient 1 is registered at hospital A.
        // Refused, and recorded as an attempt on the patient's trail: no version is made.
        for other in [clinician_b(), hospital_b(), patient_1(), auditor()] {
            w.denied_on_record(&other, anchor([0x21; 16], 1, 2));
        }
        assert!(w.state.versions(&[0x21; 16]).is_empty());
        // An unknown key's attempt cannot be recorded: it never reaches a block.
        assert!(matches!(
            w.run(&stranger(), anchor([0x21; 16], 1, 2)),
            Err(Rejection::Unauthorized(_))
        ));
        // A read-only grant is not enough; a write grant for Observations is, for them only.
        w.grant(&patient_1(), &clinician_b(), 1, w.time_ms + HOUR)
            .unwrap();
        w.denied_on_record(&clinician_b(), anchor([0x21; 16], 1, 2));
        let until = w.time_ms + HOUR;
        w.ok(
            &patient_1(),
            Payload::Grant(ConsentGrant {
                id: [2; 16],
                patient: P1,
                grantee: clinician_b().public_key(),
                actions: 2,
                types: vec![2],
                purposes: Vec::new(),
                valid_from_ms: w.time_ms,
                valid_until_ms: until,
                share: Digest::from([0; 32]),
            }),
        );
        w.ok(&clinician_b(), anchor([0x21; 16], 1, 2));
        w.denied_on_record(&clinician_b(), anchor([0x22; 16], 1, 3));
        // Revoked: no new records; the home institution's clinicians write as ever.
        w.ok(
            &patient_1(),
            Payload::Revoke {
                patient: P1,
                grant: [2; 16],
            },
        );
        w.denied_on_record(&clinician_b(), anchor([0x23; 16], 1, 2));
        // ...but the author of an earlier version may still amend it.
        w.ok(&clinician_b(), anchor([0x21; 16], 2, 2));
        w.ok(&clinician_a(), anchor([0x24; 16], 1, 3));
        w.ok(&hospital_a(), anchor([0x25; 16], 1, 3));
    }

    #[test]
    fn a_gateway_session_acts_for_its_identity_within_limits() {
        use commonware_codec::Encode as _;
        use ehrchain_crypto::jwt;
        let mut w = World::new(Rules::default());
        let seed: [u8; 32] = clinician_a().encode().as_ref().try_into().unwrap();
        let id = hex::encode(clinician_a().public_key().as_ref());
        let assertion = |exp_ms: u64, jti: &str| {
            jwt::sign(
                &seed,
                &jwt::Claims {
                    iss: id.clone(),
                    sub: id.clone(),
                    aud: "http://node/auth/token".into(),
                    exp: exp_ms / 1000,
                    jti: jti.into(),
                    iat: None,
                    nbf: None,
                    client_id: None,
                    scope: None,
                },
            )
            .into_bytes()
        };
        let open = |assertion: Vec<u8>, identity: &PrivateKey| Payload::OpenSession {
            identity: identity.public_key(),
            gateway: hospital_a().public_key(),
            assertion,
        };
        let good = assertion(w.time_ms + 300_000, "a");
        // An assertion checked against another identity's key, or expired, or too far
        // ahead, opens nothing.
        assert!(matches!(
            w.run(&key(500), open(good.clone(), &clinician_b())),
            Err(Rejection::Unauthorized(_))
        ));
        assert!(matches!(
            w.run(
                &key(501),
                open(assertion(w.time_ms - 1_000, "b"), &clinician_a())
            ),
            Err(Rejection::Unauthorized("the client assertion has expired"))
        ));
        assert!(matches!(
            w.run(
                &key(502),
                open(assertion(w.time_ms + 3_600_000, "c"), &clinician_a())
            ),
            Err(Rejection::Unauthorized(_))
        ));
        assert!(matches!(
            w.run(&key(503), open(b"not a jwt".to_vec(), &clinician_a())),
            Err(Rejection::Malformed(_))
        ));
        let session = key(504);
        w.ok(&session, open(good.clone(), &clinician_a()));
        // A replayed assertion opens no second session.
        assert!(matches!(
            w.run(&key(505), open(good, &clinician_a())),
            Err(Rejection::Unauthorized(
                "this client assertion was already used"
            ))
        ));
        // The session reads as the clinician: the trail names the clinician, not the key.
        w.ok(
            &session,
            Payload::Access {
                record: R1,
                purpose: Purpose::Treatment as u8,
            },
        );
        let (_, event) = w.state.events().last().unwrap();
        assert_eq!(event.actor, clinician_a().public_key());
        assert!(matches!(event.outcome, Outcome::Allowed(Basis::Author)));
        // It may not carry identity or governance operations.
        assert!(matches!(
            w.run(
                &session,
                Payload::RotateKey {
                    new_key: key(506).public_key(),
                    encryption_key: [1; 32],
                }
            ),
            Err(Rejection::Unauthorized(_))
        ));
        // And it ends.
        w.time_ms += SESSION_MS;
        assert!(matches!(
            w.run(
                &session,
                Payload::Access {
                    record: R1,
                    purpose: Purpose::Treatment as u8,
                }
            ),
            Err(Rejection::Unauthorized(_))
        ));
    }

    #[test]
    fn a_record_set_writes_every_version_or_none() {
        let mut w = World::new(Rules::default());
        let version = |record: RecordId, version: u32, patient: PatientId| RecordAnchor {
            record,
            version,
            patient,
            resource_type: 2,
            ciphertext_hash: sha256(&[&record, &version.to_be_bytes()]),
            ciphertext_size: 10,
            timestamp_ms: 0,
        };
        // Clinician A (hospital A is both patients' home): a new version of R1, a new record
        // for each patient, and a second new version of R1 checked after the first.
        let tx = w.ok(
            &clinician_a(),
            Payload::RecordSet(vec![
                version(R1, 2, P1),
                version([0x31; 16], 1, P1),
                version([0x32; 16], 1, P2),
                version(R1, 3, P1),
            ]),
        );
        assert_eq!(w.state.latest(&R1).unwrap().anchor.version, 3);
        for record in [R1, [0x31; 16], [0x32; 16]] {
            assert_eq!(w.state.latest(&record).unwrap().transaction, tx.id());
        }
        // Hospital B registers patient 3; clinician B may write for them, not for patient 1.
        const P3: PatientId = [0x33; 16];
        w.ok(
            &hospital_b(),
            Payload::RegisterPatient {
                patient: P3,
                key: key(333).public_key(),
                encryption_key: [0x33; 32],
            },
        );
        w.ok(
            &clinician_b(),
            Payload::RecordAnchor(version([0x34; 16], 1, P3)),
        );
        // A set whose second write is refused: nothing of it is written, and the attempt is
        // on both patients' trails.
        w.denied_on_record(
            &clinician_b(),
            Payload::RecordSet(vec![version([0x34; 16], 2, P3), version([0x35; 16], 1, P1)]),
        );
        assert_eq!(w.state.latest(&[0x34; 16]).unwrap().anchor.version, 1);
        assert!(w.state.versions(&[0x35; 16]).is_empty());
        let denied: Vec<PatientId> = w
            .state
            .events()
            .filter(|((height, _, _), e)| {
                *height == w.height && matches!(e.outcome, Outcome::Denied(_))
            })
            .map(|(_, e)| e.patient)
            .collect();
        assert_eq!(denied, vec![P3, P1]);
        // A stale version anywhere in the set refuses the whole set outright.
        assert_eq!(
            w.run(
                &clinician_a(),
                Payload::RecordSet(vec![version([0x36; 16], 1, P1), version(R1, 3, P1)]),
            )
            .map(|_| ()),
            Err(Rejection::WrongVersion {
                expected: 4,
                got: 3
            })
        );
        assert!(w.state.versions(&[0x36; 16]).is_empty());
        // A session carries a set as its identity.
        let session = open_session(&mut w, &clinician_a(), &hospital_a(), 31);
        w.ok(
            &session,
            Payload::RecordSet(vec![version([0x36; 16], 1, P1)]),
        );
        assert_eq!(
            w.state.latest(&[0x36; 16]).unwrap().author,
            clinician_a().public_key()
        );
    }

    /// A compact ES384 JWT for `identity`, signed with the P-384 key of `scalar` under `kid`.
    fn es384_assertion(
        identity: &PrivateKey,
        scalar: u8,
        kid: &str,
        exp_s: u64,
        jti: &str,
    ) -> Vec<u8> {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        use p384::ecdsa::signature::Signer as _;
        let id = hex::encode(identity.public_key().as_ref());
        let claims = ehrchain_crypto::jwt::Claims {
            iss: id.clone(),
            sub: id,
            aud: "http://node/auth/token".into(),
            exp: exp_s,
            jti: jti.into(),
            iat: None,
            nbf: None,
            client_id: None,
            scope: None,
        };
        let signed = format!(
            "{}.{}",
            B64.encode(format!(r#"{{"alg":"ES384","kid":"{kid}"}}"#)),
            B64.encode(serde_json::to_vec(&claims).unwrap())
        );
        let key = p384::ecdsa::SigningKey::from_slice(&[scalar; 48]).unwrap();
        let signature: p384::ecdsa::Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(signature.to_bytes())).into_bytes()
    }

    /// The public JWK of the P-384 key of `scalar`.
    fn p384_jwk(scalar: u8, kid: &str) -> Vec<u8> {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let key = p384::ecdsa::SigningKey::from_slice(&[scalar; 48]).unwrap();
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        format!(
            r#"{{"kty":"EC","crv":"P-384","kid":"{kid}","alg":"ES384","x":"{}","y":"{}"}}"#,
            B64.encode(&bytes[1..49]),
            B64.encode(&bytes[49..])
        )
        .into_bytes()
    }

    /// A public SMART app registration.
    fn chart_app(client_id: &str) -> ehrchain_types::AppRegistration {
        ehrchain_types::AppRegistration {
            client_id: client_id.into(),
            name: "Chart App".into(),
            redirect_uris: vec!["http://localhost:9000/redirect".into()],
            jwk: None,
        }
    }

    #[test]
    fn app_logins_name_the_app_last_as_approved_and_end_when_closed_or_removed() {
        let mut w = World::new(Rules::default());
        let login = |w: &World, app: &str, scope: &str, jti: &str| {
            use commonware_codec::Encode as _;
            let seed: [u8; 32] = patient_1().encode().as_ref().try_into().unwrap();
            let id = hex::encode(patient_1().public_key().as_ref());
            let assertion = ehrchain_crypto::jwt::sign(
                &seed,
                &ehrchain_crypto::jwt::Claims {
                    iss: id.clone(),
                    sub: id,
                    aud: "http://node/auth/token".into(),
                    exp: (w.time_ms + 120_000) / 1000,
                    jti: jti.into(),
                    iat: None,
                    nbf: None,
                    client_id: Some(app.into()),
                    scope: Some(scope.into()),
                },
            );
            Payload::OpenSession {
                identity: patient_1().public_key(),
                gateway: hospital_a().public_key(),
                assertion: assertion.into_bytes(),
            }
        };
        // An app nobody registered logs nobody in.
        assert!(matches!(
            w.run(&key(800), login(&w, "chart", "patient/*.rs", "a")),
            Err(Rejection::Unauthorized(
                "the client assertion names an app no institution registered"
            ))
        ));
        // Only institutions register apps; another institution cannot take over a client_id.
        // (A refusal to a registered identity is recorded, with nothing applied.)
        let _ = w.run(&clinician_a(), Payload::RegisterApp(chart_app("chart")));
        assert!(w.state.app("chart").is_none());
        w.ok(&hospital_a(), Payload::RegisterApp(chart_app("chart")));
        let mut taken = chart_app("chart");
        taken.name = "Look-alike".into();
        let _ = w.run(&hospital_b(), Payload::RegisterApp(taken));
        assert_eq!(
            w.state.app("chart").map(|a| a.name).as_deref(),
            Some("Chart App")
        );
        assert_eq!(
            w.state.app("chart").map(|a| a.institution),
            Some(hospital_a().public_key())
        );
        // A short session names the app; offline_access makes it last for refresh tokens.
        w.ok(&key(801), login(&w, "chart", "patient/*.rs", "b"));
        let short = w.state.session(&key(801).public_key()).unwrap();
        assert_eq!(short.app.as_deref(), Some("chart"));
        assert_eq!(short.expires_ms, w.time_ms + SESSION_MS);
        w.ok(
            &key(802),
            login(&w, "chart", "patient/*.rs offline_access", "c"),
        );
        let long = w.state.session(&key(802).public_key()).unwrap();
        assert_eq!(long.expires_ms, w.time_ms + OFFLINE_SESSION_MS);
        assert_eq!(
            w.state
                .sessions_of(&patient_1().public_key())
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<std::collections::BTreeSet<_>>(),
            [key(801).public_key(), key(802).public_key()].into()
        );
        let read = Payload::Access {
            record: R1,
            purpose: Purpose::Treatment as u8,
        };
        w.ok(&key(801), read.clone());
        // The trail names the app the read went through.
        let (_, event) = w
            .state
            .patient_events(&P1)
            .into_iter()
            .last()
            .expect("the read is on the trail");
        assert_eq!(event.app.as_deref(), Some("chart"));
        // Another identity cannot end the patient's session; the patient's other session can.
        let _ = w.run(
            &clinician_a(),
            Payload::CloseSession {
                session: key(801).public_key(),
            },
        );
        w.ok(&key(801), read.clone());
        w.ok(
            &key(802),
            Payload::CloseSession {
                session: key(801).public_key(),
            },
        );
        assert!(matches!(
            w.run(&key(801), read.clone()),
            Err(Rejection::Unauthorized(
                "the session has ended; ask for a new token"
            ))
        ));
        // Removing the app ends its sessions at once; only its institution may remove it.
        let _ = w.run(
            &hospital_b(),
            Payload::RemoveApp {
                client_id: "chart".into(),
            },
        );
        assert!(w.state.app("chart").is_some());
        w.ok(
            &hospital_a(),
            Payload::RemoveApp {
                client_id: "chart".into(),
            },
        );
        assert!(matches!(
            w.run(&key(802), read),
            Err(Rejection::Unauthorized(
                "the app this session was opened for has been removed"
            ))
        ));
        assert!(w.state.app("chart").is_none());
    }

    #[test]
    fn client_keys_open_sessions_for_their_identity_until_withdrawn() {
        let mut w = World::new(Rules::default());
        let exp = |w: &World| (w.time_ms + 120_000) / 1000;
        let open = |assertion: Vec<u8>| Payload::OpenSession {
            identity: clinician_a().public_key(),
            gateway: hospital_a().public_key(),
            assertion,
        };
        // Before registration, an ES384 assertion names no key.
        let early = es384_assertion(&clinician_a(), 5, "lab-1", exp(&w), "a");
        assert!(matches!(
            w.run(&key(700), open(early)),
            Err(Rejection::Unauthorized(_))
        ));
        w.ok(
            &clinician_a(),
            Payload::RegisterClientKey {
                jwk: p384_jwk(5, "lab-1"),
            },
        );
        assert_eq!(w.state.client_keys(&clinician_a().public_key()).len(), 1);
        let session = key(701);
        w.ok(
            &session,
            open(es384_assertion(&clinician_a(), 5, "lab-1", exp(&w), "b")),
        );
        w.ok(
            &session,
            Payload::Access {
                record: R1,
                purpose: Purpose::Treatment as u8,
            },
        );
        // The same jti again (an ECDSA signature can be re-made): no second session.
        assert!(matches!(
            w.run(
                &key(702),
                open(es384_assertion(&clinician_a(), 5, "lab-1", exp(&w), "b"))
            ),
            Err(Rejection::Unauthorized(
                "this client assertion was already used"
            ))
        ));
        // Another identity's kid, a key signed by another scalar: refused.
        assert!(matches!(
            w.run(
                &key(703),
                open(es384_assertion(&clinician_a(), 6, "lab-1", exp(&w), "c"))
            ),
            Err(Rejection::Unauthorized(_))
        ));
        // A JWK with a private member, an unknown kty, or a fifth key: refused.
        let mut private = p384_jwk(6, "lab-2");
        private.pop();
        private.extend_from_slice(br#","d":"AAAA"}"#);
        assert!(matches!(
            w.run(&clinician_a(), Payload::RegisterClientKey { jwk: private }),
            Err(Rejection::Malformed(_))
        ));
        for (scalar, kid) in [(6, "lab-2"), (7, "lab-3"), (8, "lab-4")] {
            w.ok(
                &clinician_a(),
                Payload::RegisterClientKey {
                    jwk: p384_jwk(scalar, kid),
                },
            );
        }
        assert!(matches!(
            w.run(
                &clinician_a(),
                Payload::RegisterClientKey {
                    jwk: p384_jwk(9, "lab-5")
                }
            ),
            Err(Rejection::Malformed(_))
        ));
        // Replacing a kid keeps the count; the old key under it no longer verifies.
        w.ok(
            &clinician_a(),
            Payload::RegisterClientKey {
                jwk: p384_jwk(9, "lab-1"),
            },
        );
        assert_eq!(w.state.client_keys(&clinician_a().public_key()).len(), 4);
        assert!(
            w.run(
                &key(704),
                open(es384_assertion(&clinician_a(), 5, "lab-1", exp(&w), "d"))
            )
            .is_err()
        );
        // Withdrawn, it opens nothing; an unknown kid is refused.
        w.ok(
            &clinician_a(),
            Payload::RemoveClientKey {
                kid: "lab-1".into(),
            },
        );
        assert!(
            w.run(
                &key(705),
                open(es384_assertion(&clinician_a(), 9, "lab-1", exp(&w), "e"))
            )
            .is_err()
        );
        assert!(matches!(
            w.run(
                &clinician_a(),
                Payload::RemoveClientKey {
                    kid: "lab-1".into()
                }
            ),
            Err(Rejection::Malformed(_))
        ));
        // A session may not register keys; a rotation leaves the old key's behind.
        assert!(matches!(
            w.run(
                &session,
                Payload::RegisterClientKey {
                    jwk: p384_jwk(10, "lab-6")
                }
            ),
            Err(Rejection::Unauthorized(_))
        ));
        w.ok(
            &clinician_a(),
            Payload::RotateKey {
                new_key: key(710).public_key(),
                encryption_key: [0x71; 32],
            },
        );
        assert!(w.state.client_keys(&clinician_a().public_key()).is_empty());
        assert!(w.state.client_keys(&key(710).public_key()).is_empty());
    }

    /// Open a session for `identity` at `gateway`'s node; the session key.
    fn open_session(
        w: &mut World,
        identity: &PrivateKey,
        gateway: &PrivateKey,
        seed: u64,
    ) -> PrivateKey {
        use commonware_codec::Encode as _;
        let secret: [u8; 32] = identity.encode().as_ref().try_into().unwrap();
        let id = hex::encode(identity.public_key().as_ref());
        let assertion = ehrchain_crypto::jwt::sign(
            &secret,
            &ehrchain_crypto::jwt::Claims {
                iss: id.clone(),
                sub: id,
                aud: "http://node/auth/token".into(),
                exp: (w.time_ms + 120_000) / 1000,
                jti: format!("log-{seed}"),
                iat: None,
                nbf: None,
                client_id: None,
                scope: None,
            },
        );
        let session = key(seed);
        w.ok(
            &session,
            Payload::OpenSession {
                identity: identity.public_key(),
                gateway: gateway.public_key(),
                assertion: assertion.into_bytes(),
            },
        );
        session
    }

    #[test]
    fn a_gateway_logs_the_reads_it_served_and_the_chain_decides_them_again() {
        use ehrchain_types::transaction::AccessLogEntry;
        let mut w = World::new(Rules::default());
        let session = open_session(&mut w, &clinician_b(), &hospital_b(), 600);
        // A session opened naming a gateway that is not a member institution opens nothing.
        assert!(matches!(
            w.run(
                &key(601),
                Payload::OpenSession {
                    identity: clinician_b().public_key(),
                    gateway: clinician_a().public_key(),
                    assertion: b"x".to_vec(),
                }
            ),
            Err(Rejection::Unauthorized(_))
        ));
        w.grant(&patient_1(), &clinician_b(), 7, w.time_ms + HOUR)
            .unwrap();
        let granted_at = w.time_ms;
        let entry = |checked_ms: u64| AccessLogEntry {
            session: session.public_key(),
            record: R1,
            purpose: Purpose::Treatment as u8,
            checked_ms,
        };
        w.ok(
            &patient_1(),
            Payload::Revoke {
                patient: P1,
                grant: [7; 16],
            },
        );
        let revoked_at = w.time_ms;
        // Logged after the revocation: the read decided before it was allowed, the one
        // decided at the revocation's own time is not.
        let log = |first: u64, entries: Vec<AccessLogEntry>| Payload::AccessLog { first, entries };
        let tx = w
            .ok(
                &hospital_b(),
                log(0, vec![entry(granted_at), entry(revoked_at)]),
            )
            .id();
        let first = w.state.event_at(&(w.height, 0, 0)).cloned().unwrap();
        assert_eq!(
            first.actor,
            clinician_b().public_key(),
            "the trail names the reader"
        );
        assert_eq!(first.outcome, Outcome::Allowed(Basis::Consent([7; 16])));
        assert_eq!(first.time_ms, granted_at, "the time the gateway decided");
        assert_eq!(first.transaction, tx);
        let second = w.state.event_at(&(w.height, 0, 1)).cloned().unwrap();
        assert_eq!(
            second.outcome,
            Outcome::Denied(Reason::Consent(Denial::Revoked))
        );
        assert_eq!(w.findings(), vec!["denied-access", "after-revocation"]);
        assert_eq!(w.state.access_log_next(&hospital_b().public_key()), 2);
        assert_eq!(w.state.patient_events(&P1).len(), 2);

        // Sent again after a restart, with one more: only the new entry is recorded.
        w.ok(
            &hospital_b(),
            log(
                0,
                vec![entry(granted_at), entry(revoked_at), entry(revoked_at)],
            ),
        );
        assert_eq!(w.state.patient_events(&P1).len(), 3);
        assert!(w.state.event_at(&(w.height, 0, 2)).is_some());
        assert_eq!(w.state.access_log_next(&hospital_b().public_key()), 3);
        // A log wholly sent before changes nothing, and never moves the log back.
        w.ok(&hospital_b(), log(1, vec![entry(granted_at)]));
        assert_eq!(w.state.patient_events(&P1).len(), 3);
        assert_eq!(w.state.access_log_next(&hospital_b().public_key()), 3);
        // A gap is refused (the gateway sends again from the chain's next entry).
        assert!(matches!(
            w.run(&hospital_b(), log(4, vec![entry(revoked_at)])),
            Err(Rejection::AccessLogGap {
                expected: 3,
                got: 4
            })
        ));
        // A decision time after the block is refused.
        assert!(matches!(
            w.run(&hospital_b(), log(3, vec![entry(w.time_ms + 5_000)])),
            Err(Rejection::Malformed(_))
        ));
        // Another institution cannot log reads of a session it did not open: the attempt is
        // recorded as a finding and logs nothing.
        w.ok(&hospital_a(), log(0, vec![entry(granted_at)]));
        assert_eq!(w.recorded_denial(), Some(18));
        assert_eq!(w.state.access_log_next(&hospital_a().public_key()), 0);
        assert_eq!(w.state.patient_events(&P1).len(), 3);
        // Nor can anyone but a member institution log.
        w.ok(&clinician_b(), log(0, vec![entry(granted_at)]));
        assert_eq!(w.recorded_denial(), Some(18));
        assert_eq!(w.state.patient_events(&P1).len(), 3);

        // A read logged long after it was decided is kept, with a late-log finding.
        w.time_ms += 2 * ACCESS_LOG_LAG_MS;
        w.ok(&hospital_b(), log(3, vec![entry(granted_at)]));
        let late = w.state.event_at(&(w.height, 0, 0)).cloned().unwrap();
        assert_eq!(late.outcome, Outcome::Allowed(Basis::Consent([7; 16])));
        assert_eq!(w.findings().last(), Some(&"late-log"));

        // A node whose final state is a block behind the gateway's admits its log (a decision
        // after that state's time); the block it lands in judges it.
        let decided = w.time_ms + 500;
        let tx = w.sign(&hospital_b(), log(4, vec![entry(decided)]));
        let admission = At {
            height: 0,
            time_ms: w.state.time_ms(),
            index: 0,
        };
        crate::execute::apply(&w.state, &mut state::Delta::default(), admission, &tx).unwrap();
        w.ok(&hospital_b(), log(4, vec![entry(decided)]));
        assert_eq!(
            w.state.event_at(&(w.height, 0, 0)).map(|e| e.time_ms),
            Some(decided)
        );
    }
}
