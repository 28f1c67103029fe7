//! A validator whose disk fills up halts cleanly; the others go on.
//!
//! Four validators; node 3's data directory is a small tmpfs (as root; elsewhere the test
//! prints why it is skipped and passes), nearly filled before it starts. As blocks arrive the
//! disk runs out inside consensus storage or the block log. The node must then stop on its
//! own with exit status 70 or 3 and a message naming the storage failure and what to check,
//! never keep running with a half-written journal, and the three others keep finalizing.

mod common;

use common::{Cluster, height, wait_until};
use std::{process::Command, time::Duration};

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_500;
const API_PORT: u16 = 10_980;

/// Unmounts its tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_halts_its_node_with_a_clear_message() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("disk-full test skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ehrchain-disk-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::network_init(&dir, 4, (P2P_PORT, API_PORT), 100, &["--plain-http"]);
    let data = dir.join("node-3/data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&data)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("disk-full test skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(data.clone());
    let mut cluster = Cluster::started(&dir, 4, API_PORT);
    wait_until("node 3 running", Duration::from_secs(60), || {
        height(&cluster.api(3)).is_some_and(|h| h >= 1)
    });
    // Leave it a little room only.
    let free = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(
        data.join("filler"),
        vec![0u8; free.saturating_sub(64 * 1024) as usize],
    )
    .unwrap();
    let node = cluster.nodes[3].as_mut().unwrap();
    let mut status = None;
    wait_until(
        "node 3 halts on its full disk",
        Duration::from_secs(120),
        || {
            status = node.try_wait().unwrap();
            status.is_some()
        },
    );
    cluster.nodes[3] = None;
    let code = status.unwrap().code();
    let log = std::fs::read_to_string(dir.join("node-3.log")).unwrap();
    assert!(
        matches!(code, Some(70) | Some(3)),
        "exit status {code:?}; log tail: {}",
        &log[log.len().saturating_sub(2_000)..]
    );
    assert!(
        log.contains("storage failure")
            || log.contains("halting the node")
            || log.contains("the node stops"),
        "a clear message: {}",
        &log[log.len().saturating_sub(2_000)..]
    );
    eprintln!(
        "node 3 halted with {code:?}: {}",
        log.lines()
            .rev()
            .find(|l| l.contains("storage") || l.contains("halt"))
            .unwrap_or("")
    );
    let before = height(&cluster.api(0)).unwrap();
    wait_until("the others go on", Duration::from_secs(30), || {
        height(&cluster.api(0)).is_some_and(|h| h >= before + 5)
    });
    drop(cluster);
    drop(_mount);
    let _ = std::fs::remove_dir_all(&dir);
}
