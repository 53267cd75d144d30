//! Crash safety against the real Docker engine: the engine runs in a separate process
//! (`examples/engine_harness.rs`) that is killed with SIGKILL during pull, create, start and
//! stop, then restarted. After recovery the container set equals the desired set, nothing is
//! duplicated, and every state change was emitted exactly once (read back from the store, where
//! the sink writes them in the engine's own transaction).

#[path = "common/docker.rs"]
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/harness_main.rs"]
mod harness_main;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ecs_hostd::tasks::{ReportStatus, TaskChange};
use harness::*;

const WAIT: Duration = Duration::from_secs(60);

/// Not a test: the entry point when this binary is re-executed as the engine harness.
#[test]
fn harness_process() {
    harness_entry();
}

fn arn_for(run: &str) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}")
}

/// An essential container that exits 0 on SIGTERM and a non-essential busybox `sleep` that
/// ignores it (PID 1) and is killed after its 2 s stopTimeout.
fn two_containers(run: &str, image: &str, arn: &str) -> serde_json::Value {
    let main = container(
        run,
        "main",
        image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        true,
        serde_json::json!({}),
    );
    let mut side = container(
        run,
        "side",
        image,
        &["sleep", "3600"],
        false,
        serde_json::json!({}),
    );
    side["stopTimeout"] = serde_json::json!(2);
    task(arn, "crash", vec![main, side])
}

/// Docker's containers of the task, by container name (panics on duplicates).
fn docker_set(host: Option<&str>, arn: &str) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    for id in containers_with(host, &format!("com.amazonaws.ecs.task-arn={arn}")) {
        let o = docker_cli(host)
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"com.amazonaws.ecs.container-name\"}} {{.State.Running}}",
                &id,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let (name, running) = text.split_once(' ').unwrap();
        let prev = out.insert(name.to_owned(), (id.clone(), running == "true"));
        assert!(prev.is_none(), "two containers for {name} of {arn}");
    }
    out
}

fn reached(ch: &[TaskChange], arn: &str, s: ReportStatus) -> bool {
    task_reached(ch, arn, s)
}

/// Kill -9 at `phase` while starting a task, restart, and check the result.
fn crash_while_starting(phase: &str, env: Vec<(String, String)>, image: String, run: &str) {
    let arn = arn_for(run);
    let mut h = Harness::new();
    h.env = env;
    h.start(Some(phase));
    h.put_task("t", &two_containers(run, &image, &arn));
    h.wait_marker(phase, WAIT);
    h.kill9();
    let before = docker_set(None, &arn);
    assert!(before.len() <= 2);
    if phase != "pull.after" {
        assert!(
            !before.is_empty(),
            "{phase}: the crash came before any container existed"
        );
    }

    h.start(None);
    h.wait_changes("task RUNNING after the crash", WAIT, |c| {
        reached(c, &arn, ReportStatus::Running)
    });
    h.kill9();
    let set = docker_set(None, &arn);
    assert_eq!(set.keys().collect::<Vec<_>>(), ["main", "side"], "{phase}");
    assert!(
        set.values().all(|(_, running)| *running),
        "{phase}: {set:?}"
    );
    for (name, (id, _)) in &before {
        assert_eq!(
            &set[name].0, id,
            "{phase}: {name} was replaced, not adopted"
        );
    }
    let changes = h.stored_changes();
    assert_each_once(&changes);
    let mut task_statuses: Vec<ReportStatus> = changes
        .iter()
        .filter(|c| c.task_arn == arn && c.status != ReportStatus::Pending)
        .map(|c| c.status)
        .collect();
    task_statuses.dedup();
    assert_eq!(
        task_statuses,
        [ReportStatus::Running],
        "{phase}: {changes:#?}"
    );
    for name in ["main", "side"] {
        let n = changes
            .iter()
            .flat_map(|c| c.containers.iter())
            .filter(|c| c.container_name == name && c.status == ReportStatus::Running)
            .count();
        assert_eq!(n, 1, "{phase}: {name} RUNNING reported {n} times");
    }

    // Another restart finds nothing to do: no new changes, no new containers.
    h.start(None);
    std::thread::sleep(Duration::from_secs(3));
    h.kill9();
    assert_eq!(
        h.stored_changes(),
        changes,
        "{phase}: changes after an idle restart"
    );
    assert_eq!(docker_set(None, &arn), set);
}

#[test]
fn kill9_during_create_adopts_the_container() {
    let image = test_image();
    let run = run_id("kcreate");
    let _c = Cleanup::new(&run);
    crash_while_starting("create.after", Vec::new(), image, &run);
}

#[test]
fn kill9_during_start_resumes_without_duplicates() {
    let image = test_image();
    let run = run_id("kstart");
    let _c = Cleanup::new(&run);
    crash_while_starting("start.after", Vec::new(), image, &run);
}

#[test]
fn kill9_during_pull_resumes_without_duplicates() {
    let image = test_image();
    let run = run_id("kpull");
    let _c = Cleanup::new(&run);
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), None);
    let pulled = push(&image, &reg.addr, &format!("ehd/{run}:1"));
    let env = vec![("HARNESS_PULL_BEHAVIOR".to_owned(), "always".to_owned())];
    crash_while_starting("pull.after", env, pulled.clone(), &run);
    let _ = std::process::Command::new("docker")
        .args(["rmi", &pulled])
        .output();
}

#[test]
fn kill9_during_stop_finishes_the_stop_once() {
    let image = test_image();
    let run = run_id("kstop");
    let _c = Cleanup::new(&run);
    let arn = arn_for(&run);
    let mut h = Harness::new();
    h.env = vec![("HARNESS_STOP_TIMEOUT_SECS".into(), "2".into())];
    h.start(None);
    let mut t = two_containers(&run, &image, &arn);
    h.put_task("t", &t);
    h.wait_changes("RUNNING", WAIT, |c| reached(c, &arn, ReportStatus::Running));
    t["desiredStatus"] = serde_json::json!("STOPPED");
    h.put_task("t", &t);
    // The side container ignores SIGTERM: its stop takes 2 s. Kill the agent in the middle.
    h.wait_log("Stopping container.", WAIT);
    std::thread::sleep(Duration::from_millis(700));
    h.kill9();
    h.start(None);
    h.wait_changes("STOPPED", WAIT, |c| reached(c, &arn, ReportStatus::Stopped));
    h.kill9();
    let set = docker_set(None, &arn);
    assert_eq!(set.len(), 2);
    assert!(set.values().all(|(_, running)| !*running), "{set:?}");
    let changes = h.stored_changes();
    assert_each_once(&changes);
    let stopped: Vec<&TaskChange> = changes
        .iter()
        .filter(|c| c.task_arn == arn && c.status == ReportStatus::Stopped)
        .collect();
    assert_eq!(stopped.len(), 1);
    let side = container_change(&changes, &arn, "side", ReportStatus::Stopped).unwrap();
    assert_eq!(side.exit_code, Some(137));
    let main = container_change(&changes, &arn, "main", ReportStatus::Stopped).unwrap();
    assert_eq!(main.exit_code, Some(0));
}
