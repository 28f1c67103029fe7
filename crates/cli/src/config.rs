//! Node configuration (`config.toml`), key files and the genesis file.

use anyhow::{Context, Result, bail};
use ehrchain_types::{Genesis, PrivateKey, private_key_from_seed};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// One validator's `config.toml`. Relative paths are relative to the file's directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of the member institution that runs this validator.
    pub name: String,
    pub genesis: PathBuf,
    pub key_file: PathBuf,
    pub data_dir: PathBuf,
    pub p2p_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// Most transactions this node packs into one block.
    #[serde(default = "default_block_transactions_max")]
    pub block_transactions_max: usize,
    /// Most transactions waiting in the mempool.
    #[serde(default = "default_mempool_transactions_max")]
    pub mempool_transactions_max: usize,
    /// "pretty" for people, "json" for log collectors.
    #[serde(default = "default_log_format")]
    pub log_format: String,
}

const fn default_block_transactions_max() -> usize {
    8_192
}

const fn default_mempool_transactions_max() -> usize {
    ehrchain_types::limits::MEMPOOL_TRANSACTIONS_MAX
}

fn default_log_format() -> String {
    "pretty".into()
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Self =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for field in [
            &mut config.genesis,
            &mut config.key_file,
            &mut config.data_dir,
        ] {
            if field.is_relative() {
                *field = base.join(&*field);
            }
        }
        Ok(config)
    }
}

pub fn load_genesis(path: &Path) -> Result<Genesis> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read genesis {}", path.display()))?;
    let genesis: Genesis = serde_json::from_str(&text)
        .with_context(|| format!("invalid genesis {}", path.display()))?;
    genesis
        .validator_keys()
        .with_context(|| format!("invalid validators in {}", path.display()))?;
    Ok(genesis)
}

/// Write a private key seed (hex) to a file only its owner can read.
pub fn write_key(path: &Path, seed: &[u8; 32]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    file.write_all(hex::encode(seed).as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Read a key file; refuses files that others can read.
pub fn read_key(path: &Path) -> Result<PrivateKey> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        bail!(
            "key file {} is readable by others; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)?;
    let seed = hex::decode(text.trim()).context("key file is not hex")?;
    private_key_from_seed(&seed).context("key file does not hold a 32-byte seed")
}

/// A fresh random seed.
pub fn random_seed() -> [u8; 32] {
    use rand::Rng;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}
