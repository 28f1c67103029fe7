//! `ehrchain`: the command-line interface for every operation on the chain.

/// mimalloc instead of glibc's allocator: under read load a node spent a tenth of its CPU in
/// glibc's malloc and free (arena locks, consolidation), see docs/DEPENDENCIES.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ehrchain_cli::{
    access, apps, backup, client, config, dev, network, node, records, tls, verify,
};
use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(
    name = "ehrchain",
    version,
    about = "A consortium blockchain for electronic health records"
)]
struct Cli {
    /// PEM file of the certificate authority to trust for HTTPS (a local network's
    /// `tls/ca.pem`); also read from EHRCHAIN_CA. Without it, the public web roots.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up a network: keys, genesis and one config per validator.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Run one validator with its HTTP API.
    ///
    /// Example: ehrchain node --config net/node-0/config.toml
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole local network on loopback until Ctrl-C.
    ///
    /// Example: ehrchain dev --validators 4 --dir .dev
    Dev {
        #[arg(long, default_value_t = 4)]
        validators: usize,
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// First p2p port; validator i listens on this + i.
        #[arg(long, default_value_t = 30_300)]
        p2p_port: u16,
        /// First API port; validator i serves on this + i.
        #[arg(long, default_value_t = 8_700)]
        api_port: u16,
    },
    /// Re-check a stored chain from genesis: hash links, Merkle roots, state roots,
    /// finalization and transaction signatures. Exits 0 if intact, 2 naming the first bad block.
    ///
    /// Example: ehrchain verify --data-dir .dev/node-0/data
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Copy a running node's own data (block log, record blobs, custody keys, access-log
    /// journal, its key and config) into a new directory, verify the copy and write its
    /// manifest.
    ///
    /// Example: ehrchain backup --config net/node-0/config.toml --out /backups/node-0-2026-12-01
    Backup {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup against its manifest and put it into an empty node directory; start the
    /// node there and it catches up from its peers.
    ///
    /// Example: ehrchain restore --from /backups/node-0-2026-12-01 --dir net/node-0
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a node's chain status as JSON.
    ///
    /// Example: ehrchain status --api https://127.0.0.1:8700 --key .dev/node-0/validator.key
    Status {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
    },
    /// Make a new Ed25519 key file (mode 0600) and print its public key.
    ///
    /// Example: ehrchain keygen --out alice.key
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Submit transactions.
    Tx {
        #[command(subcommand)]
        command: client::TxCommand,
    },
    /// Fetch and check inclusion proofs.
    Proof {
        #[command(subcommand)]
        command: client::ProofCommand,
    },
    /// Write, read and check encrypted FHIR records.
    Record {
        #[command(subcommand)]
        command: records::RecordCommand,
    },
    /// Register patients, show them, and erase their records.
    Patient {
        #[command(subcommand)]
        command: records::PatientCommand,
    },
    /// Enrol clinicians, appoint guardians and show identities.
    Identity {
        #[command(subcommand)]
        command: records::IdentityCommand,
    },
    /// Grant, revoke and list a patient's consents.
    Consent {
        #[command(subcommand)]
        command: access::ConsentCommand,
    },
    /// The access trail and the supervision findings.
    Access {
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    Breakglass(access::BreakGlassArgs),
    /// The FHIR API as an identity (it logs in with its key first): search, read, create,
    /// update, history, Bundles, $everything, Consent, AuditEvent, Provenance.
    Fhir {
        #[command(subcommand)]
        command: client::FhirCommand,
    },
    /// SMART Backend Services login: a bearer token for the FHIR API.
    Auth {
        #[command(subcommand)]
        command: client::AuthCommand,
    },
    /// Consortium governance: members, auditors, proposals and votes.
    Governance {
        #[command(subcommand)]
        command: access::GovernanceCommand,
    },
    /// SMART apps an institution registers on chain.
    App {
        #[command(subcommand)]
        command: apps::AppCommand,
    },
    /// Passkeys: one-time enrolment codes for the people this node holds keys for.
    Passkey {
        #[command(subcommand)]
        command: apps::PasskeyCommand,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Write validator keys, genesis.json and DIR/node-<i>/config.toml.
    ///
    /// Example: ehrchain network init --validators 4 --dir net
    Init {
        #[arg(long, default_value_t = 4)]
        validators: usize,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        chain_id: u64,
        #[arg(long, default_value_t = 30_300)]
        p2p_port: u16,
        #[arg(long, default_value_t = 8_700)]
        api_port: u16,
        /// Blocks per consensus epoch: a validator-set change voted by governance takes
        /// effect at the first block of the next epoch.
        #[arg(long, default_value_t = 1_000)]
        epoch_blocks: u64,
        /// Longest an idle chain goes without a block, in ms (0: a block as often as
        /// consensus can, as before).
        #[arg(long, default_value_t = ehrchain_types::genesis::HEARTBEAT_MS)]
        heartbeat_ms: u64,
        /// Serve the APIs over plain HTTP (no local CA, no certificates): only behind a
        /// TLS terminator of your own.
        #[arg(long)]
        plain_http: bool,
    },
    /// Prepare a node for an institution that is to become a member: a key and a config
    /// beside the network's genesis. Prints the `governance propose` a member runs to admit it.
    ///
    /// Example: ehrchain network join --genesis net/genesis.json --dir net/node-4 --name member-4 --p2p-listen 127.0.0.1:30304 --api-listen 127.0.0.1:8704
    Join {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        /// The institution's name (never PHI).
        #[arg(long)]
        name: String,
        /// Where its validator listens for peers; members dial this address.
        #[arg(long)]
        p2p_listen: std::net::SocketAddr,
        #[arg(long)]
        api_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(ca) = cli
        .ca
        .clone()
        .or_else(|| std::env::var_os("EHRCHAIN_CA").map(PathBuf::from))
    {
        client::trust_ca(&ca)?;
    }
    match cli.command {
        Command::Network {
            command:
                NetworkCommand::Init {
                    validators,
                    dir,
                    chain_id,
                    p2p_port,
                    api_port,
                    epoch_blocks,
                    heartbeat_ms,
                    plain_http,
                },
        } => {
            let nodes = network::init(&network::InitOptions {
                validators,
                dir: dir.clone(),
                chain_id,
                p2p_port,
                api_port,
                epoch_blocks,
                heartbeat_ms,
                tls: !plain_http,
            })?;
            if !plain_http {
                eprintln!(
                    "APIs speak HTTPS with certificates from the network's CA; clients trust it with\n  export EHRCHAIN_CA={}",
                    std::path::absolute(tls::ca_path(&dir))?.display()
                );
            }
            for node in nodes {
                println!("{}", node.display());
            }
        }
        Command::Network {
            command:
                NetworkCommand::Join {
                    genesis,
                    dir,
                    name,
                    p2p_listen,
                    api_listen,
                },
        } => {
            let joined = network::join(&genesis, &dir, &name, p2p_listen, api_listen)?;
            println!("config:         {}", joined.config.display());
            println!("public key:     {}", joined.public_key);
            println!("encryption key: {}", joined.encryption_key);
            println!("p2p address:    {}", joined.p2p_address);
            println!(
                "Start it (ehrchain node --config {}) and have a member propose its admission:",
                joined.config.display()
            );
            println!(
                "  ehrchain governance propose --api <member API> --key <member key> --add-member {} --encryption-key {} --p2p-address {}",
                joined.public_key, joined.encryption_key, joined.p2p_address
            );
        }
        Command::Node { config } => node::run(&config)?,
        Command::Dev {
            validators,
            dir,
            p2p_port,
            api_port,
        } => dev::run(validators, &dir, p2p_port, api_port)?,
        Command::Backup { config, out } => {
            let progress = std::io::stderr().is_terminal();
            let manifest = backup::backup(&config, &out, progress)?;
            let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
            println!(
                "backed up {} to {}: height {}, {} blobs, {} journal entries, {} files, {bytes} bytes; verified",
                manifest.node,
                out.display(),
                manifest.height,
                manifest.blobs,
                manifest.journal_entries,
                manifest.files.len()
            );
        }
        Command::Restore { from, dir } => {
            let progress = std::io::stderr().is_terminal();
            let manifest = backup::restore(&from, &dir, progress)?;
            println!(
                "restored {} at height {} into {}; start it with: ehrchain node --config {}",
                manifest.node,
                manifest.height,
                dir.display(),
                dir.join("config.toml").display()
            );
        }
        Command::Verify { data_dir } => {
            let progress = std::io::stderr().is_terminal();
            match verify::verify(&data_dir, progress)? {
                Ok(report) => {
                    println!(
                        "chain intact: {} blocks, {} transactions verified in {:.2} s ({:.0} transactions/s)",
                        report.blocks,
                        report.transactions,
                        report.seconds,
                        report.transactions as f64 / report.seconds.max(1e-9)
                    );
                }
                Err(damage) => {
                    println!("block {} is damaged: {}", damage.height, damage.reason);
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Command::Status { api, key } => {
            client::use_key(&api, &key)?;
            let status = client::get_json(&format!("{}/chain/status", api.trim_end_matches('/')))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Keygen { out } => {
            let seed = config::random_seed();
            config::write_key(&out, &seed)?;
            let key = ehrchain_types::private_key_from_seed(&seed).expect("32-byte seed");
            println!("{}", ehrchain_chain::application::key_public(&key));
        }
        Command::Tx { command } => return client::tx(command),
        Command::Proof { command } => return client::proof(command),
        Command::Record { command } => return records::record(command),
        Command::Patient { command } => return records::patient(command),
        Command::Identity { command } => return records::identity(command),
        Command::Consent { command } => return access::consent(command),
        Command::Access { command } => return access::access(command),
        Command::Breakglass(args) => return access::break_glass(args),
        Command::Auth { command } => return client::auth(command),
        Command::Fhir { command } => return client::fhir(command),
        Command::Governance { command } => return access::governance(command),
        Command::App { command } => apps::app(command)?,
        Command::Passkey { command } => apps::passkey(command)?,
    }
    Ok(ExitCode::SUCCESS)
}
