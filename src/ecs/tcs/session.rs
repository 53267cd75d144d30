//! The TCS session (tcs.md §1, §4): a publisher that collects every publish interval, whether
//! or not a connection is up, into a bounded queue; and a connection loop that discovers the
//! telemetry endpoint, opens the signed websocket, sends each queued collection as signed frames,
//! the instance status when it changed, and keeps the connection alive or replaces it.
//!
//! - Collections: metrics and health, the first at once, then every 20 s. Samples are marked sent
//!   when collected, not when acknowledged (as upstream). The queue holds 15 collections (5 min,
//!   what TCS still accepts); a collection that cannot be queued within 1 s is dropped and counted.
//! - Liveness: a heartbeat or ack within 1 min + jitter 1 min, and any frame within 3 min, or the
//!   connection is closed (1000, `ConnectionExpired: Reconnect to continue`) and replaced; a
//!   connection older than 30 min + jitter 5 min is replaced the same way.
//! - Reconnection: a clean close after at least [`CLEAN_MIN_LIFETIME`] reconnects at once; anything
//!   else waits with backoff (1 s → 1 min, ×2, jitter 0.2), reset by the first heartbeat or ack of
//!   a connection.
//!
//! Never talks to Docker or reads cgroups itself (the [`Source`] does); never logs frames or
//! signed headers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::messages::{
    self, ContainerHealth, ContainerMetric, Inbound, InstanceStatus, TaskHealth, TaskMetric,
    Timestamp,
};
use crate::backoff::{self, Policy};
use crate::ecs::EcsApi;
use crate::ecs::discover::Discovery;
use crate::ecs::proxy::Proxies;
use crate::ecs::ws::{self, ConnectError, Ws};

/// Close reason when a connection is replaced (tcs.md §4).
pub const EXPIRED_REASON: &str = "ConnectionExpired: Reconnect to continue";
/// A "clean" close sooner than this after connecting is treated as a failure (backoff).
pub const CLEAN_MIN_LIFETIME: Duration = Duration::from_secs(1);
/// A container whose stats sets cannot be computed yet is left out silently this long after it
/// started (it has too few samples); later the omission is logged.
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Session timings; the defaults are the protocol's. Tests shorten them.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Collect and publish this often.
    pub publish_interval: Duration,
    /// Close after this long without a heartbeat or ack...
    pub liveness: Duration,
    /// ...plus up to this much jitter.
    pub liveness_jitter: Duration,
    /// Close after this long without any inbound frame.
    pub read_deadline: Duration,
    /// Replace a connection this old...
    pub max_age: Duration,
    /// ...plus up to this much jitter.
    pub max_age_jitter: Duration,
    /// Reconnect backoff.
    pub reconnect: Policy,
    /// Deadline for TCP + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Deadline for writing one frame.
    pub write_timeout: Duration,
    /// Collections held while they cannot be sent.
    pub queue: usize,
    /// How long a collection may wait for room in the queue.
    pub queue_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            publish_interval: Duration::from_secs(20),
            liveness: Duration::from_secs(60),
            liveness_jitter: Duration::from_secs(60),
            read_deadline: Duration::from_secs(180),
            max_age: Duration::from_secs(30 * 60),
            max_age_jitter: Duration::from_secs(5 * 60),
            reconnect: Policy::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, 0.2),
            connect_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            queue: 15,
            queue_wait: Duration::from_secs(1),
        }
    }
}

/// Who connects, and what is reported.
#[derive(Clone, Debug, PartialEq)]
pub struct TcsConfig {
    /// Configured cluster: the `cluster` parameter and `metadata.cluster`.
    pub cluster: String,
    /// Registered container instance ARN.
    pub container_instance_arn: String,
    /// Region to sign for.
    pub region: String,
    /// `agentVersion`.
    pub agent_version: String,
    /// `agentHash`.
    pub agent_hash: String,
    /// Plain Docker server version; omitted when unknown.
    pub docker_version: Option<String>,
    /// `ECS_DISABLE_METRICS` off: task metrics are collected (else idle frames only).
    pub metrics: bool,
    /// `ECS_DISABLE_DOCKER_HEALTH_CHECK` off: container health is published.
    pub health: bool,
    /// Timings.
    pub timing: Timing,
}

/// A container as TCS reports on it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerView {
    /// Name in the task definition.
    pub name: String,
    /// Docker id.
    pub docker_id: String,
    /// Bridge networking: its network stats set is sent.
    pub network: bool,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// Health, for containers with a task-definition health check: status (`HEALTHY`,
    /// `UNHEALTHY`, `UNKNOWN`) and the epoch ms of its last change.
    pub health: Option<(String, Option<i64>)>,
}

/// A task with running containers (known, not stopped).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    /// Task ARN.
    pub arn: String,
    /// Family.
    pub family: String,
    /// Revision.
    pub revision: String,
    /// Its running containers.
    pub containers: Vec<ContainerView>,
}

/// Where the reported facts come from: the engine's snapshot, the stats collector and the health
/// board, joined by the app.
pub trait Source: Send + Sync {
    /// Tasks with running containers, now.
    fn tasks(&self) -> Vec<TaskView>;
    /// One container's stats sets over its unsent samples (tcs.md §6.3), as JSON members
    /// (`cpuStatsSet`, `memoryStatsSet`, optionally `networkStatsSet`, `storageStatsSet`).
    fn sets(
        &self,
        docker_id: &str,
        network: bool,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String>;
    /// Marks every sample of every container sent.
    fn mark_sent(&self);
    /// The container runtime's health: `Some(true)` when Docker answers; `None` before the first
    /// check.
    fn runtime_ok(&self) -> Option<bool>;
}

/// Everything a [`TcsSession`] needs.
pub struct TcsParts {
    /// Identity, switches and timings.
    pub config: TcsConfig,
    /// ECS (DiscoverPollEndpoint).
    pub ecs: Arc<dyn EcsApi>,
    /// The endpoint cache shared with the ACS session.
    pub discovery: Arc<Discovery>,
    /// Credentials to sign the upgrade and every frame with.
    pub credentials_provider: SharedCredentialsProvider,
    /// What is reported.
    pub source: Arc<dyn Source>,
}

/// What one collection queued: request envelopes, sent in order.
type Collection = Vec<String>;

/// How one connection ended.
enum Ended {
    Cancelled,
    Clean(String),
    Failed(String),
}

/// Counters a test or `/metrics` reads.
#[derive(Debug, Default)]
pub struct TcsCounters {
    /// Connection attempts (successful or not).
    pub attempts: AtomicU64,
    /// Connections opened.
    pub connections: AtomicU64,
    /// Collections queued.
    pub collections: AtomicU64,
    /// Collections dropped because the queue stayed full.
    pub dropped: AtomicU64,
    /// Frames written.
    pub frames: AtomicU64,
}

/// The TCS session: run [`TcsSession::run`] under the supervisor.
pub struct TcsSession {
    config: TcsConfig,
    ecs: Arc<dyn EcsApi>,
    discovery: Arc<Discovery>,
    credentials_provider: SharedCredentialsProvider,
    proxies: Proxies,
    source: Arc<dyn Source>,
    counters: Arc<TcsCounters>,
    /// The instance status last written successfully, and when the status last changed.
    status: Mutex<StatusState>,
}

#[derive(Debug, Default)]
struct StatusState {
    sent: Option<String>,
    current: Option<String>,
    changed_at: Option<Timestamp>,
}

impl std::fmt::Debug for TcsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcsSession")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TcsSession {
    /// A session.
    pub fn new(parts: TcsParts) -> TcsSession {
        TcsSession {
            config: parts.config,
            ecs: parts.ecs,
            discovery: parts.discovery,
            credentials_provider: parts.credentials_provider,
            proxies: Proxies::from_env(),
            source: parts.source,
            counters: Arc::default(),
            status: Mutex::default(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<TcsCounters> {
        self.counters.clone()
    }

    /// The query of the connection, keys sorted as Go's `url.Values.Encode` sorts them.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut q = vec![
            ("agentHash", c.agent_hash.clone()),
            ("agentVersion", c.agent_version.clone()),
            ("cluster", c.cluster.clone()),
            ("containerInstance", c.container_instance_arn.clone()),
        ];
        if let Some(v) = &c.docker_version {
            q.push(("dockerVersion", v.clone()));
        }
        q
    }

    /// Collects and publishes until cancelled.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), std::convert::Infallible> {
        let (tx, rx) = mpsc::channel(self.config.timing.queue.max(1));
        tokio::join!(
            self.publish_loop(tx, &cancel),
            self.connect_loop(rx, &cancel)
        );
        Ok(())
    }

    async fn publish_loop(&self, tx: mpsc::Sender<Collection>, cancel: &CancellationToken) {
        let t = &self.config.timing;
        let mut ticker = crate::clock::Ticker::new(t.publish_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let collection = self.collect(SystemTime::now());
            if collection.is_empty() {
                continue;
            }
            match tx.send_timeout(collection, t.queue_wait).await {
                Ok(()) => {
                    self.counters.collections.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!("TCS queue full (not connected); a collection was dropped.");
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
        }
    }

    /// One collection: metrics (or the idle frame), then health.
    pub fn collect(&self, now: SystemTime) -> Collection {
        let c = &self.config;
        let at = Timestamp::of(now);
        let tasks = if c.metrics || c.health {
            self.source.tasks()
        } else {
            Vec::new()
        };
        let mut frames = if c.metrics {
            let (tracked, metrics) = self.task_metrics(&tasks, now);
            let frames = messages::metrics_frames(
                &c.cluster,
                &c.container_instance_arn,
                &uuid::Uuid::new_v4().to_string(),
                tracked,
                metrics,
                at,
            );
            if tracked {
                self.source.mark_sent();
            }
            frames
        } else {
            messages::metrics_frames(
                &c.cluster,
                &c.container_instance_arn,
                &uuid::Uuid::new_v4().to_string(),
                false,
                Vec::new(),
                at,
            )
        };
        if c.health {
            let health = health_of(&tasks, at);
            frames.extend(messages::health_frames(
                &c.cluster,
                &c.container_instance_arn,
                &uuid::Uuid::new_v4().to_string(),
                health,
                at,
            ));
        }
        frames
    }

    /// Whether any container is tracked, and the tasks with metrics.
    fn task_metrics(&self, tasks: &[TaskView], now: SystemTime) -> (bool, Vec<TaskMetric>) {
        let mut tracked = false;
        let mut out = Vec::new();
        for task in tasks {
            let mut containers = Vec::new();
            for c in &task.containers {
                tracked = true;
                match self.source.sets(&c.docker_id, c.network) {
                    Ok(sets) => containers.push(ContainerMetric {
                        container_name: c.name.clone(),
                        sets,
                    }),
                    Err(why) => {
                        let young = c
                            .started_at
                            .and_then(|s| now.duration_since(s).ok())
                            .is_none_or(|age| age < STARTUP_GRACE);
                        if !young {
                            debug!(task = %task.arn, container = %c.name, reason = %why,
                                "No metrics for this container in this collection.");
                        }
                    }
                }
            }
            if !containers.is_empty() {
                out.push(TaskMetric {
                    task_arn: task.arn.clone(),
                    task_definition_family: task.family.clone(),
                    task_definition_version: task.revision.clone(),
                    container_metrics: containers,
                });
            }
        }
        (tracked, out)
    }

    /// The instance status request, when the status differs from the one last sent.
    fn instance_status(&self, now: SystemTime) -> Option<String> {
        let status = match self.source.runtime_ok() {
            None => "INITIALIZING",
            Some(true) => "OK",
            Some(false) => "IMPAIRED",
        };
        let at = Timestamp::of(now);
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.current.as_deref() != Some(status) {
            s.current = Some(status.to_owned());
            s.changed_at = Some(at);
        }
        if s.sent.as_deref() == Some(status) {
            return None;
        }
        let c = &self.config;
        Some(messages::envelope(
            "PublishInstanceStatusRequest",
            &messages::PublishInstanceStatus {
                metadata: messages::InstanceStatusMetadata {
                    cluster: c.cluster.clone(),
                    container_instance: c.container_instance_arn.clone(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                },
                statuses: vec![InstanceStatus {
                    kind: "ContainerRuntime".into(),
                    status: status.into(),
                    last_updated: at,
                    last_status_change: s.changed_at.unwrap_or(at),
                }],
                timestamp: at,
            },
        ))
    }

    /// The status request built last was written.
    fn status_sent(&self) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.sent = s.current.clone();
    }

    async fn connect_loop(&self, mut rx: mpsc::Receiver<Collection>, cancel: &CancellationToken) {
        let t = &self.config.timing;
        let mut backoff = t.reconnect.start();
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connect() => r,
            };
            let delay = match attempt {
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "Cannot connect to TCS; task metrics wait.");
                    d
                }
                Ok((ws, url)) => {
                    let n = self.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(connection = n, "Connected to TCS.");
                    let started = Instant::now();
                    let ended = self.serve(ws, &url, &mut rx, &mut backoff, cancel).await;
                    let lived = started.elapsed();
                    match ended {
                        Ended::Cancelled => return,
                        Ended::Clean(why) if lived >= CLEAN_MIN_LIFETIME => {
                            info!(reason = %why, lived = ?lived, "TCS connection closed; reconnecting.");
                            backoff.reset();
                            Duration::ZERO
                        }
                        Ended::Clean(why) | Ended::Failed(why) => {
                            let d = backoff.next_delay();
                            warn!(reason = %why, lived = ?lived, retry_in = ?d, "TCS connection lost; reconnecting.");
                            d
                        }
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<(Ws, String), ConnectError> {
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let c = &self.config;
        let endpoints = self
            .discovery
            .endpoints(&*self.ecs, &c.cluster, &c.container_instance_arn)
            .await?;
        let endpoint = endpoints
            .telemetry
            .ok_or(ConnectError::NoTelemetryEndpoint)?;
        let url = ws::ws_url(&endpoint, &self.query())?;
        let credentials = ws::credentials(&self.credentials_provider).await?;
        debug!(tcs.endpoint = %endpoint,
            proxy = ws::describe_route(&self.proxies, &url), "Connecting to TCS.");
        let ws = ws::open(
            &url,
            &c.region,
            &credentials,
            &self.proxies,
            c.timing.connect_timeout,
        )
        .await?;
        Ok((ws, url))
    }

    /// Writes one request as a signed frame.
    async fn send(&self, ws: &mut Ws, signing_url: &str, payload: &str) -> Result<(), String> {
        let credentials = ws::credentials(&self.credentials_provider)
            .await
            .map_err(|e| e.to_string())?;
        let frame = messages::signed_frame(
            signing_url,
            payload,
            &self.config.region,
            &credentials,
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
        ws::write(ws, Message::text(frame), self.config.timing.write_timeout).await?;
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn serve(
        &self,
        mut ws: Ws,
        url: &str,
        rx: &mut mpsc::Receiver<Collection>,
        backoff: &mut backoff::Backoff,
        cancel: &CancellationToken,
    ) -> Ended {
        let t = &self.config.timing;
        // Frames are signed for the endpoint's http(s) URL.
        let signing_url = url
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1);
        let liveness = t.liveness + backoff::jitter(t.liveness_jitter);
        let expires = Instant::now() + t.max_age + backoff::jitter(t.max_age_jitter);
        let mut alive_until = Instant::now() + liveness;
        let mut read_until = Instant::now() + t.read_deadline;
        let mut status_tick = crate::clock::Ticker::new(t.publish_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    ws::close(&mut ws, CloseCode::Away, "agent stopping").await;
                    return Ended::Cancelled;
                }
                _ = tokio::time::sleep_until(expires) => {
                    ws::close(&mut ws, CloseCode::Normal, EXPIRED_REASON).await;
                    return Ended::Clean("connection reached its maximum age".into());
                }
                _ = tokio::time::sleep_until(alive_until) => {
                    ws::close(&mut ws, CloseCode::Normal, EXPIRED_REASON).await;
                    return Ended::Failed(format!("no heartbeat or ack from TCS for {liveness:?}"));
                }
                _ = tokio::time::sleep_until(read_until) => {
                    ws::close(&mut ws, CloseCode::Normal, EXPIRED_REASON).await;
                    return Ended::Failed(format!("no frame from TCS for {:?}", t.read_deadline));
                }
                _ = status_tick.tick() => {
                    if let Some(payload) = self.instance_status(SystemTime::now()) {
                        if let Err(why) = self.send(&mut ws, &signing_url, &payload).await {
                            return Ended::Failed(why);
                        }
                        self.status_sent();
                    }
                }
                collection = rx.recv() => {
                    let Some(collection) = collection else {
                        return Ended::Cancelled;
                    };
                    for payload in &collection {
                        if let Err(why) = self.send(&mut ws, &signing_url, payload).await {
                            // The rest of this collection is lost (tcs.md §4).
                            return Ended::Failed(why);
                        }
                    }
                }
                next = ws.next() => {
                    read_until = Instant::now() + t.read_deadline;
                    let message = match ws::read(next, "TCS") {
                        Ok(m) => m,
                        Err(ws::Closed { clean: true, why }) => return Ended::Clean(why),
                        Err(ws::Closed { why, .. }) => return Ended::Failed(why),
                    };
                    match message {
                        Message::Text(text) => match messages::parse_inbound(text.as_str()) {
                            Some(Inbound::Heartbeat | Inbound::Ack(_)) => {
                                alive_until = Instant::now() + liveness;
                                backoff.reset();
                            }
                            Some(Inbound::Stop(why)) => {
                                info!(reason = %why, "TCS sent StopTelemetrySessionMessage.");
                            }
                            Some(Inbound::Exception { kind, message }) => {
                                warn!(exception = %kind, message = %message, "TCS refused a request.");
                            }
                            Some(Inbound::Other(kind)) => {
                                debug!(message.type = %kind, "Ignoring an unknown TCS message.");
                            }
                            None => debug!("Ignoring a TCS frame that is not a message envelope."),
                        },
                        Message::Binary(_) => {
                            ws::close(&mut ws, CloseCode::Unsupported, "binary frame").await;
                            return Ended::Failed("TCS sent a binary frame".into());
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
                    }
                }
            }
        }
    }
}

/// The health of every health-checked container (tcs.md §3.2).
fn health_of(tasks: &[TaskView], at: Timestamp) -> Vec<TaskHealth> {
    tasks
        .iter()
        .filter_map(|task| {
            let containers: Vec<ContainerHealth> = task
                .containers
                .iter()
                .filter_map(|c| {
                    let (status, since) = c.health.as_ref()?;
                    Some(ContainerHealth {
                        container_name: c.name.clone(),
                        health_status: status.clone(),
                        status_since: since.map(Timestamp).unwrap_or(at),
                    })
                })
                .collect();
            (!containers.is_empty()).then(|| TaskHealth {
                task_arn: task.arn.clone(),
                task_definition_family: task.family.clone(),
                task_definition_version: task.revision.clone(),
                containers,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
