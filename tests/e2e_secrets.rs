//! End to end (issue 19): container `secrets` from SSM Parameter Store and Secrets Manager,
//! seeded in ec2sim with the AWS SDK as a user would, fetched by the real agent with the task's
//! execution-role credentials, and read back from the container's own environment and Docker's
//! log configuration. Every call is checked against the key that signed it (ec2sim maps keys to
//! the role they were issued for). Failures stop the task with the official agent's reasons;
//! no value reaches the agent's log or its state file.
//!
//! The second test adds environment files from S3 (seeded with boto3, in buckets of two regions)
//! and `repositoryCredentials`: a local `docker-registry` with htpasswd whose login is a Secrets
//! Manager secret, the right one and a wrong one.

mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/harness_main.rs"]
mod harness_main;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ecs::types::{
    ContainerDefinition, EnvironmentFile, EnvironmentFileType, LogConfiguration, LogDriver,
    RepositoryCredentials, Secret,
};
use common::*;
use harness::PrivateImage;
use serde_json::{Value, json};

/// Not a test: lets `harness.rs` re-execute this binary (unused here, required by the module).
#[test]
fn harness_process() {
    harness::harness_entry();
}

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

/// Registers `container` as a new task definition (with execution role `role`), runs it and
/// waits for `status`: the task's ARN and the task as ECS describes it then.
#[allow(clippy::too_many_arguments)]
async fn run_until(
    sim: &Ec2Sim,
    cluster: &str,
    agent: &Agent,
    family: &str,
    container: ContainerDefinition,
    role: Option<&str>,
    status: &str,
    within: Duration,
) -> (String, aws_sdk_ecs::types::Task) {
    let td = register_task_definition(sim, &unique(family), vec![container], role).await;
    let task = run_task(sim, cluster, &td).await;
    let t = wait_task_status(sim, cluster, &task, status, within, agent).await;
    (task, t)
}

/// ec2sim, a cluster and the agent registered in it, advertising `capabilities`.
async fn start_agent(
    prefix: &str,
    capabilities: &[&str],
) -> (Ec2Sim, String, tempfile::TempDir, Agent) {
    let sim = Ec2Sim::start();
    let cluster = unique(prefix);
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_HOSTD_METRICS", "false")
        .start();
    let instance = agent.wait_registered(Duration::from_secs(60));
    let attrs = describe_instance(&sim, &cluster, &instance).await;
    for a in capabilities {
        assert!(
            attrs["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == *a),
            "{a} not advertised"
        );
    }
    (sim, cluster, data, agent)
}

/// What the printer container printed (once its `DONE` line is there): its `S_` variables, and
/// the whole output for messages.
async fn printed_env(id: &str) -> (HashMap<String, String>, String) {
    let mut out = String::new();
    for _ in 0..100 {
        out = docker(&["logs", id]);
        if out.contains("DONE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (env, out)
}

/// Asserts that none of `values` is in the agent's log or in its state file under `data`.
fn assert_nowhere_kept(agent: &Agent, data: &std::path::Path, values: &[&str]) {
    let log = agent.log();
    let state: Vec<u8> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    let state = String::from_utf8_lossy(&state);
    for v in values {
        assert!(!log.contains(v), "{v} in the agent's log");
        assert!(!state.contains(v), "{v} in the state file");
    }
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
    let (sim, cluster, data, mut agent) = start_agent(
        "secrets",
        &[
            "ecs.capability.secrets.ssm.environment-variables",
            "ecs.capability.secrets.asm.environment-variables",
            "ecs.capability.secrets.ssm.bootstrap.log-driver",
            "ecs.capability.secrets.asm.bootstrap.log-driver",
        ],
    )
    .await;

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
    let gets_before = sim.requests("ssm", "GetParameters").len();
    let (_, t) = run_until(
        &sim,
        &cluster,
        &agent,
        "secrets",
        container,
        Some(EXEC_ROLE),
        "RUNNING",
        Duration::from_secs(60),
    )
    .await;
    let id = t.containers()[0].runtime_id().unwrap().to_owned();
    let (env, out) = printed_env(&id).await;
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
        let (_, t) = run_until(
            &sim,
            &cluster,
            &agent,
            "fail",
            printer(secrets).build(),
            role,
            "STOPPED",
            Duration::from_secs(60),
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
    let values: Vec<&str> = want
        .values()
        .filter(|v| v.contains(&run))
        .map(String::as_str)
        .collect();
    assert_nowhere_kept(&agent, data.path(), &values);
    agent.terminate();
}

/// Runs boto3 code against ec2sim (path-style S3, region `us-east-1` unless the code asks for
/// another); `A` holds `args`.
fn boto(sim: &Ec2Sim, code: &str, args: Value) -> String {
    let prelude = format!(
        r#"
import boto3, json, sys
from botocore.config import Config
A = json.loads(sys.argv[1])
def client(name, region="us-east-1"):
    return boto3.client(name, endpoint_url="{url}", region_name=region,
                        aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
                        config=Config(s3={{"addressing_style": "path"}}))
"#,
        url = sim.url()
    );
    let out = std::process::Command::new(python())
        .args(["-c", &format!("{prelude}\n{code}"), &args.to_string()])
        .output()
        .expect("run boto3");
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_files_and_a_private_registry_login_come_through_the_execution_role() {
    let (sim, cluster, data, mut agent) = start_agent(
        "envfiles",
        &[
            "ecs.capability.env-files.s3",
            "ecs.capability.private-registry-authentication.secretsmanager",
        ],
    )
    .await;

    // Two files in buckets of two regions (the second one's region is found by HeadBucket),
    // written with boto3 as a user would: CRLF lines, a comment, a line without `=`, a key the
    // task definition also sets, a key both files set.
    let run = unique("v");
    let (east, west) = (format!("env-east-{run}"), format!("env-west-{run}"));
    boto(
        &sim,
        r#"
e = client("s3")
e.create_bucket(Bucket=A["east"])
e.put_object(Bucket=A["east"], Key="conf/a.env", Body=A["a"].encode())
w = client("s3", "us-west-2")
w.create_bucket(Bucket=A["west"], CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
w.put_object(Bucket=A["west"], Key="b.env", Body=A["b"].encode())
"#,
        json!({
            "east": east,
            "west": west,
            "a": format!("S_FILE_A=a-{run}\r\n# S_COMMENT=no\r\nnot a variable\r\nS_SHARED=from-a\r\nS_PLAIN0=from-the-file\r\nS_SPACES= kept  as is \r\n"),
            "b": "S_SHARED=from-b\nS_FILE_B=b=with=equals",
        }),
    );

    // The registry's login in Secrets Manager, and a log-driver secret from Secrets Manager
    // (json-key form).
    let (user, password) = (format!("u-{run}"), format!("pw-{run}"));
    let registry = PrivateImage::start(&image(), "private", &user, &password);
    let conf = sim.sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let login = sm
        .create_secret()
        .name(format!("registry-{run}"))
        .secret_string(json!({"username": user, "password": password}).to_string())
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let logs = sm
        .create_secret()
        .name(format!("logs-{run}"))
        .secret_string(json!({"tag": format!("sm-tag-{run}")}).to_string())
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();

    let file = |arn: String| {
        EnvironmentFile::builder()
            .value(arn)
            .r#type(EnvironmentFileType::S3)
            .build()
            .unwrap()
    };
    let container = printer(vec![])
        .image(&registry.image)
        .environment_files(file(format!("arn:aws:s3:::{east}/conf/a.env")))
        .environment_files(file(format!("arn:aws:s3:::{west}/b.env")))
        .repository_credentials(
            RepositoryCredentials::builder()
                .credentials_parameter(&login)
                .build()
                .unwrap(),
        )
        .log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::JsonFile)
                .secret_options(secret("tag", &format!("{logs}:tag::")))
                .build()
                .unwrap(),
        )
        .build();
    let (task, t) = run_until(
        &sim,
        &cluster,
        &agent,
        "envfiles",
        container,
        Some(EXEC_ROLE),
        "RUNNING",
        Duration::from_secs(90),
    )
    .await;
    let id = t.containers()[0].runtime_id().unwrap().to_owned();
    let (env, out) = printed_env(&id).await;
    let want = [
        ("S_FILE_A", format!("a-{run}")),
        ("S_FILE_B", "b=with=equals".to_owned()),
        // The first file that sets a key wins; the task definition's environment wins over both.
        ("S_SHARED", "from-a".to_owned()),
        ("S_PLAIN0", "from the task definition".to_owned()),
        ("S_SPACES", " kept  as is ".to_owned()),
    ];
    for (k, v) in &want {
        assert_eq!(env.get(*k), Some(v), "{k} in the container:\n{out}");
    }
    assert!(!env.contains_key("S_COMMENT"), "{out}");
    assert_eq!(
        docker(&[
            "inspect",
            "--format",
            "{{index .HostConfig.LogConfig.Config \"tag\"}}",
            &id
        ])
        .trim(),
        format!("sm-tag-{run}")
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.Config.Image}}", &id]).trim(),
        registry.image,
        "the container runs the private registry's image"
    );

    // Calls: one HeadBucket per bucket, one GetObject per file, one GetSecretValue per secret;
    // every one signed with the task's execution-role key.
    let heads = sim.requests("s3", "HeadBucket");
    let objects = sim.requests("s3", "GetObject");
    let secrets = sim.requests("secretsmanager", "GetSecretValue");
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(secrets.len(), 2, "{secrets:?}");
    for r in heads.iter().chain(&objects).chain(&secrets) {
        assert_eq!(signer_role(&sim, r), "TaskExecution", "{r}");
    }

    // A wrong login: the registry refuses the pull and the task stops with
    // CannotPullContainerError, nothing created.
    let wrong = sm
        .create_secret()
        .name(format!("wrong-{run}"))
        .secret_string(json!({"username": user, "password": format!("not-{password}")}).to_string())
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let container = printer(vec![])
        .image(&registry.image)
        .repository_credentials(
            RepositoryCredentials::builder()
                .credentials_parameter(&wrong)
                .build()
                .unwrap(),
        )
        .build();
    // The image is cached now: remove it so the wrong login is really tried.
    stop_task(&sim, &cluster, &task).await;
    wait_task_status(
        &sim,
        &cluster,
        &task,
        "STOPPED",
        Duration::from_secs(60),
        &agent,
    )
    .await;
    docker(&["rm", "-f", &id]);
    docker(&["rmi", "-f", &registry.image]);
    let (_, t) = run_until(
        &sim,
        &cluster,
        &agent,
        "wrong",
        container,
        Some(EXEC_ROLE),
        "STOPPED",
        Duration::from_secs(120),
    )
    .await;
    let reason = t.containers()[0].reason().unwrap_or_default().to_owned();
    assert!(reason.starts_with("CannotPullContainerError: "), "{reason}");
    let lower = reason.to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("authentication required"),
        "the reason does not name the auth failure: {reason}"
    );
    assert!(t.containers()[0].runtime_id().is_none(), "{t:?}");

    // A missing file stops the task uncreated, with the official agent's words.
    let container = printer(vec![])
        .environment_files(file(format!("arn:aws:s3:::{east}/missing.env")))
        .build();
    let (_, t) = run_until(
        &sim,
        &cluster,
        &agent,
        "missing",
        container,
        Some(EXEC_ROLE),
        "STOPPED",
        Duration::from_secs(60),
    )
    .await;
    let why = t.stopped_reason().unwrap_or_default();
    assert!(
        why.starts_with(&format!(
            "unable to download env file with key missing.env from bucket {east}, error: NoSuchKey"
        )),
        "{why}"
    );
    assert!(t.containers()[0].runtime_id().is_none(), "{t:?}");

    // Nothing of the login or the files' values in the agent's log or state.
    assert_nowhere_kept(
        &agent,
        data.path(),
        &[&password, &format!("a-{run}"), &format!("sm-tag-{run}")],
    );
    agent.terminate();
}
