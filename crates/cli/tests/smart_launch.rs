//! SMART App Launch as apps and people meet it: `ehrchain dev` registers the demo app and
//! writes a passkey enrolment code; `tests/smart/pkce.py` runs the authorization code flow
//! with PKCE by hand (`requests`: the OAuth errors for a bad redirect URI, a missing or
//! wrong verifier, a reused or expired code; ID token, `$everything`, scopes, refresh,
//! sessions, the app named on the trail, revocation, a provider launch, sessions ended by key
//! rotation and by removal), and `tests/smart/browser.mjs` runs the npm `fhirclient` library
//! in headless Chromium: a passkey enrolled and used through the virtual authenticator, a
//! key file signed in wasm, a key made in the browser and registered, each launch refreshed
//! and revoked.
//! Screenshots go to `target/artefacts/smart` (or `$EHRCHAIN_ARTEFACTS/smart`).

mod common;

use std::process::Command;

const P2P_PORT: u16 = 24_900;
const API_PORT: u16 = 10_380;

#[test]
fn smart_apps_log_people_in_with_pkce_passkeys_and_keys_that_stay_in_the_browser() {
    let python = std::env::var("EHRCHAIN_PYTHON").expect("EHRCHAIN_PYTHON (scripts/test sets it)");
    let dir = std::env::temp_dir().join(format!("ehrchain-smart-{}", std::process::id()));
    let (mut dev, _identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/smart");
    let pkce = Command::new(python)
        .envs(common::ca_env())
        .env("EHRCHAIN_BIN", common::EXE)
        .arg(format!("{here}/pkce.py"))
        .arg(&dir)
        .output()
        .expect("run the Python PKCE flow");
    let artefacts = std::env::var_os("EHRCHAIN_ARTEFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artefacts")
        })
        .join("smart");
    let browser = pkce.status.success().then(|| {
        Command::new("node")
            .envs(common::ca_env())
            .env("EHRCHAIN_BIN", common::EXE)
            .arg(format!("{here}/browser.mjs"))
            .arg(&dir)
            .arg(&artefacts)
            .output()
            .expect("run node (scripts/test installs fhirclient and playwright-core)")
    });
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = Command::new("pkill").arg("-f").arg(dir.as_path()).status();
    assert!(
        pkce.status.success(),
        "the PKCE flow failed:\n{}\n{}",
        String::from_utf8_lossy(&pkce.stdout),
        String::from_utf8_lossy(&pkce.stderr)
    );
    let browser = browser.expect("ran");
    assert!(
        browser.status.success(),
        "the browser journey failed:\n{}\n{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
