//! Internal containers: containers the engine adds to a task for its own needs, beside the ones
//! ACS delivered (container-features.md §8; awsvpc's network pause, awsvpc.md §2.4).
//!
//! Owns: the container kinds ([`ContainerKind`]), which internal containers a task needs and
//! their specs ([`needed`]), their fixed names and images, and what user containers borrow from
//! them ([`NamespaceShare`]). The reconciler applies one rule to every internal kind: user
//! containers are not pulled or created before each internal container runs, and internal
//! containers are stopped only after every user container stopped.
//! Never performs I/O; an internal container is never reported to ECS, never shown in task
//! metadata and never pulled (its image must be in Docker already).

use serde::{Deserialize, Serialize};

use super::{ContainerSpec, TaskSpec};

/// The image the official agent uses for pause containers (ecs-init loads it from a tarball).
pub const DEFAULT_PAUSE_IMAGE: &str = "amazon/amazon-ecs-pause:0.1.0";

/// The namespace pause container's name in the task (upstream's name, so labels and Docker
/// names look the same as on an ECS-optimized AMI).
pub const NAMESPACE_PAUSE_NAME: &str = "~internal~ecs~pause~namespace";

/// The network pause container's name in the task (upstream's `CNI_PAUSE` container name).
pub const NETWORK_PAUSE_NAME: &str = "~internal~ecs~pause";

/// What a container of a task is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerKind {
    /// A container of the task definition (everything ACS delivers).
    #[default]
    Normal,
    /// Holds the task's PID and/or IPC namespace (`pidMode`/`ipcMode` `task`); upstream's
    /// `NAMESPACE_PAUSE`.
    NamespacePause,
    /// Holds an awsvpc task's network namespace, which gets the task's ENI; upstream's
    /// `CNI_PAUSE`. Its steady state is "network provisioned" (the record's
    /// `TaskNet::provisioned`), not just RUNNING. A task that is both awsvpc and
    /// `pidMode`/`ipcMode` `task` has both pauses: each kind keeps one job.
    NetworkPause,
}

impl ContainerKind {
    /// Added by the engine, not delivered by ACS: never reported, never pulled.
    pub fn is_internal(self) -> bool {
        self != ContainerKind::Normal
    }

    /// For `skip_serializing_if`: records of normal containers stay as they were.
    pub fn is_normal(&self) -> bool {
        *self == ContainerKind::Normal
    }

    /// How a stop reason names it.
    pub fn describe(self) -> &'static str {
        match self {
            ContainerKind::Normal => "container",
            ContainerKind::NamespacePause => "namespace pause container",
            ContainerKind::NetworkPause => "network pause container",
        }
    }
}

/// Images of the internal containers (settings; never pulled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalImages {
    /// `ECS_HOSTD_PAUSE_IMAGE`.
    pub namespace_pause: String,
}

impl Default for InternalImages {
    fn default() -> Self {
        InternalImages {
            namespace_pause: DEFAULT_PAUSE_IMAGE.to_owned(),
        }
    }
}

/// Which namespaces of a task's namespace pause container its user containers join.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceShare {
    /// `pidMode: task`.
    pub pid: bool,
    /// `ipcMode: task`.
    pub ipc: bool,
}

impl NamespaceShare {
    /// What task `spec` asks for.
    pub fn of(spec: &TaskSpec) -> NamespaceShare {
        NamespaceShare {
            pid: spec.pid_mode.as_deref() == Some("task"),
            ipc: spec.ipc_mode.as_deref() == Some("task"),
        }
    }

    /// Whether the task needs a namespace pause container.
    pub fn any(self) -> bool {
        self.pid || self.ipc
    }
}

/// The internal containers task `spec` needs, in creation order, with their specs.
pub fn needed(spec: &TaskSpec, images: &InternalImages) -> Vec<(ContainerKind, ContainerSpec)> {
    let mut out = Vec::new();
    if spec.network_mode.as_deref() == Some("awsvpc") {
        out.push((
            ContainerKind::NetworkPause,
            ContainerSpec {
                name: NETWORK_PAUSE_NAME.to_owned(),
                image: images.namespace_pause.clone(),
                // If it dies the task's network namespace (and its ENI) is gone.
                essential: true,
                ..ContainerSpec::default()
            },
        ));
    }
    if NamespaceShare::of(spec).any() {
        out.push((
            ContainerKind::NamespacePause,
            ContainerSpec {
                name: NAMESPACE_PAUSE_NAME.to_owned(),
                image: images.namespace_pause.clone(),
                // If it dies the task's namespaces are gone: the task stops.
                essential: true,
                ..ContainerSpec::default()
            },
        ));
    }
    out
}
