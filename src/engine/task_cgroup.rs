//! Task-level CPU and memory limits (container-features.md §7): one cgroup per task, the parent
//! of every container of the task (`HostConfig.CgroupParent`), created once per task with its
//! other resources before its first container (the engine's `EnsureTaskResources`, before its
//! Docker volumes) and removed at its cleanup.
//!
//! ```text
//! TaskSpec ─► limits() (pure) ─► Limits ─► TaskCgroups::ensure ─► cgroup v1 files  /sys/fs/cgroup/{cpu,memory,pids}/ecs/<id>
//!                                                              ├► cgroup v2 files  /sys/fs/cgroup/ecstasks/<id>
//!                                                              └► systemd slice    ecstasks-<id>.slice (StartTransientUnit)
//! ```
//!
//! Which of the three is decided once at start ([`TaskCgroups::detect`]) from the cgroup
//! version the host mounts and Docker's cgroup driver (`docker info`): with the systemd driver
//! Docker accepts only a slice name as parent, and the slice is made by systemd over D-Bus (the
//! one bus stack, `watchdog::systemd_dbus`); with cgroupfs the directories are made here, under
//! a root path so tests use a temporary directory.
//!
//! Owns the cgroup names, the limit values and the files or slice properties that carry them.
//! Never talks to Docker, never decides when a task runs (the engine does), never touches a
//! cgroup other than `ecs/<task id>` (v1), `ecstasks/<task id>` (v2) or `ecstasks-<task id>.slice`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::model::TaskSpec;

/// The v1 parent of every task cgroup (the official agent's `/ecs`).
pub const V1_PREFIX: &str = "ecs";
/// The v2 (cgroupfs driver) parent of every task cgroup.
pub const V2_PREFIX: &str = "ecstasks";
/// The systemd slice prefix: task slices are `ecstasks-<id>.slice`, under `ecstasks.slice`.
pub const SLICE_PREFIX: &str = "ecstasks";
/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The kernel's bounds for `cpu.shares` (the official agent's `minimumCPUShares`/`maximumCPUShares`).
pub const MIN_SHARES: u64 = 2;
/// See [`MIN_SHARES`].
pub const MAX_SHARES: u64 = 262_144;
/// The kernel refuses a CFS quota below 1 ms (`EINVAL`); a tiny `cpu` gets this instead.
pub const MIN_QUOTA_US: u64 = 1_000;
const MIB: u64 = 1024 * 1024;

/// Task cgroup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container asks for more memory than its whole task (the task cannot run; the official
    /// agent's wording).
    #[error(
        "container memory limit({container_mib}) greater than task memory limit({task_mib}) (container {container})"
    )]
    ContainerOverTask {
        /// The container.
        container: String,
        /// Its hard limit, MiB.
        container_mib: u64,
        /// The task's, MiB.
        task_mib: u64,
    },
    /// The task id cannot name a cgroup (it would leave the task's directory).
    #[error("task id {0:?} cannot name a cgroup (expected letters, digits, '-' or '_')")]
    BadTaskId(String),
    /// A cgroup file or directory operation failed.
    #[error("task cgroup: {op} {path}: {source}")]
    Io {
        /// What was done (`mkdir`, `write`, `rmdir`).
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// systemd refused or did not answer.
    #[error("task cgroup slice {slice}: {reason}")]
    Systemd {
        /// The slice.
        slice: String,
        /// systemd's answer.
        reason: String,
    },
    /// This host cannot have task cgroups (detection).
    #[error("task cgroups unavailable: {0}")]
    Unavailable(String),
    /// The blocking file work panicked or was cancelled.
    #[error("task cgroup: {0}")]
    Join(String),
}

impl Error {
    /// Only systemd not answering (or the blocking work lost) is worth another attempt; a task
    /// id, limits or a hierarchy the kernel refuses stay so.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Systemd { .. } | Error::Join(_))
    }
}

/// CPU limit of a task cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// Task `cpu` > 0: a CFS quota per period, both µs.
    Quota {
        /// `cpu × period`.
        quota_us: u64,
        /// `ECS_CGROUP_CPU_PERIOD`.
        period_us: u64,
    },
    /// No task `cpu`: the containers' shares summed (each at least 2), at most 262144.
    Shares(u64),
}

/// What a task cgroup limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPU.
    pub cpu: Cpu,
    /// Task `memory` in bytes, when the task has one.
    pub memory_bytes: Option<u64>,
    /// `ECS_TASK_PIDS_LIMIT`, when > 0.
    pub pids: Option<u64>,
}

/// The limits of `spec`'s cgroup (container-features.md §7), or why the task cannot run.
pub fn limits(spec: &TaskSpec, period: Duration, pids: Option<u64>) -> Result<Limits, Error> {
    let cpu = match spec.cpu.filter(|c| c.is_finite() && *c > 0.0) {
        Some(vcpu) => {
            let period_us = period.as_micros() as u64;
            let quota_us = ((vcpu * period_us as f64) as u64).max(MIN_QUOTA_US);
            Cpu::Quota {
                quota_us,
                period_us,
            }
        }
        None => Cpu::Shares(
            spec.containers
                .iter()
                .map(|c| {
                    let units = c.cpu.filter(|v| v.is_finite() && *v > 0.0).unwrap_or(0.0) as u64;
                    units.max(MIN_SHARES)
                })
                .sum::<u64>()
                .clamp(MIN_SHARES, MAX_SHARES),
        ),
    };
    let memory_bytes = match spec.memory.filter(|m| m.is_finite() && *m > 0.0) {
        Some(task) => {
            let task_mib = task as u64;
            for c in &spec.containers {
                let mib = c
                    .memory
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .unwrap_or(0.0) as u64;
                if mib > task_mib {
                    return Err(Error::ContainerOverTask {
                        container: c.name.clone(),
                        container_mib: mib,
                        task_mib,
                    });
                }
            }
            Some(task_mib * MIB)
        }
        None => None,
    };
    Ok(Limits {
        cpu,
        memory_bytes,
        pids: pids.filter(|p| *p > 0),
    })
}

/// Whether the task asks for task-level limits (for the warning when they are off).
pub fn asks_for_limits(spec: &TaskSpec) -> bool {
    spec.cpu.is_some_and(|c| c > 0.0) || spec.memory.is_some_and(|m| m > 0.0)
}

/// One systemd slice property (a `(name, value)` of `StartTransientUnit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceProperty {
    /// `Description` (s).
    Description(String),
    /// `CPUQuotaPerSecUSec` (t): CPU time per second of wall time.
    CpuQuotaPerSecUsec(u64),
    /// `CPUQuotaPeriodUSec` (t).
    CpuQuotaPeriodUsec(u64),
    /// `CPUWeight` (t, cgroup v2).
    CpuWeight(u64),
    /// `CPUShares` (t, cgroup v1).
    CpuShares(u64),
    /// `MemoryMax` (t, bytes; v1: the memory limit).
    MemoryMax(u64),
    /// `TasksMax` (t).
    TasksMax(u64),
}

/// systemd's slices, as the task cgroups need them. The real one is
/// `watchdog::systemd_dbus::DbusManager`; unit tests use a recording fake.
#[async_trait]
pub trait Slices: Send + Sync {
    /// `StartTransientUnit(slice, "replace", properties)`; a slice that exists already is fine.
    async fn start_slice(&self, slice: &str, properties: &[SliceProperty]) -> Result<(), String>;
    /// `StopUnit(slice, "replace")`; a slice that does not exist is fine.
    async fn stop_slice(&self, slice: &str) -> Result<(), String>;
}

/// The kind of task cgroup this host gets.
#[derive(Clone)]
pub enum Layout {
    /// cgroup v1 with Docker's cgroupfs driver: `<root>/<controller>/ecs/<id>`.
    V1 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// cgroup v2 with the cgroupfs driver: `<root>/ecstasks/<id>`.
    V2 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// Docker's systemd driver: the slice `ecstasks-<id>.slice`, made by systemd.
    Systemd {
        /// Whether the host runs cgroup v2 (`CPUWeight`) or v1 (`CPUShares`).
        v2: bool,
        /// systemd.
        slices: Arc<dyn Slices>,
    },
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::V1 { root } => write!(f, "cgroup v1 (cgroupfs) at {}", root.display()),
            Layout::V2 { root } => write!(f, "cgroup v2 (cgroupfs) at {}", root.display()),
            Layout::Systemd { v2, .. } => {
                write!(f, "cgroup v{} (systemd slices)", if *v2 { 2 } else { 1 })
            }
        }
    }
}

/// The task cgroups of this host: where they go and the two settings that shape them.
#[derive(Clone, Debug)]
pub struct TaskCgroups {
    /// Where and how.
    pub layout: Layout,
    /// `ECS_CGROUP_CPU_PERIOD`.
    pub cpu_period: Duration,
    /// `ECS_TASK_PIDS_LIMIT`.
    pub pids_limit: Option<u64>,
}

impl TaskCgroups {
    /// The task cgroups `engine`'s settings ask for on this host (`root`, Docker's
    /// `cgroup_driver`): `None` with `ECS_ENABLE_TASK_CPU_MEM_LIMIT=false`, an error when the
    /// host cannot have them.
    pub fn configured(
        engine: &crate::config::EngineConfig,
        root: &Path,
        cgroup_driver: &str,
        slices: Option<Arc<dyn Slices>>,
    ) -> Result<Option<TaskCgroups>, Error> {
        if !engine.task_cpu_mem_limit {
            return Ok(None);
        }
        Ok(Some(TaskCgroups {
            layout: Self::detect(root, cgroup_driver, slices)?,
            cpu_period: engine.cgroup_cpu_period,
            pids_limit: engine.task_pids_limit,
        }))
    }

    /// The layout for this host: cgroup v2 if `root` has `cgroup.controllers` (with `cpu` and
    /// `memory` among them), else v1 (with `cpu` and `memory` hierarchies mounted); Docker's
    /// `cgroup_driver` (`docker info` `CgroupDriver`) `systemd` needs `slices`.
    pub fn detect(
        root: &Path,
        cgroup_driver: &str,
        slices: Option<Arc<dyn Slices>>,
    ) -> Result<Layout, Error> {
        let controllers = root.join("cgroup.controllers");
        let v2 = controllers.exists();
        if v2 {
            let have = std::fs::read_to_string(&controllers).map_err(|source| Error::Io {
                op: "read",
                path: controllers.clone(),
                source,
            })?;
            for want in ["cpu", "memory"] {
                if !have.split_whitespace().any(|c| c == want) {
                    return Err(Error::Unavailable(format!(
                        "cgroup v2 at {} lacks the {want} controller",
                        root.display()
                    )));
                }
            }
        } else {
            for want in ["cpu", "memory"] {
                if !root.join(want).join("cgroup.procs").exists() {
                    return Err(Error::Unavailable(format!(
                        "no cgroup v1 {want} hierarchy at {}",
                        root.join(want).display()
                    )));
                }
            }
        }
        match cgroup_driver {
            "systemd" => match slices {
                Some(slices) => Ok(Layout::Systemd { v2, slices }),
                None => Err(Error::Unavailable(
                    "Docker uses the systemd cgroup driver but systemd's bus is not reachable"
                        .into(),
                )),
            },
            "cgroupfs" | "" => Ok(if v2 {
                Layout::V2 {
                    root: root.to_owned(),
                }
            } else {
                Layout::V1 {
                    root: root.to_owned(),
                }
            }),
            other => Err(Error::Unavailable(format!(
                "Docker's cgroup driver {other:?} is not one ecs-hostd knows"
            ))),
        }
    }

    /// The task's limits with this host's settings.
    pub fn limits(&self, spec: &TaskSpec) -> Result<Limits, Error> {
        limits(spec, self.cpu_period, self.pids_limit)
    }

    /// `HostConfig.CgroupParent` of the task's containers.
    pub fn parent(&self, task_id: &str) -> Result<String, Error> {
        let id = checked(task_id)?;
        Ok(match &self.layout {
            Layout::V1 { .. } => format!("/{V1_PREFIX}/{id}"),
            Layout::V2 { .. } => format!("/{V2_PREFIX}/{id}"),
            Layout::Systemd { .. } => slice_name(id),
        })
    }

    /// Creates the task's cgroup with `limits`, or brings an existing one to them (a restarted
    /// agent, a retried attempt): safe to repeat.
    pub async fn ensure(&self, task_id: &str, limits: &Limits) -> Result<(), Error> {
        let id = checked(task_id)?.to_owned();
        match &self.layout {
            Layout::V1 { root } => {
                let (root, limits) = (root.clone(), *limits);
                blocking(move || ensure_v1(&root, &id, &limits)).await
            }
            Layout::V2 { root } => {
                let (root, limits) = (root.clone(), *limits);
                blocking(move || ensure_v2(&root, &id, &limits)).await
            }
            Layout::Systemd { v2, slices } => {
                let slice = slice_name(&id);
                let props = slice_properties(&id, limits, *v2);
                slices
                    .start_slice(&slice, &props)
                    .await
                    .map_err(|reason| Error::Systemd { slice, reason })
            }
        }
    }

    /// Removes the task's cgroup; one that is already gone (a restart after a cleanup, or never
    /// made) is fine. Its containers must be gone first (the kernel refuses a busy cgroup).
    pub async fn remove(&self, task_id: &str) -> Result<(), Error> {
        let id = checked(task_id)?.to_owned();
        match &self.layout {
            Layout::V1 { root } => {
                let root = root.clone();
                blocking(move || remove_v1(&root, &id)).await
            }
            Layout::V2 { root } => {
                let dir = root.join(V2_PREFIX).join(&id);
                blocking(move || rmdir(&dir)).await
            }
            Layout::Systemd { slices, .. } => {
                let slice = slice_name(&id);
                slices
                    .stop_slice(&slice)
                    .await
                    .map_err(|reason| Error::Systemd { slice, reason })
            }
        }
    }
}

/// `ecstasks-<id>.slice`: systemd puts it under `ecstasks.slice` (the dash names the parent).
pub fn slice_name(task_id: &str) -> String {
    format!("{SLICE_PREFIX}-{task_id}.slice")
}

/// The slice properties carrying `limits`.
pub fn slice_properties(task_id: &str, limits: &Limits, v2: bool) -> Vec<SliceProperty> {
    let mut p = vec![SliceProperty::Description(format!(
        "ECS task {task_id} (ecs-hostd)"
    ))];
    match limits.cpu {
        Cpu::Quota {
            quota_us,
            period_us,
        } => {
            // systemd takes the quota per second of wall time and scales it to the period.
            p.push(SliceProperty::CpuQuotaPerSecUsec(
                quota_us * 1_000_000 / period_us.max(1),
            ));
            p.push(SliceProperty::CpuQuotaPeriodUsec(period_us));
        }
        Cpu::Shares(s) if v2 => p.push(SliceProperty::CpuWeight(shares_to_weight(s))),
        Cpu::Shares(s) => p.push(SliceProperty::CpuShares(s)),
    }
    if let Some(m) = limits.memory_bytes {
        p.push(SliceProperty::MemoryMax(m));
    }
    if let Some(n) = limits.pids {
        p.push(SliceProperty::TasksMax(n));
    }
    p
}

/// cgroup v2 `cpu.weight` for v1 shares, as runc converts them (2…262144 → 1…10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + (s - 2) * 9999 / 262_142
}

fn checked(task_id: &str) -> Result<&str, Error> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(task_id)
    } else {
        Err(Error::BadTaskId(task_id.to_owned()))
    }
}

async fn blocking(f: impl FnOnce() -> Result<(), Error> + Send + 'static) -> Result<(), Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Join(e.to_string()))?
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        op: "mkdir",
        path: dir.to_owned(),
        source,
    })
}

fn write(path: PathBuf, value: &str) -> Result<(), Error> {
    std::fs::write(&path, value).map_err(|source| Error::Io {
        op: "write",
        path,
        source,
    })
}

/// Removes an empty cgroup directory; gone already is fine.
fn rmdir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "rmdir",
            path: dir.to_owned(),
            source,
        }),
    }
}

fn ensure_v1(root: &Path, id: &str, limits: &Limits) -> Result<(), Error> {
    let cpu = root.join("cpu").join(V1_PREFIX).join(id);
    mkdir(&cpu)?;
    match limits.cpu {
        Cpu::Quota {
            quota_us,
            period_us,
        } => {
            // Period first: the kernel checks the quota against it.
            write(cpu.join("cpu.cfs_period_us"), &period_us.to_string())?;
            write(cpu.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
        }
        Cpu::Shares(s) => write(cpu.join("cpu.shares"), &s.to_string())?,
    }
    let memory = root.join("memory").join(V1_PREFIX).join(id);
    mkdir(&memory)?;
    if let Some(bytes) = limits.memory_bytes {
        write(memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
    }
    if let Some(n) = limits.pids {
        let pids = root.join("pids").join(V1_PREFIX).join(id);
        mkdir(&pids)?;
        write(pids.join("pids.max"), &n.to_string())?;
    }
    Ok(())
}

/// Removes `ecs/<id>` from every v1 hierarchy: runc makes the task's directory in each one it
/// joins (blkio, devices, freezer, name=systemd, ...), not only in those this module made.
/// Co-mounted hierarchies appear twice (`cpu` → `cpu,cpuacct`): symlinks are skipped.
fn remove_v1(root: &Path, id: &str) -> Result<(), Error> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                op: "list",
                path: root.to_owned(),
                source,
            });
        }
    };
    let mut first_error = None;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Err(e) = rmdir(&entry.path().join(V1_PREFIX).join(id)) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn ensure_v2(root: &Path, id: &str, limits: &Limits) -> Result<(), Error> {
    let mut wanted = "+cpu +memory".to_owned();
    if limits.pids.is_some() {
        wanted.push_str(" +pids");
    }
    let parent = root.join(V2_PREFIX);
    mkdir(&parent)?;
    // The task directory has a controller's files only if its parent delegates it.
    write(parent.join("cgroup.subtree_control"), &wanted)?;
    let dir = parent.join(id);
    mkdir(&dir)?;
    match limits.cpu {
        Cpu::Quota {
            quota_us,
            period_us,
        } => write(dir.join("cpu.max"), &format!("{quota_us} {period_us}"))?,
        Cpu::Shares(s) => write(dir.join("cpu.weight"), &shares_to_weight(s).to_string())?,
    }
    if let Some(bytes) = limits.memory_bytes {
        write(dir.join("memory.max"), &bytes.to_string())?;
    }
    if let Some(n) = limits.pids {
        write(dir.join("pids.max"), &n.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
