//! Engine benchmark (prints figures; asserts nothing about time).
//!
//! `cargo run --release --example engine_bench` (needs Docker and the offline test image,
//! `scripts/world.sh`). In one run:
//! 1. starts 50 single-container tasks through the engine (all delivered at once) and measures
//!    delivery → RUNNING queued, per task;
//! 2. starts the same 50 containers through bollard directly at the same concurrency (create +
//!    start, all at once);
//! 3. prints the engine's overhead ratio (wall time to all running), p50/p99 start latency of
//!    both, the exit-to-event latency (SIGKILL sent → STOPPED queued) over 20 containers, and
//!    the process RSS with 0 and with 100 running containers.
//!
//! Containers use `NetworkMode: none` so the figures measure the engine, not bridge setup.
//! Everything it creates carries `ecs-hostd.test=<run id>` and is removed at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, KillContainerOptionsBuilder};
use ecs_hostd::config::{Config, PullBehavior};
use ecs_hostd::engine::docker::{DockerRuntime, Timeouts};
use ecs_hostd::engine::{Engine, Hooks, Parts, Settings};
use ecs_hostd::store::{self, Store, Transaction};
use ecs_hostd::tasks::{CredentialsStore, ReportStatus, StateChangeSink, TaskChange, TaskControl};
use tokio_util::sync::CancellationToken;

const N: usize = 50;
const RSS_N: usize = 100;
const EXITS: usize = 20;

/// Records when each task reached RUNNING / STOPPED.
#[derive(Default)]
struct TimedSink {
    running: Mutex<HashMap<String, Instant>>,
    stopped: Mutex<HashMap<String, Instant>>,
}

impl StateChangeSink for TimedSink {
    fn enqueue(&self, _tx: &Transaction<'_>, c: &TaskChange) -> Result<(), store::Error> {
        let map = match c.status {
            ReportStatus::Running => &self.running,
            ReportStatus::Stopped => &self.stopped,
            ReportStatus::Pending => return Ok(()),
        };
        map.lock()
            .unwrap()
            .entry(c.task_arn.clone())
            .or_insert_with(Instant::now);
        Ok(())
    }
    fn notify(&self) {}
    fn stopped_reported(&self, _arn: &str) -> bool {
        false
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn task(run: &str, arn: &str, image: &str, cmd: &[&str]) -> serde_json::Value {
    let config = serde_json::json!({"Labels": {"ecs-hostd.test": run}});
    let host = serde_json::json!({"NetworkMode": "none"});
    serde_json::json!({
        "arn": arn, "family": "bench", "version": "1", "desiredStatus": "RUNNING",
        "containers": [{
            "name": "c", "image": image, "essential": true, "command": cmd, "cpu": 2, "memory": 16,
            "dockerConfig": {"config": config.to_string(), "hostConfig": host.to_string()}
        }]
    })
}

async fn wait_all(map: &Mutex<HashMap<String, Instant>>, arns: &[String], what: &str) {
    let start = Instant::now();
    loop {
        let done = {
            let m = map.lock().unwrap();
            arns.iter().all(|a| m.contains_key(a))
        };
        if done {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn cleanup(run: &str) {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=ecs-hostd.test={run}"),
        ])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    for chunk in ids.chunks(50) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(chunk)
            .output();
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let image = std::env::var("ECS_HOSTD_TEST_IMAGE")
        .unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into());
    let run = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let docker = ecs_hostd::docker::connect(None).unwrap();
    docker.ping().await.expect("Docker must be running");
    docker
        .inspect_image(&image)
        .await
        .expect("test image missing");
    let sleeper = [
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ];

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let sink = Arc::new(TimedSink::default());
    let mut settings =
        Settings::from_config(&Config::default(), Some("us-east-1".into()), 64, 1 << 20);
    settings.engine.image_pull_behavior = PullBehavior::PreferCached;
    settings.engine.container_stop_timeout = Duration::from_secs(2);
    settings.engine.disk_cleanup_threshold_percent = 100.0;
    let engine = Engine::new(Parts {
        settings,
        store,
        sink: sink.clone(),
        credentials: Arc::new(CredentialsStore::default()),
        runtime: Arc::new(DockerRuntime::new(docker.clone(), Timeouts::default())),
        ecr: Arc::new(ecs_hostd::engine::pull::SdkEcr),
        secrets: Arc::new(ecs_hostd::engine::secrets::SdkSecrets),
        objects: Arc::new(ecs_hostd::engine::envfiles::S3Objects::default()),
        hooks: Hooks::default(),
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let runner = {
        let (e, c) = (engine.clone(), cancel.clone());
        tokio::spawn(async move { e.run(c).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib();

    // 1. Through the engine.
    let arns: Vec<String> = (0..N).map(|i| format!("arn:bench:{run}:e{i}")).collect();
    let mut delivered = HashMap::new();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for a in &arns {
        let e = engine.clone();
        let t = task(&run, a, &image, &sleeper);
        delivered.insert(a.clone(), Instant::now());
        handles.push(tokio::spawn(async move { e.deliver(t).await }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    wait_all(&sink.running, &arns, "engine tasks RUNNING").await;
    let engine_total = t0.elapsed();
    let mut engine_lat: Vec<Duration> = {
        let m = sink.running.lock().unwrap();
        arns.iter().map(|a| m[a] - delivered[a]).collect()
    };

    // 2. The same containers through bollard directly, same concurrency.
    let t1 = Instant::now();
    let mut direct = Vec::new();
    for i in 0..N {
        let docker = docker.clone();
        let image = image.clone();
        let run = run.clone();
        direct.push(tokio::spawn(async move {
            let start = Instant::now();
            let body = ContainerCreateBody {
                image: Some(image),
                cmd: Some(sleeper.iter().map(|s| s.to_string()).collect()),
                labels: Some(HashMap::from([("ecs-hostd.test".to_string(), run.clone())])),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    memory: Some(16 << 20),
                    cpu_shares: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::default()
                .name(&format!("{run}-direct-{i}"))
                .build();
            let id = docker.create_container(Some(opts), body).await.unwrap().id;
            docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .unwrap();
            start.elapsed()
        }));
    }
    let mut direct_lat = Vec::new();
    for d in direct {
        direct_lat.push(d.await.unwrap());
    }
    let direct_total = t1.elapsed();
    cleanup_direct(&docker, &run).await;

    // 3. Exit-to-event: SIGKILL a task's container, time until STOPPED is queued.
    let mut exit_lat = Vec::new();
    for a in arns.iter().take(EXITS) {
        let snap = engine.view().snapshot();
        let id = snap
            .tasks
            .iter()
            .find(|t| &t.arn == a)
            .and_then(|t| t.containers.first())
            .map(|c| c.docker_id.clone())
            .unwrap();
        let k = Instant::now();
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
            .unwrap();
        wait_all(&sink.stopped, std::slice::from_ref(a), "STOPPED after kill").await;
        exit_lat.push(sink.stopped.lock().unwrap()[a] - k);
    }

    // 4. RSS with 100 running containers (the 30 still running + 70 more).
    let more: Vec<String> = (0..RSS_N - (N - EXITS))
        .map(|i| format!("arn:bench:{run}:r{i}"))
        .collect();
    for a in &more {
        engine
            .deliver(task(&run, a, &image, &sleeper))
            .await
            .unwrap();
    }
    wait_all(&sink.running, &more, "100 running").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_100 = rss_kib();

    let ratio = engine_total.as_secs_f64() / direct_total.as_secs_f64();
    println!("engine_bench ({N} single-container tasks, NetworkMode none, concurrency {N})");
    println!(
        "  all running: engine {:.2} s, bollard direct {:.2} s, overhead ratio {ratio:.2}",
        engine_total.as_secs_f64(),
        direct_total.as_secs_f64()
    );
    println!(
        "  start latency engine (deliver -> RUNNING queued): p50 {:.0} ms, p99 {:.0} ms",
        pct(&mut engine_lat, 0.5).as_secs_f64() * 1e3,
        pct(&mut engine_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  start latency direct (create + start): p50 {:.0} ms, p99 {:.0} ms",
        pct(&mut direct_lat, 0.5).as_secs_f64() * 1e3,
        pct(&mut direct_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  exit-to-event (SIGKILL -> STOPPED queued, {EXITS} containers): p50 {:.0} ms, p99 {:.0} ms",
        pct(&mut exit_lat, 0.5).as_secs_f64() * 1e3,
        pct(&mut exit_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  RSS: {:.1} MiB with 0 containers, {:.1} MiB with {RSS_N} running",
        rss_idle as f64 / 1024.0,
        rss_100 as f64 / 1024.0
    );

    cancel.cancel();
    let _ = runner.await;
    cleanup(&run);
}

async fn cleanup_direct(_docker: &bollard::Docker, run: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name={run}-direct-")])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}
