//! The local API on `127.0.0.1:51678` (axum): the official introspection endpoints
//! (`/v1/metadata`, `/v1/tasks`), `/healthz` and `/metrics` (Prometheus text).
//!
//! Read-only: it serves snapshots that other subsystems publish (registration, health board, task
//! view, metric sections) and never changes agent state. Credentials are never part of any
//! snapshot it can reach.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ecs::register::Registration;
use crate::health;

/// The official introspection version string.
pub fn version_string() -> String {
    format!(
        "Amazon ECS Agent - v{} (ecs-hostd {})",
        crate::COMPATIBLE_AGENT_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// `GET /v1/metadata` body (official shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    /// Cluster.
    pub cluster: String,
    /// ARN once registered, else null.
    pub container_instance_arn: Option<String>,
    /// Version string.
    pub version: String,
}

/// A task as the official introspection API shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntrospectionTask {
    /// Task ARN.
    pub arn: String,
    /// Desired status (omitted in the official cases, see the spec §12.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_status: Option<String>,
    /// Known status.
    pub known_status: String,
    /// Family.
    pub family: String,
    /// Revision.
    pub version: String,
    /// Containers.
    pub containers: Vec<IntrospectionContainer>,
}

/// A container as the official introspection API shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntrospectionContainer {
    /// Docker id.
    pub docker_id: String,
    /// Docker name.
    pub docker_name: String,
    /// Container name in the task.
    pub name: String,
    /// Image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image id.
    #[serde(rename = "ImageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Port bindings.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ports: Vec<IntrospectionPort>,
    /// The task's ENI, for awsvpc tasks only (upstream shows no Docker networks here).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub networks: Vec<IntrospectionNetwork>,
    /// Volumes.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub volumes: Vec<IntrospectionVolume>,
}

/// A port binding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntrospectionPort {
    /// Container port.
    pub container_port: u16,
    /// tcp or udp.
    pub protocol: String,
    /// Host port.
    pub host_port: u16,
}

/// A network of a container (spec §12.1: awsvpc only): the ENI's addresses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntrospectionNetwork {
    /// `awsvpc`.
    pub network_mode: String,
    /// IPv4 addresses, the primary first.
    #[serde(
        rename = "IPv4Addresses",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub ipv4_addresses: Vec<String>,
    /// IPv6 addresses.
    #[serde(
        rename = "IPv6Addresses",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub ipv6_addresses: Vec<String>,
}

/// A volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntrospectionVolume {
    /// Docker volume name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_name: Option<String>,
    /// Host path.
    pub source: String,
    /// Container path.
    pub destination: String,
}

/// What the engine exposes to the API: a snapshot of its tasks in the official shape.
pub trait TaskView: Send + Sync {
    /// Every task.
    fn tasks(&self) -> Vec<IntrospectionTask>;
}

/// No engine yet: no tasks.
pub struct NoTasks;

impl TaskView for NoTasks {
    fn tasks(&self) -> Vec<IntrospectionTask> {
        Vec::new()
    }
}

/// A contributor of Prometheus text to `/metrics`.
pub trait MetricsSection: Send + Sync {
    /// Appends `# HELP`/`# TYPE` and samples.
    fn render(&self, out: &mut String);
}

/// Shared state of the API.
#[derive(Clone)]
pub struct ApiState {
    /// Cluster as configured.
    pub cluster: String,
    /// Latest registration.
    pub registration: watch::Receiver<Option<Registration>>,
    /// Health board.
    pub health: health::Board,
    /// Task snapshot source.
    pub tasks: Arc<dyn TaskView>,
    /// `/metrics` contributors.
    pub metrics: Vec<Arc<dyn MetricsSection>>,
}

/// Builds the router (tests serve it on port 0).
pub fn router(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/", get(root))
        .route("/v1/metadata", get(metadata))
        .route("/v1/tasks", get(tasks))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(api.addr = %addr, "Local API listening.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn root() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "AvailableCommands": ["/v1/metadata", "/v1/tasks", "/healthz", "/metrics"]
    }))
}

async fn metadata(State(s): State<ApiState>) -> Json<Metadata> {
    let reg = s.registration.borrow().clone();
    Json(Metadata {
        cluster: reg
            .as_ref()
            .map_or(s.cluster.clone(), |r| r.cluster.clone()),
        container_instance_arn: reg.map(|r| r.container_instance_arn),
        version: version_string(),
    })
}

#[derive(Deserialize)]
struct TaskQuery {
    taskarn: Option<String>,
    dockerid: Option<String>,
}

async fn tasks(State(s): State<ApiState>, Query(q): Query<TaskQuery>) -> Response {
    let all = s.tasks.tasks();
    match (q.taskarn, q.dockerid) {
        (Some(_), Some(_)) => {
            (StatusCode::BAD_REQUEST, Json(IntrospectionTask::default())).into_response()
        }
        (Some(arn), None) => match all.into_iter().find(|t| t.arn == arn) {
            Some(t) => Json(t).into_response(),
            None => (StatusCode::NOT_FOUND, Json(IntrospectionTask::default())).into_response(),
        },
        (None, Some(id)) => {
            let found = all.into_iter().find(|t| {
                t.containers.iter().any(|c| {
                    !c.docker_id.is_empty()
                        && (c.docker_id == id || (id.len() == 12 && c.docker_id.starts_with(&id)))
                })
            });
            match found {
                Some(t) => Json(t).into_response(),
                None => (StatusCode::NOT_FOUND, Json(IntrospectionTask::default())).into_response(),
            }
        }
        (None, None) => Json(serde_json::json!({ "Tasks": all })).into_response(),
    }
}

async fn healthz(State(s): State<ApiState>) -> Response {
    let snap = s.health.snapshot();
    let ok = snap.values().all(|c| c.ok);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "healthy": ok, "components": snap })),
    )
        .into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP ecs_hostd_up Whether every component of the agent is healthy.\n# TYPE ecs_hostd_up gauge\n");
    out.push_str(&format!("ecs_hostd_up {}\n", u8::from(s.health.all_ok())));
    out.push_str("# HELP ecs_hostd_component_healthy Health of one agent component.\n# TYPE ecs_hostd_component_healthy gauge\n");
    for (name, c) in s.health.snapshot() {
        out.push_str(&format!(
            "ecs_hostd_component_healthy{{component=\"{name}\"}} {}\n",
            u8::from(c.ok)
        ));
    }
    for section in &s.metrics {
        section.render(&mut out);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
