//! End to end: container health checks. The real binary registered with ec2sim, a task definition
//! with `healthCheck`s placed with RunTask (ec2sim renders them as ECS does: `healthCheckType`
//! `docker` and `Healthcheck` in `dockerConfig.config`), Docker running the checks, and the
//! agent's task metadata endpoint showing each container's `Health`. The agent's own count of
//! Docker calls shows that health costs one inspection per Docker `health_status` event and
//! nothing while the status holds.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::{ContainerDefinition, HealthCheck};
use common::*;
use serde_json::Value;

fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

/// A long-running container whose health check runs `check` (`CMD-SHELL`) every second and is
/// unhealthy after one failure.
fn checked(name: &str, essential: bool, check: &str) -> ContainerDefinition {
    ContainerDefinition::builder()
        .name(name)
        .image(image())
        .essential(essential)
        .memory(64)
        .command("sleep")
        .command("3600")
        .health_check(
            HealthCheck::builder()
                .command("CMD-SHELL")
                .command(check)
                .interval(1)
                .timeout(2)
                .retries(1)
                .build()
                .unwrap(),
        )
        .build()
}

/// `ecs_hostd_docker_requests_total{op}` from the agent's `/metrics`.
fn docker_calls(agent: &Agent, op: &str) -> u64 {
    let out = std::process::Command::new("wget")
        .args(["-qO-", "-T", "3", &format!("http://{}/metrics", agent.api)])
        .output()
        .expect("wget");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("ecs_hostd_docker_requests_total{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} missing from /metrics:\n{text}"))
}

/// Docker's container events `events` of containers labelled `label` (`key` or `key=value`)
/// between two Unix times (seconds).
fn docker_events(label: &str, events: &[&str], since: u64, until: u64) -> Vec<String> {
    let since = since.to_string();
    let until = until.to_string();
    let label = format!("label={label}");
    let mut args = vec![
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        &label,
        "--format",
        "{{.Actor.Attributes.name}} {{.Action}}",
    ];
    let filters: Vec<String> = events.iter().map(|e| format!("event={e}")).collect();
    for f in &filters {
        args.extend(["--filter", f]);
    }
    let out = std::process::Command::new("docker")
        .args(&args)
        .output()
        .expect("docker events");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The events that wake the agent's engine (`engine::docker::WAKE_EVENTS`), of any ECS-labelled
/// container: other tests' tasks on the shared Docker wake it too.
const WAKE_EVENTS: [&str; 4] = ["die", "destroy", "health_status", "oom"];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The metadata endpoint id Docker's environment of container `docker_id` names.
fn endpoint_of(docker_id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", docker_id])
        .output()
        .expect("docker inspect");
    let env: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    env.iter()
        .find_map(|e| e.strip_prefix("ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/"))
        .unwrap_or_else(|| panic!("no metadata URI in {env:?}"))
        .to_owned()
}

async fn get_json(port: u16, path: &str) -> Value {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status().as_u16(), 200, "GET {path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_run_and_their_status_reaches_task_metadata() {
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let w = World::start(
        "health",
        &[("ECS_HOSTD_TASK_ENDPOINT_ADDR", endpoint.as_str())],
        "",
    )
    .await;
    let (sim, cluster, agent, instance) = (&w.sim, &w.cluster, &w.agent, &w.instance);

    // The capability is advertised (ECS places health-checked tasks only where it is).
    let described = describe_instance(sim, cluster, instance).await;
    assert!(
        described["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "ecs.capability.container-health-check"),
        "{described}"
    );

    let td = register_task_definition(
        sim,
        &unique("health"),
        vec![
            checked("good", true, "true"),
            checked("bad", false, "echo nope; exit 1"),
        ],
        None,
    )
    .await;
    let inspects_before = docker_calls(agent, "inspect");
    let since = unix_now();
    let task = run_task(sim, cluster, &td).await;
    let t = wait_task_status(
        sim,
        cluster,
        &task,
        "RUNNING",
        Duration::from_secs(60),
        agent,
    )
    .await;
    let id_of = |name: &str| {
        t.containers()
            .iter()
            .find(|c| c.name() == Some(name))
            .and_then(|c| c.runtime_id())
            .unwrap_or_else(|| panic!("no runtime id for {name}"))
            .to_owned()
    };
    let good = endpoint_of(&id_of("good"));
    let bad = endpoint_of(&id_of("bad"));

    // Both checks reach their status (1 s interval; a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (good_health, bad_health) = loop {
        let g = get_json(port, &format!("/v4/{good}")).await;
        let b = get_json(port, &format!("/v4/{bad}")).await;
        if g["Health"]["status"] == "HEALTHY" && b["Health"]["status"] == "UNHEALTHY" {
            break (g["Health"].clone(), b["Health"].clone());
        }
        assert!(
            Instant::now() < deadline,
            "health never reached: good {} bad {}\n{}",
            g["Health"],
            b["Health"],
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let the events' extra listings (up to about 1.4 s after each) run out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let until = unix_now() + 1;
    let inspects_after_health = docker_calls(agent, "inspect");

    // The spec's shape: exit code only when not 0, output only when not empty, the time of the
    // change in RFC 3339.
    assert!(good_health.get("exitCode").is_none(), "{good_health}");
    assert!(good_health.get("output").is_none(), "{good_health}");
    assert_eq!(bad_health["exitCode"], 1, "{bad_health}");
    assert_eq!(bad_health["output"], "nope\n", "{bad_health}");
    for h in [&good_health, &bad_health] {
        let at = h["statusSince"].as_str().unwrap_or_else(|| panic!("{h}"));
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    }
    // The task object shows each container's Health too; v3 as well.
    let task_json = get_json(port, &format!("/v4/{good}/task")).await;
    let statuses: Vec<(String, String)> = task_json["Containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Name"].as_str().unwrap().to_owned(),
                c["Health"]["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("good".into(), "HEALTHY".into()))
            && statuses.contains(&("bad".into(), "UNHEALTHY".into())),
        "{statuses:?}"
    );
    assert_eq!(
        get_json(port, &format!("/v3/{bad}")).await["Health"]["status"],
        "UNHEALTHY"
    );

    // Docker calls for health: the starts' own inspections (one per container) plus at most
    // one per health_status event Docker sent; no polling.
    let events = docker_events(
        &format!("com.amazonaws.ecs.task-arn={task}"),
        &["health_status"],
        since,
        until,
    );
    assert!(
        events.iter().any(|e| e.ends_with("health_status: healthy"))
            && events
                .iter()
                .any(|e| e.ends_with("health_status: unhealthy")),
        "{events:?}"
    );
    let inspects = inspects_after_health - inspects_before;
    println!(
        "figure: inspections from RunTask to both statuses: {inspects} ({} health events)",
        events.len()
    );
    assert!(
        inspects <= 2 + events.len() as u64,
        "{inspects} inspections for {} health events: {events:?}",
        events.len()
    );

    // While the statuses hold (Docker probes every second, but sends no event), the agent asks
    // Docker nothing about them: no inspection, and listings only for the periodic resync and
    // other containers' events (each wakes one listing and three rechecks).
    let lists = docker_calls(agent, "list");
    let quiet_since = unix_now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let listed = docker_calls(agent, "list") - lists;
    assert_eq!(
        docker_calls(agent, "inspect"),
        inspects_after_health,
        "inspections while the statuses held"
    );
    let others = docker_events(
        "com.amazonaws.ecs.task-arn",
        &WAKE_EVENTS,
        quiet_since,
        unix_now() + 1,
    );
    println!(
        "figure: listings in 6 s of steady health: {listed} ({} events of ECS containers)",
        others.len()
    );
    assert!(
        listed <= 1 + 4 * others.len() as u64,
        "{listed} listings in 6 s with {} events: {others:?}",
        others.len()
    );
    let still = get_json(port, &format!("/v4/{good}")).await;
    assert_eq!(
        still["Health"]["statusSince"], good_health["statusSince"],
        "statusSince moves only on a change"
    );

    stop_task(sim, cluster, &task).await;
    wait_task_status(
        sim,
        cluster,
        &task,
        "STOPPED",
        Duration::from_secs(60),
        agent,
    )
    .await;
}

/// `ECS_DISABLE_DOCKER_HEALTH_CHECK=true`: the capability is not advertised.
#[tokio::test(flavor = "multi_thread")]
async fn disabling_health_checks_withdraws_the_capability() {
    let w = World::start(
        "nohealth",
        &[("ECS_DISABLE_DOCKER_HEALTH_CHECK", "true")],
        "",
    )
    .await;
    let (sim, cluster, instance) = (&w.sim, &w.cluster, &w.instance);
    let described = describe_instance(sim, cluster, instance).await;
    let names: Vec<&str> = described["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(
        names.contains(&"ecs.capability.container-ordering"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"ecs.capability.container-health-check"),
        "{names:?}"
    );
    // So ECS never places a health-checked task here: ec2sim computes the definition's
    // requiresAttributes as ECS does and refuses the instance for the one it lacks.
    let td = register_task_definition(
        sim,
        &unique("nohealth"),
        vec![checked("app", true, "true")],
        None,
    )
    .await;
    let out = sim
        .ecs()
        .await
        .run_task()
        .cluster(cluster)
        .task_definition(&td)
        .send()
        .await
        .unwrap();
    assert!(out.tasks().is_empty(), "placed: {:?}", out.tasks());
    let reasons: Vec<(&str, &str)> = out
        .failures()
        .iter()
        .map(|f| (f.arn().unwrap_or_default(), f.reason().unwrap_or_default()))
        .collect();
    assert_eq!(reasons, [(instance.as_str(), "ATTRIBUTE")]);
}
