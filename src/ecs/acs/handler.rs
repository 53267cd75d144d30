//! What to do with each inbound ACS frame (protocol spec §5.4): the frames to send back and the
//! calls into the engine, credentials store and reporter. No sockets here: the session feeds
//! frames in and writes the replies out, so every rule is unit-testable.
//!
//! Owns the shared "latest seqNum" counter (persisted in the `acs` table, spec §5.8), the
//! messageId of the manifest awaiting stop verification, and the in-process record of which
//! desired status each task was already delivered with (so a redelivered payload is not applied
//! twice; the engine's own forward-only rule stays the final word).
//!
//! Never: logs a frame's text or a credential; writes credentials anywhere but the in-memory
//! [`CredentialsStore`]; fails on a malformed or unknown frame (logged, survived).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::messages::{
    self, AckRequest, AttachTaskNetworkInterfacesMessage, HeartbeatAckRequest, IamRoleCredentials,
    IamRoleCredentialsAckRequest, IamRoleCredentialsMessage, Inbound, NackRequest, Outbound,
    PayloadMessage, PayloadTask, TaskIdentifier, TaskManifestMessage, TaskStopVerificationAck,
    TaskStopVerificationMessage, UpdateMessage,
};
use crate::ecs::report::Milestones;
use crate::store::{self, Store, Table};
use crate::tasks::{
    CredentialsStore, DeliverError, EniAttachment, ReportStatus, RoleCredentials, RoleType,
    StateChangeSink, TaskChange, TaskControl,
};

/// The ACS session's durable state.
pub const ACS: Table = Table("acs");
/// Key of the latest seqNum (payload seqNum / manifest timeline) in [`ACS`].
pub const SEQ_NUM_KEY: &str = "latest_seq_num";
/// The counter before anything was received (spec §5.8).
pub const INITIAL_SEQ_NUM: i64 = -1;
/// Tasks whose delivered desired status is remembered (oldest forgotten first).
const DELIVERED_KEPT: usize = 10_000;
/// Prefix of the reason reported for a task the engine cannot load.
pub const UNRECOGNIZED_TASK: &str = "UnrecognizedACSTask: Error loading task: ";
/// Why self-update messages are refused.
pub const UPDATE_REFUSED: &str =
    "ecs-hostd does not update itself over ACS; upgrade the ecs-hostd package instead";

/// Handler errors: only the store can fail a frame (the session then ends without acking, and
/// ACS redelivers).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database failed.
    #[error("ACS handler: {0}")]
    Store(#[from] store::Error),
}

impl Error {
    /// Not retryable in-process: the supervisor restarts the session.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Who this session speaks for: fallbacks for acks of messages that omit them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Configured cluster (name or ARN).
    pub cluster: String,
    /// Registered container instance ARN.
    pub container_instance_arn: String,
}

/// Why the session should end after a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// ACS says the instance was deregistered (spec §5.7).
    InactiveInstance(String),
    /// ACS sent another exception frame.
    Exception {
        /// Exception name.
        kind: String,
        /// Its text.
        message: String,
    },
}

/// The outcome of one frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Frames to send, in order.
    pub replies: Vec<Outbound>,
    /// Set when the session should close.
    pub disconnect: Option<Disconnect>,
}

impl Handled {
    fn replies(replies: Vec<Outbound>) -> Handled {
        Handled {
            replies,
            disconnect: None,
        }
    }
}

/// Forward-only desired statuses, in the order they may be reached.
fn desired_rank(desired: &str) -> Option<u8> {
    match desired {
        "RUNNING" => Some(1),
        "STOPPED" => Some(2),
        _ => None,
    }
}

/// The desired status each task was last delivered with.
#[derive(Default)]
struct Delivered {
    rank: HashMap<String, u8>,
    order: VecDeque<String>,
}

impl Delivered {
    fn covers(&self, arn: &str, rank: u8) -> bool {
        self.rank.get(arn).is_some_and(|r| *r >= rank)
    }

    fn record(&mut self, arn: &str, rank: u8) {
        match self.rank.get_mut(arn) {
            Some(r) => *r = (*r).max(rank),
            None => {
                self.rank.insert(arn.to_owned(), rank);
                self.order.push_back(arn.to_owned());
                while self.order.len() > DELIVERED_KEPT {
                    if let Some(old) = self.order.pop_front() {
                        self.rank.remove(&old);
                    }
                }
            }
        }
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Everything a [`Handler`] works with.
pub struct HandlerParts {
    /// Fallback identity for acks.
    pub identity: Identity,
    /// The task engine.
    pub engine: Arc<dyn TaskControl>,
    /// In-memory credentials.
    pub credentials: Arc<CredentialsStore>,
    /// Where refused tasks are reported STOPPED.
    pub sink: Arc<dyn StateChangeSink>,
    /// The durable store (seqNum; the sink's queue).
    pub store: Store,
    /// Timing hooks, if wanted.
    pub milestones: Option<Arc<Milestones>>,
}

/// The inbound-frame handler. One per process (it outlives reconnects).
pub struct Handler {
    identity: Identity,
    engine: Arc<dyn TaskControl>,
    credentials: Arc<CredentialsStore>,
    sink: Arc<dyn StateChangeSink>,
    store: Store,
    milestones: Option<Arc<Milestones>>,
    health_check: Option<Arc<tokio::sync::Notify>>,
    latest_seq: i64,
    manifest_message_id: Option<String>,
    delivered: Delivered,
    unknown_seen: HashSet<String>,
}

impl Handler {
    /// A handler, with the latest seqNum read from the store.
    pub fn new(parts: HandlerParts) -> Result<Handler, store::Error> {
        let latest_seq = parts
            .store
            .get(ACS, SEQ_NUM_KEY)?
            .unwrap_or(INITIAL_SEQ_NUM);
        Ok(Handler {
            identity: parts.identity,
            engine: parts.engine,
            credentials: parts.credentials,
            sink: parts.sink,
            store: parts.store,
            milestones: parts.milestones,
            health_check: None,
            latest_seq,
            manifest_message_id: None,
            delivered: Delivered::default(),
            unknown_seen: HashSet::new(),
        })
    }

    /// The shared payload/manifest counter.
    pub fn latest_seq_num(&self) -> i64 {
        self.latest_seq
    }

    /// Handles one text frame. Malformed frames are logged and produce nothing.
    pub async fn handle_frame(&mut self, frame: &str) -> Result<Handled, Error> {
        match messages::decode(frame) {
            Ok(msg) => self.handle(msg).await,
            Err(e) => {
                warn!(error = %e, bytes = frame.len(), "Ignoring a malformed ACS frame.");
                Ok(Handled::default())
            }
        }
    }

    /// Heartbeats wake `check` (the Docker watchdog's health round).
    pub fn set_health_check(&mut self, check: Arc<tokio::sync::Notify>) {
        self.health_check = Some(check);
    }

    /// Handles one decoded message.
    pub async fn handle(&mut self, msg: Inbound) -> Result<Handled, Error> {
        let handled = match msg {
            Inbound::Heartbeat(m) => match nonempty(&m.message_id) {
                Some(id) => {
                    debug!(message.id = %id, "ACS heartbeat.");
                    if let Some(check) = &self.health_check {
                        check.notify_one();
                    }
                    Handled::replies(vec![Outbound::HeartbeatAckRequest(HeartbeatAckRequest {
                        message_id: id.to_owned(),
                    })])
                }
                None => {
                    warn!("Ignoring an ACS heartbeat without messageId.");
                    Handled::default()
                }
            },
            Inbound::Payload(m) => self.payload(m).await?,
            Inbound::Credentials(m) => self.credentials_message(m),
            Inbound::TaskManifest(m) => self.manifest(m)?,
            Inbound::TaskStopVerificationAck(m) => self.stop_verification_ack(m).await,
            Inbound::AttachTaskNetworkInterfaces(m) => self.attach_task_enis(m).await,
            Inbound::AttachInstanceNetworkInterfaces(m) => {
                warn!(
                    "ACS sent instance network interfaces; ENI trunking is not supported. Acknowledging."
                );
                self.ack(&m.message_id, &m.cluster_arn, &m.container_instance_arn)
            }
            Inbound::ConfirmAttachment(m) => {
                warn!(
                    task.arn = m.task_arn.as_deref().unwrap_or(""),
                    "ACS sent a resource attachment; attachments are not supported. Acknowledging."
                );
                self.ack(&m.message_id, &m.cluster_arn, &m.container_instance_arn)
            }
            Inbound::StageUpdate(m) | Inbound::PerformUpdate(m) => self.refuse_update(m),
            Inbound::Close(m) => {
                info!(
                    text = m.message.as_deref().unwrap_or(""),
                    "ACS sent CloseMessage."
                );
                Handled::default()
            }
            Inbound::Error(m) => {
                warn!(
                    text = m.message.as_deref().unwrap_or(""),
                    "ACS sent ErrorMessage."
                );
                Handled::default()
            }
            Inbound::Exception { kind, message } => {
                let message = message.unwrap_or_default();
                let disconnect = if kind == "InactiveInstanceException" {
                    Disconnect::InactiveInstance(message)
                } else {
                    Disconnect::Exception { kind, message }
                };
                Handled {
                    replies: Vec::new(),
                    disconnect: Some(disconnect),
                }
            }
            Inbound::Unknown { kind } => {
                if self.unknown_seen.insert(kind.clone()) {
                    warn!(message.type = %kind, "Ignoring an unknown ACS message type.");
                } else {
                    debug!(message.type = %kind, "Ignoring an unknown ACS message type.");
                }
                Handled::default()
            }
        };
        Ok(handled)
    }

    fn ack(
        &self,
        message_id: &Option<String>,
        cluster: &Option<String>,
        instance: &Option<String>,
    ) -> Handled {
        let Some(id) = nonempty(message_id) else {
            warn!("Cannot acknowledge an ACS message without messageId.");
            return Handled::default();
        };
        Handled::replies(vec![Outbound::AckRequest(AckRequest {
            cluster: nonempty(cluster)
                .unwrap_or(&self.identity.cluster)
                .to_owned(),
            container_instance: nonempty(instance)
                .unwrap_or(&self.identity.container_instance_arn)
                .to_owned(),
            message_id: id.to_owned(),
        })])
    }

    fn refuse_update(&self, m: UpdateMessage) -> Handled {
        let Some(id) = nonempty(&m.message_id) else {
            warn!("Ignoring an ACS update message without messageId.");
            return Handled::default();
        };
        warn!(message.id = %id, "ACS asked the agent to update itself; refusing.");
        Handled::replies(vec![Outbound::NackRequest(NackRequest {
            cluster: nonempty(&m.cluster_arn)
                .unwrap_or(&self.identity.cluster)
                .to_owned(),
            container_instance: nonempty(&m.container_instance_arn)
                .unwrap_or(&self.identity.container_instance_arn)
                .to_owned(),
            message_id: id.to_owned(),
            reason: UPDATE_REFUSED.to_owned(),
        })])
    }

    fn raise_seq(&mut self, seq: i64) -> Result<(), store::Error> {
        if seq > self.latest_seq {
            self.store.put(ACS, SEQ_NUM_KEY, &seq)?;
            self.latest_seq = seq;
        }
        Ok(())
    }

    /// Stores one credential set; the ack to send for it, if it has an id.
    fn store_credentials(
        &self,
        message_id: &str,
        task_arn: &str,
        role: RoleType,
        creds: &IamRoleCredentials,
    ) -> Option<IamRoleCredentialsAckRequest> {
        let Some(id) = nonempty(&creds.credentials_id) else {
            warn!(task.arn = %task_arn, ?role, "Ignoring task credentials without credentialsId.");
            return None;
        };
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        self.credentials.set(
            task_arn,
            role,
            RoleCredentials {
                credentials_id: id.to_owned(),
                role_arn: text(&creds.role_arn),
                access_key_id: text(&creds.access_key_id),
                secret_access_key: text(&creds.secret_access_key),
                session_token: text(&creds.session_token),
                expiration: text(&creds.expiration),
            },
        );
        Some(IamRoleCredentialsAckRequest {
            message_id: message_id.to_owned(),
            expiration: text(&creds.expiration),
            credentials_id: id.to_owned(),
        })
    }

    async fn payload(&mut self, m: PayloadMessage) -> Result<Handled, Error> {
        let received = std::time::Instant::now();
        let (Some(message_id), Some(cluster), Some(instance)) = (
            nonempty(&m.message_id).map(str::to_owned),
            nonempty(&m.cluster_arn).map(str::to_owned),
            nonempty(&m.container_instance_arn).map(str::to_owned),
        ) else {
            warn!(
                tasks = m.tasks.len(),
                "Rejecting a PayloadMessage without messageId, clusterArn or containerInstanceArn (not acknowledged)."
            );
            return Ok(Handled::default());
        };
        info!(message.id = %message_id, tasks = m.tasks.len(), seq_num = m.seq_num.unwrap_or(-1),
            "ACS payload received.");

        // Credentials first, so the engine finds them when it starts the task.
        let mut credential_acks = Vec::new();
        for task in &m.tasks {
            let Some(arn) = nonempty(&task.arn) else {
                continue;
            };
            for (role, creds) in [
                (RoleType::TaskApplication, &task.role_credentials),
                (RoleType::TaskExecution, &task.execution_role_credentials),
            ] {
                if let Some(c) = creds
                    && let Some(ack) = self.store_credentials(&message_id, arn, role, c)
                {
                    credential_acks.push(ack);
                }
            }
        }

        // STOPPED tasks first (spec §5.4), otherwise in the order sent.
        let mut tasks: Vec<&PayloadTask> = m.tasks.iter().collect();
        tasks.sort_by_key(|t| t.desired_status.as_deref() != Some("STOPPED"));
        let mut failed = 0usize;
        for task in tasks {
            if !self.deliver(task, &cluster, received).await? {
                failed += 1;
            }
        }
        if failed > 0 {
            warn!(message.id = %message_id, failed, tasks = m.tasks.len(),
                "Not acknowledging the payload: some tasks were not accepted.");
            return Ok(Handled::default());
        }
        if let Some(seq) = m.seq_num {
            self.raise_seq(seq)?;
        }
        let mut replies: Vec<Outbound> = credential_acks
            .into_iter()
            .map(Outbound::IamRoleCredentialsAckRequest)
            .collect();
        replies.push(Outbound::AckRequest(AckRequest {
            cluster,
            container_instance: instance,
            message_id,
        }));
        Ok(Handled::replies(replies))
    }

    /// Delivers one task; false if it was not accepted.
    async fn deliver(
        &mut self,
        task: &PayloadTask,
        cluster: &str,
        received: std::time::Instant,
    ) -> Result<bool, Error> {
        let Some(arn) = nonempty(&task.arn).map(str::to_owned) else {
            warn!("A payload task has no arn; it cannot be run or reported.");
            return Ok(false);
        };
        let desired = task.desired_status.as_deref().unwrap_or("");
        let rank = desired_rank(desired);
        if let Some(rank) = rank
            && self.delivered.covers(&arn, rank)
        {
            debug!(task.arn = %arn, desired, "Task already delivered with this desired status; not applying it again.");
            return Ok(true);
        }
        if rank == Some(1)
            && let Some(m) = &self.milestones
        {
            m.payload_received(&arn, received);
        }
        match self.engine.deliver(task.without_credentials()).await {
            Ok(()) => {
                info!(task.arn = %arn, desired, "Task delivered to the engine.");
                if let Some(rank) = rank {
                    self.delivered.record(&arn, rank);
                }
                if rank == Some(1)
                    && let Some(m) = &self.milestones
                {
                    m.delivered(&arn);
                }
                Ok(true)
            }
            Err(DeliverError::Unavailable(why)) => {
                warn!(task.arn = %arn, desired, reason = %why,
                    "The engine cannot take the task now; the payload stays unacknowledged.");
                Ok(false)
            }
            Err(DeliverError::Refused(why)) => {
                // The official agent's text for a task it cannot load (UnrecognizedTaskError).
                let reason = format!("{UNRECOGNIZED_TASK}{why}");
                warn!(task.arn = %arn, desired, reason = %reason, "The engine refused the task; reporting it STOPPED.");
                let change = TaskChange {
                    attachments: Vec::new(),
                    cluster: nonempty(&task.task_cluster_arn)
                        .unwrap_or(cluster)
                        .to_owned(),
                    task_arn: arn,
                    status: ReportStatus::Stopped,
                    reason: Some(reason),
                    pull_started_at: None,
                    pull_stopped_at: None,
                    execution_stopped_at: None,
                    containers: Vec::new(),
                };
                self.store
                    .transaction(|tx| self.sink.enqueue(tx, &change))?;
                self.sink.notify();
                Ok(false)
            }
        }
    }

    fn credentials_message(&mut self, m: IamRoleCredentialsMessage) -> Handled {
        let role = match m.role_type.as_deref() {
            Some("TaskApplication") => Some(RoleType::TaskApplication),
            Some("TaskExecution") => Some(RoleType::TaskExecution),
            _ => None,
        };
        let (Some(id), Some(arn), Some(creds), Some(role)) = (
            nonempty(&m.message_id),
            nonempty(&m.task_arn),
            m.role_credentials.as_ref(),
            role,
        ) else {
            warn!(
                task.arn = m.task_arn.as_deref().unwrap_or(""),
                role_type = m.role_type.as_deref().unwrap_or(""),
                "Rejecting an IAMRoleCredentialsMessage without messageId, taskArn, roleCredentials or a known roleType (not acknowledged)."
            );
            return Handled::default();
        };
        let ack = self.store_credentials(id, arn, role, creds);
        // Kept, so a payload that follows finds them, but not acknowledged: ECS learns that this
        // instance does not hold the task (task-credentials.md §2.3). A task delivered in this
        // process counts even before the engine's snapshot shows it.
        if ack.is_some() && !self.delivered.rank.contains_key(arn) && !self.engine.knows(arn) {
            warn!(task.arn = %arn, role = role.as_str(),
                "Credentials refreshed for a task this instance does not hold (not acknowledged).");
            return Handled::default();
        }
        match ack {
            Some(ack) => {
                // Never the credentials id: it is a bearer token for 169.254.170.2.
                info!(task.arn = %arn, role = role.as_str(), "Task credentials refreshed.");
                Handled::replies(vec![Outbound::IamRoleCredentialsAckRequest(ack)])
            }
            None => Handled::default(),
        }
    }

    fn manifest(&mut self, m: TaskManifestMessage) -> Result<Handled, Error> {
        let Some(id) = nonempty(&m.message_id).map(str::to_owned) else {
            warn!("Ignoring a TaskManifestMessage without messageId.");
            return Ok(Handled::default());
        };
        let timeline = m.timeline.unwrap_or(i64::MIN);
        if timeline <= self.latest_seq {
            debug!(message.id = %id, timeline, latest = self.latest_seq,
                "Ignoring a task manifest that is not newer than the latest payload.");
            return Ok(Handled::default());
        }
        self.raise_seq(timeline)?;
        self.manifest_message_id = Some(id.clone());
        let listed_running: HashSet<&str> = m
            .tasks
            .iter()
            .filter(|t| t.desired_status.as_deref() == Some("RUNNING"))
            .filter_map(|t| nonempty(&t.task_arn))
            .collect();
        let cluster = nonempty(&m.cluster_arn)
            .unwrap_or(&self.identity.cluster)
            .to_owned();
        let candidates: Vec<TaskIdentifier> = self
            .engine
            .desired_running()
            .into_iter()
            .filter(|arn| !listed_running.contains(arn.as_str()))
            .map(|arn| TaskIdentifier {
                task_arn: Some(arn),
                task_cluster_arn: Some(cluster.clone()),
                desired_status: Some("STOPPED".into()),
            })
            .collect();
        let mut handled = self.ack(&m.message_id, &m.cluster_arn, &m.container_instance_arn);
        if !candidates.is_empty() {
            info!(message.id = %id, candidates = candidates.len(),
                "Tasks running here are missing from the ACS manifest; asking ACS whether to stop them.");
            handled.replies.push(Outbound::TaskStopVerificationMessage(
                TaskStopVerificationMessage {
                    message_id: id,
                    stop_candidates: candidates,
                },
            ));
        }
        Ok(handled)
    }

    /// `AttachTaskNetworkInterfacesMessage` (awsvpc.md §2.1): each ENI's attachment is
    /// recorded by the engine before the ack; an engine that cannot record it now gets no ack,
    /// so ACS sends it again. An ENI without attachment ARN is logged naming the field and not
    /// recorded (the task's own ENI list is validated when the task is delivered).
    async fn attach_task_enis(&mut self, m: AttachTaskNetworkInterfacesMessage) -> Handled {
        let Some(task_arn) = nonempty(&m.task_arn).map(str::to_owned) else {
            warn!("Ignoring an AttachTaskNetworkInterfacesMessage without taskArn.");
            return Handled::default();
        };
        for (i, raw) in m.elastic_network_interfaces.iter().enumerate() {
            let text = |k: &str| {
                raw.get(k)
                    .and_then(serde_json::Value::as_str)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
            };
            let Some(attachment_arn) = text("attachmentArn") else {
                warn!(task.arn = %task_arn, "ACS sent a task ENI without elasticNetworkInterfaces[{i}].attachmentArn; it cannot be recorded.");
                continue;
            };
            let attachment = EniAttachment {
                attachment_arn: attachment_arn.to_owned(),
                task_arn: task_arn.clone(),
                mac: text("macAddress").unwrap_or_default().to_ascii_lowercase(),
                wait_timeout_ms: m.wait_timeout_ms.and_then(|w| u64::try_from(w).ok()),
            };
            if let Err(e) = self.engine.attach_eni(attachment).await {
                warn!(task.arn = %task_arn, error = %e, "The engine could not record the ENI attachment; not acknowledging (ACS sends it again).");
                return Handled::default();
            }
        }
        info!(task.arn = %task_arn, enis = m.elastic_network_interfaces.len(), "Task ENI attachment recorded.");
        self.ack(&m.message_id, &m.cluster_arn, &m.container_instance_arn)
    }

    async fn stop_verification_ack(&mut self, m: TaskStopVerificationAck) -> Handled {
        let matches = nonempty(&m.message_id).is_some()
            && m.message_id.as_deref() == self.manifest_message_id.as_deref();
        if !matches {
            debug!(
                message.id = m.message_id.as_deref().unwrap_or(""),
                "Ignoring a TaskStopVerificationAck for another manifest."
            );
            return Handled::default();
        }
        self.manifest_message_id = None;
        for t in &m.stop_tasks {
            let Some(arn) = nonempty(&t.task_arn) else {
                continue;
            };
            info!(task.arn = %arn, "ACS confirmed the task should stop.");
            match self.engine.stop(arn).await {
                Ok(()) => self.delivered.record(arn, 2),
                Err(reason) => {
                    warn!(task.arn = %arn, reason = %reason, "The engine could not stop the task.")
                }
            }
        }
        Handled::default()
    }
}

#[cfg(test)]
mod tests;
