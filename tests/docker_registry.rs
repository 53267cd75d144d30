//! Image pulls from a local registry (Debian's `docker-registry` on 127.0.0.1), with and without
//! basic auth (`ECS_ENGINE_AUTH_TYPE=docker`): a wrong password stops the task with a clear
//! `CannotPullContainerError`; many tasks wanting one image pull it one at a time; images the
//! engine pulled are cleaned up once unused (here brought forward by disk pressure).
//!
//! The pulled image is derived from the test image with an id of its own (a commit with a
//! label), so that removing it can never touch the shared test image other tests run, and no
//! other test's container can keep it in use.

#[path = "common/docker.rs"]
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/harness_main.rs"]
mod harness_main;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use common::*;
use ecs_hostd::api::TaskView;
use ecs_hostd::config::PullBehavior;
use ecs_hostd::engine::docker::{DockerRuntime, Timeouts};
use ecs_hostd::engine::runtime::{
    ContainerRuntime, ImageInfo, Observed, PullLimits, RuntimeError, Summary, VolumeRequest,
};
use ecs_hostd::engine::{Engine, Hooks, Parts};
use ecs_hostd::store::Store;
use ecs_hostd::tasks::{CredentialsStore, ReportStatus, TaskControl};
use futures_util::stream::BoxStream;
use harness::*;
use tokio_util::sync::CancellationToken;

/// Not a test: lets `harness.rs` re-execute this binary (unused here, required by the module).
#[test]
fn harness_process() {
    harness_entry();
}

/// Docker, counting pulls per image and the most that ran at once.
struct Counting {
    inner: DockerRuntime,
    active: Mutex<HashMap<String, usize>>,
    max_parallel_same_image: AtomicUsize,
    pulls: AtomicUsize,
}

#[async_trait]
impl ContainerRuntime for Counting {
    async fn list(&self) -> Result<Vec<Summary>, RuntimeError> {
        self.inner.list().await
    }
    async fn inspect(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        self.inner.inspect(id).await
    }
    async fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.inner.image(image).await
    }
    async fn pull(
        &self,
        image: &str,
        auth: Option<DockerCredentials>,
        limits: PullLimits,
    ) -> Result<(), RuntimeError> {
        {
            let mut a = self.active.lock().unwrap();
            let n = a.entry(image.to_owned()).or_default();
            *n += 1;
            self.max_parallel_same_image.fetch_max(*n, Ordering::SeqCst);
        }
        self.pulls.fetch_add(1, Ordering::SeqCst);
        let r = self.inner.pull(image, auth, limits).await;
        *self.active.lock().unwrap().get_mut(image).unwrap() -= 1;
        r
    }
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeRequest>, RuntimeError> {
        self.inner.inspect_volume(name).await
    }
    async fn create_volume(&self, v: &VolumeRequest) -> Result<(), RuntimeError> {
        self.inner.create_volume(v).await
    }
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        self.inner.create(name, body).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.start(id).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.remove(id).await
    }
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_volume(name).await
    }
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.inner.remove_image(image).await
    }
    async fn images_in_use(&self) -> Result<std::collections::HashSet<String>, RuntimeError> {
        self.inner.images_in_use().await
    }
    async fn list_images(
        &self,
    ) -> Result<Vec<ecs_hostd::engine::cleanup::DockerImage>, RuntimeError> {
        self.inner.list_images().await
    }
    async fn data_root(&self) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        self.inner.data_root().await
    }
    fn events(&self) -> BoxStream<'static, Result<(), RuntimeError>> {
        self.inner.events()
    }
}

struct Rig {
    engine: Engine,
    sink: Arc<GatedSink>,
    runtime: Arc<Counting>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn rig(settings: ecs_hostd::engine::Settings) -> Rig {
    let docker = docker().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let sink = Arc::new(GatedSink {
        report: Mutex::new(true),
        ..GatedSink::default()
    });
    let runtime = Arc::new(Counting {
        inner: DockerRuntime::new(docker, Timeouts::default()),
        active: Mutex::default(),
        max_parallel_same_image: AtomicUsize::new(0),
        pulls: AtomicUsize::new(0),
    });
    let engine = Engine::new(Parts {
        settings,
        store,
        sink: sink.clone(),
        credentials: Arc::new(CredentialsStore::default()),
        runtime: runtime.clone(),
        ecr: Arc::new(ecs_hostd::engine::pull::SdkEcr),
        secrets: Arc::new(ecs_hostd::engine::secrets::SdkSecrets),
        objects: Arc::new(ecs_hostd::engine::envfiles::S3Objects::default()),
        hooks: Hooks::default(),
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let (e, c) = (engine.clone(), cancel.clone());
    tokio::spawn(async move { e.run(c).await.unwrap() });
    Rig {
        engine,
        sink,
        runtime,
        cancel,
        _dir: dir,
    }
}

async fn wait(
    sink: &GatedSink,
    what: &str,
    f: impl Fn(&[ecs_hostd::tasks::TaskChange]) -> bool,
) -> Vec<ecs_hostd::tasks::TaskChange> {
    let start = std::time::Instant::now();
    loop {
        let ch = sink.inner.changes();
        if f(&ch) {
            return ch;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {ch:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one(run: &str, image: &str, arn: &str) -> serde_json::Value {
    task(
        arn,
        "pull",
        vec![container(
            run,
            "c",
            image,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ],
            true,
            serde_json::json!({}),
        )],
    )
}

fn untag(reference: &str) {
    let o = std::process::Command::new("docker")
        .args(["rmi", reference])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker rmi {reference}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A new local image with its own id, derived from `base` (a commit adding a label), tagged
/// `ehd-derived/<run>:1`; returns its id.
fn derived_image(base: &str, run: &str) -> String {
    let docker = |args: &[&str]| {
        let o = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let label = format!("{TEST_LABEL}={run}");
    let cid = docker(&["create", "--label", &label, base, "true"]);
    let tag = format!("ehd-derived/{run}:1");
    let id = docker(&["commit", "--change", &format!("LABEL {label}"), &cid, &tag]);
    docker(&["rm", &cid]);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_without_auth_once_at_a_time_and_cleans_the_image_up() {
    let image = test_image();
    let base_id = image_id(&image).unwrap();
    let run = run_id("pull");
    let _c = Cleanup::new(&run);
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), None);
    let own_id = derived_image(&image, &run);
    assert_ne!(own_id, base_id);
    let local = format!("ehd-derived/{run}:1");
    let pulled = push(&local, &reg.addr, &format!("ehd/{run}:1"));
    untag(&local);
    assert!(!image_exists(&pulled));
    assert!(
        image_id(&own_id).is_none(),
        "the derived image must exist only in the registry now"
    );

    let mut s = settings();
    s.engine.image_pull_behavior = PullBehavior::Always;
    s.engine.image_minimum_cleanup_age = Duration::from_secs(0);
    // Disk pressure (threshold 0 %): stopped tasks are cleaned up at once and unused pulled
    // images right after, instead of after ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION and
    // ECS_IMAGE_CLEANUP_INTERVAL.
    s.engine.disk_cleanup_threshold_percent = 0.0;
    s.engine.task_cleanup_wait = Duration::from_secs(3600);
    s.engine.image_cleanup_interval = Duration::from_secs(3600);
    let r = rig(s).await;
    let arns: Vec<String> = (0..3)
        .map(|i| format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-{i}"))
        .collect();
    for a in &arns {
        r.engine.deliver(one(&run, &pulled, a)).await.unwrap();
    }
    let ch = wait(&r.sink, "3 tasks RUNNING", |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Running))
    })
    .await;
    assert!(image_exists(&pulled));
    assert_eq!(image_id(&pulled).as_deref(), Some(own_id.as_str()));
    assert_eq!(
        r.runtime.max_parallel_same_image.load(Ordering::SeqCst),
        1,
        "one pull per image at a time"
    );
    assert!(r.runtime.pulls.load(Ordering::SeqCst) >= 1);
    let first = ch
        .iter()
        .find(|c| c.task_arn == arns[0] && c.status == ReportStatus::Running)
        .unwrap();
    assert!(first.pull_started_at.unwrap() <= first.pull_stopped_at.unwrap());
    for a in &arns {
        r.engine.stop(a).await.unwrap();
    }
    wait(&r.sink, "all STOPPED", |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Stopped))
    })
    .await;

    // Under pressure the stopped tasks are removed at once, then the image they used is no
    // longer used by any container and goes too; the shared test image stays.
    let start = std::time::Instant::now();
    while image_id(&own_id).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pulled image never cleaned up; containers left: {:?}",
            containers_with(None, &format!("{TEST_LABEL}={run}"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        containers_with(None, &format!("{TEST_LABEL}={run}")).is_empty(),
        "the image went before the containers that used it"
    );
    assert!(r.engine.view().tasks().is_empty(), "tasks not cleaned up");
    assert!(!image_exists(&pulled));
    assert_eq!(
        image_id(&image).as_deref(),
        Some(base_id.as_str()),
        "the image the engine did not pull is kept"
    );
    r.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_basic_auth_and_a_wrong_password_gives_a_clear_reason() {
    let image = test_image();
    let run = run_id("auth");
    let _c = Cleanup::new(&run);
    let storage = tempfile::tempdir().unwrap();
    let open = Registry::start(storage.path(), None);
    let pushed = push(&image, &open.addr, &format!("ehd/{run}:1"));
    let auth_dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(auth_dir.path(), "tester", "right-password");
    let secured = Registry::start(storage.path(), Some(&pw));
    let image_ref = pushed.replace(&open.addr, &secured.addr);

    // Wrong password: STOPPED with CannotPullContainerError.
    let mut s = settings();
    s.engine.image_pull_behavior = PullBehavior::Always;
    s.pull_retry = ecs_hostd::backoff::Policy::new(
        Duration::from_millis(10),
        Duration::from_millis(10),
        1.0,
        0.0,
    );
    s.engine.engine_auth_type = Some("docker".into());
    s.engine.engine_auth_data = Some(
        serde_json::json!({ secured.addr.clone(): {"username": "tester", "password": "wrong", "email": "t@example.com"} })
            .to_string(),
    );
    let r = rig(s.clone()).await;
    let bad = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-bad");
    r.engine.deliver(one(&run, &image_ref, &bad)).await.unwrap();
    let ch = wait(&r.sink, "STOPPED", |c| {
        task_reached(c, &bad, ReportStatus::Stopped)
    })
    .await;
    let c = container_change(&ch, &bad, "c", ReportStatus::Stopped).unwrap();
    let reason = c.reason.unwrap();
    assert!(reason.starts_with("CannotPullContainerError: "), "{reason}");
    assert!(
        reason.to_lowercase().contains("unauthorized") || reason.contains("authentication"),
        "{reason}"
    );
    assert!(
        !ch.iter()
            .any(|c| c.task_arn == bad && c.status == ReportStatus::Running)
    );
    r.cancel.cancel();

    // Right password (dockercfg format this time): runs.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("tester:right-password");
    s.engine.engine_auth_type = Some("dockercfg".into());
    s.engine.engine_auth_data =
        Some(serde_json::json!({ format!("https://{}", secured.addr): {"auth": auth, "email": "t@example.com"} }).to_string());
    let r = rig(s).await;
    let good = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-good");
    r.engine
        .deliver(one(&run, &image_ref, &good))
        .await
        .unwrap();
    wait(&r.sink, "RUNNING", |c| {
        task_reached(c, &good, ReportStatus::Running)
    })
    .await;
    assert!(image_exists(&image_ref));
    r.engine.stop(&good).await.unwrap();
    wait(&r.sink, "STOPPED", |c| {
        task_reached(c, &good, ReportStatus::Stopped)
    })
    .await;
    r.cancel.cancel();
    for id in containers_with(None, &format!("{TEST_LABEL}={run}")) {
        let _ = docker_cli(None).args(["rm", "-f", &id]).output();
    }
    let _ = std::process::Command::new("docker")
        .args(["rmi", &image_ref])
        .output();
}
