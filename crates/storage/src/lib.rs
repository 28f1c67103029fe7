//! Keep record envelopes and their wrapped keys off chain: on local disk or in S3.
//!
//! Envelopes are content-addressed by the SHA-256 of their bytes, which is what the chain
//! anchors; every read re-checks the hash, so a damaged or substituted blob is never served.
//! Wrapped keys are kept per record version as a list of [`Wrap`]s.
//!
//! ```text
//! blobs/{hash[0..2]}/{hash}        the envelope
//! keys/{record}/{version}          n x 112-byte wraps (recipient | HPKE enc | wrapped key)
//! ```
//! An upload is first *staged* on local disk. Only when its anchor transaction is final is
//! it moved into the store, so no stored blob is ever left without its anchor; staged
//! uploads whose anchor never commits are swept away.

use ehrchain_crypto::{WRAP_BYTES, Wrap, envelope_hash};
use object_store::{
    ObjectStore, ObjectStoreExt as _, PutPayload, aws::AmazonS3Builder, path::Path as ObjectPath,
};
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

/// Most wraps one record version keeps (its readers).
pub const WRAPS_PER_VERSION_MAX: usize = 1_024;

/// Why a blob store operation failed. Messages carry hashes and paths, never contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob store I/O failed at {0}: {1}")]
    Io(String, std::io::Error),
    #[error("object store failed: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("stored wraps at {0} are malformed")]
    MalformedWraps(String),
    #[error("too many wraps for one record version (limit {WRAPS_PER_VERSION_MAX})")]
    TooManyWraps,
    #[error("invalid S3 configuration: {0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, Error>;

/// Settings of an S3-compatible store (Garage, MinIO, AWS, s3s-fs, ...).
#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Key prefix inside the bucket, so several nodes can share one bucket.
    pub prefix: String,
}

enum Backend {
    Local(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

/// The off-chain store of one node.
pub struct BlobStore {
    backend: Backend,
    staging: PathBuf,
    /// Serializes read-modify-write of wrap lists.
    wraps_lock: tokio::sync::Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(path.display().to_string(), e)
}

/// Write `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(bytes).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(path.display().to_string(), e)),
    }
}

fn remove_optional(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(path.display().to_string(), e)),
    }
}

fn decode_wraps(bytes: &[u8], at: &str) -> Result<Vec<Wrap>> {
    if !bytes.len().is_multiple_of(WRAP_BYTES) || bytes.len() / WRAP_BYTES > WRAPS_PER_VERSION_MAX {
        return Err(Error::MalformedWraps(at.to_owned()));
    }
    bytes
        .chunks(WRAP_BYTES)
        .map(|chunk| Wrap::decode(chunk).map_err(|_| Error::MalformedWraps(at.to_owned())))
        .collect()
}

fn encode_wraps(wraps: &[Wrap]) -> Vec<u8> {
    wraps.iter().flat_map(|w| w.encode()).collect()
}

fn blob_key(hash: &[u8; 32]) -> String {
    let hex = hex::encode(hash);
    format!("blobs/{}/{hex}", &hex[..2])
}

fn wraps_key(record: &[u8; 16], version: u32) -> String {
    format!("keys/{}/{version}", hex::encode(record))
}

impl BlobStore {
    /// A store in `dir` on local disk (the default: embedded, nothing to install).
    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let staging = dir.join("staging");
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        Ok(Self {
            backend: Backend::Local(dir.to_path_buf()),
            staging,
            wraps_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// A store in an S3-compatible bucket; uploads are staged in `staging_dir` on local disk.
    pub fn s3(config: &S3Config, staging_dir: &Path) -> Result<Self> {
        if config.bucket.is_empty() || config.endpoint.is_empty() {
            return Err(Error::Config("endpoint and bucket are required".into()));
        }
        let store = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .build()?;
        std::fs::create_dir_all(staging_dir).map_err(io(staging_dir))?;
        Ok(Self {
            backend: Backend::S3 {
                store: Arc::new(store),
                prefix: config.prefix.trim_matches('/').to_owned(),
            },
            staging: staging_dir.to_path_buf(),
            wraps_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::S3 { .. } => "s3",
        }
    }

    fn object_path(prefix: &str, key: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{prefix}/{key}"))
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(key);
                tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
                    .await
                    .expect("blob write task")
            }
            Backend::S3 { store, prefix } => {
                store
                    .put(&Self::object_path(prefix, key), PutPayload::from(bytes))
                    .await?;
                Ok(())
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(key);
                tokio::task::spawn_blocking(move || read_optional(&path))
                    .await
                    .expect("blob read task")
            }
            Backend::S3 { store, prefix } => {
                match store.get(&Self::object_path(prefix, key)).await {
                    Ok(result) => Ok(Some(result.bytes().await?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(key);
                remove_optional(&path)?;
                // An emptied per-record directory goes too; a non-empty one stays.
                if let Some(parent) = path.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                Ok(())
            }
            Backend::S3 { store, prefix } => {
                match store.delete(&Self::object_path(prefix, key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Store an envelope under its hash (the caller checked the hash against the anchor).
    pub async fn put_blob(&self, envelope: Vec<u8>) -> Result<[u8; 32]> {
        let hash = envelope_hash(&envelope);
        self.put(&blob_key(&hash), envelope).await?;
        Ok(hash)
    }

    /// The envelope with this hash, if held and intact. A stored blob whose bytes no longer
    /// hash to its name is deleted and reported missing, so it is fetched again from a peer.
    pub async fn get_blob(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let key = blob_key(hash);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        if envelope_hash(&bytes) != *hash {
            tracing::error!(hash = %hex::encode(hash), "stored blob does not match its hash; deleting it");
            self.delete(&key).await?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    pub async fn has_blob(&self, hash: &[u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Local(dir) => Ok(dir.join(blob_key(hash)).exists()),
            Backend::S3 { store, prefix } => {
                match store
                    .head(&Self::object_path(prefix, &blob_key(hash)))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    pub async fn delete_blob(&self, hash: &[u8; 32]) -> Result<()> {
        self.delete(&blob_key(hash)).await
    }

    /// The wraps kept for a record version.
    pub async fn get_wraps(&self, record: &[u8; 16], version: u32) -> Result<Vec<Wrap>> {
        let key = wraps_key(record, version);
        match self.get(&key).await? {
            None => Ok(Vec::new()),
            Some(bytes) => decode_wraps(&bytes, &key),
        }
    }

    /// Add wraps to a record version (a recipient already present is replaced).
    pub async fn add_wraps(&self, record: &[u8; 16], version: u32, wraps: &[Wrap]) -> Result<()> {
        let _guard = self.wraps_lock.lock().await;
        let mut current = self.get_wraps(record, version).await?;
        for wrap in wraps {
            current.retain(|w| w.recipient != wrap.recipient);
            current.push(wrap.clone());
        }
        if current.len() > WRAPS_PER_VERSION_MAX {
            return Err(Error::TooManyWraps);
        }
        self.put(&wraps_key(record, version), encode_wraps(&current))
            .await
    }

    /// Delete a recipient's wrap (a revoked grantee).
    pub async fn remove_wrap(
        &self,
        record: &[u8; 16],
        version: u32,
        recipient: &ehrchain_crypto::EncryptionPublicKey,
    ) -> Result<()> {
        let _guard = self.wraps_lock.lock().await;
        let mut current = self.get_wraps(record, version).await?;
        let before = current.len();
        current.retain(|w| w.recipient != *recipient);
        if current.len() != before {
            self.put(&wraps_key(record, version), encode_wraps(&current))
                .await?;
        }
        Ok(())
    }

    /// Delete every wrap of a record version (erasure).
    pub async fn delete_wraps(&self, record: &[u8; 16], version: u32) -> Result<()> {
        let _guard = self.wraps_lock.lock().await;
        self.delete(&wraps_key(record, version)).await
    }

    fn staged_paths(&self, hash: &[u8; 32]) -> (PathBuf, PathBuf) {
        let hex = hex::encode(hash);
        (
            self.staging.join(format!("{hex}.blob")),
            self.staging.join(format!("{hex}.keys")),
        )
    }

    /// Stage an upload until its anchor is final. Durable, so a restart loses nothing.
    pub async fn stage(&self, envelope: Vec<u8>, wraps: &[Wrap]) -> Result<[u8; 32]> {
        let hash = envelope_hash(&envelope);
        let (blob, keys) = self.staged_paths(&hash);
        let wraps = encode_wraps(wraps);
        tokio::task::spawn_blocking(move || {
            write_durably(&keys, &wraps)?;
            write_durably(&blob, &envelope)
        })
        .await
        .expect("staging task")?;
        Ok(hash)
    }

    /// A staged upload, if present and intact.
    pub fn staged(&self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        let (blob, keys) = self.staged_paths(hash);
        let Some(envelope) = read_optional(&blob)? else {
            return Ok(None);
        };
        if envelope_hash(&envelope) != *hash {
            self.unstage(hash)?;
            return Ok(None);
        }
        let wraps = match read_optional(&keys)? {
            Some(bytes) => decode_wraps(&bytes, &keys.display().to_string())?,
            None => Vec::new(),
        };
        Ok(Some((envelope, wraps)))
    }

    /// Drop a staged upload (its anchor was refused, or it was promoted).
    pub fn unstage(&self, hash: &[u8; 32]) -> Result<()> {
        let (blob, keys) = self.staged_paths(hash);
        remove_optional(&blob)?;
        remove_optional(&keys)
    }

    /// Move a staged upload into the store once its anchor is final. Returns false when
    /// nothing was staged under this hash.
    pub async fn promote(&self, hash: &[u8; 32], record: &[u8; 16], version: u32) -> Result<bool> {
        let Some((envelope, wraps)) = self.staged(hash)? else {
            return Ok(false);
        };
        self.add_wraps(record, version, &wraps).await?;
        self.put(&blob_key(hash), envelope).await?;
        self.unstage(hash)?;
        Ok(true)
    }

    /// Delete staged uploads older than `age` whose anchors never became final.
    pub fn sweep_staged(&self, age: Duration, keep: impl Fn(&[u8; 32]) -> bool) -> Result<usize> {
        let mut removed = 0;
        let now = SystemTime::now();
        let entries = std::fs::read_dir(&self.staging).map_err(io(&self.staging))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(hash) = hex::decode(name)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                // A temporary file from an interrupted write.
                remove_optional(&path)?;
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > age);
            if old && !keep(&hash) {
                remove_optional(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehrchain_crypto::{Binding, EncryptionKey, seal_for};

    fn sealed(text: &[u8], reader: &EncryptionKey) -> (Vec<u8>, [u8; 32], Vec<Wrap>, Binding) {
        let binding = Binding {
            record: [1; 16],
            version: 1,
            patient: [2; 16],
        };
        let (envelope, hash, wraps) = seal_for(&binding, text, &[reader.public()]).unwrap();
        (envelope, hash, wraps, binding)
    }

    #[tokio::test]
    async fn stage_promote_read_erase() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, wraps, binding) = sealed(b"{\"x\":1}", &reader);
        assert_eq!(store.stage(envelope.clone(), &wraps).await.unwrap(), hash);
        assert!(
            store.get_blob(&hash).await.unwrap().is_none(),
            "staged is not stored"
        );
        assert!(store.promote(&hash, &binding.record, 1).await.unwrap());
        assert!(store.staged(&hash).unwrap().is_none());
        assert_eq!(store.get_blob(&hash).await.unwrap().unwrap(), envelope);
        assert_eq!(store.get_wraps(&binding.record, 1).await.unwrap(), wraps);
        store.delete_blob(&hash).await.unwrap();
        store.delete_wraps(&binding.record, 1).await.unwrap();
        assert!(store.get_blob(&hash).await.unwrap().is_none());
        assert!(
            store
                .get_wraps(&binding.record, 1)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_damaged_blob_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, _, _) = sealed(b"{}", &reader);
        store.put_blob(envelope).await.unwrap();
        let path = dir.path().join(blob_key(&hash));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.get_blob(&hash).await.unwrap().is_none());
        assert!(
            !path.exists(),
            "the damaged copy is removed so it is fetched again"
        );
    }

    #[tokio::test]
    async fn wraps_are_merged_and_removed_per_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let a = EncryptionKey::from_seed(&[1; 32]);
        let b = EncryptionKey::from_seed(&[2; 32]);
        let (_, _, wraps_a, binding) = sealed(b"{}", &a);
        let (_, _, wraps_b, _) = sealed(b"{}", &b);
        store.add_wraps(&binding.record, 1, &wraps_a).await.unwrap();
        store.add_wraps(&binding.record, 1, &wraps_b).await.unwrap();
        store.add_wraps(&binding.record, 1, &wraps_a).await.unwrap();
        assert_eq!(store.get_wraps(&binding.record, 1).await.unwrap().len(), 2);
        store
            .remove_wrap(&binding.record, 1, &a.public())
            .await
            .unwrap();
        assert_eq!(store.get_wraps(&binding.record, 1).await.unwrap(), wraps_b);
    }

    #[tokio::test]
    async fn stale_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, wraps, _) = sealed(b"{}", &reader);
        store.stage(envelope, &wraps).await.unwrap();
        assert_eq!(
            store
                .sweep_staged(Duration::from_secs(60), |_| false)
                .unwrap(),
            0
        );
        assert_eq!(
            store.sweep_staged(Duration::ZERO, |h| h == &hash).unwrap(),
            0
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep_staged(Duration::ZERO, |_| false).unwrap(), 2);
        assert!(store.staged(&hash).unwrap().is_none());
    }
}
