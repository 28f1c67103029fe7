//! The state transition: one transaction at a time, over a state view plus the writes of the
//! block so far. `apply` checks the signer's key and nonce, then hands the payload to its
//! rule (`access`, `governance`, or the identity and record rules here); a refusal writes
//! nothing, except that refused operations on a patient's records are themselves recorded on
//! the trail.

use crate::access;
use crate::consent::Refusal;
use crate::facts::{
    AnchorRecord, At, Identity, PatientEntry, RECORD_CIPHERTEXT_BYTES_MAX, RecordVersion,
    Rejection, Role,
};
use crate::governance;
use crate::state::{Delta, Layered, Reader};
use ehrchain_types::{Block, Payload, Transaction};

/// Most client keys (JWKs) one identity holds at once: room to rotate without a gap.
pub const CLIENT_KEYS_MAX: usize = 4;

/// Check one record version's preconditions and authorization against `view`: the signer
/// writes records, the patient stands, the version follows the record's last, and the
/// contract's write rule allows it. The facts to store when it does.
fn check_version(
    view: &impl Reader,
    signer: &ehrchain_types::PublicKey,
    at: At,
    tx: &Transaction,
    anchor: &ehrchain_types::RecordAnchor,
) -> Result<RecordVersion, Rejection> {
    match view.identity(signer).map(|i| i.role) {
        Some(Role::Institution | Role::Clinician { .. }) => {}
        _ => {
            return Err(Rejection::Unauthorized(
                "only an institution or an enrolled clinician writes records",
            ));
        }
    }
    let patient = view
        .patient(&anchor.patient)
        .ok_or(Rejection::UnknownPatient)?;
    if patient.erased_height.is_some() {
        return Err(Rejection::PatientErased);
    }
    if anchor.ciphertext_size > RECORD_CIPHERTEXT_BYTES_MAX {
        return Err(Rejection::RecordTooLarge(
            anchor.ciphertext_size,
            RECORD_CIPHERTEXT_BYTES_MAX,
        ));
    }
    let expected = match view.latest(&anchor.record) {
        None => 1,
        Some(previous) => {
            if previous.anchor.patient != anchor.patient
                || previous.anchor.resource_type != anchor.resource_type
            {
                return Err(Rejection::RecordMismatch);
            }
            previous.anchor.version + 1
        }
    };
    if anchor.version != expected {
        return Err(Rejection::WrongVersion {
            expected,
            got: anchor.version,
        });
    }
    access::may_write(view, signer, at, &patient, anchor)?;
    Ok(RecordVersion {
        anchor: anchor.clone(),
        author: signer.clone(),
        height: at.height,
        transaction: tx.id(),
    })
}

/// Check a payload's authorization and preconditions and record its writes.
fn apply_payload(
    view: &impl Reader,
    delta: &mut Delta,
    at: At,
    tx: &Transaction,
) -> Result<(), Rejection> {
    let actor = access::actor(view, at, &tx.body.signer, &tx.body.payload)?;
    let signer = &actor;
    let height = at.height;
    match &tx.body.payload {
        Payload::Anchor { label, digest } => {
            if view.anchored(digest) {
                return Err(Rejection::AlreadyAnchored);
            }
            delta.anchors.insert(
                *digest,
                AnchorRecord {
                    label: *label,
                    signer: signer.clone(),
                    height,
                    transaction: tx.id(),
                },
            );
        }
        Payload::RegisterPatient {
            patient,
            key,
            encryption_key,
        } => {
            if view.identity(signer).map(|i| i.role) != Some(Role::Institution) {
                return Err(Rejection::Unauthorized(
                    "only a member institution registers patients",
                ));
            }
            if view.patient(patient).is_some() || view.identity(key).is_some() {
                return Err(Rejection::AlreadyRegistered);
            }
            delta.identities.insert(
                key.clone(),
                Identity {
                    role: Role::Patient { patient: *patient },
                    encryption_key: *encryption_key,
                    previous: Vec::new(),
                },
            );
            delta.patients.insert(
                *patient,
                PatientEntry {
                    key: key.clone(),
                    encryption_key: *encryption_key,
                    home: signer.clone(),
                    registered_height: height,
                    erased_height: None,
                    guardians: Vec::new(),
                },
            );
        }
        Payload::EnrollClinician {
            clinician,
            encryption_key,
        } => {
            if view.identity(signer).map(|i| i.role) != Some(Role::Institution) {
                return Err(Rejection::Unauthorized(
                    "only a member institution enrols clinicians",
                ));
            }
            if view.identity(clinician).is_some() {
                return Err(Rejection::AlreadyRegistered);
            }
            delta.identities.insert(
                clinician.clone(),
                Identity {
                    role: Role::Clinician {
                        institution: signer.clone(),
                    },
                    encryption_key: *encryption_key,
                    previous: Vec::new(),
                },
            );
        }
        Payload::RecordAnchor(_) | Payload::RecordSet(_) => {
            // Each version is checked against the state the ones before it leave; the first
            // refusal refuses the set, and `apply` then keeps none of its writes.
            for anchor in tx.body.payload.record_anchors() {
                let so_far = Layered {
                    base: view,
                    delta: &*delta,
                };
                let version = check_version(&so_far, signer, at, tx, anchor)?;
                delta
                    .versions
                    .insert((anchor.record, anchor.version), version);
            }
        }
        Payload::RegisterClientKey { jwk } => {
            if view.identity(signer).is_none() {
                return Err(Rejection::Unauthorized(
                    "only a registered identity registers client keys",
                ));
            }
            let key = ehrchain_crypto::jwk::ClientJwk::parse(jwk).map_err(|_| {
                Rejection::Malformed("the client key is not a public RS384 or ES384 JWK")
            })?;
            let mut keys = view.client_keys(signer);
            match keys.iter().position(|k| k.kid == key.kid) {
                Some(same) => keys[same] = key,
                None if keys.len() >= CLIENT_KEYS_MAX => {
                    return Err(Rejection::Malformed(
                        "an identity holds at most 4 client keys: remove one first",
                    ));
                }
                None => keys.push(key),
            }
            delta.client_keys.insert(signer.clone(), keys);
        }
        Payload::RemoveClientKey { kid } => {
            let mut keys = view.client_keys(signer);
            let before = keys.len();
            keys.retain(|k| &k.kid != kid);
            if keys.len() == before {
                return Err(Rejection::Malformed(
                    "no client key of the signer has this kid",
                ));
            }
            delta.client_keys.insert(signer.clone(), keys);
        }
        Payload::RegisterApp(app) => {
            if view.identity(signer).map(|i| i.role) != Some(crate::facts::Role::Institution) {
                return Err(Rejection::Unauthorized(
                    "only a member institution registers apps",
                ));
            }
            if view
                .app(&app.client_id)
                .is_some_and(|known| &known.institution != signer)
            {
                return Err(Rejection::Unauthorized(
                    "this client_id is registered by another institution",
                ));
            }
            let jwk = app
                .jwk
                .as_deref()
                .map(ehrchain_crypto::jwk::ClientJwk::parse)
                .transpose()
                .map_err(|_| {
                    Rejection::Malformed("the app key is not a public RS384 or ES384 JWK")
                })?;
            delta.apps.insert(
                app.client_id.clone(),
                Some(crate::facts::AppEntry {
                    institution: signer.clone(),
                    name: app.name.clone(),
                    redirect_uris: app.redirect_uris.clone(),
                    jwk,
                }),
            );
        }
        Payload::RemoveApp { client_id } => {
            match view.app(client_id) {
                Some(app) if &app.institution == signer => {}
                Some(_) => {
                    return Err(Rejection::Unauthorized(
                        "only the institution that registered an app removes it",
                    ));
                }
                None => {
                    return Err(Rejection::Malformed(
                        "no app is registered under this client_id",
                    ));
                }
            }
            delta.apps.insert(client_id.clone(), None);
        }
        Payload::CloseSession { session } => {
            let mut entry = view
                .session(session)
                .ok_or(Rejection::Malformed("no session has this key"))?;
            if &entry.identity != signer {
                return Err(Rejection::Unauthorized(
                    "a session is ended by its own identity only",
                ));
            }
            if entry.expires_ms <= at.time_ms {
                return Err(Rejection::Malformed("the session has already ended"));
            }
            entry.expires_ms = at.time_ms;
            delta.sessions.insert(session.clone(), entry);
        }
        Payload::ErasePatient { patient } => {
            let mut entry = view.patient(patient).ok_or(Rejection::UnknownPatient)?;
            if &entry.key != signer && &entry.home != signer {
                return Err(Rejection::Unauthorized(
                    "only the patient or their home institution asks for erasure",
                ));
            }
            if entry.erased_height.is_some() {
                return Err(Rejection::PatientErased);
            }
            entry.erased_height = Some(height);
            delta.patients.insert(*patient, entry);
        }
        Payload::Grant(grant) => access::grant(view, delta, signer, at, grant)?,
        Payload::Revoke { patient, grant } => {
            access::revoke(view, delta, signer, at, patient, grant)?
        }
        Payload::Access { record, purpose } => {
            let app = view.session(&tx.body.signer).and_then(|s| s.app);
            access::access(view, delta, signer, at, tx.id(), record, *purpose, app)?
        }
        Payload::BreakGlass { patient, reason } => {
            access::break_glass(view, delta, signer, at, tx.id(), patient, *reason)?
        }
        Payload::AppointGuardian {
            patient,
            guardian,
            encryption_key,
        } => access::appoint_guardian(view, delta, signer, patient, guardian, encryption_key)?,
        Payload::RemoveGuardian { patient, guardian } => {
            access::remove_guardian(view, delta, signer, at, patient, guardian)?
        }
        Payload::ReviewFinding {
            height,
            index,
            seq,
            verdict,
        } => access::review_finding(view, delta, signer, at, (*height, *index, *seq), *verdict)?,
        Payload::RotateKey {
            new_key,
            encryption_key,
        } => access::rotate_key(view, delta, signer, at, new_key, encryption_key)?,
        Payload::Propose { proposal, action } => {
            governance::propose(view, delta, signer, at, proposal, action)?
        }
        Payload::Vote { proposal, approve } => {
            governance::vote(view, delta, signer, at, proposal, *approve)?
        }
        Payload::OpenSession {
            identity,
            gateway,
            assertion,
        } => access::open_session(view, delta, signer, at, identity, gateway, assertion)?,
        Payload::RemoveClinician { clinician } => {
            access::remove_clinician(view, delta, signer, at, clinician)?
        }
        Payload::TrailQuery { patient } => access::trail_query(view, signer, at, tx, patient)?,
        Payload::AccessLog { first, entries } => {
            access::access_log(view, delta, signer, at, tx.id(), *first, entries)?
        }
        Payload::RecoverKey {
            patient,
            new_key,
            encryption_key,
        } => access::recover_key(
            view,
            delta,
            signer,
            at,
            tx.id(),
            patient,
            new_key,
            encryption_key,
        )?,
    }
    Ok(())
}

/// Check one transaction against `base + delta` and, if it applies, record its writes.
/// Signatures are checked by the caller (in batches, once per transaction).
pub fn apply(
    base: &impl Reader,
    delta: &mut Delta,
    at: At,
    tx: &Transaction,
) -> Result<(), Rejection> {
    let view = Layered {
        base,
        delta: &*delta,
    };
    if view.retired(&tx.body.signer).is_some() {
        return Err(Rejection::RetiredKey);
    }
    let expected = view.nonce(&tx.body.signer);
    if tx.body.nonce < expected {
        return Err(Rejection::StaleNonce {
            expected,
            got: tx.body.nonce,
        });
    }
    if tx.body.nonce > expected {
        return Err(Rejection::FutureNonce {
            expected,
            got: tx.body.nonce,
        });
    }
    // Payload checks write into a scratch delta so a rejection leaves nothing half-applied.
    let mut writes = Delta::default();
    match apply_payload(&view, &mut writes, at, tx) {
        Ok(()) => {}
        Err(refusal @ (Rejection::Unauthorized(_) | Rejection::Refused(Refusal::NotTheOwner))) => {
            // Nothing of the refused operation is applied; the attempt itself is recorded.
            writes = Delta::default();
            if !access::record_denial(&view, &mut writes, at, tx) {
                return Err(refusal);
            }
        }
        Err(e) => return Err(e),
    }
    delta.anchors.extend(writes.anchors);
    delta.identities.extend(writes.identities);
    delta.patients.extend(writes.patients);
    delta.versions.extend(writes.versions);
    delta.grants.extend(writes.grants);
    delta.shares.extend(writes.shares);
    delta.break_glass.extend(writes.break_glass);
    delta.reads.extend(writes.reads);
    delta.retired.extend(writes.retired);
    delta.proposals.extend(writes.proposals);
    delta.members.extend(writes.members);
    delta.events.extend(writes.events);
    delta.findings.extend(writes.findings);
    delta.reviews.extend(writes.reviews);
    delta.sessions.extend(writes.sessions);
    delta.assertions.extend(writes.assertions);
    delta.access_logs.extend(writes.access_logs);
    delta.client_keys.extend(writes.client_keys);
    delta.apps.extend(writes.apps);
    delta.time_ms = at.time_ms;
    delta.nonces.insert(tx.body.signer.clone(), expected + 1);
    Ok(())
}

/// Execute every transaction of `block` on top of `base`; any rejection makes the block invalid.
pub fn execute(base: &impl Reader, block: &Block) -> Result<Delta, Rejection> {
    let mut delta = Delta {
        time_ms: block.header.timestamp_ms,
        ..Delta::default()
    };
    for (index, tx) in block.transactions.iter().enumerate() {
        let at = At {
            height: block.height(),
            time_ms: block.header.timestamp_ms,
            index: index as u32,
        };
        apply(base, &mut delta, at, tx)?;
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{State, genesis_root, next_root};
    use commonware_cryptography::Signer;
    use ehrchain_types::sha256;
    use ehrchain_types::{PrivateKey, TransactionBody};

    fn at(height: u64) -> At {
        At {
            height,
            time_ms: height * 1_000,
            index: 0,
        }
    }

    fn tx(key: &PrivateKey, nonce: u64, tag: u64) -> Transaction {
        TransactionBody {
            chain_id: 1,
            signer: key.public_key(),
            nonce,
            payload: Payload::Anchor {
                label: 1,
                digest: sha256(&[&tag.to_be_bytes()]),
            },
        }
        .sign(key)
    }

    #[test]
    fn nonces_reject_replays_and_gaps() {
        let key = PrivateKey::from_seed(1);
        let mut state = State::default();
        let mut delta = Delta::default();
        apply(&state, &mut delta, at(1), &tx(&key, 0, 0)).unwrap();
        assert_eq!(
            apply(&state, &mut delta, at(1), &tx(&key, 0, 1)),
            Err(Rejection::StaleNonce {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            apply(&state, &mut delta, at(1), &tx(&key, 5, 2)),
            Err(Rejection::FutureNonce {
                expected: 1,
                got: 5
            })
        );
        state.commit(delta);
        let mut delta = Delta::default();
        // The same transaction again, after commit: a replay.
        assert!(matches!(
            apply(&state, &mut delta, at(2), &tx(&key, 0, 0)),
            Err(Rejection::StaleNonce { .. })
        ));
        // A new nonce but an already anchored digest.
        assert_eq!(
            apply(&state, &mut delta, at(2), &tx(&key, 1, 0)),
            Err(Rejection::AlreadyAnchored)
        );
    }

    #[test]
    fn roots_depend_on_every_write() {
        let key = PrivateKey::from_seed(2);
        let state = State::default();
        let mut a = Delta::default();
        apply(&state, &mut a, at(1), &tx(&key, 0, 0)).unwrap();
        let mut b = Delta::default();
        apply(&state, &mut b, at(1), &tx(&key, 0, 1)).unwrap();
        let root = genesis_root(1);
        assert_ne!(next_root(&root, 1, &a), next_root(&root, 1, &b));
        assert_ne!(next_root(&root, 1, &a), next_root(&root, 2, &a));
        assert_eq!(next_root(&root, 1, &a), next_root(&root, 1, &a.clone()));
    }
}
