//! `ehrchain backup` and `ehrchain restore`: a node's own data, copied while it runs, checked,
//! and put back.
//!
//! What is copied is what the node alone holds, or what it would be slow to get back:
//! ```text
//! BACKUP/MANIFEST.json            what was copied: node, height, every file's length and SHA-256
//! BACKUP/config.toml              the node's config, paths made relative to BACKUP
//! BACKUP/validator.key            the validator key (mode 0600)
//! BACKUP/genesis.json
//! BACKUP/tls/{cert,key}.pem       the API certificate, if the node has one
//! BACKUP/data/genesis.json
//! BACKUP/data/ehrchain-blocks/log the block log: every finalized block and its certificate
//! BACKUP/data/custody/*           custodial patients' seeds, served clinicians' X25519 keys
//! BACKUP/data/records/*.pack      record envelopes and their wraps (local blob store only)
//! BACKUP/data/access-log/*.log    reads answered but perhaps not yet on chain
//! ```
//! A running node only ever appends to the block log, the packs and the journal, so each is
//! copied as the prefix it had when its copy began, and a torn last entry is cut as at
//! start-up. The order is the block log first, then custody, packs and journal: everything a
//! copied block refers to was written before it was final, so it is in the later copies.
//! Consensus journals and Commonware's archives are left out: a restored node fetches the
//! finalized blocks from its peers again (without executing them again) and votes only in
//! views after those it learns of. The copy is then verified: the block log re-checked from
//! genesis (`ehrchain verify`), every packed blob against its checksum, the journal parsed,
//! every file hashed into the manifest.
//!
//! What a backup means for erasure is in `docs/OPERATIONS.md` ("Backup and restore").

use anyhow::{Context, Result, bail, ensure};
use commonware_cryptography::{Hasher as _, Sha256};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

/// Bytes copied per read.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
pub struct Manifest {
    /// The node's institution name.
    pub node: String,
    pub chain_id: u64,
    /// Height of the last block in the copied block log.
    pub height: u64,
    pub created_ms: u64,
    /// Record blobs packed and checked; 0 where they live in S3 (backed up with the bucket).
    pub blobs: usize,
    /// Journal entries of reads the copy holds (some may be on chain already).
    pub journal_entries: usize,
    pub files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
pub struct FileEntry {
    /// Path within the backup.
    pub path: String,
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// One file to copy: from where, and to where in the backup.
struct Item {
    from: PathBuf,
    to: String,
}

/// Whether the file at `path` within a backup holds a secret (written 0600, never 0644).
fn is_secret(path: &str) -> bool {
    path == "validator.key" || path == "tls/key.pem" || path.starts_with("data/custody/")
}

fn files_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    found.sort();
    Ok(found)
}

fn open_out(path: &Path, secret: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Copy the first `len` bytes of `from` (its length when the copy began) to `to`.
fn copy_prefix(from: &Path, to: &Path, secret: bool, bar: &ProgressBar) -> Result<()> {
    let mut input =
        std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let len = input.metadata()?.len();
    let mut output = open_out(to, secret)?;
    let mut left = len;
    let mut buf = vec![0u8; CHUNK_BYTES];
    while left > 0 {
        let want = (left as usize).min(CHUNK_BYTES);
        let got = input.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        output.write_all(&buf[..got])?;
        left -= got as u64;
        bar.inc(got as u64);
    }
    output.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut input =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::default();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut bytes = 0u64;
    loop {
        let got = input.read(&mut buf)?;
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
        bytes += got as u64;
    }
    let (_, digest) = hasher.finalize();
    Ok((bytes, hex::encode(digest)))
}

fn bar(len: u64, progress: bool, what: &str) -> ProgressBar {
    let bar = if progress {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Every file of the node at `config`, in copy order.
fn items(config_path: &Path, config: &crate::config::NodeConfig) -> Result<Vec<Item>> {
    let data = &config.data_dir;
    let mut items = vec![
        Item {
            from: config.genesis.clone(),
            to: "genesis.json".into(),
        },
        Item {
            from: config.key_file.clone(),
            to: "validator.key".into(),
        },
        Item {
            from: data.join(crate::node::GENESIS_COPY),
            to: "data/genesis.json".into(),
        },
    ];
    if let Some(tls) = &config.tls {
        items.push(Item {
            from: tls.cert.clone(),
            to: "tls/cert.pem".into(),
        });
        items.push(Item {
            from: tls.key.clone(),
            to: "tls/key.pem".into(),
        });
    }
    let blocks = ehrchain_chain::log::partition("ehrchain");
    // The log's one blob is named "log", hex-encoded by the runtime's storage.
    items.push(Item {
        from: data.join(&blocks).join(hex::encode(b"log")),
        to: format!("data/{blocks}/{}", hex::encode(b"log")),
    });
    for (dir, suffix) in [
        ("custody", ""),
        ("records", ".pack"),
        ("access-log", ".log"),
    ] {
        for from in files_in(&data.join(dir), suffix)? {
            let name = from.file_name().expect("a file").to_string_lossy();
            items.push(Item {
                to: format!("data/{dir}/{name}"),
                from,
            });
        }
    }
    if let Some(missing) = items.iter().find(|i| !i.from.exists()) {
        bail!(
            "{} is not a node that has run: {} is missing",
            config_path.display(),
            missing.from.display()
        );
    }
    Ok(items)
}

/// The node's config as it reads inside the backup (and after restore): every path relative.
fn portable_config(config_path: &Path, config: &crate::config::NodeConfig) -> Result<String> {
    let text = std::fs::read_to_string(config_path)?;
    let mut value: toml::Table = toml::from_str(&text)?;
    value.insert("genesis".into(), "genesis.json".into());
    value.insert("key_file".into(), "validator.key".into());
    value.insert("data_dir".into(), "data".into());
    if config.tls.is_some() {
        let mut tls = toml::Table::new();
        tls.insert("cert".into(), "tls/cert.pem".into());
        tls.insert("key".into(), "tls/key.pem".into());
        value.insert("tls".into(), tls.into());
    }
    Ok(toml::to_string_pretty(&value)?)
}

/// Copy the node whose config is `config_path` into `out` (which must not exist), verify the
/// copy, and write its manifest.
pub fn backup(config_path: &Path, out: &Path, progress: bool) -> Result<Manifest> {
    let config = crate::config::NodeConfig::load(config_path)?;
    if out.exists() {
        bail!("{} exists; back up into a new directory", out.display());
    }
    let items = items(config_path, &config)?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
    }
    let total: u64 = items
        .iter()
        .map(|i| i.from.metadata().map_or(0, |m| m.len()))
        .sum();
    let copying = bar(total, progress, "copying");
    for item in &items {
        match copy_prefix(
            &item.from,
            &out.join(&item.to),
            is_secret(&item.to),
            &copying,
        ) {
            Ok(()) => {}
            // Erased or superseded while the backup ran (a pack segment, a journal segment
            // the chain recorded): nothing of it is needed any more.
            Err(error)
                if !item.from.exists()
                    && (item.to.starts_with("data/records/")
                        || item.to.starts_with("data/access-log/")) =>
            {
                tracing::debug!(%error, file = %item.to, "gone during the backup");
                let _ = std::fs::remove_file(out.join(&item.to));
            }
            Err(error) => return Err(error),
        }
    }
    copying.finish_and_clear();
    let mut config_out = open_out(&out.join("config.toml"), false)?;
    config_out.write_all(portable_config(config_path, &config)?.as_bytes())?;
    config_out.sync_all()?;

    // Verify what was written, as the node would read it.
    let data = out.join("data");
    let report = match crate::verify::verify(&data, progress)? {
        Ok(report) => report,
        Err(damage) => bail!(
            "the copied block log is damaged at height {}: {} (the node's own log is \
             untouched; check its disk and run ehrchain verify on it)",
            damage.height,
            damage.reason
        ),
    };
    let blobs = if config.blob_store.is_none() {
        let (checked, damaged) = ehrchain_storage::BlobStore::check_local(&data.join("records"))?;
        ensure!(
            damaged.is_empty(),
            "{} copied blobs fail their checksum (first {})",
            damaged.len(),
            hex::encode(damaged[0])
        );
        checked
    } else {
        0
    };
    let journal_entries = ehrchain_storage::journal::replay(&data.join("access-log"))
        .context("the copied access-log journal does not read back")?
        .0
        .len();
    let mut files = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    collect_files(out, &mut paths)?;
    paths.sort();
    let hashing = bar(total, progress, "hashing");
    for path in paths {
        let (bytes, sha256) = sha256_file(&path)?;
        hashing.inc(bytes);
        files.push(FileEntry {
            path: path
                .strip_prefix(out)
                .expect("inside the backup")
                .to_string_lossy()
                .into_owned(),
            bytes,
            sha256,
        });
    }
    hashing.finish_and_clear();
    let genesis = crate::config::load_genesis(&out.join("genesis.json"))?;
    let manifest = Manifest {
        node: config.name.clone(),
        chain_id: genesis.chain_id,
        height: report.blocks.saturating_sub(1),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
        blobs,
        journal_entries,
        files,
    };
    let mut file = open_out(&out.join("MANIFEST.json"), false)?;
    file.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    file.sync_all()?;
    Ok(manifest)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.file_name().is_some_and(|n| n != "MANIFEST.json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Check the backup in `from` against its manifest and put it in `dir` (which must not hold a
/// node), ready for `ehrchain node --config DIR/config.toml`.
pub fn restore(from: &Path, dir: &Path, progress: bool) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(from.join("MANIFEST.json"))
            .with_context(|| format!("{} holds no backup manifest", from.display()))?,
    )
    .context("the backup manifest does not parse")?;
    if dir.join("config.toml").exists() || dir.join("data").exists() {
        bail!(
            "{} already holds a node; restore into an empty directory",
            dir.display()
        );
    }
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let checking = bar(total, progress, "checking");
    for file in &manifest.files {
        ensure!(
            !file.path.contains("..") && !file.path.starts_with('/'),
            "the manifest names a path outside the backup: {}",
            file.path
        );
        let (bytes, sha256) = sha256_file(&from.join(&file.path))?;
        ensure!(
            bytes == file.bytes && sha256 == file.sha256,
            "{} differs from the manifest: the backup is damaged",
            file.path
        );
        checking.inc(bytes);
    }
    checking.finish_and_clear();
    let copying = bar(total, progress, "restoring");
    for file in &manifest.files {
        copy_prefix(
            &from.join(&file.path),
            &dir.join(&file.path),
            is_secret(&file.path),
            &copying,
        )?;
    }
    copying.finish_and_clear();
    Ok(manifest)
}
