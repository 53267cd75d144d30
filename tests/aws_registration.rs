//! Registration of the real binary against ec2sim (moto-backed ECS, IMDSv2) and the real Docker
//! engine: resources, attributes, restarts (clean and kill -9), a new EC2 instance, cluster
//! mismatch, deregistration, and ECS outages.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn resource<'a>(desc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    desc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {desc}"))
}

fn host_memory_mib() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    ecs_hostd::host::mem_total_bytes(&meminfo).unwrap() as i64 / (1024 * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_with_this_hosts_resources_and_the_configured_attributes() {
    let sim = Ec2Sim::start();
    let cluster = unique("reg");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_INSTANCE_ATTRIBUTES", r#"{"stack":"blue"}"#)
        .env("ECS_CONTAINER_INSTANCE_TAGS", r#"{"team":"infra"}"#)
        .env("ECS_RESERVED_MEMORY", "64")
        .env("ECS_RESERVED_PORTS", "[22,8080]")
        .env("ECS_RESERVED_PORTS_UDP", "[53]")
        .env(
            "ECS_AVAILABLE_LOGGING_DRIVERS",
            r#"["json-file","awslogs","none","no-such-driver"]"#,
        );
    let started = Instant::now();
    let mut agent = spec.start();
    let arn = agent.wait_registered(Duration::from_secs(60));
    println!(
        "figure: run -> registered against ec2sim: {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    println!("figure: RSS registered and idle: {} KiB", agent.rss_kib());

    let desc = describe_instance(&sim, &cluster, &arn).await;
    assert_eq!(desc["ec2InstanceId"], sim.default_instance());
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(resource(&desc, "CPU")["integer"], cpus * 1024);
    assert_eq!(resource(&desc, "MEMORY")["integer"], host_memory_mib() - 64);
    assert_eq!(resource(&desc, "PORTS")["set"], json!(["22", "8080"]));
    assert_eq!(resource(&desc, "PORTS_UDP")["set"], json!(["53"]));
    let attrs = desc["attributes"].as_array().unwrap();
    assert!(
        attrs.contains(&json!({"name": "stack", "value": "blue"})),
        "{desc}"
    );
    assert!(
        attrs.contains(&json!({"name": "ecs.os-type", "value": "linux"})),
        "{desc}"
    );
    // runtimePlatform.cpuArchitecture is placed by it; `uname -m` says what this host is.
    let machine = String::from_utf8(
        std::process::Command::new("uname")
            .arg("-m")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let arch = match machine.trim() {
        "aarch64" => "arm64",
        other => other,
    };
    assert!(
        attrs.contains(&json!({"name": "ecs.cpu-architecture", "value": arch})),
        "{desc}"
    );
    assert!(
        attrs
            .iter()
            .any(|a| a["name"] == "com.amazonaws.ecs.capability.docker-remote-api.1.32"),
        "Docker 20.10 supports API 1.41: {desc}"
    );
    // What round 2 added, as ECS stores it (DescribeContainerInstances through the AWS SDK): Docker
    // volumes with the local driver; task-level limits (this host has cgroup v1 with Docker's
    // cgroupfs driver, and ECS_ENABLE_TASK_CPU_MEM_LIMIT is on by default); pid/ipc `task`
    // (scripts/world.sh gives Docker the pause image under its default name).
    for flag in [
        "docker-plugin.local",
        "task-cpu-mem-limit",
        "increased-task-cpu-limit",
        "pid-ipc-namespace-sharing",
    ] {
        let name = format!("ecs.capability.{flag}");
        assert!(
            attrs.iter().any(|a| a["name"] == name.as_str()),
            "{name} not registered: {desc}"
        );
    }
    // Logging drivers: the configured ones this Docker has (docker info), and none.
    let drivers: Vec<&str> = attrs
        .iter()
        .filter_map(|a| {
            a["name"]
                .as_str()?
                .strip_prefix("com.amazonaws.ecs.capability.logging-driver.")
        })
        .collect();
    assert_eq!(drivers, ["json-file", "awslogs", "none"], "{desc}");

    let reqs = sim.requests("ecs", "RegisterContainerInstance");
    assert_eq!(reqs.len(), 1);
    let body = &reqs[0]["body"];
    assert!(
        uuid::Uuid::parse_str(body["clientToken"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert_eq!(body["tags"], json!([{"key": "team", "value": "infra"}]));
    assert!(
        body.get("containerInstanceArn").is_none(),
        "first registration"
    );

    assert!(agent.terminate().success(), "{}", agent.log());
    assert!(
        agent.log().contains("ecs-hostd started."),
        "startup summary line"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_and_kill_9_keep_one_container_instance_with_the_same_arn() {
    let sim = Ec2Sim::start();
    let cluster = unique("restart");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new(&sim, &cluster, data.path());

    let mut agent = spec.start();
    let first = agent.wait_registered(Duration::from_secs(60));
    assert_eq!(agent.terminate().code(), Some(0), "clean stop exits 0");

    let mut agent = spec.start();
    assert_eq!(agent.wait_registered(Duration::from_secs(60)), first);
    agent.kill9();

    let mut agent = spec.start();
    assert_eq!(agent.wait_registered(Duration::from_secs(60)), first);

    let reqs = sim.requests("ecs", "RegisterContainerInstance");
    assert_eq!(reqs.len(), 3);
    for r in &reqs[1..] {
        assert_eq!(
            r["body"]["containerInstanceArn"],
            first.as_str(),
            "re-registration sends the saved ARN"
        );
    }
    let listed = sim
        .ecs()
        .await
        .list_container_instances()
        .cluster(&cluster)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.container_instance_arns(),
        std::slice::from_ref(&first)
    );
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_ec2_instance_registers_a_new_container_instance() {
    let sim = Ec2Sim::start();
    let cluster = unique("newid");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path()).start();
    let first = agent.wait_registered(Duration::from_secs(60));
    agent.terminate();

    // Same data directory (an AMI baked from a registered host), another instance.
    let (new_id, imds) = sim.new_instance(json!({}));
    let mut spec = AgentSpec::new(&sim, &cluster, data.path());
    spec.imds = imds;
    let mut agent = spec.start();
    let second = agent.wait_registered(Duration::from_secs(60));
    assert_ne!(first, second);
    let desc = describe_instance(&sim, &cluster, &second).await;
    assert_eq!(desc["ec2InstanceId"], new_id.as_str());
    let last = sim
        .requests("ecs", "RegisterContainerInstance")
        .pop()
        .unwrap();
    assert!(last["body"].get("containerInstanceArn").is_none(), "{last}");
    assert!(
        agent.log().contains("another EC2 instance"),
        "logged loudly"
    );
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_cluster_exits_5_and_says_what_to_do() {
    let sim = Ec2Sim::start();
    let a = unique("a");
    let b = unique("b");
    create_cluster(&sim, &a).await;
    create_cluster(&sim, &b).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &a, data.path()).start();
    agent.wait_registered(Duration::from_secs(60));
    agent.terminate();

    let mut agent = AgentSpec::new(&sim, &b, data.path()).start();
    let status = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("ECS_CLUSTER") && log.contains(&a) && log.contains("delete"),
        "{log}"
    );
    assert_eq!(
        sim.requests("ecs", "RegisterContainerInstance").len(),
        1,
        "no second registration"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deregistered_instance_exits_5() {
    let sim = Ec2Sim::start();
    let cluster = unique("dereg");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path()).start();
    let arn = agent.wait_registered(Duration::from_secs(60));
    agent.terminate();
    sim.ecs()
        .await
        .deregister_container_instance()
        .cluster(&cluster)
        .container_instance(&arn)
        .force(true)
        .send()
        .await
        .unwrap();

    let mut agent = AgentSpec::new(&sim, &cluster, data.path()).start();
    assert_eq!(
        agent.wait_exit(Duration::from_secs(60)).code(),
        Some(5),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("deregistered"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_ecs_is_retried_until_it_comes_back() {
    let sim = Ec2Sim::start();
    let cluster = unique("outage");
    create_cluster(&sim, &cluster).await;
    sim.fault(json!({"service": "ecs", "mode": "unavailable", "operations": ["RegisterContainerInstance"], "count": 2}));
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path()).start();
    agent.wait_registered(Duration::from_secs(60));
    let reqs = sim.requests("ecs", "RegisterContainerInstance");
    assert_eq!(reqs.len(), 3, "two refused, one accepted");
    // Backoff 3 s then 6 s (+ jitter): the retries were spaced, not hammered.
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    let log = agent.log();
    assert!(log.contains("Registration failed; retrying"), "{log}");
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_waits_for_imds_instead_of_crashing() {
    let sim = Ec2Sim::start();
    let cluster = unique("imdswait");
    create_cluster(&sim, &cluster).await;
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"get_fault": "500"}),
    );
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path()).start();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running:\n{}",
        agent.log()
    );
    assert!(agent.metadata().is_none(), "not registered, API not up yet");
    sim.post("/ec2sim/instances/default/imds", json!({"get_fault": null}));
    agent.wait_registered(Duration::from_secs(60));
    agent.terminate();
}
