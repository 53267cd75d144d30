//! Benchmark machinery shared by `benches/e2e_burst.rs` (issue 4) and `benches/budget.rs`
//! (issue 8), on top of the integration-test harness (`tests/common`: ec2sim and the real agent
//! binary as a child process).
//!
//! It owns: placing tasks with RunTask and timing them to RUNNING (DescribeTasks and the agent's
//! own start milestones), the agent process's CPU and RSS from /proc, the direct-bollard
//! baseline built from the agent's own container configuration, and exit → STOPPED timing
//! against ec2sim's request journal. The arithmetic and the table live in [`report`]; idle counts
//! in [`idle`]; telemetry's cost and the Docker stats polling it is compared with in [`telemetry`];
//! what every mapped container-definition field costs a task's start in [`fields`].
//!
//! It never asserts anything about speed, and never touches a container that does not carry the
//! run's `ecs-hostd.test=<run>` label.

#![allow(dead_code)]

pub mod fields;
pub mod idle;
pub mod report;
pub mod telemetry;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::ContainerDefinition;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::common::{Agent, Ec2Sim};
use report::{Milestone, parse_milestones};

/// The container label the agent puts on every container it creates.
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
/// The label every container of a benchmark run carries (value: the run id).
pub const RUN_LABEL: &str = "ecs-hostd.test";
/// Clock ticks per second of /proc/<pid>/stat (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// The test image (offline busybox from scripts/world.sh).
pub fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(pid) as f64 / TICKS_PER_SEC
}

/// CPU clock ticks (user + system, 10 ms each) a process has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    report::stat_cpu_ticks(&stat).unwrap_or(0)
}

/// Counts Docker events that wake the agent's engine (the agent's own filter:
/// `engine::docker::WAKE_EVENTS` of any container with the ECS task-ARN label), until dropped.
pub struct EventCounter {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EventCounter {
    pub fn start(docker: &bollard::Docker) -> EventCounter {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("label", vec![LABEL_TASK_ARN]),
            ("event", ecs_hostd::engine::docker::WAKE_EVENTS.to_vec()),
        ]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut stream = docker.events(Some(opts));
        let c = count.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        EventCounter { count, task }
    }

    pub fn get(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for EventCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    report::status_kib(&status, field).unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Registers a task definition of `containers` busybox containers that sleep (16 MiB each,
/// all essential), labelled with the run.
pub async fn task_definition(
    ecs: &aws_sdk_ecs::Client,
    family: &str,
    containers: usize,
    run: &str,
) -> String {
    let mut req = ecs.register_task_definition().family(family);
    for i in 0..containers {
        req = req.container_definitions(
            ContainerDefinition::builder()
                .name(format!("c{i}"))
                .image(image())
                .memory(16)
                .essential(true)
                .command("sleep")
                .command("3600")
                .docker_labels(RUN_LABEL, run)
                .build(),
        );
    }
    req.send()
        .await
        .expect("register task definition")
        .task_definition()
        .and_then(|t| t.task_definition_arn())
        .expect("task definition ARN")
        .to_owned()
}

/// Places `n` tasks with RunTask (at most 10 per call, as ECS allows); returns each ARN with the
/// instant its RunTask returned.
pub async fn place(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    td: &str,
    n: usize,
) -> Vec<(String, Instant)> {
    let mut placed = Vec::new();
    while placed.len() < n {
        let count = (n - placed.len()).min(10) as i32;
        let out = ecs
            .run_task()
            .cluster(cluster)
            .task_definition(td)
            .count(count)
            .send()
            .await
            .expect("RunTask");
        assert!(out.failures().is_empty(), "{:?}", out.failures());
        let at = Instant::now();
        for t in out.tasks() {
            placed.push((t.task_arn().unwrap().to_owned(), at));
        }
    }
    placed
}

/// Waits until DescribeTasks shows every task with `status`; returns, per task, the time from
/// its placement to the first poll that saw it (250 ms polling). Panics with the agent's log
/// after `within`.
///
/// Not faster: ec2sim (moto, Python) answering DescribeTasks every 25 ms burned 1.6 s of CPU
/// during a 6 s burst on the 2-core machine, competing with dockerd and the agent, while the
/// bollard baseline it is compared with ran without it. At 250 ms it uses about 0.5 s.
pub async fn wait_status(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    placed: &[(String, Instant)],
    status: &str,
    agent: &Agent,
    within: Duration,
) -> Vec<Duration> {
    let mut seen = Vec::new();
    let mut pending: Vec<(String, Instant)> = placed.to_vec();
    let deadline = Instant::now() + within;
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} tasks never reached {status} within {within:?}:\n{}",
            pending.len(),
            tail(&agent.log(), 60)
        );
        for chunk in pending.clone().chunks(100) {
            let arns: Vec<String> = chunk.iter().map(|(a, _)| a.clone()).collect();
            let out = ecs
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(arns))
                .send()
                .await
                .expect("DescribeTasks");
            let now = Instant::now();
            for t in out.tasks() {
                if t.last_status() == Some(status) {
                    let arn = t.task_arn().unwrap_or_default();
                    if let Some(pos) = pending.iter().position(|(a, _)| a == arn) {
                        let (_, at) = pending.remove(pos);
                        seen.push(now - at);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one run of tasks through the agent measured.
#[derive(Debug, Default)]
pub struct Run {
    pub tasks: usize,
    pub containers_per_task: usize,
    /// Tasks in flight at once (1 = one after the other; `tasks` = all at once).
    pub concurrency: usize,
    pub arns: Vec<String>,
    /// RunTask returned → RUNNING visible in DescribeTasks (ec2sim shows it once the agent's
    /// report was accepted), per task.
    pub visible: Vec<Duration>,
    /// The agent's milestones, per task.
    pub milestones: Vec<Milestone>,
    /// First RunTask sent → every task RUNNING in DescribeTasks.
    pub total_visible: Duration,
    /// First payload received → the last task all-RUNNING in the engine.
    pub total_engine: Duration,
    /// Agent CPU seconds from the first RunTask to all RUNNING visible (+0.5 s to settle).
    pub agent_cpu: f64,
}

impl Run {
    pub fn to_running(&self) -> Vec<Duration> {
        self.milestones.iter().map(|m| m.to_running).collect()
    }
    pub fn to_accepted(&self) -> Vec<Duration> {
        self.milestones.iter().map(|m| m.to_accepted).collect()
    }
}

/// Runs `tasks` tasks of `td` through the agent, `concurrency` at a time (1 or all), and
/// collects the figures. The agent must log its start milestones (target
/// `ecs_hostd::ecs::report::milestones` at DEBUG).
pub async fn run_tasks(
    sim: &Ec2Sim,
    agent: &Agent,
    cluster: &str,
    td: &str,
    tasks: usize,
    containers_per_task: usize,
    concurrency: usize,
) -> Run {
    let ecs = sim.ecs().await;
    let pid = agent.child.id();
    let cpu0 = cpu_secs(pid);
    let start = Instant::now();
    let mut placed = Vec::new();
    let mut visible = Vec::new();
    if concurrency >= tasks {
        placed = place(&ecs, cluster, td, tasks).await;
        visible = wait_status(
            &ecs,
            cluster,
            &placed,
            "RUNNING",
            agent,
            Duration::from_secs(300),
        )
        .await;
    } else {
        assert_eq!(concurrency, 1, "only one-at-a-time or all-at-once");
        for _ in 0..tasks {
            let one = place(&ecs, cluster, td, 1).await;
            visible.extend(
                wait_status(
                    &ecs,
                    cluster,
                    &one,
                    "RUNNING",
                    agent,
                    Duration::from_secs(60),
                )
                .await,
            );
            placed.extend(one);
        }
    }
    let total_visible = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent_cpu = cpu_secs(pid) - cpu0;
    let arns: Vec<String> = placed.into_iter().map(|(a, _)| a).collect();
    let milestones = wait_milestones(agent, &arns).await;
    let refs: Vec<&Milestone> = milestones.iter().collect();
    Run {
        tasks,
        containers_per_task,
        concurrency,
        total_engine: report::first_payload_to_last_running(&refs),
        arns,
        visible,
        milestones,
        total_visible,
        agent_cpu,
    }
}

/// The milestones lines of `arns` (the agent logs each when ECS accepts RUNNING, i.e. before
/// DescribeTasks shows it; allow a moment for the log write).
async fn wait_milestones(agent: &Agent, arns: &[String]) -> Vec<Milestone> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all: HashMap<String, Milestone> = parse_milestones(&agent.log())
            .into_iter()
            .map(|m| (m.task_arn.clone(), m))
            .collect();
        let found: Vec<Milestone> = arns.iter().filter_map(|a| all.get(a).cloned()).collect();
        if found.len() == arns.len() || Instant::now() > deadline {
            assert_eq!(
                found.len(),
                arns.len(),
                "start milestones missing from the agent log (RUST_LOG must enable ecs_hostd::ecs::report::milestones=debug)"
            );
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// StopTask for every task, then waits until DescribeTasks shows them STOPPED.
pub async fn stop_tasks(sim: &Ec2Sim, agent: &Agent, cluster: &str, arns: &[String]) {
    let ecs = sim.ecs().await;
    for a in arns {
        let _ = ecs.stop_task().cluster(cluster).task(a).send().await;
    }
    let placed: Vec<(String, Instant)> = arns.iter().map(|a| (a.clone(), Instant::now())).collect();
    wait_status(
        &ecs,
        cluster,
        &placed,
        "STOPPED",
        agent,
        Duration::from_secs(300),
    )
    .await;
}

/// What a burst of stops cost the agent.
pub struct StopBurst {
    /// First StopTask call → the last STOPPED report in ec2sim's journal.
    pub total: Duration,
    /// Agent CPU over that window, seconds.
    pub agent_cpu: f64,
    /// The agent's Docker calls over that window and 2 s after, by operation
    /// (`ecs_hostd_docker_requests_total` on its `/metrics`), non-zero ones only.
    pub docker_calls: Vec<(String, u64)>,
}

/// The agent's Docker calls so far, by operation, from its `/metrics`.
pub fn docker_calls(agent: &Agent) -> Vec<(String, u64)> {
    let out = std::process::Command::new("wget")
        .args(["-qO-", "-T", "3", &format!("http://{}/metrics", agent.api)])
        .output()
        .expect("wget");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ecs_hostd_docker_requests_total{op=\"")?;
            let (op, n) = rest.split_once("\"} ")?;
            Some((op.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// StopTask for every task at once (ECS sends one STOPPED payload per call); measures until
/// the last STOPPED report reaches ec2sim.
pub async fn stop_burst(sim: &Ec2Sim, agent: &Agent, cluster: &str, arns: &[String]) -> StopBurst {
    let ecs = sim.ecs().await;
    let pid = agent.child.id();
    let calls0 = docker_calls(agent);
    let cpu0 = cpu_ticks(pid);
    let started = unix_now();
    for a in arns {
        ecs.stop_task()
            .cluster(cluster)
            .task(a)
            .send()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let last = loop {
        let changes = sim.get("/ec2sim/state-changes?operation=SubmitTaskStateChange");
        let stopped: Vec<f64> = changes["state_changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["body"]["status"] == "STOPPED")
            .filter(|c| arns.iter().any(|a| c["body"]["task"] == a.as_str()))
            .filter_map(|c| c["time"].as_f64())
            .collect();
        if stopped.len() >= arns.len() {
            break stopped.into_iter().fold(0.0, f64::max);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} tasks reported STOPPED after 300 s:\n{}",
            stopped.len(),
            arns.len(),
            tail(&agent.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let agent_cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls1 = docker_calls(agent);
    let docker_calls = calls1
        .into_iter()
        .map(|(op, n)| {
            let before = calls0.iter().find(|(o, _)| *o == op).map_or(0, |(_, b)| *b);
            (op, n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    StopBurst {
        total: Duration::from_secs_f64((last - started).max(0.0)),
        agent_cpu,
        docker_calls,
    }
}

/// Containers of the run (all states), optionally only those of one task.
pub async fn containers(
    docker: &bollard::Docker,
    run: &str,
    task_arn: Option<&str>,
) -> Vec<String> {
    let mut labels = vec![format!("{RUN_LABEL}={run}")];
    if let Some(t) = task_arn {
        labels.push(format!("{LABEL_TASK_ARN}={t}"));
    }
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&HashMap::from([("label", labels)]))
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Force-removes every container of the run.
pub async fn remove_run_containers(docker: &bollard::Docker, run: &str) {
    let ids = containers(docker, run, None).await;
    futures_util::stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        })
        .await;
}

/// The create bodies of the agent's containers of one task: the agent's own configuration read
/// back with inspect (so the baseline creates the same containers), minus the `com.amazonaws.ecs.*`
/// labels, so the agent never mistakes a baseline container for one of its own.
pub async fn agent_container_bodies(
    docker: &bollard::Docker,
    run: &str,
    task_arn: &str,
) -> Vec<ContainerCreateBody> {
    let mut bodies = Vec::new();
    for id in containers(docker, run, Some(task_arn)).await {
        let i = docker
            .inspect_container(&id, None)
            .await
            .expect("inspect the agent's container");
        let c = i.config.unwrap_or_default();
        let labels = c.labels.map(|l| {
            l.into_iter()
                .filter(|(k, _)| !k.starts_with("com.amazonaws.ecs."))
                .collect()
        });
        bodies.push(ContainerCreateBody {
            user: c.user,
            exposed_ports: c.exposed_ports,
            tty: c.tty,
            env: c.env,
            cmd: c.cmd,
            healthcheck: c.healthcheck,
            image: c.image,
            volumes: c.volumes,
            working_dir: c.working_dir,
            entrypoint: c.entrypoint,
            labels,
            stop_signal: c.stop_signal,
            stop_timeout: c.stop_timeout,
            host_config: i.host_config,
            ..Default::default()
        });
    }
    assert!(!bodies.is_empty(), "no containers for {task_arn}");
    bodies
}

/// Docker's own create + start time for the same containers, directly through bollard.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Per task: first create sent → last start returned (the task's containers concurrently).
    pub per_task: Vec<Duration>,
    /// First create sent → every container started.
    pub total: Duration,
}

/// When each task of a run arrived at the agent, relative to the first payload (so a baseline
/// can replay the same arrival schedule: RunTask places at most 10 tasks per call, and the
/// agent receives one payload per call).
pub fn arrival_offsets(milestones: &[Milestone]) -> Vec<Duration> {
    let first = milestones
        .iter()
        .map(|m| m.payload_unix_us)
        .min()
        .unwrap_or(0);
    milestones
        .iter()
        .map(|m| Duration::from_micros(m.payload_unix_us - first))
        .collect()
}

/// Creates and starts one copy of `bodies` (one task's containers) per entry of `arrivals`
/// directly through bollard, each task starting at its arrival offset (all zero: all at once),
/// at most `concurrency` tasks at a time, then removes them.
pub async fn baseline(
    docker: &bollard::Docker,
    run: &str,
    bodies: &[ContainerCreateBody],
    arrivals: &[Duration],
    concurrency: usize,
) -> Baseline {
    let start = Instant::now();
    let prefix = crate::common::unique(&format!("{run}-direct"));
    let per_task: Vec<Duration> = futures_util::stream::iter(arrivals.iter().enumerate())
        .map(|(t, offset)| {
            let prefix = prefix.clone();
            async move {
                tokio::time::sleep_until((start + *offset).into()).await;
                let t0 = Instant::now();
                futures_util::future::join_all(bodies.iter().enumerate().map(|(c, body)| {
                    let name = format!("{prefix}-{t}-{c}");
                    async move {
                        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
                        let id = docker
                            .create_container(Some(opts), body.clone())
                            .await
                            .expect("create (baseline)")
                            .id;
                        docker
                            .start_container(&id, None)
                            .await
                            .expect("start (baseline)");
                    }
                }))
                .await;
                t0.elapsed()
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let total = start.elapsed();
    // Only the baseline's containers: the agent's own carry the task-ARN label.
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&HashMap::from([("name", vec![prefix])]))
        .build();
    let ids: Vec<String> = docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    futures_util::stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        })
        .await;
    Baseline { per_task, total }
}

/// Container exit → SubmitTaskStateChange STOPPED at ec2sim, per task, one task at a time:
/// SIGKILL the task's (first) container, then read ec2sim's journal until the STOPPED report
/// arrives; the latency is ec2sim's arrival time minus the kill's wall time.
pub async fn exit_to_stopped(
    sim: &Ec2Sim,
    docker: &bollard::Docker,
    run: &str,
    arns: &[String],
) -> Vec<Duration> {
    let mut out = Vec::new();
    for arn in arns {
        let id = containers(docker, run, Some(arn))
            .await
            .into_iter()
            .next()
            .expect("task container");
        let killed_at = unix_now();
        docker
            .kill_container(
                &id,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("KILL")
                        .build(),
                ),
            )
            .await
            .expect("docker kill");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let changes = sim.get("/ec2sim/state-changes?operation=SubmitTaskStateChange");
            let arrived = changes["state_changes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["body"]["task"] == *arn && c["body"]["status"] == "STOPPED")
                .filter_map(|c| c["time"].as_f64())
                .next();
            if let Some(t) = arrived {
                out.push(Duration::from_secs_f64((t - killed_at).max(0.0)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no STOPPED report for {arn} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

/// "debug build" or "release build" for a binary path (by its location under target/).
pub fn profile_of(bin: &std::path::Path) -> &'static str {
    if bin.components().any(|c| c.as_os_str() == "release") {
        "release build"
    } else if bin.components().any(|c| c.as_os_str() == "debug") {
        "debug build"
    } else {
        "build of unknown profile"
    }
}
