//! Task IAM roles end to end, through the real NAT, with clients nobody here wrote (issue 18).
//!
//! The test re-runs itself under `unshare --net --mount` (never touching the shared host's
//! tables): inside that network namespace it starts ec2sim, a dockerd of its own (same network
//! namespace, own mount namespace and data root) and the real agent binary with its host NAT on.
//! Tasks placed with RunTask then run the AWS CLI (Debian's, `ecs-hostd-test/awscli`) in bridge
//! and in host network mode: its standard container credential provider finds the task role's
//! credentials at 169.254.170.2 and calls ec2sim's STS as that role. OpenTelemetry's ECS resource
//! detector reads metadata v4 from a bridge container the same way.

mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/private_docker.rs"]
mod private_docker;
#[path = "common/shapes.rs"]
mod shapes;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode};
use common::*;
use images::world_image;
use netns::sh;
use private_docker::PrivateDocker;
use serde_json::Value;
use shapes::LINKED_GRAPH;

const TEST: &str = "task_roles_reach_the_aws_cli_in_bridge_and_host_mode_through_the_nat";

#[test]
fn task_roles_reach_the_aws_cli_in_bridge_and_host_mode_through_the_nat() {
    if netns::inside() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside());
    }
    netns::rerun_in_own_netns(TEST);
}

/// Forwards `from` to `to` (bridge containers reach ec2sim, which binds 127.0.0.1, through the
/// bridge's gateway address).
fn forward(from: &str, to: String) {
    let l = TcpListener::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    std::thread::spawn(move || {
        for inbound in l.incoming().flatten() {
            let to = to.clone();
            std::thread::spawn(move || {
                let Ok(outbound) = TcpStream::connect(&to) else {
                    return;
                };
                let (mut ri, mut wi) = (inbound.try_clone().unwrap(), inbound);
                let (mut ro, mut wo) = (outbound.try_clone().unwrap(), outbound);
                let a = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut ri, &mut wo);
                    let _ = wo.shutdown(std::net::Shutdown::Write);
                });
                let mut buf = [0u8; 16384];
                while let Ok(n) = ro.read(&mut buf) {
                    if n == 0 || wi.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = wi.shutdown(std::net::Shutdown::Write);
                let _ = a.join();
            });
        }
    });
}

struct World {
    sim: Ec2Sim,
    cluster: String,
    agent: Agent,
    docker: PrivateDocker,
    awscli: String,
    otel: String,
    sim_port: u16,
    _data: tempfile::TempDir,
}

impl World {
    async fn task_definition(
        &self,
        family: &str,
        role: Option<&str>,
        mode: NetworkMode,
        image: &str,
        script: &str,
    ) -> String {
        let c = ContainerDefinition::builder()
            .name("app")
            .image(image)
            .essential(true)
            .memory(128)
            .command("sh")
            .command("-c")
            .command(script)
            .docker_labels("ecs-hostd.test", "roles")
            .build();
        self.sim
            .ecs()
            .await
            .register_task_definition()
            .family(family)
            .network_mode(mode)
            .set_task_role_arn(role.map(str::to_owned))
            .container_definitions(c)
            .send()
            .await
            .unwrap()
            .task_definition()
            .unwrap()
            .task_definition_arn()
            .unwrap()
            .to_owned()
    }

    /// Runs the task until its container printed `marker` (or stopped); returns its output.
    async fn output_of(&self, td: &str, marker: &str) -> (String, String) {
        let task = run_task(&self.sim, &self.cluster, td).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ids = self.docker.run(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.amazonaws.ecs.task-arn={task}"),
            ]);
            if let Some(id) = ids.lines().next() {
                let out = self.docker.cli().args(["logs", id]).output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if text.contains(marker) {
                    return (task, text);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{td}: no {marker:?} in the container's output:\n{}",
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

async fn inside() {
    sh("ip link set lo up");
    let awscli = world_image("ECS_HOSTD_AWSCLI_IMAGE", "ecs-hostd-test/awscli");
    let otel = world_image("ECS_HOSTD_OTEL_IMAGE", "ecs-hostd-test/otel");
    let docker = PrivateDocker::start_in_this_netns();
    for image in [&awscli, &otel] {
        docker.load_image(image);
    }
    let sim = Ec2Sim::start();
    let sim_port: u16 = sim.url().rsplit(':').next().unwrap().parse().unwrap();
    // The private engine's default bridge gateway: what bridge containers reach this namespace by.
    let gateway = sh("ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1")
        .trim()
        .to_owned();
    assert!(!gateway.is_empty(), "the private engine has no docker0");
    // Every instance has a default route; locally generated packets (host-network containers,
    // dockerd) need one before OUTPUT's NAT sees them.
    sh("ip route add default dev docker0");
    forward(
        &format!("{gateway}:{sim_port}"),
        format!("127.0.0.1:{sim_port}"),
    );

    let cluster = unique("roles");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit/audit.log");
    let mut spec = AgentSpec::new(&sim, &cluster, data.path())
        .env("DOCKER_HOST", &docker.host)
        .env("ECS_HOSTD_HOST_NAT", "true")
        .env("ECS_HOSTD_TASK_ENDPOINT_ADDR", "127.0.0.1:51679")
        .env("ECS_HOSTD_METRICS", "false")
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_AUDIT_LOGFILE", audit.to_str().unwrap());
    // The ports of the AMI: 51678 for the introspection API, 51679 for the endpoint.
    spec.api_port = 51678;
    let mut agent = spec.start();
    agent.wait_registered(Duration::from_secs(60));
    let w = World {
        sim,
        cluster,
        agent,
        docker,
        awscli,
        otel,
        sim_port,
        _data: data,
    };

    // The instance advertises the task-role capabilities now that the path works.
    let attrs = describe_instance(&w.sim, &w.cluster, &registered_arn(&w)).await;
    for a in [
        "com.amazonaws.ecs.capability.task-iam-role",
        "com.amazonaws.ecs.capability.task-iam-role-network-host",
        "ecs.capability.execution-role-awslogs",
    ] {
        assert!(
            attrs["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == a),
            "{a} not advertised: {attrs}"
        );
    }

    let sts = |endpoint: &str| {
        format!(
            "aws sts get-caller-identity --region us-east-1 --endpoint-url {endpoint} --output json; echo DONE; sleep 3600"
        )
    };
    let bridge_endpoint = format!("http://{gateway}:{}", w.sim_port);
    let host_endpoint = format!("http://127.0.0.1:{}", w.sim_port);
    let cases = [
        ("app", NetworkMode::Bridge, bridge_endpoint.clone()),
        ("app", NetworkMode::Host, host_endpoint.clone()),
        ("other", NetworkMode::Bridge, bridge_endpoint.clone()),
    ];
    for (role, mode, endpoint) in &cases {
        let role_arn = format!("arn:aws:iam::123456789012:role/{role}");
        let td = w
            .task_definition(
                &unique("role"),
                Some(&role_arn),
                mode.clone(),
                &w.awscli,
                &sts(endpoint),
            )
            .await;
        let (task, out) = w.output_of(&td, "DONE").await;
        let task_id = task.rsplit('/').next().unwrap();
        assert!(
            out.contains(&format!(
                "arn:aws:sts::123456789012:assumed-role/{role}/{task_id}"
            )),
            "{mode:?}, role {role}: the AWS CLI did not call STS as the task role:\n{out}\n{}",
            w.agent.log()
        );
    }
    // A task without a role gets no credentials at all (no instance role through IMDS either:
    // IMDS is not reachable from here).
    let td = w
        .task_definition(
            &unique("norole"),
            None,
            NetworkMode::Bridge,
            &w.awscli,
            &sts(&bridge_endpoint),
        )
        .await;
    let (_, out) = w.output_of(&td, "DONE").await;
    assert!(out.contains("Unable to locate credentials"), "{out}");

    // A bridge container reaches the endpoint only as 169.254.170.2: not on the gateway's
    // address at 51679, nor the introspection API at 51678 (an unknown id answers 400, so the
    // endpoint itself is reached through the NAT).
    let probe = |url: &str| {
        format!("printf '%s ' $(curl -s -m 3 -o /dev/null -w '%{{http_code}}' {url}); echo {url}; ")
    };
    let td = w
        .task_definition(
            &unique("direct"),
            None,
            NetworkMode::Bridge,
            &w.awscli,
            &format!(
                "{}{}{}echo DONE; sleep 3600",
                probe(&format!("http://{gateway}:51679/v2/credentials/x")),
                probe(&format!("http://{gateway}:51678/v1/metadata")),
                probe("http://169.254.170.2/v2/credentials/x"),
            ),
        )
        .await;
    let (_, out) = w.output_of(&td, "DONE").await;
    for (code, url) in [
        ("000", format!("http://{gateway}:51679/v2/credentials/x")),
        ("000", format!("http://{gateway}:51678/v1/metadata")),
        ("400", "http://169.254.170.2/v2/credentials/x".to_owned()),
    ] {
        assert!(
            out.lines().any(|l| l == format!("{code} {url}")),
            "expected {code} from {url}:\n{out}"
        );
    }
    // The control: this namespace does reach the introspection API on loopback.
    assert!(get_json("http://127.0.0.1:51678/v1/metadata")["ContainerInstanceArn"].is_string());

    // OpenTelemetry's ECS detector, in a bridge container, through 169.254.170.2.
    let td = w
        .task_definition(
            &unique("otel"),
            None,
            NetworkMode::Bridge,
            &w.otel,
            "ecs-detect; echo DONE; sleep 3600",
        )
        .await;
    let (task, out) = w.output_of(&td, "DONE").await;
    assert!(
        out.contains(&task),
        "the detector did not find the task ARN:\n{out}"
    );
    assert!(out.contains("\"aws.ecs.launchtype\": \"ec2\""), "{out}");

    // Docker's own awslogs driver ships a container's output to ec2sim's CloudWatch Logs, signed
    // with the execution role's credentials that dockerd fetched through 169.254.170.2.
    let group = unique("lg");
    let lines = w.awslogs_task(&group).await;
    assert!(
        lines.iter().any(|l| l == "hello from awslogs"),
        "{lines:?}\n{}",
        w.agent.log()
    );
    let puts = w.sim.requests("logs", "PutLogEvents");
    assert!(!puts.is_empty(), "dockerd never called PutLogEvents");
    for p in &puts {
        let key = p["access_key_id"].as_str().unwrap_or_default();
        let k = w
            .sim
            .get(&format!("/ec2sim/credentials/keys?access_key_id={key}"));
        assert_eq!(
            k["keys"][0]["role_type"], "TaskExecution",
            "PutLogEvents signed with {key}: {k}"
        );
    }

    // Issue 24 item 1's shape, with awslogs to ec2sim: ten containers, links and a two-deep
    // dependsOn chain, three times; after every STOPPED, Docker runs none of them.
    for round in 0..3 {
        w.graph_round(round, &group).await;
    }

    // Refresh over ACS: the new keys are served at once (asked from this namespace: host path).
    let creds_task = {
        let role_arn = "arn:aws:iam::123456789012:role/app";
        let td = w
            .task_definition(
                &unique("refresh"),
                Some(role_arn),
                NetworkMode::Host,
                &w.awscli,
                "echo DONE; sleep 3600",
            )
            .await;
        w.output_of(&td, "DONE").await.0
    };
    let sets = w
        .sim
        .get(&format!("/ec2sim/credentials?task_arn={creds_task}"));
    let app = sets["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role_type"] == "TaskApplication")
        .unwrap()
        .clone();
    let id = app["credentials_id"].as_str().unwrap().to_owned();
    let url = format!("http://169.254.170.2/v2/credentials/{id}");
    let first = get_json(&url);
    assert_eq!(first["AccessKeyId"], app["credentials"]["accessKeyId"]);
    // The local API's view of the running task (checked for secrets below).
    let v1_tasks = get_json("http://127.0.0.1:51678/v1/tasks").to_string();
    assert!(v1_tasks.contains(&creds_task), "{v1_tasks}");
    assert!(first["AccessKeyId"].is_string(), "{first}");
    let pushed = w.sim.post(
        "/ec2sim/acs/credentials",
        serde_json::json!({"task_arn": creds_task, "role_type": "TaskApplication"}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&url)["AccessKeyId"] != pushed["access_key_id"] {
        assert!(
            Instant::now() < deadline,
            "the refreshed keys were not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_task(&w.sim, &w.cluster, &creds_task).await;
    wait_task_status(
        &w.sim,
        &w.cluster,
        &creds_task,
        "STOPPED",
        Duration::from_secs(30),
        &w.agent,
    )
    .await;
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "400");

    // Nothing of a secret (nor a credentials id) in the agent's log, its state file, the audit
    // file or /v1/tasks. The audit file has the requests: the task roles' and dockerd's.
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains(" GetCredentials 2 "), "{audit}");
    assert!(audit.contains(" GetCredentialsExecutionRole 2 "), "{audit}");
    assert!(audit.contains(" 400 "), "the unknown id's request: {audit}");
    let log = w.agent.log();
    let state: Vec<u8> = std::fs::read_dir(w._data.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    let state = String::from_utf8_lossy(&state);
    for set in w.sim.get("/ec2sim/credentials")["sets"].as_array().unwrap() {
        for key in ["secretAccessKey", "sessionToken"] {
            let v = set["credentials"][key].as_str().unwrap();
            assert!(!log.contains(v), "{key} in the agent's log");
            assert!(!state.contains(v), "{key} in the state file");
            assert!(!audit.contains(v), "{key} in the audit file");
            assert!(!v1_tasks.contains(v), "{key} in /v1/tasks");
        }
        let id = set["credentials_id"].as_str().unwrap();
        assert!(!log.contains(id), "a credentials id in the agent's log");
        assert!(!audit.contains(id), "a credentials id in the audit file");
        assert!(!v1_tasks.contains(id), "a credentials id in /v1/tasks");
    }
}

impl World {
    /// Runs a task with an execution role whose container logs through `awslogs` to ec2sim
    /// (dockerd shares this namespace, so 127.0.0.1 reaches it); returns the log lines read back
    /// with boto3, as a user would.
    async fn awslogs_task(&self, group: &str) -> Vec<String> {
        let options = [
            ("awslogs-group", group.to_owned()),
            ("awslogs-region", "us-east-1".to_owned()),
            ("awslogs-create-group", "true".to_owned()),
            ("awslogs-stream-prefix", "web".to_owned()),
            (
                "awslogs-endpoint",
                format!("http://127.0.0.1:{}", self.sim_port),
            ),
        ];
        let mut log = aws_sdk_ecs::types::LogConfiguration::builder()
            .log_driver(aws_sdk_ecs::types::LogDriver::Awslogs);
        for (k, v) in options {
            log = log.options(k, v);
        }
        let c = ContainerDefinition::builder()
            .name("app")
            .image(&self.awscli)
            .essential(true)
            .memory(64)
            .command("sh")
            .command("-c")
            .command("echo hello from awslogs; sleep 3600")
            .docker_labels("ecs-hostd.test", "roles")
            .log_configuration(log.build().unwrap())
            .build();
        let td = register_task_definition(
            &self.sim,
            &unique("awslogs"),
            vec![c],
            Some("arn:aws:iam::123456789012:role/exec"),
        )
        .await;
        let task = run_task(&self.sim, &self.cluster, &td).await;
        wait_task_status(
            &self.sim,
            &self.cluster,
            &task,
            "RUNNING",
            Duration::from_secs(60),
            &self.agent,
        )
        .await;
        let script = format!(
            "import boto3, json\n\
             c = boto3.client('logs', region_name='us-east-1', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='x', aws_secret_access_key='x')\n\
             out = []\n\
             for s in c.describe_log_streams(logGroupName='{group}').get('logStreams', []):\n\
             \x20   out += [e['message'] for e in c.get_log_events(logGroupName='{group}', logStreamName=s['logStreamName'])['events']]\n\
             print(json.dumps(out))\n",
            self.sim_port
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(python())
                .args(["-c", &script])
                .output()
                .unwrap();
            let lines: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if !lines.is_empty() || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl World {
    async fn graph_round(&self, round: usize, group: &str) {
        use aws_sdk_ecs::types::{
            ContainerCondition, ContainerDependency, LogConfiguration, LogDriver,
        };
        let containers: Vec<ContainerDefinition> = LINKED_GRAPH
            .iter()
            .map(|(name, deps, links)| {
                let log = LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", group)
                    .options("awslogs-region", "us-east-1")
                    .options("awslogs-create-group", "true")
                    .options("awslogs-stream-prefix", "graph")
                    .options(
                        "awslogs-endpoint",
                        format!("http://127.0.0.1:{}", self.sim_port),
                    )
                    .build()
                    .unwrap();
                let mut c = ContainerDefinition::builder()
                    .name(*name)
                    .image(&self.awscli)
                    .essential(true)
                    .memory(32)
                    .command("sh")
                    .command("-c")
                    .command("trap 'exit 0' TERM; echo up; while true; do sleep 0.2; done")
                    .docker_labels("ecs-hostd.test", "roles")
                    .log_configuration(log);
                for d in *deps {
                    c = c.depends_on(
                        ContainerDependency::builder()
                            .container_name(*d)
                            .condition(ContainerCondition::Start)
                            .build()
                            .unwrap(),
                    );
                }
                for l in *links {
                    c = c.links(*l);
                }
                c.build()
            })
            .collect();
        let td = register_task_definition(
            &self.sim,
            &unique("graph"),
            containers,
            Some("arn:aws:iam::123456789012:role/exec"),
        )
        .await;
        let task = run_task(&self.sim, &self.cluster, &td).await;
        wait_task_status(
            &self.sim,
            &self.cluster,
            &task,
            "RUNNING",
            Duration::from_secs(120),
            &self.agent,
        )
        .await;
        // Several listings later the task still runs with all ten.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let running = || {
            self.docker
                .run(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.amazonaws.ecs.task-arn={task}"),
                    "--filter",
                    "status=running",
                ])
                .lines()
                .count()
        };
        assert_eq!(running(), 10, "round {round}:\n{}", self.agent.log());
        stop_task(&self.sim, &self.cluster, &task).await;
        let t = wait_task_status(
            &self.sim,
            &self.cluster,
            &task,
            "STOPPED",
            Duration::from_secs(60),
            &self.agent,
        )
        .await;
        assert_eq!(running(), 0, "round {round}: containers run after STOPPED");
        // Stopped by StopTask, not by an essential container judged gone.
        assert!(
            !t.stopped_reason()
                .unwrap_or_default()
                .contains("Essential container"),
            "round {round}: {:?}",
            t.stopped_reason()
        );
        for c in t.containers() {
            assert!(
                !c.reason()
                    .unwrap_or_default()
                    .contains("ContainerVanishedError"),
                "round {round}: {c:?}"
            );
        }
    }
}

fn registered_arn(w: &World) -> String {
    w.agent.metadata().unwrap()["ContainerInstanceArn"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn get_json(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}
