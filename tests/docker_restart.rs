//! Docker daemon restarts (issue 3): after recovery the container set equals the desired set with
//! no duplicates, and every state change is emitted exactly once.
//!
//! Each test runs its own dockerd (`common/private_docker.rs`: own socket, data root, exec root,
//! pidfile, network and mount namespaces) and restarts it by signalling that dockerd's pid only;
//! the shared engine must answer before and after. The engine runs in-process on the private
//! engine with a recording sink.
//!
//! - live-restore on (SIGTERM and SIGKILL): containers survive the outage and are re-adopted with
//!   nothing reported, while a container killed during the outage is reported STOPPED once;
//! - live-restore off (SIGTERM: dockerd stops the containers; SIGKILL: the restarted dockerd finds
//!   them dead): the task is STOPPED once with a reason and never started again;
//! - an engine that starts while Docker is down learns Docker's data root once it answers.

#[path = "common/docker.rs"]
mod common;
#[path = "common/private_docker.rs"]
mod private_docker;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::api::TaskView;
use ecs_hostd::tasks::{ReportStatus, TaskChange, TaskControl};
use private_docker::{PrivateDocker, process_alive, shared_engine_answers};

const WAIT: Duration = Duration::from_secs(60);

fn arn(run: &str, name: &str) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-{name}")
}

/// A container that exits 0 on SIGTERM.
fn looping(run: &str, name: &str, image: &str, essential: bool) -> serde_json::Value {
    container(
        run,
        name,
        image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        essential,
        serde_json::json!({}),
    )
}

/// A task without a network (the private engine's namespace has none to offer anyway).
fn net_none(arn: &str, containers: Vec<serde_json::Value>) -> serde_json::Value {
    let mut t = task(arn, "restart", containers);
    t["networkMode"] = serde_json::json!("none");
    t
}

/// The task's containers on the private engine by container name: (id, running). Fails on a
/// duplicate.
fn docker_set(pd: &PrivateDocker, arn: &str) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    for id in containers_with(Some(&pd.host), &format!("com.amazonaws.ecs.task-arn={arn}")) {
        let text = pd.run(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"com.amazonaws.ecs.container-name\"}} {{.State.Running}}",
            &id,
        ]);
        let (name, running) = text.split_once(' ').unwrap();
        let prev = out.insert(name.to_owned(), (id.clone(), running == "true"));
        assert!(prev.is_none(), "two containers for {name} of {arn}");
    }
    out
}

fn pid_of(pd: &PrivateDocker, id: &str) -> u32 {
    pd.run(&["inspect", "-f", "{{.State.Pid}}", id])
        .parse()
        .unwrap()
}

/// How often container `container` of `arn` was reported with status `s`.
fn reported(changes: &[TaskChange], arn: &str, container: &str, s: ReportStatus) -> usize {
    changes
        .iter()
        .filter(|c| c.task_arn == arn)
        .flat_map(|c| c.containers.iter())
        .filter(|k| k.container_name == container && k.status == s)
        .count()
}

/// The task-level transitions of `arn` (PENDING left out). A change that only carries container
/// news repeats the task's current status: not a transition (`assert_each_once` checks those).
fn transitions(changes: &[TaskChange], arn: &str) -> Vec<ReportStatus> {
    let mut out: Vec<ReportStatus> = changes
        .iter()
        .filter(|c| c.task_arn == arn && c.status != ReportStatus::Pending)
        .map(|c| c.status)
        .collect();
    out.dedup();
    out
}

/// Keeps Docker down for two resync periods, so the engine's listing fails at least once and it
/// waits for Docker. Not an assertion: the assertions come after, on what it reported.
async fn outage() {
    tokio::time::sleep(settings().resync * 2 + Duration::from_millis(500)).await;
}

/// [`outage`], checks nothing was reported meanwhile (`reported_before` changes were), then
/// starts the private daemon again.
async fn silent_outage_then_start(r: &Running, pd: &mut PrivateDocker, reported_before: usize) {
    outage().await;
    assert_eq!(
        r.changes().len(),
        reported_before,
        "nothing is reported while Docker is down: {:#?}",
        &r.changes()[reported_before..]
    );
    blocking(|| pd.start_daemon());
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn live_restore(sig: &str) {
    let image = test_image();
    let mut pd = PrivateDocker::start(true);
    pd.load_image(&image);
    let run = run_id(&format!("lr{}", sig.to_lowercase()));
    let r = start_on(settings(), pd.client()).await;
    let keep = arn(&run, "keep");
    let dies = arn(&run, "dies");
    for a in [&keep, &dies] {
        let t = net_none(a, vec![looping(&run, "main", &image, true)]);
        r.engine.deliver(t).await.unwrap();
    }
    r.wait_changes("both RUNNING", WAIT, |c| {
        task_reached(c, &keep, ReportStatus::Running)
            && task_reached(c, &dies, ReportStatus::Running)
    })
    .await;
    let keep_before = docker_set(&pd, &keep);
    let dies_before = docker_set(&pd, &dies);
    let keep_pid = pid_of(&pd, &keep_before["main"].0);
    let dies_pid = pid_of(&pd, &dies_before["main"].0);
    let reported_before = r.changes().len();

    blocking(|| pd.stop_daemon(sig));
    assert!(
        process_alive(keep_pid) && process_alive(dies_pid),
        "live-restore keeps the containers running while dockerd is down"
    );
    // One container exits while Docker is down.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &dies_pid.to_string()])
        .status();
    let start = Instant::now();
    while process_alive(dies_pid) {
        assert!(
            start.elapsed() < WAIT,
            "container process {dies_pid} survived SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    silent_outage_then_start(&r, &mut pd, reported_before).await;

    let ch = r
        .wait_changes(
            "the container that died during the outage STOPPED",
            WAIT,
            |c| task_reached(c, &dies, ReportStatus::Stopped),
        )
        .await;
    let main = container_change(&ch, &dies, "main", ReportStatus::Stopped).unwrap();
    assert_eq!(main.exit_code, Some(137), "{main:?}");
    let stopped = ch
        .iter()
        .find(|c| c.task_arn == dies && c.status == ReportStatus::Stopped)
        .unwrap();
    assert!(
        stopped.reason.as_deref().is_some_and(|r| !r.is_empty()),
        "{stopped:?}"
    );
    // The listing that saw the exit also saw the survivor: re-adopted as it was, nothing said.
    assert_eq!(
        docker_set(&pd, &keep),
        keep_before,
        "survivor replaced or stopped"
    );
    assert!(process_alive(keep_pid));
    assert!(
        ch[reported_before..].iter().all(|c| c.task_arn != keep),
        "spurious change for the survivor: {:#?}",
        &ch[reported_before..]
    );
    assert_eq!(docker_set(&pd, &dies).len(), 1);
    assert_eq!(
        containers_with(Some(&pd.host), &format!("{TEST_LABEL}={run}")).len(),
        2,
        "no duplicate containers"
    );

    r.engine.stop(&keep).await.unwrap();
    let ch = r
        .wait_changes("survivor STOPPED", WAIT, |c| {
            task_reached(c, &keep, ReportStatus::Stopped)
        })
        .await;
    let keep_main = container_change(&ch, &keep, "main", ReportStatus::Stopped).unwrap();
    assert_eq!(keep_main.exit_code, Some(0));
    assert_each_once(&ch);
    for a in [&keep, &dies] {
        assert_eq!(
            transitions(&ch, a),
            [ReportStatus::Running, ReportStatus::Stopped],
            "{a}: {ch:#?}"
        );
        for s in [ReportStatus::Running, ReportStatus::Stopped] {
            assert_eq!(reported(&ch, a, "main", s), 1, "{a} main {s:?}: {ch:#?}");
        }
    }
    r.shutdown().await;
    drop(pd);
    assert!(
        shared_engine_answers(),
        "the shared Docker engine stopped answering"
    );
}

async fn no_live_restore(sig: &str) {
    let image = test_image();
    let mut pd = PrivateDocker::start(false);
    pd.load_image(&image);
    let run = run_id(&format!("nolr{}", sig.to_lowercase()));
    let r = start_on(settings(), pd.client()).await;
    let t = arn(&run, "t");
    let task = net_none(
        &t,
        vec![
            looping(&run, "main", &image, true),
            looping(&run, "side", &image, false),
        ],
    );
    r.engine.deliver(task).await.unwrap();
    r.wait_changes("RUNNING", WAIT, |c| {
        task_reached(c, &t, ReportStatus::Running)
    })
    .await;
    let before = docker_set(&pd, &t);
    let reported_before = r.changes().len();

    blocking(|| pd.stop_daemon(sig));
    silent_outage_then_start(&r, &mut pd, reported_before).await;

    let ch = r
        .wait_changes("STOPPED after the restart", WAIT, |c| {
            task_reached(c, &t, ReportStatus::Stopped)
        })
        .await;
    let stopped = ch
        .iter()
        .find(|c| c.task_arn == t && c.status == ReportStatus::Stopped)
        .unwrap();
    let reason = stopped.reason.clone().unwrap_or_default();
    assert!(!reason.is_empty(), "STOPPED without a reason: {stopped:?}");
    // SIGTERM: dockerd stopped the container on its way down; SIGKILL: the restarted dockerd
    // stopped what it found still running. Either way the exit code reported is Docker's.
    let main = container_change(&ch, &t, "main", ReportStatus::Stopped).unwrap();
    let docker_code: i32 = pd
        .run(&["inspect", "-f", "{{.State.ExitCode}}", &before["main"].0])
        .parse()
        .unwrap();
    assert_eq!(main.exit_code, Some(docker_code), "{main:?}");

    // A barrier: a new task runs to RUNNING, so the engine has reconciled the stopped one
    // several times since. It must not have been started again.
    let after = arn(&run, "after");
    r.engine
        .deliver(net_none(&after, vec![looping(&run, "main", &image, true)]))
        .await
        .unwrap();
    let ch = r
        .wait_changes("barrier task RUNNING", WAIT, |c| {
            task_reached(c, &after, ReportStatus::Running)
        })
        .await;
    let set = docker_set(&pd, &t);
    assert_eq!(
        set.iter()
            .map(|(k, (id, _))| (k.clone(), id.clone()))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|(k, (id, _))| (k.clone(), id.clone()))
            .collect::<Vec<_>>(),
        "containers replaced"
    );
    assert!(
        set.values().all(|(_, running)| !running),
        "a STOPPED task was restarted: {set:?}"
    );
    assert_eq!(
        containers_with(Some(&pd.host), &format!("{TEST_LABEL}={run}")).len(),
        3,
        "no duplicate containers"
    );
    assert_each_once(&ch);
    assert_eq!(
        transitions(&ch, &t),
        [ReportStatus::Running, ReportStatus::Stopped],
        "{ch:#?}"
    );
    for name in ["main", "side"] {
        for s in [ReportStatus::Running, ReportStatus::Stopped] {
            assert_eq!(reported(&ch, &t, name, s), 1, "{name} {s:?}: {ch:#?}");
        }
    }
    assert!(
        !ch.iter()
            .skip_while(|c| !(c.task_arn == t && c.status == ReportStatus::Stopped))
            .any(|c| c.task_arn == t
                && c.containers
                    .iter()
                    .any(|k| k.status == ReportStatus::Running)),
        "RUNNING reported after STOPPED: {ch:#?}"
    );

    r.engine.stop(&after).await.unwrap();
    r.wait_changes("barrier STOPPED", WAIT, |c| {
        task_reached(c, &after, ReportStatus::Stopped)
    })
    .await;
    r.shutdown().await;
    drop(pd);
    assert!(
        shared_engine_answers(),
        "the shared Docker engine stopped answering"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_restore_sigterm_readopts_and_reports_an_outage_exit_once() {
    live_restore("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_restore_sigkill_readopts_and_reports_an_outage_exit_once() {
    live_restore("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_live_restore_sigterm_stops_tasks_once_and_never_restarts_them() {
    no_live_restore("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_live_restore_sigkill_stops_tasks_once_and_never_restarts_them() {
    no_live_restore("KILL").await;
}

/// An engine started while Docker is down learns the data root (`docker info` DockerRootDir)
/// once Docker answers: the introspection view shows task volumes under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_the_data_root_once_docker_answers() {
    let image = test_image();
    let mut pd = PrivateDocker::start(false);
    pd.load_image(&image);
    // (bollard needs the socket to exist when the client is made; the app waits for it.)
    let client = pd.client();
    blocking(|| pd.stop_daemon("TERM"));
    let run = run_id("root");
    let r = start_on(settings(), client).await;
    let t = arn(&run, "vol");
    let mut c = looping(&run, "main", &image, true);
    c["mountPoints"] =
        serde_json::json!([{"sourceVolume": "scratch", "containerPath": "/scratch"}]);
    let mut task = net_none(&t, vec![c]);
    task["volumes"] = serde_json::json!([{"name": "scratch", "host": {}}]);
    r.engine.deliver(task).await.unwrap();
    outage().await;
    blocking(|| pd.start_daemon());
    r.wait_changes("RUNNING", WAIT, |c| {
        task_reached(c, &t, ReportStatus::Running)
    })
    .await;
    let view = r.engine.view();
    let tasks = view.tasks();
    let vol = &tasks
        .iter()
        .find(|x| x.arn == t)
        .expect("task in the view")
        .containers[0]
        .volumes[0];
    let root = pd.data_root();
    assert!(
        vol.source
            .starts_with(&format!("{}/volumes/", root.display())),
        "volume source {:?} is not under the private engine's data root {}",
        vol.source,
        root.display()
    );
    let docker_says = pd.run(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        vol.docker_name.as_deref().unwrap(),
    ]);
    assert_eq!(vol.source, docker_says);
    r.engine.stop(&t).await.unwrap();
    r.wait_changes("STOPPED", WAIT, |c| {
        task_reached(c, &t, ReportStatus::Stopped)
    })
    .await;
    r.shutdown().await;
    drop(pd);
    assert!(shared_engine_answers());
}
