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
    IntrospectionContainer, IntrospectionPort, IntrospectionTask, IntrospectionVolume, TaskView,
};
use crate::engine::docker;
use crate::engine::model::{
    ContainerRecord, ContainerSpec, ContainerStatus, TaskRecord, TaskStatus, VolumeSource,
};
use crate::task_endpoint::{
    ContainerFacts, ContainerHealth, MetadataIndex, MetadataView, TaskFacts,
};

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
                ports: c
                    .ports
                    .iter()
                    .filter_map(|p| {
                        Some(IntrospectionPort {
                            container_port: p.container_port?,
                            protocol: p.protocol.clone(),
                            host_port: p.host_port?,
                        })
                    })
                    .collect(),
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
                ports: c.ports.clone(),
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
