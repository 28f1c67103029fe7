//! Consortium governance: member institutions propose and vote to admit or remove a member
//! (and its validator) and to appoint or remove auditors. A proposal passes when more than
//! two thirds of the members at proposal time vote yes, and fails as soon as that can no
//! longer happen. Executed by every validator inside block execution, like every contract.
//!
//! Membership in the state (who may register patients, enrol clinicians, vote) changes when
//! the proposal passes. The validator set of the consensus engine changes at the proposal's
//! `effective_height`: the first block of the next consensus epoch (`Rules::epoch_blocks`
//! blocks each). The set of epoch `e + 1` is the membership after the last block of epoch
//! `e` (`State::epoch_validators`); `engine` starts a consensus instance for it there.

use crate::facts::{At, Identity, PROPOSAL_OPEN_MS, Proposal, ProposalStatus, Rejection, Role};
use crate::state::{Delta, Reader};
use ehrchain_types::{GovernanceAction, ProposalId, PublicKey};

fn member(view: &impl Reader, key: &PublicKey) -> bool {
    view.identity(key).map(|i| i.role) == Some(Role::Institution) && view.retired(key).is_none()
}

fn unregistered(view: &impl Reader, key: &PublicKey) -> bool {
    view.identity(key).is_none() && view.retired(key).is_none()
}

pub(crate) fn propose(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    id: &ProposalId,
    action: &GovernanceAction,
) -> Result<(), Rejection> {
    if !member(view, signer) {
        return Err(Rejection::Unauthorized(
            "only a member institution proposes",
        ));
    }
    if view.proposal(id).is_some() {
        return Err(Rejection::AlreadyRegistered);
    }
    let members = view.member_count();
    let valid = match action {
        GovernanceAction::AddMember { key, .. } | GovernanceAction::AppointAuditor { key } => {
            unregistered(view, key)
        }
        GovernanceAction::RemoveMember { key } => member(view, key) && members > 1,
        GovernanceAction::RemoveAuditor { key } => {
            view.identity(key).map(|i| i.role) == Some(Role::Auditor) && view.retired(key).is_none()
        }
    };
    if !valid {
        return Err(Rejection::Malformed(
            "the proposal does not apply to the current consortium",
        ));
    }
    let proposal = Proposal {
        action: action.clone(),
        proposer: signer.clone(),
        electorate: members,
        yes: vec![signer.clone()],
        no: Vec::new(),
        created_ms: at.time_ms,
        status: ProposalStatus::Open,
    };
    settle(view, delta, at, *id, proposal)
}

pub(crate) fn vote(
    view: &impl Reader,
    delta: &mut Delta,
    signer: &PublicKey,
    at: At,
    id: &ProposalId,
    approve: bool,
) -> Result<(), Rejection> {
    if !member(view, signer) {
        return Err(Rejection::Unauthorized("only a member institution votes"));
    }
    let mut proposal = view
        .proposal(id)
        .ok_or(Rejection::Malformed("no such proposal"))?;
    if proposal.status != ProposalStatus::Open {
        return Err(Rejection::Malformed("the proposal is decided"));
    }
    if at.time_ms >= proposal.created_ms.saturating_add(PROPOSAL_OPEN_MS) {
        return Err(Rejection::Malformed("the proposal expired"));
    }
    if proposal.yes.contains(signer) || proposal.no.contains(signer) {
        return Err(Rejection::Malformed("this member already voted"));
    }
    if approve {
        proposal.yes.push(signer.clone());
    } else {
        proposal.no.push(signer.clone());
    }
    settle(view, delta, at, *id, proposal)
}

/// Record the proposal; carry it out if it passed.
fn settle(
    view: &impl Reader,
    delta: &mut Delta,
    at: At,
    id: ProposalId,
    mut proposal: Proposal,
) -> Result<(), Rejection> {
    if proposal.passes() {
        let epoch_blocks = view.rules().epoch_blocks.max(1);
        let effective_height = (at.height / epoch_blocks + 1) * epoch_blocks;
        proposal.status = ProposalStatus::Passed {
            height: at.height,
            effective_height,
        };
        match &proposal.action {
            GovernanceAction::AddMember {
                key,
                encryption_key,
                ..
            } => {
                if !unregistered(view, key) {
                    return Err(Rejection::AlreadyRegistered);
                }
                delta.identities.insert(
                    key.clone(),
                    Identity {
                        role: Role::Institution,
                        encryption_key: *encryption_key,
                        previous: Vec::new(),
                    },
                );
                delta.members.insert(key.clone(), true);
            }
            GovernanceAction::RemoveMember { key } => {
                delta.retired.insert(key.clone(), at.height);
                delta.members.insert(key.clone(), false);
            }
            GovernanceAction::AppointAuditor { key } => {
                if !unregistered(view, key) {
                    return Err(Rejection::AlreadyRegistered);
                }
                delta.identities.insert(
                    key.clone(),
                    Identity {
                        role: Role::Auditor,
                        encryption_key: [0; 32],
                        previous: Vec::new(),
                    },
                );
            }
            GovernanceAction::RemoveAuditor { key } => {
                delta.retired.insert(key.clone(), at.height);
            }
        }
    } else if proposal.fails() {
        proposal.status = ProposalStatus::Rejected { height: at.height };
    }
    delta.proposals.insert(id, proposal);
    Ok(())
}
