//! `ecs-hostd check` against a good world and against broken ones: each reason on its own line,
//! exit 1 on any failure.

mod common;

use common::*;
use serde_json::json;

fn good_env(sim: &Ec2Sim, cluster: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "AKIDTEST".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "secret".into()),
        ("AWS_ENDPOINT_URL".into(), sim.url()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), sim.url()),
        ("ECS_CLUSTER".into(), cluster.into()),
    ]
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn fail_line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("FAIL {check}:")))
        .unwrap_or_else(|| panic!("no FAIL line for {check}:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_in_a_good_world() {
    let sim = Ec2Sim::start();
    let cluster = unique("check");
    create_cluster(&sim, &cluster).await;
    let env = good_env(&sim, &cluster);
    let (code, out) = run_check(&as_refs(&env), "ECS_CLUSTER=ignored-by-env\n");
    assert_eq!(code, 0, "{out}");
    for check in ["config", "docker", "imds", "credentials", "cluster"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok   {check}:"))),
            "{check}:\n{out}"
        );
    }
    assert!(out.contains(&sim.default_instance()), "{out}");
    assert!(out.contains("all checks passed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_every_problem_of_a_broken_world() {
    let sim = Ec2Sim::start();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut env = good_env(&sim, "no-such-cluster");
    env.retain(|(k, _)| k != "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), closed));
    env.push((
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    ));
    env.push(("AWS_DEFAULT_REGION".into(), "us-east-1".into()));
    let config = "ECS_RESERVED_MEMORY=lots\nthis is not a setting\n";
    let (code, out) = run_check(&as_refs(&env), config);
    assert_eq!(code, 1, "{out}");
    let config_fails: Vec<_> = out
        .lines()
        .filter(|l| l.starts_with("FAIL config:"))
        .collect();
    assert_eq!(config_fails.len(), 2, "{out}");
    assert!(
        config_fails[0].contains("ecs.config:1: ECS_RESERVED_MEMORY: expected"),
        "{out}"
    );
    assert!(config_fails[1].contains("ecs.config:2:"), "{out}");
    assert!(fail_line(&out, "docker").contains("nonexistent"), "{out}");
    assert!(fail_line(&out, "imds").contains("unreachable"), "{out}");
    assert!(
        fail_line(&out, "cluster").contains("no-such-cluster does not exist"),
        "{out}"
    );
    assert!(out.contains("ok   credentials"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_missing_credentials_and_imdsv1_only() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"token_fault": "405"}),
    );
    let env = [
        ("AWS_ENDPOINT_URL", sim.url()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.url()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out) = run_check(&env, "");
    assert_eq!(code, 1, "{out}");
    assert!(fail_line(&out, "imds").contains("IMDSv1"), "{out}");
    assert!(
        fail_line(&out, "credentials").contains("none found"),
        "{out}"
    );
    assert!(fail_line(&out, "cluster").contains("skipped"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_toml_is_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("config.toml");
    std::fs::write(&toml, "[metrics]\nprofile = \"fancy\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-hostd"))
        .args(["check", "--config"])
        .arg(&toml)
        .arg("--ecs-config")
        .arg("/dev/null")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains(&format!(
            "FAIL config: {}:2: metrics.profile: expected cwagent, legacy or both",
            toml.display()
        )),
        "{text}"
    );

    // `run` with the same file is terminal: exit 5 before touching anything.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-hostd"))
        .args(["run", "--config"])
        .arg(&toml)
        .arg("--ecs-config")
        .arg("/dev/null")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&run.stderr).contains("metrics.profile"));
}
