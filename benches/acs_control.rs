//! Control-plane figures (prints them; no assertions):
//!
//! 1. ACS decode time per PayloadMessage (a realistic two-container task with credentials).
//! 2. ACS decode + handle time per PayloadMessage: credentials stored, task delivered to a no-op
//!    engine, seqNum persisted (one durable store commit), replies built.
//! 3. Reporter latency against ec2sim: enqueue (one store transaction) → SubmitTaskStateChange
//!    accepted, one change at a time; the bare SubmitTaskStateChange call for comparison; and
//!    the time to drain a burst of queued changes.
//!
//! Run: `cargo bench --bench acs_control` (needs ec2sim's Python, as the integration tests).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a small smoke version
//! without ec2sim, so the suite checks it still works without paying for the figures.
//! The end-to-end figure (payload received → containers RUNNING → RUNNING accepted) needs the
//! engine; [`ecs_hostd::ecs::report::Milestones`] records its timestamps once wired.

#[path = "../tests/acs_support/mod.rs"]
mod acs_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use acs_support::{Ec2sim, REGION};
use ecs_hostd::ecs::EcsApi;
use ecs_hostd::ecs::acs::messages;
use ecs_hostd::ecs::acs::{Handler, HandlerParts, Identity};
use ecs_hostd::ecs::report::{Reporter, ReporterConfig};
use ecs_hostd::store::Store;
use ecs_hostd::tasks::{
    CredentialsStore, DeliverError, RecordingSink, ReportStatus, StateChangeSink, TaskChange,
    TaskControl,
};

struct NoopEngine;

#[async_trait]
impl TaskControl for NoopEngine {
    async fn deliver(&self, _task: Value) -> Result<(), DeliverError> {
        Ok(())
    }
    fn desired_running(&self) -> Vec<String> {
        Vec::new()
    }
    fn knows(&self, _task_arn: &str) -> bool {
        true
    }
    async fn stop(&self, _task_arn: &str) -> Result<(), String> {
        Ok(())
    }
}

fn creds(id: &str) -> Value {
    json!({"credentialsId": id, "roleArn": "arn:aws:iam::123456789012:role/app",
           "accessKeyId": "ASIA0123456789ABCDEF", "secretAccessKey": "s".repeat(40),
           "sessionToken": "t".repeat(600), "expiration": "2030-01-01T00:00:00.000+0000"})
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": "public.ecr.aws/docker/library/nginx:1.27", "cpu": 256,
           "memory": 512, "essential": true, "command": ["nginx", "-g", "daemon off;"],
           "entryPoint": [], "environment": {"A": "1", "B": "two", "C": "three"},
           "portMappings": [{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
           "mountPoints": [], "volumesFrom": [], "links": [], "dependsOn": [],
           "overrides": "{}",
           "dockerConfig": {"config": "{\"Labels\":{\"team\":\"web\"},\"Healthcheck\":{\"Test\":[\"CMD\",\"true\"],\"Interval\":30000000000}}",
                            "hostConfig": "{\"NetworkMode\":\"bridge\",\"MemoryReservation\":268435456,\"LogConfig\":{\"Type\":\"json-file\",\"Config\":{}}}",
                            "version": "1.24"}})
}

fn payload(i: u64) -> String {
    json!({"type": "PayloadMessage", "message": {
        "messageId": format!("m-{i}"), "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/bench",
        "containerInstanceArn": "arn:aws:ecs:us-east-1:123456789012:container-instance/bench/ci",
        "seqNum": i, "timeline": i, "generatedAt": 1_700_000_000_000u64,
        "tasks": [{"arn": format!("arn:aws:ecs:us-east-1:123456789012:task/bench/{i}"),
                   "family": "web", "version": "3", "desiredStatus": "RUNNING",
                   "taskClusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/bench",
                   "launchType": "EC2", "networkMode": "bridge", "overrides": "{}",
                   "containers": [container("web"), container("sidecar")], "volumes": [],
                   "roleCredentials": creds(&format!("app-{i}")),
                   "executionRoleCredentials": creds(&format!("exec-{i}"))}]}})
    .to_string()
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    let pct = |p: f64| samples[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "{label:<58} n={n:<6} mean={:>9.1?} p50={:>9.1?} p95={:>9.1?} p99={:>9.1?} max={:>9.1?}",
        mean,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        samples[n - 1]
    );
}

fn change(cluster: &str, task: &str, status: ReportStatus) -> TaskChange {
    TaskChange {
        attachments: Vec::new(),
        cluster: cluster.into(),
        task_arn: task.into(),
        status,
        reason: None,
        pull_started_at: None,
        pull_stopped_at: None,
        execution_stopped_at: None,
        containers: vec![],
    }
}

async fn wait_accepted(r: &Reporter, n: u64) {
    while r.stats().accepted < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (decodes, handles, heartbeats) = if full {
        (5000, 1000, 5000)
    } else {
        (50, 20, 50)
    };
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug (figures are pessimistic; use the default bench profile)"
        } else {
            "optimised"
        }
    );
    let frame = payload(1);
    println!(
        "payload frame: {} bytes, 1 task, 2 containers, 2 credential sets",
        frame.len()
    );

    // 1. Decode.
    for i in 0..decodes.min(200) {
        let _ = messages::decode(&payload(i)).unwrap();
    }
    let frames: Vec<String> = (0..decodes).map(payload).collect();
    let mut samples = Vec::with_capacity(frames.len());
    for f in &frames {
        let t = Instant::now();
        let d = messages::decode(f).unwrap();
        samples.push(t.elapsed());
        std::hint::black_box(d);
    }
    summary("ACS decode per PayloadMessage", samples);

    // 2. Decode + handle.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    let mut handler = Handler::new(HandlerParts {
        identity: Identity {
            cluster: "bench".into(),
            container_instance_arn: "ci".into(),
        },
        engine: Arc::new(NoopEngine),
        credentials: Arc::new(CredentialsStore::default()),
        sink: Arc::new(RecordingSink::default()),
        store,
        milestones: None,
    })
    .unwrap();
    let mut samples = Vec::new();
    for (i, f) in frames.iter().take(handles).enumerate() {
        let t = Instant::now();
        let h = handler.handle_frame(f).await.unwrap();
        let encoded: Vec<String> = h.replies.iter().map(|r| r.encode()).collect();
        samples.push(t.elapsed());
        assert_eq!(encoded.len(), 3, "frame {i}");
    }
    summary(
        "ACS decode+handle+encode acks per PayloadMessage (seqNum commit)",
        samples,
    );
    // The same without the durable commit: seqNum not above the latest, new task ARNs.
    let mut samples = Vec::new();
    for i in 0..handles as u64 {
        let f = payload(1_000_000 + i)
            .replace(&format!("\"seqNum\":{}", 1_000_000 + i), "\"seqNum\":0");
        assert!(f.contains("\"seqNum\":0"));
        let t = Instant::now();
        let h = handler.handle_frame(&f).await.unwrap();
        let _: Vec<String> = h.replies.iter().map(|r| r.encode()).collect();
        samples.push(t.elapsed());
    }
    summary(
        "ACS decode+handle+encode acks per PayloadMessage (no commit)",
        samples,
    );
    let heartbeat = r#"{"type":"HeartbeatMessage","message":{"messageId":"h","healthy":true}}"#;
    let mut samples = Vec::new();
    for _ in 0..heartbeats {
        let t = Instant::now();
        let h = handler.handle_frame(heartbeat).await.unwrap();
        let _ = h.replies[0].encode();
        samples.push(t.elapsed());
    }
    summary("ACS decode+handle+encode ack per HeartbeatMessage", samples);

    // 3. Reporter against ec2sim.
    if !full {
        println!("smoke run (cargo test): reporter figures need `cargo bench --bench acs_control`");
        return;
    }
    let sim = Ec2sim::start();
    let cluster = acs_support::unique("bench");
    sim.register(&cluster).await;
    let family = sim.task_definition(&acs_support::unique("fam")).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        tasks.push(sim.run_task(&cluster, &family).await);
    }
    let ecs = sim.ecs();
    // Bare call, for comparison (PENDING on every task: accepted, no state moves).
    let mut samples = Vec::new();
    for t in &tasks {
        let start = Instant::now();
        ecs.submit_task_state_change(&change(&cluster, t, ReportStatus::Pending))
            .await
            .unwrap();
        samples.push(start.elapsed());
    }
    summary(
        "SubmitTaskStateChange call to ec2sim (SDK, no queue)",
        samples,
    );

    let dir = tempfile::tempdir().unwrap();
    let reporter = Arc::new(Reporter::new(
        Store::open(&dir.path().join("r.redb")).unwrap(),
        ecs.clone(),
        ReporterConfig::default(),
    ));
    let cancel = tokio_util::sync::CancellationToken::new();
    let (r, c) = (reporter.clone(), cancel.clone());
    let run = tokio::spawn(async move { r.run(c).await.unwrap() });
    let enqueue = |changes: &[TaskChange]| {
        reporter
            .store()
            .transaction(|tx| {
                for ch in changes {
                    reporter.enqueue(tx, ch)?;
                }
                Ok(())
            })
            .unwrap();
        reporter.notify();
    };
    let mut samples = Vec::new();
    let mut enqueue_only = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let start = Instant::now();
        enqueue(&[change(&cluster, t, ReportStatus::Running)]);
        enqueue_only.push(start.elapsed());
        wait_accepted(&reporter, i as u64 + 1).await;
        samples.push(start.elapsed());
    }
    summary("reporter enqueue (durable transaction) only", enqueue_only);
    summary("reporter enqueue → SubmitTaskStateChange accepted", samples);

    // A burst: STOPPED for every task at once (one transaction), drained 10 in flight.
    let before = reporter.stats().accepted;
    let start = Instant::now();
    let burst: Vec<_> = tasks
        .iter()
        .map(|t| change(&cluster, t, ReportStatus::Stopped))
        .collect();
    enqueue(&burst);
    wait_accepted(&reporter, before + burst.len() as u64).await;
    let took = start.elapsed();
    println!(
        "{:<58} {} changes in {took:.1?} ({:.0} changes/s)",
        "reporter burst drain (10 in flight)",
        burst.len(),
        burst.len() as f64 / took.as_secs_f64()
    );
    cancel.cancel();
    run.await.unwrap();
    println!("region {REGION}; ec2sim on one loopback port; machine shared (see load average)");
}
