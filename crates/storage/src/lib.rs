//! Keep record envelopes and their wrapped keys off chain: on local disk or in S3.
//!
//! A record version is one object, content-addressed by the SHA-256 of its envelope, which
//! is what the chain anchors; every read re-checks the hash, so a damaged or substituted
//! envelope is never served. The data key's wraps travel in the same object, so erasing a
//! version is one delete and writing one is one append.
//!
//! ```text
//! object: count u16 | count x wrap (recipient | HPKE enc | key+tag) | envelope
//! local:  {dir}/{segment:08}.pack, objects appended as entries (see `pack`)
//! S3:     {prefix}/records/{hash[0..2]}/{hash}
//! ```
//! An upload is first *staged* (an entry marked staged in the local pack, synced before the
//! client is answered). Only when its anchor transaction is final is it promoted into the
//! store (on local disk the entry's state byte flips; for S3 it is PUT), so no stored blob is
//! ever left without its anchor; staged uploads whose anchor never commits are swept away.

pub mod block_log;
pub mod journal;
pub mod pack;

use commonware_runtime::telemetry::metrics::{Counter, MetricsExt as _};
use ehrchain_crypto::{WRAP_BYTES, Wrap, envelope_hash};
use object_store::{
    ObjectStore, ObjectStoreExt as _, PutPayload, aws::AmazonS3Builder, path::Path as ObjectPath,
};
use pack::Pack;
use std::{path::Path, sync::Arc, time::Duration};

pub use pack::{ENTRY_BYTES_MAX, SEGMENT_BYTES_MAX};

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
    #[error("an object of {0} bytes is over the store's limit")]
    TooLarge(usize),
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
    /// Stored objects live in the pack, beside the staged ones.
    Local,
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

/// The off-chain store of one node.
pub struct BlobStore {
    backend: Backend,
    /// Staged uploads (both backends) and stored objects (local backend).
    pack: Arc<Pack>,
    /// Serializes read-modify-write of wrap lists.
    wraps_lock: tokio::sync::Mutex<()>,
    /// Uploads waiting for the stager's next group flush.
    stager: tokio::sync::mpsc::Sender<StageRequest>,
    /// What the store counts; exported once [`BlobStore::register_metrics`] is called.
    metrics: std::sync::OnceLock<StoreMetrics>,
    /// The runtime's clock, in milliseconds since the Unix epoch: when an upload was staged.
    clock: Clock,
}

/// A runtime's wall clock, read through [`commonware_runtime::Clock`] (the simulation's is
/// seeded), so the store never reads the system time itself.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn clock_of<E: commonware_runtime::Clock>(context: E) -> Clock {
    Arc::new(move || {
        context
            .current()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// What a node's blob store counts, where it happens.
struct StoreMetrics {
    staged: Counter,
    stored: Counter,
    deleted: Counter,
    damaged: Counter,
}

/// Most uploads waiting to be staged; a full queue makes uploaders wait.
pub const STAGE_QUEUE_MAX: usize = 4_096;

/// Most uploads written under one flush.
const STAGE_GROUP_MAX: usize = 256;

struct StageRequest {
    hash: [u8; 32],
    bytes: Vec<u8>,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

/// Group commit for staging: append every waiting upload, flush the segments written once,
/// then answer them all. Under load one flush covers hundreds of uploads; alone, an upload
/// waits for just its own flush. It runs as a runtime task (on a thread of its own in
/// production, since its writes block), so the simulation schedules it like any other.
async fn run_stager(
    pack: Arc<Pack>,
    clock: Clock,
    mut queue: tokio::sync::mpsc::Receiver<StageRequest>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < STAGE_GROUP_MAX {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(group.len());
        let mut segments = Vec::new();
        let staged_ms = clock();
        for request in group {
            let result = pack
                .append(true, &request.hash, staged_ms, &request.bytes)
                .map(|segment| {
                    if !segments.contains(&segment) {
                        segments.push(segment);
                    }
                });
            written.push((request.done, result));
        }
        let flushed = pack.sync_segments(&segments);
        for (done, result) in written {
            let answer = match (&result, &flushed) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(_), _) => result,
                (Ok(()), Err(e)) => Err(Error::Io(
                    "blob pack".into(),
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

fn spawn_stager(
    context: impl commonware_runtime::Spawner + commonware_runtime::Metrics,
    pack: Arc<Pack>,
    clock: Clock,
) -> tokio::sync::mpsc::Sender<StageRequest> {
    let (sender, receiver) = tokio::sync::mpsc::channel(STAGE_QUEUE_MAX);
    context
        .child("stager")
        .dedicated()
        .spawn(move |_| run_stager(pack, clock, receiver));
    sender
}

/// What a store runs on: the runtime's spawner (the stager), clock and metrics.
pub trait Runtime:
    commonware_runtime::Spawner + commonware_runtime::Clock + commonware_runtime::Metrics
{
}

impl<E> Runtime for E where
    E: commonware_runtime::Spawner + commonware_runtime::Clock + commonware_runtime::Metrics
{
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(path.display().to_string(), e)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(path.display().to_string(), e)),
    }
}

/// Move objects of the earlier one-file-per-object layout (`records/{xx}/{hash}`, and
/// `staging/{hash}.upload`) into the pack, then delete the files.
fn import_files(dir: &Path, pack: &Pack, now_ms: u64) -> Result<usize> {
    let mut moved = 0;
    let mut files = Vec::new();
    for (sub, staged) in [("records", false), ("staging", true)] {
        let root = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).map_err(io(&path))?.flatten() {
                    files.push((inner.path(), staged));
                }
            } else {
                files.push((path, staged));
            }
        }
    }
    for (path, staged) in &files {
        let hash = path
            .file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| hex::decode(n).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        if let (Some(hash), Some(bytes)) = (hash, read_optional(path)?)
            && decode_object(&bytes).is_some_and(|(envelope, _)| envelope_hash(&envelope) == hash)
        {
            pack.append(*staged, &hash, now_ms, &bytes)?;
            moved += 1;
        }
    }
    if !files.is_empty() {
        pack.sync()?;
        for sub in ["records", "staging"] {
            let root = dir.join(sub);
            if root.exists() {
                std::fs::remove_dir_all(&root).map_err(io(&root))?;
            }
        }
    }
    Ok(moved)
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
    /// Check every blob packed in `dir` against its checksum, without starting a store:
    /// (entries checked, hashes of damaged ones).
    pub fn check_local(dir: &Path) -> Result<(usize, Vec<[u8; 32]>)> {
        Pack::open(dir)?.check()
    }

    /// A store in `dir` on local disk (the default: embedded, nothing to install); its
    /// stager runs on `context`.
    pub fn local(context: impl Runtime, dir: &Path) -> Result<Self> {
        let clock = clock_of(context.child("clock"));
        let pack = Arc::new(Pack::open(dir)?);
        let moved = import_files(dir, &pack, clock())?;
        if moved > 0 {
            tracing::info!(
                objects = moved,
                "moved blobs of the file-per-object layout into the pack"
            );
        }
        Ok(Self {
            backend: Backend::Local,
            stager: spawn_stager(context, pack.clone(), clock.clone()),
            metrics: std::sync::OnceLock::new(),
            pack,
            wraps_lock: tokio::sync::Mutex::new(()),
            clock,
        })
    }

    /// A store in an S3-compatible bucket; uploads are staged in `staging_dir` on local disk.
    pub fn s3(context: impl Runtime, config: &S3Config, staging_dir: &Path) -> Result<Self> {
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
        let pack = Arc::new(Pack::open(staging_dir)?);
        let clock = clock_of(context.child("clock"));
        Ok(Self {
            backend: Backend::S3 {
                store: Arc::new(store),
                prefix: config.prefix.trim_matches('/').to_owned(),
            },
            stager: spawn_stager(context, pack.clone(), clock.clone()),
            metrics: std::sync::OnceLock::new(),
            pack,
            wraps_lock: tokio::sync::Mutex::new(()),
            clock,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Local => "local",
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

    /// Export the store's counts through `context` (the node's metrics registry); a second
    /// call changes nothing.
    pub fn register_metrics(&self, context: &impl commonware_runtime::Metrics) {
        let _ = self.metrics.set(StoreMetrics {
            staged: context.counter("staged", "Uploads staged until their anchor is final."),
            stored: context.counter(
                "stored",
                "Record objects stored (promoted, fetched or put).",
            ),
            deleted: context.counter("deleted", "Record objects deleted (erasure)."),
            damaged: context.counter(
                "damaged",
                "Stored objects found not to match their hash, deleted to be fetched again.",
            ),
        });
    }

    fn count(&self, which: fn(&StoreMetrics) -> &Counter) {
        if let Some(metrics) = self.metrics.get() {
            which(metrics).inc();
        }
    }

    /// Store a record version: its envelope and wraps, under the envelope's hash (the caller
    /// checked the hash against the anchor). Durable after the next [`BlobStore::sync`].
    pub async fn put(&self, envelope: &[u8], wraps: &[Wrap]) -> Result<[u8; 32]> {
        let hash = envelope_hash(envelope);
        let bytes = encode_object(envelope, wraps)?;
        match &self.backend {
            Backend::Local => {
                self.pack.append(false, &hash, 0, &bytes)?;
            }
            Backend::S3 { store, prefix } => {
                store
                    .put(
                        &Self::object_path(prefix, &object_key(&hash)),
                        PutPayload::from(bytes),
                    )
                    .await?;
            }
        }
        self.count(|m| &m.stored);
        Ok(hash)
    }

    /// The envelope and wraps stored under this hash, if held and intact. An object whose
    /// envelope no longer hashes to its name is deleted and reported missing, so it is never
    /// served and is fetched again from a peer.
    pub async fn get(&self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        match &self.backend {
            Backend::Local => self.read_pack(false, hash),
            Backend::S3 { store, prefix } => {
                let path = Self::object_path(prefix, &object_key(hash));
                let bytes = match store.get(&path).await {
                    Ok(result) => result.bytes().await?.to_vec(),
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                match decode_object(&bytes) {
                    Some((envelope, wraps)) if envelope_hash(&envelope) == *hash => {
                        Ok(Some((envelope, wraps)))
                    }
                    _ => {
                        tracing::error!(hash = %hex::encode(hash), "a stored record does not match its hash; deleting it");
                        self.count(|m| &m.damaged);
                        self.delete(hash).await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A pack entry, checked against its hash; a damaged one is erased (only if no rewrite
    /// replaced it meanwhile: then the new entry is read instead).
    fn read_pack(&self, staged: bool, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        for _ in 0..4 {
            let Some(slot) = self.pack.slot(staged, hash) else {
                return Ok(None);
            };
            let bytes = self.pack.read(slot)?;
            if let Some((envelope, wraps)) = decode_object(&bytes)
                && envelope_hash(&envelope) == *hash
            {
                return Ok(Some((envelope, wraps)));
            }
            if self.pack.remove(staged, hash, Some(slot))? {
                tracing::error!(hash = %hex::encode(hash), staged, "a stored record does not match its hash; deleting it");
                self.count(|m| &m.damaged);
                return Ok(None);
            }
        }
        Ok(None)
    }

    pub async fn contains(&self, hash: &[u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Local => Ok(self.pack.slot(false, hash).is_some()),
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

    /// Delete a record version's envelope and every wrap of it (erasure). On local disk the
    /// bytes are punched out of the pack; durable after the next [`BlobStore::sync`].
    pub async fn delete(&self, hash: &[u8; 32]) -> Result<()> {
        self.count(|m| &m.deleted);
        match &self.backend {
            Backend::Local => {
                self.pack.remove(false, hash, None)?;
                Ok(())
            }
            Backend::S3 { store, prefix } => {
                match store
                    .delete(&Self::object_path(prefix, &object_key(hash)))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
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

    /// Stage an upload until its anchor is final: an entry in the local pack, flushed before
    /// this returns, so a crash loses nothing a client was told is pending.
    pub async fn stage(&self, envelope: &[u8], wraps: &[Wrap]) -> Result<[u8; 32]> {
        let hash = envelope_hash(envelope);
        let bytes = encode_object(envelope, wraps)?;
        let (done, answer) = tokio::sync::oneshot::channel();
        self.stager
            .send(StageRequest { hash, bytes, done })
            .await
            .expect("the stager runs as long as the store");
        answer.await.expect("the stager answers every request")?;
        self.count(|m| &m.staged);
        Ok(hash)
    }

    /// A staged upload, if present and intact.
    pub fn staged(&self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, Vec<Wrap>)>> {
        self.read_pack(true, hash)
    }

    /// Drop a staged upload (its anchor was refused, or it was promoted and synced).
    pub fn unstage(&self, hash: &[u8; 32]) -> Result<()> {
        self.pack.remove(true, hash, None)?;
        Ok(())
    }

    /// Move a staged upload into the store once its anchor is final; false when nothing was
    /// staged under this hash. On local disk the entry's state flips in place; for S3 a PUT,
    /// after which the caller syncs and unstages.
    pub async fn promote(&self, hash: &[u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Local => {
                let promoted = self.pack.promote(hash)?;
                if promoted {
                    self.count(|m| &m.stored);
                }
                Ok(promoted)
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

    /// Make every write and delete so far durable. Local store: one `fdatasync` per segment
    /// written; S3: each PUT and DELETE is already durable when it returns (the staging pack
    /// is synced too, so dropped uploads stay dropped). It blocks its thread for the flush:
    /// the records keeper, its caller, runs on a thread of its own.
    pub async fn sync(&self) -> Result<()> {
        self.pack.sync()
    }

    /// Delete staged uploads older than `age` whose anchors never became final.
    pub fn sweep_staged(&self, age: Duration, keep: impl Fn(&[u8; 32]) -> bool) -> Result<usize> {
        let now = (self.clock)();
        let mut removed = 0;
        for (hash, staged_ms) in self.pack.staged() {
            let old = now.saturating_sub(staged_ms) > age.as_millis() as u64;
            if old && !keep(&hash) && self.pack.remove(true, &hash, None)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_runtime::{Clock as _, Runner as _, Supervisor as _, deterministic};
    use ehrchain_crypto::{Binding, EncryptionKey, seal_for};

    fn sealed(text: &[u8], reader: &EncryptionKey) -> (Vec<u8>, [u8; 32], Vec<Wrap>) {
        let binding = Binding {
            record: [1; 16],
            version: 1,
            patient: [2; 16],
        };
        seal_for(&binding, text, &[reader.public()]).unwrap()
    }

    #[test]
    fn stage_promote_read_erase() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(context.child("store"), dir.path()).unwrap();
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
        });
    }

    #[test]
    fn a_damaged_record_is_never_served() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(context.child("store"), dir.path()).unwrap();
            let reader = EncryptionKey::from_seed(&[5; 32]);
            let (envelope, hash, wraps) = sealed(b"{}", &reader);
            store.put(&envelope, &wraps).await.unwrap();
            store.sync().await.unwrap();
            let path = dir.path().join("00000001.pack");
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes
                .windows(envelope.len())
                .position(|w| w == envelope)
                .unwrap();
            bytes[at + envelope.len() - 1] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            assert!(store.get(&hash).await.unwrap().is_none());
            store.sync().await.unwrap();
            assert!(
                !store.contains(&hash).await.unwrap(),
                "the damaged copy is removed so it is fetched again"
            );
            let bytes = std::fs::read(&path).unwrap();
            let body = &envelope[..envelope.len() - 1];
            assert!(!bytes.windows(body.len()).any(|w| w == body));
        });
    }

    #[test]
    fn files_of_the_earlier_layout_move_into_the_pack() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let reader = EncryptionKey::from_seed(&[5; 32]);
            let (envelope, hash, wraps) = sealed(b"{\"old\":1}", &reader);
            let old = dir.path().join(object_key(&hash));
            std::fs::create_dir_all(old.parent().unwrap()).unwrap();
            std::fs::write(&old, encode_object(&envelope, &wraps).unwrap()).unwrap();
            let (staged_envelope, staged_hash, _) = sealed(b"{\"staged\":1}", &reader);
            std::fs::create_dir_all(dir.path().join("staging")).unwrap();
            std::fs::write(
                dir.path()
                    .join("staging")
                    .join(format!("{}.upload", hex::encode(staged_hash))),
                encode_object(&staged_envelope, &[]).unwrap(),
            )
            .unwrap();
            let store = BlobStore::local(context.child("store"), dir.path()).unwrap();
            assert_eq!(store.get(&hash).await.unwrap().unwrap(), (envelope, wraps));
            assert!(store.staged(&staged_hash).unwrap().is_some());
            assert!(!dir.path().join("records").exists());
            assert!(!dir.path().join("staging").exists());
        });
    }

    #[test]
    fn wraps_are_merged_and_removed_per_recipient() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(context.child("store"), dir.path()).unwrap();
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
        });
    }

    #[test]
    fn stale_uploads_are_swept() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(context.child("store"), dir.path()).unwrap();
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
            context.sleep(Duration::from_millis(5)).await;
            assert_eq!(store.sweep_staged(Duration::ZERO, |_| false).unwrap(), 1);
            assert!(store.staged(&hash).unwrap().is_none());
        });
    }
}
