//! The API over HTTPS, as a hospital's operator runs it and a client meets it.
//!
//! `network init` gives every local network its own certificate authority and each node a
//! certificate for its loopback names. One validator is started, and then:
//! - the CLI, trusting the network's CA (`EHRCHAIN_CA`), logs in and reads the chain's status
//!   over HTTPS; a client that trusts only the public web roots is refused at the handshake,
//!   and plain HTTP on the same port gets no HTTP answer;
//! - a connection that never finishes its TLS handshake is closed after the header-read
//!   timeout, so silent connections cannot hold descriptors there either;
//! - the operator replaces the certificate and key with ones from another CA and sends
//!   SIGHUP: new connections get the new certificate, without a restart; files that do not
//!   parse, and another SIGHUP, leave the node serving the certificate it had.

mod common;

use common::{Cluster, agent, cli, height, ok, path, wait_until};
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_300;
const API_PORT: u16 = 10_780;

fn init(dir: &std::path::Path, api_port: u16) {
    let _ = std::fs::remove_dir_all(dir);
    common::network_init(dir, 1, (P2P_PORT, api_port), 1000, &[]);
}

/// Whether an HTTPS GET of `url` succeeds for a client trusting only the CA of `ca_dir`.
fn trusted_by(ca_dir: &std::path::Path, url: &str) -> bool {
    let pem = std::fs::read(ca_dir.join("tls/ca.pem")).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent.get(url).call().is_ok()
}

#[test]
fn the_api_speaks_https_and_takes_a_new_certificate_on_sighup() {
    let base = std::env::temp_dir().join(format!("ehrchain-tls-{}", std::process::id()));
    let dir = base.join("net");
    init(&dir, API_PORT);
    let cluster = Cluster::started(&dir, 1, API_PORT);
    let api = cluster.api(0);
    assert!(api.starts_with("https://"), "{api}");
    wait_until("first blocks", Duration::from_secs(60), || {
        height(&api).is_some_and(|h| h >= 1)
    });

    // The CLI trusts the network's CA (common::exe sets EHRCHAIN_CA) and works over HTTPS.
    let status = ok(cli(&[
        "status",
        "--api",
        &api,
        "--key",
        path(&dir.join("node-0/validator.key")),
    ]));
    assert!(status.contains("\"chain_id\": 1"), "{status}");
    assert!(
        status.contains("\"access_events\""),
        "an institution sees the totals"
    );
    // Without the CA, the public web roots do not vouch for a local certificate.
    let untrusting = common::exe()
        .env_remove("EHRCHAIN_CA")
        .args(["status", "--api", &api, "--key"])
        .arg(dir.join("node-0/validator.key"))
        .output()
        .unwrap();
    assert!(!untrusting.status.success());
    assert!(
        String::from_utf8_lossy(&untrusting.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&untrusting.stderr)
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = agent()
        .get(format!("http://127.0.0.1:{API_PORT}/metrics"))
        .call();
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A handshake never finished is closed at the header-read timeout (10 s by default).
    let mut silent = TcpStream::connect(("127.0.0.1", API_PORT)).unwrap();
    silent.write_all(&[0x16, 0x03, 0x01]).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the server closed it: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(8) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );

    // Renewal: a certificate from another CA, then SIGHUP.
    let other = base.join("other");
    init(&other, API_PORT);
    let url = format!("{api}/fhir/metadata");
    assert!(trusted_by(&dir, &url));
    assert!(!trusted_by(&other, &url));
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            other.join("node-0/tls").join(file),
            dir.join("node-0/tls").join(file),
        )
        .unwrap();
    }
    let pid = cluster.nodes[0].as_ref().unwrap().id().to_string();
    let hup = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    hup();
    wait_until("the new certificate", Duration::from_secs(10), || {
        trusted_by(&other, &url)
    });
    assert!(!trusted_by(&dir, &url), "the old certificate is gone");
    // A broken file and SIGHUP: the node keeps the certificate it has.
    std::fs::write(dir.join("node-0/tls/cert.pem"), "not a certificate").unwrap();
    hup();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        trusted_by(&other, &url),
        "still served after a failed reload"
    );
    let log = std::fs::read_to_string(dir.join("node-0.log")).unwrap();
    assert!(log.contains("API certificate reloaded"), "{log}");
    assert!(log.contains("API certificate not reloaded"), "{log}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&base);
}
