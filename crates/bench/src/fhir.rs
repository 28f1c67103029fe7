//! FHIR API benchmark: creates (validate, seal, wrap, store, anchor, commit) and consented
//! reads (each decided by the gateway, journalled in its access log before the record is
//! opened, and put on chain in the node's next log batch) through `/fhir` on a fresh local
//! network, closed loop, one token per client. After the reads it waits until the chain's
//! trail holds every one of them, and says how long that took.
//!
//! Population: every institution enrols writer and reader clinicians (their decryption keys
//! in the node's custody directory, as `ehrchain dev` does) and registers custodial patients.
//! Writers create Observations for their institution's patients at their own node. Each
//! patient then logs in and grants the next institution (`Organization/…`) read access, and
//! that institution's reader clinicians read the records through their own node.

use crate::chain::percentile;
use anyhow::{Context, Result, bail, ensure};
use ehrchain_cli::{client::agent, records::Signer};
use ehrchain_types::{Payload, TransactionBody};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Records to create through `POST /fhir/Observation`.
    #[arg(long, default_value_t = 4_000)]
    creates: usize,
    /// Reads through `GET /fhir/Observation/{id}`.
    #[arg(long, default_value_t = 20_000)]
    reads: usize,
    /// Clients that create, each with its own token (spread over the nodes).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Clients that read (default: as many as create). The loop is closed, so latency is
    /// clients over throughput: a p99 of 50 ms at 5,000 reads/s allows at most ~250.
    #[arg(long)]
    read_clients: Option<usize>,
    /// Patients per institution.
    #[arg(long, default_value_t = 8)]
    patients: usize,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 31_500)]
    p2p_port: u16,
    #[arg(long, default_value_t = 9_900)]
    api_port: u16,
}

pub fn run(args: Args) -> Result<()> {
    crate::chain::with_network(
        args.validators,
        args.dir.clone(),
        "bench-fhir",
        (
            args.p2p_port,
            args.api_port,
            ehrchain_types::genesis::HEARTBEAT_MS,
        ),
        |apis, dir| drive(&args, apis, dir),
    )
}

struct Identity {
    node: usize,
    seed: [u8; 32],
}

fn key_file(dir: &Path, name: &str, seed: &[u8; 32]) -> Result<PathBuf> {
    let path = dir.join("bench-identities").join(format!("{name}.key"));
    std::fs::create_dir_all(path.parent().expect("parent"))?;
    let _ = std::fs::remove_file(&path);
    ehrchain_cli::config::write_key(&path, seed)?;
    Ok(path)
}

fn token(api: &str, dir: &Path, name: &str, seed: &[u8; 32]) -> Result<String> {
    ehrchain_cli::client::login(api, &key_file(dir, name, seed)?)
}

/// Enrol clinicians (writers and readers per institution) and register custodial patients.
/// Writers, readers, and patients as (home node, id, custodial seed).
type Population = (
    Vec<Identity>,
    Vec<Identity>,
    Vec<(usize, [u8; 16], [u8; 32])>,
);

fn populate(args: &Args, apis: &[String], dir: &Path) -> Result<Population> {
    let n = apis.len();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut patients = Vec::new();
    let mut transactions = Vec::new();
    for node in 0..n {
        let institution =
            ehrchain_cli::records::load_signer(&dir.join(format!("node-{node}/validator.key")))?;
        let custody = ehrchain_cli::dev::custody_dir(dir, node)?;
        let mut nonce = 0;
        let mut sign = |payload: Payload| {
            let tx = TransactionBody {
                chain_id: 1,
                signer: institution.public.clone(),
                nonce,
                payload,
            }
            .sign(&institution.key);
            nonce += 1;
            tx
        };
        let read_clients = args.read_clients.unwrap_or(args.clients);
        let writing = (0..args.clients).filter(|c| c % n == node).count();
        let reading = (0..read_clients).filter(|c| c % n == node).count();
        for reader in std::iter::repeat_n(false, writing).chain(std::iter::repeat_n(true, reading))
        {
            let seed = ehrchain_cli::config::random_seed();
            let clinician = Signer::from_seed(&seed);
            ehrchain_api::gateway::write_secret(
                &custody.join(format!("{}.enc", clinician.public)),
                &clinician.encryption.secret_bytes(),
            )?;
            transactions.push((
                node,
                sign(Payload::EnrollClinician {
                    clinician: clinician.public.clone(),
                    encryption_key: clinician.encryption.public().0,
                }),
            ));
            let list = if reader { &mut readers } else { &mut writers };
            list.push(Identity { node, seed });
        }
        for _ in 0..args.patients {
            let seed = ehrchain_cli::config::random_seed();
            let patient = Signer::from_seed(&seed);
            let id: [u8; 16] = ehrchain_cli::config::random_seed()[..16]
                .try_into()
                .expect("16");
            ehrchain_api::gateway::write_secret(
                &custody.join(format!("{}.key", hex::encode(id))),
                &seed,
            )?;
            transactions.push((
                node,
                sign(Payload::RegisterPatient {
                    patient: id,
                    key: patient.public.clone(),
                    encryption_key: patient.encryption.public().0,
                }),
            ));
            patients.push((node, id, seed));
        }
    }
    for (node, tx) in &transactions {
        ehrchain_cli::client::post_bytes(
            &format!("{}/chain/transactions", apis[*node]),
            tx.bytes().to_vec(),
        )?;
    }
    let session =
        ehrchain_cli::records::Session::open(ehrchain_cli::client::Http::AS_CURRENT, &apis[0])?;
    for (_, tx) in &transactions {
        session.wait(&hex::encode(tx.id()))?;
    }
    Ok((writers, readers, patients))
}

/// Run `total` requests from `clients.len()` concurrent clients, closed loop (each client sends
/// its next request when the last is answered): `request` makes request `i` of client `c`.
/// The clients are tasks on one thread with async HTTP, so that the load generator takes as
/// little as possible of the CPU the nodes share (a thread per client spent a good part of
/// it switching between hundreds of blocked threads).
fn closed_loop(
    label: &str,
    clients: &[(String, String)],
    total: usize,
    request: impl AsyncFn(&reqwest::Client, &str, &str, usize, usize) -> Result<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients.len())
        .timeout(Duration::from_secs(60))
        .build()?;
    let per_client = total.div_ceil(clients.len());
    let started = Instant::now();
    let results = runtime.block_on(futures::future::join_all(clients.iter().enumerate().map(
        |(c, (api, token))| {
            let (client, request) = (&client, &request);
            async move {
                let mut mine = Vec::with_capacity(per_client);
                let mut failed = Vec::new();
                for i in 0..per_client {
                    let at = Instant::now();
                    match request(client, api, token, c, i).await {
                        Ok(()) => mine.push(at.elapsed()),
                        Err(error) => failed.push(error.to_string()),
                    }
                }
                (mine, failed)
            }
        },
    )));
    let mut latencies = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for (mine, failed) in results {
        latencies.extend(mine);
        errors.extend(failed);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "{label}: {} ok, {} failed in {:.1} s: {:.0}/s; latency p50 {} ms, p99 {} ms ({} clients)",
        latencies.len(),
        errors.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        clients.len(),
    );
    if let Some(first) = errors.first() {
        bail!("{label}: {} requests failed; first: {first}", errors.len());
    }
    Ok(())
}

fn expect(status: u16, want: u16, mut response: ureq::http::Response<ureq::Body>) -> Result<Value> {
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    expect_json(status, want, body)
}

async fn expect_async(want: u16, response: reqwest::Response) -> Result<Value> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    expect_json(
        status,
        want,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn expect_json(status: u16, want: u16, body: Value) -> Result<Value> {
    ensure!(
        status == want,
        "HTTP {status}: {}",
        body["issue"][0]["diagnostics"]
    );
    Ok(body)
}

fn drive(args: &Args, apis: &[String], dir: &Path) -> Result<()> {
    let n = apis.len();
    ensure!(n >= 2, "the read benchmark needs two institutions");
    eprintln!("enrolling clinicians and registering patients...");
    let (writers, readers, patients) = populate(args, apis, dir)?;
    let writer_tokens: Vec<(String, String)> = writers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Ok((
                apis[w.node].clone(),
                token(&apis[w.node], dir, &format!("w{i}"), &w.seed)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut generator = ehrchain_synth::Generator::new(11);
    let bodies: Vec<Vec<(usize, Vec<u8>)>> = (0..n)
        .map(|node| {
            let mine: Vec<&(usize, [u8; 16], [u8; 32])> =
                patients.iter().filter(|p| p.0 == node).collect();
            (0..64)
                .map(|i| {
                    let (_, id, _) = mine[i % mine.len()];
                    let value = generator.vital_sign(&hex::encode(id));
                    (i, serde_json::to_vec(&value).expect("json"))
                })
                .collect()
        })
        .collect();
    let created: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    eprintln!("creating {} Observations through /fhir...", args.creates);
    closed_loop(
        "FHIR creates",
        &writer_tokens,
        args.creates,
        async |client, api, token, c, i| {
            let node = writers[c].node;
            let (_, body) = &bodies[node][(c + i) % bodies[node].len()];
            let response = client
                .post(format!("{api}/fhir/Observation"))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/fhir+json")
                .body(body.clone())
                .send()
                .await?;
            let body = expect_async(201, response).await?;
            let id = body["id"].as_str().context("no id")?.to_string();
            created.lock().unwrap().push((node, id));
            Ok(())
        },
    )?;
    let created = created.into_inner().unwrap();

    eprintln!("each patient grants the next institution read access...");
    for (i, (node, id, seed)) in patients.iter().enumerate() {
        let grantee = ehrchain_cli::records::load_signer(
            &dir.join(format!("node-{}/validator.key", (node + 1) % n)),
        )?;
        let token = token(&apis[*node], dir, &format!("p{i}"), seed)?;
        let consent = json!({
            "resourceType": "Consent",
            "status": "active",
            "patient": {"reference": format!("Patient/{}", hex::encode(id))},
            "provision": {
                "actor": [{"reference": {"reference": format!("Organization/{}", grantee.public)}}],
                "action": [{"coding": [{"code": "access"}]}],
            },
        });
        let response = agent()
            .post(format!("{}/fhir/Consent", apis[*node]))
            .header("Authorization", format!("Bearer {token}"))
            .send_json(&consent)?;
        let status = response.status().as_u16();
        expect(status, 201, response)?;
    }
    // The grantee institutions' nodes fetch the envelopes; their institution key opens them.
    let reader_tokens: Vec<(String, String)> = readers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok((
                apis[r.node].clone(),
                token(&apis[r.node], dir, &format!("r{i}"), &r.seed)?,
            ))
        })
        .collect::<Result<_>>()?;
    let readable: Vec<Vec<String>> = (0..n)
        .map(|node| {
            created
                .iter()
                .filter(|(home, _)| (home + 1) % n == node)
                .map(|(_, id)| id.clone())
                .collect()
        })
        .collect();
    // Warm-up: wait until every node holds what it will read.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (node, ids) in readable.iter().enumerate() {
        let (api, token) = reader_tokens
            .iter()
            .find(|(api, _)| api == &apis[node])
            .context("a reader per node")?;
        let last = ids.last().context("records to read")?;
        loop {
            let response = agent()
                .get(format!("{api}/fhir/Observation/{last}"))
                .header("Authorization", format!("Bearer {token}"))
                .call()?;
            if response.status().as_u16() == 200 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {node} never held the records to read"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let readers = Arc::new(readers);
    let events = || -> Result<u64> {
        let status = ehrchain_cli::client::get_json(&format!("{}/chain/status", apis[0]))?;
        status["access_events"].as_u64().context("no access_events")
    };
    let before = events()?;
    eprintln!("reading {} times through /fhir...", args.reads);
    closed_loop(
        "FHIR consented reads",
        &reader_tokens,
        args.reads,
        async |client, api, token, c, i| {
            let ids = &readable[readers[c].node];
            let id = &ids[(c * 7 + i) % ids.len()];
            // A 503 ("retry shortly": keys shared a moment ago still on their way to this
            // node) is retried as a FHIR client would; its latency counts.
            let mut retries = 0;
            loop {
                let response = client
                    .get(format!("{api}/fhir/Observation/{id}"))
                    .header("Authorization", format!("Bearer {token}"))
                    .send()
                    .await?;
                if response.status().as_u16() == 503 && retries < 20 {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                // The body is read whole but not parsed: the load generator shares the
                // nodes' two cores, and parsing every answer cost it a tenth of its CPU.
                let status = response.status().as_u16();
                let body = response.bytes().await?;
                if status != 200 {
                    expect_json(
                        status,
                        200,
                        serde_json::from_slice(&body).unwrap_or(Value::Null),
                    )?;
                }
                ensure!(body.starts_with(b"{"), "a read answered no resource");
                return Ok(());
            }
        },
    )?;
    // Every answered read must reach the trail: wait for the access logs to commit.
    let answered = Instant::now();
    loop {
        let recorded = events()? - before;
        if recorded >= args.reads as u64 {
            println!(
                "all {} reads on the chain's trail {:.2} s after the last answer",
                args.reads,
                answered.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        ensure!(
            answered.elapsed() < Duration::from_secs(120),
            "only {recorded} of {} reads reached the trail",
            args.reads
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
