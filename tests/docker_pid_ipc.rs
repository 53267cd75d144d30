//! `pidMode`/`ipcMode` `task` against the real Docker engine (container-features.md §8): the
//! engine's namespace pause container holds the task's PID and IPC namespaces. What is shared is
//! proved with what the kernel says inside the containers (`ps`, `/proc/1/cmdline`,
//! `/proc/self/ns/*`) and with `docker inspect`, never with the engine's own records; the order
//! (pause created and running before any user container is created, stopped after all of them)
//! with Docker's own timestamps; and that ECS never hears of the pause with the state changes the
//! engine queued for it.
//!
//! Needs `scripts/world.sh` `world_images`, which builds the pause image under the default name
//! `amazon/amazon-ecs-pause:0.1.0` from the busybox test image.

#[path = "common/docker.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::engine::model::internal::{DEFAULT_PAUSE_IMAGE, NAMESPACE_PAUSE_NAME};
use ecs_hostd::tasks::{ReportStatus, TaskChange, TaskControl};
use serde_json::{Value, json};

/// Waits until Docker has no container of task `arn` left (the engine's cleanup).
async fn wait_removed(arn: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with(None, &format!("com.amazonaws.ecs.task-arn={arn}")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the containers of {arn} were not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A user container: one identifiable `sleep` under a shell that exits at once on SIGTERM.
fn sleeper(tag: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("trap 'exit 0' TERM; sleep {tag} & wait"),
    ]
}

fn arn_of(run: &str, n: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-{n}")
}

/// The pause image must be there (the world builds it); the tests fail, never skip, without it.
fn pause_image() -> String {
    let ok = docker_cli(None)
        .args(["image", "inspect", DEFAULT_PAUSE_IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the pause image {DEFAULT_PAUSE_IMAGE} is missing: run `bash -c 'source scripts/world.sh; world_setup'`"
    );
    DEFAULT_PAUSE_IMAGE.to_owned()
}

/// Removes every container of the given tasks (the pause carries no test label, only the
/// task's labels) when dropped.
struct TaskCleanup(Vec<String>);

impl Drop for TaskCleanup {
    fn drop(&mut self) {
        for arn in &self.0 {
            let ids = containers_with(None, &format!("com.amazonaws.ecs.task-arn={arn}"));
            if !ids.is_empty() {
                let _ = docker_cli(None)
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// The id of container `name` of task `arn`, as Docker's labels say (any state).
fn id_of(arn: &str, name: &str) -> Option<String> {
    let out = docker_cli(None)
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.amazonaws.ecs.task-arn={arn}"),
            "--filter",
            &format!("label=com.amazonaws.ecs.container-name={name}"),
        ])
        .output()
        .expect("docker ps");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(ids.len() <= 1, "{name} of {arn} exists twice: {ids:?}");
    ids.into_iter().next()
}

fn inspect(id: &str) -> Value {
    let out = docker_cli(None)
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "docker inspect {id}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// Runs `cmd` in container `id`; its standard output.
fn exec(id: &str, cmd: &[&str]) -> String {
    let out = docker_cli(None)
        .arg("exec")
        .arg(id)
        .args(cmd)
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "docker exec {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Docker's UTC times (`2026-01-02T03:04:05.123456789Z`, Go trims trailing zeros of the
/// fraction) as (seconds part, nanoseconds), which compare in time order.
fn time_of(v: &Value) -> (String, u32) {
    let s = v.as_str().unwrap().trim_end_matches('Z');
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let nanos = format!("{frac:0<9}")[..9].parse().unwrap();
    (secs.to_owned(), nanos)
}

fn no_pause_reported(changes: &[TaskChange]) {
    for ch in changes {
        for c in &ch.containers {
            assert_ne!(
                c.container_name, NAMESPACE_PAUSE_NAME,
                "the pause container was reported to ECS: {ch:?}"
            );
        }
    }
}

/// A task as ECS renders `pidMode`/`ipcMode` (task-level fields, payload.py) with two user
/// containers (`two` depends on `one`).
fn shared_task(run: &str, arn: &str, modes: Value, tags: [u32; 2]) -> Value {
    let image = test_image();
    let args = |t| sleeper(t);
    let a = args(tags[0]);
    let b = args(tags[1]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let one = container(
        run,
        "one",
        &image,
        &a,
        true,
        json!({"CapAdd": [], "CapDrop": []}),
    );
    let mut two = container(
        run,
        "two",
        &image,
        &b,
        true,
        json!({"CapAdd": [], "CapDrop": []}),
    );
    two["dependsOn"] = json!([{"containerName": "one", "condition": "START"}]);
    let mut t = task(arn, "pidipc", vec![one, two]);
    for (k, v) in modes.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_pid_and_ipc_namespaces_are_shared_through_the_pause_container() {
    pause_image();
    let run = run_id("pidipc");
    let _cleanup = Cleanup::new(&run);
    let (a, b) = (arn_of(&run, 0), arn_of(&run, 1));
    let _tasks = TaskCleanup(vec![a.clone(), b.clone()]);
    let mut s = settings();
    s.engine.task_cleanup_wait = Duration::from_secs(1);
    s.engine.task_cleanup_wait_jitter = Duration::ZERO;
    let eng = start(s).await;
    let before = eng.calls.snapshot();
    let both = json!({"pidMode": "task", "ipcMode": "task"});
    let started = Instant::now();
    eng.engine
        .deliver(shared_task(&run, &a, both.clone(), [1001, 1002]))
        .await
        .unwrap();
    eng.engine
        .deliver(shared_task(&run, &b, both, [1003, 1004]))
        .await
        .unwrap();
    eng.wait_changes("both tasks RUNNING", Duration::from_secs(60), |c| {
        task_reached(c, &a, ReportStatus::Running) && task_reached(c, &b, ReportStatus::Running)
    })
    .await;
    println!("two pid/ipc tasks RUNNING in {:?}", started.elapsed());

    let ids = |arn: &str| {
        [NAMESPACE_PAUSE_NAME, "one", "two"]
            .map(|n| id_of(arn, n).unwrap_or_else(|| panic!("{n} of {arn} not in Docker")))
    };
    let [pause_a, one_a, two_a] = ids(&a);
    let [pause_b, one_b, _two_b] = ids(&b);

    // PID: one sees two's process and the pause as its PID 1; the other task's are invisible.
    let ps_one_a = exec(&one_a, &["ps", "-o", "pid,args"]);
    assert!(
        ps_one_a.contains("sleep 1002"),
        "one does not see two: {ps_one_a}"
    );
    assert!(
        !ps_one_a.contains("sleep 1003"),
        "one sees task b: {ps_one_a}"
    );
    let init = exec(&two_a, &["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"]);
    assert!(
        init.contains("2147483647"),
        "PID 1 of task a is not the pause: {init}"
    );
    let ps_one_b = exec(&one_b, &["ps", "-o", "pid,args"]);
    assert!(ps_one_b.contains("sleep 1004"), "{ps_one_b}");
    assert!(
        !ps_one_b.contains("sleep 1001") && !ps_one_b.contains("sleep 1002"),
        "task b sees task a: {ps_one_b}"
    );

    // The kernel's namespace ids: equal within a task (and the pause's own, read on the host
    // from its PID), different across tasks.
    let ns = |id: &str, kind: &str| exec(id, &["readlink", &format!("/proc/self/ns/{kind}")]);
    let host_ns = |id: &str, kind: &str| {
        let pid = inspect(id)["State"]["Pid"].as_i64().unwrap();
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    for kind in ["ipc", "pid"] {
        let in_a = ns(&one_a, kind);
        assert_eq!(in_a, ns(&two_a, kind), "{kind}");
        assert_eq!(in_a, host_ns(&pause_a, kind), "{kind}: not the pause's");
        assert_ne!(in_a, ns(&one_b, kind), "{kind}: shared across tasks");
        assert_eq!(ns(&one_b, kind), host_ns(&pause_b, kind), "{kind}");
    }

    // What Docker was asked for.
    let pause = inspect(&pause_a);
    assert_eq!(pause["HostConfig"]["IpcMode"], "shareable");
    assert_eq!(pause["Config"]["Image"], DEFAULT_PAUSE_IMAGE);
    for user in [&one_a, &two_a] {
        let u = inspect(user);
        let want = format!("container:{pause_a}");
        assert_eq!(u["HostConfig"]["PidMode"], want.as_str());
        assert_eq!(u["HostConfig"]["IpcMode"], want.as_str());
        // Created only once the pause ran.
        assert!(
            time_of(&u["Created"]) >= time_of(&pause["State"]["StartedAt"]),
            "{user} created before the pause started"
        );
    }

    // Stop task a: the pause stops last, after every user container, and then all go.
    eng.engine.stop(&a).await.unwrap();
    let changes = eng
        .wait_changes("task a STOPPED", Duration::from_secs(60), |c| {
            task_reached(c, &a, ReportStatus::Stopped)
        })
        .await;
    let pause = inspect(&pause_a);
    assert_eq!(pause["State"]["Running"], false, "pause runs after STOPPED");
    assert_eq!(
        pause["State"]["ExitCode"], 0,
        "the pause image exits 0 on SIGTERM"
    );
    for user in [&one_a, &two_a] {
        let u = inspect(user);
        assert!(
            time_of(&pause["State"]["FinishedAt"]) >= time_of(&u["State"]["FinishedAt"]),
            "the pause stopped before {user}"
        );
    }
    // Task b is untouched and still shares its own namespaces.
    assert_eq!(inspect(&pause_b)["State"]["Running"], true);
    no_pause_reported(&changes);
    for arn in [&a, &b] {
        let names: Vec<&str> = changes
            .iter()
            .filter(|c| &c.task_arn == arn)
            .flat_map(|c| c.containers.iter().map(|c| c.container_name.as_str()))
            .collect();
        assert!(
            names.contains(&"one") && names.contains(&"two"),
            "{names:?}"
        );
    }
    assert_each_once(&changes);

    // Cleanup removes the pause with the others.
    wait_removed(&a).await;
    eng.engine.stop(&b).await.unwrap();
    eng.wait_changes("task b STOPPED", Duration::from_secs(60), |c| {
        task_reached(c, &b, ReportStatus::Stopped)
    })
    .await;
    no_pause_reported(&eng.changes());
    wait_removed(&b).await;
    // What Docker was asked, counted at the engine's runtime: one pause per task and each
    // container created, started, stopped and removed exactly once.
    let after = eng.calls.snapshot();
    let count = |calls: &[(&str, u64)], op: &str| {
        calls.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
    };
    for op in ["create", "start", "stop", "remove"] {
        assert_eq!(
            count(&after, op) - count(&before, op),
            6,
            "{op}: 2 tasks of 2 containers and a pause each: {after:?}"
        );
    }
    eng.shutdown().await;
}

/// `pidMode: task` alone shares the PID namespace and leaves IPC to Docker's default: the pause
/// is not `shareable` and the user containers' IPC namespaces differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_mode_task_alone_leaves_ipc_private() {
    pause_image();
    let run = run_id("pidonly");
    let _cleanup = Cleanup::new(&run);
    let a = arn_of(&run, 0);
    let _tasks = TaskCleanup(vec![a.clone()]);
    let eng = start(settings()).await;
    eng.engine
        .deliver(shared_task(
            &run,
            &a,
            json!({"pidMode": "task"}),
            [1011, 1012],
        ))
        .await
        .unwrap();
    eng.wait_changes("task RUNNING", Duration::from_secs(60), |c| {
        task_reached(c, &a, ReportStatus::Running)
    })
    .await;
    let pause = id_of(&a, NAMESPACE_PAUSE_NAME).unwrap();
    let one = id_of(&a, "one").unwrap();
    let two = id_of(&a, "two").unwrap();
    assert_ne!(inspect(&pause)["HostConfig"]["IpcMode"], "shareable");
    let u = inspect(&one);
    assert_eq!(
        u["HostConfig"]["PidMode"],
        format!("container:{pause}").as_str()
    );
    assert_ne!(
        u["HostConfig"]["IpcMode"],
        format!("container:{pause}").as_str()
    );
    assert!(exec(&one, &["ps", "-o", "args"]).contains("sleep 1012"));
    let ipc = |id: &str| exec(id, &["readlink", "/proc/self/ns/ipc"]);
    assert_ne!(ipc(&one), ipc(&two));
    eng.engine.stop(&a).await.unwrap();
    let changes = eng
        .wait_changes("task STOPPED", Duration::from_secs(60), |c| {
            task_reached(c, &a, ReportStatus::Stopped)
        })
        .await;
    no_pause_reported(&changes);
    eng.shutdown().await;
}

/// Without the pause image the task stops with a reason naming it, nothing of it reaches Docker
/// and the image is never pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pause_image_stops_the_task_and_creates_nothing() {
    let missing = "ecs-hostd-test/no-such-pause:absent";
    let gone = docker_cli(None)
        .args(["image", "inspect", missing])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(false);
    assert!(gone, "{missing} exists in Docker");
    let run = run_id("nopause");
    let _cleanup = Cleanup::new(&run);
    let a = arn_of(&run, 0);
    let _tasks = TaskCleanup(vec![a.clone()]);
    let mut s = settings();
    s.engine.pause_image = missing.into();
    // A pull would be tried under the default behaviour: the pause image must never be.
    s.engine.image_pull_behavior = ecs_hostd::config::PullBehavior::Default;
    let eng = start(s).await;
    let before = eng.calls.snapshot();
    eng.engine
        .deliver(shared_task(
            &run,
            &a,
            json!({"ipcMode": "task"}),
            [1021, 1022],
        ))
        .await
        .unwrap();
    let changes = eng
        .wait_changes("task STOPPED", Duration::from_secs(30), |c| {
            task_reached(c, &a, ReportStatus::Stopped)
        })
        .await;
    let stop = changes
        .iter()
        .find(|c| c.task_arn == a && c.status == ReportStatus::Stopped)
        .unwrap();
    let reason = stop.reason.clone().unwrap_or_default();
    assert!(reason.contains(missing), "{reason}");
    assert!(!task_reached(&changes, &a, ReportStatus::Running));
    assert!(
        containers_with(None, &format!("com.amazonaws.ecs.task-arn={a}")).is_empty(),
        "something of the task reached Docker"
    );
    for name in ["one", "two"] {
        assert!(
            container_change(&changes, &a, name, ReportStatus::Stopped).is_some(),
            "{name} not reported STOPPED"
        );
    }
    no_pause_reported(&changes);
    let after = eng.calls.snapshot();
    let count = |calls: &[(&str, u64)], op: &str| {
        calls.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
    };
    for op in ["pull", "create"] {
        assert_eq!(
            count(&after, op) - count(&before, op),
            0,
            "{op} was called: {after:?}"
        );
    }
    eng.shutdown().await;
}
