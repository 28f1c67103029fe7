//! The cost of checking a FHIR resource on the write path, beside the cost of parsing it.
//!
//! Every create and update runs `ehrchain_fhir::validate`: the text lint (duplicate keys,
//! nulls, empties), the parse, the walk over the R4 StructureDefinition tables and the
//! extraction of indexed elements. This measures it per resource over a corpus, next to a
//! plain `serde_json` parse of the same bytes, in one process and one run, and reports medians
//! over rounds and their ratio. The corpus is 50 synthetic patients of 24 records (the load
//! the other benchmarks write) and HL7's R4 examples of the stored types, from
//! `$EHRCHAIN_R4_EXAMPLES` or `~/.cache/ehrchain/npm` (`scripts/test` installs them).
//!
//!     cargo bench -p ehrchain-synth --bench validate            # BENCH_ROUNDS=30 by default

use std::{path::PathBuf, time::Instant};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(30);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut generator = ehrchain_synth::Generator::new(1);
    for p in 0..50 {
        let patient = generator.patient(&format!("p{p}"), 24);
        for value in std::iter::once(patient.patient).chain(patient.records) {
            corpus.push(serde_json::to_vec(&value).expect("a value serializes"));
        }
    }
    let synthetic = corpus.len();
    let examples = std::env::var_os("EHRCHAIN_R4_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/ehrchain/npm/node_modules/hl7.fhir.r4.examples")
        });
    if let Ok(entries) = std::fs::read_dir(&examples) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let kind = name.split('-').next().unwrap_or("");
            if name.ends_with(".json") && ehrchain_fhir::ResourceType::from_name(kind).is_some() {
                let bytes = std::fs::read(&path).expect("read an example");
                if ehrchain_fhir::validate(&bytes).is_ok() {
                    corpus.push(bytes);
                }
            }
        }
    }
    for resource in &corpus {
        assert!(
            ehrchain_fhir::validate(resource).is_ok(),
            "the corpus is valid"
        );
    }
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let mut parse = Vec::with_capacity(rounds);
    let mut validate = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for resource in &corpus {
            let value: serde_json::Value = serde_json::from_slice(resource).expect("parses");
            std::hint::black_box(value);
        }
        parse.push(start.elapsed().as_secs_f64() * 1e6 / corpus.len() as f64);
        let start = Instant::now();
        for resource in &corpus {
            let _ = std::hint::black_box(ehrchain_fhir::validate(resource));
        }
        validate.push(start.elapsed().as_secs_f64() * 1e6 / corpus.len() as f64);
    }
    let (parse, validate) = (median(parse), median(validate));
    println!(
        "corpus: {} resources ({synthetic} synthetic, {} R4 examples), {:.1} KiB mean; {rounds} rounds",
        corpus.len(),
        corpus.len() - synthetic,
        bytes as f64 / corpus.len() as f64 / 1024.0
    );
    println!("serde_json parse   median {parse:.2} µs/resource");
    println!(
        "validate (full)    median {validate:.2} µs/resource ({:.0} resources/s on one core)",
        1e6 / validate
    );
    println!("ratio validate/parse {:.2}", validate / parse);
}
