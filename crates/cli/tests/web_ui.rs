//! The web UI as its users meet it: `ehrchain dev` serves the patient portal at every node's
//! `/` and registers it as a SMART app; `tests/ui/portal.mjs` drives it in headless Chromium
//! (playwright-core): a patient logs in with their key file through the node's own login,
//! reads the record as a timeline, grants a clinician of another institution access to
//! Observations and sees the read on the trail, then revokes and sees the refused attempt.
//! Screenshots go to `target/artefacts/ui` (or `$EHRCHAIN_ARTEFACTS/ui`).

mod common;

use std::process::Command;

const P2P_PORT: u16 = 25_600;
const API_PORT: u16 = 11_080;

#[test]
fn a_patient_reads_grants_revokes_and_sees_who_looked_in_the_portal() {
    let dir = std::env::temp_dir().join(format!("ehrchain-ui-{}", std::process::id()));
    let (mut dev, _identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let artefacts = std::env::var_os("EHRCHAIN_ARTEFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artefacts")
        })
        .join("ui");
    let journey = Command::new("node")
        .envs(common::ca_env())
        .env("EHRCHAIN_BIN", common::EXE)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/ui/portal.mjs"
        ))
        .arg(&dir)
        .arg(&artefacts)
        .output()
        .expect("run node (scripts/test installs playwright-core)");
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = Command::new("pkill").arg("-f").arg(dir.as_path()).status();
    println!("{}", String::from_utf8_lossy(&journey.stdout));
    assert!(
        journey.status.success(),
        "the portal journey failed:\n{}\n{}",
        String::from_utf8_lossy(&journey.stdout),
        String::from_utf8_lossy(&journey.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
