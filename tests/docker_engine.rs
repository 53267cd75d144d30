//! The task engine against the real Docker engine: multi-container tasks with ports, env,
//! volumes and dependsOn; SIGTERM then SIGKILL; essential semantics; the dockerConfig mapping as
//! Docker applies it; the introspection API; cleanup after the wait, only once reported, and
//! early under disk pressure; a kill or removal behind the agent's back seen through Docker's
//! events, not the periodic resync.

#[path = "common/docker.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::api::{self, ApiState, IntrospectionTask};
use ecs_hostd::tasks::{ReportStatus, TaskControl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_container_task_serves_http_and_stops_with_sigterm_then_sigkill() {
    let image = test_image();
    let run = run_id("mc");
    let _cleanup = Cleanup::new(&run);
    let www = tempfile::tempdir().unwrap();
    let arn = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");

    // init writes the page into the shared host volume from its environment, then exits 0;
    // web (busybox httpd as PID 1: ignores SIGTERM) waits for init's SUCCESS and serves it;
    // graceful traps SIGTERM and exits 0 at once.
    let mut init = container(
        &run,
        "init",
        &image,
        &["sh", "-c", "echo \"$GREETING\" > /www/index.html"],
        false,
        serde_json::json!({}),
    );
    init["environment"] = serde_json::json!({"GREETING": format!("hello {run}")});
    init["mountPoints"] = serde_json::json!([{"sourceVolume": "www", "containerPath": "/www"}]);
    let mut web = container(
        &run,
        "web",
        &image,
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
        true,
        serde_json::json!({}),
    );
    web["portMappings"] =
        serde_json::json!([{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]);
    web["mountPoints"] =
        serde_json::json!([{"sourceVolume": "www", "containerPath": "/www", "readOnly": true}]);
    web["dependsOn"] = serde_json::json!([{"containerName": "init", "condition": "SUCCESS"}]);
    web["stopTimeout"] = serde_json::json!(2);
    web["environment"] = serde_json::json!({"ROLE": "web"});
    let mut graceful = container(
        &run,
        "graceful",
        &image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        false,
        serde_json::json!({}),
    );
    graceful["dependsOn"] = serde_json::json!([{"containerName": "web", "condition": "START"}]);
    let mut t = task(&arn, "multi", vec![init, web, graceful]);
    t["volumes"] = serde_json::json!([
        {"name": "www", "host": {"sourcePath": www.path().display().to_string()}}
    ]);

    let eng = start(settings()).await;
    eng.engine.deliver(t).await.unwrap();
    let ch = eng
        .wait_changes("task RUNNING", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Running)
        })
        .await;
    let init_stop =
        container_change(&ch, &arn, "init", ReportStatus::Stopped).expect("init stopped");
    assert_eq!(init_stop.exit_code, Some(0));
    let web_run = container_change(&ch, &arn, "web", ReportStatus::Running).unwrap();
    let binding = web_run
        .network_bindings
        .iter()
        .find(|b| b.container_port == Some(8080))
        .expect("port binding reported");
    assert_eq!(binding.bind_ip, "127.0.0.1");
    let host_port = binding.host_port.unwrap();
    let body = http_get(host_port, "/index.html", Duration::from_secs(10)).await;
    assert_eq!(body.trim(), format!("hello {run}"));

    // Docker sees the official names and labels, the env, and no restart policy.
    let id = web_run.runtime_id.clone().unwrap();
    let i = eng.docker.inspect_container(&id, None).await.unwrap();
    let name = i.name.unwrap();
    assert!(name.starts_with("/ecs-multi-1-web-"), "{name}");
    let labels = i.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["com.amazonaws.ecs.task-arn"], arn);
    assert_eq!(labels["com.amazonaws.ecs.container-name"], "web");
    assert_eq!(
        labels["com.amazonaws.ecs.cluster"],
        "arn:aws:ecs:us-east-1:123456789012:cluster/test"
    );
    let env = i.config.as_ref().unwrap().env.clone().unwrap();
    assert!(env.contains(&"ROLE=web".to_string()), "{env:?}");
    let restart = i.host_config.as_ref().unwrap().restart_policy.clone();
    assert!(
        restart.is_none_or(|r| r
            .name
            .is_none_or(|n| n.to_string() == "no" || n.to_string().is_empty())),
        "no restart policy"
    );

    // The introspection API serves the official JSON, by ARN and by Docker id.
    let view = eng.engine.view();
    let (reg_tx, reg_rx) = tokio::sync::watch::channel(None);
    let state = ApiState {
        cluster: "test".into(),
        registration: reg_rx,
        health: ecs_hostd::health::Board::new(),
        tasks: std::sync::Arc::new(view),
        metrics: Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    let base = format!("http://127.0.0.1:{api_port}");
    let all: serde_json::Value = reqwest::get(format!("{base}/v1/tasks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        all["Tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Arn"] == arn.as_str())
    );
    let by_id: IntrospectionTask = reqwest::get(format!("{base}/v1/tasks?dockerid={}", &id[..12]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_id.arn, arn);
    assert_eq!(by_id.known_status, "RUNNING");
    assert_eq!(by_id.desired_status.as_deref(), Some("RUNNING"));
    let web_json = by_id.containers.iter().find(|c| c.name == "web").unwrap();
    assert_eq!(web_json.docker_id, id);
    assert_eq!(web_json.ports[0].host_port, host_port);
    assert!(web_json.started_at.is_some());
    assert_eq!(web_json.volumes[0].destination, "/www");
    let raw: serde_json::Value = reqwest::get(format!("{base}/v1/tasks?taskarn={arn}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        raw["Containers"][0]["DockerName"]
            .as_str()
            .unwrap()
            .starts_with("ecs-multi-1-")
    );
    server.abort();
    drop(reg_tx);

    // Stop: graceful exits 0 on SIGTERM at once; web ignores SIGTERM and is killed after its
    // 2 s stopTimeout.
    let stop_at = Instant::now();
    eng.engine.stop(&arn).await.unwrap();
    let ch = eng
        .wait_changes("task STOPPED", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Stopped)
        })
        .await;
    let took = stop_at.elapsed();
    let web_stop = container_change(&ch, &arn, "web", ReportStatus::Stopped).unwrap();
    assert_eq!(web_stop.exit_code, Some(137), "SIGKILL after the grace");
    let g_stop = container_change(&ch, &arn, "graceful", ReportStatus::Stopped).unwrap();
    assert_eq!(g_stop.exit_code, Some(0), "SIGTERM handled");
    assert!(
        took >= Duration::from_secs(2),
        "killed before the grace: {took:?}"
    );
    let g = eng
        .docker
        .inspect_container(g_stop.runtime_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let w = eng.docker.inspect_container(&id, None).await.unwrap();
    let fin = |i: &bollard::models::ContainerInspectResponse| {
        i.state.as_ref().unwrap().finished_at.clone().unwrap()
    };
    assert!(fin(&g) < fin(&w), "graceful stopped before web was killed");
    assert_each_once(&ch);
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn essential_exit_stops_the_task_non_essential_exit_does_not() {
    let image = test_image();
    let run = run_id("ess");
    let _cleanup = Cleanup::new(&run);
    let arn = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");
    let keep = container(
        &run,
        "keep",
        &image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        true,
        serde_json::json!({}),
    );
    let side = container(
        &run,
        "side",
        &image,
        &["sh", "-c", "sleep 1; exit 3"],
        false,
        serde_json::json!({}),
    );
    let mut quit = container(
        &run,
        "quit",
        &image,
        &["sh", "-c", "sleep 3; exit 5"],
        true,
        serde_json::json!({}),
    );
    quit["dependsOn"] = serde_json::json!([{"containerName": "side", "condition": "COMPLETE"}]);

    let eng = start(settings()).await;
    eng.engine
        .deliver(task(&arn, "ess", vec![keep, side, quit]))
        .await
        .unwrap();
    // side exits 3: the task keeps running.
    let ch = eng
        .wait_changes("side stopped", Duration::from_secs(30), |c| {
            container_change(c, &arn, "side", ReportStatus::Stopped).is_some()
        })
        .await;
    assert_eq!(
        container_change(&ch, &arn, "side", ReportStatus::Stopped)
            .unwrap()
            .exit_code,
        Some(3)
    );
    assert!(!task_reached(&ch, &arn, ReportStatus::Stopped));
    // quit (essential) exits 5: the whole task stops, keep gets SIGTERM and exits 0.
    let ch = eng
        .wait_changes("task STOPPED", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Stopped)
        })
        .await;
    let last = ch.iter().rev().find(|c| c.task_arn == arn).unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert_eq!(
        last.reason.as_deref(),
        Some("Essential container in task exited")
    );
    assert!(last.execution_stopped_at.is_some());
    assert_eq!(
        container_change(&ch, &arn, "quit", ReportStatus::Stopped)
            .unwrap()
            .exit_code,
        Some(5)
    );
    assert_eq!(
        container_change(&ch, &arn, "keep", ReportStatus::Stopped)
            .unwrap()
            .exit_code,
        Some(0)
    );
    assert_each_once(&ch);

    // The exit was seen through Docker's event stream, well before the periodic resync.
    let i = eng
        .docker
        .inspect_container(
            container_change(&ch, &arn, "quit", ReportStatus::Stopped)
                .unwrap()
                .runtime_id
                .as_deref()
                .unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(i.state.unwrap().exit_code, Some(5));
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_fields_reach_docker_and_start_gates_dependents() {
    let image = test_image();
    let run = run_id("map");
    let _cleanup = Cleanup::new(&run);
    let arn = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");
    let host = serde_json::json!({
        "MemoryReservation": 16 * 1024 * 1024,
        "Ulimits": [{"Name": "nofile", "Soft": 1000, "Hard": 2000}],
        "ReadonlyRootfs": true,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}
    });
    let mut svc = container(
        &run,
        "svc",
        &image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        true,
        host,
    );
    let cfg = serde_json::json!({
        "Labels": {TEST_LABEL: run},
        "User": "nobody",
        "WorkingDir": "/tmp"
    });
    // No Healthcheck here: health checks have their own end-to-end test (tests/e2e_health.rs).
    svc["dockerConfig"]["config"] = serde_json::json!(cfg.to_string());
    svc["cpu"] = serde_json::json!(256);
    svc["memory"] = serde_json::json!(64);
    let mut after = container(
        &run,
        "after",
        &image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        false,
        serde_json::json!({}),
    );
    after["dependsOn"] = serde_json::json!([{"containerName": "svc", "condition": "START"}]);
    let eng = start(settings()).await;
    eng.engine
        .deliver(task(&arn, "map", vec![svc, after]))
        .await
        .unwrap();
    let ch = eng
        .wait_changes("task RUNNING", Duration::from_secs(30), |c| {
            task_reached(c, &arn, ReportStatus::Running)
        })
        .await;
    let id = container_change(&ch, &arn, "svc", ReportStatus::Running)
        .unwrap()
        .runtime_id
        .unwrap();
    let i = eng.docker.inspect_container(&id, None).await.unwrap();
    let hc = i.host_config.unwrap();
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.memory_reservation, Some(16 * 1024 * 1024));
    assert_eq!(hc.cpu_shares, Some(256));
    assert_eq!(hc.readonly_rootfs, Some(true));
    let ul = hc.ulimits.unwrap();
    assert_eq!((ul[0].soft, ul[0].hard), (Some(1000), Some(2000)));
    let lc = hc.log_config.unwrap();
    assert_eq!(lc.typ.as_deref(), Some("json-file"));
    assert_eq!(lc.config.unwrap()["max-size"], "1m");
    let cfg = i.config.unwrap();
    assert_eq!(cfg.user.as_deref(), Some("nobody"));
    assert_eq!(cfg.working_dir.as_deref(), Some("/tmp"));
    assert!(container_change(&ch, &arn, "after", ReportStatus::Running).is_some());
    eng.engine.stop(&arn).await.unwrap();
    eng.wait_changes("stopped", Duration::from_secs(30), |c| {
        task_reached(c, &arn, ReportStatus::Stopped)
    })
    .await;
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_waits_for_the_report_and_the_wait_and_disk_pressure_brings_it_forward() {
    let image = test_image();
    let run = run_id("clean");
    let _cleanup = Cleanup::new(&run);
    let arn = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");
    let mut s = settings();
    s.engine.task_cleanup_wait = Duration::from_secs(1);
    let eng = start(s).await;
    *eng.sink.report.lock().unwrap() = false;
    let mut t = task(
        &arn,
        "clean",
        vec![container(
            &run,
            "once",
            &image,
            &["true"],
            true,
            serde_json::json!({}),
        )],
    );
    t["volumes"] = serde_json::json!([{"name": "scratch", "host": {}}]);
    t["containers"][0]["mountPoints"] =
        serde_json::json!([{"sourceVolume": "scratch", "containerPath": "/s"}]);
    eng.engine.deliver(t).await.unwrap();
    eng.wait_changes("STOPPED", Duration::from_secs(30), |c| {
        task_reached(c, &arn, ReportStatus::Stopped)
    })
    .await;
    let label = format!("com.amazonaws.ecs.task-arn={arn}");
    // Past the wait, but STOPPED not yet reported: kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        containers_with(None, &label).len(),
        1,
        "removed before STOPPED was reported"
    );
    *eng.sink.report.lock().unwrap() = true;
    let start_wait = Instant::now();
    while !containers_with(None, &label).is_empty() {
        assert!(
            start_wait.elapsed() < Duration::from_secs(10),
            "not cleaned up after the report"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        eng.engine
            .view()
            .snapshot()
            .tasks
            .iter()
            .all(|t| t.arn != arn)
    );
    eng.shutdown().await;

    // Disk pressure: with a 3 h wait, a threshold of 0 % cleans up as soon as it is reported.
    let run2 = run_id("disk");
    let _cleanup2 = Cleanup::new(&run2);
    let arn2 = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run2}");
    let mut s = settings();
    s.engine.task_cleanup_wait = Duration::from_secs(3 * 3600);
    s.engine.disk_cleanup_threshold_percent = 0.0;
    let eng = start(s).await;
    eng.engine
        .deliver(task(
            &arn2,
            "disk",
            vec![container(
                &run2,
                "once",
                &image,
                &["true"],
                true,
                serde_json::json!({}),
            )],
        ))
        .await
        .unwrap();
    eng.wait_changes("STOPPED", Duration::from_secs(30), |c| {
        task_reached(c, &arn2, ReportStatus::Stopped)
    })
    .await;
    let label2 = format!("com.amazonaws.ecs.task-arn={arn2}");
    let start_wait = Instant::now();
    while !containers_with(None, &label2).is_empty() {
        assert!(
            start_wait.elapsed() < Duration::from_secs(10),
            "disk pressure did not clean up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_not_created_by_the_engine_are_never_touched() {
    let image = test_image();
    let run = run_id("foreign");
    let _cleanup = Cleanup::new(&run);
    // A container with the ECS labels that no record of ours names.
    let out = docker_cli(None)
        .args([
            "run",
            "-d",
            "--label",
            &format!("{TEST_LABEL}={run}"),
            "--label",
            "com.amazonaws.ecs.task-arn=arn:someone-else",
            "--label",
            "com.amazonaws.ecs.container-name=x",
            &image,
            "sleep",
            "30",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut s = settings();
    s.engine.disk_cleanup_threshold_percent = 0.0;
    s.engine.task_cleanup_wait = Duration::from_secs(1);
    let eng = start(s).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let i = eng.docker.inspect_container(&id, None).await.unwrap();
    assert_eq!(i.state.unwrap().running, Some(true));
    eng.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_or_removal_behind_the_agents_back_is_seen_through_docker_events() {
    let image = test_image();
    let run = run_id("behind");
    let _cleanup = Cleanup::new(&run);
    let sleeper = |name: &str| {
        container(
            &run,
            name,
            &image,
            &["sleep", "600"],
            true,
            serde_json::json!({}),
        )
    };
    let killed = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-killed");
    let removed = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}-removed");
    let mut s = settings();
    // Far beyond the wait below: only Docker's die/destroy events can wake the engine in time.
    s.resync = Duration::from_secs(600);
    let eng = start(s).await;
    for arn in [&killed, &removed] {
        eng.engine
            .deliver(task(arn, "behind", vec![sleeper("c")]))
            .await
            .unwrap();
    }
    let ch = eng
        .wait_changes("both RUNNING", Duration::from_secs(30), |c| {
            task_reached(c, &killed, ReportStatus::Running)
                && task_reached(c, &removed, ReportStatus::Running)
        })
        .await;
    let id = |arn: &str| {
        container_change(&ch, arn, "c", ReportStatus::Running)
            .and_then(|c| c.runtime_id)
            .unwrap()
    };
    // Let the engine settle: the extra listings it makes after any event end within 1.4 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for args in [
        ["kill", "-s", "KILL", &id(&killed)],
        ["rm", "-f", "-v", &id(&removed)],
    ] {
        let out = docker_cli(None).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ch = eng
        .wait_changes("both STOPPED", Duration::from_secs(15), |c| {
            task_reached(c, &killed, ReportStatus::Stopped)
                && task_reached(c, &removed, ReportStatus::Stopped)
        })
        .await;
    let k = container_change(&ch, &killed, "c", ReportStatus::Stopped).unwrap();
    assert_eq!(k.exit_code, Some(137), "{k:?}");
    // Removed: either its exit (137) was inspected before the removal, or it is reported vanished.
    let r = container_change(&ch, &removed, "c", ReportStatus::Stopped).unwrap();
    assert!(
        r.exit_code == Some(137)
            || r.reason
                .as_deref()
                .is_some_and(|m| m.contains("ContainerVanishedError")),
        "{r:?}"
    );
    assert_each_once(&ch);
    eng.shutdown().await;
}
