//! The engine's tasks in the official introspection JSON shape (spec §12.1), published as a
//! snapshot the local API reads through [`crate::api::TaskView`].
//!
//! Pure conversion plus a `watch` channel holder; never changes engine state and never sees
//! credentials (records hold none).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{
    IntrospectionContainer, IntrospectionPort, IntrospectionTask, IntrospectionVolume, TaskView,
};
use crate::engine::model::{TaskRecord, TaskStatus, VolumeSource};

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
    let containers = rec
        .containers
        .iter()
        .map(|c| {
            let spec = rec.spec_of(&c.name);
            let volumes = spec
                .map(|s| {
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
                })
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

impl TaskView for EngineView {
    fn tasks(&self) -> Vec<IntrospectionTask> {
        self.snapshot().tasks.clone()
    }
}
