//! `ehrchain-bench records`: FHIR records written per second through the whole path, and
//! MB/s for large documents.
//!
//! Each record is validated, sealed under a fresh data key, its key wrapped for three readers
//! (the patient, the author's institution, the author), the anchor signed, the upload sent to
//! a node (which stages it and admits the anchor), and the anchor committed. Latency runs from
//! the start of validation to the commit of the block holding the anchor. Client work happens
//! on the same 2 cores as the four validators.

use crate::chain::{Followed, follow, percentile};
use anyhow::{Context, Result};
use ehrchain_cli::{
    client::get_json,
    records::{Signer, check, prepare},
};
use ehrchain_crypto::EncryptionPublicKey;
use ehrchain_types::{Digest, Payload, Transaction, TransactionBody};
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
    /// Records to write in total.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Offered load, records per second.
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    /// Size of each record's FHIR JSON, bytes (a DocumentReference; a Binary above 64 KiB).
    #[arg(long, default_value_t = 4_096)]
    size: usize,
    /// Client threads (each writes as its own clinician).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Validate, seal and wrap every record before the clock starts, so only the nodes'
    /// share of the path (upload, stage, anchor, replicate, commit) is timed: what the
    /// consortium ingests when its clients encrypt on their own machines.
    #[arg(long)]
    presealed: bool,
    /// Distinct patients.
    #[arg(long, default_value_t = 64)]
    patients: usize,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 31_400)]
    p2p_port: u16,
    #[arg(long, default_value_t = 9_800)]
    api_port: u16,
}

pub fn run(args: Args) -> Result<()> {
    crate::chain::with_network(
        args.validators,
        args.dir.clone(),
        "bench-records",
        (
            args.p2p_port,
            args.api_port,
            ehrchain_types::genesis::HEARTBEAT_MS,
        ),
        |apis, dir| drive(&args, apis, dir),
    )
}

fn seed(tag: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&tag.to_be_bytes());
    seed[8..16].copy_from_slice(&ehrchain_cli::config::random_seed()[..8]);
    seed
}

/// Submit setup transactions and wait until the last of them is committed.
fn setup(apis: &[String], transactions: &[Transaction]) -> Result<()> {
    for (index, tx) in transactions.iter().enumerate() {
        ehrchain_cli::client::post_bytes(
            &format!("{}/chain/transactions", apis[index % apis.len()]),
            tx.bytes().to_vec(),
        )?;
    }
    let session =
        ehrchain_cli::records::Session::open(ehrchain_cli::client::Http::AS_CURRENT, &apis[0])?;
    for tx in transactions {
        session.wait(&hex::encode(tx.id()))?;
    }
    Ok(())
}

struct Population {
    clinicians: Vec<(Signer, EncryptionPublicKey)>,
    patients: Vec<([u8; 16], EncryptionPublicKey)>,
}

fn populate(args: &Args, apis: &[String], dir: &std::path::Path) -> Result<Population> {
    let institutions: Vec<Signer> = (0..args.validators)
        .map(|i| ehrchain_cli::records::load_signer(&dir.join(format!("node-{i}/validator.key"))))
        .collect::<Result<_>>()?;
    let mut nonces = vec![0u64; institutions.len()];
    let mut transactions = Vec::new();
    let mut sign = |index: usize, payload: Payload| {
        let tx = TransactionBody {
            chain_id: 1,
            signer: institutions[index].public.clone(),
            nonce: nonces[index],
            payload,
        }
        .sign(&institutions[index].key);
        nonces[index] += 1;
        tx
    };
    let mut clinicians = Vec::new();
    for worker in 0..args.workers {
        let home = worker % institutions.len();
        let clinician = Signer::from_seed(&seed(1_000 + worker as u64));
        transactions.push(sign(
            home,
            Payload::EnrollClinician {
                clinician: clinician.public.clone(),
                encryption_key: clinician.encryption.public().0,
            },
        ));
        clinicians.push((clinician, institutions[home].encryption.public()));
    }
    let mut patients = Vec::new();
    for index in 0..args.patients {
        let patient = Signer::from_seed(&seed(2_000 + index as u64));
        let id: [u8; 16] = seed(3_000 + index as u64)[..16].try_into().expect("16");
        transactions.push(sign(
            index % institutions.len(),
            Payload::RegisterPatient {
                patient: id,
                key: patient.public.clone(),
                encryption_key: patient.encryption.public().0,
            },
        ));
        patients.push((id, patient.encryption.public()));
    }
    setup(apis, &transactions)?;
    Ok(Population {
        clinicians,
        patients,
    })
}

/// One FHIR JSON document of about `size` bytes for `patient`.
fn document(generator: &mut ehrchain_synth::Generator, patient: &str, size: usize) -> Vec<u8> {
    let value = if size > 64 * 1024 {
        generator.binary(patient, size * 3 / 4)
    } else {
        let overhead = serde_json::to_vec(&generator.document(patient, 0))
            .expect("json")
            .len();
        generator.document(patient, size.saturating_sub(overhead) * 3 / 4)
    };
    serde_json::to_vec(&value).expect("json")
}

fn drive(args: &Args, apis: &[String], dir: &std::path::Path) -> Result<()> {
    eprintln!(
        "enrolling {} clinicians and registering {} patients...",
        args.workers, args.patients
    );
    let population = Arc::new(populate(args, apis, dir)?);
    let mut generator = ehrchain_synth::Generator::new(42);
    let documents: Arc<Vec<Vec<u8>>> = Arc::new(
        population
            .patients
            .iter()
            .map(|(id, _)| document(&mut generator, &hex::encode(id), args.size))
            .collect(),
    );
    let size_mean = documents.iter().map(Vec::len).sum::<usize>() / documents.len();
    eprintln!(
        "writing {} records of {size_mean} bytes at {} records/s...",
        args.records, args.rate
    );
    let submitted: Arc<Mutex<HashMap<Digest, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(args.records)));
    let start_height = get_json(&format!("{}/chain/status", apis[0]))?["height"]
        .as_u64()
        .context("no height")?;
    // Every worker starts the clock together (after sealing, with --presealed).
    let start: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let ready = Arc::new(std::sync::Barrier::new(args.workers));
    if args.presealed {
        eprintln!("sealing every record first (--presealed)...");
    }
    let workers: Vec<_> = (0..args.workers)
        .map(|worker| {
            let (start, ready) = (start.clone(), ready.clone());
            let population = population.clone();
            let documents = documents.clone();
            let submitted = submitted.clone();
            let apis = apis.to_vec();
            let (total, rate, workers) = (args.records, args.rate.max(1), args.workers);
            let validators = args.validators;
            let presealed = args.presealed;
            std::thread::spawn(move || -> Result<usize> {
                let agent: ureq::Agent = ehrchain_cli::client::agent_config().build().into();
                let (clinician, institution) = &population.clinicians[worker];
                // Validate, seal and wrap record `index` (the worker's `nonce`-th).
                let seal = |nonce: usize, index: usize| {
                    // Each clinician writes for patients of its own institution (patient i
                    // is registered by institution i mod n, clinician w works at w mod n).
                    let n = validators;
                    let slots = (documents.len() / n).max(1);
                    let which = (((index / n) % slots) * n + worker % n) % documents.len();
                    let (_, patient_key) = &population.patients[which];
                    let readers = [*patient_key, *institution, clinician.encryption.public()];
                    prepare(
                        1,
                        clinician,
                        nonce as u64,
                        &check(&documents[which])?,
                        None,
                        1,
                        &readers,
                    )
                };
                let mine: Vec<usize> = (worker..total).step_by(workers).collect();
                let mut sealed = Vec::new();
                if presealed {
                    for (nonce, index) in mine.iter().enumerate() {
                        sealed.push(seal(nonce, *index)?);
                    }
                    ready.wait();
                }
                let began = *start.get_or_init(Instant::now);
                let mut sealed = sealed.into_iter();
                let mut rejected = 0;
                for (nonce, index) in mine.into_iter().enumerate() {
                    let due = began + Duration::from_secs_f64(index as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let started = Instant::now();
                    let prepared = match sealed.next() {
                        Some(prepared) => prepared,
                        None => seal(nonce, index)?,
                    };
                    submitted
                        .lock()
                        .expect("lock")
                        .insert(prepared.transaction.id(), started);
                    let api = &apis[(worker + index) % apis.len()];
                    let url = format!("{api}/records");
                    let mut response = agent
                        .post(&url)
                        .header(
                            "Authorization",
                            ehrchain_cli::client::bearer(&url)?.unwrap_or_default(),
                        )
                        .header("content-type", "application/octet-stream")
                        .send(&prepared.upload[..])?;
                    if !response.status().is_success() {
                        rejected += 1;
                    }
                    // Read the answer to the end, so the connection goes back to the pool
                    // instead of a new one per record.
                    response.body_mut().read_to_vec()?;
                }
                Ok(rejected)
            })
        })
        .collect();
    let Followed {
        mut latencies,
        last_commit,
        next,
        ..
    } = follow(&apis[0], start_height, args.records, &submitted)?;
    let mut rejected = 0;
    for worker in workers {
        rejected += worker.join().expect("worker thread")?;
    }
    latencies.sort();
    let committed = latencies.len();
    let began = *start.get().context("no worker started")?;
    let seconds = last_commit.duration_since(began).as_secs_f64().max(1e-9);
    println!(
        "{{\"validators\":{},\"presealed\":{},\"record_bytes\":{size_mean},\"recipients\":3,\"offered_rate\":{},\"submitted\":{},\"rejected\":{rejected},\"committed\":{committed},\"seconds\":{seconds:.2},\"records_per_second\":{:.0},\"megabytes_per_second\":{:.2},\"latency_ms_p50\":{},\"latency_ms_p99\":{},\"blocks\":{}}}",
        args.validators,
        args.presealed,
        args.rate,
        args.records,
        committed as f64 / seconds,
        committed as f64 * size_mean as f64 / seconds / 1e6,
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        next - start_height - 1,
    );
    Ok(())
}
