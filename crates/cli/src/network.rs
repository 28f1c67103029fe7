//! `ehrchain network init`: keys, genesis and per-node configs for a new network.
//! `ehrchain network join`: the key and config of an institution that governance is to admit.

use crate::config::{NodeConfig, random_seed, write_key};
use anyhow::{Context, Result, bail};
use ehrchain_types::{
    Genesis,
    genesis::{GenesisAuditor, GenesisValidator},
    limits::VALIDATORS_MAX,
    private_key_from_seed,
};
use std::path::PathBuf;

pub struct InitOptions {
    pub validators: usize,
    pub dir: PathBuf,
    pub chain_id: u64,
    pub p2p_port: u16,
    pub api_port: u16,
    /// Blocks per consensus epoch (validator-set changes take effect at epoch starts).
    pub epoch_blocks: u64,
    /// Longest an idle chain goes without a block (`Rules::heartbeat_ms`).
    pub heartbeat_ms: u64,
    /// Make a local CA and a certificate per node, so that every API speaks HTTPS.
    pub tls: bool,
}

/// Give the node whose config is `config` a certificate from the network's local CA for the
/// loopback names of its API, and name it in the config's `[tls]`.
fn with_local_tls(
    network_dir: &std::path::Path,
    node_dir: &std::path::Path,
    config: &mut NodeConfig,
) -> Result<()> {
    let hosts = ["localhost".to_string(), config.api_listen.ip().to_string()];
    crate::tls::issue(network_dir, &hosts, &node_dir.join("tls"))?;
    config.tls = Some(crate::config::TlsConfig {
        cert: "tls/cert.pem".into(),
        key: "tls/key.pem".into(),
    });
    Ok(())
}

/// A node's config: its key `validator.key` and data `data/` beside the config file.
fn node_config(
    name: &str,
    genesis: PathBuf,
    p2p_listen: std::net::SocketAddr,
    api_listen: std::net::SocketAddr,
) -> NodeConfig {
    NodeConfig {
        name: name.to_string(),
        genesis,
        key_file: "validator.key".into(),
        data_dir: "data".into(),
        p2p_listen,
        api_listen,
        block_transactions_max: 8_192,
        mempool_transactions_max: ehrchain_types::limits::MEMPOOL_TRANSACTIONS_MAX,
        log_format: "pretty".into(),
        blob_store: None,
        api: Default::default(),
        tls: None,
    }
}

/// Write the network; returns the config path of each node.
pub fn init(options: &InitOptions) -> Result<Vec<PathBuf>> {
    if options.epoch_blocks == 0 {
        bail!("--epoch-blocks must be at least 1");
    }
    if options.validators == 0 || options.validators > VALIDATORS_MAX {
        bail!("--validators must be between 1 and {VALIDATORS_MAX}");
    }
    let dir = &options.dir;
    if dir.join("genesis.json").exists() {
        bail!(
            "{} already holds a network; choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if options.tls {
        crate::tls::make_ca(dir, &format!("ehrchain network {}", options.chain_id))?;
    }
    let mut validators = Vec::new();
    let mut configs = Vec::new();
    for index in 0..options.validators {
        let node_dir = dir.join(format!("node-{index}"));
        std::fs::create_dir_all(&node_dir)?;
        let seed = random_seed();
        write_key(&node_dir.join("validator.key"), &seed)?;
        let key = private_key_from_seed(&seed).expect("32-byte seed");
        let p2p_port = options.p2p_port + index as u16;
        let api_port = options.api_port + index as u16;
        validators.push(GenesisValidator {
            name: format!("member-{index}"),
            public_key: ehrchain_chain::application::key_public(&key).to_string(),
            p2p_address: format!("127.0.0.1:{p2p_port}"),
            encryption_key: ehrchain_crypto::EncryptionKey::from_seed(&seed)
                .public()
                .to_hex(),
        });
        let mut config = node_config(
            &format!("member-{index}"),
            "../genesis.json".into(),
            format!("127.0.0.1:{p2p_port}").parse()?,
            format!("127.0.0.1:{api_port}").parse()?,
        );
        if options.tls {
            with_local_tls(dir, &node_dir, &mut config)?;
        }
        let path = node_dir.join("config.toml");
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        configs.push(path);
    }
    // One auditor, appointed by the consortium at genesis; its key stays with the network's
    // operator until it is handed to the audit office.
    let auditor_seed = random_seed();
    write_key(&dir.join("auditor.key"), &auditor_seed)?;
    let auditor = private_key_from_seed(&auditor_seed).expect("32-byte seed");
    let genesis = Genesis {
        chain_id: options.chain_id,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
        validators,
        auditors: vec![GenesisAuditor {
            name: "consortium audit office".into(),
            public_key: ehrchain_chain::application::key_public(&auditor).to_string(),
        }],
        rules: ehrchain_types::genesis::Rules {
            epoch_blocks: options.epoch_blocks,
            heartbeat_ms: options.heartbeat_ms,
            ..Default::default()
        },
    };
    std::fs::write(
        dir.join("genesis.json"),
        serde_json::to_string_pretty(&genesis)?,
    )?;
    Ok(configs)
}

/// What a new member's operator gives the consortium so that it can vote the member in.
pub struct Joined {
    pub config: PathBuf,
    pub public_key: String,
    pub encryption_key: String,
    pub p2p_address: std::net::SocketAddr,
}

/// Write a key and a config for a node of an institution not yet a member. Started, the node
/// follows the chain once the members track it (when the admission passes) and votes from the
/// epoch the admission takes effect in.
pub fn join(
    genesis: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    p2p_listen: std::net::SocketAddr,
    api_listen: std::net::SocketAddr,
) -> Result<Joined> {
    crate::config::load_genesis(genesis)?;
    if dir.join("validator.key").exists() {
        bail!(
            "{} already holds a node; choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let genesis = std::path::absolute(genesis)?;
    let seed = random_seed();
    write_key(&dir.join("validator.key"), &seed)?;
    let key = private_key_from_seed(&seed).expect("32-byte seed");
    let mut config = node_config(name, genesis.clone(), p2p_listen, api_listen);
    // A network made by `network init` has a local CA beside its genesis: it issues this
    // node's certificate too. Elsewhere the operator adds `[tls]` with their own.
    let network_dir = genesis.parent().unwrap_or(std::path::Path::new("."));
    if crate::tls::ca_path(network_dir).exists() {
        with_local_tls(network_dir, dir, &mut config)?;
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string_pretty(&config)?)?;
    Ok(Joined {
        config: path,
        public_key: ehrchain_chain::application::key_public(&key).to_string(),
        encryption_key: ehrchain_crypto::EncryptionKey::from_seed(&seed)
            .public()
            .to_hex(),
        p2p_address: p2p_listen,
    })
}
