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
    /// Where record envelopes and wrapped keys live; local disk unless configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_store: Option<BlobStoreConfig>,
    /// `[api]`: connection limits of the HTTP API.
    #[serde(default, skip_serializing_if = "ApiLimitsConfig::is_default")]
    pub api: ApiLimitsConfig,
    /// `[tls]`: the API's certificate; without it the API speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[tls]`: PEM files of the API's certificate chain and its private key. The node reads them
/// again on SIGHUP, so a renewed certificate takes effect without a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[api]`: the API's connection limits; each defaults to the named limit in `ehrchain_api::serve`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimitsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_peer_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

impl ApiLimitsConfig {
    fn is_default(&self) -> bool {
        self.connections_max.is_none()
            && self.connections_per_peer_max.is_none()
            && self.header_read_timeout_ms.is_none()
            && self.idle_timeout_ms.is_none()
    }

    pub fn limits(&self) -> ehrchain_api::serve::Limits {
        let default = ehrchain_api::serve::Limits::default();
        ehrchain_api::serve::Limits {
            connections_max: self.connections_max.unwrap_or(default.connections_max),
            connections_per_peer_max: self
                .connections_per_peer_max
                .unwrap_or(default.connections_per_peer_max),
            header_read_timeout: self.header_read_timeout_ms.map_or(
                default.header_read_timeout,
                std::time::Duration::from_millis,
            ),
            idle_timeout: self
                .idle_timeout_ms
                .map_or(default.idle_timeout, std::time::Duration::from_millis),
        }
    }
}

/// `[blob_store]`: an S3-compatible bucket (Garage, MinIO, AWS S3, ...) instead of the data
/// directory. The secret may be left out here and given as `EHRCHAIN_S3_SECRET_ACCESS_KEY`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// "s3" (the only alternative to the default local store).
    pub kind: String,
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// Key prefix inside the bucket; defaults to the node's name.
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "garage".into()
}

impl BlobStoreConfig {
    /// Open the configured store; uploads are staged under `data_dir`.
    pub fn open(
        &self,
        context: impl ehrchain_storage::Runtime,
        node_name: &str,
        data_dir: &Path,
    ) -> Result<ehrchain_storage::BlobStore> {
        if self.kind != "s3" {
            bail!("blob_store.kind must be \"s3\" (leave [blob_store] out for local disk)");
        }
        let secret = if self.secret_access_key.is_empty() {
            std::env::var("EHRCHAIN_S3_SECRET_ACCESS_KEY")
                .context("blob_store.secret_access_key is empty and EHRCHAIN_S3_SECRET_ACCESS_KEY is not set")?
        } else {
            self.secret_access_key.clone()
        };
        let prefix = if self.prefix.is_empty() {
            node_name.to_owned()
        } else {
            self.prefix.clone()
        };
        Ok(ehrchain_storage::BlobStore::s3(
            context,
            &ehrchain_storage::S3Config {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                region: self.region.clone(),
                access_key_id: self.access_key_id.clone(),
                secret_access_key: secret,
                prefix,
            },
            &data_dir.join("records").join("staging"),
        )?)
    }
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
    /// The API's base URL: `https://` when `[tls]` is set.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.api_listen)
    }

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
        if let Some(tls) = &mut config.tls {
            for field in [&mut tls.cert, &mut tls.key] {
                if field.is_relative() {
                    *field = base.join(&*field);
                }
            }
        }
        Ok(config)
    }
}

/// A genesis file, with its validator keys checked (`ehrchain_client::proof::genesis`).
pub fn load_genesis(path: &Path) -> Result<Genesis> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read genesis {}", path.display()))?;
    ehrchain_client::proof::genesis(&bytes).with_context(|| path.display().to_string())
}

/// Write a private key seed (hex) to a file only its owner can read.
pub fn write_key(path: &Path, seed: &[u8; 32]) -> Result<()> {
    write_secret(path, hex::encode(seed).as_bytes())
}

/// Write a new file only its owner can read (mode 0600), synced; refuses to overwrite.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Read a key file; refuses files that others can read.
pub fn read_key(path: &Path) -> Result<PrivateKey> {
    let seed = read_seed(path)?;
    private_key_from_seed(&seed).context("key file does not hold a 32-byte seed")
}

/// Read a key file's 32-byte seed (signing and encryption keys both derive from it).
pub fn read_seed(path: &Path) -> Result<[u8; 32]> {
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
    seed.try_into()
        .map_err(|_| anyhow::anyhow!("key file does not hold a 32-byte seed"))
}

/// A fresh random seed.
pub fn random_seed() -> [u8; 32] {
    use rand::Rng;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}
