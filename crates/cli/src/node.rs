//! `ehrchain node`: run one validator with its HTTP API.

use crate::config::{NodeConfig, load_genesis, read_key};
use anyhow::{Context, Result};
use commonware_cryptography::{ChaCha20Poly1305, Signer};
use commonware_p2p::{Address, AddressableManager, authenticated::lookup};
use commonware_runtime::{Quota, Runner, Spawner as _, Supervisor, tokio as cw_tokio};
use commonware_stream::{
    cups::{self, Cups},
    sake::{self, Sake},
};
use commonware_utils::{NZU32, NZUsize, ordered::Map};
use ehrchain_api::{ApiState, router};
use ehrchain_chain::{
    ChainConfig,
    engine::{self, Channels, EngineConfig, Timing, channel},
};
use ehrchain_types::{P2P_NAMESPACE, PublicKey};
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Per-peer, per-channel message rate. Blocks and gossip batch their contents, so a few
/// hundred messages per second carry the chain; the network preallocates an inbound slot for
/// every message of one burst from every peer, so this also sets memory use.
pub const CHANNEL_MESSAGES_PER_SECOND_MAX: u32 = 1_000;

/// Peers one node keeps connections with (members and validators), unless the genesis names
/// more. The network preallocates inbound buffers per peer, so this bounds memory too.
pub const PEERS_MAX: usize = 16;

/// The peer network's view of the consortium: the peers the chain names, at the addresses
/// governance admitted them with or, for genesis members, the genesis file's.
struct LookupPeers<O> {
    oracle: O,
    genesis: std::collections::BTreeMap<PublicKey, Address>,
}

impl<O: AddressableManager<PublicKey = PublicKey> + Send + 'static> ehrchain_chain::epochs::PeerSets
    for LookupPeers<O>
{
    fn track(&mut self, id: u64, peers: Vec<(PublicKey, Option<SocketAddr>)>) {
        let known: Vec<(PublicKey, Address)> = peers
            .into_iter()
            .filter_map(|(key, address)| {
                let address = address
                    .map(Address::from)
                    .or_else(|| self.genesis.get(&key).cloned())?;
                Some((key, address))
            })
            .collect();
        match Map::try_from(known) {
            Ok(map) => {
                tracing::info!(id, peers = map.len(), "tracking the consortium's peers");
                let _ = self.oracle.track(id, map);
            }
            Err(_) => tracing::error!(id, "duplicate peer keys; peer set not updated"),
        }
    }
}

/// File in the data directory that records which genesis the data belongs to.
pub const GENESIS_COPY: &str = "genesis.json";

/// Halt the process on any panic, with a message an operator can act on. A panic inside the
/// consensus engine (a journal that cannot be written or pruned) would otherwise end only its
/// own task, and the node would limp on without consensus.
fn halt_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let storage = [
            "journal",
            "storage",
            "archive",
            "prune",
            "sync",
            "open files",
            "No space",
        ]
        .iter()
        .any(|word| message.contains(word));
        let what = if storage {
            "storage failure: the node halts so that its journal and state stay consistent; \
             check free disk space and the file-descriptor limit, then restart it"
        } else {
            "internal error: the node halts; restart it, and report this message"
        };
        tracing::error!(%location, %message, "{what}");
        eprintln!("ehrchain node: {what}\n  at {location}: {message}");
        std::process::exit(70);
    }));
}

pub fn run(config_path: &std::path::Path) -> Result<()> {
    let config = NodeConfig::load(config_path)?;
    crate::logging::init(&config.log_format);
    halt_on_panic();
    let fd_limit = ehrchain_api::serve::raise_fd_limit();
    let limits = config.api.limits().within_fd_limit(fd_limit);
    tracing::info!(
        fd_limit,
        connections_max = limits.connections_max,
        connections_per_peer_max = limits.connections_per_peer_max,
        "API connection limits"
    );
    let genesis = load_genesis(&config.genesis)?;
    let signer = read_key(&config.key_file)?;
    // The FHIR gateway registers patients with the institution's (this validator's) key.
    let gateway_key = read_key(&config.key_file)?;
    // The institution's X25519 key: it unwraps what is wrapped for the institution, to release
    // it to a reader the access contract allowed.
    let institution_key =
        ehrchain_crypto::EncryptionKey::from_seed(&crate::config::read_seed(&config.key_file)?);
    let validators = genesis.validator_keys()?;
    let me = signer.public_key();
    if !validators.contains(&me) {
        // A member admitted by governance after genesis: it follows the chain from the genesis
        // validators and votes from the epoch its admission takes effect in.
        tracing::info!(key = %me, "not a genesis validator: following the chain until governance admits this key");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let copy = config.data_dir.join(GENESIS_COPY);
    let genesis_text = serde_json::to_string_pretty(&genesis)?;
    match std::fs::read_to_string(&copy) {
        Ok(existing) => {
            let existing: ehrchain_types::Genesis = serde_json::from_str(&existing)?;
            anyhow::ensure!(
                existing == genesis,
                "data directory {} belongs to another genesis",
                config.data_dir.display()
            );
        }
        Err(_) => std::fs::write(&copy, genesis_text)?,
    }
    let peers: Vec<(PublicKey, Address)> = genesis
        .validators
        .iter()
        .zip(&validators)
        .map(|(v, key)| {
            let address: SocketAddr = v
                .p2p_address
                .parse()
                .with_context(|| format!("bad p2p address of {}", v.name))?;
            Ok((key.clone(), address.into()))
        })
        .collect::<Result<_>>()?;
    let block = genesis.block(ehrchain_chain::application::genesis_root(genesis.chain_id))?;
    let chain_config = ChainConfig {
        chain_id: genesis.chain_id,
        genesis: block,
        block_transactions_max: config
            .block_transactions_max
            .min(ehrchain_types::limits::BLOCK_TRANSACTIONS_MAX),
        mempool_transactions_max: config.mempool_transactions_max,
        institutions: ehrchain_chain::institutions(&genesis)?,
        auditors: genesis.auditor_keys()?,
        rules: genesis.rules,
    };
    let runtime = cw_tokio::Config::new().with_storage_directory(&config.data_dir);
    let executor = cw_tokio::Runner::new(runtime);
    executor.start(|context| async move {
        // The store's stager is a task of the runtime (on a thread of its own).
        let store = match &config.blob_store {
            Some(blob_store) => blob_store.open(context.child("blobs"), &config.name, &config.data_dir),
            None => ehrchain_storage::BlobStore::local(
                context.child("blobs"),
                &config.data_dir.join("records"),
            )
            .map_err(Into::into),
        };
        let store = match store {
            Ok(store) => Arc::new(store),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "cannot open the blob store");
                std::process::exit(1);
            }
        };
        tracing::info!(name = %config.name, key = %me, blob_store = store.kind(), p2p = %config.p2p_listen, api = %config.api_listen, "starting validator");
        let max_message = engine::max_message_size(validators.len());
        let mut p2p = lookup::Config::local(
            Cups::<_, ChaCha20Poly1305>::new(
                Sake {
                    signer: signer.clone(),
                    synchrony_bound: Duration::from_secs(5),
                    max_handshake_age: Duration::from_secs(10),
                    version: sake::Version::V1,
                },
                cups::Version::V1,
            ),
            P2P_NAMESPACE,
            config.p2p_listen,
            // Room for the consortium to grow by governance without a restart.
            NZUsize!(PEERS_MAX).max(commonware_p2p::authenticated::peer_set_limit(
                &validators,
                &me,
            )),
            max_message,
            NZUsize!(1_024),
        );
        // The consortium is one fixed peer set (until governance changes it), and every
        // channel's inbound mailbox is preallocated per retained peer: keep one set.
        p2p.tracked_peer_sets = NZUsize!(1);
        let (mut network, mut oracle) = lookup::Network::new(context.child("network"), p2p);
        let genesis_addresses = peers.clone();
        let peer_map: Map<PublicKey, Address> =
            Map::try_from(peers).expect("validator keys are unique");
        let _ = oracle.track(0, peer_map);
        let quota = Quota::per_second(NZU32!(CHANNEL_MESSAGES_PER_SECOND_MAX));
        let channels = Channels {
            votes: network.register(channel::VOTES, quota),
            certificates: network.register(channel::CERTIFICATES, quota),
            resolver: network.register(channel::RESOLVER, quota),
            backfill: network.register(channel::BACKFILL, quota),
            broadcast: network.register(channel::BROADCAST, quota),
            gossip: network.register(channel::GOSSIP, quota),
        };
        let blob_channel = network.register(channel::BLOBS, quota);
        let network_handle = network.start();
        let (chain, mut handles) = engine::start(
            context.child("validator"),
            EngineConfig {
                signer,
                validators: validators.clone(),
                chain: chain_config,
                timing: Timing::default(),
                mailbox_size: 4_096,
                partition_prefix: "ehrchain".into(),
            },
            channels,
            oracle.clone(),
            oracle.clone(),
            LookupPeers {
                oracle,
                genesis: genesis_addresses.into_iter().collect(),
            },
        )
        .await;
        handles.push(network_handle);
        // Every figure of ours is registered where it is counted, under one `ehrchain` context;
        // `/metrics` renders the whole registry, the engine's and the network's included.
        let metrics = context.child("ehrchain");
        chain.register_metrics(&metrics);
        store.register_metrics(&metrics.child("storage"));
        let (keeper, releases) =
            ehrchain_chain::records::Records::new(chain.clone(), store.clone(), me.clone())
                .with_custody(config.data_dir.join("custody"))
                .with_metrics(&metrics)
                .with_releases(institution_key.clone());
        let blobs_missing = keeper.missing_gauge();
        // The keeper's store writes and flushes block: it gets a thread of its own.
        context
            .child("records")
            .dedicated()
            .spawn(move |context| ehrchain_chain::records::run(context, keeper, blob_channel));

        let metrics_context = context.child("api");
        // Reads served by the gateway are journalled here until the chain records them.
        let recorded = {
            use ehrchain_contracts::state::Reader as _;
            let me = me.clone();
            chain.read(|s| s.access_log_next(&me))
        };
        let gateway = match ehrchain_api::gateway::Gateway::new(config.api_url(), Some(gateway_key))
            .with_metrics(ehrchain_api::gateway::GatewayMetrics::register(
                &metrics.child("gateway"),
            ))
            .with_access_log(
                context.child("access_log"),
                &config.data_dir.join("access-log"),
                recorded,
                ehrchain_api::access_log::AccessLogMetrics::register(&metrics.child("access_log")),
            ) {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(%error, "cannot open the access log");
                std::process::exit(1);
            }
        };
        let gateway = match client_wasm() {
            Some(wasm) => gateway.with_client_wasm(wasm),
            None => {
                tracing::warn!(
                    "no client library for browsers (ehrchain_wasm.wasm): the login page offers passkeys only; build it with `cargo build -p ehrchain-wasm --target wasm32-unknown-unknown --profile wasm` or set EHRCHAIN_CLIENT_WASM"
                );
                gateway
            }
        };
        let state = Arc::new(ApiState {
            chain,
            genesis,
            metrics: Box::new(move || commonware_runtime::Metrics::encode(&metrics_context)),
            store,
            institution_key: Some(institution_key),
            custody_dir: Some(config.data_dir.join("custody")),
            gateway,
            connections: Arc::new(ehrchain_api::serve::Connections::registered(
                &metrics.child("api"),
            )),
            blobs_missing,
            releases: Some(releases),
        });
        if let (Some(log), Some(account)) = (&state.gateway.access_log, &state.gateway.institution) {
            context.child("access_log_batcher").spawn({
                let (chain, log, account) = (state.chain.clone(), log.clone(), account.clone());
                move |context| ehrchain_api::access_log::run(context, chain, log, account)
            });
        }
        // An erased patient's entries leave the search index within seconds.
        tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    ehrchain_api::fhir::index::drop_erased(&state);
                }
            }
        });
        let connections = state.connections.clone();
        let app = router(state);
        let listener = match tokio::net::TcpListener::bind(config.api_listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, address = %config.api_listen, "cannot listen for the API");
                std::process::exit(1);
            }
        };
        match &config.tls {
            Some(files) => {
                let tls = match ehrchain_api::serve::Tls::load(&files.cert, &files.key) {
                    Ok(tls) => Arc::new(tls),
                    Err(error) => {
                        tracing::error!(%error, "cannot start the API's TLS");
                        std::process::exit(1);
                    }
                };
                tokio::spawn(reload_on_sighup(tls.clone()));
                tracing::info!(address = %config.api_listen, "API listening (HTTPS)");
                tokio::spawn(ehrchain_api::serve::serve(
                    listener,
                    app,
                    limits,
                    tls,
                    connections,
                ));
            }
            None => {
                tracing::info!(address = %config.api_listen, "API listening (plain HTTP)");
                tokio::spawn(ehrchain_api::serve::serve(
                    listener,
                    app,
                    limits,
                    Arc::new(ehrchain_api::serve::Plain),
                    connections,
                ));
            }
        }
        let (result, index, _) = futures::future::select_all(handles).await;
        tracing::error!(index, ?result, "a validator task stopped; shutting down");
        std::process::exit(1);
    });
    Ok(())
}

/// Read the API's certificate and key again at every SIGHUP; a bad file keeps the old ones.
async fn reload_on_sighup(tls: Arc<ehrchain_api::serve::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificate reload needs a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("API certificate reloaded"),
            Err(error) => {
                tracing::error!(%error, "API certificate not reloaded; the old one stays")
            }
        }
    }
}

/// Largest client library module a node serves.
const CLIENT_WASM_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// The browser's client library (`crates/wasm`): `EHRCHAIN_CLIENT_WASM`, else beside the
/// `ehrchain` binary, else where cargo builds it next to that binary's target directory.
fn client_wasm() -> Option<Vec<u8>> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let candidates = std::env::var_os("EHRCHAIN_CLIENT_WASM")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([
            dir.join("ehrchain_wasm.wasm"),
            dir.join("../wasm32-unknown-unknown/wasm/ehrchain_wasm.wasm"),
        ]);
    for path in candidates {
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= CLIENT_WASM_BYTES_MAX)
            && let Ok(bytes) = std::fs::read(&path)
        {
            tracing::info!(path = %path.display(), "serving the client library to browsers");
            return Some(bytes);
        }
    }
    None
}
