//! End to end (issue 19): container `secrets` from SSM Parameter Store and Secrets Manager,
//! seeded in ec2sim with the AWS SDK as a user would, fetched by the real agent with the task's
//! execution-role credentials, and read back from the container's own environment and Docker's
//! log configuration. Every call is checked against the key that signed it (ec2sim maps keys to
//! the role they were issued for). Failures stop the task with the official agent's reasons;
//! no value reaches the agent's log or its state file.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, LogConfiguration, LogDriver, Secret};
use common::*;
use serde_json::json;

const EXEC_ROLE: &str = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole";

fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

fn secret(name: &str, value_from: &str) -> Secret {
    Secret::builder()
        .name(name)
        .value_from(value_from)
        .build()
        .unwrap()
}

/// A container that prints the variables starting with `S_`, then waits.
fn printer(secrets: Vec<Secret>) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    ContainerDefinition::builder()
        .name("app")
        .image(image())
        .essential(true)
        .memory(64)
        .command("sh")
        .command("-c")
        .command("env | grep '^S_' | sort; echo DONE; sleep 3600")
        .environment(
            aws_sdk_ecs::types::KeyValuePair::builder()
                .name("S_PLAIN0")
                .value("from the task definition")
                .build(),
        )
        .set_secrets(Some(secrets))
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The role ec2sim issued the key that signed `request` for.
fn signer_role(sim: &Ec2Sim, request: &serde_json::Value) -> String {
    let key = request["access_key_id"].as_str().unwrap_or_default();
    let k = sim.get(&format!("/ec2sim/credentials/keys?access_key_id={key}"));
    k["keys"][0]["role_type"]
        .as_str()
        .unwrap_or("not a task key")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_container_with_the_execution_role_and_failures_stop_the_task() {
    let sim = Ec2Sim::start();
    let cluster = unique("secrets");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_HOSTD_METRICS", "false")
        .start();
    let instance = agent.wait_registered(Duration::from_secs(60));
    let attrs = describe_instance(&sim, &cluster, &instance).await;
    for a in [
        "ecs.capability.secrets.ssm.environment-variables",
        "ecs.capability.secrets.asm.environment-variables",
        "ecs.capability.secrets.ssm.bootstrap.log-driver",
        "ecs.capability.secrets.asm.bootstrap.log-driver",
    ] {
        assert!(
            attrs["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == a),
            "{a} not advertised"
        );
    }

    // Seeded as a user would: 20 SSM parameters (plain and SecureString; one asked by ARN, one
    // for the log driver) and a Secrets Manager secret with a current and a previous version.
    let conf = sim.sdk_config().await;
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let run = unique("v");
    let mut want: HashMap<String, String> = HashMap::new();
    let mut secrets = Vec::new();
    for i in 0..17 {
        let name = format!("/{run}/plain/{i}");
        let value = format!("plain-{run}-{i}");
        ssm.put_parameter()
            .name(&name)
            .value(&value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
        secrets.push(secret(&format!("S_P{i}"), &name));
        want.insert(format!("S_P{i}"), value);
    }
    let secure = format!("/{run}/secure");
    ssm.put_parameter()
        .name(&secure)
        .value(format!("secure-{run}"))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    secrets.push(secret("S_SECURE", &secure));
    want.insert("S_SECURE".into(), format!("secure-{run}"));
    let by_arn = format!("/{run}/by-arn");
    ssm.put_parameter()
        .name(&by_arn)
        .value(format!("arn-{run}"))
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    secrets.push(secret(
        "S_BY_ARN",
        &format!("arn:aws:ssm:us-east-1:123456789012:parameter{by_arn}"),
    ));
    want.insert("S_BY_ARN".into(), format!("arn-{run}"));
    let created = sm
        .create_secret()
        .name(format!("db-{run}"))
        .secret_string(json!({"user": "app", "pass": format!("old-{run}")}).to_string())
        .send()
        .await
        .unwrap();
    let arn = created.arn().unwrap().to_owned();
    sm.put_secret_value()
        .secret_id(&arn)
        .secret_string(
            json!({"user": "app", "pass": format!("new-{run}"), "port": 5432}).to_string(),
        )
        .send()
        .await
        .unwrap();
    secrets.push(secret("S_WHOLE", &arn));
    want.insert(
        "S_WHOLE".into(),
        json!({"user": "app", "pass": format!("new-{run}"), "port": 5432}).to_string(),
    );
    secrets.push(secret("S_PASS", &format!("{arn}:pass::")));
    want.insert("S_PASS".into(), format!("new-{run}"));
    secrets.push(secret("S_USER", &format!("{arn}:user::")));
    want.insert("S_USER".into(), "app".into());
    secrets.push(secret("S_PORT", &format!("{arn}:port::")));
    want.insert("S_PORT".into(), "5432".into());
    secrets.push(secret("S_OLD_PASS", &format!("{arn}:pass:AWSPREVIOUS:")));
    want.insert("S_OLD_PASS".into(), format!("old-{run}"));
    // An explicit environment variable of the same name loses to the secret.
    secrets.push(secret("S_PLAIN0", &format!("/{run}/plain/0")));
    want.insert("S_PLAIN0".into(), format!("plain-{run}-0"));
    assert_eq!(
        secrets
            .iter()
            .filter(|s| !s.value_from().contains("secretsmanager"))
            .count(),
        20
    );

    // A log-driver secret: json-file's `tag` option from SSM.
    let tag = format!("/{run}/tag");
    ssm.put_parameter()
        .name(&tag)
        .value(format!("tag-{run}"))
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let container = printer(secrets)
        .log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::JsonFile)
                .secret_options(secret("tag", &tag))
                .build()
                .unwrap(),
        )
        .build();
    let td =
        register_task_definition(&sim, &unique("secrets"), vec![container], Some(EXEC_ROLE)).await;
    let gets_before = sim.requests("ssm", "GetParameters").len();
    let task = run_task(&sim, &cluster, &td).await;
    let t = wait_task_status(
        &sim,
        &cluster,
        &task,
        "RUNNING",
        Duration::from_secs(60),
        &agent,
    )
    .await;
    let id = t.containers()[0].runtime_id().unwrap().to_owned();
    let mut out = String::new();
    for _ in 0..100 {
        out = docker(&["logs", &id]);
        if out.contains("DONE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env: HashMap<String, String> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (k, v) in &want {
        assert_eq!(env.get(k), Some(v), "{k} in the container:\n{out}");
    }
    // The figure for the closing note (printed, not judged): 20 SSM names and 5 Secrets Manager
    // values, as the agent timed the fetch.
    if let Some(line) = agent
        .log()
        .lines()
        .find(|l| l.contains("Task secrets fetched."))
    {
        eprintln!("secrets resolution (20 SSM names, 5 Secrets Manager values): {line}");
    }
    assert_eq!(
        docker(&[
            "inspect",
            "--format",
            "{{index .HostConfig.LogConfig.Config \"tag\"}}",
            &id
        ])
        .trim(),
        format!("tag-{run}")
    );
    // 21 SSM secrets, 20 distinct names in one region: 2 calls. Every call, and every Secrets
    // Manager call, signed with this task's execution-role key.
    let gets = sim.requests("ssm", "GetParameters");
    assert_eq!(gets.len() - gets_before, 2, "{:?}", &gets[gets_before..]);
    let sm_gets = sim.requests("secretsmanager", "GetSecretValue");
    assert_eq!(sm_gets.len(), 2, "one per (secret, stage): {sm_gets:?}");
    for r in gets[gets_before..].iter().chain(&sm_gets) {
        assert_eq!(signer_role(&sim, r), "TaskExecution", "{r}");
    }

    // Failures: each stops the task, uncreated, with its reason.
    let denied = sm
        .create_secret()
        .name(format!("denied-{run}"))
        .secret_string("never seen")
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    sim.post("/ec2sim/deny", json!({"resource": denied}));
    let missing = format!("/{run}/does-not-exist");
    let cases = [
        (
            vec![secret("S_X", &missing)],
            Some(EXEC_ROLE),
            format!(
                "fetching secret data from SSM Parameter Store in us-east-1: invalid parameters: {missing}"
            ),
        ),
        (
            vec![secret("S_X", &denied)],
            Some(EXEC_ROLE),
            format!(
                "fetching secret data from AWS Secrets Manager in region us-east-1: secret {denied}: AccessDeniedException"
            ),
        ),
        (
            vec![secret("S_X", &secure)],
            None,
            "ssm secret resource: unable to find execution role credentials".to_owned(),
        ),
    ];
    for (secrets, role, reason) in cases {
        let td =
            register_task_definition(&sim, &unique("fail"), vec![printer(secrets).build()], role)
                .await;
        let task = run_task(&sim, &cluster, &td).await;
        let t = wait_task_status(
            &sim,
            &cluster,
            &task,
            "STOPPED",
            Duration::from_secs(60),
            &agent,
        )
        .await;
        let why = t.stopped_reason().unwrap_or_default();
        assert!(why.starts_with(&reason), "{why:?} is not {reason:?}");
        assert!(
            t.containers()[0].runtime_id().is_none(),
            "a container was created: {t:?}"
        );
    }

    // Nothing of a value in the agent's log or its state file.
    let log = agent.log();
    let state: Vec<u8> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    let state = String::from_utf8_lossy(&state);
    for v in want.values().filter(|v| v.contains(&run)) {
        assert!(!log.contains(v.as_str()), "{v} in the agent's log");
        assert!(!state.contains(v.as_str()), "{v} in the state file");
    }
    agent.terminate();
}
