//! ACS wire messages: the `{"type": <shape>, "message": {...}}` envelope (protocol spec §5.3) and
//! one typed struct per shape of the ACS model (`tests/data/acs/api-2.json`) that ecs-hostd
//! receives or sends.
//!
//! [`decode`] turns one text frame into an [`Inbound`] value or a [`DecodeError`]; it never
//! panics on any input (a cargo-fuzz target and a property test feed it arbitrary bytes).
//! [`Outbound::encode`] produces the frames ecs-hostd sends.
//!
//! Every member of every shape is optional, as in the model: validation (for example "a payload
//! needs a messageId") belongs to the handler. Unknown members are ignored. Task objects keep the
//! members the control plane does not interpret in [`PayloadTask::rest`], so they reach the
//! engine unchanged.
//!
//! Credentials: [`IamRoleCredentials`] hides its secrets from `Debug`, and decode errors never
//! quote values from the frame, so nothing here can put a secret into a log line.
//!
//! NOTE: this file is self-contained (serde, serde_json and thiserror only, nothing from
//! `crate::`) because `fuzz/fuzz_targets/acs_frame.rs` compiles it on its own by path.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Frames larger than this are refused before parsing (the largest real payloads are a few
/// hundred KiB; ec2sim and tungstenite allow 16 MiB and 64 MiB messages).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Why a frame could not be decoded. The text never contains values taken from the frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a JSON object with a string `type`.
    #[error("frame is not an ACS envelope: {0}")]
    NotEnvelope(String),
    /// A known `type` whose `message` does not have the shape of the model.
    #[error("{kind} frame does not match the ACS model: {detail}")]
    Shape {
        /// The envelope `type`.
        kind: String,
        /// What did not match (values redacted).
        detail: String,
    },
}

impl DecodeError {
    /// A malformed frame stays malformed: never worth asking again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Exception shapes of the model that ACS may send as frames.
pub const EXCEPTIONS: &[&str] = &[
    "AccessDeniedException",
    "BadRequestException",
    "InactiveInstanceException",
    "InvalidClusterException",
    "InvalidInstanceException",
    "ServerException",
];

/// One frame from ACS.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `HeartbeatMessage`.
    Heartbeat(HeartbeatMessage),
    /// `PayloadMessage`: tasks to run or stop.
    Payload(PayloadMessage),
    /// `IAMRoleCredentialsMessage`: refreshed credentials of one task role.
    Credentials(IamRoleCredentialsMessage),
    /// `TaskManifestMessage`: every task ECS thinks this instance has.
    TaskManifest(TaskManifestMessage),
    /// `TaskStopVerificationAck`: the tasks ECS confirms should stop.
    TaskStopVerificationAck(TaskStopVerificationAck),
    /// `AttachTaskNetworkInterfacesMessage` (awsvpc; not supported, acknowledged).
    AttachTaskNetworkInterfaces(AttachTaskNetworkInterfacesMessage),
    /// `AttachInstanceNetworkInterfacesMessage` (awsvpc trunking; not supported, acknowledged).
    AttachInstanceNetworkInterfaces(AttachInstanceNetworkInterfacesMessage),
    /// `ConfirmAttachmentMessage` (EBS and other resource attachments; acknowledged).
    ConfirmAttachment(ConfirmAttachmentMessage),
    /// `StageUpdateMessage` (self-update; refused).
    StageUpdate(UpdateMessage),
    /// `PerformUpdateMessage` (self-update; refused).
    PerformUpdate(UpdateMessage),
    /// `CloseMessage`.
    Close(TextMessage),
    /// `ErrorMessage`.
    Error(TextMessage),
    /// One of [`EXCEPTIONS`] sent as a frame.
    Exception {
        /// The exception shape name, e.g. `InactiveInstanceException`.
        kind: String,
        /// Its `message`, if any.
        message: Option<String>,
    },
    /// A `type` this agent does not know (ignored, protocol spec §5.3).
    Unknown {
        /// The envelope `type`.
        kind: String,
    },
}

impl Inbound {
    /// The envelope `type` of this frame.
    pub fn kind(&self) -> &str {
        match self {
            Inbound::Heartbeat(_) => "HeartbeatMessage",
            Inbound::Payload(_) => "PayloadMessage",
            Inbound::Credentials(_) => "IAMRoleCredentialsMessage",
            Inbound::TaskManifest(_) => "TaskManifestMessage",
            Inbound::TaskStopVerificationAck(_) => "TaskStopVerificationAck",
            Inbound::AttachTaskNetworkInterfaces(_) => "AttachTaskNetworkInterfacesMessage",
            Inbound::AttachInstanceNetworkInterfaces(_) => "AttachInstanceNetworkInterfacesMessage",
            Inbound::ConfirmAttachment(_) => "ConfirmAttachmentMessage",
            Inbound::StageUpdate(_) => "StageUpdateMessage",
            Inbound::PerformUpdate(_) => "PerformUpdateMessage",
            Inbound::Close(_) => "CloseMessage",
            Inbound::Error(_) => "ErrorMessage",
            Inbound::Exception { kind, .. } | Inbound::Unknown { kind } => kind,
        }
    }
}

/// `null` (or absence, with `#[serde(default)]`) reads as the default value: lists sent as
/// `null` by some encoders are empty lists.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `HeartbeatMessage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatMessage {
    /// Echoed in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Whether ACS considers the instance healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// `IAMRoleCredentials`. `Debug` shows only the role and expiration.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IamRoleCredentials {
    /// Identifies this credential set (acked, and used in the credentials endpoint URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_id: Option<String>,
    /// The role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Secret material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Secret material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Opaque expiration text, echoed exactly in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// `TaskApplication` / `TaskExecution` (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_scope: Option<String>,
}

impl std::fmt::Debug for IamRoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the credentials id either: it is a bearer token for 169.254.170.2.
        f.debug_struct("IamRoleCredentials")
            .field("role_arn", &self.role_arn)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// One `Task` of a `PayloadMessage`: the members the control plane reads, typed; every other
/// member kept verbatim in [`PayloadTask::rest`] for the engine. `Debug` shows only the ARN and
/// desired status (containers carry environment variables, which the model marks sensitive).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadTask {
    /// Task ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// `RUNNING` or `STOPPED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_status: Option<String>,
    /// Cluster of the task (used in its state changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cluster_arn: Option<String>,
    /// Task role credentials (never passed on to the engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_credentials: Option<IamRoleCredentials>,
    /// Execution role credentials (never passed on to the engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_credentials: Option<IamRoleCredentials>,
    /// Every other member, unchanged.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl std::fmt::Debug for PayloadTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadTask")
            .field("arn", &self.arn)
            .field("desired_status", &self.desired_status)
            .finish_non_exhaustive()
    }
}

impl PayloadTask {
    /// The task object for the engine: every member ACS sent, the two credential sets reduced to
    /// their role ARN and credentials id.
    pub fn without_credentials(&self) -> Value {
        let mut out = self.rest.clone();
        // Members named like the typed ones cannot be in `rest` (serde consumed them), so these
        // inserts never overwrite anything.
        if let Some(v) = &self.arn {
            out.insert("arn".into(), Value::String(v.clone()));
        }
        if let Some(v) = &self.desired_status {
            out.insert("desiredStatus".into(), Value::String(v.clone()));
        }
        if let Some(v) = &self.task_cluster_arn {
            out.insert("taskClusterArn".into(), Value::String(v.clone()));
        }
        // Which roles the task has and their credentials ids, without any secret: the engine
        // decides from it whether it can run the task, persists the ids (a restarted agent
        // answers them 503 until ACS delivers them again) and puts the task role's into the
        // containers' environment.
        for (key, creds) in [
            ("roleCredentials", &self.role_credentials),
            ("executionRoleCredentials", &self.execution_role_credentials),
        ] {
            if let Some(c) = creds {
                let arn = c.role_arn.clone().unwrap_or_default();
                let id = c.credentials_id.clone().unwrap_or_default();
                out.insert(
                    key.into(),
                    serde_json::json!({ "roleArn": arn, "credentialsId": id }),
                );
            }
        }
        Value::Object(out)
    }
}

/// `PayloadMessage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadMessage {
    /// Echoed in the ack; required by the handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Echoed in the ack; required by the handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// Echoed in the ack; required by the handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// Raises the shared sequence counter (protocol spec §5.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_num: Option<i64>,
    /// Epoch milliseconds (UNCONFIRMED unit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// Same counter as `seqNum`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// The tasks.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tasks: Vec<PayloadTask>,
}

/// `IAMRoleCredentialsMessage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IamRoleCredentialsMessage {
    /// Echoed in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The task the credentials belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    /// Its cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cluster_arn: Option<String>,
    /// `TaskApplication` or `TaskExecution`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_type: Option<String>,
    /// The credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_credentials: Option<IamRoleCredentials>,
}

/// `TaskIdentifier`: one task of a manifest, stop verification or its ack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskIdentifier {
    /// Task ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    /// Cluster ARN of the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cluster_arn: Option<String>,
    /// `RUNNING` or `STOPPED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_status: Option<String>,
}

/// `TaskManifestMessage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManifestMessage {
    /// Echoed in the ack and in the stop verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Cluster ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// This instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// Epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// Shared sequence counter (protocol spec §5.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// The tasks ECS thinks the instance has.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tasks: Vec<TaskIdentifier>,
}

/// `TaskStopVerificationAck`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStopVerificationAck {
    /// The manifest's messageId.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// Tasks to stop.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stop_tasks: Vec<TaskIdentifier>,
}

/// `AttachTaskNetworkInterfacesMessage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachTaskNetworkInterfacesMessage {
    /// Echoed in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Cluster ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// This instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// The task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    /// Its cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cluster_arn: Option<String>,
    /// Epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// How long to wait for the interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<i64>,
    /// `ElasticNetworkInterface` objects (not interpreted: awsvpc is not implemented).
    #[serde(default, deserialize_with = "null_as_default")]
    pub elastic_network_interfaces: Vec<Value>,
}

/// `AttachInstanceNetworkInterfacesMessage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachInstanceNetworkInterfacesMessage {
    /// Echoed in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Cluster ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// This instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// Epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// How long to wait for the interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<i64>,
    /// `ElasticNetworkInterface` objects (not interpreted).
    #[serde(default, deserialize_with = "null_as_default")]
    pub elastic_network_interfaces: Vec<Value>,
}

/// `AttachmentProperty`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentProperty {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `Attachment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment_arn: Option<String>,
    /// e.g. `amazonebs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment_type: Option<String>,
    /// Properties.
    #[serde(default, deserialize_with = "null_as_default")]
    pub attachment_properties: Vec<AttachmentProperty>,
}

/// `ConfirmAttachmentMessage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmAttachmentMessage {
    /// Echoed in the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Cluster ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// This instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// The task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    /// Its cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cluster_arn: Option<String>,
    /// Epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<i64>,
    /// How long to wait (default 300000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<i64>,
    /// The attachment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// `UpdateInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateInfo {
    /// Where the new agent would be downloaded from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Its SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `StageUpdateMessage` and `PerformUpdateMessage` (same members).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMessage {
    /// Echoed in the nack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Cluster ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    /// This instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// What to install.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_info: Option<UpdateInfo>,
}

/// `CloseMessage`, `ErrorMessage` and the exception shapes: one `message` text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextMessage {
    /// The text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// ------------------------------------------------------------------------------ outbound

/// `AckRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRequest {
    /// Cluster, copied from the acknowledged message.
    pub cluster: String,
    /// Container instance, copied from the acknowledged message.
    pub container_instance: String,
    /// The acknowledged message.
    pub message_id: String,
}

/// `HeartbeatAckRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAckRequest {
    /// The heartbeat's messageId.
    pub message_id: String,
}

/// `IAMRoleCredentialsAckRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IamRoleCredentialsAckRequest {
    /// The message that carried the credentials (payload or credentials message).
    pub message_id: String,
    /// Exactly as received.
    pub expiration: String,
    /// The credential set.
    pub credentials_id: String,
}

/// `TaskStopVerificationMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStopVerificationMessage {
    /// The manifest's messageId.
    pub message_id: String,
    /// Tasks running here that the manifest does not list as RUNNING.
    pub stop_candidates: Vec<TaskIdentifier>,
}

/// `NackRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackRequest {
    /// Cluster, copied from the refused message.
    pub cluster: String,
    /// Container instance, copied from the refused message.
    pub container_instance: String,
    /// The refused message.
    pub message_id: String,
    /// Why.
    pub reason: String,
}

/// One frame ecs-hostd sends. Serialises as the envelope itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "message")]
pub enum Outbound {
    /// Acknowledges a payload, manifest or attachment message.
    AckRequest(AckRequest),
    /// Acknowledges a heartbeat.
    HeartbeatAckRequest(HeartbeatAckRequest),
    /// Acknowledges one credential set.
    #[serde(rename = "IAMRoleCredentialsAckRequest")]
    IamRoleCredentialsAckRequest(IamRoleCredentialsAckRequest),
    /// Asks ECS which unlisted tasks to stop.
    TaskStopVerificationMessage(TaskStopVerificationMessage),
    /// Refuses a message (self-update).
    NackRequest(NackRequest),
}

impl Outbound {
    /// The envelope `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outbound::AckRequest(_) => "AckRequest",
            Outbound::HeartbeatAckRequest(_) => "HeartbeatAckRequest",
            Outbound::IamRoleCredentialsAckRequest(_) => "IAMRoleCredentialsAckRequest",
            Outbound::TaskStopVerificationMessage(_) => "TaskStopVerificationMessage",
            Outbound::NackRequest(_) => "NackRequest",
        }
    }

    /// The text frame.
    pub fn encode(&self) -> String {
        // Every member is a string or a list of string-only structs: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

// ------------------------------------------------------------------------------ decoding

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Value,
}

/// Decodes one text frame.
pub fn decode(frame: &str) -> Result<Inbound, DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    let envelope: Envelope =
        serde_json::from_str(frame).map_err(|e| DecodeError::NotEnvelope(describe(&e)))?;
    let kind = envelope.kind;
    // A missing or null `message` reads as an empty object: every member is optional.
    let message = match envelope.message {
        Value::Null => Value::Object(Map::new()),
        v => v,
    };
    fn typed<T: serde::de::DeserializeOwned>(kind: &str, v: Value) -> Result<T, DecodeError> {
        serde_json::from_value(v).map_err(|e| DecodeError::Shape {
            kind: kind.to_owned(),
            detail: describe(&e),
        })
    }
    let inbound = match kind.as_str() {
        "HeartbeatMessage" => Inbound::Heartbeat(typed(&kind, message)?),
        "PayloadMessage" => Inbound::Payload(typed(&kind, message)?),
        "IAMRoleCredentialsMessage" => Inbound::Credentials(typed(&kind, message)?),
        "TaskManifestMessage" => Inbound::TaskManifest(typed(&kind, message)?),
        "TaskStopVerificationAck" => Inbound::TaskStopVerificationAck(typed(&kind, message)?),
        "AttachTaskNetworkInterfacesMessage" => {
            Inbound::AttachTaskNetworkInterfaces(typed(&kind, message)?)
        }
        "AttachInstanceNetworkInterfacesMessage" => {
            Inbound::AttachInstanceNetworkInterfaces(typed(&kind, message)?)
        }
        "ConfirmAttachmentMessage" => Inbound::ConfirmAttachment(typed(&kind, message)?),
        "StageUpdateMessage" => Inbound::StageUpdate(typed(&kind, message)?),
        "PerformUpdateMessage" => Inbound::PerformUpdate(typed(&kind, message)?),
        "CloseMessage" => Inbound::Close(typed(&kind, message)?),
        "ErrorMessage" => Inbound::Error(typed(&kind, message)?),
        k if EXCEPTIONS.contains(&k) => {
            let text: TextMessage = typed(&kind, message)?;
            Inbound::Exception {
                kind,
                message: text.message,
            }
        }
        _ => Inbound::Unknown { kind },
    };
    Ok(inbound)
}

/// The exception named by the body of a refused websocket upgrade (protocol spec §5.2), e.g.
/// `{"InvalidClusterException":"Invalid cluster"}` → `("InvalidClusterException", "Invalid
/// cluster")`. `None` when the body is not a one-key JSON object with a string value.
pub fn decode_connect_error(body: &[u8]) -> Option<(String, String)> {
    if body.len() > MAX_FRAME_BYTES {
        return None;
    }
    let map: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if map.len() != 1 {
        return None;
    }
    let (name, value) = map.into_iter().next()?;
    match value {
        Value::String(text) => Some((name, text)),
        _ => Some((name, String::new())),
    }
}

/// A serde_json error without any value quoted from the input: its category and position, and
/// for shape errors the message with every quoted part (`"..."` and `` `...` ``) replaced.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "I/O error".into(),
        Category::Syntax => format!("invalid JSON at line {} column {}", e.line(), e.column()),
        Category::Eof => "truncated JSON".into(),
        Category::Data => redact_quoted(&e.to_string()),
    }
}

/// Replaces the contents of every `"..."` and `` `...` `` span with `…`.
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_of_outbound() {
        let ack = Outbound::AckRequest(AckRequest {
            cluster: "c".into(),
            container_instance: "ci".into(),
            message_id: "m".into(),
        });
        assert_eq!(
            ack.encode(),
            r#"{"type":"AckRequest","message":{"cluster":"c","containerInstance":"ci","messageId":"m"}}"#
        );
        let back: Outbound = serde_json::from_str(&ack.encode()).unwrap();
        assert_eq!(back, ack);
        let creds = Outbound::IamRoleCredentialsAckRequest(IamRoleCredentialsAckRequest {
            message_id: "m".into(),
            expiration: "later".into(),
            credentials_id: "id".into(),
        });
        assert!(
            creds
                .encode()
                .starts_with(r#"{"type":"IAMRoleCredentialsAckRequest","message":{"#)
        );
        assert_eq!(creds.kind(), "IAMRoleCredentialsAckRequest");
    }

    #[test]
    fn unknown_types_missing_messages_and_nulls_are_accepted() {
        assert_eq!(
            decode(r#"{"type":"BrandNewMessage","message":{"x":1}}"#).unwrap(),
            Inbound::Unknown {
                kind: "BrandNewMessage".into()
            }
        );
        assert_eq!(
            decode(r#"{"type":"HeartbeatMessage"}"#).unwrap(),
            Inbound::Heartbeat(HeartbeatMessage::default())
        );
        let Inbound::Payload(p) =
            decode(r#"{"type":"PayloadMessage","message":{"tasks":null}}"#).unwrap()
        else {
            panic!("payload expected")
        };
        assert!(p.tasks.is_empty());
        assert!(matches!(
            decode(r#"{"type":"InactiveInstanceException","message":{"message":"gone"}}"#),
            Ok(Inbound::Exception { ref kind, message: Some(ref m) }) if kind == "InactiveInstanceException" && m == "gone"
        ));
    }

    #[test]
    fn malformed_frames_are_errors_without_quoted_values() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"PayloadMessage","message":{"tasks":[{"roleCredentials":"hunter2-secret"}]}}"#,
            r#"{"type":"PayloadMessage","message":{"seqNum":"hunter2-secret"}}"#,
            r#"{"type":"HeartbeatMessage","message":"hunter2-secret"}"#,
        ] {
            let err = decode(bad).unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn payload_tasks_keep_unknown_members_and_lose_credentials() {
        let frame = r#"{"type":"PayloadMessage","message":{"messageId":"m","tasks":[{"arn":"a","desiredStatus":"RUNNING","family":"f","containers":[{"name":"c"}],"roleCredentials":{"credentialsId":"id","secretAccessKey":"s3cr3t"}}]}}"#;
        let Inbound::Payload(p) = decode(frame).unwrap() else {
            panic!("payload expected")
        };
        let task = &p.tasks[0];
        let debug = format!("{p:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        let engine = task.without_credentials();
        assert_eq!(engine["arn"], "a");
        assert_eq!(engine["family"], "f");
        assert_eq!(engine["containers"][0]["name"], "c");
        // Only the role and its credentials id reach the engine: no key, no token.
        assert_eq!(
            engine["roleCredentials"],
            serde_json::json!({"roleArn": "", "credentialsId": "id"})
        );
        assert!(!engine.to_string().contains("s3cr3t"));
        assert!(!engine.to_string().contains("secretAccessKey"));
    }

    #[test]
    fn connect_error_bodies() {
        assert_eq!(
            decode_connect_error(br#"{"InvalidClusterException":"Invalid cluster"}"#),
            Some(("InvalidClusterException".into(), "Invalid cluster".into()))
        );
        assert_eq!(decode_connect_error(b"<html>"), None);
        assert_eq!(decode_connect_error(br#"{"a":"b","c":"d"}"#), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_quoted(r#"x "abc" y `d` z"#), r#"x "…" y `…` z"#);
        assert_eq!(redact_quoted(r#"open "abc"#), r#"open "…"#);
    }
}
