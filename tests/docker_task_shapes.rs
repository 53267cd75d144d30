//! Real task shapes against the real Docker engine (issue 24): a ten-container `links` +
//! `dependsOn` graph that must neither be judged vanished nor leave containers behind, a batch
//! of stops that must start at once and ask Docker once per container, an essential container
//! that cannot be created, two host ports for one container port, `dockerConfig` keys in ECS's
//! spelling, and tasks that ask for what the engine does not implement or can never fit.
//!
//! After every STOPPED report the tests ask Docker itself whether any container of the task
//! still runs.

#[path = "common/docker.rs"]
mod common;
#[path = "common/shapes.rs"]
mod shapes;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::tasks::{ReportStatus, TaskChange, TaskControl};
use serde_json::{Value, json};
use shapes::LINKED_GRAPH;

/// A container that exits at once on SIGTERM.
const GRACEFUL: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 0.2; done",
];

/// A port free on 127.0.0.1 now (the kernel's pick; never the same twice in a row).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn arn_of(run: &str, n: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-{n}")
}

/// Ids of the task's containers that Docker shows running now.
fn running_in_docker(arn: &str) -> Vec<String> {
    let out = docker_cli(None)
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.amazonaws.ecs.task-arn={arn}"),
            "--filter",
            "status=running",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every container of the task that Docker has, in any state.
fn containers_in_docker(arn: &str) -> Vec<String> {
    containers_with(None, &format!("com.amazonaws.ecs.task-arn={arn}"))
}

fn stopped_containers(changes: &[TaskChange], arn: &str) -> Vec<(String, Option<String>)> {
    changes
        .iter()
        .filter(|c| c.task_arn == arn)
        .flat_map(|c| c.containers.iter())
        .filter(|c| c.status == ReportStatus::Stopped)
        .map(|c| (c.container_name.clone(), c.reason.clone()))
        .collect()
}

/// The ten-container graph of issue 24: every container essential, `dependsOn` START, each
/// linking to what it depends on except gateway, which depends on the eight others and links
/// to six of them.
fn graph_task(run: &str, arn: &str, image: &str) -> Value {
    let containers = LINKED_GRAPH
        .iter()
        .map(|(name, deps, links)| {
            let mut c = container(run, name, image, GRACEFUL, true, json!({}));
            c["dependsOn"] = deps
                .iter()
                .map(|d| json!({"containerName": d, "condition": "START"}))
                .collect();
            c["links"] = links.iter().map(|l| json!(l)).collect();
            c["stopTimeout"] = json!(2);
            c
        })
        .collect();
    task(arn, "graph", containers)
}

/// Issue 24 item 1: containers that others link to carry the linkers' aliases among their
/// Docker names (`/<linker>/<alias>`, sorted before their own); the engine must still find them,
/// never judge them vanished, and never report STOPPED while any of them runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_dependency_graph_runs_and_stops_with_nothing_left_running() {
    let image = test_image();
    let run = run_id("graph");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    for round in 0..3 {
        let arn = arn_of(&run, round);
        eng.engine
            .deliver(graph_task(&run, &arn, &image))
            .await
            .unwrap();
        eng.wait_changes("graph RUNNING", Duration::from_secs(90), |c| {
            task_reached(c, &arn, ReportStatus::Running)
                || task_reached(c, &arn, ReportStatus::Stopped)
        })
        .await;
        // Several listings later (the test resync is 2 s), every container still runs and none
        // was reported stopped.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let changes = eng.changes();
        assert!(
            !task_reached(&changes, &arn, ReportStatus::Stopped),
            "round {round}: the task was reported STOPPED while running: {:?}",
            stopped_containers(&changes, &arn)
        );
        assert_eq!(running_in_docker(&arn).len(), 10, "round {round}");

        eng.engine.stop(&arn).await.unwrap();
        let changes = eng
            .wait_changes("graph STOPPED", Duration::from_secs(60), |c| {
                task_reached(c, &arn, ReportStatus::Stopped)
            })
            .await;
        // At the STOPPED report, Docker runs none of the task's containers.
        assert_eq!(
            running_in_docker(&arn),
            Vec::<String>::new(),
            "round {round}"
        );
        let stopped = stopped_containers(&changes, &arn);
        assert_eq!(stopped.len(), 10, "round {round}: {stopped:?}");
        for (name, reason) in &stopped {
            assert!(
                reason
                    .as_deref()
                    .is_none_or(|r| !r.contains("ContainerVanishedError")),
                "round {round}: {name} judged vanished: {reason:?}"
            );
        }
        assert_each_once(&changes);
    }
    eng.shutdown().await;
}

/// Starts `tasks` one-container tasks whose container ignores SIGTERM (busybox `sleep` as PID
/// 1: each stop takes its 2 s grace, then SIGKILL) and waits until all run.
async fn sleepers(eng: &Running, run: &str, tasks: usize) -> Vec<String> {
    let image = test_image();
    let arns: Vec<String> = (0..tasks).map(|n| arn_of(run, n)).collect();
    for arn in &arns {
        let mut c = container(run, "app", &image, &["sleep", "3600"], true, json!({}));
        c["stopTimeout"] = json!(2);
        eng.engine
            .deliver(task(arn, "stops", vec![c]))
            .await
            .unwrap();
    }
    eng.wait_changes("every task RUNNING", Duration::from_secs(60), |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Running))
    })
    .await;
    arns
}

/// Stops every task at once; returns how long until all were reported STOPPED (failing after
/// `deadline`) and the Docker calls made from the stop until 2 s after (so that a loop that
/// re-issues a call has time to show itself).
async fn stop_all(
    eng: &Running,
    arns: &[String],
    deadline: Duration,
) -> (Duration, Vec<(&'static str, u64)>) {
    let before = eng.calls.snapshot();
    let started = Instant::now();
    for arn in arns {
        eng.engine.stop(arn).await.unwrap();
    }
    eng.wait_changes("every task STOPPED", deadline, |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Stopped))
    })
    .await;
    let took = started.elapsed();
    for arn in arns {
        assert!(running_in_docker(arn).is_empty(), "{arn} still runs");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delta = eng
        .calls
        .snapshot()
        .iter()
        .zip(&before)
        .map(|((op, a), (_, b))| (*op, a - b))
        .filter(|(_, n)| *n > 0)
        .collect();
    (took, delta)
}

fn calls_of(delta: &[(&str, u64)], op: &str) -> u64 {
    delta.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
}

/// Issue 24 item 3: a batch of tasks told to stop at once all start stopping at once. The
/// periodic resync is 10 minutes here, and no listing has shown the containers since their own
/// starts, so nothing but the desired-status change itself can start the stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_stops_starts_at_once() {
    let run = run_id("batch");
    let _cleanup = Cleanup::new(&run);
    let mut s = settings();
    s.resync = Duration::from_secs(600);
    let eng = start(s).await;
    let arns = sleepers(&eng, &run, 10).await;
    // 2 s of grace each, all in parallel: a generous convergence deadline, far below the resync.
    let (took, delta) = stop_all(&eng, &arns, Duration::from_secs(20)).await;
    println!("10 stops in {took:?}; Docker calls: {delta:?}");
    assert_eq!(calls_of(&delta, "stop"), 10, "{delta:?}");
    assert_each_once(&eng.changes());
    eng.shutdown().await;
}

/// Issue 24 item 2: containers that a listing showed running are stopped once each. The stop
/// storm re-stopped a stopped container from that older listing, every few milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_container_is_stopped_once_and_docker_calls_stay_linear() {
    const TASKS: usize = 10;
    let run = run_id("storm");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let before = eng.calls.snapshot();
    let arns = sleepers(&eng, &run, TASKS).await;
    // The start burst: one create and one start per container, and the start's own inspection
    // (listings reuse it, they do not inspect the container again).
    let started: Vec<(&str, u64)> = eng
        .calls
        .snapshot()
        .iter()
        .zip(&before)
        .map(|((op, a), (_, b))| (*op, a - b))
        .filter(|(_, n)| *n > 0)
        .collect();
    println!("{TASKS} starts; Docker calls: {started:?}");
    assert_eq!(calls_of(&started, "create"), TASKS as u64, "{started:?}");
    assert_eq!(calls_of(&started, "start"), TASKS as u64, "{started:?}");
    assert!(
        calls_of(&started, "inspect") <= TASKS as u64 + 2,
        "inspections while {TASKS} tasks started: {started:?}"
    );
    // Past the test resync (2 s): the engine's last listing shows every container running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (took, delta) = stop_all(&eng, &arns, Duration::from_secs(20)).await;
    println!("{TASKS} stops in {took:?}; Docker calls: {delta:?}");
    assert_eq!(
        calls_of(&delta, "stop"),
        TASKS as u64,
        "one stop per container: {delta:?}"
    );
    // Each stop's own inspection tells the container's end; listings do not inspect it again.
    assert!(
        calls_of(&delta, "inspect") <= TASKS as u64 + 2,
        "inspections while {TASKS} tasks stopped: {delta:?}"
    );
    // Listings come from the stops and from Docker's die events (other tests' containers on
    // the shared engine wake it too): bounded, never a loop.
    assert!(
        calls_of(&delta, "list") <= 4 * TASKS as u64 + 10,
        "listings while {TASKS} tasks stopped: {delta:?}"
    );
    assert_each_once(&eng.changes());
    eng.shutdown().await;
}

/// Issue 24 item 4: an essential container that cannot be created (its link names a container
/// the task does not have) stops the task, which is never reported RUNNING on the way, even
/// though its other container started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_essential_container_cannot_be_created_is_never_running() {
    let image = test_image();
    let run = run_id("nolink");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let arns: Vec<String> = (0..5).map(|n| arn_of(&run, n)).collect();
    for arn in &arns {
        let mut app = container(&run, "app", &image, GRACEFUL, true, json!({}));
        app["links"] = json!(["not-in-this-task"]);
        let side = container(&run, "side", &image, GRACEFUL, false, json!({}));
        eng.engine
            .deliver(task(arn, "nolink", vec![side, app]))
            .await
            .unwrap();
    }
    let changes = eng
        .wait_changes("every task STOPPED", Duration::from_secs(60), |c| {
            arns.iter()
                .all(|a| task_reached(c, a, ReportStatus::Stopped))
        })
        .await;
    for arn in &arns {
        assert!(
            !task_reached(&changes, arn, ReportStatus::Running),
            "{arn} was reported RUNNING after its essential container failed: {changes:#?}"
        );
        let last = changes.iter().rfind(|c| &c.task_arn == arn).unwrap();
        assert_eq!(last.status, ReportStatus::Stopped);
        let app = container_change(&changes, arn, "app", ReportStatus::Stopped).unwrap();
        assert!(
            app.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("CannotCreateContainerError")),
            "{app:?}"
        );
        assert!(running_in_docker(arn).is_empty(), "{arn}");
    }
    assert_each_once(&changes);
    eng.shutdown().await;
}

/// Issue 24 item 5: two host ports for one container port are both bound and both reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_ports_for_one_container_port_are_both_bound_and_reported() {
    let image = test_image();
    let run = run_id("ports");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let (p1, p2) = (free_port(), free_port());
    let arn = arn_of(&run, 0);
    let mut web = container(
        &run,
        "web",
        &image,
        &[
            "sh",
            "-c",
            "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ],
        true,
        json!({}),
    );
    web["portMappings"] = json!([
        {"containerPort": 8080, "hostPort": p1, "protocol": "tcp"},
        {"containerPort": 8080, "hostPort": p2, "protocol": "tcp"}
    ]);
    eng.engine
        .deliver(task(&arn, "ports", vec![web]))
        .await
        .unwrap();
    let changes = eng
        .wait_changes("RUNNING", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Running)
        })
        .await;
    let web = container_change(&changes, &arn, "web", ReportStatus::Running).unwrap();
    let mut reported: Vec<(Option<u16>, Option<u16>)> = web
        .network_bindings
        .iter()
        .map(|b| (b.container_port, b.host_port))
        .collect();
    reported.sort();
    let mut want = vec![(Some(8080), Some(p1)), (Some(8080), Some(p2))];
    want.sort();
    assert_eq!(reported, want);
    for p in [p1, p2] {
        assert_eq!(
            http_get(p, "/index.html", Duration::from_secs(10))
                .await
                .trim(),
            "ok"
        );
    }
    eng.engine.stop(&arn).await.unwrap();
    eng.wait_changes("STOPPED", Duration::from_secs(30), |c| {
        task_reached(c, &arn, ReportStatus::Stopped)
    })
    .await;
    eng.shutdown().await;
}

/// Issue 24 item 6: `dockerConfig` keys in another spelling than Docker's reach Docker, seen
/// both by `docker inspect` and by the process inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_keys_match_case_insensitively() {
    let image = test_image();
    let run = run_id("keys");
    let _cleanup = Cleanup::new(&run);
    let out = tempfile::tempdir().unwrap();
    let eng = start(settings()).await;
    let arn = arn_of(&run, 0);
    let mut app = container(
        &run,
        "app",
        &image,
        &[
            "sh",
            "-c",
            "id -u > /out/uid; ulimit -n > /out/nofile; pwd > /out/cwd; exec sleep 3600",
        ],
        true,
        // ECS's renderings and any other case: Go's decoder (Docker's, the official agent's)
        // matches them without regard to case.
        json!({"ulimits": [{"name": "nofile", "soft": 1234, "hard": 1234}],
               "CAPADD": ["NET_ADMIN"]}),
    );
    app["dockerConfig"]["config"] = json!(
        json!({"Labels": {TEST_LABEL: run}, "user": "4321", "WORKINGDIR": "/tmp"}).to_string()
    );
    app["mountPoints"] = json!([{"sourceVolume": "out", "containerPath": "/out"}]);
    app["stopTimeout"] = json!(1);
    let mut t = task(&arn, "keys", vec![app]);
    t["volumes"] =
        json!([{"name": "out", "host": {"sourcePath": out.path().display().to_string()}}]);
    // The process writes as uid 4321.
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    eng.engine.deliver(t).await.unwrap();
    let changes = eng
        .wait_changes("RUNNING", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Running)
        })
        .await;
    let id = container_change(&changes, &arn, "app", ReportStatus::Running)
        .unwrap()
        .runtime_id
        .unwrap();
    let i = eng.docker.inspect_container(&id, None).await.unwrap();
    let config = i.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("4321"));
    assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
    let host = i.host_config.unwrap();
    assert_eq!(host.cap_add, Some(vec!["NET_ADMIN".to_string()]));
    let ulimit = &host.ulimits.unwrap()[0];
    assert_eq!(
        (ulimit.name.as_deref(), ulimit.soft, ulimit.hard),
        (Some("nofile"), Some(1234), Some(1234))
    );
    let read = |f: &str| {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(out.path().join(f))
                && !s.is_empty()
            {
                return s.trim().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "/out/{f} never written"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(read("uid"), "4321");
    assert_eq!(read("nofile"), "1234");
    assert_eq!(read("cwd"), "/tmp");
    eng.engine.stop(&arn).await.unwrap();
    eng.wait_changes("STOPPED", Duration::from_secs(30), |c| {
        task_reached(c, &arn, ReportStatus::Stopped)
    })
    .await;
    eng.shutdown().await;
}

/// Issue 24 items 7 and 8: a task asking for a feature the engine does not implement, or for
/// what this instance can never give, stops within seconds with a reason naming it; Docker never
/// sees a container of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_or_impossible_tasks_stop_with_a_reason_and_create_nothing() {
    let image = test_image();
    let run = run_id("refuse");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let base = |n: usize, edit: &dyn Fn(&mut Value, &mut Value)| {
        let mut c = container(&run, "app", &image, GRACEFUL, true, json!({}));
        let mut t = task(&arn_of(&run, n), "refuse", vec![]);
        edit(&mut t, &mut c);
        t["containers"] = json!([c]);
        t
    };
    type Edit = Box<dyn Fn(&mut Value, &mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "task IAM roles (taskRoleArn)",
            Box::new(|t: &mut Value, _: &mut Value| {
                t["roleCredentials"] = json!({"credentialsId": "id", "roleArn": "arn:aws:iam::123456789012:role/app",
                    "accessKeyId": "ASIAX", "secretAccessKey": "s", "sessionToken": "t"});
            }),
        ),
        (
            "the awsvpc network mode (networkMode)",
            Box::new(|t: &mut Value, c: &mut Value| {
                t["networkMode"] = json!("awsvpc");
                c["portMappings"] = json!([{"containerPort": 22, "hostPort": 22}]);
            }),
        ),
        (
            // Secrets are implemented; without an execution role they cannot be fetched.
            "ssm secret resource: unable to find execution role credentials",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["secrets"] = json!([{"name": "DB", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db",
                    "provider": "ssm", "region": "us-east-1", "type": "ENVIRONMENT_VARIABLE", "target": "CONTAINER"}]);
            }),
        ),
        (
            // Implemented too; the login cannot be read without an execution role.
            "CannotPullContainerError: asm resource: unable to find execution role credentials",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["registryAuthentication"] = json!({"type": "asm", "asmAuthData": {
                    "credentialsParameter": "arn:aws:secretsmanager:us-east-1:123456789012:secret:reg", "region": "us-east-1"}});
            }),
        ),
        (
            "environment file resource: unable to find execution role credentials",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["environmentFiles"] = json!([{"type": "s3", "value": "arn:aws:s3:::b/app.env"}]);
            }),
        ),
        (
            // Docker health checks run (tests/e2e_health.rs); ECS knows no other type.
            "this kind of container health check (containers[app].healthCheckType: ecs-managed)",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["healthCheckType"] = json!("ecs-managed");
            }),
        ),
        (
            "FireLens log routing (containers[app].firelensConfiguration)",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["firelensConfiguration"] = json!({"type": "fluentbit"});
            }),
        ),
        (
            "host port 22/tcp is reserved on this instance",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["portMappings"] = json!([{"containerPort": 80, "hostPort": 22}]);
            }),
        ),
        (
            "MiB of memory and the instance offers",
            Box::new(|_: &mut Value, c: &mut Value| {
                c["memory"] = json!(1_000_000);
            }),
        ),
    ];
    let started = Instant::now();
    for (n, (_, edit)) in cases.iter().enumerate() {
        eng.engine.deliver(base(n, edit.as_ref())).await.unwrap();
    }
    let arns: Vec<String> = (0..cases.len()).map(|n| arn_of(&run, n)).collect();
    let changes = eng
        .wait_changes("every refused task STOPPED", Duration::from_secs(15), |c| {
            arns.iter()
                .all(|a| task_reached(c, a, ReportStatus::Stopped))
        })
        .await;
    println!(
        "{} refused tasks STOPPED in {:?}",
        arns.len(),
        started.elapsed()
    );
    for ((want, _), arn) in cases.iter().zip(&arns) {
        let stop = changes
            .iter()
            .find(|c| &c.task_arn == arn && c.status == ReportStatus::Stopped)
            .unwrap();
        let reason = stop.reason.clone().unwrap_or_default();
        assert!(reason.contains(want), "{arn}: {reason:?} lacks {want:?}");
        assert!(!reason.contains("ASIAX") && !reason.contains("secretAccessKey"));
        assert!(!task_reached(&changes, arn, ReportStatus::Running));
        assert!(containers_in_docker(arn).is_empty(), "{arn} reached Docker");
        let app = container_change(&changes, arn, "app", ReportStatus::Stopped).unwrap();
        assert_eq!(app.reason.as_deref(), Some(reason.as_str()));
    }
    assert_each_once(&changes);
    eng.shutdown().await;
}

/// A task that cannot even be read is refused at delivery, with the reason the ACS handler
/// reports (it does not acknowledge the payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_task_is_refused_at_delivery() {
    let run = run_id("invalid");
    let eng = start(settings()).await;
    let image = test_image();
    let c = container(&run, "twin", &image, GRACEFUL, true, json!({}));
    let err = eng
        .engine
        .deliver(task(&arn_of(&run, 0), "invalid", vec![c.clone(), c]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ecs_hostd::tasks::DeliverError::Refused(r) if r.contains("twin")),
        "{err:?}"
    );
    eng.shutdown().await;
}

/// The logging drivers advertised by default beyond json-file and awslogs (the AMI's list):
/// Docker's own syslog and fluentd drivers receive a task container's output, as
/// `logConfiguration` renders them into the host config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_and_fluentd_logging_drivers_ship_a_containers_output() {
    use std::io::Read;
    let image = test_image();
    let run = run_id("logdrv");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let fluentd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let drivers = [
        (
            "syslog",
            json!({"Type": "syslog", "Config": {"syslog-address": format!("udp://{}", syslog.local_addr().unwrap())}}),
        ),
        (
            "fluentd",
            json!({"Type": "fluentd", "Config": {"fluentd-address": fluentd.local_addr().unwrap().to_string()}}),
        ),
    ];
    let arns: Vec<String> = (0..drivers.len()).map(|n| arn_of(&run, n)).collect();
    let fluentd_got = std::thread::spawn(move || {
        let (mut s, _) = fluentd.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("hello via fluentd") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    for ((name, log), arn) in drivers.iter().zip(&arns) {
        let line = format!("echo hello via {name}; exec sleep 3600");
        let c = container(
            &run,
            "app",
            &image,
            &["sh", "-c", &line],
            true,
            json!({"LogConfig": log}),
        );
        eng.engine
            .deliver(task(arn, "logdrv", vec![c]))
            .await
            .unwrap();
    }
    eng.wait_changes("both RUNNING", Duration::from_secs(30), |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Running))
    })
    .await;
    let mut buf = [0u8; 2048];
    let n = syslog
        .recv(&mut buf)
        .expect("no syslog datagram within 30 s");
    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(datagram.contains("hello via syslog"), "{datagram}");
    let forwarded = fluentd_got.join().unwrap();
    assert!(forwarded.contains("hello via fluentd"), "{forwarded:?}");
    for arn in &arns {
        eng.engine.stop(arn).await.unwrap();
    }
    eng.wait_changes("both STOPPED", Duration::from_secs(30), |c| {
        arns.iter()
            .all(|a| task_reached(c, a, ReportStatus::Stopped))
    })
    .await;
    eng.shutdown().await;
}
