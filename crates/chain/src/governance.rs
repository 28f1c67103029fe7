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

use crate::access::At;
use crate::state::{Delta, Identity, Reader, Rejection, Role};
use ehrchain_types::{GovernanceAction, ProposalId, PublicKey};

/// How long a proposal stays open for votes (block time).
pub const PROPOSAL_OPEN_MS: u64 = 7 * 24 * 3_600_000;

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
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
    pub status: Status,
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

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match &self.action {
            GovernanceAction::AddMember {
                key,
                encryption_key,
                p2p_address,
            } => {
                out.push(1);
                out.extend_from_slice(key.as_ref());
                out.extend_from_slice(encryption_key);
                ehrchain_types::transaction::write_socket_address(out, p2p_address);
            }
            GovernanceAction::RemoveMember { key } => {
                out.push(2);
                out.extend_from_slice(key.as_ref());
            }
            GovernanceAction::AppointAuditor { key } => {
                out.push(3);
                out.extend_from_slice(key.as_ref());
            }
            GovernanceAction::RemoveAuditor { key } => {
                out.push(4);
                out.extend_from_slice(key.as_ref());
            }
        }
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
            Status::Open => out.push(0),
            Status::Passed {
                height,
                effective_height,
            } => {
                out.push(1);
                out.extend_from_slice(&height.to_be_bytes());
                out.extend_from_slice(&effective_height.to_be_bytes());
            }
            Status::Rejected { height } => {
                out.push(2);
                out.extend_from_slice(&height.to_be_bytes());
            }
        }
    }
}

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
        status: Status::Open,
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
    if proposal.status != Status::Open {
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
        proposal.status = Status::Passed {
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
        proposal.status = Status::Rejected { height: at.height };
    }
    delta.proposals.insert(id, proposal);
    Ok(())
}
