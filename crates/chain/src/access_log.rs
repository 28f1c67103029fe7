//! The gateway's access log: reads it served, made durable before the answer and put on chain
//! in batches (`Payload::AccessLog`).
//!
//! A consented read is decided by the gateway with the chain's own contract code against its
//! final state (`ehrchain_contracts::access::decide_read`). Before the record is revealed, the read
//! is appended to a local journal and flushed (`fdatasync`, one flush for every read that
//! arrived meanwhile). A batcher then submits the journal, in order, as access logs signed by
//! the institution: entry numbers continue the institution's on-chain sequence, so a log sent
//! twice (after a crash, or a batch the pool dropped) records each read once. At start-up the
//! journal entries the chain has not recorded are sent again. Nothing is revealed that is not
//! in the journal, and nothing in the journal is forgotten before the chain holds it.
//!
//! The journal's files are `ehrchain_storage::journal` (drawn byte by byte there and in
//! `docs/design/storage.md`). A torn last entry is cut at start-up; damage anywhere else stops
//! the node, since reads it served could otherwise be lost from the trail unnoticed.
//!
//! The writer and the batcher are runtime tasks on the runtime's clock, so the seeded
//! simulation runs them beside the validators (the writer has a thread of its own in
//! production: its flushes block).

use crate::{Chain, account::Account};
use commonware_runtime::telemetry::metrics::{
    Counter, Gauge, GaugeExt as _, MetricsExt as _, Registered,
};
use commonware_runtime::{Blob, Clock, Metrics, Spawner};
use ehrchain_contracts::state::Reader as _;
use ehrchain_storage::journal::{self, Appender, ENTRY_BYTES, segment_path};
use ehrchain_types::{
    PublicKey,
    transaction::{ACCESS_LOG_ENTRIES_MAX, AccessLogEntry},
};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Most reads waiting for one flush (the writer takes them as one group).
const GROUP_MAX: usize = 4_096;
/// Most reads queued for the writer.
const QUEUE_MAX: usize = 16_384;
/// Most journalled reads the chain has not recorded yet; past it, reads wait with 503.
pub const UNRECORDED_MAX: usize = 500_000;
/// The oldest final state (by its block time, against this node's clock) a gateway decides a
/// read against. A node cut off from the others stops deciding on its own within this long,
/// so a revocation it has not seen cannot be ignored for longer; its reads then wait for their
/// own `Access` transaction, which cannot commit until it is back.
pub const DECISION_STATE_AGE_MAX_MS: u64 = 5_000;

/// Whether a final state whose newest block is from `state_ms` is recent enough, at wall time
/// `wall_ms`, to decide reads against. A busy chain finalizes blocks every few milliseconds;
/// a resting one only per heartbeat, but it certifies views all along. So the state is fresh
/// if its block is at most [`DECISION_STATE_AGE_MAX_MS`] old, or if this node saw a consensus
/// certificate within that long and the block is at most a heartbeat older still: a node that
/// hears a quorum's certificates is not cut off, and any block with a revocation in it would
/// have been finalized instead of the views being nullified.
pub fn state_is_fresh<B: Blob>(chain: &Chain<B>, wall_ms: u64, state_ms: u64) -> bool {
    let age = wall_ms.saturating_sub(state_ms);
    age <= DECISION_STATE_AGE_MAX_MS
        || (wall_ms.saturating_sub(chain.progress_ms()) <= DECISION_STATE_AGE_MAX_MS
            && age <= chain.heartbeat_ms() + DECISION_STATE_AGE_MAX_MS)
}
/// How often the batcher looks for new entries and the chain's progress.
const BATCH_TICK: Duration = Duration::from_millis(20);
/// Least time between two warnings that the log cannot be submitted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a read could not be logged.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the access log is backed up; retry shortly")]
    Busy,
    #[error("the access log is not writable")]
    Stopped,
}

struct Request {
    entry: AccessLogEntry,
    done: tokio::sync::oneshot::Sender<()>,
}

/// Journalled entries the chain has not recorded yet, oldest first, and the segments.
#[derive(Default)]
struct Unrecorded {
    entries: VecDeque<(u64, AccessLogEntry)>,
    /// First entry number of each segment, oldest first (the last is being written).
    segments: Vec<u64>,
}

/// What the access log counts, where it happens.
pub struct AccessLogMetrics {
    unrecorded: Gauge,
    journalled: Counter,
    batches: Counter,
}

impl AccessLogMetrics {
    /// Counted, not exported.
    pub fn detached() -> Self {
        Self {
            unrecorded: Registered::detached(Default::default()),
            journalled: Registered::detached(Default::default()),
            batches: Registered::detached(Default::default()),
        }
    }

    /// Counted and exported through `context` (the node's metrics registry).
    pub fn register(context: &impl Metrics) -> Self {
        Self {
            unrecorded: context.gauge(
                "unrecorded",
                "Reads this gateway answered that the chain has not recorded yet.",
            ),
            journalled: context.counter(
                "journalled",
                "Reads journalled (flushed) before their record was revealed.",
            ),
            batches: context.counter(
                "batches",
                "Access-log transactions submitted to put journalled reads on chain.",
            ),
        }
    }
}

/// The journal and its writer.
pub struct AccessLog {
    dir: PathBuf,
    queue: tokio::sync::mpsc::Sender<Request>,
    unrecorded: Arc<Mutex<Unrecorded>>,
    written: Arc<tokio::sync::Notify>,
    metrics: AccessLogMetrics,
}

impl AccessLog {
    /// Open the journal in `dir`, its writer a task of `context`. `recorded` is the
    /// institution's next entry number on chain: entries before it are on the trail already.
    pub fn open(
        context: impl Spawner,
        dir: &Path,
        recorded: u64,
        metrics: AccessLogMetrics,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (entries, mut segments) = journal::replay(dir)?;
        let next = entries
            .last()
            .map_or(recorded, |(n, _)| (n + 1).max(recorded));
        let continues = segments
            .last()
            .is_some_and(|first| entries.last().map_or(*first, |(n, _)| n + 1) == next);
        if !continues {
            // A new journal, or one behind the chain (its entries are all recorded).
            segments.push(next);
        }
        let current = *segments.last().expect("a segment");
        let file = Appender::open(dir, current)?;
        let unrecorded = Arc::new(Mutex::new(Unrecorded {
            entries: entries
                .into_iter()
                .filter(|(n, _)| *n >= recorded)
                .collect(),
            segments,
        }));
        let (queue, requests) = tokio::sync::mpsc::channel(QUEUE_MAX);
        let written = Arc::new(tokio::sync::Notify::new());
        let writer = Writer {
            file,
            next,
            unrecorded: unrecorded.clone(),
            written: written.clone(),
        };
        context.dedicated().spawn(move |_| writer.run(requests));
        let log = Self {
            dir: dir.to_path_buf(),
            queue,
            unrecorded,
            written,
            metrics,
        };
        log.publish();
        Ok(log)
    }

    /// Journal reads; returns once all of them are on disk (in one flush when they fit).
    pub async fn record(&self, entries: Vec<AccessLogEntry>) -> Result<(), LogError> {
        if self.unrecorded.lock().expect("access log").entries.len() >= UNRECORDED_MAX {
            return Err(LogError::Busy);
        }
        let mut flushed = Vec::with_capacity(entries.len());
        for entry in entries {
            let (done, written) = tokio::sync::oneshot::channel();
            self.queue
                .send(Request { entry, done })
                .await
                .map_err(|_| LogError::Stopped)?;
            flushed.push(written);
        }
        let count = flushed.len() as u64;
        for written in flushed {
            written.await.map_err(|_| LogError::Stopped)?;
        }
        self.metrics.journalled.inc_by(count);
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let _ = self.metrics.unrecorded.try_set(self.unrecorded());
    }

    /// Journalled reads the chain has not recorded yet.
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.lock().expect("access log").entries.len()
    }

    /// Forget entries before `recorded` (the chain's next entry number) and delete segments
    /// that hold only such entries.
    fn recorded(&self, recorded: u64) {
        let mut unrecorded = self.unrecorded.lock().expect("access log");
        while unrecorded
            .entries
            .front()
            .is_some_and(|(n, _)| *n < recorded)
        {
            unrecorded.entries.pop_front();
        }
        let _ = self.metrics.unrecorded.try_set(unrecorded.entries.len());
        while unrecorded.segments.len() > 1 && unrecorded.segments[1] <= recorded {
            let first = unrecorded.segments.remove(0);
            let path = segment_path(&self.dir, first);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, segment = %path.display(), "cannot delete a recorded access log segment");
            }
        }
    }

    /// Up to `ACCESS_LOG_ENTRIES_MAX` consecutive entries from `from`, if any are journalled.
    fn batch(&self, from: u64) -> Vec<AccessLogEntry> {
        let unrecorded = self.unrecorded.lock().expect("access log");
        let Some((front, _)) = unrecorded.entries.front() else {
            return Vec::new();
        };
        let skip = from.saturating_sub(*front) as usize;
        unrecorded
            .entries
            .iter()
            .skip(skip)
            .take(ACCESS_LOG_ENTRIES_MAX)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

struct Writer {
    file: Appender,
    next: u64,
    unrecorded: Arc<Mutex<Unrecorded>>,
    written: Arc<tokio::sync::Notify>,
}

impl Writer {
    async fn run(mut self, mut requests: tokio::sync::mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(GROUP_MAX);
        let mut bytes = Vec::with_capacity(GROUP_MAX * ENTRY_BYTES);
        while let Some(first) = requests.recv().await {
            group.push(first);
            while group.len() < GROUP_MAX {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            bytes.clear();
            for (i, request) in group.iter().enumerate() {
                journal::encode(self.next + i as u64, &request.entry, &mut bytes);
            }
            if let Err(error) = self.write(&bytes) {
                // The journal's state on disk is unknown: stop rather than serve reads that
                // might not reach the trail.
                tracing::error!(%error, "cannot write the access log; stopping the node");
                std::process::exit(1);
            }
            let mut unrecorded = self.unrecorded.lock().expect("access log");
            for request in group.drain(..) {
                unrecorded.entries.push_back((self.next, request.entry));
                self.next += 1;
                let _ = request.done.send(());
            }
            drop(unrecorded);
            self.written.notify_one();
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(first) = self.file.append(self.next, bytes)? {
            self.unrecorded
                .lock()
                .expect("access log")
                .segments
                .push(first);
        }
        Ok(())
    }
}

/// Submit the journal to `chain`, in order, as `account`'s access logs, until the process
/// ends. `account` is the institution whose gateway served the reads.
pub async fn run<E: Clock, B: Blob>(
    context: E,
    chain: Chain<B>,
    log: Arc<AccessLog>,
    account: Arc<Account>,
) {
    use commonware_cryptography::Signer as _;
    let institution: PublicKey = account.key.public_key();
    let recorded_now = || chain.read(|s| s.access_log_next(&institution));
    let mut sent = recorded_now();
    // Logs submitted and not yet recorded: the entry number after each, and its transaction.
    let mut in_flight: VecDeque<(u64, ehrchain_types::Digest)> = VecDeque::new();
    let mut warned: Option<std::time::SystemTime> = None;
    loop {
        commonware_macros::select! {
            _ = log.written.notified() => {},
            _ = context.sleep(BATCH_TICK) => {},
        }
        let recorded = recorded_now();
        log.recorded(recorded);
        while in_flight.front().is_some_and(|(end, _)| *end <= recorded) {
            in_flight.pop_front();
        }
        // A log the pool dropped (or refused after all) is neither pending nor on chain: send
        // again from the chain's next entry (entries recorded meanwhile are skipped). The
        // oldest is enough to look at: a later one is dropped only after it, or is looked at
        // once the ones before it are recorded.
        if in_flight
            .front()
            .is_some_and(|(_, id)| !chain.is_pending(id) && chain.location(id).is_none())
        {
            tracing::warn!(recorded, sent, "an access log was dropped; sending again");
            in_flight.clear();
            sent = recorded;
        }
        sent = sent.max(recorded);
        loop {
            let entries = log.batch(sent);
            if entries.is_empty() {
                break;
            }
            let count = entries.len() as u64;
            let payload = ehrchain_types::Payload::AccessLog {
                first: sent,
                entries,
            };
            match account.submit(&chain, payload).await {
                Ok(tx) => {
                    log.metrics.batches.inc();
                    sent += count;
                    in_flight.push_back((sent, tx.id()));
                }
                Err(error) => {
                    // Say it once in a while, not every tick: the chain may be stalled for long.
                    let now = context.current();
                    if warned
                        .is_none_or(|at| now.duration_since(at).unwrap_or_default() > WARN_EVERY)
                    {
                        tracing::warn!(
                            code = ?error.code(),
                            unrecorded = log.unrecorded(),
                            "cannot submit the access log yet"
                        );
                        warned = Some(now);
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_cryptography::Signer as _;
    use commonware_runtime::{Runner as _, Supervisor as _, deterministic};

    fn entry(n: u8) -> AccessLogEntry {
        AccessLogEntry {
            session: ehrchain_types::PrivateKey::from_seed(7).public_key(),
            record: [n; 16],
            purpose: 1,
            checked_ms: 1_000 + u64::from(n),
        }
    }

    async fn write(log: &AccessLog, range: std::ops::Range<u8>) {
        log.record(range.map(entry).collect()).await.unwrap();
    }

    #[test]
    fn journalled_reads_survive_a_restart_until_the_chain_records_them() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                0,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            write(&log, 0..5).await;
            assert_eq!(log.batch(0).len(), 5);
            assert_eq!(log.batch(3), vec![entry(3), entry(4)]);
            drop(log);
            // The chain recorded the first two: the other three are sent again.
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                2,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            assert_eq!(log.batch(2), vec![entry(2), entry(3), entry(4)]);
            write(&log, 5..6).await;
            assert_eq!(log.batch(2).last(), Some(&entry(5)));
            log.recorded(6);
            assert_eq!(log.unrecorded(), 0);
            drop(log);
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                6,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            assert!(log.batch(6).is_empty());
            // Numbers go on from the chain's, also when the journal is behind it.
            drop(log);
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                9,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            write(&log, 9..10).await;
            assert_eq!(log.batch(9), vec![entry(9)]);
        });
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_it_stops_the_start() {
        deterministic::Runner::default().start(|context| async move {
            let dir = tempfile::tempdir().unwrap();
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                0,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            write(&log, 0..3).await;
            drop(log);
            let path = segment_path(dir.path(), 0);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(&[1, 2, 3]);
            std::fs::write(&path, &bytes).unwrap();
            let log = AccessLog::open(
                context.child("log"),
                dir.path(),
                0,
                AccessLogMetrics::detached(),
            )
            .unwrap();
            assert_eq!(log.batch(0).len(), 3);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                3 * ENTRY_BYTES as u64
            );
            drop(log);
            // A damaged entry in a segment that is not the last one is not silently dropped.
            std::fs::write(segment_path(dir.path(), 3), []).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[ENTRY_BYTES + 20] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                AccessLog::open(
                    context.child("log"),
                    dir.path(),
                    0,
                    AccessLogMetrics::detached()
                )
                .is_err()
            );
        });
    }
}
