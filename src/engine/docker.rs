//! Docker: the mapping of an ACS container to a Docker create request (spec §6.4) and the
//! bollard implementation of [`ContainerRuntime`].
//!
//! Owns: building `Config`/`HostConfig` JSON from the task, merging `dockerConfig.config` and
//! `.hostConfig` on top the way Go's `json.Unmarshal` onto a populated struct does (objects merge,
//! everything else replaces), the official labels, and the translation of Docker errors into
//! [`RuntimeError`]s with a retryability. Never decides what to run, never retries on its own
//! (except as the pull policy says, in `pull.rs`), never touches containers without our label.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};

use crate::engine::cleanup::DockerImage;
use crate::engine::model::internal::NamespaceShare;
use crate::engine::model::{
    ContainerKind, ContainerNetwork, ContainerSpec, HealthProbe, HealthStatus, TaskRecord,
    VolumeSource,
};
use crate::engine::runtime::{
    ContainerRuntime, ImageInfo, LABEL_CLUSTER, LABEL_CONTAINER_NAME, LABEL_FAMILY, LABEL_TASK_ARN,
    LABEL_VERSION, Observed, PullLimits, RuntimeError, State, Summary, VolumeRequest,
};
use crate::tasks::NetworkBinding;

/// Mapping errors: the task asks for something we cannot express. Never retryable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// A mount point uses a volume type ecs-hostd does not implement (efs, fsx, ...).
    #[error("volume {0} has a type ecs-hostd does not support")]
    UnsupportedVolume(String),
    /// The merged JSON is not a valid Docker create request.
    #[error("invalid Docker configuration: {0}")]
    Invalid(String),
}

impl MapError {
    /// A bad task stays bad.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Facts the mapping needs besides the task.
#[derive(Clone, Debug, Default)]
pub struct MapCtx {
    /// Cluster for the label (the task's cluster ARN or the configured cluster).
    pub cluster: String,
    /// Instance region for `AWS_REGION`/`AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// The container's secrets (values; `Debug` shows names only).
    pub secrets: Option<Arc<super::secrets::ContainerSecrets>>,
    /// Host address published ports bind to (`None` = all).
    pub bind_ip: Option<String>,
    /// Host ports chosen by the engine for dynamic mappings: `(container port, proto)` → port.
    pub dynamic_ports: HashMap<(u16, String), u16>,
}

/// Merges `top` into `base` as Go's `json.Unmarshal` onto a populated value does: objects merge
/// key by key, anything else replaces.
pub fn merge(base: &mut Value, top: &Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, t) => *b = t.clone(),
    }
}

/// The Docker create request for container `c` of task `rec` (spec §6.4).
pub fn create_body(
    rec: &TaskRecord,
    c: &ContainerSpec,
    ctx: &MapCtx,
) -> Result<ContainerCreateBody, MapError> {
    let spec = &rec.spec;
    let kind = rec
        .container(&c.name)
        .map_or(ContainerKind::Normal, |r| r.kind);
    if kind.is_internal() {
        return internal_body(rec, c, kind, ctx);
    }
    let docker_name_of = |name: &str| {
        rec.container(name)
            .map_or_else(|| name.to_owned(), |r| r.docker_name.clone())
    };

    // Config.
    let mut env: Vec<String> = c
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(region) = &ctx.region
        && !c.environment.contains_key("AWS_REGION")
        && !c.environment.contains_key("AWS_DEFAULT_REGION")
    {
        env.push(format!("AWS_REGION={region}"));
        env.push(format!("AWS_DEFAULT_REGION={region}"));
    }
    let mut exposed = Map::new();
    let mut bindings = Map::new();
    for pm in &c.port_mappings {
        let proto = pm.proto();
        for port in pm.container_ports() {
            let key = format!("{port}/{proto}");
            exposed.insert(key.clone(), json!({}));
            let host_port = match pm
                .static_host_port()
                .filter(|_| pm.container_port.is_some())
            {
                Some(h) => h.to_string(),
                None => ctx
                    .dynamic_ports
                    .get(&(port, proto.to_owned()))
                    .map_or_else(String::new, |p| p.to_string()),
            };
            // Several host ports for one container port (80 and 443 → 8080) are several
            // bindings of one key: Docker publishes each.
            let binding =
                json!({"HostIp": ctx.bind_ip.clone().unwrap_or_default(), "HostPort": host_port});
            match bindings.get_mut(&key).and_then(Value::as_array_mut) {
                Some(list) if !list.contains(&binding) => list.push(binding),
                Some(_) => {}
                None => {
                    bindings.insert(key, json!([binding]));
                }
            }
        }
    }
    let mut config = json!({ "Image": c.image, "Env": env });
    if let Some(cmd) = c.effective_command() {
        config["Cmd"] = json!(cmd);
    }
    if let Some(ep) = &c.entry_point {
        config["Entrypoint"] = json!(ep);
    }
    if !exposed.is_empty() {
        config["ExposedPorts"] = Value::Object(exposed);
    }
    merge(&mut config, &c.raw_config());
    if let Some(s) = &ctx.secrets {
        inject_env(&mut config, &s.env);
    }
    inject_endpoint_env(&mut config, rec, c);
    if let Some(s) = &ctx.secrets {
        inject_env_defaults(&mut config, &s.file_env);
    }

    // HostConfig.
    let mut binds = Vec::new();
    for m in &c.mount_points {
        let source = match rec.volumes.get(&m.source_volume) {
            Some(VolumeSource::HostPath(p)) => p.clone(),
            Some(VolumeSource::Docker { name, .. }) => name.clone(),
            None => return Err(MapError::UnsupportedVolume(m.source_volume.clone())),
        };
        let ro = if m.read_only { ":ro" } else { "" };
        binds.push(format!("{source}:{}{ro}", m.container_path));
    }
    let links: Vec<String> = c
        .links
        .iter()
        .map(|l| {
            let (target, alias) = l.split_once(':').unwrap_or((l, l));
            format!("{}:{alias}", docker_name_of(target))
        })
        .collect();
    let volumes_from: Vec<String> = c
        .volumes_from
        .iter()
        .map(|v| {
            let ro = if v.read_only { ":ro" } else { "" };
            format!("{}{ro}", docker_name_of(&v.source_container))
        })
        .collect();
    // Docker reads 0 shares as 1024; the official agent sends 2 to stay close to "no CPU".
    let cpu_shares = (c.cpu.unwrap_or(0.0).max(0.0) as i64).clamp(2, 262_144);
    let mut host = json!({ "CpuShares": cpu_shares });
    if let Some(mem) = c.memory.filter(|m| *m > 0.0) {
        host["Memory"] = json!(((mem as i64) * 1024 * 1024).max(4 * 1024 * 1024));
    }
    if !binds.is_empty() {
        host["Binds"] = json!(binds);
    }
    if !links.is_empty() {
        host["Links"] = json!(links);
    }
    if !volumes_from.is_empty() {
        host["VolumesFrom"] = json!(volumes_from);
    }
    if !bindings.is_empty() {
        host["PortBindings"] = Value::Object(bindings);
    }
    if let Some(mode @ ("host" | "none" | "bridge")) = spec.network_mode.as_deref() {
        host["NetworkMode"] = json!(mode);
    }
    if spec.pid_mode.as_deref() == Some("host") {
        host["PidMode"] = json!("host");
    }
    // `none`: a private IPC namespace without /dev/shm (container-features.md §8).
    if let Some(mode @ ("host" | "none")) = spec.ipc_mode.as_deref() {
        host["IpcMode"] = json!(mode);
    }
    if c.privileged == Some(true) {
        host["Privileged"] = json!(true);
    }
    merge(&mut host, &c.raw_host_config());
    // Agent overrides after the backend's JSON (container-features.md §0): task-scoped PID and
    // IPC namespaces are the namespace pause container's.
    let share = NamespaceShare::of(spec);
    if share.any() {
        let pause = rec
            .internal_id(ContainerKind::NamespacePause)
            .ok_or_else(|| {
                MapError::Invalid("the task's namespace pause container does not exist yet".into())
            })?;
        let mode = json!(format!("container:{pause}"));
        if share.pid {
            host["PidMode"] = mode.clone();
        }
        if share.ipc {
            host["IpcMode"] = mode;
        }
    }
    if rec.is_awsvpc() {
        // awsvpc: the task's network namespace is the network pause container's, which holds
        // the ENI, the DNS settings and the host name (awsvpc.md §2.5). Docker refuses these
        // with a container network mode, and nothing is published on the host.
        let pause = rec
            .internal_id(ContainerKind::NetworkPause)
            .ok_or_else(|| {
                MapError::Invalid("the task's network pause container does not exist yet".into())
            })?;
        host["NetworkMode"] = json!(format!("container:{pause}"));
        if let Some(h) = host.as_object_mut() {
            for k in AWSVPC_HOST_REFUSED {
                h.remove(*k);
            }
        }
        if let Some(cfg) = config.as_object_mut() {
            for k in AWSVPC_CONFIG_REFUSED {
                cfg.remove(*k);
            }
        }
    }
    if let Some(h) = host.as_object_mut() {
        // The agent owns restarts (spec §6.4 step 8).
        h.remove("RestartPolicy");
        h.remove("AutoRemove");
    }
    if let Some(lc) = host.get_mut("LogConfig").and_then(Value::as_object_mut) {
        let lc_type = lc.get("Type").and_then(Value::as_str).map(str::to_owned);
        let awslogs = lc_type.as_deref() == Some("awslogs");
        let opts = lc
            .entry("Config")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| MapError::Invalid("LogConfig.Config is not an object".into()))?;
        complete_log_options(opts);
        // Log-driver secrets (`logConfiguration.secretOptions`), except for FireLens.
        if let Some(s) = &ctx.secrets
            && !matches!(lc_type.as_deref(), Some("awsfirelens"))
        {
            for (k, v) in &s.log_options {
                opts.insert(k.clone(), json!(v));
            }
        }
        if awslogs && c.logs_auth_strategy.as_deref() == Some("ExecutionRole") {
            // dockerd fetches the execution role's credentials from the task endpoint, through
            // 169.254.170.2 (task-credentials.md §9.7).
            let id = spec.execution_credentials_id().ok_or_else(|| {
                MapError::Invalid(
                    "awslogs with logsAuthStrategy ExecutionRole, but the task has no execution role credentials"
                        .into(),
                )
            })?;
            opts.insert(
                AWSLOGS_CREDENTIALS_ENDPOINT.into(),
                json!(format!("/v2/credentials/{id}")),
            );
        }
    }

    // Labels last: ours win over anything from the backend.
    let labels = labels(rec, c, &ctx.cluster);
    config["Labels"] = Value::Object(labels);
    config["HostConfig"] = host;
    serde_json::from_value(config).map_err(|e| MapError::Invalid(e.to_string()))
}

/// `HostConfig` members Docker refuses with `NetworkMode: container:<id>` (runconfig's
/// `validateNetContainerMode`): an awsvpc task's user containers never carry them.
const AWSVPC_HOST_REFUSED: &[&str] = &[
    "PortBindings",
    "PublishAllPorts",
    "Dns",
    "DnsSearch",
    "DnsOptions",
    "ExtraHosts",
    "Links",
];
/// `Config` members Docker refuses with a container network mode.
const AWSVPC_CONFIG_REFUSED: &[&str] = &["Hostname", "Domainname", "ExposedPorts", "MacAddress"];

/// The Docker create request of internal container `c` (of `kind`): its image, which blocks
/// until stopped, our labels, no network of its own to speak of (its namespaces, not its
/// network, are shared) and, for `ipcMode: task`, an IPC namespace others may join.
fn internal_body(
    rec: &TaskRecord,
    c: &ContainerSpec,
    kind: ContainerKind,
    ctx: &MapCtx,
) -> Result<ContainerCreateBody, MapError> {
    let mut host = json!({ "NetworkMode": "none", "CpuShares": 2 });
    match kind {
        ContainerKind::NamespacePause => {
            if NamespaceShare::of(&rec.spec).ipc {
                host["IpcMode"] = json!("shareable");
            }
        }
        ContainerKind::NetworkPause => {
            // The ENI's DNS and name live here; the task's containers join this namespace
            // (and, with it, Docker's resolv.conf, hosts and UTS namespace of this container).
            if let Some(eni) = rec.network.as_ref().map(|n| &n.eni) {
                if !eni.dns_servers.is_empty() {
                    host["Dns"] = json!(
                        eni.dns_servers
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                    );
                }
                if !eni.dns_search.is_empty() {
                    host["DnsSearch"] = json!(eni.dns_search);
                }
                if let (Some(name), Some(ip)) = (&eni.private_dns_name, eni.ipv4.first()) {
                    host["ExtraHosts"] = json!([format!("{name}:{}", ip.addr)]);
                }
            }
        }
        ContainerKind::Normal => {}
    }
    let mut body = json!({
        "Image": c.image,
        "Labels": labels(rec, c, &ctx.cluster),
        "HostConfig": host,
    });
    if kind == ContainerKind::NetworkPause
        && let Some(name) = rec
            .network
            .as_ref()
            .and_then(|n| n.eni.private_dns_name.as_deref())
    {
        body["Hostname"] = json!(name);
    }
    serde_json::from_value(body).map_err(|e| MapError::Invalid(e.to_string()))
}

/// What the agent adds to a container's log options (spec §9.7): `mode=non-blocking` without
/// `max-buffer-size` gets `10m`.
fn complete_log_options(opts: &mut Map<String, Value>) {
    if opts.get("mode").and_then(Value::as_str) == Some("non-blocking")
        && !opts.contains_key("max-buffer-size")
    {
        opts.insert("max-buffer-size".into(), json!("10m"));
    }
}

/// The labels container `c` is created with: the task definition's `dockerLabels` (from
/// `dockerConfig.config`) and the official `com.amazonaws.ecs.*` labels, which win.
pub fn labels(rec: &TaskRecord, c: &ContainerSpec, cluster: &str) -> Map<String, Value> {
    let spec = &rec.spec;
    let mut labels = c
        .raw_config()
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in [
        (LABEL_TASK_ARN, spec.arn.as_str()),
        (LABEL_CONTAINER_NAME, c.name.as_str()),
        (LABEL_FAMILY, spec.family.as_str()),
        (LABEL_VERSION, spec.version.as_str()),
        (LABEL_CLUSTER, cluster),
    ] {
        labels.insert(k.into(), json!(v));
    }
    labels
}

/// The log driver and options container `c` is created with (`dockerConfig.hostConfig`'s
/// `LogConfig`, plus what the agent adds), if it names a driver.
pub fn log_config(c: &ContainerSpec) -> Option<(String, Map<String, Value>)> {
    let host = c.raw_host_config();
    let lc = host.get("LogConfig")?;
    let driver = lc
        .get("Type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())?;
    let mut opts = lc
        .get("Config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    complete_log_options(&mut opts);
    Some((driver.to_owned(), opts))
}

/// The awslogs option naming where dockerd fetches credentials (a path on 169.254.170.2).
pub const AWSLOGS_CREDENTIALS_ENDPOINT: &str = "awslogs-credentials-endpoint";

/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`: where AWS SDKs find the task role's credentials.
pub const ENV_CREDENTIALS_URI: &str = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
/// `ECS_CONTAINER_METADATA_URI`: task metadata v3.
pub const ENV_METADATA_URI: &str = "ECS_CONTAINER_METADATA_URI";
/// `ECS_CONTAINER_METADATA_URI_V4`: task metadata v4.
pub const ENV_METADATA_URI_V4: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// Sets `vars` in the container's environment, replacing any of the same name.
fn inject_env(config: &mut Value, vars: &[(String, String)]) {
    add_env(config, vars, true);
}

/// Adds the variables whose names `config`'s `Env` does not have yet: environment files rank
/// below the task definition's `environment`, its secrets and what the agent injects
/// (container-features.md §4).
fn inject_env_defaults(config: &mut Value, vars: &[(String, String)]) {
    add_env(config, vars, false);
}

/// Adds `vars` to `config`'s `Env`; a name already there is replaced (`replace`) or kept.
fn add_env(config: &mut Value, vars: &[(String, String)], replace: bool) {
    if vars.is_empty() {
        return;
    }
    let mut env: Vec<Value> = config
        .get("Env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let name_of = |e: &Value| {
        e.as_str()
            .map(|s| s.split('=').next().unwrap_or(s).to_owned())
    };
    let mut present: std::collections::HashSet<String> = env.iter().filter_map(name_of).collect();
    if replace {
        env.retain(|e| name_of(e).is_none_or(|n| !vars.iter().any(|(k, _)| *k == n)));
        present.clear();
    }
    env.extend(
        vars.iter()
            .filter(|(k, _)| !present.contains(k))
            .map(|(k, v)| json!(format!("{k}={v}"))),
    );
    config["Env"] = Value::Array(env);
}

/// The variables the task endpoint needs in a container's environment (task-credentials.md §3,
/// task-metadata.md §1), replacing any the task definition set: the task role's credentials
/// path when the task has a task role (never the execution role's), and the metadata URIs with
/// the container's endpoint id.
fn inject_endpoint_env(config: &mut Value, rec: &TaskRecord, c: &ContainerSpec) {
    let mut ours: Vec<(String, String)> = Vec::new();
    if let Some(id) = rec.spec.task_role_credentials_id() {
        ours.push((
            ENV_CREDENTIALS_URI.to_owned(),
            format!("{}/{id}", crate::task_endpoint::CREDENTIALS_V2_PATH),
        ));
    }
    if let Some(endpoint) = rec
        .container(&c.name)
        .map(|r| r.endpoint_id.as_str())
        .filter(|id| !id.is_empty())
    {
        let base = crate::task_endpoint::CONTAINER_BASE_URL;
        ours.push((ENV_METADATA_URI.to_owned(), format!("{base}/v3/{endpoint}")));
        ours.push((
            ENV_METADATA_URI_V4.to_owned(),
            format!("{base}/v4/{endpoint}"),
        ));
    }
    inject_env(config, &ours);
}

/// A container's own name among the names Docker lists for it. A container that others link
/// to is also listed under `/<linker>/<alias>`, in no fixed order; only the name without a
/// second path segment is its own.
pub fn canonical_name(names: &[String]) -> Option<String> {
    names
        .iter()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_owned)
}

/// Docker-side deadlines (spec §6.4, upstream values; create/start from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Create.
    pub create: Duration,
    /// Start.
    pub start: Duration,
    /// Inspect and small calls.
    pub inspect: Duration,
    /// Remove.
    pub remove: Duration,
    /// List.
    pub list: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            create: Duration::from_secs(240),
            start: Duration::from_secs(180),
            inspect: Duration::from_secs(30),
            remove: Duration::from_secs(300),
            list: Duration::from_secs(600),
        }
    }
}

/// The bollard runtime.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    docker: Docker,
    timeouts: Timeouts,
}

impl DockerRuntime {
    /// Wraps a connected client. Our own per-call deadlines apply; bollard's global one is raised
    /// so a long stop grace or pull is not cut short.
    pub fn new(docker: Docker, timeouts: Timeouts) -> DockerRuntime {
        DockerRuntime {
            docker: docker.with_timeout(Duration::from_secs(24 * 3600)),
            timeouts,
        }
    }

    /// The client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// Translates a bollard error.
pub fn map_err(e: bollard::errors::Error) -> RuntimeError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => RuntimeError::NotFound(message),
            409 => RuntimeError::Conflict(message),
            401 | 403 => RuntimeError::Auth(message),
            400..=499 => RuntimeError::Refused(message),
            // Docker answers 500 for runtime refusals (OCI errors, bad mounts); those repeat.
            _ if is_auth_message(&message) => RuntimeError::Auth(message),
            _ => RuntimeError::Refused(message),
        },
        E::DockerStreamError { error } => {
            if is_auth_message(&error) {
                RuntimeError::Auth(error)
            } else {
                RuntimeError::Unavailable(error)
            }
        }
        E::RequestTimeoutError => RuntimeError::Timeout {
            op: "Docker request",
            secs: 0,
        },
        other => RuntimeError::Unavailable(other.to_string()),
    }
}

fn is_auth_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// The container events (of containers with the task-ARN label) that wake the engine loop.
///
/// Not `create` or `start`: the agent's own creates and starts report through their outcomes,
/// and during a burst their events kept a listing in flight at all times (72 listings while 50
/// tasks started). A container started behind the agent's back is seen at the next periodic
/// resync.
pub const WAKE_EVENTS: [&str; 4] = ["die", "destroy", "health_status", "oom"];

async fn deadline<T>(
    op: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(RuntimeError::Timeout {
            op,
            secs: limit.as_secs(),
        }),
    }
}

fn parse_time(s: Option<String>) -> Option<String> {
    s.filter(|t| !t.is_empty() && !t.starts_with("0001-"))
}

/// Converts an inspect response.
pub fn observed_from_inspect(i: bollard::models::ContainerInspectResponse) -> Observed {
    let labels = i
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let st = i.state.unwrap_or_default();
    let state = st.status.map(|s| match s.to_string().as_str() {
        "created" => State::Created,
        "running" | "paused" | "restarting" | "stopping" => State::Running,
        "removing" => State::Removing,
        _ => State::Exited,
    });
    let (health, health_probe) = match st.health {
        Some(h) => (
            h.status.map_or(HealthStatus::Unknown, |s| {
                HealthStatus::from_docker(s.as_ref())
            }),
            // Docker keeps the last few results, oldest first.
            h.log.and_then(|log| log.into_iter().last()).map(|r| {
                HealthProbe::new(
                    r.exit_code.unwrap_or_default(),
                    r.output.as_deref().unwrap_or_default(),
                )
            }),
        ),
        None => (HealthStatus::Unknown, None),
    };
    let mut networks: Vec<ContainerNetwork> = i
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|m| {
            m.iter()
                .map(|(name, e)| ContainerNetwork {
                    name: name.clone(),
                    ipv4: e.ip_address.clone().unwrap_or_default(),
                    ipv6: e.global_ipv6_address.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ports = Vec::new();
    if let Some(map) = i.network_settings.and_then(|n| n.ports) {
        for (key, binds) in map {
            let (port, proto) = key.split_once('/').unwrap_or((&key, "tcp"));
            let Ok(container_port) = port.parse::<u16>() else {
                continue;
            };
            for b in binds.unwrap_or_default() {
                let host_port = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok());
                ports.push(NetworkBinding {
                    bind_ip: b.host_ip.unwrap_or_default(),
                    container_port: Some(container_port),
                    host_port,
                    protocol: proto.to_owned(),
                    container_port_range: None,
                    host_port_range: None,
                });
            }
        }
    }
    ports.sort_by(|a, b| {
        (a.container_port, &a.protocol, &a.bind_ip).cmp(&(
            b.container_port,
            &b.protocol,
            &b.bind_ip,
        ))
    });
    let exited = state == Some(State::Exited);
    Observed {
        id: i.id.unwrap_or_default(),
        name: i
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        task_arn: labels.get(LABEL_TASK_ARN).cloned(),
        container_name: labels.get(LABEL_CONTAINER_NAME).cloned(),
        state,
        exit_code: if exited {
            st.exit_code.map(|c| c as i32)
        } else {
            None
        },
        oom_killed: st.oom_killed.unwrap_or(false),
        error: st.error.filter(|e| !e.is_empty()),
        health,
        health_probe,
        created_at: parse_time(i.created),
        started_at: parse_time(st.started_at),
        finished_at: if exited {
            parse_time(st.finished_at)
        } else {
            None
        },
        ports,
        image_id: i.image,
        networks,
        pid: st
            .pid
            .filter(|p| *p > 0 && state == Some(State::Running))
            .and_then(|p| u32::try_from(p).ok()),
    }
}

/// Health from a listing row's status text (`Up 3 seconds (healthy)`). It keys the inspection
/// cache with the state: a changed health makes the next listing inspect that container once,
/// which is how a `health_status` event's news reaches the record.
fn summary_health(status: &str) -> HealthStatus {
    if status.contains("(healthy)") {
        HealthStatus::Healthy
    } else if status.contains("(unhealthy)") {
        HealthStatus::Unhealthy
    } else {
        HealthStatus::Unknown
    }
}

/// Splits an image reference into the `fromImage` and `tag` a pull needs (`latest` when the
/// reference names neither tag nor digest, so a pull never fetches every tag).
pub fn split_image(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_owned(), digest.to_owned());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_owned(),
            image[last_slash + i + 1..].to_owned(),
        ),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

/// The registry host of an image reference (`docker.io` for Docker Hub names).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn list(&self) -> Result<Vec<Summary>, RuntimeError> {
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![LABEL_TASK_ARN])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = deadline(
            "list containers",
            self.timeouts.list,
            self.docker.list_containers(Some(opts)),
        )
        .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let state = match c.state.map(|s| s.to_string()).as_deref() {
                    Some("created") => State::Created,
                    Some("running" | "paused" | "restarting") => State::Running,
                    Some("removing") => State::Removing,
                    _ => State::Exited,
                };
                Some(Summary {
                    id: c.id?,
                    name: canonical_name(&c.names?)?,
                    state,
                    health: summary_health(c.status.as_deref().unwrap_or_default()),
                })
            })
            .collect())
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<Observed>, RuntimeError> {
        match deadline(
            "inspect container",
            self.timeouts.inspect,
            self.docker.inspect_container(
                id_or_name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await
        {
            Ok(i) => Ok(Some(observed_from_inspect(i))),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match deadline(
            "inspect image",
            self.timeouts.inspect,
            self.docker.inspect_image(image),
        )
        .await
        {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                tags: i.repo_tags.unwrap_or_default(),
            })),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pull(
        &self,
        image: &str,
        auth: Option<DockerCredentials>,
        limits: PullLimits,
    ) -> Result<(), RuntimeError> {
        let (from, tag) = split_image(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&from)
            .tag(&tag)
            .build();
        let mut stream = self.docker.create_image(Some(opts), None, auth);
        let started = tokio::time::Instant::now();
        let mut progressed = false;
        loop {
            let wait = if progressed {
                limits.inactivity
            } else {
                limits.first_progress
            };
            let remaining = limits.total.saturating_sub(started.elapsed());
            let next = tokio::time::timeout(wait.min(remaining), stream.next()).await;
            match next {
                Err(_) if remaining <= wait => {
                    return Err(RuntimeError::PullStalled(format!(
                        "pull of {image} did not finish within {} s (ECS_IMAGE_PULL_TIMEOUT)",
                        limits.total.as_secs()
                    )));
                }
                Err(_) => {
                    return Err(RuntimeError::PullStalled(format!(
                        "pull of {image} made no progress for {} s",
                        wait.as_secs()
                    )));
                }
                Ok(None) => return Ok(()),
                Ok(Some(Ok(info))) => {
                    progressed = true;
                    tracing::trace!(image, status = ?info.status, "Pull progress.");
                }
                Ok(Some(Err(e))) => return Err(map_err(e)),
            }
        }
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeRequest>, RuntimeError> {
        match deadline(
            "inspect volume",
            self.timeouts.inspect,
            self.docker.inspect_volume(name),
        )
        .await
        {
            Ok(v) => Ok(Some(VolumeRequest {
                name: v.name,
                driver: v.driver,
                driver_opts: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_volume(&self, v: &VolumeRequest) -> Result<(), RuntimeError> {
        let body = bollard::models::VolumeCreateRequest {
            name: Some(v.name.clone()),
            driver: Some(v.driver.clone()),
            driver_opts: Some(v.driver_opts.clone().into_iter().collect()),
            labels: Some(v.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        deadline(
            "create volume",
            self.timeouts.create,
            self.docker.create_volume(body),
        )
        .await
        .map(|_| ())
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        deadline(
            "create container",
            self.timeouts.create,
            self.docker.create_container(Some(opts), body),
        )
        .await
        .map(|r| r.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        deadline(
            "start container",
            self.timeouts.start,
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>),
        )
        .await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().clamp(1, i32::MAX as u64) as i32)
            .build();
        // Docker waits the grace, then kills; allow it that plus the inspect deadline.
        match deadline(
            "stop container",
            grace + self.timeouts.inspect,
            self.docker.stop_container(id, Some(opts)),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default().v(true).build();
        match deadline(
            "remove container",
            self.timeouts.remove,
            self.docker.remove_container(id, Some(opts)),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        match deadline(
            "remove volume",
            self.timeouts.remove,
            self.docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let opts = RemoveImageOptionsBuilder::default().build();
        match deadline(
            "remove image",
            self.timeouts.remove,
            self.docker.remove_image(image, Some(opts), None),
        )
        .await
        {
            Ok(_) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let list = deadline(
            "list containers",
            self.timeouts.list,
            self.docker.list_containers(Some(opts)),
        )
        .await?;
        Ok(list.into_iter().filter_map(|c| c.image_id).collect())
    }

    async fn list_images(&self) -> Result<Vec<DockerImage>, RuntimeError> {
        let opts = ListImagesOptionsBuilder::default().all(false).build();
        let list = deadline(
            "list images",
            self.timeouts.list,
            self.docker.list_images(Some(opts)),
        )
        .await?;
        Ok(list
            .into_iter()
            .map(|i| DockerImage {
                id: i.id,
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                created: i.created as f64,
                size: i.size,
            })
            .collect())
    }

    async fn data_root(&self) -> Result<Option<PathBuf>, RuntimeError> {
        let info = deadline("info", self.timeouts.inspect, self.docker.info()).await?;
        Ok(info.docker_root_dir.map(PathBuf::from))
    }

    fn events(&self) -> BoxStream<'static, Result<(), RuntimeError>> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![LABEL_TASK_ARN.to_owned()]),
            ("event".to_owned(), WAKE_EVENTS.map(String::from).to_vec()),
        ]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(opts))
            .map(|r| r.map(|_| ()).map_err(map_err))
            .boxed()
    }
}

/// Task-scoped Docker volumes to remove with the task.
pub fn task_scoped_volumes(rec: &TaskRecord) -> Vec<String> {
    rec.volumes
        .values()
        .filter_map(|v| match v {
            VolumeSource::Docker {
                name,
                task_scoped: true,
                ..
            } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Labels as a sorted map (for tests and logs).
pub fn labels_of(body: &ContainerCreateBody) -> BTreeMap<String, String> {
    body.labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests;
