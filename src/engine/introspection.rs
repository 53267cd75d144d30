//! The engine's tasks in the official introspection JSON shape (spec §12.1), published as a
//! snapshot the local API reads through [`crate::api::TaskView`], and as the facts the task
//! metadata endpoint renders (per endpoint id, [`crate::task_endpoint::MetadataView`]).
//!
//! Pure conversion plus a `watch` channel holder; never changes engine state and never sees
//! credentials (records hold none; the credentials ids they keep are never copied out).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{
    IntrospectionContainer, IntrospectionNetwork, IntrospectionPort, IntrospectionTask,
    IntrospectionVolume, TaskView,
};
use crate::engine::docker;
use crate::engine::model::eni::Eni;
use crate::engine::model::{
    ContainerRecord, ContainerSpec, ContainerStatus, TaskRecord, TaskStatus, VolumeSource,
};
use crate::task_endpoint::{
    AwsvpcFacts, ContainerFacts, ContainerHealth, MetadataIndex, MetadataView, TaskFacts,
};
use crate::tasks::NetworkBinding;

/// An awsvpc task's ENI as task metadata shows it (upstream `NetworkInterfaceProperties`): the
/// subnet from the gateway and its prefix (none without a gateway), the IPv6 subnet as the
/// first IPv6 address's /64 (upstream's fixed dual-stack prefix), the gateway as ACS wrote it.
pub fn awsvpc_facts(eni: &Eni) -> AwsvpcFacts {
    // `AcsEni::to_eni` gives every address the gateway's prefix (32 without a gateway).
    let prefix = eni.ipv4.first().map_or(32, |a| a.prefix);
    let mask = |bits: u8| u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    let gateway = eni.gateway_ipv4;
    AwsvpcFacts {
        ipv4: eni.ipv4.iter().map(|a| a.addr.to_string()).collect(),
        ipv6: eni.ipv6.clone(),
        mac: eni.mac.clone(),
        ipv4_subnet_cidr: gateway.map(|g| {
            let net = std::net::Ipv4Addr::from(u32::from(g) & mask(prefix));
            format!("{net}/{prefix}")
        }),
        ipv6_subnet_cidr: eni
            .ipv6
            .first()
            .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
            .map(|a| {
                let net = std::net::Ipv6Addr::from(u128::from(a) & (u128::MAX << 64));
                format!("{net}/64")
            }),
        dns_servers: eni.dns_servers.iter().map(ToString::to_string).collect(),
        dns_search: eni.dns_search.clone(),
        private_dns_name: eni.private_dns_name.clone(),
        subnet_gateway_ipv4: gateway.map(|g| format!("{g}/{prefix}")),
    }
}

/// A task container's port bindings: what Docker reported, or for an awsvpc task (whose
/// containers publish nothing on the host) its port mappings on the ENI, host port = container
/// port, until the engine recorded them at RUNNING (upstream `/v1/tasks` falls back on the
/// mappings ACS sent the same way).
fn ports_of(rec: &TaskRecord, c: &ContainerRecord) -> Vec<NetworkBinding> {
    match (&rec.network, rec.spec_of(&c.name)) {
        (Some(n), Some(spec)) if c.ports.is_empty() && !c.kind.is_internal() => n.bindings(spec),
        _ => c.ports.clone(),
    }
}

/// Converts one record.
pub fn task_json(rec: &TaskRecord, data_root: Option<&Path>) -> IntrospectionTask {
    let known = rec.known.report().as_str().to_owned();
    let desired = match rec.desired {
        TaskStatus::Stopped => "STOPPED",
        _ => "RUNNING",
    };
    // Official rule: omit DesiredStatus when known is STOPPED but desired is not.
    let desired_status = if rec.known == TaskStatus::Stopped && desired != "STOPPED" {
        None
    } else {
        Some(desired.to_owned())
    };
    // awsvpc: every container shows the task's ENI addresses (spec §12.1).
    let networks: Vec<IntrospectionNetwork> = rec
        .network
        .iter()
        .map(|n| IntrospectionNetwork {
            network_mode: "awsvpc".into(),
            ipv4_addresses: n.eni.ipv4.iter().map(|a| a.addr.to_string()).collect(),
            ipv6_addresses: n.eni.ipv6.clone(),
        })
        .collect();
    // As the official introspection API: internal containers (the namespace pause) are not
    // shown; operators find them in `docker ps` by the task's labels.
    let containers = rec
        .containers
        .iter()
        .filter(|c| !c.kind.is_internal())
        .map(|c| {
            let spec = rec.spec_of(&c.name);
            let volumes = spec
                .map(|s| volumes_of(rec, s, data_root))
                .unwrap_or_default();
            IntrospectionContainer {
                docker_id: c.docker_id.clone().unwrap_or_default(),
                docker_name: c.docker_name.clone(),
                name: c.name.clone(),
                image: spec.map(|s| s.image.clone()),
                image_id: c.image_id.clone(),
                created_at: c.created_at.clone(),
                started_at: c.started_at.clone(),
                ports: ports_of(rec, c)
                    .iter()
                    .filter_map(|p| {
                        Some(IntrospectionPort {
                            container_port: p.container_port?,
                            protocol: p.protocol.clone(),
                            host_port: p.host_port?,
                        })
                    })
                    .collect(),
                networks: networks.clone(),
                volumes,
            }
        })
        .collect();
    IntrospectionTask {
        arn: rec.spec.arn.clone(),
        desired_status,
        known_status: known,
        family: rec.spec.family.clone(),
        version: rec.spec.version.clone(),
        containers,
    }
}

/// The volumes a container mounts, as introspection and task metadata show them.
fn volumes_of(
    rec: &TaskRecord,
    s: &ContainerSpec,
    data_root: Option<&Path>,
) -> Vec<IntrospectionVolume> {
    s.mount_points
        .iter()
        .filter_map(|m| {
            let v = rec.volumes.get(&m.source_volume)?;
            Some(match v {
                VolumeSource::HostPath(p) => IntrospectionVolume {
                    docker_name: None,
                    source: p.clone(),
                    destination: m.container_path.clone(),
                },
                VolumeSource::Docker { name, .. } => IntrospectionVolume {
                    docker_name: Some(name.clone()),
                    source: data_root.map_or_else(String::new, |r| {
                        r.join("volumes")
                            .join(name)
                            .join("_data")
                            .display()
                            .to_string()
                    }),
                    destination: m.container_path.clone(),
                },
            })
        })
        .collect()
}

/// What of a container never changes after delivery (its spec), computed once per task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StaticFacts {
    labels: BTreeMap<String, String>,
    log: Option<(String, BTreeMap<String, String>)>,
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The labels and log configuration each container of `rec` is created with (`cluster`: the
/// configured cluster, used when the task names none).
pub fn static_facts(rec: &TaskRecord, cluster: &str) -> Vec<StaticFacts> {
    let cluster = rec
        .spec
        .task_cluster_arn
        .as_deref()
        .filter(|c| !c.is_empty())
        .unwrap_or(cluster);
    rec.containers
        .iter()
        .map(|c| {
            let Some(spec) = rec.spec_of(&c.name) else {
                return StaticFacts::default();
            };
            StaticFacts {
                labels: docker::labels(rec, spec, cluster)
                    .iter()
                    .map(|(k, v)| (k.clone(), text_of(v)))
                    .collect(),
                log: docker::log_config(spec).map(|(driver, opts)| {
                    (
                        driver,
                        opts.iter().map(|(k, v)| (k.clone(), text_of(v))).collect(),
                    )
                }),
            }
        })
        .collect()
}

/// One task as the task metadata endpoint sees it (`fixed`: from [`static_facts`]).
pub fn task_facts(rec: &TaskRecord, fixed: &[StaticFacts], data_root: Option<&Path>) -> TaskFacts {
    let task_desired = match rec.desired {
        TaskStatus::Stopped => "STOPPED",
        _ => "RUNNING",
    };
    let awsvpc = rec.network.as_ref().map(|n| Arc::new(awsvpc_facts(&n.eni)));
    // Internal containers are not the task's as ECS knows it: not in metadata, not in TCS.
    let containers = rec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.kind.is_internal())
        .map(|(i, c)| {
            let spec = rec.spec_of(&c.name);
            let fixed = fixed.get(i).cloned().unwrap_or_default();
            let (log_driver, log_options) = match fixed.log {
                Some((d, o)) => (Some(d), o),
                None => (None, BTreeMap::new()),
            };
            ContainerFacts {
                endpoint_id: c.endpoint_id.clone(),
                docker_id: c.docker_id.clone(),
                name: c.name.clone(),
                docker_name: c.docker_name.clone(),
                image: spec.map(|s| s.image.clone()).unwrap_or_default(),
                image_id: c.image_id.clone(),
                ports: ports_of(rec, c),
                labels: fixed.labels,
                desired_status: if c.known == ContainerStatus::Stopped {
                    "STOPPED"
                } else {
                    task_desired
                }
                .to_owned(),
                known_status: c.known.as_str().to_owned(),
                exit_code: c.exit_code,
                cpu_units: spec.map_or(2, |s| {
                    (s.cpu.unwrap_or(0.0).max(0.0) as u64).clamp(2, 262_144)
                }),
                memory_mib: spec
                    .and_then(|s| s.memory)
                    .filter(|m| *m > 0.0)
                    .map_or(0, |m| m as u64),
                created_at: c.created_at.clone(),
                started_at: c.started_at.clone(),
                finished_at: c.finished_at.clone(),
                networks: c.networks.clone(),
                volumes: spec
                    .map(|s| volumes_of(rec, s, data_root))
                    .unwrap_or_default(),
                log_driver,
                log_options,
                container_arn: spec.and_then(|s| s.container_arn.clone()),
                running: c.known == ContainerStatus::Running,
                listed: c.docker_id.is_some()
                    || matches!(
                        c.known,
                        ContainerStatus::ManifestPulled | ContainerStatus::Pulled
                    ),
                health: spec.filter(|s| s.health_checked()).map(|_| health_of(c)),
                awsvpc: awsvpc.clone(),
            }
        })
        .collect();
    let spec = &rec.spec;
    TaskFacts {
        arn: spec.arn.clone(),
        family: spec.family.clone(),
        revision: spec.version.clone(),
        desired_status: task_desired.to_owned(),
        known_status: rec.known.as_str().to_owned(),
        containers,
        // Task CPU arrives in vCPUs; some producers send units (see `TaskSpec::cpu_units`).
        cpu_vcpu: spec
            .cpu
            .filter(|c| *c > 0.0)
            .map(|c| if c < 64.0 { c } else { c / 1024.0 }),
        memory_mib: spec.memory.filter(|m| *m > 0.0).map(|m| m as u64),
        pull_started_at: rec.pull_started_at,
        pull_stopped_at: rec.pull_stopped_at,
        execution_stopped_at: rec.execution_stopped_at,
        launch_type: spec.launch_type.clone(),
        service_name: spec.service_name.clone(),
        fault_injection: spec.enable_fault_injection,
    }
}

/// A health-checked container's tracked health, as published.
pub fn health_of(c: &ContainerRecord) -> ContainerHealth {
    ContainerHealth {
        status: c.health,
        since_ms: c.health_since.map(|s| (s * 1000.0).round() as i64),
        exit_code: c.health_probe.as_ref().map(|p| p.exit_code),
        output: c
            .health_probe
            .as_ref()
            .map(|p| p.output.clone())
            .filter(|o| !o.is_empty()),
    }
}

/// What the engine publishes after each change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Tasks in introspection shape, in delivery order.
    pub tasks: Vec<IntrospectionTask>,
    /// ARNs whose desired status is RUNNING.
    pub desired_running: Vec<String>,
    /// Every task the engine holds, reduced to what draining counts (lifecycle's census).
    pub census: Vec<crate::ecs::TaskSummary>,
    /// Tasks whose known status is RUNNING.
    pub running_tasks: u64,
    /// Containers whose known status is RUNNING (of any task).
    pub running_containers: u64,
    /// Every task as the task metadata endpoint shows it, by endpoint id.
    pub metadata: Arc<MetadataIndex>,
}

/// A task reduced to what draining counts: its service (as `startedBy`), known and desired
/// status.
pub fn census_entry(rec: &TaskRecord) -> crate::ecs::TaskSummary {
    crate::ecs::TaskSummary {
        arn: rec.spec.arn.clone(),
        started_by: rec.spec.service_name.clone().unwrap_or_default(),
        last_status: rec.known.report().as_str().to_owned(),
        desired_status: match rec.desired {
            TaskStatus::Stopped => "STOPPED",
            _ => "RUNNING",
        }
        .to_owned(),
    }
}

/// The [`TaskView`] the local API holds.
#[derive(Clone, Debug)]
pub struct EngineView {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl EngineView {
    /// A view on a snapshot channel.
    pub fn new(rx: watch::Receiver<Arc<Snapshot>>) -> EngineView {
        EngineView { rx }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits for the next snapshot; `false` once the engine is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// The engine's part of `/metrics`: running tasks and containers as gauges (scraping is free,
/// so these are always on; their CloudWatch twins are `ECS_HOSTD_HEALTH_METRICS`).
impl crate::api::MetricsSection for EngineView {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let snap = self.snapshot();
        for (name, help, value) in [
            (
                crate::metrics::catalogue::RUNNING_TASKS,
                "Tasks whose known status is RUNNING.",
                snap.running_tasks,
            ),
            (
                crate::metrics::catalogue::RUNNING_CONTAINERS,
                "Task containers whose known status is RUNNING.",
                snap.running_containers,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}

impl MetadataView for EngineView {
    fn metadata(&self) -> Arc<MetadataIndex> {
        self.snapshot().metadata.clone()
    }
}

impl TaskView for EngineView {
    fn tasks(&self) -> Vec<IntrospectionTask> {
        self.snapshot().tasks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::TaskSpec;
    use crate::engine::model::internal::NETWORK_PAUSE_NAME;

    /// A task as ACS sends it; awsvpc with an ENI in a /20 when `awsvpc`, else bridge.
    fn record(awsvpc: bool) -> TaskRecord {
        let mut t = serde_json::json!({
            "arn": "arn:aws:ecs:us-east-1:1:task/c/t1", "family": "web", "version": "3",
            "desiredStatus": "RUNNING",
            "containers": [
                {"name": "web", "image": "local/busybox:test", "essential": true, "memory": 64,
                 "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"},
                                  {"containerPort": 5353, "hostPort": 5353, "protocol": "udp"}]},
                {"name": "side", "image": "local/busybox:test", "essential": false, "memory": 64}
            ]
        });
        if awsvpc {
            t["networkMode"] = "awsvpc".into();
            t["elasticNetworkInterfaces"] = serde_json::json!([{
                "attachmentArn": "arn:aws:ecs:us-east-1:1:attachment/a1",
                "ec2Id": "eni-0abc",
                "macAddress": "0A:1B:2C:3D:4E:5F",
                "ipv4Addresses": [{"privateAddress": "10.0.17.24", "primary": false},
                                  {"privateAddress": "10.0.17.23", "primary": true}],
                "ipv6Addresses": [{"address": "2600:1f18:4a3b:7d00:0:0:0:17"}],
                "subnetGatewayIpv4Address": "10.0.16.1/20",
                "domainNameServers": ["10.0.0.2", "10.0.0.3"],
                "domainName": ["ec2.internal", "corp.example"],
                "privateDnsName": "ip-10-0-17-23.ec2.internal"
            }]);
        }
        let spec = TaskSpec::from_json(&t).unwrap();
        let mut rec = TaskRecord::new(spec, 0, 0.0).unwrap();
        for (i, c) in rec.containers.iter_mut().enumerate() {
            c.docker_id = Some(format!("{i:064x}"));
            c.known = ContainerStatus::Created;
        }
        rec
    }

    #[test]
    fn awsvpc_facts_compute_the_subnets_from_the_acs_eni() {
        let rec = record(true);
        let f = awsvpc_facts(&rec.network.as_ref().unwrap().eni);
        assert_eq!(
            f,
            AwsvpcFacts {
                ipv4: vec!["10.0.17.23".into(), "10.0.17.24".into()],
                ipv6: vec!["2600:1f18:4a3b:7d00::17".into()],
                mac: "0a:1b:2c:3d:4e:5f".into(),
                ipv4_subnet_cidr: Some("10.0.16.0/20".into()),
                ipv6_subnet_cidr: Some("2600:1f18:4a3b:7d00::/64".into()),
                dns_servers: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                dns_search: vec!["ec2.internal".into(), "corp.example".into()],
                private_dns_name: Some("ip-10-0-17-23.ec2.internal".into()),
                subnet_gateway_ipv4: Some("10.0.16.1/20".into()),
            }
        );
        // Without a gateway there is no subnet to tell, and no IPv6 without an address.
        let mut eni = rec.network.unwrap().eni;
        eni.gateway_ipv4 = None;
        eni.ipv6.clear();
        let f = awsvpc_facts(&eni);
        assert_eq!(
            (
                f.ipv4_subnet_cidr,
                f.subnet_gateway_ipv4,
                f.ipv6_subnet_cidr
            ),
            (None, None, None)
        );
        // A /0 and a /32 subnet: the mask's edges.
        let mut eni = record(true).network.unwrap().eni;
        for a in &mut eni.ipv4 {
            a.prefix = 0;
        }
        assert_eq!(
            awsvpc_facts(&eni).ipv4_subnet_cidr.as_deref(),
            Some("0.0.0.0/0")
        );
        for a in &mut eni.ipv4 {
            a.prefix = 32;
        }
        assert_eq!(
            awsvpc_facts(&eni).ipv4_subnet_cidr.as_deref(),
            Some("10.0.16.1/32")
        );
    }

    #[test]
    fn task_facts_of_an_awsvpc_task_carry_the_eni_and_never_the_pause() {
        let rec = record(true);
        assert_eq!(rec.containers[0].name, NETWORK_PAUSE_NAME);
        let facts = task_facts(&rec, &static_facts(&rec, "c"), None);
        let names: Vec<&str> = facts.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["web", "side"]);
        let want = awsvpc_facts(&rec.network.as_ref().unwrap().eni);
        for c in &facts.containers {
            assert_eq!(c.awsvpc.as_deref(), Some(&want), "{}", c.name);
        }
        // Created, not yet RUNNING: the mappings on the ENI, host port = container port.
        let ports: Vec<(Option<u16>, Option<u16>, &str, &str)> = facts.containers[0]
            .ports
            .iter()
            .map(|p| {
                (
                    p.container_port,
                    p.host_port,
                    p.protocol.as_str(),
                    p.bind_ip.as_str(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (Some(8080), Some(8080), "tcp", "10.0.17.23"),
                (Some(5353), Some(5353), "udp", "10.0.17.23")
            ]
        );
        assert!(facts.containers[1].ports.is_empty());
        // A bridge task has none of it.
        let rec = record(false);
        let facts = task_facts(&rec, &static_facts(&rec, "c"), None);
        assert!(facts.containers.iter().all(|c| c.awsvpc.is_none()));
        assert!(facts.containers[0].ports.is_empty(), "Docker's, none yet");
    }

    #[test]
    fn v1_tasks_show_the_enis_addresses_per_container_after_the_ports() {
        let rec = record(true);
        let t = task_json(&rec, None);
        let names: Vec<&str> = t.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["web", "side"], "the pause is never shown");
        let v = serde_json::to_value(&t).unwrap();
        for c in v["Containers"].as_array().unwrap() {
            assert_eq!(
                c["Networks"],
                serde_json::json!([{"NetworkMode": "awsvpc",
                    "IPv4Addresses": ["10.0.17.23", "10.0.17.24"],
                    "IPv6Addresses": ["2600:1f18:4a3b:7d00::17"]}])
            );
        }
        let web = serde_json::to_string(&t.containers[0]).unwrap();
        assert!(
            web.contains(
                r#""Ports":[{"ContainerPort":8080,"Protocol":"tcp","HostPort":8080},{"ContainerPort":5353,"Protocol":"udp","HostPort":5353}],"Networks":[{"NetworkMode":"awsvpc""#
            ),
            "{web}"
        );
        // Recorded bindings win over the mappings once the engine has them.
        let mut rec = rec;
        let web = rec.containers.iter_mut().find(|c| c.name == "web").unwrap();
        web.ports = vec![NetworkBinding {
            bind_ip: "10.0.17.23".into(),
            container_port: Some(8080),
            host_port: Some(8080),
            protocol: "tcp".into(),
            container_port_range: None,
            host_port_range: None,
        }];
        assert_eq!(task_json(&rec, None).containers[0].ports.len(), 1);

        // A bridge task shows no Networks (as upstream), its output unchanged.
        let rec = record(false);
        let text = serde_json::to_string(&task_json(&rec, None)).unwrap();
        assert!(!text.contains("Networks"), "{text}");
    }
}
