//! Keep record envelopes and their wrapped keys off chain: on local disk or in S3.
//!
//! A record version is one object, content-addressed by the SHA-256 of its envelope, which
//! is what the chain anchors; every read re-checks the hash, so a damaged or substituted
//! envelope is never served. The data key's wraps travel in the same object, so erasing a
//! version is one delete and writing one is one file.
//!
//! ```text
//! records/{hash[0..2]}/{hash}:  count u16 | count x wrap (recipient | HPKE enc | key+tag) | envelope
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
    /// Uploads waiting for the stager's next group flush.
    stager: tokio::sync::mpsc::Sender<StageRequest>,
}

/// Most uploads waiting to be staged; a full queue makes uploaders wait.
pub const STAGE_QUEUE_MAX: usize = 4_096;

/// Most uploads written under one flush.
const STAGE_GROUP_MAX: usize = 256;

struct StageRequest {
    path: PathBuf,
    bytes: Vec<u8>,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

/// Group commit for staging: write every waiting upload, flush the file system once, then
/// answer them all. Under load one flush covers hundreds of uploads; alone, an upload waits
/// for just its own flush.
fn run_stager(staging: PathBuf, mut queue: tokio::sync::mpsc::Receiver<StageRequest>) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < STAGE_GROUP_MAX {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(group.len());
        for request in group {
            let result = write_file(&request.path, &request.bytes, false);
            written.push((request.done, result));
        }
        let flushed = sync_file_system(&staging);
        for (done, result) in written {
            let answer = match (&result, &flushed) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(_), _) => result,
                (Ok(()), Err(e)) => Err(Error::Io(
                    staging.display().to_string(),
                    std::io::Error::new(e_kind(e), "flush failed"),
                )),
            };
            let _ = done.send(answer);
        }
    }
}

fn e_kind(error: &Error) -> std::io::ErrorKind {
    match error {
        Error::Io(_, e) => e.kind(),
        _ => std::io::ErrorKind::Other,
    }
}

fn spawn_stager(staging: &Path) -> tokio::sync::mpsc::Sender<StageRequest> {
    let (sender, receiver) = tokio::sync::mpsc::channel(STAGE_QUEUE_MAX);
    let staging = staging.to_path_buf();
    std::thread::Builder::new()
        .name("ehrchain-stager".into())
        .spawn(move || run_stager(staging, receiver))
        .expect("spawn the stager thread");
    sender
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(path.display().to_string(), e)
}

/// Write `bytes` to `path` atomically (a temporary file, then a rename). With `durable`, the
/// file and its directory entry are flushed before returning; otherwise the caller flushes a
/// whole batch at once with [`BlobStore::sync`].
fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(bytes).map_err(io(&temporary))?;
        if durable {
            file.sync_all().map_err(io(&temporary))?;
        }
    }
    std::fs::rename(&temporary, path).map_err(io(path))?;
    if durable {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Flush every pending write of the file system that holds `dir` (Linux `syncfs`): one flush
/// for a whole batch of blobs instead of two per file.
fn sync_file_system(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir).map_err(io(dir))?;
    // SAFETY: `syncfs` takes a valid open descriptor, which `handle` keeps alive.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(Error::Io(
            dir.display().to_string(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
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

fn object_key(hash: &[u8; 32]) -> String {
    let hex = hex::encode(hash);
    format!("records/{}/{hex}", &hex[..2])
}

/// `count u16 | wraps [count x 112] | envelope`.
fn encode_object(envelope: &[u8], wraps: &[Wrap]) -> Result<Vec<u8>> {
    if wraps.len() > WRAPS_PER_VERSION_MAX {
        return Err(Error::TooManyWraps);
    }
    let mut bytes = Vec::with_capacity(2 + wraps.len() * WRAP_BYTES + envelope.len());
    bytes.extend_from_slice(&(wraps.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&encode_wraps(wraps));
    bytes.extend_from_slice(envelope);
    Ok(bytes)
}

fn decode_object(bytes: &[u8]) -> Option<(Vec<u8>, Vec<Wrap>)> {
    let count = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let end = 2 + count * WRAP_BYTES;
    let wraps = decode_wraps(bytes.get(2..end)?, "object").ok()?;
    Some((bytes[end..].to_vec(), wraps))
}

impl BlobStore {
    /// A store in `dir` on local disk (the default: embedded, nothing to install).
    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let staging = dir.join("staging");
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        Ok(Self {
            backend: Backend::Local(dir.to_path_buf()),
            stager: spawn_stager(&staging),
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
            stager: spawn_stager(staging_dir),
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

    async fn put_raw(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(key);
                tokio::task::spawn_blocking(move || write_file(&path, &bytes, false))
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

    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
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

    async fn delete_raw(&self, key: &str) -> Result<()> {
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

    /// Store a record version: its envelope and wraps, under the envelope's hash (the caller
    /// checked the hash against the anchor). Durable after the next [`BlobStore::sync`].
    pub async fn put(&self, envelope: &[u8], wraps: &[Wrap]) -> Result<[u8; 32]> {
        let hash = envelope_hash(envelope);
        self.put_raw(&object_key(&hash), encode_object(envelope, wraps)?)
            .await?;
        Ok(hash)
    }

    /// The envelope and wraps stored under this hash, if held and intact. An object whose
    /// envelope no longer hashes to its name is deleted and reported missing, so it is never
    /// served and is fetched again from a peer.
    pub async fn get(&self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        let key = object_key(hash);
        let Some(bytes) = self.get_raw(&key).await? else {
            return Ok(None);
        };
        match decode_object(&bytes) {
            Some((envelope, wraps)) if envelope_hash(&envelope) == *hash => {
                Ok(Some((envelope, wraps)))
            }
            _ => {
                tracing::error!(hash = %hex::encode(hash), "a stored record does not match its hash; deleting it");
                self.delete_raw(&key).await?;
                Ok(None)
            }
        }
    }

    pub async fn contains(&self, hash: &[u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Local(dir) => Ok(dir.join(object_key(hash)).exists()),
            Backend::S3 { store, prefix } => {
                match store
                    .head(&Self::object_path(prefix, &object_key(hash)))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Delete a record version's envelope and every wrap of it (erasure).
    pub async fn delete(&self, hash: &[u8; 32]) -> Result<()> {
        self.delete_raw(&object_key(hash)).await
    }

    /// Add wraps to a stored version (a recipient already present is replaced).
    pub async fn add_wraps(&self, hash: &[u8; 32], wraps: &[Wrap]) -> Result<bool> {
        let _guard = self.wraps_lock.lock().await;
        let Some((envelope, mut current)) = self.get(hash).await? else {
            return Ok(false);
        };
        for wrap in wraps {
            current.retain(|w| w.recipient != wrap.recipient);
            current.push(wrap.clone());
        }
        self.put(&envelope, &current).await?;
        Ok(true)
    }

    /// Delete one recipient's wrap (a revoked grantee).
    pub async fn remove_wrap(
        &self,
        hash: &[u8; 32],
        recipient: &ehrchain_crypto::EncryptionPublicKey,
    ) -> Result<()> {
        let _guard = self.wraps_lock.lock().await;
        let Some((envelope, mut current)) = self.get(hash).await? else {
            return Ok(());
        };
        let before = current.len();
        current.retain(|w| w.recipient != *recipient);
        if current.len() != before {
            self.put(&envelope, &current).await?;
        }
        Ok(())
    }

    fn staged_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.staging.join(format!("{}.upload", hex::encode(hash)))
    }

    /// Stage an upload until its anchor is final: one file in the stored format, flushed with
    /// its directory entry before this returns, so a crash loses nothing a client was told is
    /// pending.
    pub async fn stage(&self, envelope: &[u8], wraps: &[Wrap]) -> Result<[u8; 32]> {
        let hash = envelope_hash(envelope);
        let path = self.staged_path(&hash);
        let bytes = encode_object(envelope, wraps)?;
        let (done, answer) = tokio::sync::oneshot::channel();
        self.stager
            .send(StageRequest { path, bytes, done })
            .await
            .expect("the stager runs as long as the store");
        answer.await.expect("the stager answers every request")?;
        Ok(hash)
    }

    /// A staged upload, if present and intact.
    pub fn staged(&self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        let path = self.staged_path(hash);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        match decode_object(&bytes) {
            Some((envelope, wraps)) if envelope_hash(&envelope) == *hash => {
                Ok(Some((envelope, wraps)))
            }
            _ => {
                tracing::error!(hash = %hex::encode(hash), "a staged upload is damaged; dropping it");
                self.unstage(hash)?;
                Ok(None)
            }
        }
    }

    /// Drop a staged upload (its anchor was refused, or it was promoted and synced).
    pub fn unstage(&self, hash: &[u8; 32]) -> Result<()> {
        remove_optional(&self.staged_path(hash))
    }

    /// Move a staged upload into the store once its anchor is final; false when nothing was
    /// staged under this hash. On local disk this is a rename; for S3 a PUT, after which the
    /// caller syncs and unstages.
    pub async fn promote(&self, hash: &[u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Local(dir) => {
                let from = self.staged_path(hash);
                if !from.exists() {
                    return Ok(false);
                }
                let to = dir.join(object_key(hash));
                let parent = to.parent().expect("object paths have a parent");
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                std::fs::rename(&from, &to).map_err(io(&to))?;
                Ok(true)
            }
            Backend::S3 { .. } => {
                let Some((envelope, wraps)) = self.staged(hash)? else {
                    return Ok(false);
                };
                self.put(&envelope, &wraps).await?;
                Ok(true)
            }
        }
    }

    /// Make every write and delete so far durable. Local store: one `syncfs`; S3: each PUT
    /// and DELETE is already durable when it returns.
    pub async fn sync(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || sync_file_system(&dir))
                    .await
                    .expect("sync task")
            }
            Backend::S3 { .. } => Ok(()),
        }
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

    fn sealed(text: &[u8], reader: &EncryptionKey) -> (Vec<u8>, [u8; 32], Vec<Wrap>) {
        let binding = Binding {
            record: [1; 16],
            version: 1,
            patient: [2; 16],
        };
        seal_for(&binding, text, &[reader.public()]).unwrap()
    }

    #[tokio::test]
    async fn stage_promote_read_erase() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, wraps) = sealed(b"{\"x\":1}", &reader);
        assert_eq!(store.stage(&envelope, &wraps).await.unwrap(), hash);
        assert!(
            store.get(&hash).await.unwrap().is_none(),
            "staged is not stored"
        );
        assert!(store.promote(&hash).await.unwrap());
        store.sync().await.unwrap();
        store.unstage(&hash).unwrap();
        assert!(store.staged(&hash).unwrap().is_none());
        assert_eq!(store.get(&hash).await.unwrap().unwrap(), (envelope, wraps));
        store.delete(&hash).await.unwrap();
        assert!(store.get(&hash).await.unwrap().is_none());
        assert!(!store.contains(&hash).await.unwrap());
    }

    #[tokio::test]
    async fn a_damaged_record_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, wraps) = sealed(b"{}", &reader);
        store.put(&envelope, &wraps).await.unwrap();
        let path = dir.path().join(object_key(&hash));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.get(&hash).await.unwrap().is_none());
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
        let (envelope, hash, wraps_a) = sealed(b"{}", &a);
        let other = Wrap {
            recipient: b.public(),
            ..wraps_a[0].clone()
        };
        store.put(&envelope, &wraps_a).await.unwrap();
        assert!(
            store
                .add_wraps(&hash, std::slice::from_ref(&other))
                .await
                .unwrap()
        );
        assert!(store.add_wraps(&hash, &wraps_a).await.unwrap());
        assert_eq!(store.get(&hash).await.unwrap().unwrap().1.len(), 2);
        store.remove_wrap(&hash, &a.public()).await.unwrap();
        assert_eq!(store.get(&hash).await.unwrap().unwrap().1, vec![other]);
    }

    #[tokio::test]
    async fn stale_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let reader = EncryptionKey::from_seed(&[5; 32]);
        let (envelope, hash, wraps) = sealed(b"{}", &reader);
        store.stage(&envelope, &wraps).await.unwrap();
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
        assert_eq!(store.sweep_staged(Duration::ZERO, |_| false).unwrap(), 1);
        assert!(store.staged(&hash).unwrap().is_none());
    }
}
