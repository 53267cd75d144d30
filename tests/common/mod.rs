//! Test harness shared by the integration tests: ec2sim (the Python stand-in for AWS and IMDS)
//! and the real `ecs-hostd` binary as a child process.
//!
//! Everything binds to 127.0.0.1. A missing world (no Python venv, no Docker) makes the tests fail
//! with a message saying how to get it, never skip.

#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod python;
/// The awsvpc stand-ins: an ENI (veth end with the ENI's MAC) and the VPC subnet behind it.
pub mod vpc;
#[allow(unused_imports)] // not every test crate calls boto3
pub use python::{boto, python};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1, never the same one twice in this process: the tests of a binary
/// run in parallel, and two agents handed one API port would answer for each other (one test
/// then saw another's registration, issue 8's flaky `an_unreachable_ecs_is_retried...`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A running ec2sim, stopped on drop.
pub struct Ec2Sim {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Ec2Sim {
    /// Starts ec2sim on a free port and waits until it is ready.
    pub fn start() -> Ec2Sim {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("ec2sim.log")).unwrap();
        let child = Command::new(python())
            .arg(root().join("tests/ec2sim/ec2sim.py"))
            .args(["--port", "0", "--ready-file"])
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ec2sim");
        let mut sim = Ec2Sim {
            port: 0,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: Value = serde_json::from_str(&text).unwrap();
                sim.port = v["port"].as_u64().unwrap() as u16;
                return sim;
            }
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!(
                    "ec2sim exited with {status} before it was ready:\n{}",
                    sim.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ec2sim was not ready within 60 s:\n{}", sim.log());
    }

    /// Base URL (AWS endpoint and IMDS of the default instance).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// ec2sim's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// ec2sim's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ec2sim.log")).unwrap_or_default()
    }

    /// GET a control path, e.g. `/ec2sim/requests?service=ecs`.
    pub fn get(&self, path: &str) -> Value {
        http("GET", &format!("{}{path}", self.url()), None)
    }

    /// POST JSON to a control path.
    pub fn post(&self, path: &str, body: Value) -> Value {
        http("POST", &format!("{}{path}", self.url()), Some(body))
    }

    /// The default instance's id.
    pub fn default_instance(&self) -> String {
        self.get("/ec2sim/instances/default")["instance_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates another EC2 instance; returns (instance id, its IMDS base URL).
    pub fn new_instance(&self, extra: Value) -> (String, String) {
        let v = self.post("/ec2sim/instances", extra);
        (
            v["instance_id"].as_str().unwrap().to_owned(),
            v["imds"].as_str().unwrap().to_owned(),
        )
    }

    /// Recorded AWS requests of one service/operation.
    pub fn requests(&self, service: &str, operation: &str) -> Vec<Value> {
        self.get(&format!(
            "/ec2sim/requests?service={service}&operation={operation}"
        ))["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sets (or clears, with `mode: null`) a fault.
    pub fn fault(&self, body: Value) {
        self.post("/ec2sim/faults", body);
    }

    /// An ECS client as a user would build it, pointed at ec2sim.
    pub async fn ecs(&self) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::new(&self.sdk_config().await)
    }

    /// The AWS SDK's settings for any service client, pointed at ec2sim (us-east-1, the test
    /// user's keys, one attempt per call).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let creds =
            aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .load()
            .await
    }
}

impl Drop for Ec2Sim {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking JSON HTTP call (tests are simple; a tiny client keeps them readable).
pub fn http(method: &str, url: &str, body: Option<Value>) -> Value {
    let (method, url) = (method.to_owned(), url.to_owned());
    // On a thread of its own, so async tests can call it too.
    std::thread::spawn(move || http_blocking(&method, &url, body))
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn http_blocking(method: &str, url: &str, body: Option<Value>) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut req = match method {
            "GET" => c.get(url),
            "POST" => c.post(url),
            "DELETE" => c.delete(url),
            m => panic!("method {m}"),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    })
}

/// Creates an ECS cluster in ec2sim.
pub async fn create_cluster(sim: &Ec2Sim, name: &str) {
    sim.ecs()
        .await
        .create_cluster()
        .cluster_name(name)
        .send()
        .await
        .expect("create cluster");
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The agent binary: `ECS_HOSTD_BIN` when set (scripts/bench.sh points it at the release build),
/// else the one Cargo built for this test.
pub fn agent_binary() -> PathBuf {
    std::env::var_os("ECS_HOSTD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ecs-hostd")))
}

/// How to start the agent.
pub struct AgentSpec {
    pub cluster: String,
    pub data_dir: PathBuf,
    pub api_port: u16,
    pub imds: String,
    pub endpoint: String,
    pub env: Vec<(String, String)>,
    pub ecs_config: String,
    pub subcommand: &'static str,
}

impl AgentSpec {
    /// The agent against `sim`'s default instance, in cluster `cluster`, with its own data dir
    /// and API port. Subsystems that would add noise to a test are turned off by default.
    pub fn new(sim: &Ec2Sim, cluster: &str, data_dir: &Path) -> AgentSpec {
        AgentSpec {
            cluster: cluster.to_owned(),
            data_dir: data_dir.to_owned(),
            api_port: free_port(),
            imds: sim.url(),
            endpoint: sim.url(),
            env: vec![
                ("ECS_HOSTD_DOCKER_WATCHDOG".into(), "false".into()),
                // No random delay before the first registration in tests (fleet_boot.rs measures it).
                ("ECS_HOSTD_STARTUP_JITTER".into(), "0".into()),
            ],
            ecs_config: String::new(),
            subcommand: "run",
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> AgentSpec {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn start(&self) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let ecs_config = dir.path().join("ecs.config");
        std::fs::write(&ecs_config, &self.ecs_config).unwrap();
        let toml = dir.path().join("config.toml");
        std::fs::write(&toml, "").unwrap();
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(agent_binary());
        cmd.arg(self.subcommand)
            .arg("--ecs-config")
            .arg(&ecs_config)
            .arg("--config")
            .arg(&toml)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("RUST_LOG", "info,ecs_hostd=debug")
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds)
            .env("ECS_CLUSTER", &self.cluster)
            .env("ECS_DATADIR", &self.data_dir)
            .env("ECS_HOSTD_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            // Agents run side by side: each its own task endpoint port (a test may set one).
            .env("ECS_HOSTD_TASK_ENDPOINT_ADDR", "127.0.0.1:0")
            // Never on the shared host's tables: tests that need the NAT run it in a network
            // namespace of their own (tests/net_host_nat.rs).
            .env("ECS_HOSTD_HOST_NAT", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", h);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start ecs-hostd");
        Agent {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], self.api_port)),
            cluster: self.cluster.clone(),
            log_path,
            _dir: dir,
        }
    }
}

/// A running agent process.
pub struct Agent {
    pub child: Child,
    pub api: SocketAddr,
    /// The cluster it was started for: what its local API must report.
    cluster: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `GET /v1/metadata`, if the API answers.
    pub fn metadata(&self) -> Option<Value> {
        let url = format!("http://{}/v1/metadata", self.api);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let r = reqwest::Client::new()
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                r.json().await.ok()
            })
        })
        .join()
        .unwrap()
    }

    /// Waits until the agent reports a container instance ARN; returns it.
    pub fn wait_registered(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(m) = self.metadata()
                && let Some(arn) = m["ContainerInstanceArn"].as_str()
            {
                let cluster = m["Cluster"].as_str().unwrap_or_default();
                assert!(
                    cluster == self.cluster || cluster.ends_with(&format!("/{}", self.cluster)),
                    "{} answers for cluster {cluster:?}, not {:?}: another agent holds this one's API port",
                    self.api,
                    self.cluster
                );
                return arn.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited with {status} before registering:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not register within {within:?}:\n{}", self.log());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not exit within {within:?}:\n{}", self.log());
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `ecs-hostd check` with the given environment and ecs.config text; returns (exit code,
/// output).
pub fn run_check(env: &[(&str, &str)], ecs_config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ecs.config");
    std::fs::write(&cfg, ecs_config).unwrap();
    let toml = dir.path().join("config.toml");
    std::fs::write(&toml, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecs-hostd"));
    cmd.arg("check")
        .arg("--ecs-config")
        .arg(&cfg)
        .arg("--config")
        .arg(&toml)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Describes one container instance through the SDK.
pub async fn describe_instance(sim: &Ec2Sim, cluster: &str, arn: &str) -> Value {
    let out = sim
        .ecs()
        .await
        .describe_container_instances()
        .cluster(cluster)
        .container_instances(arn)
        .send()
        .await
        .expect("describe container instances");
    let ci = out
        .container_instances()
        .first()
        .cloned()
        .expect("instance described");
    let resources: Vec<Value> = ci
        .registered_resources()
        .iter()
        .map(|r| {
            json!({
                "name": r.name(),
                "integer": r.integer_value(),
                "set": r.string_set_value(),
            })
        })
        .collect();
    let attributes: Vec<Value> = ci
        .attributes()
        .iter()
        .map(|a| json!({"name": a.name(), "value": a.value()}))
        .collect();
    json!({
        "arn": ci.container_instance_arn(),
        "ec2InstanceId": ci.ec2_instance_id(),
        "status": ci.status(),
        "resources": resources,
        "attributes": attributes,
    })
}

/// RunTask of `td` in `cluster`, as a user calls it; returns the task ARN.
pub async fn run_task(sim: &Ec2Sim, cluster: &str, td: &str) -> String {
    let out = sim
        .ecs()
        .await
        .run_task()
        .cluster(cluster)
        .task_definition(td)
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.tasks()[0].task_arn().unwrap().to_owned()
}

/// StopTask, as a user calls it.
pub async fn stop_task(sim: &Ec2Sim, cluster: &str, task: &str) {
    sim.ecs()
        .await
        .stop_task()
        .cluster(cluster)
        .task(task)
        .reason("test stop")
        .send()
        .await
        .unwrap();
}

/// Waits until DescribeTasks shows `task` with last status `status` (the agent's reports);
/// fails with the agent's log after `within`.
pub async fn wait_task_status(
    sim: &Ec2Sim,
    cluster: &str,
    task: &str,
    status: &str,
    within: Duration,
    agent: &Agent,
) -> aws_sdk_ecs::types::Task {
    let deadline = Instant::now() + within;
    loop {
        let out = sim
            .ecs()
            .await
            .describe_tasks()
            .cluster(cluster)
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
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RegisterTaskDefinition of `family` with `containers` (and an execution role); returns the
/// task definition ARN.
pub async fn register_task_definition(
    sim: &Ec2Sim,
    family: &str,
    containers: Vec<aws_sdk_ecs::types::ContainerDefinition>,
    execution_role: Option<&str>,
) -> String {
    let out = sim
        .ecs()
        .await
        .register_task_definition()
        .family(family)
        .set_execution_role_arn(execution_role.map(str::to_owned))
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

/// ec2sim, a fresh cluster named after a prefix, and the agent registered in it: what most
/// end-to-end tests start from.
#[allow(dead_code)] // not every test crate that includes this module starts a world
pub struct World {
    pub sim: Ec2Sim,
    pub cluster: String,
    pub agent: Agent,
    /// The registered container instance ARN.
    pub instance: String,
    _data: tempfile::TempDir,
}

#[allow(dead_code)]
impl World {
    /// The agent with containers stopped within 2 s and host metrics off, plus `env` (which
    /// wins) and `ecs_config` as its ecs.config.
    pub async fn start(prefix: &str, env: &[(&str, &str)], ecs_config: &str) -> World {
        let sim = Ec2Sim::start();
        let cluster = unique(prefix);
        create_cluster(&sim, &cluster).await;
        let data = tempfile::tempdir().unwrap();
        let mut spec = AgentSpec::new(&sim, &cluster, data.path())
            .env("ECS_CONTAINER_STOP_TIMEOUT", "2s")
            .env("ECS_HOSTD_METRICS", "false");
        for (k, v) in env {
            spec = spec.env(k, v);
        }
        spec.ecs_config = ecs_config.to_owned();
        let mut agent = spec.start();
        let instance = agent.wait_registered(Duration::from_secs(60));
        World {
            sim,
            cluster,
            agent,
            instance,
            _data: data,
        }
    }
}

impl Drop for World {
    /// Removes the containers of this world's cluster: the agent leaves its tasks running when
    /// it goes (as on a real instance), and a busy test task would load the rest of the suite.
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=com.amazonaws.ecs.cluster",
                "--format",
                "{{.ID}} {{.Label \"com.amazonaws.ecs.cluster\"}} {{.Label \"com.amazonaws.ecs.task-arn\"}}",
            ])
            .output();
        let Ok(out) = out else { return };
        let suffix = format!("/{}", self.cluster);
        let mut ids = Vec::new();
        let mut task_ids = std::collections::BTreeSet::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = line.split(' ');
            let (Some(id), Some(cluster), task) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if cluster.ends_with(&suffix) {
                ids.push(id.to_owned());
                if let Some(t) = task.and_then(|t| t.rsplit('/').next()) {
                    task_ids.insert(t.to_owned());
                }
            }
        }
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        // The task cgroups the agent would have removed at cleanup (cgroup v1: `ecs/<task id>`
        // in every hierarchy runc created it in).
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten();
        for h in hierarchies {
            for t in &task_ids {
                let _ = std::fs::remove_dir(h.path().join("ecs").join(t));
            }
        }
    }
}
