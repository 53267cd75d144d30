//! End to end: the real binary registered with ec2sim, tasks placed with RunTask/StopTask exactly
//! as a user calls ECS, containers on the real Docker engine, state read back with DescribeTasks.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerDefinition, PortMapping, TransportProtocol};
use common::*;
use serde_json::json;

fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

async fn world(prefix: &str) -> World {
    World::start(prefix, &[], "").await
}

async fn register(w: &World, family: &str, containers: Vec<ContainerDefinition>) -> String {
    register_task_definition(&w.sim, family, containers, None).await
}

async fn run(w: &World, td: &str) -> String {
    run_task(&w.sim, &w.cluster, td).await
}

async fn wait_status(
    w: &World,
    task: &str,
    status: &str,
    within: Duration,
) -> aws_sdk_ecs::types::Task {
    wait_task_status(&w.sim, &w.cluster, task, status, within, &w.agent).await
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
    // Every Docker call is counted by the agent itself: one create and one start per container.
    assert_eq!(docker_calls(&w.agent, "create"), 2);
    assert_eq!(docker_calls(&w.agent, "start"), 2);

    stop_task(&w.sim, &w.cluster, &task).await;
    let t = wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;
    for c in t.containers() {
        assert_eq!(c.last_status(), Some("STOPPED"), "{c:?}");
        assert!(c.exit_code().is_some(), "{c:?}");
    }
    assert_eq!(gauges(&w.agent), (0, 0));
    assert_eq!(docker_calls(&w.agent, "stop"), 2, "one stop per container");
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

/// A minimal forward proxy: `CONNECT` tunnels and absolute-form HTTP requests, recording each
/// connection's first line.
async fn forward_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let first = text.lines().next().unwrap_or_default().to_owned();
                log.lock().unwrap().push(first.clone());
                let mut parts = first.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let authority = if method == "CONNECT" {
                    target.to_owned()
                } else {
                    let rest = target.strip_prefix("http://").unwrap_or(target);
                    rest.split('/').next().unwrap_or("").to_owned()
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&authority).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if method == "CONNECT" {
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                } else if upstream.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen)
}

/// HTTP_PROXY in ecs.config: the ACS websocket goes through a CONNECT tunnel (and the SDK's ECS
/// calls through the proxy too), and tasks still run end to end.
#[tokio::test(flavor = "multi_thread")]
async fn the_acs_websocket_goes_through_the_configured_proxy() {
    let (port, seen) = forward_proxy().await;
    let proxy = format!("http://127.0.0.1:{port}");
    // Written to ecs.config, as operators of the official agent do.
    let w = World::start("proxy", &[], &format!("HTTP_PROXY={proxy}\n")).await;
    let td = register(
        &w,
        &unique("proxied"),
        vec![container("app", true, &["sleep", "3600"]).build()],
    )
    .await;
    let task = run(&w, &td).await;
    wait_status(&w, &task, "RUNNING", Duration::from_secs(60)).await;
    let sim_authority = w
        .sim
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("CONNECT {sim_authority} "))),
        "no CONNECT tunnel for the websocket through the proxy: {lines:?}\n{}",
        w.agent.log()
    );
    // The SDK's ECS calls honour the same variable (absolute-form requests to the proxy).
    assert!(
        lines.iter().any(|l| l.starts_with("POST http://")),
        "{lines:?}"
    );
    stop_task(&w.sim, &w.cluster, &task).await;
    wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;
}

/// Issue 24 items 7 and 9, end to end: a task with a task role (this instance does not advertise
/// `task-iam-role`, so ECS would not place it, but it arrives anyway) and a task that cannot be
/// read at all both reach ECS as STOPPED with a reason; neither runs, the unreadable one's
/// payload is not acknowledged, and the role's keys appear nowhere in the agent's log.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_the_agent_cannot_run_are_reported_stopped_with_a_reason() {
    let w = world("refuse").await;
    let family = unique("role");
    let td = w
        .sim
        .ecs()
        .await
        .register_task_definition()
        .family(&family)
        .task_role_arn("arn:aws:iam::123456789012:role/app")
        .container_definitions(container("app", true, &["sleep", "3600"]).build())
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    // This agent (no 169.254.170.2 NAT in the tests) does not advertise task IAM roles, so ECS
    // (and ec2sim) would not place the task here. It still arrives after a changed setting or
    // from an old placement: the instance is given the attribute behind the agent's back.
    let instance = w.agent.metadata().unwrap()["ContainerInstanceArn"]
        .as_str()
        .unwrap()
        .to_owned();
    w.sim
        .ecs()
        .await
        .put_attributes()
        .cluster(&w.cluster)
        .attributes(
            aws_sdk_ecs::types::Attribute::builder()
                .name("com.amazonaws.ecs.capability.task-iam-role")
                // moto finds an instance by its id, not its ARN.
                .target_id(instance.rsplit('/').next().unwrap())
                .target_type(aws_sdk_ecs::types::TargetType::ContainerInstance)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let task = run(&w, &td).await;
    let t = wait_status(&w, &task, "STOPPED", Duration::from_secs(30)).await;
    let reason = t.stopped_reason().unwrap_or_default();
    assert!(
        reason.contains("task IAM roles (taskRoleArn)"),
        "{reason:?}"
    );
    assert!(
        !docker_has_task(&task),
        "a container of the refused task reached Docker"
    );
    let sets = w.sim.get(&format!("/ec2sim/credentials?task_arn={task}"));
    let log = w.agent.log();
    let sets = sets["sets"].as_array().unwrap();
    assert!(!sets.is_empty(), "ec2sim sent no role credentials");
    for set in sets {
        for key in ["accessKeyId", "secretAccessKey", "sessionToken"] {
            let v = set["credentials"][key].as_str().unwrap();
            assert!(!log.contains(v), "{key} in the agent's log");
        }
    }

    // An unreadable task (two containers of one name): reported STOPPED with the official
    // agent's reason, and its payload never acknowledged.
    let bad = task.replace(task.rsplit('/').next().unwrap(), "unreadable0001");
    let twin = json!({"name": "twin", "image": image(), "essential": true});
    w.sim.post(
        "/ec2sim/acs/send",
        json!({"container_instance_arn": instance, "message": {"type": "PayloadMessage", "message": {
            "messageId": "unreadable-payload", "clusterArn": t.cluster_arn(), "containerInstanceArn": instance,
            "tasks": [{"arn": bad, "desiredStatus": "RUNNING", "family": "f", "version": "1",
                       "containers": [twin, twin]}]}}}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reported = w
            .sim
            .requests("ecs", "SubmitTaskStateChange")
            .into_iter()
            .find(|r| r["body"]["task"] == bad.as_str());
        if let Some(r) = reported {
            assert_eq!(r["body"]["status"], "STOPPED");
            let reason = r["body"]["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with("UnrecognizedACSTask: Error loading task: ")
                    && reason.contains("twin"),
                "{reason:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no STOPPED report for the unreadable task:\n{}",
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acks = w.sim.get("/ec2sim/acs/received?type=AckRequest");
    assert!(
        acks["frames"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["message"]["messageId"] != "unreadable-payload"),
        "the unreadable payload was acknowledged"
    );
    assert!(!docker_has_task(&bad));
}

/// Whether Docker has any container (any state) of `task`.
fn docker_has_task(task: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.amazonaws.ecs.task-arn={task}"),
        ])
        .output()
        .expect("docker ps");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Issue 18's wiring: the agent itself serves the task endpoint on its configured address. A
/// task with an execution role placed with RunTask: its container's environment names its
/// endpoint id, the endpoint answers the container and task metadata, and the execution role's
/// credentials ACS sent (by the id ACS chose).
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_serves_its_tasks_on_the_task_endpoint() {
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let w = World::start(
        "tep",
        &[
            ("ECS_HOSTD_TASK_ENDPOINT_ADDR", endpoint.as_str()),
            (
                "ECS_CONTAINER_INSTANCE_TAGS",
                r#"{"team":"web","tier":"prod"}"#,
            ),
        ],
        "",
    )
    .await;
    let td = register_task_definition(
        &w.sim,
        &unique("tep"),
        vec![container("app", true, &["sleep", "3600"]).build()],
        Some("arn:aws:iam::123456789012:role/ecsTaskExecutionRole"),
    )
    .await;
    let task = run(&w, &td).await;
    let t = wait_status(&w, &task, "RUNNING", Duration::from_secs(60)).await;
    let docker_id = t.containers()[0].runtime_id().unwrap().to_owned();
    let container_arn = t.containers()[0].container_arn().unwrap().to_owned();

    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &docker_id])
        .output()
        .expect("docker inspect");
    let env: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let endpoint = env
        .iter()
        .find_map(|e| e.strip_prefix("ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/"))
        .unwrap_or_else(|| panic!("no metadata URI in {env:?}"))
        .to_owned();
    let get = |path: String| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, body) = get(format!("/v4/{endpoint}")).await;
    assert_eq!(status, 200, "{body}\n{}", w.agent.log());
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c["DockerId"], docker_id.as_str());
    assert_eq!(c["ContainerARN"], container_arn.as_str());
    let (status, body) = get(format!("/v4/{endpoint}/task")).await;
    assert_eq!(status, 200, "{body}");
    let task_json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(task_json["TaskARN"], task.as_str());
    assert_eq!(task_json["Cluster"], w.cluster.as_str());
    assert_eq!(task_json["LaunchType"], "EC2");
    assert!(task_json.get("TaskTags").is_none(), "{body}");

    // /taskWithTags asks ECS (ec2sim) for both tag sets, with the instance's credentials.
    w.sim
        .ecs()
        .await
        .tag_resource()
        .resource_arn(&task)
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key("owner")
                .value("payments")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let asked = w.sim.requests("ecs", "ListTagsForResource").len();
    let (status, body) = get(format!("/v4/{endpoint}/taskWithTags")).await;
    assert_eq!(status, 200, "{body}");
    let tagged: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        tagged["TaskTags"],
        serde_json::json!({"owner": "payments"}),
        "{body}"
    );
    assert_eq!(
        tagged["ContainerInstanceTags"],
        serde_json::json!({"team": "web", "tier": "prod"}),
        "{body}"
    );
    assert!(tagged.get("Errors").is_none(), "{body}");
    let calls = w.sim.requests("ecs", "ListTagsForResource");
    assert_eq!(calls.len(), asked + 2, "one call per tag set: {calls:?}");
    for c in &calls[asked..] {
        assert_eq!(
            c["access_key_id"], "AKIDTEST",
            "not the instance's credentials: {c}"
        );
    }
    // Denied: still 200, the task object without tags and one Errors entry per set.
    w.sim.fault(
        serde_json::json!({"service": "ecs", "mode": "deny", "operations": ["ListTagsForResource"]}),
    );
    let (status, body) = get(format!("/v4/{endpoint}/taskWithTags")).await;
    w.sim
        .fault(serde_json::json!({"service": "ecs", "mode": null}));
    assert_eq!(status, 200, "{body}");
    let denied: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(denied.get("TaskTags").is_none(), "{body}");
    assert_eq!(denied["TaskARN"], task.as_str());
    let errors = denied["Errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(errors.len(), 2, "{body}");
    for (e, field, arn) in [
        (
            &errors[0],
            "ContainerInstanceTags",
            w.agent.metadata().unwrap()["ContainerInstanceArn"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        (&errors[1], "TaskTags", task.clone()),
    ] {
        assert_eq!(e["ErrorField"], field, "{body}");
        assert_eq!(e["ErrorCode"], "AccessDeniedException", "{body}");
        assert_eq!(e["StatusCode"], 400, "{body}");
        assert_eq!(e["ResourceARN"], arn.as_str(), "{body}");
        assert!(
            e["RequestId"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );
        assert!(
            e["ErrorMessage"]
                .as_str()
                .is_some_and(|m| m.contains("not authorized")),
            "{body}"
        );
    }

    // The execution role's credentials, by the id ACS sent.
    let sessions = w.sim.get("/ec2sim/acs/sessions");
    let sent = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["sent"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["type"] == "PayloadMessage")
        .flat_map(|f| {
            f["message"]["tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|t| t["arn"] == task.as_str() && t.get("executionRoleCredentials").is_some())
        .map(|t| t["executionRoleCredentials"].clone())
        .expect("executionRoleCredentials sent");
    let id = sent["credentialsId"].as_str().unwrap();
    let (status, body) = get(format!("/v2/credentials/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let creds: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(creds["AccessKeyId"], sent["accessKeyId"]);
    assert_eq!(creds["Token"], sent["sessionToken"]);
    let log = w.agent.log();
    assert!(
        !log.contains(id),
        "the credentials id is in the agent's log"
    );
    // The audit record goes to the log (target ecs_hostd::audit; no ECS_AUDIT_LOGFILE), with
    // the literal path only.
    assert!(
        log.lines().any(|l| l.contains(" 200 127.0.0.1:")
            && l.contains("\"/v2/credentials\"")
            && l.contains(&format!(
                "{task} GetCredentialsExecutionRole 2 {}",
                w.cluster
            ))),
        "no audit line in {log}"
    );

    stop_task(&w.sim, &w.cluster, &task).await;
    wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;
}
