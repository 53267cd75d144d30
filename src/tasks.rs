//! The boundary between the control plane (ACS session, state reporter) and the task engine.
//!
//! - ACS hands tasks to the engine through [`TaskControl`], as the JSON ACS delivered (credentials
//!   already moved into the [`CredentialsStore`]; only role ARNs and credentials ids remain).
//! - The engine reports state changes through [`StateChangeSink`]: it enqueues each change in the
//!   *same store transaction* that records its new known status, so a crash can neither lose a
//!   change nor report one twice; the reporter sends the queue in order.
//! - Credentials live only in [`crate::credentials`], in memory: never in the store, logs or the
//!   local API.
//!
//! This module holds types and small in-memory helpers only; it performs no I/O.

use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::{self, Transaction};

// The credentials store moved to `crate::credentials`; its names stay reachable here.
pub use crate::credentials::{CredentialsStore, RoleCredentials, RoleType};

/// A status as the ECS API accepts it in state reports (protocol spec §7.1, §8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ReportStatus {
    /// Anything before running (MANIFEST_PULLED, PULLED, CREATED).
    Pending,
    /// Running (the container's steady state).
    Running,
    /// Stopped.
    Stopped,
}

impl ReportStatus {
    /// The ECS spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Pending => "PENDING",
            ReportStatus::Running => "RUNNING",
            ReportStatus::Stopped => "STOPPED",
        }
    }
}

/// One port binding as reported (protocol spec §8.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    /// Host address, e.g. `0.0.0.0`.
    pub bind_ip: String,
    /// Container port (absent for ranges).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_port: Option<u16>,
    /// Host port (absent for ranges).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_port: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `a-b`, for port ranges.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_port_range: Option<String>,
    /// `a-b`, for port ranges.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_port_range: Option<String>,
}

/// One container's change inside a task report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerChange {
    /// Name in the task definition.
    pub container_name: String,
    /// Docker id, once created.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runtime_id: Option<String>,
    /// Status to report.
    pub status: ReportStatus,
    /// Exit code, once stopped.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
    /// Why (≤1024 chars), e.g. `CannotPullContainerError: ...`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Resolved image digest.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_digest: Option<String>,
    /// Actual port bindings.
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
}

/// One task state change, ready for SubmitTaskStateChange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskChange {
    /// `taskClusterArn` of the task, or the configured cluster.
    pub cluster: String,
    /// Task ARN.
    pub task_arn: String,
    /// Task status to report.
    pub status: ReportStatus,
    /// Why (≤1024 chars).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pull_started_at: Option<f64>,
    /// Epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pull_stopped_at: Option<f64>,
    /// Epoch seconds: when the first essential container stopped.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub execution_stopped_at: Option<f64>,
    /// Container changes carried with this task change.
    #[serde(default)]
    pub containers: Vec<ContainerChange>,
    /// Attachment changes carried with it (an awsvpc task's ENI ATTACHED, awsvpc.md §2.3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentChange>,
}

/// One attachment's change inside a task report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentChange {
    /// The attachment's ARN (the ENI's `attachmentArn`).
    pub attachment_arn: String,
    /// `ATTACHED` (the only status the agent reports for a task ENI).
    pub status: String,
}

/// Where the engine sends state changes.
pub trait StateChangeSink: Send + Sync {
    /// Adds `change` to the durable report queue inside the caller's transaction, so the engine's
    /// state and the queued report commit together (or not at all).
    fn enqueue(&self, tx: &Transaction<'_>, change: &TaskChange) -> Result<(), store::Error>;

    /// Wakes the sender; called after the transaction committed.
    fn notify(&self);

    /// Whether STOPPED has been accepted by ECS for this task (task cleanup waits for it).
    fn stopped_reported(&self, task_arn: &str) -> bool;
}

/// What the control plane asks of the engine.
#[async_trait]
pub trait TaskControl: Send + Sync {
    /// A task from a PayloadMessage: the task object as ACS sent it, with `roleCredentials` and
    /// `executionRoleCredentials` reduced to their `roleArn` and `credentialsId` (no secret). Its `desiredStatus` says what to
    /// do; desired status only moves forward.
    async fn deliver(&self, task: serde_json::Value) -> Result<(), DeliverError>;

    /// ARNs of the tasks whose desired status is RUNNING (for TaskManifest handling).
    fn desired_running(&self) -> Vec<String>;

    /// Whether the engine holds this task (delivered and not yet cleaned up): credentials for a
    /// task it does not hold are kept but not acknowledged (task-credentials.md §2.3).
    fn knows(&self, task_arn: &str) -> bool;

    /// Sets a task's desired status to STOPPED (TaskStopVerificationAck).
    async fn stop(&self, task_arn: &str) -> Result<(), String>;

    /// An ENI attachment from `AttachTaskNetworkInterfacesMessage`: recorded durably before
    /// this returns `Ok` (the caller acknowledges only then); a duplicate is `Ok` and changes
    /// nothing. Engines without awsvpc take it and keep nothing.
    async fn attach_eni(&self, attachment: EniAttachment) -> Result<(), DeliverError> {
        let _ = attachment;
        Ok(())
    }
}

/// A task ENI attachment as ACS announces it (`AttachTaskNetworkInterfacesMessage`, one per
/// `elasticNetworkInterfaces[]` entry): joined with the task's ENI by its attachment ARN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniAttachment {
    /// `attachmentArn`.
    pub attachment_arn: String,
    /// The task it is for.
    pub task_arn: String,
    /// `macAddress` (lower case when it is one).
    pub mac: String,
    /// `waitTimeoutMs`: how long the ENI may take to appear from now.
    pub wait_timeout_ms: Option<u64>,
}

/// Why a delivered task was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The task itself is invalid: report it STOPPED with this reason and do not acknowledge
    /// the payload (task-credentials.md §2.2).
    #[error("{0}")]
    Refused(String),
    /// The engine cannot take tasks right now (stopping, restarting): do not acknowledge, so ACS
    /// delivers the payload again; report nothing.
    #[error("{0}")]
    Unavailable(String),
}

/// An in-memory [`StateChangeSink`] for tests: records every change; `stopped_reported` is true
/// once a STOPPED change for the task was recorded.
#[derive(Debug, Default)]
pub struct RecordingSink {
    changes: Mutex<Vec<TaskChange>>,
    notified: tokio::sync::Notify,
}

impl RecordingSink {
    /// Every change recorded so far, in order.
    pub fn changes(&self) -> Vec<TaskChange> {
        self.changes.lock().expect("sink lock").clone()
    }

    /// Waits until `notify` is called next.
    pub async fn notified(&self) {
        self.notified.notified().await;
    }
}

impl StateChangeSink for RecordingSink {
    fn enqueue(&self, _tx: &Transaction<'_>, change: &TaskChange) -> Result<(), store::Error> {
        self.changes.lock().expect("sink lock").push(change.clone());
        Ok(())
    }

    fn notify(&self) {
        self.notified.notify_waiters();
    }

    fn stopped_reported(&self, task_arn: &str) -> bool {
        self.changes
            .lock()
            .expect("sink lock")
            .iter()
            .any(|c| c.task_arn == task_arn && c.status == ReportStatus::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_order_and_spelling() {
        assert!(ReportStatus::Pending < ReportStatus::Running);
        assert!(ReportStatus::Running < ReportStatus::Stopped);
        assert_eq!(
            serde_json::to_string(&ReportStatus::Stopped).unwrap(),
            "\"STOPPED\""
        );
    }
}
