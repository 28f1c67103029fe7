//! A local certificate authority for networks made by `network init` and `dev`.
//!
//! Every local network gets its own CA (`tls/ca.pem`, its key `tls/ca.key`) and a certificate
//! per node for the loopback names it serves (`node-N/tls/cert.pem`, `key.pem`), so that the
//! API speaks HTTPS from the first start. Clients trust the network's CA through `--ca` or
//! `EHRCHAIN_CA`. A production node uses its institution's certificate instead; `[tls]` in its
//! config names the files. Keys are ECDSA P-256, which every TLS client accepts.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// How long the local certificates are valid.
const VALID_DAYS: i64 = 825;

/// The CA's certificate within a network directory.
pub fn ca_path(network_dir: &Path) -> PathBuf {
    network_dir.join("tls").join("ca.pem")
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks behind ours.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

/// Make the network's CA in `network_dir/tls`.
pub fn make_ca(network_dir: &Path, name: &str) -> Result<()> {
    let dir = network_dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let key = KeyPair::generate().context("cannot make the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} local CA"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("ca.pem"), cert.pem())?;
    crate::config::write_secret(&dir.join("ca.key"), key.serialize_pem().as_bytes())
}

/// Issue a server certificate for `hosts` (names or IP addresses) from the CA in
/// `network_dir/tls`, written to `out/cert.pem` and `out/key.pem`.
pub fn issue(network_dir: &Path, hosts: &[String], out: &Path) -> Result<()> {
    let ca_dir = network_dir.join("tls");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)
        .context("cannot read the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca_dir.join("ca.pem"))?, ca_key)
        .context("cannot read the CA certificate")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out)?;
    // A renewal replaces the files in place (then SIGHUP): the key by rename, never half-written.
    std::fs::write(out.join("cert.pem.new"), cert.pem())?;
    let _ = std::fs::remove_file(out.join("key.pem.new"));
    crate::config::write_secret(&out.join("key.pem.new"), key.serialize_pem().as_bytes())?;
    std::fs::rename(out.join("key.pem.new"), out.join("key.pem"))?;
    std::fs::rename(out.join("cert.pem.new"), out.join("cert.pem"))?;
    Ok(())
}
