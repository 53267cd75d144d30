//! The container stats collector against the real Docker engine and the machine's real cgroup
//! hierarchy (`Collector::system()`): a busy loop under a half-CPU quota reads as 50 %/N, a
//! container holding 64 MiB reads as 64 MiB, and the Docker-shaped JSON parses as bollard's
//! `ContainerStatsResponse` and agrees with Docker's own stats API for the same container.
//!
//! Fails (never skips) without Docker or the test image: `scripts/world.sh` provides both.

#[path = "common/docker.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptionsBuilder;
use common::*;
use ecs_hostd::stats::{Collector, Layout, Running};
use futures_util::StreamExt;
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// Starts `sh -c script` in the test image as `<run>-<name>` with extra `docker run` flags;
/// returns its `Running`.
fn start(image: &str, run: &str, name: &str, flags: &[&str], script: &str) -> Running {
    let name = format!("{run}-{name}");
    let out = docker_cli(None)
        .args(["run", "-d", "--label", &format!("{TEST_LABEL}={run}")])
        .args(["--name", &name])
        .args(flags)
        .args([image, "sh", "-c", script])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "docker run {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Running {
        docker_id: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        name,
        started_at: Some(SystemTime::now()),
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The test's own cgroup parent (cgroupfs driver): `/<TOP>/<run>`.
const TOP: &str = "ecs-hostd-test";

/// A cgroup parent of the test's own whose CPU weight is far above the machine's other work, so
/// a container under it gets its whole quota however busy the shared test VM is (at the default
/// weight a busy loop under `--cpus 0.5` got 0.4 CPU at a load average of 11). Its container is
/// not at Docker's usual place, so the collector must find it by searching. The per-run
/// directories are removed on drop (after the containers: declare it before [`Cleanup`]).
struct Parent {
    run: String,
}

impl Parent {
    fn new(run: &str) -> Parent {
        let v2 = std::path::Path::new(CGROUP_ROOT)
            .join("cgroup.controllers")
            .exists();
        // v1: the cpu hierarchy's shares (max 262144); v2: cpu.weight (max 10000).
        let (dir, file, value) = if v2 {
            (format!("{CGROUP_ROOT}/{TOP}"), "cpu.weight", "10000")
        } else {
            (format!("{CGROUP_ROOT}/cpu/{TOP}"), "cpu.shares", "262144")
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        let weight = format!("{dir}/{file}");
        std::fs::write(&weight, value).unwrap_or_else(|e| panic!("write {weight}: {e}"));
        Parent {
            run: run.to_owned(),
        }
    }

    fn flag(&self) -> String {
        format!("--cgroup-parent=/{TOP}/{}", self.run)
    }

    /// Where a container under it is, relative to a hierarchy root.
    fn place(&self, id: &str) -> std::path::PathBuf {
        [TOP, &self.run, id].iter().collect()
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        // One directory per hierarchy (v1) or one (v2); the top stays if another run uses it.
        let mut dirs = vec![std::path::PathBuf::from(CGROUP_ROOT)];
        if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
            dirs.extend(entries.flatten().map(|e| e.path()));
        }
        for d in dirs {
            let _ = std::fs::remove_dir(d.join(TOP).join(&self.run));
            let _ = std::fs::remove_dir(d.join(TOP));
        }
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Docker's own stats of `id`, as bollard decodes them: not one-shot, so Docker fills
/// `precpu_stats` from a first read about a second before the one it answers with.
async fn docker_stats(docker: &bollard::Docker, id: &str) -> ContainerStatsResponse {
    let opts = StatsOptionsBuilder::new()
        .stream(false)
        .one_shot(false)
        .build();
    docker
        .stats(id, Some(opts))
        .next()
        .await
        .expect("a stats answer")
        .expect("Docker stats")
}

fn total_usage(j: &Value) -> u64 {
    j["cpu_stats"]["cpu_usage"]["total_usage"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_stats_match_the_quota_the_memory_and_dockers_own_stats() {
    let image = test_image();
    let docker = docker().await;
    let run = run_id("stats");
    let info = docker.info().await.expect("docker info");
    let systemd = info
        .cgroup_driver
        .as_ref()
        .map(|d| d.to_string())
        .as_deref()
        == Some("systemd");
    assert!(
        !systemd,
        "this test's cgroup parent is for Docker's cgroupfs driver (the test VMs' driver)"
    );
    let parent = Parent::new(&run);
    let _cleanup = Cleanup::new(&run);

    let busy = start(
        &image,
        &run,
        "busy",
        &["--cpus", "0.5", &parent.flag()],
        "while :; do :; done",
    );
    // busybox tail keeps a line until its end: 64 MiB of zeros without a newline, held.
    let mem = start(
        &image,
        &run,
        "mem",
        &[],
        "(head -c 64m /dev/zero; exec sleep 3600) | tail",
    );
    let both = [busy.clone(), mem.clone()];

    let mut c = Collector::system();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(matches!(c.layout(), Layout::V2), v2, "{:?}", c.layout());

    // Wait until the memory container holds its 64 MiB (and both have been sampled).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.sample(&both, SystemTime::now());
        let usage = c
            .docker_stats(&mem.docker_id)
            .and_then(|j| j["memory_stats"]["usage"].as_u64())
            .unwrap_or(0);
        if usage >= 64 << 20 && c.docker_stats(&busy.docker_id).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the memory container never reached 64 MiB (usage {usage}); places: {:?} {:?}",
            c.cgroup_of(&mem.docker_id),
            c.cgroup_of(&busy.docker_id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Where the cgroupfs driver puts a container, and one under a cgroup parent (searched for).
    assert_eq!(
        c.cgroup_of(&mem.docker_id),
        Some(["docker", &mem.docker_id].iter().collect())
    );
    assert_eq!(
        c.cgroup_of(&busy.docker_id),
        Some(parent.place(&busy.docker_id))
    );

    // Five rounds 2 s apart, counted from a clean slate. (Under a quota the container runs in
    // bursts, 50 ms of each 100 ms period: two samples milliseconds apart can read 0 % or 100 %;
    // 2 s hold 20 periods.)
    c.mark_sent();
    let reads_before = c.reads();
    let t0 = Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.sample(&both, SystemTime::now());
    }
    let window = t0.elapsed();
    let reads_per_round = (c.reads() - reads_before) / 5;

    let n = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as f64;
    let expected_cpu = 50.0 / n;
    let sets = c.sets(&busy.docker_id, true).expect("busy sets");
    let cpu = sets.cpu_stats_set.sum / sets.cpu_stats_set.sample_count as f64;
    let throttling = &c.docker_stats(&busy.docker_id).unwrap()["cpu_stats"]["throttling_data"];
    println!(
        "window {window:?}, {reads_per_round} reads a round; busy: cpu {cpu:.2} % (expected {expected_cpu:.2}), \
         min {:.2} max {:.2} over {} samples; throttling {throttling}",
        sets.cpu_stats_set.min, sets.cpu_stats_set.max, sets.cpu_stats_set.sample_count
    );
    assert_eq!(sets.cpu_stats_set.sample_count, 5);
    assert!(
        (cpu - expected_cpu).abs() <= 0.15 * expected_cpu,
        "busy loop under --cpus 0.5 on {n} CPUs: {cpu:.2} %, expected {expected_cpu:.2} % ± 15 % \
         (throttling {throttling})"
    );
    let net = sets
        .network_stats_set
        .expect("a bridge container has a network set");
    assert!(net.rx_bytes.is_some() && net.tx_bytes_per_second.is_some());
    assert!(sets.storage_stats_set.is_some());

    let mem_sets = c.sets(&mem.docker_id, false).expect("mem sets");
    let mib = mem_sets.memory_stats_set.sum / mem_sets.memory_stats_set.sample_count as f64;
    println!(
        "mem: {mib:.1} MiB (min {} max {})",
        mem_sets.memory_stats_set.min, mem_sets.memory_stats_set.max
    );
    assert!(
        (mib - 64.0).abs() <= 6.4,
        "a container holding 64 MiB: {mib:.1} MiB"
    );

    // Docker's own stats, read between two of our rounds: its CPU counter lies between ours.
    c.sample(&both, SystemTime::now());
    let ours_before = c.docker_stats(&busy.docker_id).unwrap();
    let asked = Instant::now();
    let theirs = docker_stats(&docker, &busy.docker_id).await;
    c.sample(&both, SystemTime::now());
    let between = asked.elapsed();
    let ours = c.docker_stats(&busy.docker_id).unwrap();
    let theirs_total = theirs
        .cpu_stats
        .as_ref()
        .and_then(|s| s.cpu_usage.as_ref())
        .and_then(|u| u.total_usage)
        .unwrap();
    println!(
        "total_usage: ours {} ≤ Docker {} ≤ ours {} ({between:?})",
        total_usage(&ours_before),
        theirs_total,
        total_usage(&ours)
    );
    assert!(
        total_usage(&ours_before) <= theirs_total && theirs_total <= total_usage(&ours),
        "Docker's total_usage {theirs_total} is not between ours {} and {}",
        total_usage(&ours_before),
        total_usage(&ours)
    );
    assert!(
        (total_usage(&ours) - total_usage(&ours_before)) as f64
            <= between.as_nanos() as f64 * 0.6 + 1e8,
        "at most the quota (half a CPU) between our two reads, {between:?} apart"
    );

    // Ours parses as Docker's type and says what Docker says.
    let parsed: ContainerStatsResponse =
        serde_json::from_value(ours.clone()).expect("ours parses as ContainerStatsResponse");
    assert_eq!(parsed.name.as_deref(), Some(&*format!("/{}", busy.name)));
    assert_eq!(parsed.id.as_deref(), Some(&*busy.docker_id));
    assert_eq!(parsed.name, theirs.name);
    assert_eq!(parsed.id, theirs.id);
    let (ours_cpu, theirs_cpu) = (parsed.cpu_stats.unwrap(), theirs.cpu_stats.clone().unwrap());
    assert_eq!(ours_cpu.online_cpus, theirs_cpu.online_cpus);
    let (s1, s2) = (
        ours_cpu.system_cpu_usage.unwrap() as f64,
        theirs_cpu.system_cpu_usage.unwrap() as f64,
    );
    assert!((s1 - s2).abs() / s2 < 0.01, "system_cpu_usage {s1} vs {s2}");
    assert_eq!(
        ours_cpu.cpu_usage.as_ref().unwrap().percpu_usage.is_some(),
        theirs_cpu
            .cpu_usage
            .as_ref()
            .unwrap()
            .percpu_usage
            .is_some(),
        "per-CPU usage on v1 only, like Docker"
    );
    let (om, tm) = (
        parsed.memory_stats.unwrap(),
        theirs.memory_stats.clone().unwrap(),
    );
    assert_eq!(
        om.limit, tm.limit,
        "no limit: both report the host's memory"
    );
    assert_eq!(
        parsed.pids_stats.and_then(|p| p.current),
        theirs.pids_stats.clone().and_then(|p| p.current)
    );
    assert_eq!(
        parsed
            .networks
            .map(|n| n.keys().cloned().collect::<BTreeSet<_>>()),
        theirs
            .networks
            .clone()
            .map(|n| n.keys().cloned().collect::<BTreeSet<_>>()),
    );

    // The same members, at the top and inside the CPU and memory objects; Docker's memory.stat
    // keys are a subset of ours (it keeps the ones its parser knows).
    let theirs_json = serde_json::to_value(&theirs).unwrap();
    assert_eq!(keys(&ours), keys(&theirs_json));
    for k in ["cpu_stats", "precpu_stats"] {
        assert_eq!(keys(&ours[k]), keys(&theirs_json[k]), "{k}");
    }
    assert_eq!(
        keys(&ours["cpu_stats"]["cpu_usage"]),
        keys(&theirs_json["cpu_stats"]["cpu_usage"])
    );
    assert_eq!(
        keys(&ours["memory_stats"]),
        keys(&theirs_json["memory_stats"])
    );
    let ours_stat = keys(&ours["memory_stats"]["stats"]);
    for k in keys(&theirs_json["memory_stats"]["stats"]) {
        assert!(ours_stat.contains(&k), "memory.stat key {k} missing");
    }
    let read = ours["read"].as_str().unwrap();
    let preread = ours["preread"].as_str().unwrap();
    assert!(
        read.ends_with('Z') && read.len() >= 20 && preread < read,
        "{preread} {read}"
    );

    // The memory container as Docker sees it (memory moves a little between the two reads).
    let theirs_mem = docker_stats(&docker, &mem.docker_id).await;
    let ours_mem = c.docker_stats(&mem.docker_id).unwrap();
    let (u1, u2) = (
        ours_mem["memory_stats"]["usage"].as_u64().unwrap() as f64,
        theirs_mem.memory_stats.unwrap().usage.unwrap() as f64,
    );
    println!(
        "mem usage: ours {:.1} MiB, Docker {:.1} MiB",
        u1 / MIB,
        u2 / MIB
    );
    assert!(
        (u1 - u2).abs() / u2 < 0.05,
        "memory usage {u1} vs Docker's {u2}"
    );
}

#[test]
fn a_stopped_container_is_not_an_error_for_the_others() {
    let image = test_image();
    let run = run_id("stats-gone");
    let _cleanup = Cleanup::new(&run);
    let stay = start(&image, &run, "stay", &[], "exec sleep 3600");
    let go = start(&image, &run, "go", &[], "exec sleep 3600");
    let both = [stay.clone(), go.clone()];
    let mut c = Collector::system();
    c.sample(&both, SystemTime::now());
    assert!(c.docker_stats(&stay.docker_id).is_some());
    assert!(c.docker_stats(&go.docker_id).is_some());
    let out = docker_cli(None)
        .args(["rm", "-f", &go.docker_id])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Still listed as running (the engine has not noticed yet): no sample for it, one for the
    // other.
    c.sample(&both, SystemTime::now());
    c.sample(&both, SystemTime::now());
    assert!(c.sets(&stay.docker_id, true).is_ok());
    let gone = c.sets(&go.docker_id, true).unwrap_err();
    assert!(gone.is_quiet(), "{gone}: it started just now");
    assert_eq!(c.cgroup_of(&go.docker_id), None);
}
