//! Raw inputs of the host metrics: `/proc/meminfo` parsed into [`MemInfo`], `statvfs` results as
//! [`StatFs`], and the [`Reader`] that takes one collection pass (metrics.md §3.1, §5, §6.1 rule 6).
//!
//! Parsing is pure and tested on recorded fixtures. The reader reads the memory summary once per
//! pass and calls statvfs once per selected filesystem, each call on a blocking thread with its
//! own deadline, so a hung network mount can never stall collection: a mount that timed out is
//! skipped for the next [`TIMEOUT_SKIP_PASSES`] passes, and never has two calls in flight.
//!
//! This module never computes a metric (that is [`super::catalogue`]) and never decides which
//! mounts qualify (that is [`super::mounts`]); it only reads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::mounts::{self, Filesystem, Selection};

/// Passes a mount is skipped for after its statvfs timed out (metrics.md §6.1 rule 6).
pub const TIMEOUT_SKIP_PASSES: u32 = 10;

/// The `/proc/meminfo` fields the catalogue uses, in bytes. A field the kernel did not print is
/// `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal.
    pub total: Option<u64>,
    /// MemFree.
    pub free: Option<u64>,
    /// MemAvailable (kernels from 3.14).
    pub available: Option<u64>,
    /// Buffers.
    pub buffers: Option<u64>,
    /// Cached.
    pub cached: Option<u64>,
    /// SReclaimable.
    pub sreclaimable: Option<u64>,
    /// Shmem.
    pub shmem: Option<u64>,
    /// Active.
    pub active: Option<u64>,
    /// Inactive.
    pub inactive: Option<u64>,
    /// SwapTotal.
    pub swap_total: Option<u64>,
    /// SwapFree.
    pub swap_free: Option<u64>,
}

/// Parses the text of `/proc/meminfo`. Values with a `kB` suffix are KiB and become bytes; lines
/// that do not parse are ignored. Never fails: a missing field is `None`.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(number)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => number.saturating_mul(1024),
            _ => number,
        };
        let slot = match key.trim() {
            "MemTotal" => &mut m.total,
            "MemFree" => &mut m.free,
            "MemAvailable" => &mut m.available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "SReclaimable" => &mut m.sreclaimable,
            "Shmem" => &mut m.shmem,
            "Active" => &mut m.active,
            "Inactive" => &mut m.inactive,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        *slot = Some(bytes);
    }
    m
}

/// The statvfs fields the catalogue uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// `f_frsize` (fragment size); 0 on some filesystems.
    pub frsize: u64,
    /// `f_bsize`, the fallback block size.
    pub bsize: u64,
    /// `f_blocks`.
    pub blocks: u64,
    /// `f_bfree`.
    pub bfree: u64,
    /// `f_bavail`.
    pub bavail: u64,
    /// `f_files`.
    pub files: u64,
    /// `f_ffree`.
    pub ffree: u64,
    /// `ST_RDONLY` is set.
    pub read_only: bool,
}

impl StatFs {
    /// The block size of the formulas: the fragment size, or `f_bsize` when it is 0.
    pub fn block(&self) -> u64 {
        if self.frsize == 0 {
            self.bsize
        } else {
            self.frsize
        }
    }
}

/// The statvfs system call behind a seam, so tests can make it slow or fail.
pub trait FsStat: Send + Sync + 'static {
    /// statvfs of `path`. Blocking; the reader calls it on a blocking thread.
    fn statvfs(&self, path: &Path) -> std::io::Result<StatFs>;
}

/// The real statvfs (rustix, no unsafe code).
#[derive(Clone, Copy, Debug, Default)]
pub struct SysFsStat;

impl FsStat for SysFsStat {
    fn statvfs(&self, path: &Path) -> std::io::Result<StatFs> {
        let s = rustix::fs::statvfs(path)?;
        Ok(StatFs {
            frsize: s.f_frsize,
            bsize: s.f_bsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            read_only: s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        })
    }
}

/// One collection pass: what could be read. Anything unreadable is simply absent (never 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pass {
    /// The memory summary, when readable and MemTotal > 0.
    pub memory: Option<MemInfo>,
    /// Selected filesystems (cwagent rules) with their statvfs.
    pub filesystems: Vec<(Filesystem, StatFs)>,
    /// Legacy `disk_paths`: (configured path, containing mount, statvfs).
    pub legacy_disks: Vec<(String, Filesystem, StatFs)>,
}

/// What the reader is asked to read.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadPlan {
    /// Filesystem selection for the cwagent profile; `None` = no cwagent disk metrics.
    pub selection: Option<Selection>,
    /// Paths for the legacy profile; empty = no legacy disk metrics.
    pub legacy_paths: Vec<String>,
    /// Per-call statvfs deadline.
    pub statvfs_timeout: Duration,
}

/// Takes collection passes. Keeps per-mount state across passes (timeout skips, calls still in
/// flight, warnings already given).
pub struct Reader {
    proc_root: PathBuf,
    stat: Arc<dyn FsStat>,
    plan: ReadPlan,
    skip: HashMap<String, u32>,
    in_flight: HashMap<String, Arc<AtomicBool>>,
    warned: HashSet<String>,
    estimate_logged: bool,
}

impl Reader {
    /// A reader of the host's `/proc` with the real statvfs.
    pub fn new(plan: ReadPlan) -> Reader {
        Reader::with_sources(PathBuf::from("/proc"), Arc::new(SysFsStat), plan)
    }

    /// A reader of another proc root (fixtures) and statvfs source (fakes).
    pub fn with_sources(proc_root: PathBuf, stat: Arc<dyn FsStat>, plan: ReadPlan) -> Reader {
        Reader {
            proc_root,
            stat,
            plan,
            skip: HashMap::new(),
            in_flight: HashMap::new(),
            warned: HashSet::new(),
            estimate_logged: false,
        }
    }

    /// Reads one pass.
    pub async fn read(&mut self) -> Pass {
        let memory = self.read_memory();
        let need_mounts = self.plan.selection.is_some() || !self.plan.legacy_paths.is_empty();
        let table = if need_mounts {
            self.read_mount_table()
        } else {
            Vec::new()
        };

        let mut filesystems = Vec::new();
        if let Some(selection) = &self.plan.selection {
            let chosen = mounts::select(&table, selection);
            for (mount_point, why) in &chosen.invalid {
                if self.warned.insert(format!("invalid:{mount_point}")) {
                    warn!(mount = %mount_point, reason = %why, "Mount skipped: its dimension values are not valid for CloudWatch.");
                }
            }
            if chosen.capped > 0 && self.warned.insert("cap".into()) {
                warn!(
                    skipped = chosen.capped,
                    max = selection.max_filesystems,
                    "More filesystems qualify than max_filesystems; keeping the first by path."
                );
            }
            let include_ro = selection.include_read_only || !selection.explicit.is_empty();
            for fs in chosen.filesystems {
                if let Some(st) = self.stat_one(&fs.mount_point).await {
                    if st.read_only && !include_ro {
                        debug!(mount = %fs.mount_point, "Mount skipped: statvfs reports it read-only.");
                        continue;
                    }
                    filesystems.push((fs, st));
                }
            }
        }

        let mut legacy_disks = Vec::new();
        for path in self.plan.legacy_paths.clone() {
            let Some(fs) = mounts::containing(&table, &path) else {
                if self.warned.insert(format!("legacy:{path}")) {
                    warn!(path = %path, "No mount contains this legacy disk path; it is not reported.");
                }
                continue;
            };
            if let Some(st) = self.stat_one(&fs.mount_point).await {
                legacy_disks.push((path, fs, st));
            }
        }

        Pass {
            memory,
            filesystems,
            legacy_disks,
        }
    }

    fn read_memory(&mut self) -> Option<MemInfo> {
        let path = self.proc_root.join("meminfo");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if self.warned.insert("meminfo".into()) {
                    warn!(path = %path.display(), error = %e, "Cannot read the memory summary; memory metrics are skipped.");
                }
                return None;
            }
        };
        let m = parse_meminfo(&text);
        if m.total.unwrap_or(0) == 0 {
            return None;
        }
        if m.available.is_none() && !self.estimate_logged {
            self.estimate_logged = true;
            info!(
                "MemAvailable is missing (kernel before 3.14); estimating it from MemFree, Buffers, Cached, SReclaimable and Shmem."
            );
        }
        Some(m)
    }

    /// PID 1's mount table (the host's initial namespace), else our own (metrics.md §6.1).
    fn read_mount_table(&mut self) -> Vec<mounts::MountEntry> {
        for who in ["1", "self"] {
            let path = self.proc_root.join(who).join("mountinfo");
            match std::fs::read_to_string(&path) {
                Ok(text) => return mounts::parse_mountinfo(&text),
                Err(e) => {
                    if self.warned.insert(format!("mountinfo:{who}")) {
                        debug!(path = %path.display(), error = %e, "Cannot read mount info.");
                    }
                }
            }
        }
        if self.warned.insert("mountinfo".into()) {
            warn!("Cannot read any mount table; disk metrics are skipped.");
        }
        Vec::new()
    }

    /// statvfs of one mount point with the deadline; `None` when skipped or failed.
    async fn stat_one(&mut self, mount_point: &str) -> Option<StatFs> {
        if let Some(left) = self.skip.get_mut(mount_point) {
            if *left > 0 {
                *left -= 1;
                return None;
            }
            self.skip.remove(mount_point);
        }
        let busy = self
            .in_flight
            .entry(mount_point.to_owned())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone();
        if busy.swap(true, Ordering::AcqRel) {
            // The previous call is still hung in the kernel: never stack a second thread on it.
            self.skip
                .insert(mount_point.to_owned(), TIMEOUT_SKIP_PASSES);
            return None;
        }
        let stat = self.stat.clone();
        let path = PathBuf::from(mount_point);
        let flag = busy.clone();
        let call = tokio::task::spawn_blocking(move || {
            let r = stat.statvfs(&path);
            flag.store(false, Ordering::Release);
            r
        });
        match tokio::time::timeout(self.plan.statvfs_timeout, call).await {
            Err(_) => {
                warn!(mount = %mount_point, timeout = ?self.plan.statvfs_timeout, passes = TIMEOUT_SKIP_PASSES, "statvfs timed out; the mount is skipped for the next passes.");
                self.skip
                    .insert(mount_point.to_owned(), TIMEOUT_SKIP_PASSES);
                None
            }
            Ok(Err(join)) => {
                warn!(mount = %mount_point, error = %join, "statvfs thread failed.");
                busy.store(false, Ordering::Release);
                None
            }
            Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                debug!(mount = %mount_point, "statvfs: permission denied; skipped.");
                None
            }
            Ok(Ok(Err(e))) => {
                if self.warned.insert(format!("statvfs:{mount_point}")) {
                    warn!(mount = %mount_point, error = %e, "statvfs failed; the mount is skipped while it fails.");
                }
                None
            }
            Ok(Ok(Ok(st))) if st.blocks == 0 => None,
            Ok(Ok(Ok(st))) => Some(st),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_SPEC: &str = include_str!("../../tests/data/proc/meminfo.spec");

    #[test]
    fn parses_kib_into_bytes_and_leaves_missing_fields_empty() {
        let m = parse_meminfo(FIXTURE_SPEC);
        assert_eq!(m.total, Some(8_000_000 * 1024));
        assert_eq!(m.available, Some(5_000_000 * 1024));
        assert_eq!(m.sreclaimable, Some(400_000 * 1024));
        assert_eq!(m.swap_total, Some(0));
        let old = parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nGarbage\nHugePages_Total: 5\n");
        assert_eq!(old.total, Some(102_400));
        assert_eq!(old.available, None);
        assert_eq!(old.cached, None);
    }

    #[test]
    fn block_falls_back_to_bsize() {
        let s = StatFs {
            frsize: 0,
            bsize: 512,
            ..StatFs::default()
        };
        assert_eq!(s.block(), 512);
    }

    struct SlowStat {
        slow: &'static str,
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl FsStat for SlowStat {
        fn statvfs(&self, path: &Path) -> std::io::Result<StatFs> {
            let p = path.to_string_lossy().into_owned();
            self.calls.lock().unwrap().push(p.clone());
            if p == self.slow {
                std::thread::sleep(Duration::from_millis(600));
            }
            Ok(StatFs {
                frsize: 4096,
                bsize: 4096,
                blocks: 100,
                bfree: 50,
                bavail: 40,
                files: 10,
                ffree: 5,
                read_only: false,
            })
        }
    }

    fn proc_with_mounts(mountinfo: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), FIXTURE_SPEC).unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/mountinfo"), mountinfo).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_hung_statvfs_is_cut_off_and_skipped_for_ten_passes() {
        let mi = "1 0 259:1 / / rw - xfs /dev/nvme0n1p1 rw\n2 1 259:2 / /data rw - ext4 /dev/nvme1n1 rw\n";
        let dir = proc_with_mounts(mi);
        let stat = Arc::new(SlowStat {
            slow: "/data",
            calls: Default::default(),
        });
        let mut reader = Reader::with_sources(
            dir.path().to_owned(),
            stat.clone(),
            ReadPlan {
                selection: Some(Selection::default()),
                legacy_paths: Vec::new(),
                statvfs_timeout: Duration::from_millis(100),
            },
        );
        let started = std::time::Instant::now();
        let pass = reader.read().await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let paths: Vec<_> = pass
            .filesystems
            .iter()
            .map(|(f, _)| f.mount_point.as_str())
            .collect();
        assert_eq!(paths, ["/"]);
        assert!(pass.memory.is_some());
        for _ in 0..TIMEOUT_SKIP_PASSES {
            reader.read().await;
        }
        let data_calls = stat
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == "/data")
            .count();
        assert_eq!(data_calls, 1, "skipped for {TIMEOUT_SKIP_PASSES} passes");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let pass = reader.read().await;
        let calls = stat
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == "/data")
            .count();
        assert_eq!(calls, 2, "tried again after the skip");
        // Still slow: cut off again, the rest of the pass is unaffected.
        assert_eq!(pass.filesystems.len(), 1);
    }

    #[tokio::test]
    async fn missing_meminfo_skips_memory_and_legacy_paths_resolve_to_mounts() {
        let mi = "1 0 259:1 / / rw - xfs /dev/nvme0n1p1 rw\n3 1 0:30 / /run rw - tmpfs tmpfs rw\n";
        let dir = proc_with_mounts(mi);
        std::fs::remove_file(dir.path().join("meminfo")).unwrap();
        let stat = Arc::new(SlowStat {
            slow: "-",
            calls: Default::default(),
        });
        let mut reader = Reader::with_sources(
            dir.path().to_owned(),
            stat,
            ReadPlan {
                selection: None,
                legacy_paths: vec!["/run/lock".into(), "/var/log".into()],
                statvfs_timeout: Duration::from_secs(1),
            },
        );
        let pass = reader.read().await;
        assert_eq!(pass.memory, None);
        assert!(pass.filesystems.is_empty());
        let got: Vec<_> = pass
            .legacy_disks
            .iter()
            .map(|(p, f, _)| (p.as_str(), f.mount_point.as_str()))
            .collect();
        assert_eq!(got, [("/run/lock", "/run"), ("/var/log", "/")]);
    }
}
