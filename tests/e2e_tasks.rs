//! End to end: the real binary registered with ec2sim, tasks placed with RunTask/StopTask exactly
//! as a user calls ECS, containers on the real Docker engine, state read back with DescribeTasks.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerDefinition, PortMapping, TransportProtocol};
use common::*;

fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

struct World {
    sim: Ec2Sim,
    cluster: String,
    agent: Agent,
    _data: tempfile::TempDir,
}

async fn world(prefix: &str) -> World {
    let sim = Ec2Sim::start();
    let cluster = unique(prefix);
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "2s")
        .env("ECS_HOSTD_METRICS", "false")
        .start();
    agent.wait_registered(Duration::from_secs(60));
    World {
        sim,
        cluster,
        agent,
        _data: data,
    }
}

async fn register(w: &World, family: &str, containers: Vec<ContainerDefinition>) -> String {
    let out = w
        .sim
        .ecs()
        .await
        .register_task_definition()
        .family(family)
        .set_container_definitions(Some(containers))
        .send()
        .await
        .unwrap();
    out.task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned()
}

async fn run(w: &World, td: &str) -> String {
    let out = w
        .sim
        .ecs()
        .await
        .run_task()
        .cluster(&w.cluster)
        .task_definition(td)
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.tasks()[0].task_arn().unwrap().to_owned()
}

async fn wait_status(
    w: &World,
    task: &str,
    status: &str,
    within: Duration,
) -> aws_sdk_ecs::types::Task {
    let deadline = Instant::now() + within;
    loop {
        let out = w
            .sim
            .ecs()
            .await
            .describe_tasks()
            .cluster(&w.cluster)
            .tasks(task)
            .send()
            .await
            .unwrap();
        let t = out.tasks()[0].clone();
        if t.last_status() == Some(status) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} is {:?}, not {status}, after {within:?}:\n{}",
            t.last_status(),
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn container(
    name: &str,
    essential: bool,
    command: &[&str],
) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    ContainerDefinition::builder()
        .name(name)
        .image(image())
        .essential(essential)
        .memory(64)
        .set_command(Some(command.iter().map(|s| s.to_string()).collect()))
        .docker_labels("ecs-hostd.test", "e2e")
}

fn http_get(port: i32) -> String {
    let out = std::process::Command::new("wget")
        .args(["-qO-", "-T", "3", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("wget");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_task_reaches_running_with_bindings_and_stop_task_stops_it() {
    let w = world("e2e").await;
    let td = register(
        &w,
        &unique("web"),
        vec![
            container("web", true, &["httpd", "-f", "-p", "8080", "-h", "/www"])
                .port_mappings(
                    PortMapping::builder()
                        .container_port(8080)
                        .host_port(0)
                        .protocol(TransportProtocol::Tcp)
                        .build(),
                )
                .build(),
            container("sidecar", false, &["sleep", "3600"]).build(),
        ],
    )
    .await;
    let started = Instant::now();
    let task = run(&w, &td).await;
    let t = wait_status(&w, &task, "RUNNING", Duration::from_secs(60)).await;
    println!(
        "figure: RunTask -> RUNNING in describe_tasks: {:?}",
        started.elapsed()
    );
    assert_eq!(t.containers().len(), 2);
    let web = t
        .containers()
        .iter()
        .find(|c| c.name() == Some("web"))
        .unwrap();
    assert_eq!(web.last_status(), Some("RUNNING"));
    assert!(
        web.network_bindings()
            .iter()
            .all(|b| !b.bind_ip().unwrap_or_default().contains(':')),
        "IPv6 bindings are excluded by default: {:?}",
        web.network_bindings()
    );
    let binding = &web.network_bindings()[0];
    assert_eq!(binding.container_port(), Some(8080));
    let host_port = binding.host_port().unwrap();
    assert!(host_port > 0);
    assert!(http_get(host_port).contains("hello from ecs-hostd"));
    // The engine's counts reach the local API's /metrics (and, with ECS_HOSTD_HEALTH_METRICS,
    // CloudWatch through the same hook).
    assert_eq!(gauges(&w.agent), (1, 2), "{}", w.agent.log());

    w.sim
        .ecs()
        .await
        .stop_task()
        .cluster(&w.cluster)
        .task(&task)
        .reason("test stop")
        .send()
        .await
        .unwrap();
    let t = wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;
    for c in t.containers() {
        assert_eq!(c.last_status(), Some("STOPPED"), "{c:?}");
        assert!(c.exit_code().is_some(), "{c:?}");
    }
    assert_eq!(gauges(&w.agent), (0, 0));
}

/// `ecs_hostd_running_tasks` and `ecs_hostd_running_containers` from the agent's `/metrics`.
fn gauges(agent: &Agent) -> (u64, u64) {
    let out = std::process::Command::new("wget")
        .args(["-qO-", "-T", "3", &format!("http://{}/metrics", agent.api)])
        .output()
        .expect("wget");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    (
        value("ecs_hostd_running_tasks"),
        value("ecs_hostd_running_containers"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_essential_container_exit_stops_the_task_with_its_reason() {
    let w = world("ess").await;
    let td = register(
        &w,
        &unique("ess"),
        vec![
            container("main", true, &["sh", "-c", "sleep 1; exit 3"]).build(),
            container("side", false, &["sleep", "3600"]).build(),
        ],
    )
    .await;
    let task = run(&w, &td).await;
    let t = wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;
    let main = t
        .containers()
        .iter()
        .find(|c| c.name() == Some("main"))
        .unwrap();
    assert_eq!(main.exit_code(), Some(3));
    assert!(
        t.stopped_reason()
            .unwrap_or_default()
            .contains("Essential container"),
        "{:?}",
        t.stopped_reason()
    );
    let side = t
        .containers()
        .iter()
        .find(|c| c.name() == Some("side"))
        .unwrap();
    assert_eq!(side.last_status(), Some("STOPPED"));
}
