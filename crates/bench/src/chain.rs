//! `ehrchain-bench chain`: committed signed transactions per second on a local network, with
//! commit latency measured per transaction from submission to its block being finalized.

use anyhow::{Context, Result, bail};
use commonware_cryptography::Signer as _;
use ehrchain_cli::client::get_json;
use ehrchain_types::{Digest, Payload, PrivateKey, Transaction, TransactionBody, sha256};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Transactions to submit in total.
    #[arg(long, default_value_t = 100_000)]
    transactions: usize,
    /// Offered load, transactions per second, spread over all validators.
    #[arg(long, default_value_t = 12_000)]
    rate: usize,
    /// Distinct signing clients (each signs with consecutive nonces).
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Network directory; a fresh one under the system temp directory by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 31_300)]
    p2p_port: u16,
    #[arg(long, default_value_t = 9_700)]
    api_port: u16,
    /// Genesis heartbeat of the bench network, ms (0: a block as often as consensus can).
    #[arg(long, default_value_t = ehrchain_types::genesis::HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Seconds to watch the network idle after the load (blocks/s, CPU and disk per node).
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn client_keys(args: &Args) -> Vec<PrivateKey> {
    (0..args.clients)
        .map(|i| PrivateKey::from_seed(900_000 + i as u64))
        .collect()
}

/// Enrol the load's signers as clinicians of the first institution: the mempool admits only
/// signers the chain knows.
fn enroll_clients(args: &Args, apis: &[String], dir: &std::path::Path) -> Result<()> {
    let institution =
        ehrchain_cli::records::load_signer(&dir.join("node-0").join("validator.key"))?;
    let session =
        ehrchain_cli::records::Session::open(ehrchain_cli::client::Http::AS_CURRENT, &apis[0])?;
    let first = session.nonce(&institution.public)?;
    let transactions: Vec<Transaction> = client_keys(args)
        .iter()
        .enumerate()
        .map(|(i, key)| {
            TransactionBody {
                chain_id: session.chain_id,
                signer: institution.public.clone(),
                nonce: first + i as u64,
                payload: Payload::EnrollClinician {
                    clinician: key.public_key(),
                    encryption_key: sha256(&[key.public_key().as_ref()]).0,
                },
            }
            .sign(&institution.key)
        })
        .collect();
    for chunk in transactions.chunks(1_000) {
        ehrchain_cli::client::post_bytes(
            &format!("{}/chain/transactions/batch", apis[0]),
            ehrchain_chain::engine::encode_batch(chunk),
        )?;
    }
    if let Some(last) = transactions.last() {
        session.wait(&hex::encode(last.id()))?;
    }
    Ok(())
}

fn sign_all(args: &Args, chain_id: u64) -> Vec<Transaction> {
    let keys = client_keys(args);
    let run = ehrchain_cli::config::random_seed();
    let per_thread = args.transactions.div_ceil(2);
    let keys = Arc::new(keys);
    let handles: Vec<_> = (0..2)
        .map(|thread| {
            let keys = keys.clone();
            let total = args.transactions;
            std::thread::spawn(move || {
                let start = thread * per_thread;
                let end = (start + per_thread).min(total);
                (start..end)
                    .map(|i| {
                        let key = &keys[i % keys.len()];
                        TransactionBody {
                            chain_id,
                            signer: ehrchain_chain::application::key_public(key),
                            nonce: (i / keys.len()) as u64,
                            payload: Payload::Anchor {
                                label: 0,
                                digest: sha256(&[&run, &(i as u64).to_be_bytes()]),
                            },
                        }
                        .sign(key)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Transaction> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("signer thread"))
        .collect();
    // Submission order: by nonce round, so every client's nonces arrive in order.
    all.sort_by_key(|tx| tx.body.nonce);
    all
}

pub fn run(args: Args) -> Result<()> {
    with_network(
        args.validators,
        args.dir.clone(),
        "bench",
        (args.p2p_port, args.api_port, args.heartbeat_ms),
        |apis, dir| {
            enroll_clients(&args, apis, dir)?;
            drive(&args, apis)?;
            idle(&args, apis, dir)
        },
    )
}

/// Start a fresh local network (in `dir`, or a temporary directory removed afterwards), wait
/// for its first block, run `work` with the API URLs and the network directory, then stop it.
pub fn with_network(
    validators: usize,
    dir: Option<std::path::PathBuf>,
    name: &str,
    (p2p_port, api_port, heartbeat_ms): (u16, u16, u64),
    work: impl FnOnce(&[String], &std::path::Path) -> Result<()>,
) -> Result<()> {
    let keep = dir.is_some();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ehrchain-{name}-{}", std::process::id()))
    });
    let configs = ehrchain_cli::network::init(&ehrchain_cli::network::InitOptions {
        validators,
        dir: dir.clone(),
        chain_id: 1,
        p2p_port,
        api_port,
        epoch_blocks: ehrchain_types::genesis::Rules::default().epoch_blocks,
        heartbeat_ms,
        // The benchmarks measure the chain, as the peers they are compared with run: plain
        // HTTP on loopback.
        tls: false,
    })?;
    let apis = ehrchain_cli::dev::api_urls(&configs)?;
    let mut children = ehrchain_cli::dev::spawn_nodes(&node_binary()?, &configs, &dir)?;
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    std::fs::write(dir.join("pids"), pids.join(" "))?;
    // The load generator acts as the first institution towards every node.
    ehrchain_cli::client::use_key(&apis[0], &dir.join("node-0").join("validator.key"))?;
    let result = ehrchain_cli::dev::wait_ready(&apis).and_then(|()| work(&apis, &dir));
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The `ehrchain` binary the validators run: `EHRCHAIN_BIN`, or the one built beside this
/// benchmark (`cargo build --release -p ehrchain-cli -p ehrchain-bench` builds both).
fn node_binary() -> Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("EHRCHAIN_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("cannot find the benchmark binary")?;
    let beside = exe.with_file_name("ehrchain");
    if !beside.exists() {
        bail!(
            "no ehrchain binary at {}: build it with `cargo build --release -p ehrchain-cli`, \
             or set EHRCHAIN_BIN",
            beside.display()
        );
    }
    Ok(beside)
}

fn drive(args: &Args, apis: &[String]) -> Result<()> {
    eprintln!(
        "signing {} transactions from {} clients...",
        args.transactions, args.clients
    );
    let transactions = sign_all(args, 1);
    let ids: Vec<Digest> = transactions.iter().map(Transaction::id).collect();
    let submitted: Arc<Mutex<HashMap<Digest, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(ids.len())));
    let start_height = get_json(&format!("{}/chain/status", apis[0]))?["height"]
        .as_u64()
        .context("no height")?;

    // Submitter: open loop at the offered rate, batches of up to 1,000 round-robin over nodes.
    let submitter = {
        let submitted = submitted.clone();
        let apis = apis.to_vec();
        let rate = args.rate.max(1);
        std::thread::spawn(move || -> Result<usize> {
            let agent: ureq::Agent = ehrchain_cli::client::agent_config().build().into();
            let tick = Duration::from_millis(50);
            let per_tick = (rate / 20).max(1);
            let began = Instant::now();
            let mut rejected = 0usize;
            for (round, chunk) in transactions.chunks(per_tick).enumerate() {
                let due = began + tick * round as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                for (part, batch) in chunk.chunks(1_000).enumerate() {
                    let api = &apis[(round + part) % apis.len()];
                    let body = ehrchain_chain::engine::encode_batch(batch);
                    {
                        let now = Instant::now();
                        let mut map = submitted.lock().expect("lock");
                        for tx in batch {
                            map.insert(tx.id(), now);
                        }
                    }
                    let url = format!("{api}/chain/transactions/batch");
                    let mut response = agent
                        .post(&url)
                        .header(
                            "Authorization",
                            ehrchain_cli::client::bearer(&url)?.unwrap_or_default(),
                        )
                        .header("content-type", "application/octet-stream")
                        .send(&body[..])?;
                    let answer: serde_json::Value = response.body_mut().read_json()?;
                    rejected += batch.len() - answer["accepted"].as_u64().unwrap_or(0) as usize;
                }
            }
            Ok(rejected)
        })
    };

    let followed = follow(&apis[0], start_height, ids.len(), &submitted)?;
    let (mut latencies, began, last_commit, next) = (
        followed.latencies,
        followed.began,
        followed.last_commit,
        followed.next,
    );
    let rejected = submitter.join().expect("submitter thread")?;
    let committed = latencies.len();
    latencies.sort();
    let seconds = last_commit.duration_since(began).as_secs_f64().max(1e-9);
    println!(
        "{{\"validators\":{},\"offered_rate\":{},\"submitted\":{},\"rejected\":{},\"committed\":{},\"seconds\":{:.2},\"committed_per_second\":{:.0},\"latency_ms_p50\":{},\"latency_ms_p99\":{},\"blocks\":{}}}",
        args.validators,
        args.rate,
        args.transactions,
        rejected,
        committed,
        seconds,
        committed as f64 / seconds,
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        next - start_height - 1,
    );
    Ok(())
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second.max(1.0))
}

/// Bytes under `path`, recursively.
fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Watch the network with nothing to order for `--idle-seconds`: blocks per second, each
/// node's share of a core and its data directory's growth, printed as one JSON line.
fn idle(args: &Args, apis: &[String], dir: &std::path::Path) -> Result<()> {
    if args.idle_seconds == 0 {
        return Ok(());
    }
    let pids: Vec<u32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let height = || -> Result<u64> {
        get_json(&format!("{}/chain/status", apis[0]))?["height"]
            .as_u64()
            .context("no height")
    };
    let data = |i: usize| dir.join(format!("node-{i}")).join("data");
    // Let the last blocks of the load settle first.
    std::thread::sleep(Duration::from_secs(3));
    let (h0, t0) = (height()?, Instant::now());
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let disk0: Vec<u64> = (0..apis.len()).map(|i| disk_bytes(&data(i))).collect();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let seconds = t0.elapsed().as_secs_f64();
    let blocks = height()?.saturating_sub(h0);
    let cpu: Vec<String> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, before)| {
            format!(
                "{:.2}",
                100.0 * (cpu_seconds(*p).unwrap_or(0.0) - before) / seconds
            )
        })
        .collect();
    let disk: Vec<String> = (0..apis.len())
        .map(|i| {
            let grown = disk_bytes(&data(i)) as f64 - disk0[i] as f64;
            format!("{:.0}", grown / seconds * 86_400.0)
        })
        .collect();
    println!(
        "{{\"idle_seconds\":{seconds:.1},\"idle_blocks\":{blocks},\"idle_blocks_per_second\":{:.3},\"idle_cpu_percent_per_node\":[{}],\"idle_disk_bytes_per_day_per_node\":[{}]}}",
        blocks as f64 / seconds,
        cpu.join(","),
        disk.join(","),
    );
    Ok(())
}

/// What the follower saw: per-transaction commit latencies and the span of commits.
pub struct Followed {
    pub latencies: Vec<Duration>,
    pub began: Instant,
    pub last_commit: Instant,
    /// The first height not yet read.
    pub next: u64,
}

/// Read each new block's transaction ids from `api` and time every submitted id to its
/// commit, until `expected` were seen or no block came for 30 s.
pub fn follow(
    api: &str,
    start_height: u64,
    expected: usize,
    submitted: &Mutex<HashMap<Digest, Instant>>,
) -> Result<Followed> {
    let agent: ureq::Agent = ehrchain_cli::client::agent_config().build().into();
    let mut latencies = Vec::with_capacity(expected);
    let mut next = start_height + 1;
    let began = Instant::now();
    let mut last_commit = began;
    let idle_limit = Duration::from_secs(30);
    let mut idle_since = Instant::now();
    while latencies.len() < expected {
        let height = get_json(&format!("{api}/chain/status"))?["height"]
            .as_u64()
            .unwrap_or(0);
        if height < next {
            if idle_since.elapsed() > idle_limit {
                eprintln!("no new block for {} s; stopping", idle_limit.as_secs());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        idle_since = Instant::now();
        while next <= height {
            let url = format!("{api}/chain/blocks/{next}/transactions");
            let mut response = agent
                .get(&url)
                .header(
                    "Authorization",
                    ehrchain_cli::client::bearer(&url)?.unwrap_or_default(),
                )
                .call()?;
            let bytes = response
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_vec()?;
            let now = Instant::now();
            let map = submitted.lock().expect("lock");
            for chunk in bytes.chunks_exact(32) {
                let id = Digest::from(<[u8; 32]>::try_from(chunk).expect("32 bytes"));
                if let Some(at) = map.get(&id) {
                    latencies.push(now.duration_since(*at));
                    last_commit = now;
                }
            }
            next += 1;
        }
    }
    Ok(Followed {
        latencies,
        began,
        last_commit,
        next,
    })
}
