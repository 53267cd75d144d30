//! ECR pulls end to end: the real binary registered with ec2sim, a local `docker-registry` with
//! htpasswd standing in for an ECR registry (ec2sim's `POST /ec2sim/ecr` makes its
//! GetAuthorizationToken encode that registry's user and password, and gives images on it
//! `ecrAuthData` in the payload), and the real Docker engine pulling from it.
//!
//! Shows: a task with an execution role pulls with a token fetched with the execution role's
//! credentials, one without with the instance's own; a wrong token stops the task with a
//! `CannotPullContainerError` naming the auth failure; no credential reaches the agent's log.
//! Also `SdkEcr::token` directly against ec2sim.
//!
//! The pulled image is derived from the test image with an id of its own (a commit with a
//! label, as `docker_registry.rs` does), so removing it never touches the shared test image.
//! Tests FAIL (never skip) when Docker, the test image, docker-registry, htpasswd or the ec2sim
//! venv is missing.

mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/harness_main.rs"]
mod harness_main;

use std::time::Duration;

use aws_sdk_ecs::types::ContainerDefinition;
use base64::Engine as _;
use common::*;
use ecs_hostd::engine::pull::{EcrTokens, PullError, SdkEcr};
use ecs_hostd::tasks::RoleCredentials;
use harness::{PrivateImage, image_id};
use serde_json::{Value, json};

/// Not a test: lets `harness.rs` re-execute this binary (unused here, required by the module).
#[test]
fn harness_process() {
    harness::harness_entry();
}

const EXECUTION_ROLE: &str = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole";

/// The test image, which must be there.
fn test_image() -> String {
    let image = std::env::var("ECS_HOSTD_TEST_IMAGE")
        .unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into());
    assert!(
        image_id(&image).is_some(),
        "Docker or the test image {image} is missing: run `bash -c 'source scripts/world.sh; world_setup'`"
    );
    image
}

/// An "ECR" registry holding an image of its own, and ec2sim told about it.
struct EcrRegistry {
    /// The image reference on the registry.
    image: String,
    /// Id of that image (no other image has it).
    image_id: String,
    /// Right password (the htpasswd one).
    password: String,
    _private: PrivateImage,
}

impl EcrRegistry {
    /// Pushes a derived image to a registry with htpasswd user `AWS` and a fresh password, and
    /// makes ec2sim's GetAuthorizationToken encode `token_password` for it.
    fn start(sim: &Ec2Sim, token_password: Option<&str>) -> EcrRegistry {
        let password = format!("pw-{}", unique("ecr"));
        let private = PrivateImage::start(&test_image(), "ecr", "AWS", &password);
        sim.post(
            "/ec2sim/ecr",
            json!({
                "registry": private.registry.addr,
                "username": "AWS",
                "password": token_password.unwrap_or(&password),
            }),
        );
        EcrRegistry {
            image: private.image.clone(),
            image_id: private.image_id.clone(),
            password,
            _private: private,
        }
    }
}

struct World {
    sim: Ec2Sim,
    cluster: String,
    agent: Agent,
    /// The container instance ARN.
    instance_arn: String,
    _data: tempfile::TempDir,
}

fn start_agent(sim: Ec2Sim, cluster: String) -> World {
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "2s")
        .env("ECS_HOSTD_METRICS", "false")
        // Every task pulls, even when an earlier one left the image behind.
        .env("ECS_IMAGE_PULL_BEHAVIOR", "always")
        .start();
    let instance_arn = agent.wait_registered(Duration::from_secs(60));
    World {
        sim,
        cluster,
        agent,
        instance_arn,
        _data: data,
    }
}

async fn sim_with_cluster() -> (Ec2Sim, String) {
    let sim = Ec2Sim::start();
    let cluster = unique("ecr");
    create_cluster(&sim, &cluster).await;
    (sim, cluster)
}

async fn register(w: &World, image: &str, execution_role: Option<&str>) -> String {
    let app = ContainerDefinition::builder()
        .name("app")
        .image(image)
        .essential(true)
        .memory(64)
        .set_command(Some(vec!["sleep".into(), "3600".into()]))
        .build();
    register_task_definition(&w.sim, &unique("ecr"), vec![app], execution_role).await
}

async fn run(w: &World, td: &str) -> String {
    run_task(&w.sim, &w.cluster, td).await
}

async fn stop(w: &World, task: &str) {
    stop_task(&w.sim, &w.cluster, task).await
}

async fn wait_status(
    w: &World,
    task: &str,
    status: &str,
    within: Duration,
) -> aws_sdk_ecs::types::Task {
    wait_task_status(&w.sim, &w.cluster, task, status, within, &w.agent).await
}

/// The `executionRoleCredentials` ec2sim sent the agent for `task`.
fn execution_credentials(sim: &Ec2Sim, task: &str) -> Value {
    let sessions = sim.get("/ec2sim/acs/sessions");
    sessions["sessions"]
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
        .find(|t| t["arn"] == task && t.get("executionRoleCredentials").is_some())
        .map(|t| t["executionRoleCredentials"].clone())
        .unwrap_or_else(|| panic!("no executionRoleCredentials sent for {task}"))
}

/// Access key ids of the GetAuthorizationToken calls ec2sim saw.
fn token_keys(sim: &Ec2Sim) -> Vec<String> {
    sim.requests("ecr", "GetAuthorizationToken")
        .iter()
        .map(|r| {
            r["access_key_id"]
                .as_str()
                .unwrap_or("<unsigned>")
                .to_owned()
        })
        .collect()
}

/// ec2sim saw at least one GetAuthorizationToken, every one signed with `key` (`whose`, for the
/// message).
fn assert_tokens_signed_with(w: &World, key: &str, whose: &str) {
    let keys = token_keys(&w.sim);
    assert!(
        !keys.is_empty(),
        "no GetAuthorizationToken:\n{}",
        w.agent.log()
    );
    assert!(
        keys.iter().all(|k| k == key),
        "GetAuthorizationToken signed with {keys:?}, not {whose} {key}"
    );
}

/// The access key the agent signs its own ECS calls with (the instance's credentials).
fn instance_key(sim: &Ec2Sim) -> String {
    sim.requests("ecs", "RegisterContainerInstance")[0]["access_key_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn clear_requests(sim: &Ec2Sim) {
    http("DELETE", &format!("{}/ec2sim/requests", sim.url()), None);
}

/// None of `secrets` appears in the agent's log (which runs at debug level).
fn assert_not_logged(agent: &Agent, secrets: &[&str]) {
    let log = agent.log();
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!log.contains(s), "a credential reached the agent log: {s}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_pulls_use_the_execution_role_or_else_the_instance_role() {
    let (sim, cluster) = sim_with_cluster().await;
    let ecr = EcrRegistry::start(&sim, None);
    let w = start_agent(sim, cluster);
    let instance = instance_key(&w.sim);
    // ECS places ECR tasks only on instances advertising these.
    let described = describe_instance(&w.sim, &w.cluster, &w.instance_arn).await;
    for capability in [
        "com.amazonaws.ecs.capability.ecr-auth",
        "ecs.capability.execution-role-ecr-pull",
    ] {
        assert!(
            described["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == capability),
            "{capability} not advertised: {described}"
        );
    }

    // (a) With an execution role: the token comes from ECR called with its credentials.
    let td = register(&w, &ecr.image, Some(EXECUTION_ROLE)).await;
    clear_requests(&w.sim);
    let task = run(&w, &td).await;
    wait_status(&w, &task, "RUNNING", Duration::from_secs(90)).await;
    assert_eq!(
        image_id(&ecr.image).as_deref(),
        Some(ecr.image_id.as_str()),
        "the image came from the ECR registry"
    );
    let exec = execution_credentials(&w.sim, &task);
    let exec_key = exec["accessKeyId"].as_str().unwrap();
    assert_ne!(exec_key, instance);
    assert_tokens_signed_with(&w, exec_key, "the execution role's");
    stop(&w, &task).await;
    wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;

    // (b) Without one: the instance's own credentials.
    let td = register(&w, &ecr.image, None).await;
    clear_requests(&w.sim);
    let task = run(&w, &td).await;
    wait_status(&w, &task, "RUNNING", Duration::from_secs(90)).await;
    assert_tokens_signed_with(&w, &instance, "the instance's");
    stop(&w, &task).await;
    wait_status(&w, &task, "STOPPED", Duration::from_secs(60)).await;

    // (d) No credential in the log: not the registry password, not the token, not the
    // execution role's secret or session token.
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{}", ecr.password));
    assert_not_logged(
        &w.agent,
        &[
            &ecr.password,
            &token,
            exec["secretAccessKey"].as_str().unwrap(),
            exec["sessionToken"].as_str().unwrap(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ecr_token_stops_the_task_with_the_auth_failure() {
    let (sim, cluster) = sim_with_cluster().await;
    let wrong = format!("wrong-{}", unique("pw"));
    let ecr = EcrRegistry::start(&sim, Some(&wrong));
    let w = start_agent(sim, cluster);
    let td = register(&w, &ecr.image, Some(EXECUTION_ROLE)).await;
    let task = run(&w, &td).await;
    let t = wait_status(&w, &task, "STOPPED", Duration::from_secs(120)).await;
    let app = &t.containers()[0];
    let reason = app.reason().unwrap_or_default();
    assert!(
        reason.starts_with("CannotPullContainerError: "),
        "{reason}\n{}",
        w.agent.log()
    );
    println!("reason reported to ECS: {reason}");
    let lower = reason.to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("authentication required"),
        "the reason does not name the auth failure: {reason}"
    );
    assert!(image_id(&ecr.image).is_none());
    // The token was asked for (with the execution role): the registry refused it.
    let exec = execution_credentials(&w.sim, &task);
    assert_tokens_signed_with(
        &w,
        exec["accessKeyId"].as_str().unwrap(),
        "the execution role's",
    );
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{wrong}"));
    assert_not_logged(
        &w.agent,
        &[
            &wrong,
            &token,
            exec["secretAccessKey"].as_str().unwrap(),
            exec["sessionToken"].as_str().unwrap(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_ecr_token_against_ec2sim() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/ecr",
        json!({"registry": "127.0.0.1:5999", "username": "AWS", "password": "direct-pass"}),
    );
    let creds = || RoleCredentials {
        credentials_id: "cid".into(),
        role_arn: EXECUTION_ROLE.into(),
        access_key_id: "ASIADIRECTTEST".into(),
        secret_access_key: "direct-secret".into(),
        session_token: "direct-session".into(),
        expiration: "2030-01-01T00:00:00.000+0000".into(),
    };
    let c = SdkEcr
        .token(
            "us-west-2",
            Some("123456789012"),
            Some(&sim.url()),
            Some(creds()),
        )
        .await
        .unwrap();
    assert_eq!(c.username.as_deref(), Some("AWS"));
    assert_eq!(c.password.as_deref(), Some("direct-pass"));
    assert_eq!(c.serveraddress.as_deref(), Some("https://127.0.0.1:5999"));
    let calls = sim.requests("ecr", "GetAuthorizationToken");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["access_key_id"], "ASIADIRECTTEST");
    assert_eq!(calls[0]["region"], "us-west-2");

    // ECR unavailable: a retryable error naming what failed.
    sim.fault(json!({"service": "ecr", "mode": "unavailable"}));
    let err = SdkEcr
        .token("us-west-2", None, Some(&sim.url()), Some(creds()))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::EcrApi(_)), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("ServiceUnavailable"), "{text}");
    assert!(!text.contains("direct-secret") && !text.contains("direct-session"));
    assert_eq!(
        sim.requests("ecr", "GetAuthorizationToken").len(),
        2,
        "one attempt per call: the pull loop owns the retries"
    );
}
