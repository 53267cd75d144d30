//! Task metadata v4 and v3 (task-metadata.md §3–§8): the container and task objects, with the
//! keys in upstream's order, rendered from the facts the engine publishes ([`MetadataIndex`]).
//!
//! Choices where the spec leaves room:
//! - `/taskWithTags` asks ECS for both tag sets on every request ([`super::tags`]), the two calls
//!   at once; a failed one becomes an `Errors` entry in v4 and a log line in v3.
//! - `/stats` asks Docker once per request ([`super::stats`]); `network_rate_stats` is omitted
//!   (the spec omits it until two samples exist, and there is never a previous sample here).
//! - `VPCID`, `AvailabilityZoneID`, `RestartCount` are omitted (no IMDS lookups here; restart
//!   policies are refused by the engine).
//! - `Health` (v4 and v3) is shown for containers with a task-definition health check, from the
//!   engine's tracking ([`ContainerHealth`]); the task object has no health of its own.
//! - An awsvpc task's containers show one `Networks` entry, its ENI ([`AwsvpcFacts`]), in place
//!   of Docker's networks (they have none of their own): v4 with upstream's
//!   `NetworkInterfaceProperties` (`AttachmentIndex` 0, one ENI per task), v3 the addresses only.
//!   `SubnetGatewayIpv6Address` (IPv6-only ENIs upstream) never appears: ours need IPv4.
//!
//! Never reads engine internals: only the published index.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde::{Serialize, Serializer};

use super::tags::{TagFailure, TagSource};
use super::{EndpointState, json_response};
use crate::api::IntrospectionVolume;
use crate::engine::model::ContainerNetwork;
pub use crate::engine::model::HealthStatus;
use crate::tasks::NetworkBinding;

/// Which document a metadata path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// `/v4/<id>`: the container.
    Container,
    /// `/v4/<id>/task`.
    Task,
    /// `/v4/<id>/taskWithTags`.
    TaskWithTags,
    /// `/v4/<id>/stats`.
    ContainerStats,
    /// `/v4/<id>/task/stats`.
    TaskStats,
}

/// A health-checked container's health as the engine tracks it (container-features.md §2): what
/// task metadata shows as `Health` and TCS reports in `PublishHealthRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerHealth {
    /// HEALTHY, UNHEALTHY, or UNKNOWN (no result yet).
    pub status: HealthStatus,
    /// Epoch milliseconds of the last change of `status`; `None` while it never changed.
    pub since_ms: Option<i64>,
    /// Exit code of Docker's last probe the engine saw (`None` before the first).
    pub exit_code: Option<i64>,
    /// Output of that probe, at most 1024 bytes (`None` when empty).
    pub output: Option<String>,
}

/// What the engine publishes about one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerFacts {
    /// The container's endpoint id.
    pub endpoint_id: String,
    /// Docker id, once created.
    pub docker_id: Option<String>,
    /// Name in the task definition.
    pub name: String,
    /// Docker name.
    pub docker_name: String,
    /// Image as in the task definition.
    pub image: String,
    /// `sha256:…` image id.
    pub image_id: Option<String>,
    /// Actual port bindings.
    pub ports: Vec<NetworkBinding>,
    /// Labels it was created with.
    pub labels: BTreeMap<String, String>,
    /// Desired status (internal names: `RUNNING`, `STOPPED`).
    pub desired_status: String,
    /// Known status (internal names: `NONE`, `PULLED`, `CREATED`, `RUNNING`, `STOPPED`…).
    pub known_status: String,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// CPU units (at least 2, as given to Docker).
    pub cpu_units: u64,
    /// Hard memory limit, MiB (0 = none).
    pub memory_mib: u64,
    /// RFC 3339 (Docker's, with nanoseconds).
    pub created_at: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Docker networks.
    pub networks: Vec<ContainerNetwork>,
    /// Volumes.
    pub volumes: Vec<IntrospectionVolume>,
    /// Log driver.
    pub log_driver: Option<String>,
    /// Log options.
    pub log_options: BTreeMap<String, String>,
    /// Container ARN from ECS.
    pub container_arn: Option<String>,
    /// Whether the container runs now (its stats can be read).
    pub running: bool,
    /// Whether it belongs in the task's `Containers` (created, or pulled so far).
    pub listed: bool,
    /// Its health, only when the task definition gives it a health check
    /// (`healthCheckType` `docker`).
    pub health: Option<ContainerHealth>,
    /// The task's ENI when the task is in awsvpc network mode: its one `Networks` entry
    /// replaces Docker's (a container sharing the pause's namespace has none of its own).
    pub awsvpc: Option<Arc<AwsvpcFacts>>,
}

/// An awsvpc task's elastic network interface as task metadata shows it (the `Networks` entry
/// of every container of the task; upstream `NetworkInterfaceProperties`). Text as rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsvpcFacts {
    /// IPv4 addresses, the primary first.
    pub ipv4: Vec<String>,
    /// IPv6 addresses.
    pub ipv6: Vec<String>,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The subnet, `10.0.1.0/24` (from the gateway and its prefix), when ACS gave a gateway.
    pub ipv4_subnet_cidr: Option<String>,
    /// The IPv6 subnet: the first IPv6 address's /64, as upstream (dual stack).
    pub ipv6_subnet_cidr: Option<String>,
    /// DNS servers.
    pub dns_servers: Vec<String>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
    /// The task's host name.
    pub private_dns_name: Option<String>,
    /// The gateway with the subnet's prefix, as ACS sends it: `10.0.1.1/24`.
    pub subnet_gateway_ipv4: Option<String>,
}

/// What the engine publishes about one task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFacts {
    /// Task ARN.
    pub arn: String,
    /// Family.
    pub family: String,
    /// Revision.
    pub revision: String,
    /// `RUNNING` or `STOPPED`.
    pub desired_status: String,
    /// Known status (internal names).
    pub known_status: String,
    /// Containers, in task order.
    pub containers: Vec<ContainerFacts>,
    /// Task-level CPU, vCPUs.
    pub cpu_vcpu: Option<f64>,
    /// Task-level memory, MiB.
    pub memory_mib: Option<u64>,
    /// Epoch seconds.
    pub pull_started_at: Option<f64>,
    /// Epoch seconds.
    pub pull_stopped_at: Option<f64>,
    /// Epoch seconds.
    pub execution_stopped_at: Option<f64>,
    /// ACS `launchType`.
    pub launch_type: Option<String>,
    /// ACS `serviceName`.
    pub service_name: Option<String>,
    /// ACS `enableFaultInjection`.
    pub fault_injection: bool,
}

/// Every task, and where each endpoint id points: `(task, container)` indexes. Only created
/// containers have an entry (task-metadata.md §1: lookups fail until the container exists).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataIndex {
    /// Tasks.
    pub tasks: Vec<TaskFacts>,
    /// Endpoint id → (task index, container index).
    pub by_endpoint: HashMap<String, (usize, usize)>,
}

impl MetadataIndex {
    /// An index over `tasks`.
    pub fn new(tasks: Vec<TaskFacts>) -> MetadataIndex {
        let mut by_endpoint = HashMap::new();
        for (ti, t) in tasks.iter().enumerate() {
            for (ci, c) in t.containers.iter().enumerate() {
                if c.docker_id.is_some() && !c.endpoint_id.is_empty() {
                    by_endpoint.insert(c.endpoint_id.clone(), (ti, ci));
                }
            }
        }
        MetadataIndex { tasks, by_endpoint }
    }

    /// The task and container an endpoint id names.
    pub fn find(&self, endpoint_id: &str) -> Option<(&TaskFacts, &ContainerFacts)> {
        let (ti, ci) = *self.by_endpoint.get(endpoint_id)?;
        let t = self.tasks.get(ti)?;
        Some((t, t.containers.get(ci)?))
    }
}

/// Where the server reads the engine's tasks.
pub trait MetadataView: Send + Sync {
    /// The latest published index.
    fn metadata(&self) -> Arc<MetadataIndex>;
}

/// A fixed index (tests, or before the engine runs).
impl MetadataView for Arc<MetadataIndex> {
    fn metadata(&self) -> Arc<MetadataIndex> {
        self.clone()
    }
}

/// Epoch seconds as RFC 3339 UTC: with the fraction as Go's `RFC3339Nano` writes it (trailing
/// zeros dropped: `2026-07-01T12:00:01.5Z`; the engine's clock readings are `f64` seconds, so
/// the fraction is rounded to microseconds, below which a reading holds only noise) or in whole
/// seconds (`2026-07-01T12:00:01Z`).
pub fn rfc3339(epoch_secs: f64, fraction: bool) -> String {
    let whole = epoch_secs.floor();
    let mut secs = whole as i64;
    let mut micros = ((epoch_secs - whole) * 1e6).round() as i64;
    if micros >= 1_000_000 {
        secs += 1;
        micros -= 1_000_000;
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if fraction && micros > 0 {
        let digits = format!("{micros:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// A number written as an integer when it is whole (Go writes `256`, not `256.0`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 && self.0.abs() < 9.0e15 {
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PortJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    container_port: Option<u16>,
    #[serde(skip_serializing_if = "str::is_empty")]
    protocol: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_port: Option<u16>,
    #[serde(skip_serializing_if = "str::is_empty")]
    host_ip: &'a str,
}

#[derive(Serialize)]
struct ContainerLimits {
    #[serde(rename = "CPU")]
    cpu: Num,
    #[serde(rename = "Memory")]
    memory: u64,
}

/// One `Networks` item: upstream's `response.Network` (v3 stops there) and, for awsvpc in v4,
/// its `NetworkInterfaceProperties` (each omitted when empty, as Go's `omitempty`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkJson<'a> {
    network_mode: &'a str,
    #[serde(rename = "IPv4Addresses")]
    ipv4_addresses: Vec<&'a str>,
    #[serde(rename = "IPv6Addresses", skip_serializing_if = "Vec::is_empty")]
    ipv6_addresses: Vec<&'a str>,
    /// Always 0 for an awsvpc task (one ENI per task), as upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment_index: Option<u32>,
    #[serde(rename = "MACAddress", skip_serializing_if = "str::is_empty")]
    mac_address: &'a str,
    #[serde(
        rename = "IPv4SubnetCIDRBlock",
        skip_serializing_if = "Option::is_none"
    )]
    ipv4_subnet_cidr_block: Option<&'a str>,
    #[serde(
        rename = "IPv6SubnetCIDRBlock",
        skip_serializing_if = "Option::is_none"
    )]
    ipv6_subnet_cidr_block: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    domain_name_servers: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    domain_name_search_list: &'a [String],
    #[serde(rename = "PrivateDNSName", skip_serializing_if = "Option::is_none")]
    private_dns_name: Option<&'a str>,
    #[serde(
        rename = "SubnetGatewayIpv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    subnet_gateway_ipv4_address: Option<&'a str>,
}

impl<'a> NetworkJson<'a> {
    /// A Docker network (bridge, host, a user network): the same in v3 and v4.
    fn docker(n: &'a ContainerNetwork) -> NetworkJson<'a> {
        NetworkJson {
            network_mode: &n.name,
            ipv4_addresses: vec![&n.ipv4],
            ipv6_addresses: if n.ipv6.is_empty() {
                Vec::new()
            } else {
                vec![&n.ipv6]
            },
            attachment_index: None,
            mac_address: "",
            ipv4_subnet_cidr_block: None,
            ipv6_subnet_cidr_block: None,
            domain_name_servers: &[],
            domain_name_search_list: &[],
            private_dns_name: None,
            subnet_gateway_ipv4_address: None,
        }
    }

    /// The task's ENI: addresses in v3; the interface's properties too in v4.
    fn awsvpc(e: &'a AwsvpcFacts, v4: bool) -> NetworkJson<'a> {
        let mut n = NetworkJson {
            network_mode: "awsvpc",
            ipv4_addresses: e.ipv4.iter().map(String::as_str).collect(),
            ipv6_addresses: e.ipv6.iter().map(String::as_str).collect(),
            attachment_index: None,
            mac_address: "",
            ipv4_subnet_cidr_block: None,
            ipv6_subnet_cidr_block: None,
            domain_name_servers: &[],
            domain_name_search_list: &[],
            private_dns_name: None,
            subnet_gateway_ipv4_address: None,
        };
        if v4 {
            n.attachment_index = Some(0);
            n.mac_address = &e.mac;
            n.ipv4_subnet_cidr_block = e.ipv4_subnet_cidr.as_deref();
            n.ipv6_subnet_cidr_block = e.ipv6_subnet_cidr.as_deref();
            n.domain_name_servers = &e.dns_servers;
            n.domain_name_search_list = &e.dns_search;
            n.private_dns_name = e.private_dns_name.as_deref().filter(|s| !s.is_empty());
            n.subnet_gateway_ipv4_address = e.subnet_gateway_ipv4.as_deref();
        }
        n
    }
}

/// `Health` (task-metadata.md §4): Go's `omitempty` on every key, so `{}` while UNKNOWN.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
}

impl<'a> HealthJson<'a> {
    fn of(h: &'a ContainerHealth) -> HealthJson<'a> {
        HealthJson {
            status: (h.status != HealthStatus::Unknown).then(|| h.status.as_str()),
            status_since: h.since_ms.map(|ms| rfc3339(ms as f64 / 1000.0, true)),
            exit_code: h.exit_code.filter(|c| *c != 0),
            output: h.output.as_deref().filter(|o| !o.is_empty()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerJson<'a> {
    docker_id: &'a str,
    name: &'a str,
    docker_name: &'a str,
    image: &'a str,
    #[serde(rename = "ImageID", skip_serializing_if = "Option::is_none")]
    image_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortJson<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    desired_status: &'a str,
    known_status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    limits: ContainerLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<&'a str>,
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    networks: Vec<NetworkJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthJson<'a>>,
    #[serde(skip_serializing_if = "<[IntrospectionVolume]>::is_empty")]
    volumes: &'a [IntrospectionVolume],
    #[serde(skip_serializing_if = "Option::is_none")]
    log_driver: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_options: Option<&'a BTreeMap<String, String>>,
    #[serde(rename = "ContainerARN", skip_serializing_if = "Option::is_none")]
    container_arn: Option<&'a str>,
}

#[derive(Serialize)]
struct TaskLimits {
    #[serde(rename = "CPU", skip_serializing_if = "Option::is_none")]
    cpu: Option<Num>,
    #[serde(rename = "Memory", skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TagError<'a> {
    error_field: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_code: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(rename = "ResourceARN")]
    resource_arn: &'a str,
}

/// What `/taskWithTags` learned from ECS: each tag set, or why it is missing.
#[derive(Debug)]
pub struct Tags {
    /// The task's tags.
    pub task: Result<BTreeMap<String, String>, TagFailure>,
    /// The container instance's tags.
    pub instance: Result<BTreeMap<String, String>, TagFailure>,
}

impl Tags {
    /// Both sets from `source`, asked at once.
    pub async fn fetch(source: &dyn TagSource, task_arn: &str, instance_arn: &str) -> Tags {
        let (instance, task) =
            futures_util::join!(source.tags(instance_arn), source.tags(task_arn));
        Tags { task, instance }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskJson<'a> {
    cluster: &'a str,
    #[serde(rename = "TaskARN")]
    task_arn: &'a str,
    family: &'a str,
    revision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    desired_status: &'a str,
    known_status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    containers: Vec<ContainerJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<TaskLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_stopped_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_stopped_at: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    availability_zone: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_tags: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_instance_tags: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    launch_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<TagError<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<&'a str>,
    /// Always present in v4, absent in v3.
    #[serde(skip_serializing_if = "Option::is_none")]
    fault_injection_enabled: Option<bool>,
}

fn container_json<'a>(c: &'a ContainerFacts, v4: bool) -> ContainerJson<'a> {
    let nonempty = |s: &'a Option<String>| s.as_deref().filter(|s| !s.is_empty());
    ContainerJson {
        docker_id: c.docker_id.as_deref().unwrap_or(""),
        name: &c.name,
        docker_name: &c.docker_name,
        image: &c.image,
        image_id: nonempty(&c.image_id),
        ports: c
            .ports
            .iter()
            .map(|p| PortJson {
                container_port: p.container_port.filter(|p| *p != 0),
                protocol: &p.protocol,
                host_port: p.host_port.filter(|p| *p != 0),
                host_ip: if v4 { &p.bind_ip } else { "" },
            })
            .collect(),
        labels: &c.labels,
        desired_status: &c.desired_status,
        known_status: &c.known_status,
        exit_code: c.exit_code,
        limits: ContainerLimits {
            cpu: Num(c.cpu_units as f64),
            memory: c.memory_mib,
        },
        created_at: nonempty(&c.created_at),
        started_at: nonempty(&c.started_at),
        finished_at: nonempty(&c.finished_at),
        kind: "NORMAL",
        networks: match &c.awsvpc {
            Some(e) => vec![NetworkJson::awsvpc(e, v4)],
            None => c.networks.iter().map(NetworkJson::docker).collect(),
        },
        health: c.health.as_ref().map(HealthJson::of),
        volumes: &c.volumes,
        log_driver: if v4 { c.log_driver.as_deref() } else { None },
        log_options: (v4 && !c.log_options.is_empty()).then_some(&c.log_options),
        container_arn: if v4 { nonempty(&c.container_arn) } else { None },
    }
}

fn task_json<'a>(
    t: &'a TaskFacts,
    instance: &'a super::InstanceFacts,
    v4: bool,
    tags: Option<&'a Tags>,
) -> TaskJson<'a> {
    let limits = (t.cpu_vcpu.is_some() || t.memory_mib.is_some()).then(|| TaskLimits {
        cpu: t.cpu_vcpu.filter(|c| *c > 0.0).map(Num),
        memory: t.memory_mib.filter(|m| *m > 0),
    });
    let at = |s: Option<f64>| s.map(|s| rfc3339(s, true));
    let mut errors = Vec::new();
    if let Some(tags) = tags {
        for (field, arn, got) in [
            (
                "ContainerInstanceTags",
                instance.container_instance_arn.as_str(),
                &tags.instance,
            ),
            ("TaskTags", t.arn.as_str(), &tags.task),
        ] {
            let Err(f) = got else { continue };
            if v4 {
                errors.push(TagError {
                    error_field: field,
                    error_code: &f.code,
                    error_message: &f.message,
                    status_code: f.status,
                    request_id: f.request_id.as_deref(),
                    resource_arn: arn,
                });
            } else {
                tracing::warn!(resource.arn = %arn, error.code = %f.code, error = %f.message,
                    "Task metadata v3 taskWithTags: tags unavailable.");
            }
        }
    }
    let tag_set = |r: Option<&'a Result<BTreeMap<String, String>, TagFailure>>| {
        r.and_then(|r| r.as_ref().ok())
    };
    TaskJson {
        cluster: &instance.cluster,
        task_arn: &t.arn,
        family: &t.family,
        revision: &t.revision,
        desired_status: &t.desired_status,
        known_status: &t.known_status,
        containers: t
            .containers
            .iter()
            .filter(|c| c.listed)
            .map(|c| container_json(c, v4))
            .collect(),
        limits,
        pull_started_at: at(t.pull_started_at),
        pull_stopped_at: at(t.pull_stopped_at),
        execution_stopped_at: at(t.execution_stopped_at),
        availability_zone: &instance.availability_zone,
        task_tags: tag_set(tags.map(|t| &t.task)),
        container_instance_tags: tag_set(tags.map(|t| &t.instance)),
        launch_type: if v4 {
            t.launch_type.as_deref().filter(|s| !s.is_empty())
        } else {
            None
        },
        errors,
        service_name: if v4 {
            t.service_name.as_deref().filter(|s| !s.is_empty())
        } else {
            None
        },
        fault_injection_enabled: v4.then_some(t.fault_injection),
    }
}

/// The container object's JSON bytes.
pub fn container_body(c: &ContainerFacts, v4: bool) -> Vec<u8> {
    serde_json::to_vec(&container_json(c, v4)).unwrap_or_default()
}

/// The task object's JSON bytes.
pub fn task_body(
    t: &TaskFacts,
    instance: &super::InstanceFacts,
    v4: bool,
    tags: Option<&Tags>,
) -> Vec<u8> {
    serde_json::to_vec(&task_json(t, instance, v4, tags)).unwrap_or_default()
}

/// An error body: a JSON string.
fn error(status: StatusCode, text: String) -> Response {
    json_response(
        status,
        serde_json::to_vec(&serde_json::Value::String(text)).unwrap_or_default(),
    )
}

fn lookup_failed(v4: bool, id: &str, what: What) -> Response {
    let ver = if v4 { "V4" } else { "V3" };
    let (status, text) = match what {
        What::Container => (
            if v4 {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            format!(
                "{ver} container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: {id}"
            ),
        ),
        What::Task | What::TaskWithTags => (
            if v4 {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            format!(
                "{ver} task metadata handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {id}"
            ),
        ),
        What::ContainerStats | What::TaskStats => (
            if v4 {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            },
            format!(
                "{ver} {} stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {id}",
                if what == What::TaskStats {
                    "task"
                } else {
                    "container"
                }
            ),
        ),
    };
    error(status, text)
}

/// v3 stats have no `network_rate_stats` (task-metadata.md §8).
fn strip_v4_only(stats: &mut serde_json::Value) {
    if let Some(o) = stats.as_object_mut() {
        o.remove("network_rate_stats");
    }
}

/// Answers one metadata request.
pub async fn serve(s: &EndpointState, v4: bool, id: &str, what: What) -> Response {
    let index = s.tasks.metadata();
    let Some((task, container)) = index.find(id) else {
        return lookup_failed(v4, id, what);
    };
    match what {
        What::Container => json_response(StatusCode::OK, container_body(container, v4)),
        What::Task => json_response(StatusCode::OK, task_body(task, &s.instance, v4, None)),
        What::TaskWithTags => {
            let tags = Tags::fetch(
                s.tags.as_ref(),
                &task.arn,
                &s.instance.container_instance_arn,
            )
            .await;
            json_response(
                StatusCode::OK,
                task_body(task, &s.instance, v4, Some(&tags)),
            )
        }
        What::ContainerStats => {
            let docker_id = container.docker_id.as_deref().unwrap_or("");
            if !container.running {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Unable to get container stats for: {docker_id}"),
                );
            }
            match s.stats.stats(docker_id).await {
                Ok(mut v) => {
                    if !v4 {
                        strip_v4_only(&mut v);
                    }
                    json_response(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
                }
                Err(e) => {
                    tracing::debug!(container.id = %docker_id, error = %e, "Container stats unavailable.");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Unable to get container stats for: {docker_id}"),
                    )
                }
            }
        }
        What::TaskStats => {
            let wanted: Vec<(&str, bool)> = task
                .containers
                .iter()
                .filter_map(|c| Some((c.docker_id.as_deref()?, c.running)))
                .collect();
            let fetched = futures_util::future::join_all(wanted.iter().map(|(id, running)| {
                let stats = s.stats.clone();
                let id = (*id).to_owned();
                let running = *running;
                async move {
                    if !running {
                        return serde_json::json!({});
                    }
                    let mut v = stats
                        .stats(&id)
                        .await
                        .unwrap_or_else(|_| serde_json::json!({}));
                    if !v4 {
                        strip_v4_only(&mut v);
                    }
                    v
                }
            }))
            .await;
            let map: BTreeMap<&str, serde_json::Value> =
                wanted.iter().map(|(id, _)| *id).zip(fetched).collect();
            json_response(StatusCode::OK, serde_json::to_vec(&map).unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_and_without_the_fraction() {
        assert_eq!(rfc3339(0.0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0, false), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_782_907_201.5, true), "2026-07-01T12:00:01.5Z");
        assert_eq!(rfc3339(1_782_907_201.5, false), "2026-07-01T12:00:01Z");
        assert_eq!(rfc3339(1_782_907_201.0, true), "2026-07-01T12:00:01Z");
        assert_eq!(
            rfc3339(1_782_907_201.123_456, true),
            "2026-07-01T12:00:01.123456Z"
        );
        assert_eq!(
            rfc3339(1_782_907_201.999_999_9, true),
            "2026-07-01T12:00:02Z"
        );
    }

    #[test]
    fn whole_numbers_are_written_as_integers() {
        assert_eq!(serde_json::to_string(&Num(256.0)).unwrap(), "256");
        assert_eq!(serde_json::to_string(&Num(0.25)).unwrap(), "0.25");
    }
}
