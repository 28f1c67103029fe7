//! Consent: a patient (or guardian) grants a clinician or an institution some actions on some
//! resource types, for some purposes, within a validity window; and may revoke it.
//!
//! The rule, precisely: a request by `actor` (with `actor_institution`, if a clinician) to do
//! `action` on a record of `resource_type` belonging to `patient`, for `purpose`, at block time
//! `now_ms`, is allowed if and only if some grant `g` of that patient satisfies all of:
//! - `g` is not revoked, and `g.valid_from_ms <= now_ms < g.valid_until_ms`;
//! - `g.grantee` is the actor itself, or the actor's institution;
//! - `g.actions` contains `action`;
//! - `g.types` is empty (all types) or contains `resource_type`;
//! - `g.purposes` is empty (any purpose) or contains `purpose`.
//!
//! Otherwise the answer is a denial whose reason is the most specific one found, in this order
//! of precedence: revoked, expired, not yet valid, action not granted, type not granted,
//! purpose not granted, no grant.

use std::collections::BTreeMap;

/// A 32-byte identity key (Ed25519 public key bytes).
pub type Key = [u8; 32];
/// A pseudonymous patient id.
pub type PatientId = [u8; 16];
/// A grant id (the hash prefix of the grant transaction, say).
pub type GrantId = [u8; 16];

/// What may be done with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// FHIR consentaction `access`.
    Read,
    /// FHIR consentaction `correct`.
    Write,
}

impl Action {
    const fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Write => 2,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "access",
            Self::Write => "correct",
        }
    }
}

/// Why access is sought, as v3-ActReason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Purpose {
    Treatment = 1,
    Emergency = 2,
    Research = 3,
    Payment = 4,
    Operations = 5,
    /// The patient (or guardian) reads their own record.
    PatientRequest = 6,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Self::Treatment,
        Self::Emergency,
        Self::Research,
        Self::Payment,
        Self::Operations,
        Self::PatientRequest,
    ];

    /// The v3-ActReason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Treatment => "TREAT",
            Self::Emergency => "ETREAT",
            Self::Research => "HRESCH",
            Self::Payment => "HPAYMT",
            Self::Operations => "HOPERAT",
            Self::PatientRequest => "PATRQT",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }

    /// From the number carried on chain.
    pub fn from_number(number: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as u8 == number)
    }
}

/// One grant, as stored on chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub patient: PatientId,
    /// Who signed it: the patient's key or a guardian's.
    pub granted_by: Key,
    /// A clinician's key or an institution's key.
    pub grantee: Key,
    /// Bit set of [`Action`]s.
    pub actions: u8,
    /// Resource type codes (see `ehrchain-fhir`); empty means all types.
    pub types: Vec<u8>,
    /// Purposes; empty means any purpose.
    pub purposes: Vec<Purpose>,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    /// Block time of the revocation, once revoked.
    pub revoked_at_ms: Option<u64>,
}

impl Grant {
    pub fn allows_action(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }

    pub fn actions_of(actions: &[Action]) -> u8 {
        actions.iter().fold(0, |bits, a| bits | a.bit())
    }

    /// Whether the grant is in force at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        !self.revoked_by(now_ms) && self.valid_from_ms <= now_ms && now_ms < self.valid_until_ms
    }

    /// Whether the grant was revoked at or before `now_ms` (a decision as of an earlier time,
    /// such as a gateway's logged read, still counts a grant revoked after it).
    pub fn revoked_by(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// An access request to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub actor: Key,
    /// The actor's institution, when the actor is a clinician.
    pub actor_institution: Option<Key>,
    pub patient: PatientId,
    pub action: Action,
    pub resource_type: u8,
    pub purpose: Purpose,
    pub now_ms: u64,
}

/// Why a request was denied. Reasons name rules, never record content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Denial {
    #[error("no consent covers this actor")]
    NoGrant,
    #[error("the consent does not cover this purpose")]
    PurposeNotGranted,
    #[error("the consent does not cover this resource type")]
    TypeNotGranted,
    #[error("the consent does not cover this action")]
    ActionNotGranted,
    #[error("the consent is not yet valid")]
    NotYetValid,
    #[error("the consent has expired")]
    Expired,
    #[error("the consent was revoked")]
    Revoked,
}

/// Why a grant or revoke operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a grant with this id exists")]
    DuplicateGrant,
    #[error("no such grant")]
    UnknownGrant,
    #[error("the grant is already revoked")]
    AlreadyRevoked,
    #[error("the validity window is empty")]
    EmptyWindow,
    #[error("a grant must allow at least one action")]
    NoAction,
    #[error("only the patient or their guardian may do this")]
    NotTheOwner,
}

/// Check a new grant on its own: signed by an owner, at least one action, a non-empty window.
pub fn check_grant(grant: &Grant, owners: &[Key]) -> Result<(), Refusal> {
    if !owners.contains(&grant.granted_by) {
        return Err(Refusal::NotTheOwner);
    }
    if grant.actions == 0 || grant.actions & !3 != 0 {
        return Err(Refusal::NoAction);
    }
    if grant.valid_from_ms >= grant.valid_until_ms {
        return Err(Refusal::EmptyWindow);
    }
    Ok(())
}

/// Decide a request over one patient's grants (see the module documentation for the rule).
/// The chain calls this with the grants of its state, the model test with [`Consents`].
pub fn decide<'a>(
    grants: impl IntoIterator<Item = &'a Grant>,
    request: &Request,
) -> Result<GrantId, Denial> {
    let mut reason = Denial::NoGrant;
    for grant in grants {
        if grant.patient != request.patient {
            continue;
        }
        let for_actor =
            grant.grantee == request.actor || request.actor_institution == Some(grant.grantee);
        if !for_actor {
            continue;
        }
        let denial = if grant.revoked_by(request.now_ms) {
            Some(Denial::Revoked)
        } else if request.now_ms >= grant.valid_until_ms {
            Some(Denial::Expired)
        } else if request.now_ms < grant.valid_from_ms {
            Some(Denial::NotYetValid)
        } else if !grant.allows_action(request.action) {
            Some(Denial::ActionNotGranted)
        } else if !grant.types.is_empty() && !grant.types.contains(&request.resource_type) {
            Some(Denial::TypeNotGranted)
        } else if !grant.purposes.is_empty() && !grant.purposes.contains(&request.purpose) {
            Some(Denial::PurposeNotGranted)
        } else {
            None
        };
        match denial {
            None => return Ok(grant.id),
            Some(denial) => reason = reason.max(denial),
        }
    }
    Err(reason)
}

/// Whether `grant` makes its grantee a reader of new `resource_type` records at `now_ms`.
pub fn covers_reads(grant: &Grant, resource_type: u8, now_ms: u64) -> bool {
    grant.active(now_ms)
        && grant.allows_action(Action::Read)
        && (grant.types.is_empty() || grant.types.contains(&resource_type))
}

/// Every grant, by patient then grant id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consents {
    grants: BTreeMap<(PatientId, GrantId), Grant>,
}

impl Consents {
    /// Record a grant. `owners` are the keys that may grant for the patient (the patient's
    /// own key and any guardian's), as the identity contract knows them.
    pub fn grant(&mut self, grant: Grant, owners: &[Key]) -> Result<(), Refusal> {
        check_grant(&grant, owners)?;
        let key = (grant.patient, grant.id);
        if self.grants.contains_key(&key) {
            return Err(Refusal::DuplicateGrant);
        }
        self.grants.insert(key, grant);
        Ok(())
    }

    /// Revoke a grant at block time `now_ms`.
    pub fn revoke(
        &mut self,
        patient: &PatientId,
        id: &GrantId,
        by: &Key,
        owners: &[Key],
        now_ms: u64,
    ) -> Result<Grant, Refusal> {
        if !owners.contains(by) {
            return Err(Refusal::NotTheOwner);
        }
        let grant = self
            .grants
            .get_mut(&(*patient, *id))
            .ok_or(Refusal::UnknownGrant)?;
        if grant.revoked_at_ms.is_some() {
            return Err(Refusal::AlreadyRevoked);
        }
        grant.revoked_at_ms = Some(now_ms);
        Ok(grant.clone())
    }

    /// A patient's grants, in id order.
    pub fn list(&self, patient: &PatientId) -> impl Iterator<Item = &Grant> {
        self.grants
            .range((*patient, [0; 16])..=(*patient, [u8::MAX; 16]))
            .map(|(_, g)| g)
    }

    /// Decide a request (see the module documentation for the rule).
    pub fn decide(&self, request: &Request) -> Result<GrantId, Denial> {
        decide(self.list(&request.patient), request)
    }

    /// Grantees whose grants covering `resource_type` are active at `now_ms`: the readers a
    /// new record version of the patient must be wrapped for.
    pub fn readers(&self, patient: &PatientId, resource_type: u8, now_ms: u64) -> Vec<Key> {
        readers(self.list(patient), resource_type, now_ms)
    }
}

/// The grantees of `grants` whose grant makes them readers of new `resource_type` records at
/// `now_ms`, sorted and without repeats.
pub fn readers<'a>(
    grants: impl IntoIterator<Item = &'a Grant>,
    resource_type: u8,
    now_ms: u64,
) -> Vec<Key> {
    let mut keys: Vec<Key> = grants
        .into_iter()
        .filter(|g| covers_reads(g, resource_type, now_ms))
        .map(|g| g.grantee)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATIENT: PatientId = [1; 16];
    const OWNER: Key = [9; 32];
    const HOSPITAL: Key = [7; 32];

    fn grant(id: u8, grantee: Key, actions: &[Action], from: u64, until: u64) -> Grant {
        Grant {
            id: [id; 16],
            patient: PATIENT,
            granted_by: OWNER,
            grantee,
            actions: Grant::actions_of(actions),
            types: Vec::new(),
            purposes: Vec::new(),
            valid_from_ms: from,
            valid_until_ms: until,
            revoked_at_ms: None,
        }
    }

    fn request(actor: Key, institution: Option<Key>, action: Action, now_ms: u64) -> Request {
        Request {
            actor,
            actor_institution: institution,
            patient: PATIENT,
            action,
            resource_type: 2,
            purpose: Purpose::Treatment,
            now_ms,
        }
    }

    #[test]
    fn grant_expire_revoke() {
        let mut consents = Consents::default();
        let doctor = [3; 32];
        consents
            .grant(grant(1, doctor, &[Action::Read], 100, 200), &[OWNER])
            .unwrap();
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 150)),
            Ok([1; 16])
        );
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Write, 150)),
            Err(Denial::ActionNotGranted)
        );
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 99)),
            Err(Denial::NotYetValid)
        );
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 200)),
            Err(Denial::Expired)
        );
        assert_eq!(
            consents.decide(&request([4; 32], None, Action::Read, 150)),
            Err(Denial::NoGrant)
        );
        assert_eq!(
            consents.revoke(&PATIENT, &[1; 16], &[4; 32], &[OWNER], 160),
            Err(Refusal::NotTheOwner)
        );
        consents
            .revoke(&PATIENT, &[1; 16], &OWNER, &[OWNER], 160)
            .unwrap();
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 170)),
            Err(Denial::Revoked)
        );
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 160)),
            Err(Denial::Revoked),
            "revocation binds from its own time"
        );
        assert_eq!(
            consents.decide(&request(doctor, None, Action::Read, 159)),
            Ok([1; 16]),
            "a decision as of an earlier time (a logged read) still sees the grant"
        );
        assert!(consents.readers(&PATIENT, 2, 170).is_empty());
    }

    #[test]
    fn an_institution_grant_covers_its_clinicians() {
        let mut consents = Consents::default();
        consents
            .grant(grant(1, HOSPITAL, &[Action::Read], 0, 1_000), &[OWNER])
            .unwrap();
        assert!(
            consents
                .decide(&request([3; 32], Some(HOSPITAL), Action::Read, 10))
                .is_ok()
        );
        assert_eq!(
            consents.decide(&request([3; 32], Some([8; 32]), Action::Read, 10)),
            Err(Denial::NoGrant)
        );
        assert_eq!(consents.readers(&PATIENT, 2, 10), vec![HOSPITAL]);
    }

    #[test]
    fn malformed_grants_are_refused() {
        let mut consents = Consents::default();
        assert_eq!(
            consents.grant(grant(1, HOSPITAL, &[], 0, 10), &[OWNER]),
            Err(Refusal::NoAction)
        );
        assert_eq!(
            consents.grant(grant(1, HOSPITAL, &[Action::Read], 10, 10), &[OWNER]),
            Err(Refusal::EmptyWindow)
        );
        assert_eq!(
            consents.grant(grant(1, HOSPITAL, &[Action::Read], 0, 10), &[[5; 32]]),
            Err(Refusal::NotTheOwner)
        );
        consents
            .grant(grant(1, HOSPITAL, &[Action::Read], 0, 10), &[OWNER])
            .unwrap();
        assert_eq!(
            consents.grant(grant(1, HOSPITAL, &[Action::Read], 0, 10), &[OWNER]),
            Err(Refusal::DuplicateGrant)
        );
    }

    /// The reference model: a plain list of grants and the rule read literally, allowed or not.
    #[derive(Default)]
    struct Model {
        grants: Vec<Grant>,
    }

    impl Model {
        fn allowed(&self, r: &Request) -> bool {
            self.grants.iter().any(|g| {
                g.patient == r.patient
                    && g.revoked_at_ms.is_none_or(|at| at > r.now_ms)
                    && g.valid_from_ms <= r.now_ms
                    && r.now_ms < g.valid_until_ms
                    && (g.grantee == r.actor || Some(g.grantee) == r.actor_institution)
                    && g.allows_action(r.action)
                    && (g.types.is_empty() || g.types.contains(&r.resource_type))
                    && (g.purposes.is_empty() || g.purposes.contains(&r.purpose))
            })
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Grant {
            id: u8,
            patient: u8,
            grantee: u8,
            actions: u8,
            types: Vec<u8>,
            purposes: Vec<u8>,
            from: u64,
            length: u64,
        },
        Revoke {
            id: u8,
            patient: u8,
            at: u64,
        },
        Ask {
            actor: u8,
            institution: Option<u8>,
            patient: u8,
            write: bool,
            resource_type: u8,
            purpose: u8,
            at: u64,
        },
        /// Who a new version of `patient`'s record of `resource_type` is wrapped for.
        Readers {
            patient: u8,
            resource_type: u8,
            at: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..6u8,
                0..2u8,
                0..5u8,
                0..4u8,
                prop::collection::vec(1..5u8, 0..3),
                prop::collection::vec(1..6u8, 0..3),
                0..100u64,
                0..100u64
            )
                .prop_map(
                    |(id, patient, grantee, actions, types, purposes, from, length)| Op::Grant {
                        id,
                        patient,
                        grantee,
                        actions,
                        types,
                        purposes,
                        from,
                        length
                    }
                ),
            (0..6u8, 0..2u8, 0..200u64).prop_map(|(id, patient, at)| Op::Revoke {
                id,
                patient,
                at
            }),
            (
                0..5u8,
                prop::option::of(0..5u8),
                0..2u8,
                any::<bool>(),
                1..5u8,
                1..6u8,
                0..200u64
            )
                .prop_map(
                    |(actor, institution, patient, write, resource_type, purpose, at)| Op::Ask {
                        actor,
                        institution,
                        patient,
                        write,
                        resource_type,
                        purpose,
                        at
                    }
                ),
            (0..2u8, 1..5u8, 0..200u64).prop_map(|(patient, resource_type, at)| Op::Readers {
                patient,
                resource_type,
                at
            })
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// The contract and the model agree on every decision, and the contract's refusals
        /// leave its state unchanged.
        #[test]
        fn contract_matches_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
            let mut contract = Consents::default();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Grant { id, patient, grantee, actions, types, purposes, from, length } => {
                        let g = Grant {
                            id: [id; 16],
                            patient: [patient; 16],
                            granted_by: OWNER,
                            grantee: [grantee; 32],
                            actions,
                            types,
                            purposes: purposes.into_iter().filter_map(|p| Purpose::ALL.get(p as usize - 1).copied()).collect(),
                            valid_from_ms: from,
                            valid_until_ms: from + length,
                            revoked_at_ms: None,
                        };
                        let before = contract.clone();
                        let valid = actions != 0 && length > 0
                            && !model.grants.iter().any(|m| m.id == g.id && m.patient == g.patient);
                        match contract.grant(g.clone(), &[OWNER]) {
                            Ok(()) => { prop_assert!(valid); model.grants.push(g); }
                            Err(_) => { prop_assert!(!valid); prop_assert_eq!(&contract, &before); }
                        }
                    }
                    Op::Revoke { id, patient, at } => {
                        let before = contract.clone();
                        let target = model.grants.iter_mut().find(|m| m.id == [id; 16] && m.patient == [patient; 16]);
                        let result = contract.revoke(&[patient; 16], &[id; 16], &OWNER, &[OWNER], at);
                        match target {
                            Some(m) if m.revoked_at_ms.is_none() => { prop_assert!(result.is_ok()); m.revoked_at_ms = Some(at); }
                            _ => { prop_assert!(result.is_err()); prop_assert_eq!(&contract, &before); }
                        }
                    }
                    Op::Ask { actor, institution, patient, write, resource_type, purpose, at } => {
                        let request = Request {
                            actor: [actor; 32],
                            actor_institution: institution.map(|i| [i; 32]),
                            patient: [patient; 16],
                            action: if write { Action::Write } else { Action::Read },
                            resource_type,
                            purpose: Purpose::ALL[purpose as usize - 1],
                            now_ms: at,
                        };
                        prop_assert_eq!(contract.decide(&request).is_ok(), model.allowed(&request), "{:?}", request);
                    }
                    Op::Readers { patient, resource_type, at } => {
                        // A version is wrapped for exactly those the rule lets read it for some
                        // purpose: no reader is left without a key, no one else gets one.
                        let wrapped = contract.readers(&[patient; 16], resource_type, at);
                        let allowed: Vec<Key> = (0..5u8)
                            .map(|actor| [actor; 32])
                            .filter(|actor| Purpose::ALL.iter().any(|purpose| model.allowed(&Request {
                                actor: *actor,
                                actor_institution: None,
                                patient: [patient; 16],
                                action: Action::Read,
                                resource_type,
                                purpose: *purpose,
                                now_ms: at,
                            })))
                            .collect();
                        prop_assert_eq!(wrapped, allowed);
                    }
                }
            }
        }
    }
}
