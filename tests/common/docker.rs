//! Helpers for the engine's Docker tests: the offline test image, task JSON builders, an
//! in-process engine on the real Docker engine, and cleanup of everything a test created (every
//! container carries `ecs-hostd.test=<run id>`; removed on drop, pass or fail).
//!
//! Tests FAIL when Docker or the test image is missing: `scripts/test.sh` provides both.
#![allow(dead_code)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecs_hostd::config::Config;
use ecs_hostd::engine::counting::{Counting, DockerCalls};
use ecs_hostd::engine::docker::{DockerRuntime, Timeouts};
use ecs_hostd::engine::{Engine, Hooks, Parts, Settings};
use ecs_hostd::store::{self, Store, Transaction};
use ecs_hostd::tasks::{
    CredentialsStore, RecordingSink, ReportStatus, StateChangeSink, TaskChange,
};
use tokio_util::sync::CancellationToken;

/// The label every test container carries.
pub const TEST_LABEL: &str = "ecs-hostd.test";

/// The offline busybox image (`scripts/world.sh` `world_images`).
pub fn test_image() -> String {
    let image = std::env::var("ECS_HOSTD_TEST_IMAGE")
        .unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into());
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Docker or the test image {image} is missing: run `bash -c 'source scripts/world.sh; world_setup'`"
    );
    image
}

/// A unique run id for labels and names.
pub fn run_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Removes every container (and task volume) labelled with the run id when dropped.
pub struct Cleanup {
    /// Run id.
    pub run: String,
    /// `DOCKER_HOST` to clean (None = default).
    pub host: Option<String>,
}

impl Cleanup {
    /// Guard for `run` on the default engine.
    pub fn new(run: &str) -> Cleanup {
        Cleanup {
            run: run.to_owned(),
            host: None,
        }
    }
}

/// `docker` CLI with the right host.
pub fn docker_cli(host: Option<&str>) -> Command {
    let mut c = Command::new("docker");
    if let Some(h) = host {
        c.args(["-H", h]);
    }
    c
}

/// Ids of containers carrying `label=value`, all states.
pub fn containers_with(host: Option<&str>, label: &str) -> Vec<String> {
    let out = docker_cli(host)
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = containers_with(self.host.as_deref(), &format!("{TEST_LABEL}={}", self.run));
        if !ids.is_empty() {
            let _ = docker_cli(self.host.as_deref())
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let vols = docker_cli(self.host.as_deref())
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name={}", self.run),
            ])
            .output();
        if let Ok(v) = vols {
            for name in String::from_utf8_lossy(&v.stdout).lines() {
                let _ = docker_cli(self.host.as_deref())
                    .args(["volume", "rm", "-f", name])
                    .output();
            }
        }
    }
}

/// A container definition as ACS sends it, labelled for the test run through
/// `dockerConfig.config` (as ECS renders `dockerLabels`), with `host` (raw HostConfig JSON) merged.
pub fn container(
    run: &str,
    name: &str,
    image: &str,
    command: &[&str],
    essential: bool,
    host: serde_json::Value,
) -> serde_json::Value {
    let config = serde_json::json!({"Labels": {TEST_LABEL: run}});
    serde_json::json!({
        "name": name,
        "image": image,
        "essential": essential,
        "command": command,
        "cpu": 10,
        "memory": 32,
        "dockerConfig": {"config": config.to_string(), "hostConfig": host.to_string(), "version": "1.41"}
    })
}

/// A task as ACS sends it.
pub fn task(arn: &str, family: &str, containers: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "arn": arn, "family": family, "version": "1", "desiredStatus": "RUNNING",
        "taskClusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/test",
        "containers": containers
    })
}

/// Test settings: fast resync, published ports on 127.0.0.1.
pub fn settings() -> Settings {
    let mut s = Settings::from_config(&Config::default(), Some("us-east-1".into()), 2, 8192);
    s.bind_ip = Some("127.0.0.1".into());
    s.resync = Duration::from_secs(2);
    s.engine.container_stop_timeout = Duration::from_secs(5);
    // Tests never pull unless they say so: images come from the offline build.
    s.engine.image_pull_behavior = ecs_hostd::config::PullBehavior::PreferCached;
    s.engine.disk_cleanup_threshold_percent = 100.0;
    s
}

/// A sink that records changes and says "reported" only when the test allows it.
#[derive(Default)]
pub struct GatedSink {
    /// Everything recorded.
    pub inner: RecordingSink,
    /// Whether STOPPED counts as reported.
    pub report: Mutex<bool>,
}

impl StateChangeSink for GatedSink {
    fn enqueue(&self, tx: &Transaction<'_>, change: &TaskChange) -> Result<(), store::Error> {
        self.inner.enqueue(tx, change)
    }
    fn notify(&self) {
        self.inner.notify();
    }
    fn stopped_reported(&self, task_arn: &str) -> bool {
        *self.report.lock().unwrap() && self.inner.stopped_reported(task_arn)
    }
}

/// An engine running in this process against the real Docker engine.
pub struct Running {
    /// Handle.
    pub engine: Engine,
    /// Sink.
    pub sink: Arc<GatedSink>,
    /// Store.
    pub store: Store,
    /// Docker client.
    pub docker: bollard::Docker,
    /// What the engine asked of Docker so far.
    pub calls: Arc<DockerCalls>,
    /// The engine's in-memory credentials store.
    pub credentials: Arc<CredentialsStore>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Connects to the default Docker engine; panics (fails the test) when it does not answer.
pub async fn docker() -> bollard::Docker {
    let d = ecs_hostd::docker::connect(None).expect("docker client");
    d.ping()
        .await
        .expect("Docker is not running: run scripts/world.sh world_setup");
    d
}

/// Starts an engine with `settings` on the default Docker engine.
pub async fn start(settings: Settings) -> Running {
    start_on(settings, docker().await).await
}

/// Starts an engine with `settings` on `docker` (e.g. a private engine; it need not answer yet).
pub async fn start_on(settings: Settings, docker: bollard::Docker) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    let sink = Arc::new(GatedSink {
        report: Mutex::new(true),
        ..GatedSink::default()
    });
    let runtime = Counting::new(Arc::new(DockerRuntime::new(
        docker.clone(),
        Timeouts::default(),
    )));
    let calls = runtime.calls();
    let runtime = Arc::new(runtime);
    let credentials = Arc::new(CredentialsStore::default());
    let engine = Engine::new(Parts {
        settings,
        store: store.clone(),
        sink: sink.clone(),
        credentials: credentials.clone(),
        runtime,
        ecr: Arc::new(ecs_hostd::engine::pull::SdkEcr),
        secrets: Arc::new(ecs_hostd::engine::secrets::SdkSecrets),
        objects: Arc::new(ecs_hostd::engine::envfiles::S3Objects::default()),
        hooks: Hooks::default(),
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let e = engine.clone();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        e.run(c).await.expect("engine loop");
    });
    Running {
        engine,
        sink,
        store,
        docker,
        calls,
        credentials,
        cancel,
        task: Some(task),
        _dir: dir,
    }
}

impl Running {
    /// Stops the loop.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Changes recorded so far.
    pub fn changes(&self) -> Vec<TaskChange> {
        self.sink.inner.changes()
    }

    /// Waits until `f` holds over the changes, or fails after `deadline`.
    pub async fn wait_changes(
        &self,
        what: &str,
        deadline: Duration,
        f: impl Fn(&[TaskChange]) -> bool,
    ) -> Vec<TaskChange> {
        let start = Instant::now();
        loop {
            let ch = self.changes();
            if f(&ch) {
                return ch;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; changes: {ch:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `arn` reached task status `s`.
pub fn task_reached(changes: &[TaskChange], arn: &str, s: ReportStatus) -> bool {
    changes.iter().any(|c| c.task_arn == arn && c.status == s)
}

/// The last reported change of container `name` in `arn`.
pub fn container_change(
    changes: &[TaskChange],
    arn: &str,
    name: &str,
    s: ReportStatus,
) -> Option<ecs_hostd::tasks::ContainerChange> {
    changes
        .iter()
        .filter(|c| c.task_arn == arn)
        .flat_map(|c| c.containers.iter())
        .find(|c| c.container_name == name && c.status == s)
        .cloned()
}

/// Asserts no task transition or container status was reported twice.
pub fn assert_each_once(changes: &[TaskChange]) {
    use std::collections::HashMap;
    let mut task_last: HashMap<&str, ReportStatus> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for ch in changes {
        let prev = task_last.insert(&ch.task_arn, ch.status);
        assert!(
            prev.is_none_or(|p| p < ch.status) || !ch.containers.is_empty(),
            "repeated task change {ch:?}"
        );
        if let Some(p) = prev {
            assert!(p <= ch.status, "task {} went backwards", ch.task_arn);
        }
        for c in &ch.containers {
            assert!(
                seen.insert((ch.task_arn.clone(), c.container_name.clone(), c.status)),
                "container change reported twice: {} {} {:?}",
                ch.task_arn,
                c.container_name,
                c.status
            );
        }
    }
}

/// Waits until a TCP GET of `path` on 127.0.0.1:`port` answers 200, returning the body.
pub async fn http_get(port: u16, path: &str, deadline: Duration) -> String {
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{port}{path}");
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return r.text().await.unwrap_or_default();
        }
        assert!(start.elapsed() < deadline, "no HTTP answer from {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
