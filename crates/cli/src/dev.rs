//! `ehrchain dev`: a whole local network on loopback, one process per validator.

use anyhow::{Context, Result};
use std::{
    path::Path,
    process::{Child, Command},
    time::Duration,
};

/// Start `ehrchain node` for every config, returning the children.
pub fn spawn_nodes(configs: &[std::path::PathBuf], log_dir: &Path) -> Result<Vec<Child>> {
    let exe = std::env::current_exe().context("cannot find the ehrchain binary")?;
    let mut children = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let log = std::fs::File::create(log_dir.join(format!("node-{index}.log")))?;
        let child = Command::new(&exe)
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

pub fn run(validators: usize, dir: &Path, p2p_port: u16, api_port: u16) -> Result<()> {
    let configs: Vec<std::path::PathBuf> = if dir.join("genesis.json").exists() {
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
        })?
    };
    let mut children = spawn_nodes(&configs, dir)?;
    println!(
        "ehrchain dev network in {} (Ctrl-C stops it)",
        dir.display()
    );
    for (index, config) in configs.iter().enumerate() {
        let config = crate::config::NodeConfig::load(config)?;
        println!(
            "  node-{index}: API http://{}  (log {}/node-{index}.log)",
            config.api_listen,
            dir.display()
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
