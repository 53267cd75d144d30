//! The task endpoint (issue 18) with the real engine on the real Docker engine: a task with an
//! execution role runs; its container's environment carries the metadata URIs with its endpoint
//! id (and no credentials path: it has no task role); the endpoint, on a free loopback port,
//! answers v4/v3 metadata with the container's Docker id, name, ARN and the task's ARN, serves
//! credentials held in the store, answers a pending id 503, and drops the task role's entry once
//! the task stops. Real clients check the shapes: OpenTelemetry's ECS resource detector (otel
//! image) and botocore's container credential provider (awscli image), both with host
//! networking against the loopback port (the 169.254.170.2 NAT is not installed here).
//!
//! FAILS when Docker or the test images are missing: `scripts/world.sh world_setup` provides
//! them.

#[path = "common/docker.rs"]
mod common;
#[path = "common/images.rs"]
mod images;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ecs_hostd::app::EngineTargets;
use ecs_hostd::credentials::{RoleCredentials, RoleType};
use ecs_hostd::stats;
use ecs_hostd::task_endpoint::{self, EndpointState, InstanceFacts, audit, limit};
use ecs_hostd::tasks::{ReportStatus, TaskControl};
use images::world_image;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const GRACEFUL: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 0.2; done",
];
const WAIT: Duration = Duration::from_secs(90);

/// A test image built by `scripts/world.sh`: `$var`, else the newest tag of `repo`.
fn creds(id: &str, key: &str, secret: &str, token: &str) -> RoleCredentials {
    RoleCredentials {
        credentials_id: id.into(),
        role_arn: "arn:aws:iam::123456789012:role/app".into(),
        access_key_id: key.into(),
        secret_access_key: secret.into(),
        session_token: token.into(),
        expiration: "2030-07-01T13:00:00Z".into(),
    }
}

/// No ECS in this test: `/taskWithTags` is shown against ec2sim in e2e_tasks.rs.
struct NoEcs;

#[async_trait::async_trait]
impl task_endpoint::tags::TagSource for NoEcs {
    async fn tags(
        &self,
        _arn: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, task_endpoint::tags::TagFailure> {
        Err(task_endpoint::tags::TagFailure {
            message: "no ECS in this test".into(),
            ..Default::default()
        })
    }
}

/// Serves the endpoint for `eng` on a free loopback port, with the cgroup stats collector
/// sampling the engine's running containers every second.
async fn serve(eng: &Running) -> (u16, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = stats::Stats::new(stats::Collector::system());
    let view = eng.engine.view();
    let cancel = CancellationToken::new();
    tokio::spawn(stats::run(
        collector.clone(),
        Duration::from_secs(1),
        EngineTargets(view),
        cancel.clone(),
    ));
    let state = EndpointState {
        instance: InstanceFacts {
            cluster: "test".into(),
            container_instance_arn:
                "arn:aws:ecs:us-east-1:123456789012:container-instance/test/1f2e".into(),
            availability_zone: "us-east-1a".into(),
        },
        credentials: eng.credentials.clone(),
        tasks: Arc::new(eng.engine.view()),
        stats: Arc::new(collector),
        limiter: Arc::new(limit::RateLimiter::new(40, 60)),
        audit: Arc::new(audit::AuditLog::new(audit::Sink::Log)),
        tags: Arc::new(NoEcs),
    };
    tokio::spawn(task_endpoint::serve_on(listener, state, cancel.clone()));
    (port, cancel)
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

async fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn inspect(id: &str) -> Value {
    let out = docker_cli(None)
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "docker inspect {id}");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

/// Runs a one-off client container with host networking; its stdout.
fn run_client(run: &str, image: &str, env: &[String], cmd: &[&str]) -> String {
    let mut c = docker_cli(None);
    c.args(["run", "--rm", "--network", "host", "--label"])
        .arg(format!("{TEST_LABEL}={run}"));
    for e in env {
        c.args(["-e", e]);
    }
    let out = c.arg(image).args(cmd).output().expect("docker run");
    assert!(
        out.status.success(),
        "{cmd:?} in {image} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_metadata_of_a_real_task() {
    let image = test_image();
    let otel = world_image("ECS_HOSTD_OTEL_IMAGE", "ecs-hostd-test/otel");
    let awscli = world_image("ECS_HOSTD_AWSCLI_IMAGE", "ecs-hostd-test/awscli");
    let run = run_id("tep");
    let _cleanup = Cleanup::new(&run);
    let eng = start(settings()).await;
    let (port, cancel) = serve(&eng).await;

    let arn = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");
    let container_arn = format!("arn:aws:ecs:us-east-1:123456789012:container/test/{run}/web");
    let exec_id = format!("exec-{}", uuid::Uuid::new_v4());
    // As the ACS handler does: the credentials into the store, the task (as ACS sent it) to the
    // engine, which keeps only the role ARNs and credentials ids.
    eng.credentials.set(
        &arn,
        RoleType::TaskExecution,
        creds(
            &exec_id,
            "ASIAEXEC0001",
            "exec-secret-0001",
            "exec-token-0001",
        ),
    );
    let mut t = task(
        &arn,
        "tep",
        vec![container(&run, "web", &image, GRACEFUL, true, json!({}))],
    );
    t["launchType"] = json!("EC2");
    t["containers"][0]["containerArn"] = json!(container_arn);
    t["containers"][0]["environment"] =
        json!({"ECS_CONTAINER_METADATA_URI_V4": "http://user/value"});
    t["executionRoleCredentials"] = json!({
        "credentialsId": exec_id, "roleArn": "arn:aws:iam::123456789012:role/exec",
        "accessKeyId": "ASIAEXEC0001", "secretAccessKey": "exec-secret-0001",
        "sessionToken": "exec-token-0001", "expiration": "2030-07-01T13:00:00Z"
    });
    eng.engine.deliver(t).await.unwrap();
    let changes = eng
        .wait_changes("the task RUNNING", WAIT, |c| {
            task_reached(c, &arn, ReportStatus::Running)
        })
        .await;
    let docker_id = container_change(&changes, &arn, "web", ReportStatus::Running)
        .and_then(|c| c.runtime_id)
        .expect("the container's Docker id");

    // The environment: metadata URIs with the endpoint id (overriding the user's value), no
    // credentials path (no task role), and never the execution role's id or a secret.
    let inspected = inspect(&docker_id);
    let env: Vec<String> = serde_json::from_value(inspected["Config"]["Env"].clone()).unwrap();
    let var = |k: &str| -> Vec<String> {
        env.iter()
            .filter_map(|e| e.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .collect()
    };
    let v4 = var("ECS_CONTAINER_METADATA_URI_V4");
    assert_eq!(v4.len(), 1, "{env:?}");
    let endpoint = v4[0]
        .strip_prefix("http://169.254.170.2/v4/")
        .unwrap_or_else(|| panic!("{env:?}"))
        .to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&endpoint).unwrap().get_version_num(),
        4
    );
    assert_eq!(
        var("ECS_CONTAINER_METADATA_URI"),
        [format!("http://169.254.170.2/v3/{endpoint}")]
    );
    assert!(
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_empty(),
        "{env:?}"
    );
    let inspected_text = inspected.to_string();
    for never in [
        exec_id.as_str(),
        "exec-secret-0001",
        "exec-token-0001",
        "ASIAEXEC0001",
    ] {
        assert!(!inspected_text.contains(never), "{never} reached Docker");
    }

    // Metadata v4: the container and its task.
    let c = get_json(port, &format!("/v4/{endpoint}")).await;
    assert_eq!(c["DockerId"], docker_id.as_str());
    assert_eq!(c["Name"], "web");
    assert_eq!(
        c["DockerName"],
        inspected["Name"].as_str().unwrap().trim_start_matches('/')
    );
    assert_eq!(c["ContainerARN"], container_arn.as_str());
    assert_eq!(c["KnownStatus"], "RUNNING");
    assert_eq!(c["Image"], image.as_str());
    assert_eq!(c["ImageID"], inspected["Image"]);
    assert_eq!(c["Labels"]["com.amazonaws.ecs.task-arn"], arn.as_str());
    assert_eq!(c["Limits"], json!({"CPU": 10, "Memory": 32}));
    assert_eq!(c["Type"], "NORMAL");
    assert_eq!(c["Networks"][0]["NetworkMode"], "bridge");
    assert_eq!(
        c["Networks"][0]["IPv4Addresses"][0],
        inspected["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    );
    assert!(
        c["StartedAt"].as_str().unwrap().ends_with('Z'),
        "{}",
        c["StartedAt"]
    );
    let task = get_json(port, &format!("/v4/{endpoint}/task")).await;
    assert_eq!(task["TaskARN"], arn.as_str());
    assert_eq!(task["Cluster"], "test");
    assert_eq!(task["LaunchType"], "EC2");
    assert_eq!(task["Family"], "tep");
    assert_eq!(task["Revision"], "1");
    assert_eq!(task["KnownStatus"], "RUNNING");
    assert_eq!(task["FaultInjectionEnabled"], false);
    assert_eq!(task["Containers"][0]["DockerId"], docker_id.as_str());
    // v3: the same container without the v4-only keys.
    let c3 = get_json(port, &format!("/v3/{endpoint}")).await;
    assert_eq!(c3["DockerId"], docker_id.as_str());
    assert!(c3.get("ContainerARN").is_none(), "{c3}");
    // Stats, from the cgroup collector, in Docker's shape: once two samples exist the CPU
    // counters and their previous values are there (a client computes a rate from them).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stats = loop {
        // 500 until the collector's first round has seen the container.
        let (status, body) = get(port, &format!("/v4/{endpoint}/stats")).await;
        let s: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && s["precpu_stats"]["system_cpu_usage"].as_u64().unwrap_or(0) > 0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second sample: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(stats["id"], docker_id.as_str());
    assert!(
        stats["memory_stats"]["usage"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["cpu_stats"]["system_cpu_usage"].as_u64().unwrap()
            > stats["precpu_stats"]["system_cpu_usage"].as_u64().unwrap()
    );
    assert!(
        stats["network_rate_stats"]["rx_bytes_per_sec"].is_number(),
        "{stats}"
    );
    let v3_stats = get_json(port, &format!("/v3/{endpoint}/stats")).await;
    assert!(v3_stats.get("network_rate_stats").is_none(), "{v3_stats}");
    let task_stats = get_json(port, &format!("/v4/{endpoint}/task/stats")).await;
    assert_eq!(task_stats[docker_id.as_str()]["id"], docker_id.as_str());
    // An unknown endpoint id.
    assert_eq!(get(port, "/v4/not-an-endpoint").await.0, 404);

    // OpenTelemetry's ECS resource detector finds the task through our endpoint.
    let detected = run_client(
        &run,
        &otel,
        &[format!(
            "ECS_CONTAINER_METADATA_URI_V4=http://127.0.0.1:{port}/v4/{endpoint}"
        )],
        &["ecs-detect", "--raise"],
    );
    let detected: Value = serde_json::from_str(&detected).unwrap();
    assert_eq!(detected["aws.ecs.task.arn"], arn.as_str());
    assert_eq!(detected["aws.ecs.container.arn"], container_arn.as_str());
    assert_eq!(
        detected["aws.ecs.cluster.arn"],
        "arn:aws:ecs:us-east-1:123456789012:cluster/test"
    );
    assert_eq!(detected["aws.ecs.launchtype"], "ec2");
    assert_eq!(detected["aws.ecs.task.family"], "tep");
    assert_eq!(detected["aws.ecs.task.revision"], "1");

    // Credentials: the execution role's entry, exactly five keys.
    let (status, body) = get(port, &format!("/v2/credentials/{exec_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"RoleArn":"arn:aws:iam::123456789012:role/app","AccessKeyId":"ASIAEXEC0001","SecretAccessKey":"exec-secret-0001","Token":"exec-token-0001","Expiration":"2030-07-01T13:00:00Z"}"#
    );
    // A task-role entry delivered straight into the store (the engine refuses task roles until
    // the NAT plumbing exists), read by botocore's container credential provider.
    let app_id = format!("app-{}", uuid::Uuid::new_v4());
    eng.credentials.set(
        &arn,
        RoleType::TaskApplication,
        creds(&app_id, "ASIAAPP0001", "app-secret-0001", "app-token-0001"),
    );
    let (status, body) = get(port, &format!("/v1/credentials?id={app_id}")).await;
    assert_eq!(
        (status, body.contains("\"Token\":\"app-token-0001\"")),
        (200, true)
    );
    let got = run_client(
        &run,
        &awscli,
        &[format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:{port}/v2/credentials/{app_id}"
        )],
        &[
            "python3",
            "-c",
            "import botocore.session as s; c = s.get_session().get_credentials().get_frozen_credentials(); print(c.access_key, c.secret_key, c.token)",
        ],
    );
    assert_eq!(got, "ASIAAPP0001 app-secret-0001 app-token-0001");
    // A known id not yet delivered (after a restart): 503; an id never seen: 400.
    eng.credentials.register_pending(
        "arn:aws:ecs:us-east-1:123456789012:task/test/other",
        RoleType::TaskApplication,
        "pending-0001",
    );
    let (status, body) = get(port, "/v2/credentials/pending-0001").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("CredentialsUninitialized"));
    assert_eq!(get(port, "/v2/credentials/never-0001").await.0, 400);

    // The task stops: its task role's entry goes at once, the execution role's stays until
    // cleanup (dockerd's awslogs driver may still need it).
    eng.engine.stop(&arn).await.unwrap();
    eng.wait_changes("the task STOPPED", WAIT, |c| {
        task_reached(c, &arn, ReportStatus::Stopped)
    })
    .await;
    let (status, body) = get(port, &format!("/v2/credentials/{app_id}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidIdInRequest"));
    assert_eq!(
        get(port, &format!("/v2/credentials/{exec_id}")).await.0,
        200
    );
    let c = get_json(port, &format!("/v4/{endpoint}")).await;
    assert_eq!(c["KnownStatus"], "STOPPED");
    assert!(c.get("ExitCode").is_some(), "{c}");
    // A stopped container has no stats.
    assert_eq!(get(port, &format!("/v4/{endpoint}/stats")).await.0, 500);

    cancel.cancel();
    eng.shutdown().await;
}
