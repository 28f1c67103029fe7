//! Helpers shared by the process-level tests: a cluster of `ehrchain node` processes and a
//! small HTTP client.
#![allow(dead_code)]

use serde_json::Value;
use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

pub const EXE: &str = env!("CARGO_BIN_EXE_ehrchain");

/// The certificate authorities of the networks this test made (`tls/ca.pem` of each), which
/// its HTTPS clients trust, and a PEM bundle of them for the processes it starts.
static TRUSTED: std::sync::Mutex<Vec<ureq::tls::Certificate<'static>>> =
    std::sync::Mutex::new(Vec::new());

fn bundle() -> PathBuf {
    std::env::temp_dir().join(format!("ehrchain-test-ca-{}.pem", std::process::id()))
}

/// Trust the local CA of the network in `dir`, if it has one (`network init` and `dev` make
/// one unless told `--plain-http`).
pub fn trust(dir: &std::path::Path) {
    let Ok(pem) = std::fs::read(dir.join("tls/ca.pem")) else {
        return;
    };
    let cert = ureq::tls::Certificate::from_pem(&pem).expect("a PEM CA certificate");
    let mut trusted = TRUSTED.lock().unwrap();
    if trusted.iter().any(|c| c.der() == cert.der()) {
        return;
    }
    trusted.push(cert);
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle())
        .expect("CA bundle");
    file.write_all(&pem).unwrap();
}

/// Environment for a child process that talks to the networks of this test: the CLI's
/// `EHRCHAIN_CA`, and Python requests' `REQUESTS_CA_BUNDLE`.
pub fn ca_env() -> Vec<(&'static str, PathBuf)> {
    if TRUSTED.lock().unwrap().is_empty() {
        return Vec::new();
    }
    vec![
        ("EHRCHAIN_CA", bundle()),
        ("REQUESTS_CA_BUNDLE", bundle()),
        ("NODE_EXTRA_CA_CERTS", bundle()),
    ]
}

/// The `ehrchain` binary, trusting this test's networks.
pub fn exe() -> Command {
    let mut command = Command::new(EXE);
    command.envs(ca_env());
    command
}

/// The API base URL of a node of the network in `dir` listening on `port` of loopback.
pub fn api_url(dir: &std::path::Path, port: u16) -> String {
    let scheme = if dir.join("tls/ca.pem").exists() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://127.0.0.1:{port}")
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Option<Child>>,
    pub api_port: u16,
}

impl Cluster {
    /// Start `count` nodes of the network in `dir` (`node-<i>/config.toml`).
    pub fn started(dir: &std::path::Path, count: usize, api_port: u16) -> Self {
        trust(dir);
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            nodes: (0..count).map(|_| None).collect(),
            api_port,
        };
        for index in 0..count {
            cluster.start(index);
        }
        cluster
    }

    /// Stop `ehrchain dev` (started by `dev_network`) and run its 4 nodes as a cluster, so
    /// that each can be stopped and started on its own.
    pub fn take_over(mut dev: Child, dir: &std::path::Path, api_port: u16) -> Self {
        let _ = dev.kill();
        let _ = dev.wait();
        let _ = Command::new("pkill").arg("-f").arg(dir).status();
        std::thread::sleep(Duration::from_secs(1));
        Self::started(dir, 4, api_port)
    }

    pub fn api(&self, index: usize) -> String {
        api_url(&self.dir, self.api_port + index as u16)
    }

    pub fn start(&mut self, index: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node-{index}.log"))).unwrap();
        let child = exe()
            .args(["node", "--config"])
            .arg(self.dir.join(format!("node-{index}/config.toml")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start node");
        self.nodes[index] = Some(child);
    }

    /// Waits until every running node has reached the highest height any of them reports.
    /// A write is committed on the node that answered it; another node may be a block
    /// behind, so a test that reads elsewhere after a write settles first.
    pub fn settle(&self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        let top = running
            .iter()
            .filter_map(|i| height(&self.api(*i)))
            .max()
            .unwrap_or(0);
        wait_until(
            "every node at the same height",
            Duration::from_secs(30),
            || {
                running
                    .iter()
                    .all(|i| height(&self.api(*i)).is_some_and(|h| h >= top))
            },
        );
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].take() {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// `ehrchain network init` of `validators` validators in `dir` with these first ports and
/// heartbeat (ms), and `extra` flags (`--plain-http`, `--epoch-blocks N`).
pub fn network_init(
    dir: &std::path::Path,
    validators: usize,
    (p2p_port, api_port): (u16, u16),
    heartbeat_ms: u64,
    extra: &[&str],
) {
    let (validators, p2p, api, heartbeat) = (
        validators.to_string(),
        p2p_port.to_string(),
        api_port.to_string(),
        heartbeat_ms.to_string(),
    );
    let mut args = vec![
        "network",
        "init",
        "--validators",
        &validators,
        "--dir",
        path(dir),
        "--p2p-port",
        &p2p,
        "--api-port",
        &api,
        "--heartbeat-ms",
        &heartbeat,
    ];
    args.extend_from_slice(extra);
    ok(cli(&args));
}

/// Run the `ehrchain` binary.
pub fn cli(args: &[&str]) -> std::process::Output {
    exe().args(args).output().expect("run ehrchain")
}

/// The standard output of a command that must succeed.
pub fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ehrchain failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// An HTTP client that trusts the networks of this test (see [`trust`]).
pub fn agent() -> ureq::Agent {
    let trusted = TRUSTED.lock().unwrap().clone();
    let roots = if trusted.is_empty() {
        ureq::tls::RootCerts::WebPki
    } else {
        ureq::tls::RootCerts::new_with_certs(&trusted)
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// A GET without a token: only metadata, discovery and metrics answer it.
pub fn get(url: &str) -> Option<(u16, Value)> {
    let mut response = agent().get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    ))
}

/// A GET with a bearer token.
pub fn get_as(url: &str, token: &str) -> Option<(u16, Value)> {
    let mut response = agent()
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    ))
}

/// A bearer token for the identity of `key` at `api` (`ehrchain auth token`).
pub fn token(api: &str, key: &std::path::Path) -> String {
    ok(cli(&["auth", "token", "--api", api, "--key", path(key)]))
        .trim()
        .to_string()
}

/// A token for `key` at `api`, or `None` while the node cannot log anyone in.
pub fn try_token(api: &str, key: &std::path::Path) -> Option<String> {
    let out = cli(&["auth", "token", "--api", api, "--key", key.to_str()?]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A POST of raw bytes with a bearer token.
pub fn post_as(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    post_with(url, Some(token), body)
}

/// A POST of raw bytes without a token.
pub fn post(url: &str, body: &[u8]) -> (u16, Value) {
    post_with(url, None, body)
}

fn post_with(url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut request = agent()
        .post(url)
        .header("content-type", "application/octet-stream");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.send(body).expect("reach node");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    )
}

/// The node's finalized height, from its metrics (which need no token).
pub fn height(api: &str) -> Option<u64> {
    let text = agent()
        .get(format!("{api}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ehrchain_height "))
        .and_then(|v| v.trim().parse().ok())
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills its process when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `ehrchain dev` in `dir` (a fresh 4-validator demo network with its demo data) and wait
/// until it has written `identities.json`; the `dev` process, and that file's path.
pub fn dev_network(dir: &std::path::Path, p2p_port: u16, api_port: u16) -> (Child, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    let mut dev = exe()
        .args(["dev", "--dir"])
        .arg(dir)
        .args([
            "--p2p-port",
            &p2p_port.to_string(),
            "--api-port",
            &api_port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ehrchain dev");
    let identities = dir.join("identities.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !identities.exists() {
        let failure = if Instant::now() >= deadline {
            Some("the demo network never wrote identities.json")
        } else if dev.try_wait().unwrap().is_some() {
            Some("ehrchain dev stopped")
        } else {
            None
        };
        if let Some(failure) = failure {
            // Leave no node behind to hold the ports of the next run.
            let _ = dev.kill();
            let _ = dev.wait();
            let _ = Command::new("pkill").arg("-f").arg(dir).status();
            panic!("{failure}; see {}/node-*.log", dir.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // identities.json is written once the demo data is in; give the file a moment to close.
    std::thread::sleep(Duration::from_secs(1));
    trust(dir);
    (dev, identities)
}

/// The signing key in a key file (hex seed).
pub fn key_from_file(path: &std::path::Path) -> ehrchain_types::PrivateKey {
    let text = std::fs::read_to_string(path).expect("key file");
    let seed: [u8; 32] = hex::decode(text.trim())
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    ehrchain_types::private_key_from_seed(&seed).expect("seed")
}

/// A clinician writing Observations for `patient` through FHIR at `api` without pause, until
/// `stop`; logs in (again) whenever it must. The id of every create the node acknowledged
/// (201) goes to `acked`.
pub fn write_load(
    api: String,
    key: PathBuf,
    patient: String,
    acked: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let (acked, stop) = (acked.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut token = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if token.is_none() {
                token = try_token(&api, &key);
                if token.is_none() {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
            n += 1;
            let body = serde_json::json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "effectiveDateTime": "2026-11-30T10:00:00Z",
                "valueQuantity": {"value": 60 + n % 40, "unit": "/min"},
            });
            let answer = agent()
                .post(format!("{api}/fhir/Observation"))
                .header(
                    "Authorization",
                    format!("Bearer {}", token.as_deref().unwrap()),
                )
                .header("Content-Type", "application/fhir+json")
                .send(body.to_string().as_bytes());
            match answer {
                Ok(mut response) if response.status() == 201 => {
                    let created: Value = response.body_mut().read_json().unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .push(created["id"].as_str().unwrap().to_string());
                }
                Ok(response) if response.status() == 401 => token = None,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// The HTTP status of a GET of `url` with `token`, or `None` when the node cannot be reached.
pub fn status_of(url: &str, token: &str) -> Option<u16> {
    agent()
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}
