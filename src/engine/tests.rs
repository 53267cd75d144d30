//! Engine tests against the fake runtime: scenarios and the model-based property test.

use super::*;
use crate::api::TaskView;
use crate::engine::runtime::{FakeOp, FakeRuntime, LABEL_TASK_ARN};
use crate::tasks::{RecordingSink, ReportStatus, TaskChange};
use proptest::prelude::*;

const IMG: &str = "img:1";

struct Rig {
    engine: Engine,
    fake: Arc<FakeRuntime>,
    sink: Arc<RecordingSink>,
    store: Store,
    _dir: tempfile::TempDir,
}

fn tmpdir() -> tempfile::TempDir {
    if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn settings(cleanup_wait: Duration) -> Settings {
    let mut s = Settings::from_config(&Config::default(), Some("us-east-1".into()), 2, 4096);
    s.engine.task_cleanup_wait = cleanup_wait;
    s.pull_retry = crate::backoff::Policy::new(Duration::ZERO, Duration::ZERO, 1.0, 0.0);
    s
}

fn rig_with(fake: Arc<FakeRuntime>, settings: Settings) -> Rig {
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let sink = Arc::new(RecordingSink::default());
    let engine = build(&fake, &sink, &store, settings);
    Rig {
        engine,
        fake,
        sink,
        store,
        _dir: dir,
    }
}

fn build(
    fake: &Arc<FakeRuntime>,
    sink: &Arc<RecordingSink>,
    store: &Store,
    settings: Settings,
) -> Engine {
    Engine::new(parts(fake, sink, store, settings)).unwrap()
}

/// The parts of a test engine on `fake`; a test overrides the ones it watches.
fn parts(
    fake: &Arc<FakeRuntime>,
    sink: &Arc<RecordingSink>,
    store: &Store,
    settings: Settings,
) -> Parts {
    Parts {
        settings,
        store: store.clone(),
        sink: sink.clone(),
        credentials: Arc::new(CredentialsStore::default()),
        runtime: fake.clone(),
        ecr: Arc::new(pull::SdkEcr),
        secrets: Arc::new(secrets::SdkSecrets),
        objects: Arc::new(envfiles::S3Objects::default()),
        hooks: Hooks::default(),
    }
}

/// Delivers through `TaskControl` while one engine pass runs to accept it.
async fn deliver(e: &Engine, t: serde_json::Value) -> Result<(), String> {
    let (r, s) = tokio::join!(e.deliver(t), e.settle(1));
    s.unwrap();
    r.map_err(|e| e.to_string())
}

/// Stops through `TaskControl` while one engine pass runs to accept it.
async fn stop(e: &Engine, arn: &str) -> Result<(), String> {
    let (r, s) = tokio::join!(e.stop(arn), e.settle(1));
    s.unwrap();
    r
}

fn rig() -> Rig {
    rig_with(
        Arc::new(FakeRuntime::with_images(&[])),
        settings(Duration::from_secs(3 * 3600)),
    )
}

fn task(arn: &str, containers: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "arn": arn, "family": "fam", "version": "1", "desiredStatus": "RUNNING",
        "containers": containers,
        "executionRoleCredentials": {"credentialsId": "c", "secretAccessKey": "s3cr3t"}
    })
}

fn c(name: &str, essential: bool) -> serde_json::Value {
    serde_json::json!({"name": name, "image": IMG, "essential": essential, "memory": 64})
}

/// The task-level transitions reported (a change that only carries container news repeats the
/// task's current status; that is not a transition).
fn statuses(changes: &[TaskChange], arn: &str) -> Vec<ReportStatus> {
    let mut out: Vec<ReportStatus> = changes
        .iter()
        .filter(|c| c.task_arn == arn)
        .map(|c| c.status)
        .filter(|s| *s != ReportStatus::Pending)
        .collect();
    out.dedup();
    out
}

fn container_statuses(changes: &[TaskChange], arn: &str, name: &str) -> Vec<ReportStatus> {
    changes
        .iter()
        .filter(|c| c.task_arn == arn)
        .flat_map(|c| c.containers.iter())
        .filter(|c| c.container_name == name)
        .map(|c| c.status)
        .collect()
}

fn fake_name(r: &Rig, arn: &str, container: &str) -> String {
    r.fake
        .containers()
        .values()
        .find(|c| {
            c.observed.task_arn.as_deref() == Some(arn)
                && c.observed.container_name.as_deref() == Some(container)
        })
        .map(|c| c.observed.name.clone())
        .unwrap_or_else(|| panic!("no container {container} of {arn}"))
}

#[tokio::test]
async fn multi_container_task_with_depends_on_runs_and_reports_once() {
    let r = rig();
    let mut web = c("web", true);
    web["dependsOn"] = serde_json::json!([{"containerName": "init", "condition": "SUCCESS"}]);
    deliver(
        &r.engine,
        task("t1", serde_json::json!([c("init", false), web])),
    )
    .await
    .unwrap();
    r.engine.settle(10).await.unwrap();
    // init runs first; web waits for it to succeed.
    let names: Vec<String> = r.fake.creates();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("-init-"));
    r.fake.exit(&fake_name(&r, "t1", "init"), 0);
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(statuses(&changes, "t1"), vec![ReportStatus::Running]);
    assert_eq!(
        container_statuses(&changes, "t1", "init"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
    assert_eq!(
        container_statuses(&changes, "t1", "web"),
        vec![ReportStatus::Running]
    );
    // `default` pull behaviour pulls per container: init first, web once init succeeded.
    assert_eq!(r.fake.pulls().len(), 2);
    // Credentials were stripped before storing.
    let stored: Vec<(String, serde_json::Value)> = r.store.list(store::TASKS).unwrap();
    assert!(!serde_json::to_string(&stored).unwrap().contains("s3cr3t"));
    // The introspection view shows it.
    let view = r.engine.view();
    let t = &view.tasks()[0];
    assert_eq!(t.known_status, "RUNNING");
    assert_eq!(t.containers.len(), 2);
    assert_eq!(r.engine.desired_running(), vec!["t1".to_string()]);
}

/// `startTimeout` of a dependency (spec §6.2): its dependents wait for the condition only that
/// long after it started, then give up with a DependencyConditionError; the essential dependent
/// stopping stops the task.
#[tokio::test]
async fn a_dependency_that_misses_its_start_timeout_stops_its_dependents() {
    let r = rig();
    let mut db = c("db", false);
    db["startTimeout"] = serde_json::json!(1);
    db["healthCheckType"] = serde_json::json!("docker");
    let mut web = c("web", true);
    web["dependsOn"] = serde_json::json!([{"containerName": "db", "condition": "HEALTHY"}]);
    deliver(&r.engine, task("t", serde_json::json!([db, web])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    // db runs but never becomes healthy; within the timeout web just waits.
    assert_eq!(r.fake.creates().len(), 1);
    assert_eq!(container_statuses(&r.sink.changes(), "t", "web"), vec![]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(r.fake.creates().len(), 1, "web was never created");
    // Never RUNNING: the essential web stopped before db's running made every container
    // "at least running" (spec §7.2, issue 24 item 4).
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Stopped]);
    let web = changes
        .iter()
        .flat_map(|c| c.containers.iter())
        .find(|c| c.container_name == "web" && c.status == ReportStatus::Stopped)
        .expect("web reported STOPPED");
    let reason = web.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("DependencyConditionError") && reason.contains("startTimeout of 1 s"),
        "{reason}"
    );
}

/// Stopping a task stops dependents before what they depend on (reverse dependsOn order).
#[tokio::test]
async fn a_stopping_task_stops_dependents_first() {
    let r = rig();
    let mut web = c("web", true);
    web["dependsOn"] = serde_json::json!([{"containerName": "db", "condition": "START"}]);
    // db first in the task, so task order alone would stop it first.
    deliver(
        &r.engine,
        task("t", serde_json::json!([c("db", true), web])),
    )
    .await
    .unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(
        statuses(&r.sink.changes(), "t"),
        vec![ReportStatus::Running]
    );
    stop(&r.engine, "t").await.unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(
        statuses(&r.sink.changes(), "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
    let finished = |name: &str| {
        r.fake.containers()[&fake_name(&r, "t", name)]
            .observed
            .finished_at
            .clone()
            .expect("stopped")
    };
    assert!(
        finished("web") < finished("db"),
        "web {} db {}",
        finished("web"),
        finished("db")
    );
}

#[tokio::test]
async fn essential_exit_stops_the_task_non_essential_does_not() {
    let r = rig();
    deliver(
        &r.engine,
        task("t", serde_json::json!([c("main", true), c("side", false)])),
    )
    .await
    .unwrap();
    r.engine.settle(10).await.unwrap();
    r.fake.exit(&fake_name(&r, "t", "side"), 3);
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Running]);
    let side_stop = changes
        .iter()
        .flat_map(|c| &c.containers)
        .find(|c| c.container_name == "side" && c.status == ReportStatus::Stopped)
        .unwrap();
    assert_eq!(side_stop.exit_code, Some(3));
    assert_eq!(
        r.fake.containers()[&fake_name(&r, "t", "main")]
            .observed
            .state,
        Some(State::Running)
    );

    r.fake.exit(&fake_name(&r, "t", "main"), 7);
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(
        statuses(&changes, "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
    let last = changes.last().unwrap();
    assert_eq!(last.reason.as_deref(), Some(reconcile::ESSENTIAL_EXITED));
    assert!(last.execution_stopped_at.is_some());
    assert_eq!(last.containers[0].exit_code, Some(7));
}

#[tokio::test]
async fn essential_exit_stops_running_siblings() {
    let r = rig();
    deliver(
        &r.engine,
        task("t", serde_json::json!([c("a", true), c("b", true)])),
    )
    .await
    .unwrap();
    r.engine.settle(10).await.unwrap();
    r.fake.exit(&fake_name(&r, "t", "a"), 1);
    r.engine.settle(10).await.unwrap();
    let b = &r.fake.containers()[&fake_name(&r, "t", "b")];
    assert_eq!(
        b.observed.state,
        Some(State::Exited),
        "sibling stopped by the engine"
    );
    assert_eq!(
        statuses(&r.sink.changes(), "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
}

#[tokio::test]
async fn create_that_times_out_after_creating_is_adopted_not_duplicated() {
    let r = rig();
    r.fake.fail(
        FakeOp::CreateThenTimeout,
        1,
        RuntimeError::Timeout {
            op: "create container",
            secs: 240,
        },
    );
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(3).await.unwrap();
    r.engine.advance_clock(5.0);
    r.engine.settle(10).await.unwrap();
    assert_eq!(r.fake.creates().len(), 1);
    assert_eq!(
        statuses(&r.sink.changes(), "t"),
        vec![ReportStatus::Running]
    );
}

#[tokio::test]
async fn restart_reports_what_changed_while_away() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let r = rig_with(fake.clone(), settings(Duration::from_secs(3600)));
    deliver(
        &r.engine,
        task("t", serde_json::json!([c("a", true), c("b", false)])),
    )
    .await
    .unwrap();
    r.engine.settle(10).await.unwrap();
    let before = r.sink.changes().len();
    // While the agent is away: Docker restarts (everything exits 137) and one container is
    // removed by hand.
    fake.restart_daemon();
    fake.vanish(&fake_name(&r, "t", "b"));
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&fake, &sink2, &r.store, settings(Duration::from_secs(3600)));
    engine2.settle(10).await.unwrap();
    let changes = sink2.changes();
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Stopped]);
    let last = changes.last().unwrap();
    let a = last
        .containers
        .iter()
        .find(|c| c.container_name == "a")
        .unwrap();
    assert_eq!(a.exit_code, Some(137));
    let b = last
        .containers
        .iter()
        .find(|c| c.container_name == "b")
        .unwrap();
    assert!(
        b.reason
            .as_deref()
            .unwrap()
            .starts_with("ContainerVanishedError"),
        "{b:?}"
    );
    assert!(before > 0);
    // Again: nothing new to report, nothing created.
    engine2.settle(10).await.unwrap();
    assert_eq!(sink2.changes().len(), changes.len());
    assert_eq!(fake.creates().len(), 2);
}

/// The data root comes from Docker once it answers (the engine started while it was down), and
/// is asked again after every outage.
#[tokio::test]
async fn data_root_is_learned_when_docker_answers_and_after_each_outage() {
    let fake = Arc::new(FakeRuntime::with_images(&[IMG]));
    fake.set_down(true);
    let mut s = settings(Duration::from_secs(3600));
    s.resync = Duration::from_millis(20);
    let r = rig_with(fake.clone(), s);
    let cancel = CancellationToken::new();
    let (e, c2) = (r.engine.clone(), cancel.clone());
    let looped = tokio::spawn(async move { e.run(c2).await });
    let mut main = c("main", true);
    main["mountPoints"] = serde_json::json!([{"sourceVolume": "v", "containerPath": "/v"}]);
    let mut t = task("t", serde_json::json!([main]));
    t["volumes"] = serde_json::json!([{"name": "v", "host": {}}]);
    r.engine.deliver(t).await.unwrap();
    let source = || {
        r.engine
            .view()
            .tasks()
            .first()
            .and_then(|t| t.containers.first().cloned())
            .and_then(|c| c.volumes.first().cloned())
            .map(|v| v.source)
            .unwrap_or_default()
    };
    async fn until(what: &str, f: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let lists = fake.lists();
    until("the engine tried Docker while down", || {
        fake.lists() > lists
    })
    .await;
    assert_eq!(source(), "", "no data root while Docker never answered");

    fake.set_data_root(Some("/first"));
    fake.set_down(false);
    until("data root learned", || {
        source().starts_with("/first/volumes/")
    })
    .await;

    fake.set_down(true);
    let lists = fake.lists();
    until("the engine saw the outage", || fake.lists() >= lists + 2).await;
    fake.set_data_root(Some("/second"));
    fake.set_down(false);
    until("data root learned again after the outage", || {
        source().starts_with("/second/volumes/")
    })
    .await;
    cancel.cancel();
    looped.await.unwrap().unwrap();
}

#[tokio::test]
async fn tasks_wait_pending_for_resources_then_run() {
    let mut s = settings(Duration::from_secs(3600));
    s.capacity.memory_mib = 100;
    let r = rig_with(Arc::new(FakeRuntime::with_images(&[])), s);
    deliver(&r.engine, task("first", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    deliver(&r.engine, task("second", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(
        statuses(&r.sink.changes(), "first"),
        vec![ReportStatus::Running]
    );
    assert!(
        statuses(&r.sink.changes(), "second").is_empty(),
        "waits, not refused"
    );
    assert_eq!(r.engine.view().tasks()[1].known_status, "PENDING");
    stop(&r.engine, "first").await.unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(
        statuses(&r.sink.changes(), "second"),
        vec![ReportStatus::Running]
    );
}

#[tokio::test]
async fn cleanup_waits_for_the_wait_and_removes_containers() {
    let r = rig_with(
        Arc::new(FakeRuntime::with_images(&[])),
        settings(Duration::from_secs(600)),
    );
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    stop(&r.engine, "t").await.unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(r.fake.containers().len(), 1, "kept during the wait");
    r.engine.advance_clock(601.0);
    r.engine.settle(10).await.unwrap();
    assert!(r.fake.containers().is_empty());
    assert!(r.engine.view().tasks().is_empty());
    // A late re-delivery does not resurrect it.
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    assert_eq!(r.fake.creates().len(), 1);
}

#[tokio::test]
async fn pull_failure_stops_with_a_clear_reason() {
    let r = rig();
    r.fake.fail(
        FakeOp::Pull,
        10,
        RuntimeError::Auth("unauthorized: authentication required".into()),
    );
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Stopped]);
    let reason = changes.last().unwrap().containers[0]
        .reason
        .clone()
        .unwrap();
    assert!(reason.starts_with("CannotPullContainerError: "), "{reason}");
    assert!(reason.contains("unauthorized"), "{reason}");
}

#[tokio::test]
async fn privileged_is_refused_when_disabled() {
    let mut s = settings(Duration::from_secs(3600));
    s.disable_privileged = true;
    let r = rig_with(Arc::new(FakeRuntime::with_images(&[])), s);
    let mut p = c("p", true);
    p["privileged"] = serde_json::json!(true);
    deliver(&r.engine, task("t", serde_json::json!([p])))
        .await
        .unwrap();
    r.engine.settle(10).await.unwrap();
    let last = r.sink.changes().last().cloned().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert!(
        last.containers[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("ECS_DISABLE_PRIVILEGED")
    );
    assert!(r.fake.creates().is_empty());
}

#[tokio::test]
async fn task_control_contract() {
    let r = rig();
    assert!(
        deliver(&r.engine, serde_json::json!({"containers": []}))
            .await
            .is_err()
    );
    assert!(stop(&r.engine, "nope").await.is_err());
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(5).await.unwrap();
    let mut stopped = task("t", serde_json::json!([c("a", true)]));
    stopped["desiredStatus"] = serde_json::json!("STOPPED");
    deliver(&r.engine, stopped).await.unwrap();
    // RUNNING again after STOPPED: ignored (forward only).
    deliver(&r.engine, task("t", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    r.engine.settle(5).await.unwrap();
    assert_eq!(
        statuses(&r.sink.changes(), "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
    assert!(r.engine.desired_running().is_empty());
}

/// A task of ten containers that all mount one task-scoped and one shared volume, and its
/// engine on a counting fake.
fn volume_task(arn: &str) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            let mut x = c(&format!("c{i}"), i == 0);
            x["mountPoints"] = serde_json::json!([
                {"sourceVolume": "scratch", "containerPath": "/scratch"},
                {"sourceVolume": "data", "containerPath": "/data", "readOnly": i > 0},
            ]);
            x
        })
        .collect();
    let mut t = task(arn, serde_json::json!(containers));
    t["volumes"] = serde_json::json!([
        {"name": "scratch", "type": "docker", "dockerVolumeConfiguration": {"scope": "task", "driver": "local"}},
        {"name": "data", "type": "docker", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true, "driver": "local"}},
    ]);
    t
}

fn counting_engine(
    fake: &Arc<FakeRuntime>,
    sink: &Arc<RecordingSink>,
    store: &Store,
    cleanup_wait: Duration,
) -> (Engine, Arc<counting::DockerCalls>) {
    let runtime = counting::Counting::new(fake.clone());
    let calls = runtime.calls();
    let mut p = parts(fake, sink, store, settings(cleanup_wait));
    p.runtime = Arc::new(runtime);
    (Engine::new(p).unwrap(), calls)
}

#[tokio::test]
async fn task_volumes_are_prepared_once_per_task_not_per_container() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let sink = Arc::new(RecordingSink::default());
    let (engine, calls) = counting_engine(&fake, &sink, &store, Duration::from_secs(600));
    // The real loop (settle's passes end without committing the last outcomes).
    let cancel = CancellationToken::new();
    let looping = {
        let (e, c) = (engine.clone(), cancel.clone());
        tokio::spawn(async move { e.run(c).await })
    };
    engine.deliver(volume_task("t")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while statuses(&sink.changes(), "t") != vec![ReportStatus::Running] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            sink.changes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    looping.await.unwrap().unwrap();
    assert_eq!(fake.creates().len(), 10);
    // One VolumeCreate for the task volume; one inspect and one create for the shared one.
    assert_eq!(calls.get("create_volume"), 2, "{:?}", calls.snapshot());
    assert_eq!(calls.get("inspect_volume"), 1, "{:?}", calls.snapshot());
    let vols = fake.volumes();
    assert!(vols.contains_key("data"));
    let scratch = vols
        .keys()
        .find(|n| n.starts_with("ecs-fam-1-scratch-"))
        .cloned()
        .expect("task volume created");

    // A restarted engine on the same store does not prepare them again.
    let sink2 = Arc::new(RecordingSink::default());
    let (engine2, calls2) = counting_engine(&fake, &sink2, &store, Duration::from_secs(600));
    engine2.settle(10).await.unwrap();
    assert_eq!(
        calls2.get("create_volume") + calls2.get("inspect_volume"),
        0
    );

    // Cleanup removes the task volume and keeps the shared one.
    stop(&engine2, "t").await.unwrap();
    engine2.settle(10).await.unwrap();
    engine2.advance_clock(601.0);
    engine2.settle(10).await.unwrap();
    assert!(fake.containers().is_empty());
    let vols = fake.volumes();
    assert!(!vols.contains_key(&scratch), "{vols:?}");
    assert!(vols.contains_key("data"), "{vols:?}");
}

#[tokio::test]
async fn a_missing_shared_volume_stops_the_task_before_anything_is_created() {
    let r = rig();
    let mut t = volume_task("t");
    t["volumes"][1]["dockerVolumeConfiguration"]["autoprovision"] = serde_json::json!(false);
    // Named so that it sorts after the task volume.
    t["volumes"][1]["name"] = serde_json::json!("zdata");
    for c in t["containers"].as_array_mut().unwrap() {
        c["mountPoints"][1]["sourceVolume"] = serde_json::json!("zdata");
    }
    deliver(&r.engine, t).await.unwrap();
    r.engine.settle(10).await.unwrap();
    let changes = r.sink.changes();
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Stopped]);
    let last = changes.last().unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some(
            "initialize volume: volume detection failed, volume 'zdata' does not exist and autoprovision is set to false"
        )
    );
    assert!(r.fake.creates().is_empty());
    // Shared volumes are checked before any is created: no volume was made either.
    assert!(r.fake.volumes().is_empty(), "{:?}", r.fake.volumes());
}

/// systemd for task cgroups: counts the slices started; every call fails with `fail` when set.
#[derive(Default)]
struct CountingSlices {
    started: std::sync::Mutex<Vec<String>>,
    fail: Option<String>,
}

#[async_trait]
impl task_cgroup::Slices for CountingSlices {
    async fn start_slice(
        &self,
        slice: &str,
        _properties: &[task_cgroup::SliceProperty],
    ) -> Result<(), String> {
        self.started.lock().unwrap().push(slice.to_owned());
        self.fail.clone().map_or(Ok(()), Err)
    }
    async fn stop_slice(&self, _slice: &str) -> Result<(), String> {
        self.fail.clone().map_or(Ok(()), Err)
    }
}

/// Settings with task cgroups on, as systemd slices made by `slices`.
fn cgroup_settings(slices: &Arc<CountingSlices>) -> Settings {
    let mut s = settings(Duration::from_secs(3600));
    s.task_cgroups = Some(task_cgroup::TaskCgroups {
        layout: task_cgroup::Layout::Systemd {
            v2: true,
            slices: slices.clone(),
        },
        cpu_period: Duration::from_millis(100),
        pids_limit: None,
    });
    s
}

const CG_ARN: &str = "arn:aws:ecs:us-east-1:1:task/c/0123abcd";
const CG_SLICE: &str = "ecstasks-0123abcd.slice";

/// Delivers `t` while the engine settles (one `settle`, so that every outcome is committed).
async fn deliver_and_settle(e: &Engine, t: serde_json::Value) {
    let (r, s) = tokio::join!(e.deliver(t), e.settle(20));
    s.unwrap();
    r.unwrap();
}

/// A task of three containers with a task memory limit.
fn cgroup_task() -> serde_json::Value {
    let mut t = task(
        CG_ARN,
        serde_json::json!([c("a", true), c("b", true), c("c", false)]),
    );
    t["memory"] = serde_json::json!(256);
    t
}

#[tokio::test]
async fn the_task_cgroup_is_made_once_per_task_not_per_container() {
    let slices = Arc::new(CountingSlices::default());
    let r = rig_with(
        Arc::new(FakeRuntime::with_images(&[])),
        cgroup_settings(&slices),
    );
    deliver_and_settle(&r.engine, cgroup_task()).await;
    assert_eq!(
        statuses(&r.sink.changes(), CG_ARN),
        vec![ReportStatus::Running]
    );
    assert_eq!(*slices.started.lock().unwrap(), vec![CG_SLICE]);
    let containers = r.fake.containers();
    assert_eq!(containers.len(), 3);
    for (name, c) in &containers {
        assert_eq!(c.cgroup_parent.as_deref(), Some(CG_SLICE), "{name}");
    }

    // A restarted engine on the same store does not make it again.
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&r.fake, &sink2, &r.store, cgroup_settings(&slices));
    engine2.settle(10).await.unwrap();
    assert_eq!(slices.started.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_task_cgroup_that_cannot_be_made_stops_the_task_before_any_create() {
    let slices = Arc::new(CountingSlices {
        fail: Some("org.freedesktop.DBus.Error.AccessDenied: no".into()),
        ..CountingSlices::default()
    });
    let r = rig_with(
        Arc::new(FakeRuntime::with_images(&[])),
        cgroup_settings(&slices),
    );
    deliver_and_settle(&r.engine, cgroup_task()).await;
    // systemd may answer later: asked once for the task, then again after a delay.
    assert_eq!(slices.started.lock().unwrap().len(), 1);
    assert!(statuses(&r.sink.changes(), CG_ARN).is_empty());
    r.engine.advance_clock(1.5);
    r.engine.settle(10).await.unwrap();
    r.engine.advance_clock(2.5);
    r.engine.settle(10).await.unwrap();
    assert_eq!(
        slices.started.lock().unwrap().len(),
        reconcile::MAX_ATTEMPTS as usize
    );
    let changes = r.sink.changes();
    assert_eq!(statuses(&changes, CG_ARN), vec![ReportStatus::Stopped]);
    let why = format!("task cgroup slice {CG_SLICE}: org.freedesktop.DBus.Error.AccessDenied: no");
    let last = changes.last().unwrap();
    assert_eq!(last.reason.as_deref(), Some(why.as_str()));
    for c in &last.containers {
        assert_eq!(
            c.reason.as_deref(),
            Some(why.as_str()),
            "{}",
            c.container_name
        );
    }
    assert!(r.fake.creates().is_empty());
}

#[tokio::test]
async fn a_record_from_before_the_cgroup_flag_gets_its_cgroup_before_its_creates() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    // As an earlier agent left it: resources prepared (its volumes), nothing created, no flag
    // (that agent made the cgroup at each create).
    let mut rec = TaskRecord::new(TaskSpec::from_json(&cgroup_task()).unwrap(), 0, 0.0).unwrap();
    rec.resources.ready = true;
    store
        .transaction(|tx| {
            store::put_task(tx, &rec)?;
            store::put_seq(tx, 1)
        })
        .unwrap();
    let slices = Arc::new(CountingSlices::default());
    let sink = Arc::new(RecordingSink::default());
    let engine = build(&fake, &sink, &store, cgroup_settings(&slices));
    engine.settle(20).await.unwrap();
    assert_eq!(
        statuses(&sink.changes(), CG_ARN),
        vec![ReportStatus::Running]
    );
    assert_eq!(*slices.started.lock().unwrap(), vec![CG_SLICE]);
    for (name, c) in &fake.containers() {
        assert_eq!(c.cgroup_parent.as_deref(), Some(CG_SLICE), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Model-based property test.

#[derive(Clone, Debug)]
enum Op {
    Deliver(usize),
    Stop(usize),
    Exit(usize, usize, i32),
    Vanish(usize, usize),
    Healthy(usize, usize),
    DockerRestart,
    Fail(u8, u32),
    DockerDown(bool),
    Settle(usize),
    Restart,
    Time(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..TEMPLATES).prop_map(Op::Deliver),
        1 => (0..TEMPLATES).prop_map(Op::Stop),
        2 => (0..TEMPLATES, 0..4usize, prop_oneof![Just(0), Just(1), Just(137)]).prop_map(|(t, c, x)| Op::Exit(t, c, x)),
        1 => (0..TEMPLATES, 0..4usize).prop_map(|(t, c)| Op::Vanish(t, c)),
        1 => (0..TEMPLATES, 0..3usize).prop_map(|(t, c)| Op::Healthy(t, c)),
        1 => Just(Op::DockerRestart),
        2 => (0..7u8, 1..4u32).prop_map(|(o, n)| Op::Fail(o, n)),
        1 => any::<bool>().prop_map(Op::DockerDown),
        4 => (1..4usize).prop_map(Op::Settle),
        1 => Just(Op::Restart),
        1 => (0..3u8).prop_map(Op::Time),
    ]
}

/// How many task templates there are.
const TEMPLATES: usize = 5;

/// The names the ops address containers by: the templates' (`d` only in template 2) and the
/// namespace pause (template 4 only).
const NAMES: [&str; 4] = ["a", "b", "d", model::internal::NAMESPACE_PAUSE_NAME];

/// Task templates: shapes with essential and non-essential containers and every condition, and
/// one with task-scoped PID and IPC namespaces (an internal pause container).
fn template(i: usize) -> serde_json::Value {
    let arn = format!("arn:t{i}");
    match i {
        4 => {
            let mut t = task(&arn, serde_json::json!([c("a", true), c("b", false)]));
            t["pidMode"] = serde_json::json!("task");
            t["ipcMode"] = serde_json::json!("task");
            t
        }
        0 => task(&arn, serde_json::json!([c("a", true)])),
        1 => task(&arn, serde_json::json!([c("a", true), c("b", false)])),
        2 => {
            let mut b = c("b", true);
            b["dependsOn"] = serde_json::json!([{"containerName": "a", "condition": "COMPLETE"}]);
            let mut d = c("d", false);
            d["dependsOn"] = serde_json::json!([{"containerName": "b", "condition": "START"}]);
            task(&arn, serde_json::json!([c("a", false), b, d]))
        }
        _ => {
            let mut a = c("a", true);
            a["healthCheckType"] = serde_json::json!("docker");
            let mut b = c("b", true);
            b["dependsOn"] = serde_json::json!([{"containerName": "a", "condition": "HEALTHY"}]);
            task(&arn, serde_json::json!([a, b]))
        }
    }
}

fn fail_op(o: u8) -> (FakeOp, RuntimeError) {
    let unavailable = RuntimeError::Unavailable("injected".into());
    match o {
        0 => (FakeOp::List, unavailable),
        1 => (FakeOp::Pull, unavailable),
        2 => (FakeOp::Create, unavailable),
        3 => (
            FakeOp::CreateThenTimeout,
            RuntimeError::Timeout {
                op: "create",
                secs: 1,
            },
        ),
        4 => (FakeOp::Start, unavailable),
        5 => (FakeOp::Stop, unavailable),
        _ => (FakeOp::Remove, unavailable),
    }
}

struct Model {
    fake: Arc<FakeRuntime>,
    sink: Arc<RecordingSink>,
    store: Store,
    settings: Settings,
    engine: Engine,
    /// Highest known status seen per task and container (never allowed to go down).
    high_water: HashMap<(String, String), ContainerStatus>,
    task_high: HashMap<String, TaskStatus>,
    /// Task containers removed behind the engine's back.
    vanished: HashSet<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Model {
    fn check(&mut self) -> Result<(), TestCaseError> {
        // Never two containers for one task container at once; and never a second create
        // unless the first container was removed behind the engine's back before its id was
        // committed (each settle boundary is a crash: uncommitted outcomes are lost).
        let mut now_seen = HashSet::new();
        for fc in self.fake.containers().values() {
            let l = (
                fc.observed.task_arn.clone(),
                fc.observed.container_name.clone(),
            );
            prop_assert!(now_seen.insert(l.clone()), "two containers for {l:?}");
        }
        let mut seen = HashSet::new();
        for l in self.fake.created_labels() {
            prop_assert!(
                seen.insert(l.clone()) || self.vanished.contains(&l),
                "container created twice: {l:?}"
            );
        }
        // No container started twice (the engine never restarts anything).
        for (n, fc) in self.fake.containers() {
            prop_assert!(fc.starts <= 1, "{n} started {} times", fc.starts);
        }
        // Internal containers: a user container of their task is created only after the pause
        // started, and the engine stops the pause only when none of the task's user containers
        // runs.
        let pause = model::internal::NAMESPACE_PAUSE_NAME;
        let mut running: HashSet<(String, String)> = HashSet::new();
        let mut pause_started: HashSet<String> = HashSet::new();
        for e in self.fake.history() {
            let key = (e.task_arn.clone(), e.container.clone());
            match e.what {
                "create" if e.task_arn == "arn:t4" && e.container != pause => prop_assert!(
                    pause_started.contains(&e.task_arn),
                    "{} created before the pause of {} started",
                    e.container,
                    e.task_arn
                ),
                "start" => {
                    if e.container == pause {
                        pause_started.insert(e.task_arn.clone());
                    }
                    running.insert(key);
                }
                "stop" if e.container == pause => {
                    let users: Vec<_> = running
                        .iter()
                        .filter(|(t, c)| *t == e.task_arn && c != pause)
                        .collect();
                    prop_assert!(
                        users.is_empty(),
                        "the pause of {} stopped while {users:?} ran",
                        e.task_arn
                    );
                    running.remove(&key);
                }
                _ => {
                    running.remove(&key);
                }
            }
        }
        prop_assert!(
            !self
                .fake
                .pulls()
                .iter()
                .any(|i| i == model::internal::DEFAULT_PAUSE_IMAGE),
            "the pause image was pulled"
        );
        // ECS never hears of the pause.
        for ch in self.sink.changes() {
            prop_assert!(
                ch.containers.iter().all(|c| c.container_name != pause),
                "the pause was reported: {ch:?}"
            );
        }
        // Reports: per task non-decreasing, each non-pending status once; per container
        // strictly increasing.
        let changes = self.sink.changes();
        let mut per_task: HashMap<&str, Vec<ReportStatus>> = HashMap::new();
        let mut per_container: HashMap<(&str, &str), Vec<ReportStatus>> = HashMap::new();
        for ch in &changes {
            per_task.entry(&ch.task_arn).or_default().push(ch.status);
            for cc in &ch.containers {
                per_container
                    .entry((&ch.task_arn, &cc.container_name))
                    .or_default()
                    .push(cc.status);
            }
        }
        for (t, s) in &per_task {
            prop_assert!(
                s.windows(2).all(|w| w[0] <= w[1]),
                "task {t} went backwards: {s:?}"
            );
        }
        // Every change brings news: a task transition or at least one container change.
        let mut last: HashMap<&str, ReportStatus> = HashMap::new();
        for ch in &changes {
            let prev = last.insert(&ch.task_arn, ch.status);
            prop_assert!(
                prev.is_none_or(|p| p < ch.status) || !ch.containers.is_empty(),
                "empty repeated change {ch:?}"
            );
        }
        for (k, s) in &per_container {
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]), "container {k:?}: {s:?}");
        }
        // Stopped tasks have nothing running; stored statuses never move backwards.
        let stopped: HashSet<&str> = changes
            .iter()
            .filter(|c| c.status == ReportStatus::Stopped)
            .map(|c| c.task_arn.as_str())
            .collect();
        for fc in self.fake.containers().values() {
            if let Some(t) = fc.observed.task_arn.as_deref() {
                prop_assert!(
                    !(stopped.contains(t) && fc.observed.state == Some(State::Running)),
                    "a container of stopped task {t} runs"
                );
            }
        }
        for (arn, rec) in self.store.list::<TaskRecord>(store::TASKS).unwrap() {
            let th = self.task_high.entry(arn.clone()).or_default();
            prop_assert!(rec.known >= *th, "task {arn} known went back");
            *th = rec.known;
            for c in &rec.containers {
                let h = self
                    .high_water
                    .entry((arn.clone(), c.name.clone()))
                    .or_default();
                prop_assert!(c.known >= *h, "container {arn}/{} went back", c.name);
                *h = c.known;
            }
        }
        Ok(())
    }
}

fn run_ops(ops: Vec<Op>, cleanup_zero: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tmpdir();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        // The pause image is the operator's: there from the start, never pulled.
        let fake = Arc::new(FakeRuntime::with_images(&[
            model::internal::DEFAULT_PAUSE_IMAGE,
        ]));
        let sink = Arc::new(RecordingSink::default());
        let s = settings(if cleanup_zero {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        });
        let engine = build(&fake, &sink, &store, s.clone());
        let mut m = Model {
            fake,
            sink,
            store,
            settings: s,
            engine,
            high_water: HashMap::new(),
            task_high: HashMap::new(),
            vanished: HashSet::new(),
            _dir: dir,
        };
        let name_of = |m: &Model, t: usize, c: usize| -> Option<String> {
            let arn = format!("arn:t{t}");
            let cname = NAMES[c];
            m.fake
                .containers()
                .values()
                .find(|fc| {
                    fc.observed.task_arn.as_deref() == Some(arn.as_str())
                        && fc.observed.container_name.as_deref() == Some(cname)
                })
                .map(|fc| fc.observed.name.clone())
        };
        for op in ops {
            match op {
                Op::Deliver(t) => {
                    let _ = deliver(&m.engine, template(t)).await;
                }
                Op::Stop(t) => {
                    let _ = stop(&m.engine, &format!("arn:t{t}")).await;
                }
                Op::Exit(t, c, code) => {
                    if let Some(n) = name_of(&m, t, c) {
                        m.fake.exit(&n, code);
                    }
                }
                Op::Vanish(t, c) => {
                    if let Some(n) = name_of(&m, t, c) {
                        m.fake.vanish(&n);
                        m.vanished
                            .insert((format!("arn:t{t}"), NAMES[c].to_string()));
                    }
                }
                Op::Healthy(t, c) => {
                    if let Some(n) = name_of(&m, t, c) {
                        m.fake.set_health(&n, model::HealthStatus::Healthy);
                    }
                }
                Op::DockerRestart => m.fake.restart_daemon(),
                Op::Fail(o, n) => {
                    let (op, e) = fail_op(o);
                    m.fake.fail(op, n, e);
                }
                Op::DockerDown(d) => m.fake.set_down(d),
                Op::Settle(n) => m.engine.settle(n).await.unwrap(),
                Op::Restart => {
                    // A new process on the same store (in-memory state lost).
                    m.engine = build(&m.fake, &m.sink, &m.store, m.settings.clone());
                }
                Op::Time(s) => m.engine.advance_clock([1.0, 10.0, 100.0][s as usize]),
            }
            m.check()?;
        }
        // Quiesce: no more faults, dependencies made healthy; it must converge.
        m.fake.set_down(false);
        for o in 0..7 {
            let (op, e) = fail_op(o);
            m.fake.fail(op, 0, e);
        }
        for _ in 0..6 {
            for (n, fc) in m.fake.containers() {
                if fc.observed.state == Some(State::Running) {
                    m.fake.set_health(&n, model::HealthStatus::Healthy);
                    // Template 2's first container is a job the others wait to COMPLETE.
                    if fc.observed.task_arn.as_deref() == Some("arn:t2")
                        && fc.observed.container_name.as_deref() == Some("a")
                    {
                        m.fake.exit(&n, 0);
                    }
                }
            }
            m.engine.advance_clock(60.0);
            m.engine.settle(20).await.unwrap();
            m.check()?;
        }
        let recs = m.store.list::<TaskRecord>(store::TASKS).unwrap();
        for (arn, rec) in &recs {
            if rec.desired == TaskStatus::Stopped {
                prop_assert_eq!(rec.known, TaskStatus::Stopped, "{} did not stop", arn);
            } else {
                prop_assert_eq!(
                    rec.known,
                    TaskStatus::Running,
                    "{} did not converge: {:?}",
                    arn,
                    rec
                );
            }
            for c in &rec.containers {
                let fc = m.fake.containers().get(&c.docker_name).cloned();
                match c.known {
                    ContainerStatus::Running => prop_assert_eq!(
                        fc.and_then(|f| f.observed.state),
                        Some(State::Running),
                        "{}/{} known RUNNING but not running",
                        arn,
                        c.name
                    ),
                    ContainerStatus::Stopped => prop_assert!(
                        fc.is_none_or(|f| f.observed.state != Some(State::Running)),
                        "{}/{} known STOPPED but running",
                        arn,
                        c.name
                    ),
                    other => prop_assert!(false, "{}/{} stuck in {:?}", arn, c.name, other),
                }
            }
        }
        // Every stopped task was reported STOPPED exactly once.
        for (arn, rec) in &recs {
            if rec.known == TaskStatus::Stopped {
                let n = m
                    .sink
                    .changes()
                    .iter()
                    .filter(|c| &c.task_arn == arn && c.status == ReportStatus::Stopped)
                    .count();
                prop_assert_eq!(n, 1, "{} STOPPED reported {} times", arn, n);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn reconciler_converges_without_duplicates_or_regressions(
        ops in proptest::collection::vec(op(), 1..40),
        cleanup_zero in any::<bool>(),
    ) {
        run_ops(ops, cleanup_zero)?;
    }
}

/// The running loop beats its supervisor heartbeat while idle (so a wedged loop, and only
/// that, withholds systemd's watchdog ping).
#[tokio::test(start_paused = true)]
async fn the_loop_beats_its_heartbeat_while_idle() {
    let r = rig();
    let (sup, _terminal) = crate::supervisor::Supervisor::new(CancellationToken::new());
    let beat = sup.heartbeat("engine", BEAT * 2);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (e, c) = (r.engine.clone(), cancel.clone());
        async move { e.run_beating(c, Some(beat)).await }
    });
    for _ in 0..8 {
        tokio::time::sleep(BEAT).await;
        assert!(sup.all_alive(), "stale: {:?}", sup.stale());
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    // Nobody beats any more: the heartbeat goes stale.
    tokio::time::sleep(BEAT * 3).await;
    assert_eq!(sup.stale(), vec!["engine"]);
}

/// Docker's listing runs beside the loop: while an inspection hangs (Docker busy starting that
/// container), deliveries are still accepted and their containers created.
#[tokio::test]
async fn a_slow_docker_listing_does_not_hold_up_deliveries() {
    let r = rig_with(
        Arc::new(FakeRuntime::with_images(&[IMG])),
        settings(Duration::from_secs(3 * 3600)),
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (e, c) = (r.engine.clone(), cancel.clone());
        async move { e.run(c).await }
    });
    let within = Duration::from_secs(10);
    let running = |arn: &str| {
        let want = arn.to_owned();
        let view = r.engine.view();
        async move {
            loop {
                let snap = view.snapshot();
                if snap
                    .census
                    .iter()
                    .any(|t| t.arn == want && t.last_status == "RUNNING")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    r.engine
        .deliver(task("arn:a", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    tokio::time::timeout(within, running("arn:a"))
        .await
        .expect("task a runs");

    // Docker now takes forever to answer inspections; an event makes the engine list.
    r.fake.hold_inspections(true);
    let lists = r.fake.lists();
    r.fake.exit(&fake_name(&r, "arn:a", "a"), 0);
    tokio::time::timeout(within, async {
        while r.fake.lists() == lists {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the event makes the engine list Docker");

    tokio::time::timeout(
        within,
        r.engine
            .deliver(task("arn:b", serde_json::json!([c("b", true)]))),
    )
    .await
    .expect("a delivery is accepted while the listing hangs")
    .unwrap();
    tokio::time::timeout(within, async {
        while r.fake.creates().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the delivered task's container is created while the listing hangs");

    // Released, both inspections answer: a is seen exited, b running.
    r.fake.hold_inspections(false);
    tokio::time::timeout(within, running("arn:b"))
        .await
        .expect("task b runs");
    tokio::time::timeout(within, async {
        while !statuses(&r.sink.changes(), "arn:a").contains(&ReportStatus::Stopped) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("task a's exit is reported");
    cancel.cancel();
    run.await.unwrap().unwrap();
}

/// A listing leaves a container with an action in flight to that action (no inspection queued
/// behind a start in Docker), and inspects it once it is no longer busy.
#[tokio::test]
async fn a_listing_skips_busy_containers_until_they_are_not() {
    let fake = Arc::new(FakeRuntime::with_images(&[IMG]));
    let body = |arn: &str| bollard::models::ContainerCreateBody {
        image: Some(IMG.into()),
        labels: Some(HashMap::from([(LABEL_TASK_ARN.to_owned(), arn.to_owned())])),
        ..Default::default()
    };
    let busy_id = fake.create("busy", body("arn:a")).await.unwrap();
    let idle_id = fake.create("idle", body("arn:b")).await.unwrap();
    // Another agent's container with the ECS labels: never inspected, never observed.
    fake.create("foreign", body("arn:other")).await.unwrap();
    let rt: Arc<dyn ContainerRuntime> = fake.clone();
    let ours = || HashSet::from(["busy".to_owned(), "idle".to_owned()]);

    let first = list_docker(
        rt.clone(),
        InspectCache::new(),
        ours(),
        HashSet::from(["busy".to_owned()]),
        1,
        false,
    )
    .await;
    let seen = first.result.as_ref().unwrap();
    assert!(seen.contains_key("idle") && !seen.contains_key("busy"));
    assert!(!seen.contains_key("foreign"));
    assert_eq!(fake.inspections(), vec![idle_id.clone()]);

    let second = list_docker(rt, first.cache, ours(), HashSet::new(), 2, false).await;
    let seen = second.result.as_ref().unwrap();
    assert!(seen.contains_key("idle") && seen.contains_key("busy"));
    assert!(!seen.contains_key("foreign"));
    assert_eq!(
        fake.inspections(),
        vec![idle_id, busy_id],
        "the idle container's unchanged state is served from the cache"
    );
}

/// The start's own inspection is cached: listings after it do not inspect the container again
/// while its state is unchanged.
#[tokio::test]
async fn a_started_container_is_inspected_once() {
    let r = rig();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (e, c) = (r.engine.clone(), cancel.clone());
        async move { e.run(c).await }
    });
    r.engine
        .deliver(task("arn:a", serde_json::json!([c("a", true)])))
        .await
        .unwrap();
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, async {
        while !statuses(&r.sink.changes(), "arn:a").contains(&ReportStatus::Running) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("task a runs");

    // An event about the container with no state change makes the engine list again.
    let name = fake_name(&r, "arn:a", "a");
    let lists = r.fake.lists();
    r.fake.set_health(&name, model::HealthStatus::Unknown);
    tokio::time::timeout(within, async {
        while r.fake.lists() < lists + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the event makes the engine list Docker");
    // Let that listing finish.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = r.fake.containers()[&name].observed.id.clone();
    let of_it = r
        .fake
        .inspections()
        .iter()
        .filter(|i| **i == id || **i == name)
        .count();
    assert_eq!(of_it, 1, "only the start inspected the container");
    cancel.cancel();
    run.await.unwrap().unwrap();
}

/// Health end to end through the engine loop (fake Docker): each `health_status` event costs one
/// inspection of that container (the listing's health column no longer matches the cached
/// inspection), the tracked health reaches the published snapshot for the health-checked
/// container only, and a restarted engine keeps the time of the last change.
#[tokio::test]
async fn health_status_events_cost_one_inspection_each_and_reach_the_snapshot() {
    let r = rig();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (e, c) = (r.engine.clone(), cancel.clone());
        async move { e.run(c).await }
    });
    let mut checked = c("checked", true);
    checked["healthCheckType"] = serde_json::json!("DOCKER");
    checked["dockerConfig"] = serde_json::json!({"config":
        r#"{"HealthCheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":1}}"#});
    r.engine
        .deliver(task(
            "arn:h",
            serde_json::json!([checked, c("plain", false)]),
        ))
        .await
        .unwrap();
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, async {
        while !statuses(&r.sink.changes(), "arn:h").contains(&ReportStatus::Running) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("task runs");
    let health = |name: &str| {
        let snap = r.engine.view().snapshot();
        snap.metadata.tasks[0]
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .health
            .clone()
    };
    assert_eq!(
        health("checked"),
        Some(crate::task_endpoint::ContainerHealth::default()),
        "tracked, nothing known yet"
    );
    assert_eq!(health("plain"), None);
    let checked = fake_name(&r, "arn:h", "checked");
    let plain = fake_name(&r, "arn:h", "plain");
    let id = r.fake.containers()[&checked].observed.id.clone();
    let inspections_of = |id: &str| {
        r.fake
            .inspections()
            .iter()
            .filter(|i| **i == id || **i == checked)
            .count()
    };
    let wait_for = |status: model::HealthStatus| {
        let health = &health;
        async move {
            tokio::time::timeout(within, async {
                while health("checked").map(|h| h.status) != Some(status) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("checked never {status:?}"))
        }
    };
    // The start's own inspection only.
    assert_eq!(inspections_of(&id), 1);

    let before = now_secs();
    r.fake.set_health_probe(&checked, 0, "fine");
    r.fake.set_health(&checked, model::HealthStatus::Healthy);
    wait_for(model::HealthStatus::Healthy).await;
    // Let the event's rechecks (100 ms, 300 ms, 1 s) run out.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(inspections_of(&id), 2, "one inspection for the event");
    let h = health("checked").unwrap();
    let since = h.since_ms.expect("since set");
    assert!(since >= (before * 1000.0) as i64, "{since} {before}");
    assert_eq!((h.exit_code, h.output.as_deref()), (Some(0), Some("fine")));

    // Probes without a status change raise no event and cost nothing.
    r.fake.set_health_probe(&checked, 0, "fine again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inspections_of(&id), 2);
    assert_eq!(health("checked").unwrap().since_ms, Some(since));

    r.fake.set_health_probe(&checked, 1, "broken");
    r.fake.set_health(&checked, model::HealthStatus::Unhealthy);
    wait_for(model::HealthStatus::Unhealthy).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(inspections_of(&id), 3, "one inspection for the event");
    let h = health("checked").unwrap();
    assert!(h.since_ms.unwrap() >= since);
    assert_eq!(
        (h.exit_code, h.output.as_deref()),
        (Some(1), Some("broken"))
    );

    // An image's own health check on the other container: inspected (its listing row changed)
    // but not tracked.
    r.fake.set_health(&plain, model::HealthStatus::Healthy);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(health("plain"), None);

    cancel.cancel();
    run.await.unwrap().unwrap();

    // A restarted engine re-inspects everything, sees the same status, keeps the time.
    let again = build(
        &r.fake,
        &r.sink,
        &r.store,
        settings(Duration::from_secs(3 * 3600)),
    );
    again.settle(3).await.unwrap();
    let snap = again.view().snapshot();
    let after = snap.metadata.tasks[0].containers[0].health.clone().unwrap();
    assert_eq!(after, h);
}

/// Task-credentials.md §2.4–§2.5: the ids a record keeps are pending after a restart until ACS
/// delivers them; the task role's entry goes when the task stops, the execution role's at
/// cleanup. The endpoint ids are published once the containers exist, and kept by the record.
#[tokio::test]
async fn credentials_ids_pending_after_restart_removed_at_stop_and_cleanup() {
    use crate::credentials::{Lookup, RoleCredentials};
    use crate::task_endpoint::MetadataView;
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    // A record as an earlier run of the agent left it: both roles (the engine refuses task
    // roles at delivery today, so the record is written directly).
    let mut t = serde_json::json!({
        "arn": "t", "family": "fam", "version": "1", "desiredStatus": "RUNNING",
        "containers": [c("a", true)],
        "roleCredentials": {"credentialsId": "app-id", "roleArn": "arn:aws:iam::1:role/app"},
        "executionRoleCredentials": {"credentialsId": "exec-id", "roleArn": "arn:aws:iam::1:role/exec"}
    });
    model::strip_credentials(&mut t);
    let rec = TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 0, 0.0).unwrap();
    let endpoint = rec.containers[0].endpoint_id.clone();
    store
        .transaction(|tx| {
            store::put_task(tx, &rec)?;
            store::put_seq(tx, 1)
        })
        .unwrap();
    let creds = Arc::new(CredentialsStore::default());
    let sink = Arc::new(RecordingSink::default());
    let engine = Engine::new(Parts {
        credentials: creds.clone(),
        ..parts(&fake, &sink, &store, settings(Duration::from_secs(600)))
    })
    .unwrap();
    engine.settle(10).await.unwrap();
    let pending = |role| Lookup::Pending {
        task_arn: "t".into(),
        role,
    };
    assert_eq!(creds.lookup("app-id"), pending(RoleType::TaskApplication));
    assert_eq!(creds.lookup("exec-id"), pending(RoleType::TaskExecution));
    assert_eq!(creds.lookup("other"), Lookup::Unknown);
    // The container runs; its endpoint id (the record's) now names it.
    let index = engine.view().metadata();
    let (task, container) = index.find(&endpoint).expect("endpoint id published");
    assert_eq!(task.arn, "t");
    assert_eq!(container.name, "a");
    assert!(container.docker_id.is_some());
    // The ids the record keeps are never shown: not in /v1/tasks, not in the metadata facts.
    let shown = format!(
        "{} {:?}",
        serde_json::to_string(&engine.view().tasks()).unwrap(),
        index
    );
    assert!(
        !shown.contains("app-id") && !shown.contains("exec-id"),
        "{shown}"
    );
    // ACS delivers the credentials.
    for (role, id) in [
        (RoleType::TaskApplication, "app-id"),
        (RoleType::TaskExecution, "exec-id"),
    ] {
        creds.set(
            "t",
            role,
            RoleCredentials {
                credentials_id: id.into(),
                role_arn: "r".into(),
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                session_token: "t".into(),
                expiration: "e".into(),
            },
        );
    }
    assert!(matches!(creds.lookup("app-id"), Lookup::Found(_)));
    // The task stops: the task role's entry goes, the execution role's stays.
    stop(&engine, "t").await.unwrap();
    engine.settle(10).await.unwrap();
    assert!(statuses(&sink.changes(), "t").contains(&ReportStatus::Stopped));
    assert_eq!(creds.lookup("app-id"), Lookup::Unknown);
    assert!(matches!(creds.lookup("exec-id"), Lookup::Found(_)));
    // A restart now: the stopped task's task-role id stays unknown.
    let creds2 = Arc::new(CredentialsStore::default());
    let engine2 = Engine::new(Parts {
        credentials: creds2.clone(),
        ..parts(&fake, &sink, &store, settings(Duration::from_secs(600)))
    })
    .unwrap();
    engine2.settle(2).await.unwrap();
    assert_eq!(creds2.lookup("app-id"), Lookup::Unknown);
    assert_eq!(creds2.lookup("exec-id"), pending(RoleType::TaskExecution));
    // Cleanup: the execution role's entry goes too; the endpoint id names nothing.
    engine.advance_clock(601.0);
    engine.settle(10).await.unwrap();
    assert!(fake.containers().is_empty());
    assert_eq!(creds.lookup("exec-id"), Lookup::Unknown);
    assert!(creds.is_empty());
    assert!(engine.view().metadata().find(&endpoint).is_none());
}

#[tokio::test]
async fn records_without_endpoint_ids_get_one_at_load_and_keep_it() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let r = rig_with(fake.clone(), settings(Duration::from_secs(3600)));
    let mut rec = TaskRecord::new(
        TaskSpec::from_json(&task("t", serde_json::json!([c("a", true)]))).unwrap(),
        0,
        0.0,
    )
    .unwrap();
    rec.containers[0].endpoint_id.clear();
    r.store
        .transaction(|tx| {
            store::put_task(tx, &rec)?;
            store::put_seq(tx, 1)
        })
        .unwrap();
    r.engine.settle(10).await.unwrap();
    let first = store::load(&r.store).unwrap().tasks[0].containers[0]
        .endpoint_id
        .clone();
    assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first:?}");
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&fake, &sink2, &r.store, settings(Duration::from_secs(3600)));
    engine2.settle(10).await.unwrap();
    let again = store::load(&r.store).unwrap().tasks[0].containers[0]
        .endpoint_id
        .clone();
    assert_eq!(first, again);
}

/// Execution-role credentials with id `credentials_id` (key `ASIAEXEC`).
fn exec_creds(credentials_id: &str) -> crate::credentials::RoleCredentials {
    crate::credentials::RoleCredentials {
        credentials_id: credentials_id.into(),
        role_arn: "arn:aws:iam::1:role/exec".into(),
        access_key_id: "ASIAEXEC".into(),
        secret_access_key: "s".into(),
        session_token: "t".into(),
        expiration: "2030-01-01T00:00:00Z".into(),
    }
}

/// SSM in memory for the engine tests: counts calls; `/missing` is unknown.
#[derive(Default)]
struct FakeSecrets {
    calls: std::sync::Mutex<u32>,
}

#[async_trait::async_trait]
impl secrets::SecretSource for FakeSecrets {
    async fn get_parameters(
        &self,
        _creds: &crate::credentials::RoleCredentials,
        _region: &str,
        names: &[String],
    ) -> Result<secrets::Parameters, secrets::FetchError> {
        *self.calls.lock().unwrap() += 1;
        let mut p = secrets::Parameters::default();
        for n in names {
            if n == "/missing" {
                p.invalid.push(n.clone());
            } else {
                p.values.insert(n.clone(), format!("value-of-{n}"));
            }
        }
        Ok(p)
    }

    async fn get_secret_value(
        &self,
        _creds: &crate::credentials::RoleCredentials,
        _region: &str,
        secret_id: &str,
        _stage: Option<&str>,
        _version: Option<&str>,
    ) -> Result<String, secrets::FetchError> {
        *self.calls.lock().unwrap() += 1;
        match secret_id {
            "registry" => Ok(r#"{"username":"reg-user","password":"reg-pass"}"#.into()),
            _ => Err(secrets::FetchError {
                code: "ResourceNotFoundException".into(),
                text: "ResourceNotFoundException: no".into(),
                retryable: false,
            }),
        }
    }
}

/// One S3 object in memory for the engine tests; counts reads.
#[derive(Default)]
struct FakeObjects {
    reads: std::sync::Mutex<u32>,
}

#[async_trait::async_trait]
impl envfiles::ObjectSource for FakeObjects {
    async fn bucket_region(
        &self,
        _creds: &crate::credentials::RoleCredentials,
        region: &str,
        _bucket: &str,
    ) -> Result<String, secrets::FetchError> {
        Ok(region.to_owned())
    }

    async fn get_object(
        &self,
        _creds: &crate::credentials::RoleCredentials,
        _region: &str,
        _bucket: &str,
        _key: &str,
    ) -> Result<Vec<u8>, secrets::FetchError> {
        *self.reads.lock().unwrap() += 1;
        Ok(b"FROM_FILE=file\nSHADOWED=file\nAWS_REGION=file\n".to_vec())
    }
}

/// A `repositoryCredentials` container is pulled only after the task's fetch, with the login
/// from Secrets Manager; its environment files rank below the task definition's `environment`
/// and the agent's own variables; the other container's pull gets no login.
#[tokio::test]
async fn registry_logins_and_environment_files_are_fetched_before_the_pull_that_needs_them() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let creds = Arc::new(CredentialsStore::default());
    let sink = Arc::new(RecordingSink::default());
    let source = Arc::new(FakeSecrets::default());
    let objects = Arc::new(FakeObjects::default());
    let engine = Engine::new(Parts {
        credentials: creds.clone(),
        secrets: source.clone(),
        objects: objects.clone(),
        ..parts(&fake, &sink, &store, settings(Duration::from_secs(600)))
    })
    .unwrap();
    let mut a = c("a", true);
    a["image"] = serde_json::json!("registry.local/private:1");
    a["environment"] = serde_json::json!({"SHADOWED": "definition"});
    a["environmentFiles"] = serde_json::json!([{"type": "s3", "value": "arn:aws:s3:::b/app.env"}]);
    a["registryAuthentication"] = serde_json::json!({"type": "asm", "asmAuthData": {"credentialsParameter": "registry", "region": "us-east-1"}});
    let mut t = task("t", serde_json::json!([a, c("b", false)]));
    t["executionRoleCredentials"] =
        serde_json::json!({"credentialsId": "exec-t", "roleArn": "arn:aws:iam::1:role/exec"});
    creds.set("t", RoleType::TaskExecution, exec_creds("exec-t"));
    // One engine run from delivery to RUNNING (each `settle` starts from the stored state, as
    // a restarted agent would, and a restarted agent fetches again: the values are memory only).
    let (delivered, settled) = tokio::join!(engine.deliver(t), engine.settle(20));
    delivered.unwrap();
    settled.unwrap();
    assert_eq!(*source.calls.lock().unwrap(), 1, "one GetSecretValue");
    assert_eq!(*objects.reads.lock().unwrap(), 1, "one GetObject");
    // What it asked of Docker: one pull per image, one create per container, nothing again.
    assert_eq!(fake.pulls().len(), 2, "{:?}", fake.pulls());
    assert_eq!(fake.creates().len(), 2, "{:?}", fake.creates());
    let pulls: Vec<(String, Option<String>)> =
        fake.pulls().into_iter().zip(fake.pull_users()).collect();
    assert!(
        pulls.contains(&("registry.local/private:1".into(), Some("reg-user".into()))),
        "{pulls:?}"
    );
    assert!(
        pulls
            .iter()
            .filter(|(i, _)| i != "registry.local/private:1")
            .all(|(_, u)| u.is_none()),
        "{pulls:?}"
    );
    let env = fake
        .containers()
        .into_values()
        .find(|c| c.labels.values().any(|v| v == "a"))
        .unwrap()
        .env;
    assert!(env.contains(&"FROM_FILE=file".to_owned()), "{env:?}");
    assert!(env.contains(&"SHADOWED=definition".to_owned()), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e == "SHADOWED=file" || e == "AWS_REGION=file"),
        "{env:?}"
    );
    assert_eq!(statuses(&sink.changes(), "t"), vec![ReportStatus::Running]);

    // A second start of the same definition whose login secret is gone stops uncreated, as a
    // pull failure.
    let mut a = c("a", true);
    a["image"] = serde_json::json!("registry.local/private:2");
    a["registryAuthentication"] =
        serde_json::json!({"type": "asm", "asmAuthData": {"credentialsParameter": "gone"}});
    let mut t = task("t2", serde_json::json!([a]));
    t["executionRoleCredentials"] =
        serde_json::json!({"credentialsId": "exec-t", "roleArn": "arn:aws:iam::1:role/exec"});
    creds.set(
        "t2",
        RoleType::TaskExecution,
        creds.get("t", RoleType::TaskExecution).unwrap(),
    );
    deliver(&engine, t).await.unwrap();
    engine.settle(20).await.unwrap();
    assert!(
        !fake
            .pulls()
            .contains(&"registry.local/private:2".to_owned())
    );
    let changes = sink.changes();
    let stopped = changes
        .iter()
        .rfind(|c| c.task_arn == "t2" && c.status == ReportStatus::Stopped)
        .unwrap();
    assert!(
        stopped
            .reason
            .as_deref()
            .unwrap()
            .starts_with("CannotPullContainerError: ResourceNotFoundException: The task can't retrieve the secret with ARN 'gone'"),
        "{:?}",
        stopped.reason
    );
}

/// Secrets are fetched once, before the first create, with the execution role's credentials;
/// a failed fetch stops the task with its reason before anything is created.
#[tokio::test]
async fn secrets_are_fetched_once_before_create_and_a_failure_stops_the_task_uncreated() {
    let fake = Arc::new(FakeRuntime::with_images(&[]));
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let creds = Arc::new(CredentialsStore::default());
    let sink = Arc::new(RecordingSink::default());
    let source = Arc::new(FakeSecrets::default());
    let engine = Engine::new(Parts {
        credentials: creds.clone(),
        secrets: source.clone(),
        ..parts(&fake, &sink, &store, settings(Duration::from_secs(600)))
    })
    .unwrap();
    let with_secrets = |arn: &str, from: &str| {
        let mut a = c("a", true);
        a["secrets"] = serde_json::json!([{"name": "DB", "valueFrom": from, "provider": "ssm",
            "region": "us-east-1", "type": "ENVIRONMENT_VARIABLE", "target": "CONTAINER"}]);
        let mut t = task(arn, serde_json::json!([a, c("b", false)]));
        t["executionRoleCredentials"] = serde_json::json!({"credentialsId": format!("exec-{arn}"), "roleArn": "arn:aws:iam::1:role/exec"});
        t
    };
    for arn in ["good", "bad"] {
        creds.set(
            arn,
            RoleType::TaskExecution,
            exec_creds(&format!("exec-{arn}")),
        );
    }
    deliver(&engine, with_secrets("good", "/db")).await.unwrap();
    engine.settle(20).await.unwrap();
    assert_eq!(*source.calls.lock().unwrap(), 1);
    assert_eq!(fake.creates().len(), 2, "{:?}", fake.creates());
    assert_eq!(
        statuses(&sink.changes(), "good"),
        vec![ReportStatus::Running]
    );

    deliver(&engine, with_secrets("bad", "/missing"))
        .await
        .unwrap();
    engine.settle(20).await.unwrap();
    assert_eq!(*source.calls.lock().unwrap(), 2);
    assert_eq!(
        fake.creates().len(),
        2,
        "nothing of the failed task was created"
    );
    let changes = sink.changes();
    assert_eq!(statuses(&changes, "bad"), vec![ReportStatus::Stopped]);
    let stopped = changes
        .iter()
        .rfind(|c| c.task_arn == "bad" && c.status == ReportStatus::Stopped)
        .unwrap();
    assert_eq!(
        stopped.reason.as_deref(),
        Some(
            "fetching secret data from SSM Parameter Store in us-east-1: invalid parameters: /missing"
        )
    );
    // The values are nowhere the agent shows or keeps its tasks.
    let shown = serde_json::to_string(&engine.view().tasks()).unwrap();
    assert!(!shown.contains("value-of-"), "{shown}");
    let raw = std::fs::read(dir.path().join("s.redb")).unwrap();
    assert!(!raw.windows(9).any(|w| w == b"value-of-"));
}

mod awsvpc;
