//! The task and container model, exactly as ACS delivers it (protocol spec §6), plus the engine's
//! persisted records and status state machines (§7).
//!
//! Owns: parsing and validating the task JSON (unknown fields tolerated, `null` lists read as
//! empty), the status enums and their ordering, essential-container and `dependsOn` semantics as
//! pure functions, and the state-change reporting rules (§8.1) as [`take_change`].
//! Never performs I/O, never reads a clock (times are passed in), never touches credentials.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};

use crate::engine::docker_json;
use crate::tasks::{AttachmentChange, ContainerChange, NetworkBinding, ReportStatus, TaskChange};

pub mod eni;
pub mod internal;

pub use internal::{ContainerKind, InternalImages};

/// Model errors: a task that cannot be accepted. Never retryable (the payload is wrong).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// The JSON does not have the task shape.
    #[error("invalid task JSON: {0}")]
    Json(String),
    /// A required field is missing or empty.
    #[error("task field {0} is missing or empty")]
    Missing(&'static str),
    /// Two containers share a name.
    #[error("container name {0} appears twice in the task")]
    DuplicateContainer(String),
    /// A link, volumesFrom or dependsOn refers to a container that is not in the task.
    #[error("container {from} refers to unknown container {to} ({field})")]
    UnknownContainer {
        /// Referring container.
        from: String,
        /// Missing target.
        to: String,
        /// Which field.
        field: &'static str,
    },
    /// A mount point refers to a volume that is not in the task.
    #[error("container {container} mounts unknown volume {volume}")]
    UnknownVolume {
        /// Container.
        container: String,
        /// Volume.
        volume: String,
    },
    /// `dependsOn` forms a cycle.
    #[error("dependsOn of container {0} forms a cycle")]
    DependencyCycle(String),
    /// A status string is not one of ours.
    #[error("unknown status {0}")]
    Status(String),
    /// An awsvpc task's elastic network interface cannot be used.
    #[error("invalid awsvpc task: {0}")]
    Eni(#[from] eni::EniError),
}

impl ModelError {
    /// A bad payload stays bad.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Reads `null` as the type's default (ACS and upstream state files use `null` for empty lists).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vm])* $v),*
        }
        impl $name {
            /// The JSON spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            /// Parses the JSON spelling (`DEAD` = STOPPED, `UNKNOWN` = NONE, case-insensitive).
            pub fn parse(s: &str) -> Result<Self, ModelError> {
                let up = s.to_ascii_uppercase();
                match up.as_str() {
                    "DEAD" => return Ok($name::Stopped),
                    "UNKNOWN" | "" => return Ok($name::None),
                    _ => {}
                }
                $(if up == $s { return Ok($name::$v); })*
                Err(ModelError::Status(s.to_owned()))
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

status_enum! {
    /// Container status (spec §7.1), in progression order.
    ContainerStatus {
        /// Nothing done yet.
        #[default]
        None = "NONE",
        /// Image manifest resolved.
        ManifestPulled = "MANIFEST_PULLED",
        /// Image available locally.
        Pulled = "PULLED",
        /// Docker container created.
        Created = "CREATED",
        /// Running (the steady state of normal containers).
        Running = "RUNNING",
        /// Steady state of network pause containers (never used by ecs-hostd's own containers).
        ResourcesProvisioned = "RESOURCES_PROVISIONED",
        /// Stopped (terminal).
        Stopped = "STOPPED",
    }
}

status_enum! {
    /// Task status (spec §7.1), in progression order.
    TaskStatus {
        /// Nothing done yet.
        #[default]
        None = "NONE",
        /// Manifests resolved.
        ManifestPulled = "MANIFEST_PULLED",
        /// Images available.
        Pulled = "PULLED",
        /// Containers created.
        Created = "CREATED",
        /// Running.
        Running = "RUNNING",
        /// Stopped (terminal).
        Stopped = "STOPPED",
    }
}

impl ContainerStatus {
    /// The task status a container status contributes (spec §7.2).
    pub fn as_task_status(self) -> TaskStatus {
        match self {
            ContainerStatus::None => TaskStatus::None,
            ContainerStatus::ManifestPulled | ContainerStatus::Pulled => TaskStatus::ManifestPulled,
            ContainerStatus::Created => TaskStatus::Created,
            ContainerStatus::Running | ContainerStatus::ResourcesProvisioned => TaskStatus::Running,
            ContainerStatus::Stopped => TaskStatus::Stopped,
        }
    }

    /// What ECS is told about a container in this status (steady state and STOPPED only).
    pub fn report(self) -> Option<ReportStatus> {
        match self {
            ContainerStatus::Running | ContainerStatus::ResourcesProvisioned => {
                Some(ReportStatus::Running)
            }
            ContainerStatus::Stopped => Some(ReportStatus::Stopped),
            _ => None,
        }
    }
}

impl TaskStatus {
    /// What ECS is told about a task in this status.
    pub fn report(self) -> ReportStatus {
        match self {
            TaskStatus::Running => ReportStatus::Running,
            TaskStatus::Stopped => ReportStatus::Stopped,
            _ => ReportStatus::Pending,
        }
    }
}

/// A `dependsOn` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Condition {
    /// The dependency has started.
    Start,
    /// The dependency has exited (any code).
    Complete,
    /// The dependency has exited with code 0.
    Success,
    /// The dependency reports healthy.
    Healthy,
}

/// One `dependsOn` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Container this one waits for.
    pub container_name: String,
    /// What it waits for.
    pub condition: Condition,
}

/// One port mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Container port (absent for ranges).
    #[serde(default)]
    pub container_port: Option<u16>,
    /// Host port; 0 or absent = dynamic.
    #[serde(default)]
    pub host_port: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `a-b`.
    #[serde(default)]
    pub container_port_range: Option<String>,
}

impl PortMapping {
    /// `tcp` or `udp`.
    pub fn proto(&self) -> &str {
        match self.protocol.as_deref() {
            Some(p) if p.eq_ignore_ascii_case("udp") => "udp",
            _ => "tcp",
        }
    }

    /// Container ports this mapping covers (a range expanded).
    pub fn container_ports(&self) -> Vec<u16> {
        if let Some(p) = self.container_port {
            return vec![p];
        }
        let Some((a, b)) = self
            .container_port_range
            .as_deref()
            .and_then(|r| r.split_once('-'))
        else {
            return Vec::new();
        };
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) if a <= b => (a..=b).collect(),
            _ => Vec::new(),
        }
    }

    /// The static host port, if any.
    pub fn static_host_port(&self) -> Option<u16> {
        self.host_port.filter(|p| *p != 0)
    }
}

/// One mount point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    /// Task volume name.
    pub source_volume: String,
    /// Path inside the container.
    pub container_path: String,
    /// Read-only.
    #[serde(default, deserialize_with = "null_default")]
    pub read_only: bool,
}

/// One volumesFrom entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFrom {
    /// Container of this task.
    pub source_container: String,
    /// Read-only.
    #[serde(default, deserialize_with = "null_default")]
    pub read_only: bool,
}

/// `dockerConfig`: Docker Engine API JSON strings rendered by the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    /// JSON of the Docker `Config`.
    #[serde(default)]
    pub config: Option<String>,
    /// JSON of the Docker `HostConfig`.
    #[serde(default)]
    pub host_config: Option<String>,
    /// Docker API version.
    #[serde(default)]
    pub version: Option<String>,
}

/// `registryAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuthentication {
    /// `ecr` (the only type ECS sends on Linux).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// ECR details.
    #[serde(default)]
    pub ecr_auth_data: Option<EcrAuthData>,
    /// Secrets Manager details (`repositoryCredentials`; type `asm`).
    #[serde(default)]
    pub asm_auth_data: Option<super::secrets::AsmAuthData>,
}

/// ECR auth details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EcrAuthData {
    /// Registry region.
    #[serde(default)]
    pub region: Option<String>,
    /// Registry (account) id.
    #[serde(default)]
    pub registry_id: Option<String>,
    /// Endpoint override.
    #[serde(default)]
    pub endpoint_override: Option<String>,
    /// Use the task's execution role (else the instance role).
    #[serde(default, deserialize_with = "null_default")]
    pub use_execution_role: bool,
}

/// A container as ACS delivers it (spec §6.2). Fields we do not use are tolerated and dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Unique within the task.
    #[serde(default)]
    pub name: String,
    /// Image reference.
    #[serde(default)]
    pub image: String,
    /// CPU units (CpuShares).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Hard memory limit, MiB.
    #[serde(default)]
    pub memory: Option<f64>,
    /// Essential container (§7.3).
    #[serde(default, deserialize_with = "null_default")]
    pub essential: bool,
    /// Cmd.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default)]
    pub entry_point: Option<Vec<String>>,
    /// Env, as a map.
    #[serde(default, deserialize_with = "null_default")]
    pub environment: BTreeMap<String, String>,
    /// Port mappings.
    #[serde(default, deserialize_with = "null_default")]
    pub port_mappings: Vec<PortMapping>,
    /// `name` or `name:alias`.
    #[serde(default, deserialize_with = "null_default")]
    pub links: Vec<String>,
    /// Mount points.
    #[serde(default, deserialize_with = "null_default")]
    pub mount_points: Vec<MountPoint>,
    /// volumesFrom.
    #[serde(default, deserialize_with = "null_default")]
    pub volumes_from: Vec<VolumeFrom>,
    /// Raw Docker JSON.
    #[serde(default)]
    pub docker_config: Option<DockerConfig>,
    /// JSON string (or object) of container overrides; `command` replaces the command.
    #[serde(default)]
    pub overrides: Option<serde_json::Value>,
    /// Start ordering.
    #[serde(default, deserialize_with = "null_default")]
    pub depends_on: Vec<Dependency>,
    /// Seconds the containers that depend on this one wait, from its start, for it to reach
    /// their condition (0/absent = no limit); then they give up (`DependencyConditionError`).
    #[serde(default)]
    pub start_timeout: Option<u64>,
    /// SIGTERM→SIGKILL grace in seconds (0/absent = `ECS_CONTAINER_STOP_TIMEOUT`).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// Privileged (also honoured inside `dockerConfig.hostConfig`).
    #[serde(default)]
    pub privileged: Option<bool>,
    /// Registry auth.
    #[serde(default)]
    pub registry_authentication: Option<RegistryAuthentication>,
    /// `ExecutionRole`: dockerd's awslogs driver signs with the execution role (spec §9.7).
    #[serde(default)]
    pub logs_auth_strategy: Option<String>,
    /// The container's ARN (task metadata `ContainerARN`), when ECS sent one.
    #[serde(default)]
    pub container_arn: Option<String>,
    /// Secrets from SSM and Secrets Manager: names and where from, never values
    /// ([`super::secrets`] fetches them before create).
    #[serde(default, deserialize_with = "null_default")]
    pub secrets: Vec<super::secrets::SecretSpec>,
    /// Environment files from S3 ([`super::envfiles`] reads them before create).
    #[serde(default, deserialize_with = "null_default")]
    pub environment_files: Vec<super::envfiles::EnvironmentFile>,
    /// `docker` (any case) when the task definition has a `healthCheck`: Docker runs the check
    /// from `dockerConfig.config`'s `Healthcheck` and the engine tracks its result.
    #[serde(default)]
    pub health_check_type: Option<String>,
}

impl ContainerSpec {
    /// The Secrets Manager secret holding this container's registry login, if it has one.
    pub fn asm_registry(&self) -> Option<&super::secrets::AsmAuthData> {
        self.registry_authentication
            .as_ref()
            .filter(|a| a.kind.as_deref() == Some("asm"))
            .and_then(|a| a.asm_auth_data.as_ref())
    }

    /// Whether something must be fetched with the execution role before this container is
    /// pulled or created (secrets, environment files, a registry login).
    pub fn needs_resolution(&self) -> bool {
        !self.secrets.is_empty()
            || !self.environment_files.is_empty()
            || self.asm_registry().is_some()
    }

    /// Whether the task definition gives this container a health check whose status the engine
    /// tracks and reports (`healthCheckType` `docker`; an image's own `HEALTHCHECK` alone is
    /// not reported, container-features.md §2).
    pub fn health_checked(&self) -> bool {
        self.health_check_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("docker"))
    }

    /// The command after `overrides` (a JSON string or object with `command`).
    pub fn effective_command(&self) -> Option<Vec<String>> {
        let over = match &self.overrides {
            Some(serde_json::Value::String(s)) => serde_json::from_str(s).ok(),
            Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
            _ => None,
        };
        if let Some(cmd) = over
            .as_ref()
            .and_then(|o: &serde_json::Value| o.get("command"))
            .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
        {
            return Some(cmd);
        }
        self.command.clone()
    }

    /// `dockerConfig.config` parsed (an empty object when absent or unparsable).
    pub fn raw_config(&self) -> serde_json::Value {
        parse_raw(
            self.docker_config
                .as_ref()
                .and_then(|d| d.config.as_deref()),
            docker_json::Kind::Config,
        )
    }

    /// `dockerConfig.hostConfig` parsed (an empty object when absent or unparsable).
    pub fn raw_host_config(&self) -> serde_json::Value {
        parse_raw(
            self.docker_config
                .as_ref()
                .and_then(|d| d.host_config.as_deref()),
            docker_json::Kind::HostConfig,
        )
    }

    /// Whether the container asks for privileged mode (field or `HostConfig.Privileged`).
    pub fn wants_privileged(&self) -> bool {
        self.privileged == Some(true)
            || self.raw_host_config().get("Privileged") == Some(&serde_json::Value::Bool(true))
    }

    /// Memory this container reserves for placement, MiB: the hard limit, else
    /// `MemoryReservation` from the raw host config (bytes).
    pub fn reserved_memory_mib(&self) -> u64 {
        if let Some(m) = self.memory.filter(|m| *m > 0.0) {
            return m as u64;
        }
        self.raw_host_config()
            .get("MemoryReservation")
            .and_then(|v| v.as_u64())
            .map_or(0, |b| b / (1024 * 1024))
    }
}

/// A `dockerConfig` JSON string as an object with Docker's key spelling (ECS's keys are
/// case-insensitive, container-features.md §0). Unparsable text never gets this far: the engine
/// refuses such a task at delivery (`engine::features`).
fn parse_raw(s: Option<&str>, kind: docker_json::Kind) -> serde_json::Value {
    let mut v = s
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    docker_json::canonicalize(&mut v, kind);
    v
}

/// `host` volume details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVolume {
    /// Host path; empty = a task-scoped Docker volume.
    #[serde(default)]
    pub source_path: Option<String>,
}

/// `docker` volume details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerVolumeConfiguration {
    /// `task` or `shared`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Create a shared volume when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub autoprovision: bool,
    /// Driver (`local` by default).
    #[serde(default)]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, deserialize_with = "null_default")]
    pub driver_opts: BTreeMap<String, String>,
    /// Volume labels.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// A task volume (spec §6.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Name referenced by mount points.
    #[serde(default)]
    pub name: String,
    /// `host`, `docker`, `efs`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Host details.
    #[serde(default)]
    pub host: Option<HostVolume>,
    /// Docker volume details.
    #[serde(default)]
    pub docker_volume_configuration: Option<DockerVolumeConfiguration>,
}

/// How a task volume is realised in Docker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A bind mount of a host path.
    HostPath(String),
    /// A Docker volume: name, driver, options, labels; `task_scoped` ones are removed with the
    /// task; `create` says whether the engine creates it.
    Docker {
        /// Docker volume name.
        name: String,
        /// Driver.
        driver: String,
        /// Driver options.
        driver_opts: BTreeMap<String, String>,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Removed with the task.
        task_scoped: bool,
        /// Created by the engine when absent.
        create: bool,
    },
}

/// A task as ACS delivers it (spec §6.1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Task ARN.
    #[serde(default)]
    pub arn: String,
    /// Family.
    #[serde(default)]
    pub family: String,
    /// Revision.
    #[serde(default)]
    pub version: String,
    /// `RUNNING` or `STOPPED`.
    #[serde(default)]
    pub desired_status: Option<String>,
    /// Cluster of the task.
    #[serde(default)]
    pub task_cluster_arn: Option<String>,
    /// Containers.
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<ContainerSpec>,
    /// Volumes.
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: Vec<VolumeSpec>,
    /// Task CPU, vCPUs.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Task memory, MiB.
    #[serde(default)]
    pub memory: Option<f64>,
    /// `bridge` (default), `host`, `none`, `awsvpc`.
    #[serde(default)]
    pub network_mode: Option<String>,
    /// PID mode.
    #[serde(default)]
    pub pid_mode: Option<String>,
    /// IPC mode.
    #[serde(default)]
    pub ipc_mode: Option<String>,
    /// The ECS service that started the task (absent for standalone tasks); draining waits for
    /// service tasks only.
    #[serde(default)]
    pub service_name: Option<String>,
    /// `EC2` (task metadata `LaunchType`).
    #[serde(default)]
    pub launch_type: Option<String>,
    /// Fault injection enabled for the task (task metadata `FaultInjectionEnabled`).
    #[serde(default, deserialize_with = "null_default")]
    pub enable_fault_injection: bool,
    /// The task role: its ARN and credentials id (the credentials themselves live only in the
    /// in-memory store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_credentials: Option<CredentialsRef>,
    /// The task's elastic network interfaces (awsvpc), as ACS sent them.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub elastic_network_interfaces: Vec<eni::AcsEni>,
    /// The execution role: its ARN and credentials id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_credentials: Option<CredentialsRef>,
}

/// What a task record keeps of a credential set: the role and the `credentialsId`, never a
/// key or token. The id is persisted (a restarted agent answers it 503 until ACS delivers the
/// credentials again, task-credentials.md §2.4) but never logged nor shown: `Debug` hides it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// The role's ARN.
    #[serde(default, deserialize_with = "null_default")]
    pub role_arn: String,
    /// `credentialsId` (empty when ACS sent none).
    #[serde(default, deserialize_with = "null_default")]
    pub credentials_id: String,
}

impl std::fmt::Debug for CredentialsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsRef")
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    /// The task role's credentials id, when the task has a task role.
    pub fn task_role_credentials_id(&self) -> Option<&str> {
        self.role_credentials
            .as_ref()
            .map(|c| c.credentials_id.as_str())
            .filter(|id| !id.is_empty())
    }

    /// The execution role's credentials id, when the task has an execution role.
    pub fn execution_credentials_id(&self) -> Option<&str> {
        self.execution_role_credentials
            .as_ref()
            .map(|c| c.credentials_id.as_str())
            .filter(|id| !id.is_empty())
    }
}

impl TaskSpec {
    /// Parses and validates a task object from ACS (credentials must already be stripped).
    pub fn from_json(value: &serde_json::Value) -> Result<TaskSpec, ModelError> {
        let spec: TaskSpec =
            serde_json::from_value(value.clone()).map_err(|e| ModelError::Json(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The task id (last ARN path segment).
    pub fn task_id(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }

    /// Desired status from the payload (`RUNNING` when absent).
    pub fn desired(&self) -> Result<TaskStatus, ModelError> {
        match self.desired_status.as_deref() {
            None => Ok(TaskStatus::Running),
            Some(s) => TaskStatus::parse(s),
        }
    }

    /// Checks names and references.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.arn.trim().is_empty() {
            return Err(ModelError::Missing("arn"));
        }
        self.desired()?;
        let mut names = BTreeSet::new();
        for c in &self.containers {
            if c.name.is_empty() {
                return Err(ModelError::Missing("containers[].name"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(ModelError::DuplicateContainer(c.name.clone()));
            }
        }
        let volumes: BTreeSet<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        for c in &self.containers {
            let unknown = |to: &str, field| ModelError::UnknownContainer {
                from: c.name.clone(),
                to: to.to_owned(),
                field,
            };
            // Links to containers outside the task are tolerated here (Docker refuses them at
            // create, which stops the container with CannotCreateContainerError): ACS payloads
            // in the wild carry them (see the with_container fixture).
            for v in &c.volumes_from {
                if !names.contains(v.source_container.as_str()) {
                    return Err(unknown(&v.source_container, "volumesFrom"));
                }
            }
            for d in &c.depends_on {
                if !names.contains(d.container_name.as_str()) {
                    return Err(unknown(&d.container_name, "dependsOn"));
                }
            }
            for m in &c.mount_points {
                if !volumes.contains(m.source_volume.as_str()) {
                    return Err(ModelError::UnknownVolume {
                        container: c.name.clone(),
                        volume: m.source_volume.clone(),
                    });
                }
            }
        }
        self.check_cycles()
    }

    fn check_cycles(&self) -> Result<(), ModelError> {
        // Depth-first search over dependsOn; links and volumesFrom also order creation.
        fn visit<'a>(
            spec: &'a TaskSpec,
            name: &'a str,
            stack: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Result<(), ModelError> {
            if done.contains(name) {
                return Ok(());
            }
            if stack.contains(&name) {
                return Err(ModelError::DependencyCycle(name.to_owned()));
            }
            stack.push(name);
            if let Some(c) = spec.containers.iter().find(|c| c.name == name) {
                for dep in spec.create_dependencies(c) {
                    visit(spec, dep, stack, done)?;
                }
            }
            stack.pop();
            done.insert(name);
            Ok(())
        }
        let mut done = BTreeSet::new();
        for c in &self.containers {
            visit(self, &c.name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }

    /// Containers that must exist before `c` is created (links, volumesFrom) and those it
    /// `dependsOn`.
    pub fn create_dependencies<'a>(&'a self, c: &'a ContainerSpec) -> Vec<&'a str> {
        let mut out: Vec<&str> = c
            .links
            .iter()
            .map(|l| l.split(':').next().unwrap_or(l))
            .filter(|t| self.containers.iter().any(|x| x.name == *t))
            .chain(c.volumes_from.iter().map(|v| v.source_container.as_str()))
            .chain(c.depends_on.iter().map(|d| d.container_name.as_str()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// CPU units the task reserves: task CPU × 1024 if set, else the sum of container CPU.
    pub fn cpu_units(&self) -> u64 {
        match self.cpu.filter(|c| *c > 0.0) {
            Some(v) if v < 64.0 => (v * 1024.0).round() as u64,
            // Some producers send units at task level; take them as they are.
            Some(units) => units as u64,
            None => self
                .containers
                .iter()
                .map(|c| c.cpu.unwrap_or(0.0).max(0.0) as u64)
                .sum(),
        }
    }

    /// Memory the task reserves, MiB: task memory if set, else the sum over containers.
    pub fn memory_mib(&self) -> u64 {
        match self.memory.filter(|m| *m > 0.0) {
            Some(m) => m as u64,
            None => self
                .containers
                .iter()
                .map(ContainerSpec::reserved_memory_mib)
                .sum(),
        }
    }

    /// Static host ports the task needs, as `(port, protocol)`.
    pub fn static_host_ports(&self) -> Vec<(u16, String)> {
        if self.network_mode.as_deref() == Some("awsvpc") {
            // The task's own network namespace: its ports are not the host's.
            return Vec::new();
        }
        if self.network_mode.as_deref() == Some("host") {
            // Host networking: the container ports are the host ports.
            return self
                .containers
                .iter()
                .flat_map(|c| c.port_mappings.iter())
                .flat_map(|p| {
                    p.container_ports()
                        .into_iter()
                        .map(|port| (port, p.proto().to_owned()))
                })
                .collect();
        }
        self.containers
            .iter()
            .flat_map(|c| c.port_mappings.iter())
            .filter_map(|p| p.static_host_port().map(|h| (h, p.proto().to_owned())))
            .collect()
    }
}

/// The official Docker name: `ecs-<family>-<version>-<name, [A-Za-z0-9-] only>-<20 hex>`.
pub fn docker_name(family: &str, version: &str, container: &str, hex20: &str) -> String {
    let clean: String = container
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("ecs-{family}-{version}-{clean}-{hex20}")
}

/// 20 lowercase hex characters from a random UUID.
pub fn random_hex20() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_owned()
}

/// Container health (protocol spec §7.1), from Docker's `State.Health.Status`
/// ([`HealthStatus::from_docker`]). The engine tracks it only for containers whose task
/// definition has a health check ([`ContainerSpec::health_checked`]) and only while they run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    /// No result yet (Docker's `starting`), or no health check.
    #[default]
    Unknown,
    /// Docker's `healthy`.
    Healthy,
    /// Docker's `unhealthy`.
    Unhealthy,
}

impl HealthStatus {
    /// As ECS spells it (TCS `healthStatus`, task metadata `Health.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
        }
    }

    /// Docker's status word (`healthy`, `unhealthy`; `starting`, `none` or empty are unknown).
    pub fn from_docker(status: &str) -> HealthStatus {
        match status {
            "healthy" => HealthStatus::Healthy,
            "unhealthy" => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }
    }
}

/// The most output of a health probe the engine keeps (container-features.md §2).
pub const HEALTH_OUTPUT_MAX: usize = 1024;

/// Docker's last health probe of a container (the last entry of inspect's `State.Health.Log`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    /// The probe's exit code (0 healthy, 1 unhealthy; Docker uses others for probes it could
    /// not run or that timed out).
    pub exit_code: i64,
    /// Its output, at most [`HEALTH_OUTPUT_MAX`] bytes (cut at a character boundary).
    pub output: String,
}

impl HealthProbe {
    /// A probe result with its output cut to [`HEALTH_OUTPUT_MAX`] bytes.
    pub fn new(exit_code: i64, output: &str) -> HealthProbe {
        HealthProbe {
            exit_code,
            output: truncate_bytes(output, HEALTH_OUTPUT_MAX).to_owned(),
        }
    }
}

/// Which step an action failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Image pull.
    Pull,
    /// Container create.
    Create,
    /// Container start.
    Start,
    /// Container stop.
    Stop,
    /// The task's resources (its Docker volumes), before the first create.
    Resources,
}

/// The last failed attempt of a step, kept so the reconciler can retry with backoff or give up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Step.
    pub step: Step,
    /// Reason text for ECS, e.g. `CannotCreateContainerError: ...`.
    pub message: String,
    /// Worth another attempt.
    pub retryable: bool,
    /// Attempts so far.
    pub attempts: u32,
    /// Epoch seconds before which no retry happens.
    pub retry_at: f64,
}

/// One Docker network a container is attached to (Docker inspect `NetworkSettings.Networks`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNetwork {
    /// Network name (`bridge`, `host`, `none`, a user network).
    pub name: String,
    /// IPv4 address (empty with host networking).
    #[serde(default)]
    pub ipv4: String,
    /// Global IPv6 address, if any.
    #[serde(default)]
    pub ipv6: String,
}

/// The engine's persisted view of one container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Name in the task.
    pub name: String,
    /// Docker name, fixed before the first create.
    pub docker_name: String,
    /// Docker id once created (or adopted).
    pub docker_id: Option<String>,
    /// Known status.
    pub known: ContainerStatus,
    /// Last status handed to the sink.
    pub emitted: Option<ReportStatus>,
    /// Exit code once stopped.
    pub exit_code: Option<i32>,
    /// Why it stopped or failed.
    pub reason: Option<String>,
    /// Actual port bindings.
    pub ports: Vec<NetworkBinding>,
    /// Image id (`sha256:...`).
    pub image_id: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: Option<String>,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// RFC 3339 finish time.
    pub finished_at: Option<String>,
    /// Health: tracked only for containers with a task-definition health check, while they run.
    pub health: HealthStatus,
    /// Epoch seconds when `health` last changed (`None` until its first change from UNKNOWN).
    /// Persisted, so a restarted agent reports the same time.
    #[serde(default)]
    pub health_since: Option<f64>,
    /// Docker's last health probe as the engine last inspected it (inspections follow Docker's
    /// `health_status` events, so this is the probe that changed the status).
    #[serde(default)]
    pub health_probe: Option<HealthProbe>,
    /// Whether the container ever ran (a stop of a never-started one has no exit code).
    pub ran: bool,
    /// Epoch seconds the engine first knew it RUNNING (`startTimeout` counts from here).
    #[serde(default)]
    pub running_since: Option<f64>,
    /// Last failed step.
    pub failure: Option<Failure>,
    /// Random UUID v4 drawn when the task was accepted: the task metadata endpoint's id for this
    /// container (`ECS_CONTAINER_METADATA_URI_V4`, task-metadata.md §1). Empty only in records
    /// written before it existed (the engine draws one when it loads them).
    #[serde(default)]
    pub endpoint_id: String,
    /// Docker networks the container is attached to, from the inspection that saw it running.
    #[serde(default)]
    pub networks: Vec<ContainerNetwork>,
    /// Engine epoch at which `docker_id` was recorded; only a Docker listing taken later may
    /// declare the container vanished. Not persisted: after a restart every listing is later.
    #[serde(skip)]
    pub id_epoch: u64,
    /// A container of the task definition, or one the engine added ([`internal`]).
    #[serde(default, skip_serializing_if = "ContainerKind::is_normal")]
    pub kind: ContainerKind,
    /// Its main process while it runs (Docker's `State.Pid`), from the inspection that saw it
    /// running: the awsvpc network is provisioned into `/proc/<pid>/ns/net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The engine's persisted view of one task. Never contains credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task as delivered (credentials stripped).
    pub spec: TaskSpec,
    /// Delivery order (resource admission is first come, first served).
    pub seq: u64,
    /// Desired status: RUNNING or STOPPED, forward only.
    pub desired: TaskStatus,
    /// Known status, forward only.
    pub known: TaskStatus,
    /// Last task status handed to the sink.
    pub emitted: Option<ReportStatus>,
    /// Resources reserved (resolution 9): only admitted tasks pull or create.
    pub admitted: bool,
    /// Why the task stops.
    pub reason: Option<String>,
    /// Epoch seconds.
    pub pull_started_at: Option<f64>,
    /// Epoch seconds.
    pub pull_stopped_at: Option<f64>,
    /// Epoch seconds: first essential container stopped.
    pub execution_stopped_at: Option<f64>,
    /// Epoch seconds when known became STOPPED (cleanup counts from here).
    pub stopped_at: Option<f64>,
    /// Extra random cleanup wait, seconds, drawn once.
    pub cleanup_jitter: f64,
    /// Docker volume names of task volumes (fixed at delivery).
    pub volumes: BTreeMap<String, VolumeSource>,
    /// The once-per-task step before the first create (its task cgroup and Docker volumes).
    #[serde(default)]
    pub resources: TaskResources,
    /// Containers: the internal ones first (in creation order), then the task's, in task order.
    pub containers: Vec<ContainerRecord>,
    /// Specs of the internal containers the engine added (never part of `spec`, which stays
    /// as ACS delivered it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal: Vec<ContainerSpec>,
    /// An awsvpc task's network: its ENI and how far the engine got with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<eni::TaskNet>,
}

/// The task's resources, prepared once per task before its first container create: its task
/// cgroup (`engine::task_cgroup`, when [`TaskResources::cgroup`]), then its Docker volumes
/// (`engine::volumes`). Persisted, so a restart does not prepare again what was prepared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskResources {
    /// The task gets a task cgroup, its containers' parent: set when task cgroups are on, at
    /// admission (the task's limits can be had) or at load for a record older than this flag.
    #[serde(default)]
    pub cgroup: bool,
    /// Prepared: containers may be created.
    #[serde(default)]
    pub ready: bool,
    /// The last failed attempt (retried with backoff while retryable, else the stop reason).
    #[serde(default)]
    pub failure: Option<Failure>,
}

impl TaskRecord {
    /// A new record for a delivered task, internal containers with the default images.
    pub fn new(spec: TaskSpec, seq: u64, cleanup_jitter: f64) -> Result<TaskRecord, ModelError> {
        TaskRecord::with_images(spec, seq, cleanup_jitter, &InternalImages::default())
    }

    /// A new record for a delivered task; adds the internal containers it needs (with
    /// `images`), names every container and task volume.
    pub fn with_images(
        spec: TaskSpec,
        seq: u64,
        cleanup_jitter: f64,
        images: &InternalImages,
    ) -> Result<TaskRecord, ModelError> {
        Self::build(spec, seq, cleanup_jitter, images, true)
    }

    /// The record of a task refused at delivery for a feature this host lacks
    /// (`features::unsupported`): it is stopped before anything runs, so its network is not
    /// planned (an awsvpc task refused for want of awsvpc is refused for that, not for its ENI).
    pub fn refused(
        spec: TaskSpec,
        seq: u64,
        cleanup_jitter: f64,
        images: &InternalImages,
    ) -> Result<TaskRecord, ModelError> {
        Self::build(spec, seq, cleanup_jitter, images, false)
    }

    fn build(
        spec: TaskSpec,
        seq: u64,
        cleanup_jitter: f64,
        images: &InternalImages,
        plan_network: bool,
    ) -> Result<TaskRecord, ModelError> {
        let desired = match spec.desired()? {
            TaskStatus::Stopped => TaskStatus::Stopped,
            _ => TaskStatus::Running,
        };
        let added = internal::needed(&spec, images);
        if let Some(clash) = spec
            .containers
            .iter()
            .find(|c| added.iter().any(|(_, a)| a.name == c.name))
        {
            return Err(ModelError::DuplicateContainer(clash.name.clone()));
        }
        let record = |kind: ContainerKind, name: &str| ContainerRecord {
            name: name.to_owned(),
            docker_name: docker_name(&spec.family, &spec.version, name, &random_hex20()),
            endpoint_id: uuid::Uuid::new_v4().to_string(),
            kind,
            ..ContainerRecord::default()
        };
        let containers = added
            .iter()
            .map(|(kind, c)| record(*kind, &c.name))
            .chain(
                spec.containers
                    .iter()
                    .map(|c| record(ContainerKind::Normal, &c.name)),
            )
            .collect();
        let internal = added.into_iter().map(|(_, c)| c).collect();
        // The engine sets the expiry when it accepts the task (the model reads no clock).
        let network = match spec.network_mode.as_deref() {
            Some("awsvpc") if plan_network => Some(eni::TaskNet::new(
                eni::task_eni(&spec.elastic_network_interfaces)?,
                0.0,
            )),
            _ => None,
        };
        let volumes = spec
            .volumes
            .iter()
            .filter_map(|v| volume_source(&spec, v).map(|s| (v.name.clone(), s)))
            .collect();
        Ok(TaskRecord {
            spec,
            seq,
            desired,
            known: TaskStatus::None,
            cleanup_jitter,
            volumes,
            containers,
            internal,
            network,
            ..TaskRecord::default()
        })
    }

    /// Stops a task that cannot run, before anything of it was created: every container
    /// STOPPED with `reason`, which is also the task's.
    pub fn refuse(&mut self, reason: &str) {
        self.desired = TaskStatus::Stopped;
        self.reason.get_or_insert_with(|| reason.to_owned());
        for c in &mut self.containers {
            if c.known < ContainerStatus::Stopped {
                c.known = ContainerStatus::Stopped;
                c.reason.get_or_insert_with(|| reason.to_owned());
            }
        }
    }

    /// The spec of container `name` (of the task, or internal).
    pub fn spec_of(&self, name: &str) -> Option<&ContainerSpec> {
        self.spec
            .containers
            .iter()
            .chain(&self.internal)
            .find(|c| c.name == name)
    }

    /// Whether any internal container has not reached its steady state yet (user containers
    /// wait): RUNNING, and for the network pause also the task's network provisioned.
    pub fn internal_pending(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c.kind.is_internal() && c.known < ContainerStatus::Running)
            || self
                .network
                .as_ref()
                .is_some_and(|n| n.provisioned.is_none())
    }

    /// Whether the task runs in the awsvpc network mode.
    pub fn is_awsvpc(&self) -> bool {
        self.network.is_some()
    }

    /// The Docker id of the internal container of `kind`, once created.
    pub fn internal_id(&self, kind: ContainerKind) -> Option<&str> {
        self.containers
            .iter()
            .find(|c| c.kind == kind)
            .and_then(|c| c.docker_id.as_deref())
    }

    /// The record of container `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether the task has resources to prepare before its first create (a task cgroup,
    /// Docker volumes).
    pub fn has_resources(&self) -> bool {
        self.resources.cgroup
            || self
                .volumes
                .values()
                .any(|v| matches!(v, VolumeSource::Docker { .. }))
    }

    /// Whether it holds host resources (admitted and not yet stopped).
    pub fn holds_resources(&self) -> bool {
        self.admitted && self.known < TaskStatus::Stopped
    }
}

fn volume_source(spec: &TaskSpec, v: &VolumeSpec) -> Option<VolumeSource> {
    let task_scoped_name = || {
        format!(
            "ecs-{}-{}-{}-{}",
            spec.family,
            spec.version,
            v.name,
            random_hex20()
        )
    };
    match v.kind.as_deref() {
        Some("docker") => {
            let c = v.docker_volume_configuration.clone().unwrap_or_default();
            let shared = c.scope.as_deref() == Some("shared");
            Some(VolumeSource::Docker {
                name: if shared {
                    v.name.clone()
                } else {
                    task_scoped_name()
                },
                driver: c
                    .driver
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "local".into()),
                driver_opts: c.driver_opts,
                labels: c.labels,
                task_scoped: !shared,
                create: !shared || c.autoprovision,
            })
        }
        // `host` (or untyped, as older payloads send it).
        None | Some("host") | Some("") => {
            match v.host.as_ref().and_then(|h| h.source_path.clone()) {
                Some(p) if !p.is_empty() => Some(VolumeSource::HostPath(p)),
                _ => Some(VolumeSource::Docker {
                    name: task_scoped_name(),
                    driver: "local".into(),
                    driver_opts: BTreeMap::new(),
                    labels: BTreeMap::new(),
                    task_scoped: true,
                    create: true,
                }),
            }
        }
        // efs, fsx, ebs, ...: not supported; containers mounting them fail at create.
        Some(_) => None,
    }
}

/// Whether a dependency is satisfied, can never be satisfied, or is still pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepState {
    /// Go ahead.
    Satisfied,
    /// Wait.
    Pending,
    /// It can never be satisfied; the reason says why.
    Impossible(String),
}

/// When a dependency of `c` that has not reached its condition yet runs out of its
/// `startTimeout` (the earliest such time), if any does.
pub fn dependency_deadline(task: &TaskRecord, c: &ContainerSpec) -> Option<f64> {
    c.depends_on
        .iter()
        .filter_map(|d| {
            let since = task.container(&d.container_name)?.running_since?;
            let timeout = task
                .spec_of(&d.container_name)?
                .start_timeout
                .filter(|t| *t > 0)?;
            Some(since + timeout as f64)
        })
        .min_by(f64::total_cmp)
}

/// Evaluates `c`'s `dependsOn` (and links/volumesFrom needing the target created) against the
/// other containers' records at `now`, for the create/start steps (spec §7.2). A dependency
/// that has not reached its condition `startTimeout` seconds after it started never will.
///
/// HEALTHY waits for the dependency's tracked health: an UNHEALTHY dependency is still waited
/// for (Docker turns it healthy again after a passing probe; `startTimeout` bounds the wait), a
/// stopped one or one without a task-definition health check can never satisfy it.
pub fn dependencies(task: &TaskRecord, c: &ContainerSpec, now: f64) -> DepState {
    let mut pending = false;
    for d in &c.depends_on {
        let Some(dep) = task.container(&d.container_name) else {
            return DepState::Impossible(format!("unknown dependency {}", d.container_name));
        };
        if d.condition == Condition::Healthy
            && !task
                .spec_of(&d.container_name)
                .is_some_and(ContainerSpec::health_checked)
        {
            return DepState::Impossible(format!(
                "DependencyConditionError: dependency {} of container {} has no health check, so it can never satisfy condition HEALTHY",
                d.container_name, c.name
            ));
        }
        let stopped = dep.known == ContainerStatus::Stopped;
        let ok = match d.condition {
            Condition::Start => dep.known >= ContainerStatus::Running && dep.ran,
            Condition::Complete => stopped,
            Condition::Success => stopped && dep.exit_code == Some(0),
            Condition::Healthy => dep.health == HealthStatus::Healthy,
        };
        if ok {
            continue;
        }
        let never = match d.condition {
            Condition::Start => stopped && !dep.ran,
            Condition::Complete => false,
            Condition::Success => stopped,
            Condition::Healthy => stopped,
        };
        if never {
            return DepState::Impossible(format!(
                "DependencyConditionError: dependency {} of container {} can no longer satisfy condition {:?} (exit code {:?})",
                d.container_name, c.name, d.condition, dep.exit_code
            ));
        }
        let timeout = task
            .spec_of(&d.container_name)
            .and_then(|s| s.start_timeout)
            .filter(|t| *t > 0);
        if let (Some(since), Some(timeout)) = (dep.running_since, timeout)
            && now >= since + timeout as f64
        {
            return DepState::Impossible(format!(
                "DependencyConditionError: dependency {} of container {} did not reach condition {:?} within its startTimeout of {timeout} s",
                d.container_name, c.name, d.condition
            ));
        }
        pending = true;
    }
    // links and volumesFrom need the target to exist (created).
    for target in c
        .links
        .iter()
        .map(|l| l.split(':').next().unwrap_or(l))
        .chain(c.volumes_from.iter().map(|v| v.source_container.as_str()))
    {
        match task.container(target) {
            Some(t) if t.docker_id.is_some() && t.known >= ContainerStatus::Created => {}
            Some(t) if t.known == ContainerStatus::Stopped => {
                return DepState::Impossible(format!(
                    "DependencyConditionError: container {target} needed by {} stopped before it was created",
                    c.name
                ));
            }
            // Not in the task: Docker decides at create.
            None => {}
            Some(_) => pending = true,
        }
    }
    if pending {
        DepState::Pending
    } else {
        DepState::Satisfied
    }
}

/// The task status its containers imply (the lowest, §7.2); never below `current`.
pub fn task_known(
    current: TaskStatus,
    containers: &[ContainerRecord],
    essential_stopped: bool,
) -> TaskStatus {
    let lowest = containers
        .iter()
        .map(|c| c.known.as_task_status())
        .min()
        .unwrap_or(TaskStatus::Stopped);
    // Spec §7.2: while an essential container is stopped and others still run, the task does
    // not advance (it never becomes RUNNING on the way down); it goes straight to STOPPED.
    if essential_stopped && lowest < TaskStatus::Stopped {
        return current;
    }
    lowest.max(current)
}

/// Drops IPv6 (`::`) bindings from a report, as `ECS_EXCLUDE_IPV6_PORTBINDING=true` (the
/// default) asks (protocol spec §8.2).
pub fn drop_ipv6_bindings(change: &mut TaskChange) {
    for c in &mut change.containers {
        c.network_bindings.retain(|b| !b.bind_ip.contains(':'));
    }
}

/// Builds the state change owed to ECS since the last one and marks it emitted (spec §8.1):
/// task RUNNING/STOPPED when known passed what was sent; container RUNNING/STOPPED likewise,
/// carried with the task's current status. `None` when nothing is owed.
pub fn take_change(rec: &mut TaskRecord, default_cluster: &str) -> Option<TaskChange> {
    let task_report = match rec.known {
        TaskStatus::Running | TaskStatus::Stopped => Some(rec.known.report()),
        _ => None,
    };
    let task_due = task_report.is_some() && task_report > rec.emitted;
    let mut containers = Vec::new();
    // Internal containers are never reported (ECS does not know them).
    for c in rec.containers.iter_mut().filter(|c| !c.kind.is_internal()) {
        let Some(r) = c.known.report() else { continue };
        if Some(r) <= c.emitted {
            continue;
        }
        c.emitted = Some(r);
        containers.push(ContainerChange {
            container_name: c.name.clone(),
            runtime_id: c.docker_id.clone(),
            status: r,
            exit_code: if r == ReportStatus::Stopped {
                c.exit_code
            } else {
                None
            },
            reason: if r == ReportStatus::Stopped {
                c.reason.as_deref().map(truncate_reason)
            } else {
                None
            },
            image_digest: None,
            network_bindings: c.ports.clone(),
        });
    }
    // An awsvpc task's ENI: ATTACHED once found (awsvpc.md §2.3).
    let mut attachments = Vec::new();
    if let Some(n) = rec.network.as_mut()
        && n.found.is_some()
        && !n.attached_emitted
    {
        n.attached_emitted = true;
        attachments.push(AttachmentChange {
            attachment_arn: n.eni.attachment_arn.clone(),
            status: "ATTACHED".into(),
        });
    }
    if !task_due && containers.is_empty() && attachments.is_empty() {
        return None;
    }
    let status = task_report.unwrap_or(ReportStatus::Pending);
    if task_due {
        rec.emitted = Some(status);
    }
    Some(TaskChange {
        cluster: rec
            .spec
            .task_cluster_arn
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| default_cluster.to_owned()),
        task_arn: rec.spec.arn.clone(),
        status,
        reason: if status == ReportStatus::Stopped {
            rec.reason.as_deref().map(truncate_reason)
        } else {
            None
        },
        pull_started_at: rec.pull_started_at,
        pull_stopped_at: rec.pull_stopped_at,
        execution_stopped_at: if status == ReportStatus::Stopped {
            rec.execution_stopped_at
        } else {
            None
        },
        containers,
        attachments,
    })
}

/// ECS accepts reasons of at most 1024 characters.
pub fn truncate_reason(s: &str) -> String {
    truncate_bytes(s, 1024).to_owned()
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Strips credentials from a task object (design.md resolution 7) before it is stored or
/// parsed: of each credential set only the role's ARN (it says the task has that role) and the
/// `credentialsId` are kept (what upstream persists: the endpoint answers a known id 503 after
/// a restart, and the task role's id goes into the containers' environment); keys, token and
/// expiration go. The id is never logged nor shown in `/v1/tasks`.
pub fn strip_credentials(task: &mut serde_json::Value) {
    if let Some(o) = task.as_object_mut() {
        for key in ["roleCredentials", "executionRoleCredentials"] {
            if let Some(c) = o.get_mut(key) {
                let arn = c.get("roleArn").cloned().unwrap_or_else(|| "".into());
                let id = c
                    .get("credentialsId")
                    .filter(|v| v.is_string())
                    .cloned()
                    .unwrap_or_else(|| "".into());
                *c = serde_json::json!({ "roleArn": arn, "credentialsId": id });
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod ipv6_binding_tests {
    use super::*;
    use crate::tasks::{ContainerChange, NetworkBinding, ReportStatus, TaskChange};

    #[test]
    fn ipv6_bindings_are_dropped_and_ipv4_kept() {
        let binding = |ip: &str| NetworkBinding {
            bind_ip: ip.into(),
            container_port: Some(8080),
            host_port: Some(32769),
            protocol: "tcp".into(),
            container_port_range: None,
            host_port_range: None,
        };
        let mut change = TaskChange {
            attachments: Vec::new(),
            cluster: "c".into(),
            task_arn: "t".into(),
            status: ReportStatus::Running,
            reason: None,
            pull_started_at: None,
            pull_stopped_at: None,
            execution_stopped_at: None,
            containers: vec![ContainerChange {
                container_name: "web".into(),
                runtime_id: None,
                status: ReportStatus::Running,
                exit_code: None,
                reason: None,
                image_digest: None,
                network_bindings: vec![binding("0.0.0.0"), binding("::")],
            }],
        };
        drop_ipv6_bindings(&mut change);
        assert_eq!(
            change.containers[0].network_bindings,
            vec![binding("0.0.0.0")]
        );
    }
}
