//! Telemetry's cost (issue 21), the machinery: where Docker's share of a container stats call
//! runs (dockerd, its containerd, and the shim of each measured container), the CPU each has used,
//! the agent's CPU split between its runtime thread and the rest, the agent's grid (to start a
//! window at the same phase of its periodic work every time), and the official agent's polling
//! mode replayed against Docker's stats API through bollard.
//!
//! Measures; never judges. It only reads Docker stats of the containers it is given.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// Nanoseconds per clock tick of /proc/<pid>/stat (USER_HZ = 100).
const NS_PER_TICK: u64 = 10_000_000;

/// CPU nanoseconds of a whole process from /proc/<pid>/stat: every thread it ever had, dead ones
/// too, at 10 ms resolution.
pub fn process_ns(pid: u32) -> u64 {
    super::cpu_ticks(pid) * NS_PER_TICK
}

/// CPU of the threads of a process alive now: the thread whose id is the pid (the agent's
/// runtime) and every other one (for the agent, tokio's blocking pool), each in nanoseconds from
/// schedstat, with the part spent in the kernel (stime, 10 ms resolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Threads {
    pub main_ns: u64,
    pub others_ns: u64,
    pub main_sys_ns: u64,
    pub others_sys_ns: u64,
}

impl std::ops::Sub for Threads {
    type Output = Threads;
    fn sub(self, o: Threads) -> Threads {
        Threads {
            main_ns: self.main_ns.saturating_sub(o.main_ns),
            others_ns: self.others_ns.saturating_sub(o.others_ns),
            main_sys_ns: self.main_sys_ns.saturating_sub(o.main_sys_ns),
            others_sys_ns: self.others_sys_ns.saturating_sub(o.others_sys_ns),
        }
    }
}

/// [`Threads`] of `pid` now.
pub fn threads(pid: u32) -> Threads {
    let mut t = Threads::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return t;
    };
    for task in tasks.flatten() {
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        // stime: field 15 of stat, the 13th after the command name.
        let sys = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(12)?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * NS_PER_TICK;
        if task.file_name().to_str() == Some(&pid.to_string()) {
            t.main_ns += ns;
            t.main_sys_ns += sys;
        } else {
            t.others_ns += ns;
            t.others_sys_ns += sys;
        }
    }
    t
}

/// The processes that answer a container stats call: dockerd (the API, its stats collector and
/// the network counters it reads in each container's namespace), containerd (the task metrics
/// call), and each measured container's containerd-shim (which reads the cgroup files).
pub struct DockerStack {
    pub dockerd: u32,
    pub containerd: Option<u32>,
    /// The shims of the measured containers.
    pub shims: Vec<u32>,
}

/// What a [`DockerStack`] has used so far, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCpu {
    /// dockerd, from /proc/<pid>/stat (10 ms resolution; all threads, dead ones too).
    pub dockerd: u64,
    /// containerd, likewise.
    pub containerd: u64,
    /// The shims, from their live threads' schedstat (exact; 200 truncations to 10 ms would add
    /// up, and shims keep their threads).
    pub shims: u64,
}

impl std::ops::Sub for StackCpu {
    type Output = StackCpu;
    fn sub(self, o: StackCpu) -> StackCpu {
        StackCpu {
            dockerd: self.dockerd.saturating_sub(o.dockerd),
            containerd: self.containerd.saturating_sub(o.containerd),
            shims: self.shims.saturating_sub(o.shims),
        }
    }
}

impl StackCpu {
    pub fn total(&self) -> u64 {
        self.dockerd + self.containerd + self.shims
    }
}

/// Every process id whose `comm` is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name) {
            out.push(pid);
        }
    }
    out
}

impl DockerStack {
    /// Finds dockerd, the containerd it started (else any containerd), and the shim of each of
    /// `container_ids` (by its `-id <container id>` argument). Panics without dockerd.
    pub fn find(container_ids: &[String]) -> DockerStack {
        let dockerd = *pids_named("dockerd")
            .first()
            .expect("no dockerd process (the bench reads its CPU time)");
        let containerds = pids_named("containerd");
        let child_of_dockerd = containerds.iter().copied().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(dockerd)
        });
        let mut shim_of: HashMap<String, u32> = HashMap::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            if !args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
            {
                continue;
            }
            if let Some(i) = args.iter().position(|a| *a == b"-id")
                && let Some(id) = args.get(i + 1)
            {
                shim_of.insert(String::from_utf8_lossy(id).into_owned(), pid);
            }
        }
        DockerStack {
            dockerd,
            containerd: child_of_dockerd.or(containerds.first().copied()),
            shims: container_ids
                .iter()
                .filter_map(|id| shim_of.get(id).copied())
                .collect(),
        }
    }

    pub fn cpu(&self) -> StackCpu {
        StackCpu {
            dockerd: process_ns(self.dockerd),
            containerd: self.containerd.map_or(0, process_ns),
            shims: self
                .shims
                .iter()
                .map(|p| {
                    let t = threads(*p);
                    t.main_ns + t.others_ns
                })
                .sum(),
        }
    }
}

/// When a process started, on this process's monotonic clock (from its start time in clock ticks
/// since boot against /proc/uptime: 10 ms resolution).
pub fn process_start(pid: u32) -> Instant {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let started_ticks: f64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .unwrap_or(0.0);
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let age = Duration::from_secs_f64((uptime - started_ticks / 100.0).max(0.0));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// The first instant at or after `not_before` that lies `offset` after a multiple of `period`
/// from `epoch`: the agent's periodic work counts from its start (`ecs_hostd::clock`), so windows
/// starting at the same phase hold the same number of each periodic task's rounds.
pub fn next_phase(
    epoch: Instant,
    period: Duration,
    offset: Duration,
    not_before: Instant,
) -> Instant {
    let p = period.as_secs_f64();
    let since = not_before.saturating_duration_since(epoch).as_secs_f64() - offset.as_secs_f64();
    let k = (since / p).ceil().max(0.0);
    epoch + offset + Duration::from_secs_f64(k * p)
}

/// One Docker stats call of the replay.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub done: Instant,
    pub took: Duration,
    pub ok: bool,
}

/// The official agent's polling mode (`ECS_POLL_METRICS=true`, agent/dockerclient/dockerapi
/// `Stats`): one loop per container calling `GET /containers/<id>/stats?stream=false` every
/// `interval` and decoding the JSON. Upstream jitters each loop's start by up to 80 % of the
/// interval; here the loops are spread evenly over one interval (the same spread, without the
/// chance). `one_shot` asks Docker for one sample instead of waiting for a second one (upstream
/// does not). Calls are scheduled from `start` until `stop`; returns every call once all have
/// returned.
pub async fn poll_stats(
    docker: &bollard::Docker,
    ids: &[String],
    interval: Duration,
    one_shot: bool,
    start: Instant,
    stop: Instant,
) -> Vec<Call> {
    let n = ids.len().max(1) as u32;
    let loops = ids.iter().enumerate().map(|(i, id)| {
        let docker = docker.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut next = start + interval * i as u32 / n;
            while next < stop {
                tokio::time::sleep_until(next.into()).await;
                let t0 = Instant::now();
                let opts = bollard::query_parameters::StatsOptionsBuilder::default()
                    .stream(false)
                    .one_shot(one_shot)
                    .build();
                let got = docker.stats(&id, Some(opts)).next().await;
                let ok = matches!(got, Some(Ok(ref s)) if s.cpu_stats.is_some());
                calls.push(Call {
                    done: Instant::now(),
                    took: t0.elapsed(),
                    ok,
                });
                // A ticker: the next call on the schedule, skipping any missed while this one ran.
                next += interval;
                while next < Instant::now() {
                    next += interval;
                }
            }
            calls
        })
    });
    futures_util::future::join_all(loops)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect()
}
