//! The genesis file: the chain id, the consortium's validators and the first block.

use crate::{Block, Digest, Error, PublicKey, limits::VALIDATORS_MAX, merkle, public_key_from_hex};
use serde::{Deserialize, Serialize};

/// One consortium member's validator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenesisValidator {
    /// Human name of the member institution, never PHI.
    pub name: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Address its peers dial, `host:port`.
    pub p2p_address: String,
    /// The institution's X25519 public key (hex) that record data keys are wrapped for. It is
    /// derived from the validator's seed (`ehrchain-crypto`), so the node can unwrap.
    #[serde(default)]
    pub encryption_key: String,
}

/// Contents of `genesis.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Genesis {
    pub chain_id: u64,
    /// Time of the genesis block, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub validators: Vec<GenesisValidator>,
    /// Auditors appointed by the consortium at genesis (later ones by governance).
    #[serde(default)]
    pub auditors: Vec<GenesisAuditor>,
    /// Parameters of the access contracts.
    #[serde(default)]
    pub rules: Rules,
}

/// An auditor appointed at genesis.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenesisAuditor {
    /// Human name of the office, never PHI.
    pub name: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
}

/// The default heartbeat: an idle chain makes one block per 20 s, 4,320 a day. An empty
/// block with its certificate and archive entries took 1,515 bytes of a node's disk
/// (measured), so about 6.5 MB a day. Tests that wait for many blocks set a shorter one.
pub const HEARTBEAT_MS: u64 = 20_000;

/// Parameters of the consent, break-glass and supervision contracts, fixed in genesis.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Rules {
    /// How long a break-glass access lasts.
    pub break_glass_ms: u64,
    /// Reads by one identity within one window beyond this many raise a finding.
    pub read_volume_max: u32,
    /// The length of the (tumbling) window reads are counted in.
    pub read_volume_window_ms: u64,
    /// Blocks per consensus epoch. A validator-set change passed by governance takes effect
    /// at the first block of the next epoch.
    pub epoch_blocks: u64,
    /// Longest a chain with nothing to order goes without a block (an empty one then). 0 makes
    /// a block as often as consensus can, which only simulations want.
    pub heartbeat_ms: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            break_glass_ms: 24 * 3_600_000,
            read_volume_max: 500,
            read_volume_window_ms: 3_600_000,
            epoch_blocks: 1_000,
            heartbeat_ms: HEARTBEAT_MS,
        }
    }
}

impl Genesis {
    /// Check the file and return the validators' public keys, in file order.
    pub fn validator_keys(&self) -> Result<Vec<PublicKey>, Error> {
        if self.validators.is_empty() || self.validators.len() > VALIDATORS_MAX {
            return Err(Error::OutOfRange("validator count"));
        }
        let mut keys = Vec::with_capacity(self.validators.len());
        for validator in &self.validators {
            let key = public_key_from_hex(&validator.public_key).ok_or(Error::InvalidPublicKey)?;
            if keys.contains(&key) {
                return Err(Error::OutOfRange("duplicate validator key"));
            }
            keys.push(key);
        }
        Ok(keys)
    }

    /// The auditors' keys, in file order.
    pub fn auditor_keys(&self) -> Result<Vec<PublicKey>, Error> {
        let validators = self.validator_keys()?;
        let mut keys: Vec<PublicKey> = Vec::with_capacity(self.auditors.len());
        for auditor in &self.auditors {
            let key = public_key_from_hex(&auditor.public_key).ok_or(Error::InvalidPublicKey)?;
            if keys.contains(&key) || validators.contains(&key) {
                return Err(Error::OutOfRange("duplicate auditor key"));
            }
            keys.push(key);
        }
        if self.rules.read_volume_window_ms == 0
            || self.rules.break_glass_ms == 0
            || self.rules.epoch_blocks == 0
        {
            return Err(Error::OutOfRange("rules"));
        }
        Ok(keys)
    }

    /// Each validator institution's encryption key, in file order (`None` when absent).
    pub fn encryption_keys(&self) -> Vec<Option<[u8; 32]>> {
        self.validators
            .iter()
            .map(|v| hex::decode(&v.encryption_key).ok()?.try_into().ok())
            .collect()
    }

    /// The height-0 block every validator starts from. Its state root is the root of the empty
    /// state, and its proposer is the first validator.
    pub fn block(&self, empty_state_root: Digest) -> Result<Block, Error> {
        let keys = self.validator_keys()?;
        Ok(Block::new(
            self.chain_id,
            0,
            merkle::root(&[]),
            self.timestamp_ms,
            keys[0].clone(),
            empty_state_root,
            Vec::new(),
        ))
    }
}
