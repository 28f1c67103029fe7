//! The web UI as its users meet it, in headless Chromium (playwright-core) against
//! `ehrchain dev`, which serves the UI at every node's `/` and registers it as a SMART app;
//! every login goes through the node's own SMART login with the person's key file.
//! - `tests/ui/portal.mjs`: a patient reads the record as a timeline, grants a clinician of
//!   another institution access to Observations and sees the read on the trail, then revokes
//!   and sees the refused attempt; downloads, phone width, a guardian appointed with a key
//!   made in the browser who then logs in and sees the record, erasure.
//! - `tests/ui/staff.mjs`: a clinician charts a patient and writes through a form, is refused
//!   another institution's patient and breaks the glass, which that patient sees flagged; the
//!   auditor finds the finding and checks a block's certificate in wasm; an operator reads the
//!   node's health and enrols and removes a clinician.
//!
//! Each journey gets its own network (the portal's ends in an erasure); they take turns, as
//! two networks at once would starve each other on a small machine. Screenshots go to
//! `target/artefacts/ui` and `target/artefacts/staff` (or under `$EHRCHAIN_ARTEFACTS`).

mod common;

use std::process::Command;
use std::sync::Mutex;

/// One dev network at a time.
static NETWORK: Mutex<()> = Mutex::new(());

fn journey(script: &str, name: &str, p2p_port: u16, api_port: u16) {
    let _turn = NETWORK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = std::env::temp_dir().join(format!("ehrchain-{name}-{}", std::process::id()));
    let (mut dev, _identities) = common::dev_network(&dir, p2p_port, api_port);
    let artefacts = std::env::var_os("EHRCHAIN_ARTEFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artefacts")
        })
        .join(name);
    // This network's CA alone: the dev CAs of the two networks share a subject name, and
    // Node.js checks a chain against the first CA of that name only.
    let ca = dir.join("tls/ca.pem");
    let run = Command::new("node")
        .envs(common::ca_env())
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("EHRCHAIN_CA", &ca)
        .env("EHRCHAIN_BIN", common::EXE)
        .arg(format!(
            "{}/../../tests/ui/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&dir)
        .arg(&artefacts)
        .output()
        .expect("run node (scripts/test installs playwright-core)");
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = Command::new("pkill").arg("-f").arg(dir.as_path()).status();
    println!("{}", String::from_utf8_lossy(&run.stdout));
    assert!(
        run.status.success(),
        "the {name} journey failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_patient_reads_grants_revokes_and_sees_who_looked_in_the_portal() {
    journey("portal.mjs", "ui", 25_600, 11_080);
}

#[test]
fn a_clinician_breaks_the_glass_an_auditor_checks_and_an_operator_enrols() {
    journey("staff.mjs", "staff", 25_700, 11_180);
}
