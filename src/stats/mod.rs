//! Container stats: the one collector of per-container CPU, memory, block I/O and network
//! counters (design.md Round 2, "telemetry").
//!
//! ```text
//! cgroup files (v2, or v1 per controller) ─┐
//! /proc/stat, /proc/<pid>/net/dev ─────────┴─► Reader ─Round─► Book (ring per container)
//!                                                               ├─► sets()         TCS PublishMetrics (tcs.md §6)
//!                                                               ├─► docker_stats() metadata /stats (task-metadata.md §6)
//!                                                               └─► Stats: MetricsSection  /metrics
//! ```
//!
//! It owns: where each container's cgroup is (layout detected once, the usual directories
//! tried, else a bounded search, then cached: [`cgroup`]), reading one [`cgroup::Sample`] per
//! running container per round with one `read` per file into a reused buffer, the TCS figures and
//! stats sets ([`sets`]), Docker's stats JSON shape ([`docker`]), a ring of [`RING_CAPACITY`]
//! points per container ([`book`]), and its `/metrics` section.
//!
//! It talks to nothing but files: the cgroup hierarchy and `/proc`, each behind an injectable
//! root so tests run on temporary trees. Which containers run comes from the caller (the engine's
//! snapshot), once per round.
//!
//! It never asks Docker for stats (no stats stream, no one-shot call), never writes a cgroup
//! file, never holds a file open between reads, and never sends anything: the TCS session, the
//! task endpoint and the local API take what it computed.

pub mod book;
pub mod cgroup;
pub mod docker;
pub mod parse;
pub mod prometheus;
pub mod sets;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::Ticker;

pub use book::NetworkRate;
pub use cgroup::{Counters, Layout};
pub use sets::{
    ContainerSets, CwStatsSet, NetworkStatsSet, SetError, StorageStatsSet, ULongStatsSet,
};

/// Points kept per container. Collections (TCS, every 20 s) mark every point sent, so the ring
/// only has to hold what accrues between two of them, with room for late or skipped ones: at the
/// shortest sampling interval (5 s) that is 200 s, ten collections, more than the official
/// agent's 80-sample streaming buffer spans (80 s). A point is 128 bytes: 200 containers keep
/// about 1 MiB.
pub const RING_CAPACITY: usize = 40;

/// How long after its start a container whose sets fail is left out silently (tcs.md §6.3).
pub const GRACE: Duration = Duration::from_secs(30);

/// A running container to sample, as the engine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// Docker's container id (64 hex digits).
    pub docker_id: String,
    /// Docker's container name (the JSON's `name` is `/` + this; a leading `/` is kept once).
    pub name: String,
    /// When Docker started it: the start of the grace period of its TCS sets.
    pub started_at: Option<SystemTime>,
}

/// The collector for one owner: reads rounds and keeps what they found. For sharing between
/// the sampling task and its readers, see [`Stats`].
pub struct Collector {
    reader: cgroup::Reader,
    book: book::Book,
}

impl Collector {
    /// A collector of the cgroup hierarchy under `cgroup_root` and the processes under
    /// `proc_root`. Detects the cgroup layout now.
    pub fn new(cgroup_root: PathBuf, proc_root: PathBuf) -> Collector {
        Collector {
            reader: cgroup::Reader::new(cgroup_root, proc_root),
            book: book::Book::default(),
        }
    }

    /// The host's: `/sys/fs/cgroup` and `/proc`.
    pub fn system() -> Collector {
        Collector::new(PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/proc"))
    }

    /// The layout detected at construction.
    pub fn layout(&self) -> &Layout {
        self.reader.layout()
    }

    /// One round: samples every container of `running`, forgets every other. A container that
    /// cannot be read (gone since the listing) gets no sample this round; the others are not
    /// affected. `now` is the round's wall-clock time.
    pub fn sample(&mut self, running: &[Running], now: SystemTime) {
        let ids: Vec<&str> = running.iter().map(|r| r.docker_id.as_str()).collect();
        let round = self.reader.read(&ids, now);
        self.book.record(running, round, now);
    }

    /// The tcs.md §6.3 stats sets of one container over its samples not yet marked sent;
    /// `network` asks for `networkStatsSet` (bridge-mode tasks).
    pub fn sets(&self, docker_id: &str, network: bool) -> Result<ContainerSets, SetError> {
        self.book.sets(docker_id, network)
    }

    /// After a successful collection: every sample in every ring is marked sent.
    pub fn mark_sent(&mut self) {
        self.book.mark_sent();
    }

    /// Docker's stats JSON (`ContainerStats`) of one container from its last two samples;
    /// `None` if it is not tracked or has no sample yet.
    pub fn docker_stats(&self, docker_id: &str) -> Option<serde_json::Value> {
        self.book.docker_stats(docker_id)
    }

    /// Receive and send rates between the last two samples (v4 `network_rate_stats`); `None`
    /// until there are two samples, or without a network of its own.
    pub fn network_rate(&self, docker_id: &str) -> Option<NetworkRate> {
        self.book.network_rate(docker_id)
    }

    /// Whether the container was in the last round's running list (sampled or not yet).
    pub fn tracks(&self, docker_id: &str) -> bool {
        self.book.containers.contains_key(docker_id)
    }

    /// Files opened for reading so far, all rounds.
    pub fn reads(&self) -> u64 {
        self.reader
            .counters()
            .reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The reader's counters (reads, rounds, last round's reads and duration).
    pub fn counters(&self) -> Arc<Counters> {
        self.reader.counters()
    }

    /// The cached cgroup directory of a container, relative to the hierarchy root(s).
    pub fn cgroup_of(&self, docker_id: &str) -> Option<PathBuf> {
        self.reader.place_of(docker_id).map(PathBuf::from)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The collector shared between the sampling task ([`run`]), the TCS session, the task endpoint
/// and `/metrics`. Cheap to clone.
///
/// Two `std::sync::Mutex`es, never held across `.await`: the reader's (held for a whole round of
/// file reads, only by the sampling task) and the book's (held only to record a round or answer
/// a question), so an answer never waits for file reads.
#[derive(Clone)]
pub struct Stats {
    reader: Arc<Mutex<cgroup::Reader>>,
    book: Arc<Mutex<book::Book>>,
    counters: Arc<Counters>,
}

impl Stats {
    /// Shares `collector`.
    pub fn new(collector: Collector) -> Stats {
        let counters = collector.reader.counters();
        Stats {
            reader: Arc::new(Mutex::new(collector.reader)),
            book: Arc::new(Mutex::new(collector.book)),
            counters,
        }
    }

    /// [`Collector::sample`].
    pub fn sample(&self, running: &[Running], now: SystemTime) {
        let ids: Vec<&str> = running.iter().map(|r| r.docker_id.as_str()).collect();
        let round = lock(&self.reader).read(&ids, now);
        lock(&self.book).record(running, round, now);
    }

    /// [`Collector::sets`].
    pub fn sets(&self, docker_id: &str, network: bool) -> Result<ContainerSets, SetError> {
        lock(&self.book).sets(docker_id, network)
    }

    /// [`Collector::mark_sent`].
    pub fn mark_sent(&self) {
        lock(&self.book).mark_sent();
    }

    /// [`Collector::docker_stats`].
    pub fn docker_stats(&self, docker_id: &str) -> Option<serde_json::Value> {
        lock(&self.book).docker_stats(docker_id)
    }

    /// [`Collector::network_rate`].
    pub fn network_rate(&self, docker_id: &str) -> Option<NetworkRate> {
        lock(&self.book).network_rate(docker_id)
    }

    /// [`Collector::tracks`].
    pub fn tracks(&self, docker_id: &str) -> bool {
        lock(&self.book).containers.contains_key(docker_id)
    }

    /// [`Collector::reads`] (without waiting for a round in progress).
    pub fn reads(&self) -> u64 {
        self.counters
            .reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The reader's counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn tracks_any(&self) -> bool {
        !lock(&self.book).containers.is_empty()
    }
}

/// Where the collector learns what to sample: the containers running now, and when that may
/// have changed (the app joins the engine's snapshot channel).
pub trait Targets: Send {
    /// The containers to sample now.
    fn running(&self) -> Vec<Running>;
    /// Resolves when what runs may have changed; `false` once it never will again.
    fn changed(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

/// Samples the running containers of `targets` every `interval` on the agent's time grid
/// ([`Ticker`]: the first round at once) until `cancel`. With nothing running and nothing tracked
/// it neither reads nor ticks: it drops its timers and waits for `targets` to change (issue 23:
/// a subsystem wakes the process only when it has work), then samples at once.
///
/// Cost, measured on the 2-core test VM (cgroup v1, ten files a container plus `/proc/stat` once
/// a round): about 8 µs of CPU a file, 90 µs a container, so 200 containers every 5 s (the
/// shortest `ECS_POLLING_METRICS_WAIT_DURATION`) take about 0.35 % of one core; every 2 s they
/// would exceed the 0.5 % budget.
///
/// Each round's file reads run on the blocking pool: even one container's reads take about
/// 90 µs and 200 containers' about 18 ms, which would stall the runtime's one thread (every
/// subsystem's I/O) for as long, while the hand-off costs two thread wake-ups. At intervals up to
/// 10 s the pool keeps its thread between rounds (tokio keeps an idle one 10 s).
pub async fn run(
    stats: Stats,
    interval: Duration,
    mut targets: impl Targets,
    cancel: CancellationToken,
) {
    let mut ticker = Ticker::new(interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let list = targets.running();
        if list.is_empty() && !stats.tracks_any() {
            // Idle: a ticker keeps two timers in the wheel, each a wake-up of the process.
            ticker = Ticker::new(interval);
            tokio::select! {
                _ = cancel.cancelled() => return,
                alive = targets.changed() => if !alive { return },
            }
            continue;
        }
        let now = SystemTime::now();
        let s = stats.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || s.sample(&list, now)).await {
            warn!(error = %error, "Container stats round failed.");
        }
    }
}
