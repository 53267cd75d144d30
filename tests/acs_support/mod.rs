//! Shared pieces of the control-plane integration tests (`tests/acs_*.rs`) and the control-plane
//! bench: an ec2sim process per test, AWS clients pointed at it, a registered container
//! instance, a recording task engine, and a validator of frames against the ACS model.
//!
//! ec2sim is required: without `ECS_HOSTD_PYTHON` (set by `scripts/world.sh`) or the cached
//! venv, the tests fail; they never skip.

#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use serde_json::{Value, json};

use ecs_hostd::ecs::sdk::SdkEcs;
use ecs_hostd::ecs::{Attribute, EcsApi, RegisterRequest, Resources};
use ecs_hostd::imds::{ImdsClient, InstanceMetadata};
use ecs_hostd::tasks::{DeliverError, TaskControl};

pub const REGION: &str = "us-east-1";

#[path = "../common/python.rs"]
mod ec2sim_python;
pub use ec2sim_python::python;

/// One ec2sim process, killed on drop.
pub struct Ec2sim {
    child: Child,
    pub port: u16,
    pub base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Ec2sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ec2sim {
    /// Starts ec2sim on a free port and waits until it is ready.
    pub fn start() -> Ec2sim {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("ec2sim.log")).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ec2sim/ec2sim.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--port", "0", "--ready-file"])
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ec2sim with {:?}: {e}", python()));
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                break v["port"].as_u64().unwrap() as u16;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("ec2sim.log")).unwrap_or_default();
                panic!("ec2sim exited with {status}:\n{log}");
            }
            assert!(Instant::now() < deadline, "ec2sim did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        };
        Ec2sim {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// GET on the control API.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/ec2sim{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// POST on the control API.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/ec2sim{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    /// ACS sessions (`kind == "acs"`), oldest first.
    pub async fn acs_sessions(&self) -> Vec<Value> {
        self.get("/acs/sessions").await["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "acs")
            .cloned()
            .collect()
    }

    /// Every frame the agent sent, over all ACS sessions, in order.
    pub async fn received(&self) -> Vec<Value> {
        self.acs_sessions()
            .await
            .iter()
            .flat_map(|s| s["received"].as_array().unwrap().clone())
            .collect()
    }

    /// Every frame ec2sim sent, over all ACS sessions, in order.
    pub async fn sent(&self) -> Vec<Value> {
        self.acs_sessions()
            .await
            .iter()
            .flat_map(|s| s["sent"].as_array().unwrap().clone())
            .collect()
    }

    /// Recorded SubmitTaskStateChange bodies, in arrival order.
    pub async fn task_state_changes(&self) -> Vec<Value> {
        self.get("/state-changes?operation=SubmitTaskStateChange")
            .await["state_changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["body"].clone())
            .collect()
    }

    /// Sets (or with `mode: None` clears) a fault on ECS SubmitTaskStateChange.
    pub async fn fault_submit(&self, mode: Option<&str>) {
        self.post(
            "/faults",
            json!({"service": "ecs", "mode": mode, "operations": ["SubmitTaskStateChange"]}),
        )
        .await;
    }

    /// ACS behaviour knobs.
    pub async fn acs_config(&self, config: Value) {
        self.post("/acs/config", config).await;
    }

    /// SDK configuration for ec2sim (static credentials; moto checks no signatures).
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.base)
            .credentials_provider(credentials())
            // One attempt per call, as the agent's own configuration (ecs_hostd::aws).
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build()
    }

    /// Our ECS client, pointed at ec2sim.
    pub fn ecs(&self) -> Arc<SdkEcs> {
        Arc::new(SdkEcs::new(&self.sdk_config(), Some(&self.base)))
    }

    /// The raw SDK client, to act as a user would (RunTask, StopTask, ...).
    pub fn client(&self) -> aws_sdk_ecs::Client {
        self.ecs().client().clone()
    }

    /// Creates `cluster` and registers the default instance in it; returns the instance ARN.
    pub async fn register(&self, cluster: &str) -> String {
        let ecs = self.ecs();
        ecs.create_cluster(cluster).await.unwrap();
        let identity = ImdsClient::new(&self.base).identity().await.unwrap();
        let registered = ecs
            .register_container_instance(&RegisterRequest {
                cluster: cluster.into(),
                container_instance_arn: None,
                identity_document: identity.raw_document,
                identity_signature: identity.signature,
                resources: Resources {
                    cpu: 4096,
                    memory_mib: 8192,
                    ports: vec![22],
                    ports_udp: vec![],
                },
                // The task definitions here have task and execution roles: ECS places them only
                // on an instance that advertises task IAM roles (ec2sim too).
                attributes: vec![Attribute::flag(
                    "com.amazonaws.ecs.capability.task-iam-role",
                )],
                tags: Default::default(),
                client_token: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap();
        registered.arn
    }

    /// Registers a task definition (with task and execution roles, so payloads carry
    /// credentials) and returns its family.
    pub async fn task_definition(&self, family: &str) -> String {
        use aws_sdk_ecs::types::ContainerDefinition;
        self.client()
            .register_task_definition()
            .family(family)
            .task_role_arn("arn:aws:iam::123456789012:role/app")
            .execution_role_arn("arn:aws:iam::123456789012:role/exec")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("web")
                    .image("local/busybox:test")
                    .memory(64)
                    .essential(true)
                    .build(),
            )
            .container_definitions(
                ContainerDefinition::builder()
                    .name("side")
                    .image("local/busybox:test")
                    .memory(32)
                    .essential(false)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        family.to_owned()
    }

    /// RunTask; returns the task ARN.
    pub async fn run_task(&self, cluster: &str, family: &str) -> String {
        let out = self
            .client()
            .run_task()
            .cluster(cluster)
            .task_definition(family)
            .send()
            .await
            .unwrap();
        out.tasks()[0].task_arn().unwrap().to_owned()
    }

    /// StopTask.
    pub async fn stop_task(&self, cluster: &str, task: &str) {
        self.client()
            .stop_task()
            .cluster(cluster)
            .task(task)
            .send()
            .await
            .unwrap();
    }
}

/// Credentials the agent signs with.
pub fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        "AKIDECSHOSTDTEST",
        "test-secret-key",
        None,
        None,
        "tests",
    ))
}

/// Polls `cond` every 20 ms until it is true; panics after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A task engine that records what it is asked.
#[derive(Default)]
pub struct RecordingEngine {
    pub delivered: Mutex<Vec<Value>>,
    pub stopped: Mutex<Vec<String>>,
    pub running: Mutex<Vec<String>>,
    pub refuse: Mutex<HashSet<String>>,
}

impl RecordingEngine {
    /// (task ARN, desired status) of every delivery, in order.
    pub fn deliveries(&self) -> Vec<(String, String)> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["arn"].as_str().unwrap_or("").to_owned(),
                    t["desiredStatus"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    pub fn count(&self, arn: &str, desired: &str) -> usize {
        self.deliveries()
            .iter()
            .filter(|(a, d)| a == arn && d == desired)
            .count()
    }
}

#[async_trait]
impl TaskControl for RecordingEngine {
    async fn deliver(&self, task: Value) -> Result<(), DeliverError> {
        let arn = task["arn"].as_str().unwrap_or("").to_owned();
        self.delivered.lock().unwrap().push(task);
        if self.refuse.lock().unwrap().contains(&arn) {
            return Err(DeliverError::Refused("refused by the test".into()));
        }
        Ok(())
    }
    fn desired_running(&self) -> Vec<String> {
        self.running.lock().unwrap().clone()
    }
    fn knows(&self, task_arn: &str) -> bool {
        self.running.lock().unwrap().iter().any(|a| a == task_arn)
            || self
                .delivered
                .lock()
                .unwrap()
                .iter()
                .any(|t| t["arn"] == task_arn)
    }
    async fn stop(&self, task_arn: &str) -> Result<(), String> {
        self.stopped.lock().unwrap().push(task_arn.to_owned());
        Ok(())
    }
}

/// The ACS service model.
pub fn acs_model() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/acs/api-2.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `value` against `shape` of a model: every member exists, with the right JSON type,
/// recursively. Returns the problems found (empty when it matches).
pub fn check_shape(model: &Value, shape: &str, value: &Value, path: &str) -> Vec<String> {
    let Some(def) = model["shapes"].get(shape) else {
        return vec![format!("{path}: shape {shape} is not in the model")];
    };
    let mut problems = Vec::new();
    let t = def["type"].as_str().unwrap_or("");
    match (t, value) {
        ("structure", Value::Object(map)) => {
            let members = def["members"].as_object().cloned().unwrap_or_default();
            for (k, v) in map {
                match members.get(k) {
                    None => problems.push(format!("{path}.{k}: not a member of {shape}")),
                    Some(m) => problems.extend(check_shape(
                        model,
                        m["shape"].as_str().unwrap_or(""),
                        v,
                        &format!("{path}.{k}"),
                    )),
                }
            }
            for required in def["required"].as_array().into_iter().flatten() {
                let r = required.as_str().unwrap_or("");
                if !map.contains_key(r) {
                    problems.push(format!("{path}: required member {r} of {shape} missing"));
                }
            }
        }
        ("list", Value::Array(items)) => {
            let member = def["member"]["shape"].as_str().unwrap_or("");
            for (i, item) in items.iter().enumerate() {
                problems.extend(check_shape(model, member, item, &format!("{path}[{i}]")));
            }
        }
        ("map", Value::Object(map)) => {
            let vshape = def["value"]["shape"].as_str().unwrap_or("");
            for (k, v) in map {
                problems.extend(check_shape(model, vshape, v, &format!("{path}.{k}")));
            }
        }
        ("string", Value::String(s)) => {
            if let Some(allowed) = def["enum"].as_array()
                && !allowed.iter().any(|a| a == s)
            {
                problems.push(format!("{path}: {s:?} not in the {shape} enum"));
            }
        }
        ("boolean", Value::Bool(_)) => {}
        ("integer" | "long", Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        ("double" | "float", Value::Number(_)) => {}
        (_, Value::Null) => {}
        _ => problems.push(format!("{path}: {value} is not a {t} ({shape})")),
    }
    problems
}

/// Checks a whole frame: `type` names a shape and `message` matches it.
pub fn check_frame(model: &Value, frame: &Value) -> Vec<String> {
    let Some(kind) = frame["type"].as_str() else {
        return vec![format!("frame without type: {frame}")];
    };
    check_shape(model, kind, &frame["message"], kind)
}

/// A fresh unique name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A running ACS session and what it works with.
pub struct Agent {
    pub session: Arc<ecs_hostd::ecs::acs::AcsSession>,
    pub engine: Arc<RecordingEngine>,
    pub credentials: Arc<ecs_hostd::tasks::CredentialsStore>,
    pub reporter: Arc<ecs_hostd::ecs::report::Reporter>,
    pub store: ecs_hostd::store::Store,
    pub cancel: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Stops the session (and waits for it).
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("session stops on cancel")
            .unwrap();
    }
}

/// Test timings: the protocol's, with a short reconnect backoff.
pub fn test_timing() -> ecs_hostd::ecs::acs::Timing {
    ecs_hostd::ecs::acs::Timing {
        reconnect: ecs_hostd::backoff::Policy::new(
            Duration::from_millis(250),
            Duration::from_secs(2),
            1.5,
            0.2,
        ),
        ..Default::default()
    }
}

/// Starts an ACS session for `arn` in `cluster`, with a recording engine and the real reporter
/// (not sending) as the sink, over a store at `store_path`.
pub fn start_agent(
    sim: &Ec2sim,
    cluster: &str,
    arn: &str,
    store_path: &std::path::Path,
    timing: ecs_hostd::ecs::acs::Timing,
) -> Agent {
    use ecs_hostd::ecs::acs::{self, AcsConfig, AcsParts, AcsSession, HandlerParts, Identity};
    let store = ecs_hostd::store::Store::open(store_path).unwrap();
    let engine = Arc::new(RecordingEngine::default());
    let credentials = Arc::new(ecs_hostd::tasks::CredentialsStore::default());
    let ecs = sim.ecs();
    let reporter = Arc::new(ecs_hostd::ecs::report::Reporter::new(
        store.clone(),
        ecs.clone(),
        Default::default(),
    ));
    let session = Arc::new(
        AcsSession::new(AcsParts {
            config: AcsConfig {
                cluster: cluster.into(),
                container_instance_arn: arn.into(),
                region: REGION.into(),
                agent_version: ecs_hostd::COMPATIBLE_AGENT_VERSION.into(),
                agent_hash: acs::agent_hash(),
                docker_version: Some("25.0.8".into()),
                timing,
            },
            ecs,
            discovery: Default::default(),
            credentials_provider: self::credentials(),
            handler: HandlerParts {
                identity: Identity {
                    cluster: cluster.into(),
                    container_instance_arn: arn.into(),
                },
                engine: engine.clone(),
                credentials: credentials.clone(),
                sink: reporter.clone(),
                store: store.clone(),
                milestones: None,
            },
        })
        .unwrap(),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let (s, c) = (session.clone(), cancel.clone());
    let task = tokio::spawn(async move { s.run(c).await.expect("session ends cleanly") });
    Agent {
        session,
        engine,
        credentials,
        reporter,
        store,
        cancel,
        task,
    }
}

/// Frames of one type among `frames`.
pub fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}
