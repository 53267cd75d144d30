//! Draining the real binary against ec2sim: a Spot interruption notice and an Auto Scaling
//! termination (target lifecycle state `Terminated`) with a lifecycle hook.
//!
//! ec2sim models ECS draining (design.md resolution 10): UpdateContainerInstancesState(DRAINING)
//! stops the instance's service tasks (`startedBy` `ecs-svc/...`) and pushes them as STOPPED over
//! ACS; standalone tasks keep running. The agent's engine stops the containers (SIGTERM, then
//! SIGKILL after `ECS_CONTAINER_STOP_TIMEOUT`: the tasks' `sleep` ignores SIGTERM as PID 1, so
//! stopping takes the whole timeout) and reports them; the drain waits on the engine's own view
//! and on ECS having accepted the STOPPED reports, never on ECS's task list.

mod common;
#[path = "common/docker.rs"]
mod docker;

use std::time::{Duration, Instant};

use common::*;
use docker::{Cleanup, TEST_LABEL};
use serde_json::{Value, json};

/// Registers a one-container task definition labelled for the test run `family` (so a
/// [`Cleanup`] guard removes the agent's containers, pass or fail); returns its family.
async fn task_definition(sim: &Ec2Sim, family: &str) -> String {
    let ecs = sim.ecs().await;
    ecs.register_task_definition()
        .family(family)
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("ecs-hostd-test/busybox:latest")
                .memory(16)
                .command("sleep")
                .command("3600")
                .docker_labels(TEST_LABEL, family)
                .build(),
        )
        .send()
        .await
        .expect("register task definition");
    family.to_owned()
}

/// RunTask of one task; returns its ARN.
async fn run_task(sim: &Ec2Sim, cluster: &str, family: &str, started_by: Option<&str>) -> String {
    let out = sim
        .ecs()
        .await
        .run_task()
        .cluster(cluster)
        .task_definition(family)
        .set_started_by(started_by.map(str::to_owned))
        .send()
        .await
        .expect("run task");
    out.tasks()
        .first()
        .and_then(|t| t.task_arn())
        .unwrap_or_else(|| panic!("task not placed: {out:?}"))
        .to_owned()
}

/// One field of each task as DescribeTasks shows it, in order (`MISSING` when absent).
async fn field(
    sim: &Ec2Sim,
    cluster: &str,
    tasks: &[String],
    pick: fn(&aws_sdk_ecs::types::Task) -> Option<&str>,
) -> Vec<String> {
    let out = sim
        .ecs()
        .await
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(tasks.to_vec()))
        .send()
        .await
        .expect("describe tasks");
    tasks
        .iter()
        .map(|arn| {
            out.tasks()
                .iter()
                .find(|t| t.task_arn() == Some(arn))
                .and_then(pick)
                .unwrap_or("MISSING")
                .to_owned()
        })
        .collect()
}

/// Desired status of each task, in order.
async fn desired(sim: &Ec2Sim, cluster: &str, tasks: &[String]) -> Vec<String> {
    field(sim, cluster, tasks, |t| t.desired_status()).await
}

/// Last (reported) status of each task, in order.
async fn last(sim: &Ec2Sim, cluster: &str, tasks: &[String]) -> Vec<String> {
    field(sim, cluster, tasks, |t| t.last_status()).await
}

/// Waits until every task's reported status is `status`.
async fn wait_last(sim: &Ec2Sim, cluster: &str, tasks: &[String], status: &str, agent: &Agent) {
    let started = Instant::now();
    loop {
        let now = last(sim, cluster, tasks).await;
        if now.iter().all(|s| s == status) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tasks {now:?}, not all {status}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Time (ec2sim's clock) of the last SubmitTaskStateChange reporting one of `tasks` STOPPED.
fn stopped_reported_at(sim: &Ec2Sim, tasks: &[String]) -> f64 {
    sim.requests("ecs", "SubmitTaskStateChange")
        .iter()
        .filter(|r| {
            r["body"]["status"] == "STOPPED"
                && tasks.iter().any(|t| r["body"]["task"] == t.as_str())
        })
        .filter_map(|r| r["time"].as_f64())
        .fold(f64::NAN, f64::max)
}

async fn instance_status(sim: &Ec2Sim, cluster: &str, arn: &str) -> String {
    describe_instance(sim, cluster, arn).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the container instance is DRAINING; returns how long it took.
async fn wait_draining(sim: &Ec2Sim, cluster: &str, arn: &str, agent: &mut Agent) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if instance_status(sim, cluster, arn).await == "DRAINING" {
            return started.elapsed();
        }
        if let Ok(Some(s)) = agent.child.try_wait() {
            panic!("agent exited with {s}:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not DRAINING within 30 s:\n{}", agent.log());
}

fn healthz(agent: &Agent) -> Value {
    http("GET", &format!("http://{}/healthz", agent.api), None)
}

fn lifecycle_actions(sim: &Ec2Sim, operation: &str) -> Vec<Value> {
    sim.get("/ec2sim/lifecycle-actions")["lifecycle_actions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["operation"] == operation)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_sets_draining_within_seconds_and_ecs_stops_the_service_tasks() {
    let sim = Ec2Sim::start();
    let cluster = unique("spot");
    create_cluster(&sim, &cluster).await;
    let (instance_id, imds) = sim.new_instance(json!({"lifecycle": "spot"}));
    let data = tempfile::tempdir().unwrap();
    let mut spec = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_ENABLE_SPOT_INSTANCE_DRAINING", "true")
        .env("ECS_CONTAINER_STOP_TIMEOUT", "2s")
        .env("ECS_HOSTD_METRICS", "false");
    spec.imds = imds;
    let mut agent = spec.start();
    let arn = agent.wait_registered(Duration::from_secs(60));

    let family = task_definition(&sim, &unique("svc")).await;
    let _containers = Cleanup::new(&family);
    let service = vec![
        run_task(&sim, &cluster, &family, Some("ecs-svc/1234567890")).await,
        run_task(&sim, &cluster, &family, Some("ecs-svc/1234567890")).await,
    ];
    let standalone = run_task(&sim, &cluster, &family, None).await;
    let all = [service.clone(), vec![standalone.clone()]].concat();
    wait_last(&sim, &cluster, &all, "RUNNING", &agent).await;
    // Quiet for a while: nothing happens without a notice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(instance_status(&sim, &cluster, &arn).await, "ACTIVE");
    assert!(
        sim.requests("ecs", "UpdateContainerInstancesState")
            .is_empty()
    );

    sim.post(
        &format!("/ec2sim/instances/{instance_id}/imds"),
        json!({"spot_action": {"action": "terminate"}}),
    );
    let took = wait_draining(&sim, &cluster, &arn, &mut agent).await;
    println!("figure: Spot notice armed -> instance DRAINING in ECS: {took:?}");
    assert!(took < Duration::from_secs(5), "DRAINING after {took:?}");

    // ECS (ec2sim) stopped the service tasks, not the standalone one.
    assert_eq!(
        desired(&sim, &cluster, &service).await,
        vec!["STOPPED", "STOPPED"]
    );
    assert_eq!(
        desired(&sim, &cluster, std::slice::from_ref(&standalone)).await,
        vec!["RUNNING"]
    );
    // The agent's engine stopped them and reported it; the standalone task runs on.
    wait_last(&sim, &cluster, &service, "STOPPED", &agent).await;
    assert_eq!(
        last(&sim, &cluster, std::slice::from_ref(&standalone)).await,
        vec!["RUNNING"]
    );
    let health = healthz(&agent);
    let detail = health["components"]["lifecycle"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("draining") && detail.contains("Spot"),
        "{health}"
    );

    // Once: the notice stays armed, the agent does not call again, completes no hook.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let updates = sim.requests("ecs", "UpdateContainerInstancesState");
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0]["body"]["status"], "DRAINING");
    assert_eq!(updates[0]["body"]["containerInstances"], json!([arn]));
    assert!(lifecycle_actions(&sim, "CompleteLifecycleAction").is_empty());

    // A restart remembers the drain: no second call.
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.log());
    let mut agent = spec.start();
    agent.wait_registered(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.requests("ecs", "UpdateContainerInstancesState").len(),
        1
    );
    let health = healthz(&agent);
    assert!(
        health["components"]["lifecycle"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("draining"),
        "the drain survives the restart: {health}"
    );
    agent.terminate();
}

/// Creates an Auto Scaling group with a termination hook in ec2sim's moto.
async fn group_with_hook(sim: &Ec2Sim, group: &str, hook: &str, heartbeat_timeout: i32) {
    let creds = aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test");
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(sim.url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    let asg = aws_sdk_autoscaling::Client::new(&conf);
    let lc = format!("{group}-lc");
    asg.create_launch_configuration()
        .launch_configuration_name(&lc)
        .image_id("ami-760aaa0f")
        .instance_type("t2.micro")
        .send()
        .await
        .expect("launch configuration");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(group)
        .launch_configuration_name(&lc)
        .min_size(0)
        .max_size(1)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("auto scaling group");
    asg.put_lifecycle_hook()
        .lifecycle_hook_name(hook)
        .auto_scaling_group_name(group)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(heartbeat_timeout)
        .send()
        .await
        .expect("lifecycle hook");
}

#[tokio::test(flavor = "multi_thread")]
async fn termination_drains_heartbeats_while_tasks_stop_and_completes_the_hook_once() {
    let sim = Ec2Sim::start();
    let cluster = unique("term");
    create_cluster(&sim, &cluster).await;
    let group = unique("asg");
    // A 2 s heartbeat timeout: the agent heartbeats every second (half of it).
    group_with_hook(&sim, &group, "drain", 2).await;
    let (instance_id, imds) = sim.new_instance(json!({"asg": group}));
    let data = tempfile::tempdir().unwrap();
    let mut spec = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_HOSTD_LIFECYCLE_HOOK", "drain")
        .env("ECS_HOSTD_DRAIN_POLL_INTERVAL", "1s")
        .env("ECS_HOSTD_DRAIN_TIMEOUT", "2m")
        // Stopping takes this long (SIGTERM is ignored): several heartbeat periods.
        .env("ECS_CONTAINER_STOP_TIMEOUT", "8s")
        .env("ECS_HOSTD_METRICS", "false");
    spec.imds = imds;
    let mut agent = spec.start();
    let arn = agent.wait_registered(Duration::from_secs(60));

    let family = task_definition(&sim, &unique("svc")).await;
    let _containers = Cleanup::new(&family);
    let service = vec![
        run_task(&sim, &cluster, &family, Some("ecs-svc/555")).await,
        run_task(&sim, &cluster, &family, Some("ecs-svc/555")).await,
    ];
    let standalone = run_task(&sim, &cluster, &family, None).await;
    let all = [service.clone(), vec![standalone.clone()]].concat();
    wait_last(&sim, &cluster, &all, "RUNNING", &agent).await;

    sim.post(
        &format!("/ec2sim/instances/{instance_id}/imds"),
        json!({"lifecycle_state": "Terminated"}),
    );
    let took = wait_draining(&sim, &cluster, &arn, &mut agent).await;
    println!("figure: target state Terminated -> instance DRAINING in ECS: {took:?}");
    assert!(took < Duration::from_secs(20), "polled every 5 s: {took:?}");
    assert_eq!(
        desired(&sim, &cluster, &service).await,
        vec!["STOPPED", "STOPPED"],
        "ECS stops the service tasks of a DRAINING instance"
    );

    // The engine is stopping the tasks (SIGTERM ignored, SIGKILL after 8 s): the agent waits
    // and heartbeats, past several heartbeat intervals, and completes nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        lifecycle_actions(&sim, "CompleteLifecycleAction").is_empty(),
        "completed before the tasks stopped:\n{}",
        agent.log()
    );
    assert_eq!(
        last(&sim, &cluster, &service).await,
        vec!["RUNNING", "RUNNING"],
        "still stopping"
    );
    let beats = lifecycle_actions(&sim, "RecordLifecycleActionHeartbeat");
    assert!(
        beats.len() >= 2,
        "heartbeats while waiting: {beats:?}\n{}",
        agent.log()
    );
    for b in &beats {
        assert_eq!(b["hook_name"], "drain");
        assert_eq!(b["asg_name"], group.as_str());
        assert_eq!(b["instance_id"], instance_id.as_str());
    }
    let health = healthz(&agent);
    assert!(
        health["components"]["lifecycle"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for 2 task(s)"),
        "{health}"
    );

    // The engine's SIGKILL ends the tasks; it reports them; then the hook is completed.
    let waiting = Instant::now();
    let completions = loop {
        let c = lifecycle_actions(&sim, "CompleteLifecycleAction");
        if !c.is_empty() || waiting.elapsed() > Duration::from_secs(40) {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "figure: drain wait after Terminated (stop timeout 8 s) -> CompleteLifecycleAction: {:?}",
        waiting.elapsed() + Duration::from_secs(4)
    );
    assert_eq!(
        last(&sim, &cluster, &service).await,
        vec!["STOPPED", "STOPPED"],
        "the agent reported the service tasks STOPPED"
    );
    let reported_at = stopped_reported_at(&sim, &service);
    assert_eq!(completions.len(), 1, "{completions:?}\n{}", agent.log());
    let c = &completions[0];
    assert_eq!(c["hook_name"], "drain");
    assert_eq!(c["asg_name"], group.as_str());
    assert_eq!(c["instance_id"], instance_id.as_str());
    assert_eq!(c["result"], "CONTINUE");
    assert!(
        c["time"].as_f64().unwrap() > reported_at,
        "completed after the tasks stopped"
    );
    assert_eq!(
        desired(&sim, &cluster, std::slice::from_ref(&standalone)).await,
        vec!["RUNNING"],
        "standalone tasks are not stopped by draining"
    );
    let hook_calls = sim.requests("autoscaling", "DescribeLifecycleHooks");
    assert_eq!(hook_calls.len(), 1, "hook confirmed once");
    assert!(
        sim.requests("autoscaling", "DescribeAutoScalingInstances")
            .is_empty(),
        "the group came from the instance tag in IMDS"
    );

    // Exactly one, also after a while and across a restart with the state still Terminated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.log());
    let mut agent = spec.start();
    agent.wait_registered(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(lifecycle_actions(&sim, "CompleteLifecycleAction").len(), 1);
    assert_eq!(
        sim.requests("ecs", "UpdateContainerInstancesState").len(),
        1
    );
    agent.terminate();
}
