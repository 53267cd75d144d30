//! Where a container's counters are and how they are read: the cgroup layout (detected once),
//! each container's cgroup directory (tried at the usual places, else searched for, then cached),
//! and one [`Sample`] per container per round from its files.
//!
//! Every file is opened, read with one `read` into the reader's one reused buffer, and closed
//! at once: a round of 200 containers never holds more than one descriptor. `/proc/stat` is read
//! once per round for all containers, `/proc/meminfo` once per reader.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::debug;

use super::parse::{self, BlkEntry, IfCounters};

/// First size of the read buffer; every file the collector reads fits, except `/proc/stat` on
/// hosts with many CPUs or interrupts, for which it grows once and stays grown.
const BUFFER_BYTES: usize = 16 * 1024;
/// How deep below the hierarchy's root a search for an unknown container directory looks
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/docker-<id>.scope`
/// is four levels down; an ECS cgroup parent `/ecs/<task-id>/<id>` three).
pub const SEARCH_DEPTH: usize = 5;
/// Most directories one search visits, so a huge hierarchy costs a bounded time.
pub const SEARCH_DIRS: usize = 4096;
/// A container whose directory a search did not find is searched for again only this many rounds
/// later (it may not have started yet, or stopped just now).
pub const SEARCH_AGAIN_ROUNDS: u64 = 6;

/// The cgroup version in use, detected once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2: one unified hierarchy at the root (`cgroup.controllers` there).
    V2,
    /// cgroup v1 (or hybrid, whose `unified` mount holds no controllers): one hierarchy per
    /// controller, each the directory below the root where it is mounted; `None` if absent.
    V1 {
        /// `cpuacct` (usage, user/system).
        cpuacct: Option<PathBuf>,
        /// `cpu` (throttling).
        cpu: Option<PathBuf>,
        /// `memory`.
        memory: Option<PathBuf>,
        /// `blkio`.
        blkio: Option<PathBuf>,
        /// `pids`.
        pids: Option<PathBuf>,
        /// The blkio hierarchy has the CFQ/BFQ `blkio.io_service_bytes_recursive` file, the
        /// fallback when the throttle file is empty.
        blkio_cfq: bool,
    },
}

impl Layout {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`): v2 if `cgroup.controllers`
    /// exists there, else v1 with each controller at the first of its usual mount names that is
    /// a mounted hierarchy (has `cgroup.procs`): `cpuacct` at `cpuacct`, `cpu,cpuacct` or
    /// `cpuacct,cpu`, and so on.
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            return Layout::V2;
        }
        let find = |names: &[&str]| {
            names
                .iter()
                .map(|n| root.join(n))
                .find(|d| d.join("cgroup.procs").exists())
        };
        let blkio = find(&["blkio"]);
        Layout::V1 {
            cpuacct: find(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]),
            cpu: find(&["cpu", "cpu,cpuacct", "cpuacct,cpu"]),
            memory: find(&["memory"]),
            blkio_cfq: blkio
                .as_ref()
                .is_some_and(|b| b.join("blkio.io_service_bytes_recursive").exists()),
            blkio,
            pids: find(&["pids"]),
        }
    }

    /// Where container directories are tried and searched for: the root (v2), or the memory
    /// hierarchy (v1; cpuacct when memory is absent).
    fn base<'a>(&'a self, root: &'a Path) -> Option<&'a Path> {
        match self {
            Layout::V2 => Some(root),
            Layout::V1 {
                memory, cpuacct, ..
            } => memory.as_deref().or(cpuacct.as_deref()),
        }
    }
}

/// CPU throttling counters (`cpu.stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttling {
    /// Enforcement periods.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Total time throttled, ns.
    pub throttled_time: u64,
}

/// Everything read for one container in one round: what Docker's stats JSON carries and what
/// the TCS figures are computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// When it was read, ns since the Unix epoch.
    pub read_ns: u64,
    /// cgroup v2 (Docker spells block-I/O ops in lower case and has no per-CPU usage there).
    pub v2: bool,
    /// Total CPU time, ns.
    pub cpu_total: u64,
    /// User-mode CPU time, ns.
    pub cpu_user: u64,
    /// Kernel-mode CPU time, ns.
    pub cpu_system: u64,
    /// Per-CPU time, ns (v1 only; empty on v2).
    pub percpu: Vec<u64>,
    /// Throttling counters, when readable.
    pub throttling: Option<Throttling>,
    /// The host's busy-or-idle CPU time, ns (Docker's `system_cpu_usage`), from this round's
    /// `/proc/stat`.
    pub system_cpu: u64,
    /// Online CPUs of the host, from the same `/proc/stat`.
    pub online_cpus: u32,
    /// Memory usage, bytes (`memory.usage_in_bytes` / `memory.current`).
    pub mem_usage: u64,
    /// Highest usage, bytes (v1 only).
    pub mem_max_usage: Option<u64>,
    /// Limit as Docker reports it: the cgroup's, or the host's memory when that is smaller
    /// (no limit).
    pub mem_limit: Option<u64>,
    /// `cache` (v1) or `inactive_file` (v2) of `memory.stat`: what tcs.md §6.2 subtracts.
    pub mem_reclaimable: Option<u64>,
    /// The raw `memory.stat` text (parsed only when Docker's JSON is asked for).
    pub mem_stat: String,
    /// Bytes read, all devices.
    pub blk_read: u64,
    /// Bytes written, all devices.
    pub blk_write: u64,
    /// Per-device entries of `io_service_bytes_recursive`.
    pub blk: Vec<BlkEntry>,
    /// Tasks in the cgroup (`pids.current`), when readable.
    pub pids: Option<u64>,
    /// Interfaces of the container's own network namespace (not `lo`); `None` when it has none
    /// of its own (host network) or no process could be found.
    pub net: Option<Vec<(String, IfCounters)>>,
}

impl Sample {
    /// Network counters summed over the interfaces (tcs.md §6.2), if any.
    pub fn net_sum(&self) -> Option<IfCounters> {
        let ifs = self.net.as_ref()?;
        let mut sum = IfCounters::default();
        for (_, c) in ifs {
            sum.add(c);
        }
        Some(sum)
    }
}

/// What the reader knows of one container between rounds.
#[derive(Clone, Debug)]
struct Place {
    /// The container's cgroup directory relative to each hierarchy's root.
    rel: PathBuf,
    /// A process of the container (for `/proc/<pid>/net/dev`) and whether its network namespace
    /// is its own; found again when reading through it fails.
    pid: Option<(u32, bool)>,
}

/// Counters shared with the `/metrics` section and the bench.
#[derive(Debug, Default)]
pub struct Counters {
    /// Files opened for reading, all rounds (failed opens included: they cost the same syscall).
    pub reads: AtomicU64,
    /// Files opened in the last round.
    pub last_round_reads: AtomicU64,
    /// Rounds taken (rounds with no container read nothing and are not counted).
    pub rounds: AtomicU64,
    /// Duration of the last round, µs.
    pub last_round_micros: AtomicU64,
    /// Searches of the hierarchy for containers not at the usual places.
    pub searches: AtomicU64,
}

/// The one reused buffer and path, and the read count.
struct Files {
    buf: Vec<u8>,
    path: PathBuf,
    reads: u64,
}

impl Files {
    fn new() -> Files {
        Files {
            buf: vec![0; BUFFER_BYTES],
            path: PathBuf::new(),
            reads: 0,
        }
    }

    /// Reads `base/rel/name` (one `read` unless the buffer fills) and returns its text.
    fn read(&mut self, base: &Path, rel: &Path, name: &str) -> Option<&str> {
        self.path.as_mut_os_string().clear();
        self.path.push(base);
        self.path.push(rel);
        self.path.push(name);
        self.reads += 1;
        let mut f = File::open(&self.path).ok()?;
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match f.read(&mut self.buf[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    // Kernel (seq_file) files return all they have in one read when it fits, so
                    // a short read is the end and the second, empty read is saved.
                    if len < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        std::str::from_utf8(&self.buf[..len]).ok()
    }
}

/// One round's readings.
#[derive(Debug, Default)]
pub struct Round {
    /// The samples taken, by Docker id; a container that could not be read is absent.
    pub samples: Vec<(String, Sample)>,
}

/// Reads samples. Owns the roots, the layout and what it learned of each container's place.
pub struct Reader {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    layout: Layout,
    files: Files,
    places: HashMap<String, Place>,
    /// Containers a search missed, with the round it ran in.
    missed: HashMap<String, u64>,
    round: u64,
    /// `MemTotal`, read once (`None` until read, `Some(None)` if unreadable).
    mem_total: Option<Option<u64>>,
    /// The agent's own network namespace (`/proc/self/ns/net`), read once.
    own_netns: Option<Option<PathBuf>>,
    counters: Arc<Counters>,
}

impl Reader {
    /// A reader of the hierarchies under `cgroup_root` and processes under `proc_root`; detects
    /// the layout now.
    pub fn new(cgroup_root: PathBuf, proc_root: PathBuf) -> Reader {
        let layout = Layout::detect(&cgroup_root);
        debug!(?layout, root = %cgroup_root.display(), "Container stats: cgroup layout detected.");
        Reader {
            cgroup_root,
            proc_root,
            layout,
            files: Files::new(),
            places: HashMap::new(),
            missed: HashMap::new(),
            round: 0,
            mem_total: None,
            own_netns: None,
            counters: Arc::new(Counters::default()),
        }
    }

    /// The detected layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The shared counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The cached cgroup directory of a container, relative to the hierarchy root(s).
    pub fn place_of(&self, docker_id: &str) -> Option<&Path> {
        self.places.get(docker_id).map(|p| p.rel.as_path())
    }

    /// Reads one round: every id in `ids`, and forgets every other. `now` is the round's wall
    /// clock time; each container's read time is `now` plus the monotonic time since the round
    /// began.
    pub fn read(&mut self, ids: &[&str], now: SystemTime) -> Round {
        let wanted: HashSet<&str> = ids.iter().copied().collect();
        self.places.retain(|id, _| wanted.contains(id.as_str()));
        self.missed.retain(|id, _| wanted.contains(id.as_str()));
        if ids.is_empty() {
            return Round::default();
        }
        let started = Instant::now();
        let reads_before = self.files.reads;
        self.round += 1;
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);

        self.resolve(ids);
        let (system_cpu, online_cpus) = self
            .files
            .read(&self.proc_root, Path::new(""), "stat")
            .and_then(parse::proc_stat)
            .unwrap_or((0, 0));
        if self.mem_total.is_none() {
            self.mem_total = Some(
                self.files
                    .read(&self.proc_root, Path::new(""), "meminfo")
                    .and_then(parse::mem_total),
            );
        }
        if self.own_netns.is_none() {
            self.own_netns = Some(std::fs::read_link(self.proc_root.join("self/ns/net")).ok());
        }

        let mut round = Round::default();
        for id in ids {
            let Some(place) = self.places.get(*id).cloned() else {
                continue;
            };
            let read_ns = now_ns.saturating_add(started.elapsed().as_nanos() as u64);
            match self.read_one(&place, read_ns, system_cpu, online_cpus) {
                Some((sample, pid)) => {
                    if let Some(p) = self.places.get_mut(*id) {
                        p.pid = pid;
                    }
                    round.samples.push(((*id).to_owned(), sample));
                }
                None => {
                    // Gone (stopped, restarted, removed) between the listing and the read: no
                    // sample this round, and its place is looked up again next round.
                    debug!(container.id = %id, "Container stats: cgroup files unreadable; no sample this round.");
                    self.places.remove(*id);
                }
            }
        }

        let reads = self.files.reads - reads_before;
        self.counters.reads.fetch_add(reads, Ordering::Relaxed);
        self.counters
            .last_round_reads
            .store(reads, Ordering::Relaxed);
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_round_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        round
    }

    /// Finds the directory of every id without one: the usual places first, then one search of
    /// the hierarchy for all still missing (unless searched for recently).
    fn resolve(&mut self, ids: &[&str]) {
        let Some(base) = self.layout.base(&self.cgroup_root).map(Path::to_path_buf) else {
            return;
        };
        let mut missing = Vec::new();
        for id in ids {
            if self.places.contains_key(*id) {
                continue;
            }
            let found = candidates(id)
                .into_iter()
                .find(|rel| base.join(rel).is_dir());
            match found {
                Some(rel) => {
                    self.places
                        .insert((*id).to_owned(), Place { rel, pid: None });
                    self.missed.remove(*id);
                }
                None => {
                    let recent = self
                        .missed
                        .get(*id)
                        .is_some_and(|r| self.round < r + SEARCH_AGAIN_ROUNDS);
                    if !recent {
                        missing.push(*id);
                    }
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        self.counters.searches.fetch_add(1, Ordering::Relaxed);
        let found = search(&base, &missing);
        for id in missing {
            match found.get(id) {
                Some(rel) => {
                    debug!(container.id = %id, path = %rel.display(), "Container stats: cgroup found by search.");
                    self.places.insert(
                        id.to_owned(),
                        Place {
                            rel: rel.clone(),
                            pid: None,
                        },
                    );
                    self.missed.remove(id);
                }
                None => {
                    self.missed.insert(id.to_owned(), self.round);
                }
            }
        }
    }

    /// Reads one container. `None` when an essential file (CPU or memory usage) is unreadable.
    /// Also returns the pid used for its network counters.
    fn read_one(
        &mut self,
        place: &Place,
        read_ns: u64,
        system_cpu: u64,
        online_cpus: u32,
    ) -> Option<(Sample, Option<(u32, bool)>)> {
        let mut s = Sample {
            read_ns,
            system_cpu,
            online_cpus,
            ..Sample::default()
        };
        let rel = place.rel.as_path();
        let mem_total = self.mem_total.flatten();
        let procs_dir: PathBuf;
        match &self.layout {
            Layout::V2 => {
                let root = self.cgroup_root.as_path();
                s.v2 = true;
                let f = &mut self.files;
                let [usage, user, system, periods, throttled, throttled_usec] = parse::keyed(
                    f.read(root, rel, "cpu.stat")?,
                    [
                        "usage_usec",
                        "user_usec",
                        "system_usec",
                        "nr_periods",
                        "nr_throttled",
                        "throttled_usec",
                    ],
                );
                s.cpu_total = usage?.saturating_mul(1000);
                s.cpu_user = user.unwrap_or(0).saturating_mul(1000);
                s.cpu_system = system.unwrap_or(0).saturating_mul(1000);
                if let (Some(p), Some(t), Some(u)) = (periods, throttled, throttled_usec) {
                    s.throttling = Some(Throttling {
                        periods: p,
                        throttled_periods: t,
                        throttled_time: u.saturating_mul(1000),
                    });
                }
                s.mem_usage = f
                    .read(root, rel, "memory.current")
                    .and_then(parse::single)?;
                s.mem_limit = f.read(root, rel, "memory.max").and_then(parse::limit);
                if let Some(text) = f.read(root, rel, "memory.stat") {
                    s.mem_reclaimable = parse::keyed(text, ["inactive_file"])[0];
                    s.mem_stat.push_str(text);
                }
                if let Some(text) = f.read(root, rel, "io.stat") {
                    (s.blk_read, s.blk_write) = parse::io_stat_v2(text, &mut s.blk);
                }
                s.pids = f.read(root, rel, "pids.current").and_then(parse::single);
                procs_dir = root.join(rel);
            }
            Layout::V1 {
                cpuacct,
                cpu,
                memory,
                blkio,
                pids,
                blkio_cfq,
            } => {
                let f = &mut self.files;
                let cpuacct = cpuacct.as_deref()?;
                s.cpu_total =
                    parse::percpu(f.read(cpuacct, rel, "cpuacct.usage_percpu")?, &mut s.percpu)?;
                if let Some(text) = f.read(cpuacct, rel, "cpuacct.stat") {
                    let [user, system] = parse::keyed(text, ["user", "system"]);
                    s.cpu_user = user.unwrap_or(0).saturating_mul(parse::NS_PER_TICK);
                    s.cpu_system = system.unwrap_or(0).saturating_mul(parse::NS_PER_TICK);
                }
                if let Some(text) = cpu.as_deref().and_then(|c| f.read(c, rel, "cpu.stat")) {
                    let [p, t, tt] =
                        parse::keyed(text, ["nr_periods", "nr_throttled", "throttled_time"]);
                    if let (Some(p), Some(t), Some(tt)) = (p, t, tt) {
                        s.throttling = Some(Throttling {
                            periods: p,
                            throttled_periods: t,
                            throttled_time: tt,
                        });
                    }
                }
                let memory = memory.as_deref()?;
                s.mem_usage = f
                    .read(memory, rel, "memory.usage_in_bytes")
                    .and_then(parse::single)?;
                s.mem_max_usage = f
                    .read(memory, rel, "memory.max_usage_in_bytes")
                    .and_then(parse::single);
                s.mem_limit = f
                    .read(memory, rel, "memory.limit_in_bytes")
                    .and_then(parse::limit);
                if let Some(text) = f.read(memory, rel, "memory.stat") {
                    s.mem_reclaimable = parse::keyed(text, ["cache"])[0];
                    s.mem_stat.push_str(text);
                }
                if let Some(blkio) = blkio.as_deref() {
                    if let Some(text) =
                        f.read(blkio, rel, "blkio.throttle.io_service_bytes_recursive")
                    {
                        (s.blk_read, s.blk_write) = parse::blkio_v1(text, &mut s.blk);
                    }
                    if s.blk.is_empty()
                        && *blkio_cfq
                        && let Some(text) = f.read(blkio, rel, "blkio.io_service_bytes_recursive")
                    {
                        (s.blk_read, s.blk_write) = parse::blkio_v1(text, &mut s.blk);
                    }
                }
                s.pids = pids
                    .as_deref()
                    .and_then(|p| f.read(p, rel, "pids.current"))
                    .and_then(parse::single);
                procs_dir = memory.join(rel);
            }
        }
        // Docker reports the host's memory as the limit of a container without one.
        if let Some(total) = mem_total {
            s.mem_limit = Some(s.mem_limit.map_or(total, |l| l.min(total)));
        }
        let pid = self.read_net(&procs_dir, place.pid, &mut s);
        Some((s, pid))
    }

    /// Fills `s.net` from `/proc/<pid>/net/dev` of a process of the container: the remembered
    /// one, else the first of `cgroup.procs` (found again when the remembered one is gone).
    fn read_net(
        &mut self,
        procs_dir: &Path,
        known: Option<(u32, bool)>,
        s: &mut Sample,
    ) -> Option<(u32, bool)> {
        let mut pid = known;
        loop {
            let fresh = pid.is_none();
            let (p, own) = match pid {
                Some(known) => known,
                None => {
                    let found = self
                        .files
                        .read(procs_dir, Path::new(""), "cgroup.procs")
                        .and_then(parse::first_pid)?;
                    (found, self.own_namespace(found))
                }
            };
            if !own {
                // Host network (or the agent's): Docker reports no `networks` for it.
                return Some((p, own));
            }
            let dir = self.proc_root.join(p.to_string());
            if let Some(text) = self.files.read(&dir, Path::new("net"), "dev") {
                let mut ifs = Vec::new();
                parse::net_dev(text, &mut ifs);
                s.net = (!ifs.is_empty()).then_some(ifs);
                return Some((p, own));
            }
            if fresh {
                return None;
            }
            // The remembered process is gone: ask cgroup.procs for another.
            pid = None;
        }
    }

    /// Whether process `pid` has a network namespace other than the agent's. Unknown (no `ns`
    /// links, as in fixtures) counts as its own.
    fn own_namespace(&self, pid: u32) -> bool {
        let Some(Some(agent)) = &self.own_netns else {
            return true;
        };
        let theirs = std::fs::read_link(self.proc_root.join(format!("{pid}/ns/net")));
        theirs.map_or(true, |t| t != *agent)
    }
}

/// The usual places of a container's directory, relative to a hierarchy root: Docker's
/// cgroupfs driver (`docker/<id>`) and its systemd driver (`system.slice/docker-<id>.scope`).
fn candidates(id: &str) -> [PathBuf; 2] {
    [
        Path::new("docker").join(id),
        Path::new("system.slice").join(format!("docker-{id}.scope")),
    ]
}

/// Walks `base` breadth first, at most [`SEARCH_DEPTH`] levels and [`SEARCH_DIRS`] directories,
/// for directories whose names contain one of `ids`; the shallowest match of each id wins.
fn search(base: &Path, ids: &[&str]) -> HashMap<String, PathBuf> {
    let mut found = HashMap::new();
    let mut queue = VecDeque::from([(PathBuf::new(), 0usize)]);
    let mut visited = 0;
    while let Some((rel, depth)) = queue.pop_front() {
        visited += 1;
        if visited > SEARCH_DIRS || found.len() == ids.len() {
            break;
        }
        let Ok(entries) = std::fs::read_dir(base.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let child = rel.join(&name);
            if let Some(id) = matching(&name, ids)
                && !found.contains_key(id)
            {
                found.insert(id.to_owned(), child.clone());
            }
            if depth + 1 < SEARCH_DEPTH {
                queue.push_back((child, depth + 1));
            }
        }
    }
    found
}

fn matching<'a>(name: &OsStr, ids: &[&'a str]) -> Option<&'a str> {
    let name = name.to_str()?;
    ids.iter().copied().find(|id| name.contains(id))
}
