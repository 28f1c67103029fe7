//! The FHIR API as an ordinary FHIR client sees it: `ehrchain dev` starts a 4-validator demo
//! network and writes `identities.json`, then `tests/fhir_client/journey.py` walks the user's
//! journey with independently written tools (fhirpy for FHIR, PyJWT for the EdDSA client
//! assertions, fhirclient's R4 models to validate every resource that comes back): SMART
//! Backend Services login, a replayed assertion refused, a patient registered and records
//! written as clinician A, search with paging, update and history, consent granted to
//! clinician B at another institution, B reads, the patient revokes, B is refused (403), the
//! patient and the auditor read the AuditEvents, and errors come back as OperationOutcomes.
//!
//! Then `tests/fhir_client/kit.mjs` walks it again as a JavaScript app: fhir-kit-client for
//! every call, FHIR.js validating every answer, create/read/update/patch, conditional create
//! and update, a refused transaction that leaves nothing written, and a batch.
//!
//! The Python interpreter is `$EHRCHAIN_PYTHON` (a virtual environment with `fhirpy`,
//! `fhirclient` and `PyJWT[crypto]`; `scripts/test` makes one).

mod common;

use common::EXE;
use std::process::Command;

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 24_700;
const API_PORT: u16 = 10_180;

#[test]
fn an_independent_fhir_client_walks_the_users_journey() {
    let python = std::env::var("EHRCHAIN_PYTHON").expect(
        "EHRCHAIN_PYTHON names a Python with fhirpy, fhirclient and PyJWT (scripts/test sets it)",
    );
    let dir = std::env::temp_dir().join(format!("ehrchain-fhir-{}", std::process::id()));
    let (mut dev, identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fhir_client/journey.py"
    );
    let output = Command::new(python)
        .env("EHRCHAIN_EXE", EXE)
        .envs(common::ca_env())
        .arg(script)
        .arg(&identities)
        .output()
        .expect("run the Python journey");
    // Then a JavaScript FHIR app on the same network: fhir-kit-client, FHIR.js, jose.
    let kit = output.status.success().then(|| {
        Command::new("node")
            .env("EHRCHAIN_NODE_MODULES", node_modules())
            .envs(common::ca_env())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fhir_client/kit.mjs"
            ))
            .arg(&identities)
            .output()
            .expect("run node (scripts/test installs fhir-kit-client, fhir and jose)")
    });
    let _ = dev.kill();
    let _ = dev.wait();
    // `dev` runs its nodes as children; they stop with it, but make sure.
    let _ = Command::new("pkill").arg("-f").arg(dir.as_path()).status();
    assert!(
        output.status.success(),
        "the FHIR journey failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(kit) = kit {
        assert!(
            kit.status.success(),
            "the fhir-kit-client journey failed:\n{}\n{}",
            String::from_utf8_lossy(&kit.stdout),
            String::from_utf8_lossy(&kit.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where `scripts/test` installed the npm packages the JavaScript client uses.
fn node_modules() -> std::path::PathBuf {
    std::env::var_os("EHRCHAIN_NODE_MODULES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::PathBuf::from(home).join(".cache/ehrchain/npm/node_modules")
        })
}
