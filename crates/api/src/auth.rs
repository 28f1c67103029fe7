//! Who may see what on the chain's own HTTP endpoints (`/chain`, `/records`, `/patients`,
//! `/identities`, `/access`, `/consents`, `/governance`).
//!
//! Every one of them needs a bearer token from `/auth/token` ([`require_token`] sits in front
//! of the whole router, so a new route cannot forget it). What a caller then sees follows the
//! rules the FHIR API applies to the same data:
//! - a patient and their guardians see that patient's registration, consents and trail;
//! - an auditor sees the whole trail, findings and record metadata, never content;
//! - a clinician sees the metadata and ciphertext of a record only if the consent contract
//!   would let them read it now (for some purpose), and of a patient's consents only the grants
//!   made to them;
//! - a member institution sees the chain's metadata (it holds the whole chain on its own
//!   node) but not the trail, which is the auditor's;
//! - anyone with a token may submit signed transactions, read a transaction's status and
//!   proof by its hash, the public keys of identities, and the chain's status.
//!
//! Refusals are 403 whether or not the thing asked for exists, so a refusal says nothing.

use crate::{ApiError, ApiState, session::Token};
use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use commonware_runtime::Blob;
use ehrchain_contracts::consent::Purpose;
use ehrchain_contracts::facts::{Identity, Role};
use ehrchain_contracts::state::{Reader, State as ChainState};
use ehrchain_types::PublicKey;
use std::sync::Arc;

/// The caller of a request: their token's identity and its role on chain.
#[derive(Clone)]
pub struct Caller {
    pub token: Arc<Token>,
    pub identity: PublicKey,
    pub role: Option<Role>,
}

impl Caller {
    /// The caller holding `token`, with its role as of now.
    pub fn of<B: Blob>(state: &ApiState<B>, token: Arc<Token>) -> Self {
        let role = state
            .chain
            .read(|s| s.identity(&token.identity).map(|i| i.role));
        Self {
            identity: token.identity.clone(),
            token,
            role,
        }
    }

    pub fn is_auditor(&self) -> bool {
        matches!(self.role, Some(Role::Auditor))
    }

    pub fn is_institution(&self) -> bool {
        matches!(self.role, Some(Role::Institution))
    }

    /// Whether the caller is `patient`, or one of their guardians.
    pub fn speaks_for(&self, patient: &[u8; 16]) -> bool {
        matches!(
            &self.role,
            Some(Role::Patient { patient: p } | Role::Guardian { patient: p }) if p == patient
        )
    }

    /// The patient the caller is or speaks for, if any.
    pub fn patient(&self) -> Option<[u8; 16]> {
        self.role.as_ref().and_then(Role::patient)
    }

    /// Whether `key` is the caller: their identity key or the session key they sign with.
    pub fn is(&self, key: &PublicKey) -> bool {
        *key == self.identity || *key == self.token.session()
    }
}

/// 403 with a reason that names the rule, never the data.
pub fn forbidden(rule: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, rule)
}

/// Middleware: refuse a request without a live bearer token (401), and hand the handler its
/// [`Caller`].
pub async fn require_token<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = match crate::session::caller(&state, request.headers()) {
        Ok(token) => token,
        Err(error) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, error.diagnostics().to_string())
                .into_response();
        }
    };
    // The chain's own API is not typed by FHIR resource, so only a token with every
    // permission on every type may use it.
    if !token.scopes.is_full() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope: this API needs a token with every scope (system/*.cruds)",
        )
        .into_response();
    }
    request.extensions_mut().insert(Caller::of(&state, token));
    next.run(request).await
}

/// Whether `caller` may see the metadata (versions, hashes, authors) and ciphertext of
/// `record`: auditors and member institutions always, others when the consent contract would
/// let them read it now for some purpose. An unknown record is seen by no one but those two.
pub fn may_see_record(s: &ChainState, caller: &Caller, record: &[u8; 16]) -> bool {
    if caller.is_auditor() || caller.is_institution() {
        return true;
    }
    let Some(identity) = s.identity(&caller.identity) else {
        return false;
    };
    may_read(s, &caller.identity, &identity, record)
}

fn may_read(s: &ChainState, key: &PublicKey, identity: &Identity, record: &[u8; 16]) -> bool {
    let now = s.time_ms();
    Purpose::ALL.iter().any(|purpose| {
        ehrchain_contracts::access::decide_read(s, key, identity, record, *purpose, now)
            .is_ok_and(|(_, _, outcome)| outcome.allowed())
    })
}

/// Whether `caller` may see `patient`'s registration (keys, home institution, erasure): the
/// patient and guardians, auditors, institutions and clinicians (who wrap records for them).
/// Another patient may not.
pub fn may_see_patient(caller: &Caller, patient: &[u8; 16]) -> bool {
    caller.speaks_for(patient)
        || matches!(
            caller.role,
            Some(Role::Auditor | Role::Institution | Role::Clinician { .. })
        )
}

/// Whether `caller` may see `patient`'s whole trail and all their consents.
pub fn may_see_trail(caller: &Caller, patient: &[u8; 16]) -> bool {
    caller.speaks_for(patient) || caller.is_auditor()
}

/// Whether the transaction signed by `signer` with `payload` concerns `caller`, who may then see
/// it in a block: they signed it, or it names the patient they speak for.
pub fn concerns(caller: &Caller, signer: &PublicKey, payload: &ehrchain_types::Payload) -> bool {
    use ehrchain_types::Payload as P;
    if caller.is(signer) {
        return true;
    }
    let Some(own) = caller.patient() else {
        return false;
    };
    let patient = match payload {
        P::RegisterPatient { patient, .. }
        | P::ErasePatient { patient }
        | P::Revoke { patient, .. }
        | P::BreakGlass { patient, .. }
        | P::AppointGuardian { patient, .. }
        | P::RemoveGuardian { patient, .. }
        | P::RecoverKey { patient, .. }
        | P::TrailQuery { patient } => *patient,
        P::RecordAnchor(anchor) => anchor.patient,
        // A set is the patient's own only when every version in it is.
        P::RecordSet(anchors) if anchors.iter().all(|a| a.patient == own) => own,
        P::Grant(grant) => grant.patient,
        _ => return false,
    };
    patient == own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trail_and_patient_rules() {
        use commonware_cryptography::Signer as _;
        let key = ehrchain_types::private_key_from_seed(&[7; 32]).unwrap();
        let session = ehrchain_types::private_key_from_seed(&[8; 32]).unwrap();
        let caller = |role| Caller {
            token: Arc::new(Token::new_for_test(key.public_key(), session.clone())),
            identity: key.public_key(),
            role,
        };
        let (mine, theirs) = ([1u8; 16], [2u8; 16]);
        let patient = caller(Some(Role::Patient { patient: mine }));
        assert!(may_see_trail(&patient, &mine));
        assert!(!may_see_trail(&patient, &theirs));
        assert!(may_see_patient(&patient, &mine));
        assert!(!may_see_patient(&patient, &theirs));
        let guardian = caller(Some(Role::Guardian { patient: mine }));
        assert!(may_see_trail(&guardian, &mine));
        let auditor = caller(Some(Role::Auditor));
        assert!(may_see_trail(&auditor, &theirs));
        let clinician = caller(Some(Role::Clinician {
            institution: session.public_key(),
        }));
        assert!(!may_see_trail(&clinician, &mine));
        assert!(may_see_patient(&clinician, &mine));
        let institution = caller(Some(Role::Institution));
        assert!(!may_see_trail(&institution, &mine));
        let nobody = caller(None);
        assert!(!may_see_patient(&nobody, &mine));
        assert!(
            nobody.is(&session.public_key()),
            "the session key is the caller's"
        );
    }
}
