//! End to end (issue 21): task telemetry. The real binary samples its tasks' containers from
//! their cgroup files and publishes them over TCS (signed frames) to ec2sim, which turns them into
//! `AWS/ECS` `CPUUtilization` / `MemoryUtilization` by the formula ECS uses (tcs.md §8); boto3
//! reads them back with `get_metric_statistics`, as a user (or target tracking) would. Container
//! health goes the same way (`PublishHealthRequest`, shown by DescribeTasks). TCS refused and
//! dropped: the agent backs off, reconnects and resumes while ACS carries on.
//!
//! FAILS when Docker, ec2sim or the test images are missing: `scripts/world.sh world_setup`
//! provides them.

mod common;
#[path = "common/images.rs"]
mod images;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerDefinition, HealthCheck};
use common::*;
use images::world_image;
use serde_json::{Value, json};

fn busybox() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

async fn world(prefix: &str) -> World {
    World::start(prefix, &[], "").await
}

/// `AWS/ECS` datapoints of a service's metric since `from`: (unix seconds, value), 1 s period.
fn service_metric(
    sim: &Ec2Sim,
    cluster: &str,
    service: &str,
    metric: &str,
    from: f64,
) -> Vec<(f64, f64)> {
    let v = boto(
        &sim.url(),
        r#"
cw = client("cloudwatch")
r = cw.get_metric_statistics(Namespace="AWS/ECS", MetricName=A["metric"],
    Dimensions=[{"Name": "ClusterName", "Value": A["cluster"]},
                {"Name": "ServiceName", "Value": A["service"]}],
    StartTime=ts(A["from"]), EndTime=ts(A["from"] + 3600), Period=1, Statistics=["Average"],
    Unit="Percent")
OUT = sorted([d["Timestamp"].timestamp(), d["Average"]] for d in r["Datapoints"])
"#,
        &json!({"metric": metric, "cluster": cluster, "service": service, "from": from}),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// RegisterTaskDefinition of one container; its CPU units and memory are the task's
/// reservation (ECS sums the containers' when the task sets none).
async fn register(w: &World, family: &str, c: ContainerDefinition) -> String {
    let out = w
        .sim
        .ecs()
        .await
        .register_task_definition()
        .family(family)
        .container_definitions(c)
        .send()
        .await
        .unwrap();
    out.task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned()
}

/// RunTask as a service scheduler does it (`group` `service:<name>`, which ec2sim, like ECS,
/// attributes to the service).
async fn run_in_service(w: &World, td: &str, service: &str) -> String {
    let out = w
        .sim
        .ecs()
        .await
        .run_task()
        .cluster(&w.cluster)
        .task_definition(td)
        .group(format!("service:{service}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("RunTask: {e:?}\n{}", w.sim.log()));
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.tasks()[0].task_arn().unwrap().to_owned()
}

async fn running(w: &World, task: &str) -> aws_sdk_ecs::types::Task {
    wait_task_status(
        &w.sim,
        &w.cluster,
        task,
        "RUNNING",
        Duration::from_secs(120),
        &w.agent,
    )
    .await
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The Docker id of the container of `task` named `name` (from the agent's own labels).
fn container_of(task: &str, name: &str) -> String {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.amazonaws.ecs.task-arn={task}"),
        "--filter",
        &format!("label=com.amazonaws.ecs.container-name={name}"),
    ])
}

/// A container's memory as Docker's own stats API reports it, MiB (usage − cache, as the
/// docker CLI shows it).
fn docker_memory_mib(id: &str) -> f64 {
    let out = docker(&["stats", "--no-stream", "--format", "{{json .}}", id]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mem = v["MemUsage"].as_str().unwrap();
    assert!(
        !mem.replace(' ', "").ends_with("/0B"),
        "docker stats reads no memory at all for {id} ({mem}): containerd cannot load the \
         host's cgroups (a v1 hierarchy the host does not mount? scripts/world.sh \
         world_orphan_cgroups releases those)"
    );
    let usage = mem.split('/').next().unwrap().trim().to_owned();
    let (num, unit) = usage.split_at(usage.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let n: f64 = num.parse().unwrap();
    match unit {
        "GiB" => n * 1024.0,
        "MiB" => n,
        "KiB" => n / 1024.0,
        "B" => n / (1024.0 * 1024.0),
        other => panic!("unit {other} in {usage}"),
    }
}

fn within(actual: f64, expected: f64, rel: f64) -> bool {
    (actual - expected).abs() <= expected * rel
}

/// A busy loop held to a quarter of a CPU by a CFS quota, in a task reserving 512 CPU units,
/// is 50 % of its service's CPU; a Python process holding about 160 MiB in a task reserving
/// 256 MiB is what Docker reports over 256. Both as ECS would compute them from what the agent
/// sent, read back from CloudWatch with boto3.
#[tokio::test(flavor = "multi_thread")]
async fn service_utilisation_reaches_cloudwatch_from_what_the_agent_sends() {
    let w = world("tcs-util").await;
    let burn = register(
        &w,
        "burner",
        ContainerDefinition::builder()
            .name("burn")
            .image(busybox())
            .essential(true)
            .cpu(512)
            .memory(128)
            .set_command(Some(vec![
                "sh".into(),
                "-c".into(),
                "while :; do :; done".into(),
            ]))
            .build(),
    )
    .await;
    let hold = register(
        &w,
        "holder",
        ContainerDefinition::builder()
            .name("hold")
            .image(world_image(
                "ECS_HOSTD_AWSCLI_IMAGE",
                "ecs-hostd-test/awscli",
            ))
            .essential(true)
            .cpu(256)
            .memory(256)
            .set_entry_point(Some(vec!["python3".into(), "-c".into()]))
            .set_command(Some(vec![
                "import time\nb = b'x' * (160 << 20)\nwhile True: time.sleep(60)".into(),
            ]))
            .build(),
    )
    .await;
    let burner = run_in_service(&w, &burn, "burner").await;
    let holder = run_in_service(&w, &hold, "holder").await;
    running(&w, &burner).await;
    running(&w, &holder).await;
    // The quota is the test's (Docker's own CLI), not the agent's: a quarter of one CPU.
    let busy = container_of(&burner, "burn");
    docker(&[
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "25000",
        &busy,
    ]);
    let quota_from = now_s();

    // Collections cover the samples since the last one (20 s): those ending 25 s after the
    // quota began are quota-only.
    let settled = quota_from + 25.0;
    let deadline = Instant::now() + Duration::from_secs(150);
    let (cpu, mem) = loop {
        let cpu: Vec<(f64, f64)> =
            service_metric(&w.sim, &w.cluster, "burner", "CPUUtilization", settled);
        let mem: Vec<(f64, f64)> =
            service_metric(&w.sim, &w.cluster, "holder", "MemoryUtilization", settled);
        if cpu.len() >= 2 && mem.len() >= 2 {
            break (cpu, mem);
        }
        assert!(
            Instant::now() < deadline,
            "AWS/ECS datapoints after {settled}: cpu {cpu:?} mem {mem:?}\nTCS metrics: {}\n{}",
            w.sim.get("/ec2sim/tcs/metrics"),
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    eprintln!("AWS/ECS burner CPUUtilization {cpu:?}, holder MemoryUtilization {mem:?}");
    // 0.25 CPU = 256 units used of 512 reserved.
    for (t, v) in &cpu {
        assert!(
            within(*v, 50.0, 0.10),
            "CPUUtilization {v} at {t}, expected 50 ± 10 %: {cpu:?}"
        );
    }
    let expected = docker_memory_mib(&container_of(&holder, "hold")) * 100.0 / 256.0;
    assert!(
        expected > 55.0,
        "the holder holds its 160 MiB: {expected} %"
    );
    for (t, v) in &mem {
        assert!(
            within(*v, expected, 0.10),
            "MemoryUtilization {v} at {t}, expected {expected} ± 10 % (Docker's figure): {mem:?}"
        );
    }

    // What went over the wire: signed frames, the task's family and revision, 20 s apart.
    let frames = w.sim.get("/ec2sim/tcs/frames?type=PublishMetricsRequest")["frames"]
        .as_array()
        .unwrap()
        .clone();
    assert!(frames.iter().all(|f| f["signed"] == true), "{frames:?}");
    let ours: Vec<&Value> = frames
        .iter()
        .filter(|f| {
            f["message"]["taskMetrics"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["taskArn"] == burner.as_str()))
        })
        .collect();
    let task = ours[0]["message"]["taskMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskArn"] == burner.as_str())
        .unwrap();
    assert_eq!(task["taskDefinitionFamily"], "burner");
    assert_eq!(task["taskDefinitionVersion"], "1");
    let sets = &task["containerMetrics"][0];
    assert_eq!(sets["containerName"], "burn");
    for set in [
        "cpuStatsSet",
        "memoryStatsSet",
        "networkStatsSet",
        "storageStatsSet",
    ] {
        assert!(sets.get(set).is_some(), "{set} missing: {sets}");
    }
    let times: Vec<f64> = ours
        .iter()
        .map(|f| f["time"].as_f64().unwrap())
        .filter(|t| *t > settled)
        .collect();
    assert!(times.len() >= 2, "{times:?}");
    for gap in times.windows(2).map(|p| p[1] - p[0]) {
        assert!((15.0..=25.0).contains(&gap), "publish gaps {times:?}");
    }
}

/// A container whose health check fails reaches ECS as UNHEALTHY (`PublishHealthRequest`), and
/// DescribeTasks shows it; a passing one as HEALTHY.
#[tokio::test(flavor = "multi_thread")]
async fn container_health_reaches_ecs_over_tcs() {
    let w = world("tcs-health").await;
    let check = |cmd: &str| {
        HealthCheck::builder()
            .command("CMD-SHELL")
            .command(cmd)
            .interval(5)
            .timeout(2)
            .retries(1)
            .build()
            .unwrap()
    };
    let container = |name: &str, essential: bool, cmd: &str| {
        ContainerDefinition::builder()
            .name(name)
            .image(busybox())
            .essential(essential)
            .memory(32)
            .set_command(Some(vec![
                "sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM; while :; do sleep 1; done".into(),
            ]))
            .health_check(check(cmd))
            .build()
    };
    let td = w
        .sim
        .ecs()
        .await
        .register_task_definition()
        .family("checked")
        .container_definitions(container("good", true, "true"))
        .container_definitions(container("bad", false, "exit 1"))
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    let task = run_in_service(&w, &td, "checked").await;
    running(&w, &task).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let reported = loop {
        let h = w.sim.get(&format!("/ec2sim/tcs/health?task_arn={task}"))["health"].clone();
        let status = |name: &str| {
            h.as_array()
                .unwrap()
                .iter()
                .find(|c| c["container_name"] == name)
                .map(|c| c["health_status"].as_str().unwrap().to_owned())
        };
        if status("good").as_deref() == Some("HEALTHY")
            && status("bad").as_deref() == Some("UNHEALTHY")
        {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "health reported: {h}\n{}",
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    for c in reported.as_array().unwrap() {
        assert_eq!(c["task_definition_family"], "checked");
        assert!(c["status_since"].as_f64().unwrap() > 1.7e9, "{c}");
    }
    // The user's view: DescribeTasks shows each container's health.
    let t = running(&w, &task).await;
    let health: Vec<(String, String)> = t
        .containers()
        .iter()
        .map(|c| {
            (
                c.name().unwrap().to_owned(),
                c.health_status()
                    .map(|h| h.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        health.contains(&("good".into(), "HEALTHY".into())),
        "{health:?}"
    );
    assert!(
        health.contains(&("bad".into(), "UNHEALTHY".into())),
        "{health:?}"
    );
}

/// TCS refuses the upgrade for a while, then drops the session: the agent retries with a
/// growing backoff, reconnects at once after the drop, and publishes again; ACS stays up and
/// tasks keep being placed meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn tcs_refused_and_dropped_the_agent_backs_off_reconnects_and_acs_carries_on() {
    let w = world("tcs-reconnect").await;
    let instance = w.instance.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.sim.get("/ec2sim/tcs/frames")["frames"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no TCS frame\n{}", w.agent.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acs_before = acs_sessions(&w.sim);

    // Refuse, and drop the live session so the agent has to come back through the refusal.
    w.sim.post("/ec2sim/tcs/config", json!({"refuse": true}));
    w.sim.post("/ec2sim/tcs/drop", json!({"code": 1011}));
    let refused_from = now_s();
    // A task placed meanwhile still runs: ACS is a separate connection.
    let td = register_task_definition(
        &w.sim,
        "during",
        vec![
            ContainerDefinition::builder()
                .name("c")
                .image(busybox())
                .essential(true)
                .memory(32)
                .set_command(Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "trap 'exit 0' TERM; while :; do sleep 1; done".into(),
                ]))
                .build(),
        ],
        None,
    )
    .await;
    let task = run_task(&w.sim, &w.cluster, &td).await;
    running(&w, &task).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts: Vec<f64> = w
        .sim
        .get(&format!("/ec2sim/tcs/attempts?since={refused_from}"))["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == 403)
        .map(|a| a["time"].as_f64().unwrap())
        .collect();
    // Backoff 1 s, 2 s, 4 s, 8 s (±20 %): about five refusals in 20 s, not a tight loop, and
    // the gaps grow.
    assert!(
        (3..=7).contains(&attempts.len()),
        "refused attempts at {attempts:?}"
    );
    let gaps: Vec<f64> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(gaps[0] >= 0.7, "{gaps:?}");
    assert!(
        gaps.last().unwrap() > &(gaps[0] * 2.5),
        "backoff grows: {gaps:?}"
    );

    // Accept again: the agent connects and publishes.
    w.sim.post("/ec2sim/tcs/config", json!({"refuse": false}));
    let back = wait_frame_after(&w, now_s(), Duration::from_secs(30)).await;
    // A dropped (clean) session is replaced at once, not after a backoff.
    w.sim.post("/ec2sim/tcs/drop", json!({"code": 1000}));
    let dropped = now_s();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = w
            .sim
            .get(&format!("/ec2sim/tcs/sessions?instance={instance}"))["sessions"]
            .clone();
        if let Some(s) = sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["connected"] == true && s["opened_at"].as_f64().unwrap() > dropped)
        {
            assert!(s["opened_at"].as_f64().unwrap() - dropped < 3.0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no new TCS session: {sessions}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back > refused_from);
    // ACS never noticed: the same session, still connected.
    assert_eq!(acs_sessions(&w.sim), acs_before);
}

/// The ids of connected ACS sessions.
fn acs_sessions(sim: &Ec2Sim) -> Vec<String> {
    sim.get("/ec2sim/acs/sessions")["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "acs" && s["connected"] == true)
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for a metrics frame received after `after`; its receive time.
async fn wait_frame_after(w: &World, after: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let frames = w.sim.get(&format!(
            "/ec2sim/tcs/frames?type=PublishMetricsRequest&since={after}"
        ))["frames"]
            .clone();
        if let Some(f) = frames.as_array().unwrap().first() {
            return f["time"].as_f64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no TCS frame after {after}\n{}",
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
