//! Faults across real hosts: four validators in four network namespaces.
//!
//! Each validator runs in its own namespace (`ip netns`), with its peer address on its
//! loopback and one veth link to each other validator, so that any link can be cut and healed
//! on its own. A further veth link per namespace carries only the API, to the test. Under FHIR
//! write load (a clinician writing through node 1 without pause):
//! 1. node 3 is cut off from its peers: the other three keep finalizing and acknowledging
//!    writes; healed, node 3 catches up to their height;
//! 2. the network is cut into halves {0, 1} and {2, 3}: neither half has a quorum, so the chain
//!    stops finalizing; healed, it resumes;
//! 3. node 2 is killed with SIGKILL and restarted.
//!
//! Then every create any node acknowledged is held (its envelope) by every node, and none
//! reports a missing blob. It needs root and `ip` from iproute2; elsewhere it prints why it
//! is skipped and passes. Delay and loss are the simulation's job (`crates/sim`): `tc netem`
//! is not on every machine.

mod common;

use common::{height, ok, path, status_of, try_token, wait_until, write_load};
use std::{
    process::{Child, Command},
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

const NODES: usize = 4;
const P2P_PORT: u16 = 30_000;
const API_PORT: u16 = 8_000;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, links and node processes of one run; dropping it removes them all.
struct Hosts {
    tag: String,
    nodes: Vec<Option<Child>>,
    dir: std::path::PathBuf,
}

impl Hosts {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    /// The link between `i` and `j` (i < j), as named inside i's and j's namespaces.
    fn link(&self, i: usize, j: usize) -> (String, String) {
        (
            format!("{}l{i}{j}a", self.tag),
            format!("{}l{i}{j}b", self.tag),
        )
    }
    fn peer_ip(i: usize) -> String {
        format!("10.78.0.{}", i + 1)
    }
    fn api(i: usize) -> String {
        format!("http://10.79.{i}.2:{API_PORT}")
    }

    fn build(tag: &str, dir: &std::path::Path) -> Result<Self, String> {
        let hosts = Self {
            tag: tag.to_string(),
            nodes: (0..NODES).map(|_| None).collect(),
            dir: dir.to_path_buf(),
        };
        for i in 0..NODES {
            let ns = hosts.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", Self::peer_ip(i)),
                "dev",
                "lo",
            ])?;
            // The API link, to the test in the root namespace.
            let (outside, inside) = (format!("{tag}m{i}r"), format!("{tag}m{i}n"));
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["addr", "add", &format!("10.79.{i}.1/30"), "dev", &outside])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.79.{i}.2/30"),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
        }
        for i in 0..NODES {
            for j in i + 1..NODES {
                let (a, b) = hosts.link(i, j);
                ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
                ip(&["link", "set", &a, "netns", &hosts.ns(i)])?;
                ip(&["link", "set", &b, "netns", &hosts.ns(j)])?;
                hosts.heal(i, j)?;
            }
        }
        Ok(hosts)
    }

    /// Bring the link between `i` and `j` up, with the route to each other's peer address.
    fn heal(&self, i: usize, j: usize) -> Result<(), String> {
        let (a, b) = self.link(i, j);
        for (ns, dev, to, from) in [(self.ns(i), &a, j, i), (self.ns(j), &b, i, j)] {
            ip(&["-n", &ns, "link", "set", dev, "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "replace",
                &format!("{}/32", Self::peer_ip(to)),
                "dev",
                dev,
                "src",
                &Self::peer_ip(from),
            ])?;
        }
        Ok(())
    }

    /// Take the link between `i` and `j` down (its routes go with it).
    fn cut(&self, i: usize, j: usize) -> Result<(), String> {
        let (a, b) = self.link(i, j);
        ip(&["-n", &self.ns(i), "link", "set", &a, "down"])?;
        ip(&["-n", &self.ns(j), "link", "set", &b, "down"])
    }

    fn pairs(set: &[usize], other: &[usize]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &a in set {
            for &b in other {
                out.push((a.min(b), a.max(b)));
            }
        }
        out
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node-{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(i),
                common::EXE,
                "node",
                "--config",
            ])
            .arg(self.dir.join(format!("node-{i}/config.toml")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a node in its namespace");
        self.nodes[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
        for i in 0..NODES {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &format!("{}m{i}r", self.tag)]);
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for ip netns".into());
    }
    let probe = format!("ehrprobe{}", std::process::id());
    if let Err(error) = ip(&["netns", "add", &probe]) {
        return Some(format!("ip netns does not work here: {error}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

fn heights() -> Vec<Option<u64>> {
    (0..NODES).map(|i| height(&Hosts::api(i))).collect()
}

#[test]
fn validators_on_four_hosts_survive_cuts_a_split_and_a_restart() {
    if let Some(reason) = unsupported() {
        eprintln!("netns test skipped: {reason}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ehrchain-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The certificates of a local network name loopback; here the API is on each host's own
    // address, and the faults are the point.
    common::network_init(&dir, NODES, (P2P_PORT, API_PORT), 1000, &["--plain-http"]);
    // Every validator on its own host: peers at 10.78.0.x, the API at 10.79.x.2.
    let genesis_path = dir.join("genesis.json");
    let mut genesis: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&genesis_path).unwrap()).unwrap();
    for i in 0..NODES {
        genesis["validators"][i]["p2p_address"] =
            format!("{}:{P2P_PORT}", Hosts::peer_ip(i)).into();
        let config = dir.join(format!("node-{i}/config.toml"));
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                &format!("127.0.0.1:{}", P2P_PORT + i as u16),
                &format!("{}:{P2P_PORT}", Hosts::peer_ip(i)),
            )
            .replace(
                &format!("127.0.0.1:{}", API_PORT + i as u16),
                &format!("10.79.{i}.2:{API_PORT}"),
            );
        std::fs::write(&config, text).unwrap();
    }
    std::fs::write(&genesis_path, genesis.to_string()).unwrap();

    let tag = format!("e{}", std::process::id() % 100_000);
    let mut hosts = match Hosts::build(&tag, &dir) {
        Ok(hosts) => hosts,
        Err(error) => panic!("cannot build the hosts: {error}"),
    };
    for i in 0..NODES {
        hosts.start(i);
    }
    wait_until("blocks on every host", Duration::from_secs(60), || {
        heights().iter().all(|h| h.is_some_and(|h| h >= 2))
    });

    // A custodial patient at node 0 and a clinician of node 0, who writes through node 1.
    let institution = dir.join("node-0/validator.key");
    let custody = dir.join("node-0/data/custody");
    let patient = ok(common::cli(&[
        "patient",
        "register",
        "--api",
        &Hosts::api(0),
        "--key",
        path(&institution),
        "--custody",
        path(&custody),
    ]))
    .trim()
    .to_string();
    let clinician = dir.join("clinician.key");
    ok(common::cli(&[
        "identity",
        "enroll",
        "--api",
        &Hosts::api(0),
        "--key",
        path(&institution),
        "--out",
        path(&clinician),
    ]));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_load(Hosts::api(1), clinician, patient, &acked, &stop);
    let acked_count = || acked.lock().unwrap().len();
    wait_until("writes acknowledged", Duration::from_secs(60), || {
        acked_count() >= 10
    });

    // 1. Node 3 cut off from its peers.
    for j in 0..3 {
        hosts.cut(j, 3).unwrap();
    }
    let before = (acked_count(), height(&Hosts::api(0)).unwrap());
    wait_until("three of four finalize", Duration::from_secs(60), || {
        height(&Hosts::api(0)).is_some_and(|h| h >= before.1 + 5) && acked_count() >= before.0 + 10
    });
    let isolated = height(&Hosts::api(3)).unwrap();
    for j in 0..3 {
        hosts.heal(j, 3).unwrap();
    }
    let target = height(&Hosts::api(0)).unwrap();
    assert!(target > isolated + 3, "node 3 fell behind while cut off");
    wait_until("node 3 catches up", Duration::from_secs(60), || {
        height(&Hosts::api(3)).is_some_and(|h| h >= target)
    });

    // 2. Halves of two: no quorum anywhere, then healed.
    let split = Hosts::pairs(&[0, 1], &[2, 3]);
    for &(i, j) in &split {
        hosts.cut(i, j).unwrap();
    }
    std::thread::sleep(Duration::from_secs(3)); // blocks already voted on land
    let stalled = heights();
    std::thread::sleep(Duration::from_secs(10));
    let after = heights();
    // A node may still learn a block its partner finalized before the cut (it lagged by
    // one); none may go beyond the highest block finalized before it.
    let before = stalled.iter().flatten().max().copied();
    for i in 0..NODES {
        assert!(
            after[i] <= before,
            "node {i} finalized without a quorum: {stalled:?} then {after:?}"
        );
    }
    for &(i, j) in &split {
        hosts.heal(i, j).unwrap();
    }
    let resumed_from = after.iter().flatten().copied().max().unwrap();
    let healed = Instant::now();
    wait_until("finalizing again", Duration::from_secs(60), || {
        heights()
            .iter()
            .all(|h| h.is_some_and(|h| h >= resumed_from + 3))
    });
    eprintln!(
        "finalizing again {:?} after the split healed",
        healed.elapsed()
    );

    // 3. Node 2 killed and restarted.
    hosts.kill(2);
    let writes = acked_count();
    wait_until(
        "writes while node 2 is down",
        Duration::from_secs(60),
        || acked_count() >= writes + 10,
    );
    hosts.start(2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    // Every acknowledged create on every host.
    let ids = acked.lock().unwrap().clone();
    for i in 0..NODES {
        let api = Hosts::api(i);
        let key = dir.join(format!("node-{i}/validator.key"));
        let mut token = None;
        wait_until("a login", Duration::from_secs(60), || {
            token = try_token(&api, &key);
            token.is_some()
        });
        let token = token.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in &ids {
            while status_of(&format!("{api}/records/{id}/1/envelope"), &token) != Some(200) {
                assert!(Instant::now() < deadline, "node {i} never got record {id}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let (_, status) = common::get_as(&format!("{api}/chain/status"), &token).unwrap();
        assert_eq!(status["blobs_missing"], 0, "node {i}: {status}");
    }
    eprintln!(
        "{} acknowledged creates, all on every host; heights {:?}",
        ids.len(),
        heights()
    );
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}
