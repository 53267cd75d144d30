//! The state-change reporter against ec2sim: the real store file, real SubmitTaskStateChange
//! calls, ECS outages by fault injection, restarts, and a kill -9 of a separate process.

mod acs_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use acs_support::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use ecs_hostd::backoff::Policy;
use ecs_hostd::ecs::report::{Reporter, ReporterConfig};
use ecs_hostd::store::Store;
use ecs_hostd::tasks::{
    ContainerChange, NetworkBinding, ReportStatus, StateChangeSink, TaskChange,
};

const WAIT: Duration = Duration::from_secs(20);
/// Test backoff: 200 ms → 1 s (the protocol's is 1 s → 30 s).
const RETRY: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(1), 1.3, 0.2);

fn reporter(sim: &Ec2sim, path: &Path) -> Arc<Reporter> {
    Arc::new(Reporter::new(
        Store::open(path).unwrap(),
        sim.ecs(),
        ReporterConfig {
            retry: RETRY,
            ..ReporterConfig::default()
        },
    ))
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn run(r: &Arc<Reporter>) -> Running {
    let cancel = CancellationToken::new();
    let (r, c) = (r.clone(), cancel.clone());
    Running {
        cancel,
        task: tokio::spawn(async move { r.run(c).await.unwrap() }),
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn container(name: &str, status: ReportStatus) -> ContainerChange {
    ContainerChange {
        container_name: name.into(),
        runtime_id: Some(format!("docker-{name}")),
        status,
        exit_code: (status == ReportStatus::Stopped).then_some(0),
        reason: None,
        image_digest: Some("sha256:0123".into()),
        network_bindings: if status == ReportStatus::Running && name == "web" {
            vec![NetworkBinding {
                bind_ip: "0.0.0.0".into(),
                container_port: Some(8080),
                host_port: Some(32768),
                protocol: "tcp".into(),
                container_port_range: None,
                host_port_range: None,
            }]
        } else {
            vec![]
        },
    }
}

fn change(cluster: &str, task: &str, status: ReportStatus) -> TaskChange {
    TaskChange {
        attachments: Vec::new(),
        cluster: cluster.into(),
        task_arn: task.into(),
        status,
        reason: (status == ReportStatus::Stopped).then(|| "Essential container exited".into()),
        pull_started_at: Some(1_700_000_000.5),
        pull_stopped_at: (status != ReportStatus::Pending).then_some(1_700_000_003.25),
        execution_stopped_at: (status == ReportStatus::Stopped).then_some(1_700_000_100.0),
        containers: vec![container("web", status), container("side", status)],
    }
}

/// The statuses ECS received for a task, in arrival order.
async fn statuses(sim: &Ec2sim, task: &str) -> Vec<String> {
    sim.task_state_changes()
        .await
        .iter()
        .filter(|b| b["task"] == task)
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn faulted_attempts(sim: &Ec2sim) -> usize {
    sim.get("/requests?service=ecs&operation=SubmitTaskStateChange")
        .await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["fault"].is_null())
        .count()
}

/// A cluster with a registered instance and `n` tasks placed on it.
async fn tasks(sim: &Ec2sim, n: usize) -> (String, Vec<String>) {
    let cluster = unique("rep");
    sim.register(&cluster).await;
    let family = sim.task_definition(&unique("fam")).await;
    let mut arns = Vec::new();
    for _ in 0..n {
        arns.push(sim.run_task(&cluster, &family).await);
    }
    (cluster, arns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_ecs_in_order_and_show_in_describe_tasks() {
    let sim = Ec2sim::start();
    let (cluster, arns) = tasks(&sim, 2).await;
    let (t1, t2) = (&arns[0], &arns[1]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let r = Arc::new(Reporter::new(store, sim.ecs(), ReporterConfig::default()));
    let running = run(&r);
    use ReportStatus::*;
    r_enqueue(
        &r,
        &[change(&cluster, t1, Pending), change(&cluster, t2, Pending)],
    );
    r_enqueue(
        &r,
        &[change(&cluster, t1, Running), change(&cluster, t2, Running)],
    );
    r_enqueue(&r, &[change(&cluster, t1, Stopped)]);
    until("5 state changes", WAIT, || async {
        sim.task_state_changes().await.len() == 5
    })
    .await;
    assert_eq!(statuses(&sim, t1).await, ["PENDING", "RUNNING", "STOPPED"]);
    assert_eq!(statuses(&sim, t2).await, ["PENDING", "RUNNING"]);
    until("queue empty", WAIT, || async { r.queued().unwrap() == 0 }).await;
    assert!(r.stopped_reported(t1));
    assert!(!r.stopped_reported(t2));

    // What ECS received, field by field (SubmitTaskStateChange of protocol spec §8.2).
    let bodies = sim.task_state_changes().await;
    let running_t1 = bodies
        .iter()
        .find(|b| b["task"] == t1.as_str() && b["status"] == "RUNNING")
        .unwrap();
    assert_eq!(running_t1["cluster"], cluster.as_str());
    assert_eq!(running_t1["pullStartedAt"].as_f64(), Some(1_700_000_000.5));
    let web = &running_t1["containers"][0];
    assert_eq!(web["containerName"], "web");
    assert_eq!(web["runtimeId"], "docker-web");
    assert_eq!(web["imageDigest"], "sha256:0123");
    assert_eq!(
        web["networkBindings"][0],
        serde_json::json!({"bindIP": "0.0.0.0", "containerPort": 8080, "hostPort": 32768, "protocol": "tcp"})
    );

    // And ECS shows it.
    let described = sim
        .client()
        .describe_tasks()
        .cluster(&cluster)
        .tasks(t1)
        .tasks(t2)
        .send()
        .await
        .unwrap();
    for task in described.tasks() {
        let want = if task.task_arn() == Some(t1.as_str()) {
            "STOPPED"
        } else {
            "RUNNING"
        };
        assert_eq!(task.last_status(), Some(want), "{:?}", task.task_arn());
        if want == "STOPPED" {
            assert_eq!(task.stopped_reason(), Some("Essential container exited"));
            assert!(task.containers().iter().all(|c| c.exit_code() == Some(0)));
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_queues_changes_and_restart_sends_them_once_in_order() {
    let sim = Ec2sim::start();
    let (cluster, arns) = tasks(&sim, 2).await;
    let (t1, t2) = (&arns[0], &arns[1]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    use ReportStatus::*;

    // ECS unavailable: changes queue, the sender keeps retrying, nothing arrives.
    sim.fault_submit(Some("unavailable")).await;
    let r = reporter(&sim, &path);
    let running = run(&r);
    let store = Store::open(&path).err();
    assert!(store.is_some(), "the store file is held by the reporter");
    r_enqueue(&r, &[change(&cluster, t1, Pending)]);
    r_enqueue(&r, &[change(&cluster, t1, Running)]);
    r_enqueue(&r, &[change(&cluster, t1, Stopped)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sim.task_state_changes().await.is_empty());
    let attempts = faulted_attempts(&sim).await;
    assert!(attempts >= 3, "{attempts} attempts in 3 s");
    assert_eq!(r.queued().unwrap(), 3);

    // ECS back: everything arrives, in order, once.
    sim.fault_submit(None).await;
    until("t1's changes", WAIT, || async {
        statuses(&sim, t1).await.len() == 3
    })
    .await;
    assert_eq!(statuses(&sim, t1).await, ["PENDING", "RUNNING", "STOPPED"]);

    // Another outage, then a restart (drop the reporter, a new one over the same file).
    sim.fault_submit(Some("unavailable")).await;
    r_enqueue(
        &r,
        &[change(&cluster, t2, Pending), change(&cluster, t2, Running)],
    );
    until("a failed attempt for t2", WAIT, || async {
        faulted_attempts(&sim).await > attempts + 1
    })
    .await;
    running.stop().await;
    assert!(!r.stopped_reported(t2));
    drop(r);
    sim.fault_submit(None).await;
    let r = reporter(&sim, &path);
    assert_eq!(r.queued().unwrap(), 2);
    let running = run(&r);
    until("t2's changes", WAIT, || async {
        statuses(&sim, t2).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(statuses(&sim, t2).await, ["PENDING", "RUNNING"]);
    assert_eq!(statuses(&sim, t1).await.len(), 3, "t1 not sent again");
    assert_eq!(r.queued().unwrap(), 0);
    running.stop().await;
}

/// Enqueues in one transaction of the reporter's store, as the engine does, then wakes the
/// sender.
fn r_enqueue(r: &Reporter, changes: &[TaskChange]) {
    r.store()
        .transaction(|tx| {
            for c in changes {
                r.enqueue(tx, c)?;
            }
            Ok(())
        })
        .unwrap();
    r.notify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reports_a_status_older_than_sent_even_after_restart() {
    let sim = Ec2sim::start();
    let (cluster, arns) = tasks(&sim, 1).await;
    let t = &arns[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    use ReportStatus::*;
    let r = reporter(&sim, &path);
    let running = run(&r);
    r_enqueue(&r, &[change(&cluster, t, Running)]);
    until("RUNNING sent", WAIT, || async {
        statuses(&sim, t).await.len() == 1
    })
    .await;
    until("queue empty", WAIT, || async { r.queued().unwrap() == 0 }).await;
    running.stop().await;
    drop(r);

    // After a restart, an older status and a repeated one are dropped; STOPPED goes out.
    let r = reporter(&sim, &path);
    let running = run(&r);
    r_enqueue(
        &r,
        &[
            change(&cluster, t, Pending),
            change(&cluster, t, Running),
            change(&cluster, t, Stopped),
        ],
    );
    until("queue empty", WAIT, || async { r.queued().unwrap() == 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(statuses(&sim, t).await, ["RUNNING", "STOPPED"]);
    assert_eq!(r.stats().skipped, 2);
    running.stop().await;
}

const CHILD_ENV: &str = "ECS_HOSTD_TEST_REPORTER_CHILD";

/// Not a test on its own: the separate process of
/// `killed_after_commit_reports_once_after_restart`. Without its environment variable it does
/// nothing. With it: opens the store, enqueues and commits one change, says so on stdout, then
/// runs the reporter (against a faulted ECS) until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let v: Value = serde_json::from_str(&spec).unwrap();
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(credentials())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    let base = v["base"].as_str().unwrap();
    let ecs = Arc::new(ecs_hostd::ecs::sdk::SdkEcs::new(&sdk, Some(base)));
    let r = Arc::new(Reporter::new(
        Store::open(Path::new(v["store"].as_str().unwrap())).unwrap(),
        ecs,
        ReporterConfig {
            retry: RETRY,
            ..ReporterConfig::default()
        },
    ));
    let c = change(
        v["cluster"].as_str().unwrap(),
        v["task"].as_str().unwrap(),
        ReportStatus::Running,
    );
    r_enqueue(&r, &[c]);
    println!("COMMITTED");
    r.run(CancellationToken::new()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_commit_reports_once_after_restart() {
    let sim = Ec2sim::start();
    let (cluster, arns) = tasks(&sim, 1).await;
    let t = &arns[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    sim.fault_submit(Some("unavailable")).await;

    // A separate process commits a state change and starts reporting it...
    let spec = serde_json::json!({"store": path, "base": sim.base, "cluster": cluster, "task": t});
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reporter_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, spec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("COMMITTED"))
    });
    assert!(
        tokio::time::timeout(WAIT, committed)
            .await
            .unwrap()
            .unwrap(),
        "the child never committed"
    );
    // ...is seen trying (ECS is down), and is killed with SIGKILL before it succeeds.
    until("the child's first attempt", WAIT, || async {
        faulted_attempts(&sim).await >= 1
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sim.task_state_changes().await.is_empty());

    // After the restart the change is reported exactly once.
    sim.fault_submit(None).await;
    let r = reporter(&sim, &path);
    assert_eq!(r.queued().unwrap(), 1);
    let running = run(&r);
    until("the change reported", WAIT, || async {
        !statuses(&sim, t).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(statuses(&sim, t).await, ["RUNNING"]);
    assert_eq!(r.queued().unwrap(), 0);
    running.stop().await;
}
