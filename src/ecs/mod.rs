//! Everything the agent says to the ECS control plane.
//!
//! [`EcsApi`] is the seam: the real implementation ([`sdk::SdkEcs`]) wraps aws-sdk-ecs, tests use
//! fakes. Calls return [`ApiError`] classified once, here, so callers decide about retries from
//! [`ApiError::is_retryable`] instead of matching SDK types.
//!
//! Sub-modules: `attributes` (what the instance advertises), `register` (the registration flow and
//! its persistence), `discover` (the ACS endpoint, cached), `acs` (the task-delivery websocket) and
//! `report` (the durable state-change reporter). This module never talks to Docker.

pub mod acs;
pub mod attributes;
pub mod discover;
pub mod proxy;
pub mod register;
pub mod report;
pub mod sdk;
pub mod tcs;
pub mod ws;

use std::collections::BTreeMap;

use async_trait::async_trait;

/// One attribute: a capability flag (`value: None`) or a name/value pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Attribute {
    /// Name, e.g. `ecs.os-type`.
    pub name: String,
    /// Value, if any.
    pub value: Option<String>,
}

impl Attribute {
    /// A name/value attribute.
    pub fn pair(name: impl Into<String>, value: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: Some(value.into()),
        }
    }
    /// A capability flag.
    pub fn flag(name: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: None,
        }
    }
}

/// The registered resources (protocol spec §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// CPU units.
    pub cpu: i32,
    /// Memory, MiB.
    pub memory_mib: i32,
    /// Reserved TCP ports.
    pub ports: Vec<u16>,
    /// Reserved UDP ports.
    pub ports_udp: Vec<u16>,
}

/// A RegisterContainerInstance request.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterRequest {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Saved ARN when re-registering.
    pub container_instance_arn: Option<String>,
    /// Raw identity document.
    pub identity_document: String,
    /// Raw identity signature.
    pub identity_signature: String,
    /// Resources offered.
    pub resources: Resources,
    /// Attributes sent.
    pub attributes: Vec<Attribute>,
    /// Tags (omitted when empty).
    pub tags: BTreeMap<String, String>,
    /// Idempotency token, new for every call.
    pub client_token: String,
}

/// What ECS answered.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredInstance {
    /// The container instance ARN.
    pub arn: String,
    /// Attributes as ECS holds them.
    pub attributes: Vec<Attribute>,
}

/// What DiscoverPollEndpoint answered (protocol spec §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollEndpoints {
    /// The ACS base URL, e.g. `https://ecs-a-1.us-east-1.amazonaws.com`.
    pub acs: String,
    /// The TCS base URL, if any.
    pub telemetry: Option<String>,
}

pub use crate::aws::{ApiError, ErrorKind};

/// A task as ECS describes it, reduced to what draining needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    /// Task ARN.
    pub arn: String,
    /// `startedBy` (`ecs-svc/...` for service tasks), empty when absent.
    pub started_by: String,
    /// Last known status (`PENDING`, `RUNNING`, ..., `STOPPED`).
    pub last_status: String,
    /// Desired status (`RUNNING` or `STOPPED`).
    pub desired_status: String,
}

/// The answer of an [`EcsApi`] that does not implement an operation (test fakes written before
/// the operation was added).
fn not_implemented(operation: &'static str) -> ApiError {
    ApiError {
        operation,
        kind: ErrorKind::Client,
        code: Some("NotImplemented".into()),
        message: "this EcsApi does not implement the operation".into(),
    }
}

/// The ECS operations the agent uses.
#[async_trait]
pub trait EcsApi: Send + Sync {
    /// RegisterContainerInstance.
    async fn register_container_instance(
        &self,
        req: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError>;

    /// CreateCluster (only for the implicit `default` cluster, as the official agent).
    async fn create_cluster(&self, name: &str) -> Result<(), ApiError>;

    /// DescribeClusters for one cluster: its status (`ACTIVE`, `INACTIVE`, ...), or `None` when
    /// ECS does not know it.
    async fn cluster_status(&self, cluster: &str) -> Result<Option<String>, ApiError>;

    // The operations below serve draining (`lifecycle`). They have default bodies so that fakes
    // written for registration only keep compiling; the SDK client implements all of them.

    /// UpdateContainerInstancesState for one container instance (`ACTIVE` or `DRAINING`). A
    /// failure entry in the reply is an error.
    async fn update_container_instance_state(
        &self,
        _cluster: &str,
        _container_instance_arn: &str,
        _status: &str,
    ) -> Result<(), ApiError> {
        Err(not_implemented("UpdateContainerInstancesState"))
    }

    /// ListTasks for one container instance and desired status, all pages.
    async fn list_tasks(
        &self,
        _cluster: &str,
        _container_instance_arn: &str,
        _desired_status: &str,
    ) -> Result<Vec<String>, ApiError> {
        Err(not_implemented("ListTasks"))
    }

    /// DescribeTasks (at most 100 ARNs per call; callers batch).
    async fn describe_tasks(
        &self,
        _cluster: &str,
        _task_arns: &[String],
    ) -> Result<Vec<TaskSummary>, ApiError> {
        Err(not_implemented("DescribeTasks"))
    }

    /// DiscoverPollEndpoint for this container instance.
    ///
    /// NOTE: the control-plane operations have default bodies that fail with `NotImplemented`, so
    /// fakes that predate them keep compiling; [`sdk::SdkEcs`] implements them all.
    async fn discover_poll_endpoint(
        &self,
        _cluster: &str,
        _container_instance: &str,
    ) -> Result<PollEndpoints, ApiError> {
        Err(not_implemented("DiscoverPollEndpoint"))
    }

    /// SubmitTaskStateChange for one task change (with its container changes).
    async fn submit_task_state_change(
        &self,
        _change: &crate::tasks::TaskChange,
    ) -> Result<(), ApiError> {
        Err(not_implemented("SubmitTaskStateChange"))
    }
}
