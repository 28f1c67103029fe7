//! The FHIR gateway's state: its URL and institution key, the live tokens and used assertion
//! ids (`session`), the keys this node holds for the identities it serves, the access log of
//! the reads it decides, and what it counts.

use crate::ApiState;
use crate::session::Token;
use commonware_runtime::{
    Blob,
    telemetry::metrics::{Counter, MetricsExt as _, Registered},
};
use ehrchain_types::{PrivateKey, PublicKey};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

/// The node's gateway: its URL, its institution's signing key, live tokens.
pub struct Gateway {
    /// The base URL clients reach this node at (`aud` is `{public_url}/auth/token`).
    pub public_url: String,
    /// The institution's (validator's) key, to register patients it is the home of and to
    /// put its access log on chain.
    pub institution: Option<Arc<ehrchain_chain::account::Account>>,
    pub(crate) tokens: Mutex<HashMap<String, Arc<Token>>>,
    pub(crate) jtis: Mutex<HashMap<String, u64>>,
    /// SMART App Launch requests, codes and refresh tokens in flight.
    pub smart: crate::smart::Smart,
    /// The client library built for the browser (`crates/wasm`), served to the login page.
    pub client_wasm: Option<axum::body::Bytes>,
    /// Custodial keys already read and parsed, by file, with the file's modification time.
    custody_keys: Mutex<HashMap<PathBuf, (SystemTime, ehrchain_crypto::EncryptionKey)>>,
    /// The journal of reads this gateway decided and served, on their way to the chain.
    /// Without one, every read waits for its own `Access` transaction to commit.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub metrics: GatewayMetrics,
    /// The search fields of the record versions this node has opened (`fhir::index`).
    pub search_index: crate::fhir::index::SearchIndex,
}

/// What the gateway counts, where it happens.
pub struct GatewayMetrics {
    /// Reads decided by this gateway and journalled.
    pub reads_logged: Counter,
    /// Reads sent to the chain as their own `Access` transaction.
    pub reads_on_chain: Counter,
    /// Reads the contract denied (on the trail).
    pub reads_denied: Counter,
    /// Bearer tokens issued, and token requests refused.
    pub tokens_issued: Counter,
    pub tokens_refused: Counter,
}

impl GatewayMetrics {
    /// Counted, not exported.
    pub fn detached() -> Self {
        Self {
            reads_logged: Registered::detached(Default::default()),
            reads_on_chain: Registered::detached(Default::default()),
            reads_denied: Registered::detached(Default::default()),
            tokens_issued: Registered::detached(Default::default()),
            tokens_refused: Registered::detached(Default::default()),
        }
    }

    /// Counted and exported through `context` (the node's metrics registry).
    pub fn register(context: &impl commonware_runtime::Metrics) -> Self {
        Self {
            reads_logged: context.counter(
                "reads_logged",
                "Consented reads this gateway decided itself and journalled.",
            ),
            reads_on_chain: context.counter(
                "reads_on_chain",
                "Reads sent to the chain as their own Access transaction.",
            ),
            reads_denied: context.counter(
                "reads_denied",
                "Reads the contract denied (each is on the trail).",
            ),
            tokens_issued: context.counter("tokens_issued", "Bearer tokens issued."),
            tokens_refused: context.counter("tokens_refused", "Token requests refused."),
        }
    }
}

/// Most custodial keys kept parsed in memory (the cache is emptied when full).
pub const CUSTODY_KEYS_CACHED_MAX: usize = 100_000;

impl Gateway {
    pub fn new(public_url: String, institution: Option<PrivateKey>) -> Self {
        Self {
            public_url,
            institution: institution
                .map(|key| Arc::new(ehrchain_chain::account::Account::new(key))),
            tokens: Mutex::default(),
            jtis: Mutex::default(),
            smart: crate::smart::Smart::default(),
            client_wasm: None,
            custody_keys: Mutex::default(),
            access_log: None,
            metrics: GatewayMetrics::detached(),
            search_index: Default::default(),
        }
    }

    /// Count through `metrics` (`GatewayMetrics::register` exports them).
    pub fn with_metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serve consented reads through an access log journalled in `dir` (see `access_log`),
    /// its writer a task of `context`. `recorded` is the institution's next log entry number
    /// on chain.
    pub fn with_access_log(
        mut self,
        context: impl commonware_runtime::Spawner,
        dir: &std::path::Path,
        recorded: u64,
        metrics: crate::access_log::AccessLogMetrics,
    ) -> std::io::Result<Self> {
        self.access_log = Some(Arc::new(crate::access_log::AccessLog::open(
            context, dir, recorded, metrics,
        )?));
        Ok(self)
    }

    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.public_url)
    }

    /// Serve `wasm` (the `ehrchain-wasm` module) to the login page, for self-held keys.
    pub fn with_client_wasm(mut self, wasm: Vec<u8>) -> Self {
        self.client_wasm = Some(wasm.into());
        self
    }

    /// The URL people's browsers reach this node at: the public URL, with a loopback IP
    /// address named `localhost` (WebAuthn relying-party ids are domain names, not IPs).
    pub fn browser_url(&self) -> String {
        for ip in ["127.0.0.1", "[::1]"] {
            for scheme in ["https://", "http://"] {
                if let Some(rest) = self.public_url.strip_prefix(&format!("{scheme}{ip}")) {
                    return format!("{scheme}localhost{rest}");
                }
            }
        }
        self.public_url.clone()
    }

    /// The WebAuthn relying-party id: the host of [`Self::browser_url`].
    pub fn rp_id(&self) -> String {
        let url = self.browser_url();
        let host = url.split_once("://").map_or(url.as_str(), |(_, h)| h);
        let host = host.split(['/', '?']).next().unwrap_or(host);
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => host.to_string(),
        }
    }

    /// The FHIR base URLs an authorization request's `aud` may name.
    pub fn fhir_urls(&self) -> Vec<String> {
        vec![
            format!("{}/fhir", self.public_url),
            format!("{}/fhir", self.browser_url()),
        ]
    }
}

/// The X25519 keys this node holds that may open records for `identity` of `patient`: the
/// identity's custodial key (`custody/<identity>.enc`), the institution's key, and the
/// custodial key of the patient (`custody/<patient>.key`). Which one opens a record is decided
/// by the wraps; whether it may is decided by the chain before this is called.
pub fn held_keys<B: Blob>(
    state: &ApiState<B>,
    identity: &PublicKey,
    patient: &[u8; 16],
) -> Vec<ehrchain_crypto::EncryptionKey> {
    let mut keys = Vec::new();
    if let Some(dir) = &state.custody_dir {
        let gateway = &state.gateway;
        if let Some(key) = gateway.custody_key(
            dir.join(format!("{}.enc", hex::encode(identity))),
            |secret| ehrchain_crypto::EncryptionKey::from_secret_bytes(&secret).ok(),
        ) {
            keys.push(key);
        }
        if let Some(key) = gateway
            .custody_key(dir.join(format!("{}.key", hex::encode(patient))), |seed| {
                Some(ehrchain_crypto::EncryptionKey::from_seed(&seed))
            })
        {
            keys.push(key);
        }
    }
    keys.extend(state.institution_key.iter().cloned());
    keys
}

impl Gateway {
    /// The key in a custody file, parsed once and reused while the file is unchanged (its
    /// modification time is checked on every use, so a rotated or deleted key is noticed).
    fn custody_key(
        &self,
        path: PathBuf,
        parse: impl FnOnce([u8; 32]) -> Option<ehrchain_crypto::EncryptionKey>,
    ) -> Option<ehrchain_crypto::EncryptionKey> {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified());
        let mut cache = self.custody_keys.lock().expect("custody key cache");
        let Ok(modified) = modified else {
            cache.remove(&path);
            return None;
        };
        if let Some((at, key)) = cache.get(&path)
            && *at == modified
        {
            return Some(key.clone());
        }
        drop(cache);
        let key = parse(read_hex32(path.clone())?)?;
        let mut cache = self.custody_keys.lock().expect("custody key cache");
        if cache.len() >= CUSTODY_KEYS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(path, (modified, key.clone()));
        Some(key)
    }
}

pub(crate) fn read_hex32(path: PathBuf) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path).ok()?;
    hex::decode(text.trim()).ok()?.try_into().ok()
}

/// Write a 32-byte secret as hex to a new file with mode 0600.
pub fn write_secret(path: &std::path::Path, secret: &[u8; 32]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex::encode(secret).as_bytes())?;
    file.sync_all()
}
