//! Task volumes against the real Docker engine (issue 20 item 3, container-features.md §6):
//! an autoprovisioned shared volume outlives its task and carries data to the next one, a
//! task-scoped volume goes with its task's cleanup, a shared volume that must exist and does not
//! stops the task before any container or volume is made, `ECS_SHARED_VOLUME_MATCH_FULL_CONFIG`
//! stops a task whose shared volume differs, read-only mounts and `volumesFrom` refuse writes,
//! host binds reach the host, driver options reach Docker (a `local` tmpfs volume), and a
//! ten-container task prepares its volumes once, counted with the engine's Docker call counter.
//!
//! Every fact is asked of Docker (`docker volume inspect`, `docker inspect`) or of the container
//! itself (`docker exec`), never of the engine's own records.

#[path = "common/docker.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::engine::Settings;
use ecs_hostd::tasks::{ReportStatus, TaskControl};
use serde_json::{Value, json};

/// A container that exits at once on SIGTERM.
const GRACEFUL: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

fn arn_of(run: &str, n: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-{n}")
}

/// Settings whose cleanup runs a second after STOPPED is reported.
fn quick_cleanup() -> Settings {
    let mut s = settings();
    s.engine.task_cleanup_wait = Duration::from_secs(1);
    s
}

/// A task with `volumes`, family `family`.
fn task_with(arn: &str, family: &str, containers: Vec<Value>, volumes: Value) -> Value {
    let mut t = task(arn, family, containers);
    t["volumes"] = volumes;
    t
}

/// A container running `script` in `sh -c` with `mounts` (mountPoints).
fn sh(run: &str, name: &str, essential: bool, script: &str, mounts: Value) -> Value {
    let mut c = container(
        run,
        name,
        &test_image(),
        &["sh", "-c", script],
        essential,
        json!({}),
    );
    c["mountPoints"] = mounts;
    c["stopTimeout"] = json!(2);
    c
}

fn docker(args: &[&str]) -> std::process::Output {
    docker_cli(None).args(args).output().expect("docker CLI")
}

/// `docker volume inspect` of `name`, or None when Docker has no such volume.
fn volume(name: &str) -> Option<Value> {
    let out = docker(&["volume", "inspect", name]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("volume inspect JSON");
    Some(v[0].clone())
}

/// Docker volumes whose name starts with `prefix`.
fn volumes_named(prefix: &str) -> Vec<String> {
    let out = docker(&["volume", "ls", "-q", "--filter", &format!("name={prefix}")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// `docker inspect` of the task's container `name`.
fn inspect_container(arn: &str, name: &str) -> Value {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.amazonaws.ecs.task-arn={arn}"),
        "--filter",
        &format!("label=com.amazonaws.ecs.container-name={name}"),
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!id.is_empty(), "no container {name} of {arn} in Docker");
    let out = docker(&["inspect", &id]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v[0].clone()
}

/// The mount of `c` (a `docker inspect`) at `destination`.
fn mount_at<'a>(c: &'a Value, destination: &str) -> &'a Value {
    c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == destination)
        .unwrap_or_else(|| panic!("no mount at {destination}: {:#}", c["Mounts"]))
}

/// `docker exec <container> sh -c script`: (success, stdout + stderr).
fn exec(c: &Value, script: &str) -> (bool, String) {
    let id = c["Id"].as_str().unwrap();
    let out = docker(&["exec", id, "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn wait_until(what: &str, deadline: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the task's STOPPED report and returns its reason and the container's exit code.
async fn stopped(eng: &Running, arn: &str, container: &str) -> (Option<String>, Option<i32>) {
    let changes = eng
        .wait_changes("task STOPPED", Duration::from_secs(60), |c| {
            task_reached(c, arn, ReportStatus::Stopped)
        })
        .await;
    let reason = changes
        .iter()
        .rfind(|c| c.task_arn == arn && c.status == ReportStatus::Stopped)
        .and_then(|c| c.reason.clone());
    let exit =
        container_change(&changes, arn, container, ReportStatus::Stopped).and_then(|c| c.exit_code);
    (reason, exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_volume_outlives_its_task_and_a_task_volume_goes_with_it() {
    let run = run_id("volshared");
    let _cleanup = Cleanup::new(&run);
    let shared = format!("{run}-shared");
    let eng = start(quick_cleanup()).await;
    let volumes = json!([
        {"name": shared, "type": "docker", "dockerVolumeConfiguration":
            {"scope": "shared", "autoprovision": true, "driver": "local"}},
        // Rendered by ECS (and ec2sim) for `host: {}`: a task-scoped local volume.
        {"name": "scratch", "type": "host", "host": {"sourcePath": ""}},
    ]);
    let mounts = json!([
        {"sourceVolume": shared, "containerPath": "/shared"},
        {"sourceVolume": "scratch", "containerPath": "/scratch"},
    ]);
    // Task volume names are per family: the family carries the run id (and Cleanup finds them).
    assert!(volume(&shared).is_none(), "{shared} exists before the test");
    let first = arn_of(&run, 1);
    let writer = sh(
        &run,
        "app",
        true,
        "echo written-by-task-1 > /shared/f && touch /scratch/x && sleep 1",
        mounts.clone(),
    );
    eng.engine
        .deliver(task_with(&first, &run, vec![writer], volumes.clone()))
        .await
        .unwrap();
    // While it runs, Docker has the task volume under its spec name.
    let scratch_prefix = format!("ecs-{run}-1-scratch-");
    wait_until("the task volume", Duration::from_secs(30), || {
        !volumes_named(&scratch_prefix).is_empty()
    })
    .await;
    let scratch = volumes_named(&scratch_prefix).remove(0);
    let hex = scratch.strip_prefix(&scratch_prefix).unwrap();
    assert!(
        hex.len() == 20 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{scratch}"
    );
    let (reason, exit) = stopped(&eng, &first, "app").await;
    assert_eq!(exit, Some(0), "task 1 failed: {reason:?}");
    wait_until("task 1's cleanup", Duration::from_secs(60), || {
        containers_with(None, &format!("com.amazonaws.ecs.task-arn={first}")).is_empty()
    })
    .await;
    // Cleanup removed the task volume, and the shared one stays.
    wait_until("the task volume removed", Duration::from_secs(10), || {
        volume(&scratch).is_none()
    })
    .await;
    let v = volume(&shared).expect("the shared volume survives its first task's cleanup");
    assert_eq!(v["Driver"], "local");

    // Task 2 reads what task 1 wrote (the container exits 0 only if it finds it).
    let second = arn_of(&run, 2);
    let reader = sh(
        &run,
        "app",
        true,
        "grep -qx written-by-task-1 /shared/f && ! test -e /scratch/x",
        mounts,
    );
    eng.engine
        .deliver(task_with(&second, &run, vec![reader], volumes))
        .await
        .unwrap();
    let (reason, exit) = stopped(&eng, &second, "app").await;
    assert_eq!(
        exit,
        Some(0),
        "task 2 did not find task 1's data in {shared} (or found task 1's scratch): {reason:?}"
    );
    eng.shutdown().await;
    assert!(volume(&shared).is_some());
    let _ = docker(&["volume", "rm", &shared]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_shared_volume_without_autoprovision_stops_the_task_before_anything_is_made() {
    let run = run_id("volmissing");
    let _cleanup = Cleanup::new(&run);
    let name = format!("{run}-given");
    let eng = start(settings()).await;
    let arn = arn_of(&run, 1);
    let volumes = json!([
        {"name": name, "type": "docker", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": false}},
        {"name": "scratch", "type": "docker", "dockerVolumeConfiguration": {"scope": "task", "driver": "local"}},
    ]);
    let mounts = json!([
        {"sourceVolume": name, "containerPath": "/given"},
        {"sourceVolume": "scratch", "containerPath": "/scratch"},
    ]);
    let app = sh(&run, "app", true, GRACEFUL, mounts);
    eng.engine
        .deliver(task_with(&arn, &run, vec![app], volumes))
        .await
        .unwrap();
    let (reason, _) = stopped(&eng, &arn, "app").await;
    assert_eq!(
        reason.as_deref(),
        Some(
            format!(
                "initialize volume: volume detection failed, volume '{name}' does not exist and autoprovision is set to false"
            )
            .as_str()
        )
    );
    let changes = eng.changes();
    let app = container_change(&changes, &arn, "app", ReportStatus::Stopped).unwrap();
    assert!(app.runtime_id.is_none(), "{app:?}");
    // Docker made neither a container nor a volume (a bind would have auto-created it).
    assert!(containers_in_task(&arn).is_empty());
    assert!(volume(&name).is_none(), "{name} was created");
    assert!(volumes_named(&format!("ecs-{run}-")).is_empty());
    assert_eq!(eng.calls.get("create"), 0);
    assert_eq!(eng.calls.get("create_volume"), 0);
    assert_eq!(eng.calls.get("inspect_volume"), 1);
    eng.shutdown().await;
}

fn containers_in_task(arn: &str) -> Vec<String> {
    containers_with(None, &format!("com.amazonaws.ecs.task-arn={arn}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_config_matching_stops_a_task_whose_shared_volume_differs() {
    let run = run_id("volmatch");
    let _cleanup = Cleanup::new(&run);
    let name = format!("{run}-data");
    // An operator's volume with options the task definition does not have.
    let made = docker(&[
        "volume",
        "create",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=1m",
        "--label",
        "owner=ops",
        &name,
    ]);
    assert!(made.status.success(), "{made:?}");
    let volumes = json!([{"name": name, "type": "docker", "dockerVolumeConfiguration":
        {"scope": "shared", "autoprovision": true, "driver": "local", "labels": {"owner": "ops"}}}]);
    let mounts = json!([{"sourceVolume": name, "containerPath": "/data"}]);

    let mut strict = settings();
    strict.engine.shared_volume_match_full_config = true;
    let eng = start(strict).await;
    let arn = arn_of(&run, 1);
    let app = sh(&run, "app", true, GRACEFUL, mounts.clone());
    eng.engine
        .deliver(task_with(&arn, &run, vec![app], volumes.clone()))
        .await
        .unwrap();
    let (reason, _) = stopped(&eng, &arn, "app").await;
    let reason = reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "initialize volume: shared volume '{name}' exists but does not match the task definition"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(
            "driver options are {device=tmpfs, o=size=1m, type=tmpfs}, the task definition says {}"
        ),
        "{reason}"
    );
    assert!(
        !reason.contains("labels") && !reason.contains("driver is"),
        "{reason}"
    );
    assert!(containers_in_task(&arn).is_empty());
    eng.shutdown().await;
    // Untouched by the failed task.
    assert_eq!(volume(&name).unwrap()["Options"]["o"], "size=1m");

    // By default the existing volume is used as it is.
    let eng = start(settings()).await;
    let arn = arn_of(&run, 2);
    let app = sh(&run, "app", true, GRACEFUL, mounts);
    eng.engine
        .deliver(task_with(&arn, &run, vec![app], volumes))
        .await
        .unwrap();
    eng.wait_changes("RUNNING", Duration::from_secs(60), |c| {
        task_reached(c, &arn, ReportStatus::Running)
    })
    .await;
    let c = inspect_container(&arn, "app");
    assert_eq!(mount_at(&c, "/data")["Name"], name.as_str());
    let (ok, mounts) = exec(&c, "grep ' /data ' /proc/mounts");
    assert!(ok && mounts.starts_with("tmpfs /data tmpfs"), "{mounts}");
    eng.engine.stop(&arn).await.unwrap();
    stopped(&eng, &arn, "app").await;
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounts_volumes_from_and_host_binds_reach_the_container() {
    let run = run_id("volro");
    let _cleanup = Cleanup::new(&run);
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().to_str().unwrap().to_owned();
    std::fs::write(dir.path().join("in"), "from-the-host\n").unwrap();
    let eng = start(settings()).await;
    let arn = arn_of(&run, 1);
    let volumes = json!([
        {"name": "data", "type": "host", "host": {}},
        {"name": "hostdir", "type": "host", "host": {"sourcePath": host}},
    ]);
    let writer = sh(
        &run,
        "writer",
        true,
        &format!("echo hi > /data/f && cp /host/in /host/out && {GRACEFUL}"),
        json!([
            {"sourceVolume": "data", "containerPath": "/data"},
            {"sourceVolume": "hostdir", "containerPath": "/host", "readOnly": false},
        ]),
    );
    let mut reader = sh(
        &run,
        "reader",
        true,
        GRACEFUL,
        json!([{"sourceVolume": "hostdir", "containerPath": "/hostro", "readOnly": true}]),
    );
    reader["volumesFrom"] = json!([{"sourceContainer": "writer", "readOnly": true}]);
    eng.engine
        .deliver(task_with(&arn, &run, vec![writer, reader], volumes))
        .await
        .unwrap();
    eng.wait_changes("RUNNING", Duration::from_secs(60), |c| {
        task_reached(c, &arn, ReportStatus::Running)
    })
    .await;

    let w = inspect_container(&arn, "writer");
    let r = inspect_container(&arn, "reader");
    // Docker's view: the writer's mounts are writable, every mount of the reader is not.
    let data = mount_at(&w, "/data");
    assert_eq!(data["Type"], "volume");
    assert!(
        data["Name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ecs-{run}-1-data-")),
        "{data}"
    );
    assert_eq!(data["RW"], true);
    assert_eq!(mount_at(&w, "/host")["Type"], "bind");
    assert_eq!(mount_at(&w, "/host")["Source"], host.as_str());
    assert_eq!(mount_at(&w, "/host")["RW"], true);
    assert_eq!(mount_at(&r, "/data")["Name"], data["Name"]);
    assert_eq!(mount_at(&r, "/data")["RW"], false, "volumesFrom readOnly");
    assert_eq!(mount_at(&r, "/host")["RW"], false, "volumesFrom readOnly");
    assert_eq!(mount_at(&r, "/hostro")["RW"], false, "mountPoints readOnly");

    // The kernel's view, from inside: the reader sees the writer's data and cannot write.
    wait_until("the writer's file", Duration::from_secs(10), || {
        exec(&w, "test -s /data/f").0
    })
    .await;
    let (ok, text) = exec(&r, "cat /data/f");
    assert!(ok && text == "hi\n", "{text}");
    for path in ["/data/y", "/host/y", "/hostro/y"] {
        let (ok, text) = exec(&r, &format!("touch {path}"));
        assert!(
            !ok && text.contains("Read-only file system"),
            "{path}: {text}"
        );
    }
    // The same writes work in the writer: the refusal is the read-only mount's.
    let (ok, text) = exec(&w, "touch /data/y /host/y");
    assert!(ok, "{text}");
    // The host bind reached the host both ways.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "from-the-host\n"
    );
    assert!(dir.path().join("y").exists());

    eng.engine.stop(&arn).await.unwrap();
    stopped(&eng, &arn, "writer").await;
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_options_and_labels_reach_docker_and_the_mount_is_a_sized_tmpfs() {
    let run = run_id("volopts");
    let _cleanup = Cleanup::new(&run);
    let eng = start(quick_cleanup()).await;
    let arn = arn_of(&run, 1);
    let volumes = json!([{"name": "fast", "type": "docker", "dockerVolumeConfiguration": {
        "scope": "task", "driver": "local",
        "driverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=2m"},
        "labels": {"team": "storage", "run": run}}}]);
    let app = sh(
        &run,
        "app",
        true,
        GRACEFUL,
        json!([{"sourceVolume": "fast", "containerPath": "/fast"}]),
    );
    eng.engine
        .deliver(task_with(&arn, &run, vec![app], volumes))
        .await
        .unwrap();
    eng.wait_changes("RUNNING", Duration::from_secs(60), |c| {
        task_reached(c, &arn, ReportStatus::Running)
    })
    .await;
    let c = inspect_container(&arn, "app");
    let name = mount_at(&c, "/fast")["Name"].as_str().unwrap().to_owned();
    let v = volume(&name).expect("the task volume");
    assert_eq!(v["Driver"], "local");
    assert_eq!(
        v["Options"],
        json!({"type": "tmpfs", "device": "tmpfs", "o": "size=2m"})
    );
    assert_eq!(v["Labels"]["team"], "storage");
    assert_eq!(v["Labels"]["run"], run.as_str());
    // Inside, the kernel mounted a 2 MiB tmpfs there.
    let (ok, line) = exec(&c, "grep ' /fast ' /proc/mounts");
    assert!(ok && line.starts_with("tmpfs /fast tmpfs"), "{line}");
    assert!(line.contains("size=2048k"), "{line}");
    let (ok, df) = exec(&c, "df -k /fast | tail -1");
    assert!(ok, "{df}");
    let total: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(total, 2048, "{df}");

    eng.engine.stop(&arn).await.unwrap();
    stopped(&eng, &arn, "app").await;
    wait_until("cleanup", Duration::from_secs(60), || {
        containers_in_task(&arn).is_empty() && volume(&name).is_none()
    })
    .await;
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_container_task_prepares_its_volumes_once() {
    let run = run_id("volcount");
    let _cleanup = Cleanup::new(&run);
    let shared = format!("{run}-shared");
    let eng = start(quick_cleanup()).await;
    let arn = arn_of(&run, 1);
    let volumes = json!([
        {"name": shared, "type": "docker", "dockerVolumeConfiguration":
            {"scope": "shared", "autoprovision": true, "driver": "local"}},
        {"name": "scratch", "type": "docker", "dockerVolumeConfiguration": {"scope": "task", "driver": "local"}},
        {"name": "empty", "type": "host", "host": {}},
    ]);
    let containers = (0..10)
        .map(|i| {
            sh(
                &run,
                &format!("c{i}"),
                i == 0,
                GRACEFUL,
                json!([
                    {"sourceVolume": shared, "containerPath": "/shared"},
                    {"sourceVolume": "scratch", "containerPath": "/scratch"},
                    {"sourceVolume": "empty", "containerPath": "/empty"},
                ]),
            )
        })
        .collect();
    let before = eng.calls.snapshot();
    eng.engine
        .deliver(task_with(&arn, &run, containers, volumes))
        .await
        .unwrap();
    eng.wait_changes("RUNNING", Duration::from_secs(90), |c| {
        task_reached(c, &arn, ReportStatus::Running)
    })
    .await;
    let calls =
        |op: &str| eng.calls.get(op) - before.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n);
    let (inspected, created) = (calls("inspect_volume"), calls("create_volume"));
    println!("ten containers, three volumes: inspect_volume {inspected}, create_volume {created}");
    // The shared one: inspect, absent, create. The two task-scoped ones: one create each.
    assert_eq!(inspected, 1);
    assert_eq!(created, 3);
    assert_eq!(calls("create"), 10);
    // Every container mounts the same three volumes.
    let first = inspect_container(&arn, "c0");
    for i in 1..10 {
        let c = inspect_container(&arn, &format!("c{i}"));
        for path in ["/shared", "/scratch", "/empty"] {
            assert_eq!(mount_at(&c, path)["Name"], mount_at(&first, path)["Name"]);
        }
    }
    eng.engine.stop(&arn).await.unwrap();
    stopped(&eng, &arn, "c0").await;
    wait_until("cleanup", Duration::from_secs(60), || {
        containers_in_task(&arn).is_empty()
    })
    .await;
    wait_until("task volumes removed", Duration::from_secs(10), || {
        volumes_named(&format!("ecs-{run}-")).is_empty()
    })
    .await;
    assert!(volume(&shared).is_some());
    println!("after cleanup: remove_volume {}", calls("remove_volume"));
    assert_eq!(calls("remove_volume"), 2, "task-scoped volumes only");
    eng.shutdown().await;
    let _ = docker(&["volume", "rm", &shared]);
}
