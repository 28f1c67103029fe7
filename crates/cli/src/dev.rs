//! `ehrchain dev`: a whole local network on loopback, one process per validator.

use anyhow::{Context, Result};
use std::{
    path::Path,
    process::{Child, Command},
    time::Duration,
};

/// The API base URL of every node config.
pub fn api_urls(configs: &[std::path::PathBuf]) -> Result<Vec<String>> {
    configs
        .iter()
        .map(|c| Ok(crate::config::NodeConfig::load(c)?.api_url()))
        .collect()
}

/// Start `exe node` (the `ehrchain` binary) for every config, returning the children.
pub fn spawn_nodes(
    exe: &Path,
    configs: &[std::path::PathBuf],
    log_dir: &Path,
) -> Result<Vec<Child>> {
    let mut children = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let log = std::fs::File::create(log_dir.join(format!("node-{index}.log")))?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {index}"))?;
        children.push(child);
    }
    Ok(children)
}

/// Wait for every node to serve and the chain to make its first block.
pub fn wait_ready(apis: &[String]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = apis.iter().all(|api| {
            crate::client::get_json(&format!("{api}/chain/status"))
                .is_ok_and(|s| s["height"].as_u64() >= Some(1))
        });
        if ready {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the network did not start within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

pub fn run(validators: usize, dir: &Path, p2p_port: u16, api_port: u16) -> Result<()> {
    let fresh = !dir.join("genesis.json").exists();
    let configs: Vec<std::path::PathBuf> = if !fresh {
        (0..validators)
            .map(|i| dir.join(format!("node-{i}")).join("config.toml"))
            .collect()
    } else {
        crate::network::init(&crate::network::InitOptions {
            validators,
            dir: dir.to_path_buf(),
            chain_id: 1,
            p2p_port,
            api_port,
            epoch_blocks: ehrchain_types::genesis::Rules::default().epoch_blocks,
            heartbeat_ms: ehrchain_types::genesis::HEARTBEAT_MS,
            tls: true,
        })?
    };
    let ca = crate::tls::ca_path(dir);
    if ca.exists() {
        crate::client::trust_ca(&ca)?;
    }
    let exe = std::env::current_exe().context("cannot find the ehrchain binary")?;
    let mut children = spawn_nodes(&exe, &configs, dir)?;
    println!(
        "ehrchain dev network in {} (Ctrl-C stops it)",
        dir.display()
    );
    if ca.exists() {
        println!(
            "  HTTPS from the network's own CA; trust it with: export EHRCHAIN_CA={}",
            std::path::absolute(&ca)?.display()
        );
    }
    for (index, config) in configs.iter().enumerate() {
        let config = crate::config::NodeConfig::load(config)?;
        println!(
            "  node-{index}: API {}  (log {}/node-{index}.log)",
            config.api_url(),
            dir.display()
        );
    }
    if fresh {
        let apis = api_urls(&configs)?;
        // Every API call needs a login: the first institution's, until the fill switches.
        crate::client::use_key(&apis[0], &dir.join("node-0").join("validator.key"))?;
        wait_ready(&apis)?;
        let written = fill_demo(dir, &apis)?;
        println!(
            "  demo data: {written} synthetic FHIR records; identities in {}",
            dir.join("identities.json").display()
        );
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = stop_tx.send(());
    });
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        for (index, child) in children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                eprintln!(
                    "node-{index} exited ({status}); see {}/node-{index}.log",
                    dir.display()
                );
            }
        }
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

/// Base64url without padding (RFC 4648 section 5), as JWK and SMART clients expect keys.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// The custody directory of node `index` of a dev network.
pub fn custody_dir(dir: &Path, index: usize) -> Result<std::path::PathBuf> {
    let config = crate::config::NodeConfig::load(&dir.join(format!("node-{index}/config.toml")))?;
    Ok(config.data_dir.join("custody"))
}

/// Fill a fresh demo network: two clinicians at two institutions, two patients (one per
/// home institution) with a year of synthetic records each, the genesis auditor, and
/// `identities.json` so that any client can sign in as them. Returns the number of records written.
fn fill_demo(dir: &Path, apis: &[String]) -> Result<usize> {
    use crate::records::{Session, Signer, check, prepare, readers_for};
    use ehrchain_types::Payload;
    let keys = dir.join("identities");
    std::fs::create_dir_all(&keys)?;
    let homes = apis.len().min(2);
    let mut identities = Vec::new();
    let mut generator = ehrchain_synth::Generator::new(2026);
    let mut written = 0;
    let mut clinicians = Vec::new();
    for (home, api) in apis.iter().enumerate().take(homes) {
        let institution =
            crate::records::load_signer(&dir.join(format!("node-{home}/validator.key")))?;
        crate::client::use_seed(api, &institution.seed);
        let session = Session::open(crate::client::Http::AS_CURRENT, api)?;
        let seed = crate::config::random_seed();
        crate::config::write_key(&keys.join(format!("clinician-{}.key", home + 1)), &seed)?;
        let clinician = Signer::from_seed(&seed);
        let enroll = session.sign(
            &institution,
            Payload::EnrollClinician {
                clinician: clinician.public.clone(),
                encryption_key: clinician.encryption.public().0,
            },
        )?;
        session.submit_and_wait(&enroll)?;
        // The clinician's institution node keeps the clinician's decryption key (not the
        // signing seed), so that it can open what the clinician may read through FHIR.
        let custody = custody_dir(dir, home)?;
        ehrchain_api::gateway::write_secret(
            &custody.join(format!("{}.enc", clinician.public)),
            &clinician.encryption.secret_bytes(),
        )?;
        identities.push(serde_json::json!({
            "id": clinician.public.to_string(),
            "role": "clinician",
            "api": api,
            "institution": institution.public.to_string(),
            "practitioner": clinician.public.to_string(),
            "private_key": base64url(&seed),
        }));
        clinicians.push((clinician, seed));
    }
    // One custodial patient at each of the first two nodes (their home node keeps their key),
    // and a third who holds their own key (the portal opens their record in the browser).
    let patients = (0..homes)
        .map(|home| (home, true, 24))
        .chain([(0, false, 8)]);
    for (number, (home, custodial, records)) in patients.enumerate() {
        let api = &apis[home];
        let institution =
            crate::records::load_signer(&dir.join(format!("node-{home}/validator.key")))?;
        crate::client::use_seed(api, &institution.seed);
        let session = Session::open(crate::client::Http::AS_CURRENT, api)?;
        let seed = crate::config::random_seed();
        crate::config::write_key(&keys.join(format!("patient-{}.key", number + 1)), &seed)?;
        let patient = Signer::from_seed(&seed);
        let id: [u8; 16] = crate::config::random_seed()[..16].try_into().expect("16");
        let register = session.sign(
            &institution,
            Payload::RegisterPatient {
                patient: id,
                key: patient.public.clone(),
                encryption_key: patient.encryption.public().0,
            },
        )?;
        session.submit_and_wait(&register)?;
        let patient_id = hex::encode(id);
        // Custodial: the home node holds the patient's key too.
        if custodial {
            ehrchain_api::gateway::write_secret(
                &custody_dir(dir, home)?.join(format!("{patient_id}.key")),
                &seed,
            )?;
        }
        identities.push(serde_json::json!({
            "id": patient.public.to_string(),
            "role": "patient",
            "api": api,
            "institution": institution.public.to_string(),
            "patient": patient_id,
            "custodial": custodial,
            "private_key": base64url(&seed),
        }));
        let (author, _) = &clinicians[home];
        let synthetic = generator.patient(&patient_id, records);
        for resource in std::iter::once(synthetic.patient).chain(synthetic.records) {
            let json = serde_json::to_vec_pretty(&resource)?;
            let checked = check(&json)?;
            let readers = readers_for(api, author, &id, checked.resource_type.code(), None)?;
            // Each write is waited for before the next is signed, so the node's nonce is current.
            let nonce = session.nonce(&author.public)?;
            let prepared = prepare(session.chain_id, author, nonce, &checked, None, 1, &readers)?;
            crate::client::post_bytes(&format!("{api}/records"), prepared.upload.clone())?;
            session.wait(&hex::encode(prepared.transaction.id()))?;
            written += 1;
        }
    }
    // The auditor appointed at genesis: reads the trail and the findings, never a key.
    let auditor_seed = crate::config::read_seed(&dir.join("auditor.key"))?;
    let auditor = Signer::from_seed(&auditor_seed);
    identities.push(serde_json::json!({
        "id": auditor.public.to_string(),
        "role": "auditor",
        "api": apis[0],
        "private_key": base64url(&auditor_seed),
    }));
    prepare_smart(dir, apis, &identities)?;
    // It holds private keys: owner-only, like every key file.
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("identities.json"))?;
    file.write_all(serde_json::to_string_pretty(&serde_json::json!(identities))?.as_bytes())?;
    file.sync_all()?;
    Ok(written)
}

/// The demo SMART app `ehrchain dev` registers: a public app served on loopback
/// (`tests/smart/serve.mjs`), at both names of the loopback host.
pub const DEMO_APP: &str = "ehrchain-demo";
/// Where the demo app is served.
pub const DEMO_APP_PORT: u16 = 8765;

/// SMART App Launch for the demo: register the demo app (by the first institution) and
/// write a passkey enrolment code for the first custodial patient to `passkey-enrolment.json`.
fn prepare_smart(dir: &Path, apis: &[String], identities: &[serde_json::Value]) -> Result<()> {
    use crate::records::Session;
    let institution = crate::records::load_signer(&dir.join("node-0/validator.key"))?;
    crate::client::use_seed(&apis[0], &institution.seed);
    let session = Session::open(crate::client::Http::AS_CURRENT, &apis[0])?;
    let redirect_uris = ["127.0.0.1", "localhost"]
        .iter()
        .map(|host| format!("http://{host}:{DEMO_APP_PORT}/"))
        .collect();
    let register = session.sign(
        &institution,
        ehrchain_types::Payload::RegisterApp(ehrchain_types::AppRegistration {
            client_id: DEMO_APP.into(),
            name: "ehrchain demo app".into(),
            redirect_uris,
            jwk: None,
        }),
    )?;
    session.submit_and_wait(&register)?;
    // The nodes' own web UI, at each node's address (as the browser names it).
    let portal = session.sign(
        &institution,
        ehrchain_types::Payload::RegisterApp(ehrchain_types::AppRegistration {
            client_id: ehrchain_api::ui::PORTAL_APP.into(),
            name: "ehrchain patient portal".into(),
            redirect_uris: apis
                .iter()
                .take(ehrchain_types::transaction::APP_REDIRECT_URIS_MAX)
                .map(|api| {
                    let browser =
                        ehrchain_api::gateway::Gateway::new(api.clone(), None).browser_url();
                    format!("{browser}/")
                })
                .collect(),
            jwk: None,
        }),
    )?;
    session.submit_and_wait(&portal)?;
    let patient = identities
        .iter()
        .find(|i| i["role"] == "patient" && i["api"] == apis[0].as_str())
        .context("the demo has a patient at node-0")?;
    let identity = ehrchain_types::public_key_from_hex(patient["id"].as_str().unwrap_or_default())
        .context("a patient id")?;
    let code = ehrchain_api::passkey::write_enrolment_code(
        &custody_dir(dir, 0)?,
        &identity,
        ehrchain_api::ambient::now_ms(),
        ehrchain_api::passkey::ENROLMENT_CODE_LIFETIME,
    )?;
    let browser = ehrchain_api::gateway::Gateway::new(apis[0].clone(), None).browser_url();
    let enrolment = serde_json::json!({
        "code": code,
        "identity": identity.to_string(),
        "patient": patient["patient"],
        "enrol_url": format!("{browser}/auth/enrol"),
        "fhir": format!("{browser}/fhir"),
        "app": {"client_id": DEMO_APP, "url": format!("http://127.0.0.1:{DEMO_APP_PORT}/")},
    });
    crate::config::write_secret(
        &dir.join("passkey-enrolment.json"),
        serde_json::to_string_pretty(&enrolment)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(super::base64url(b""), "");
        assert_eq!(super::base64url(b"f"), "Zg");
        assert_eq!(super::base64url(b"fo"), "Zm8");
        assert_eq!(super::base64url(b"foo"), "Zm9v");
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8");
    }
}
