//! The ACS connection (protocol spec §5.1, §5.2, §5.6, §5.7): discover the endpoint, open the
//! websocket with a SigV4-signed upgrade, feed every frame to the [`Handler`], write its replies,
//! and keep a session up for the life of the process.
//!
//! - Query: `clusterArn`, `containerInstanceArn`, `agentHash`, `agentVersion`, `seqNum=1`,
//!   `protocolVersion=2`, `dockerVersion` (when known), `sendCredentials` (`true` until the first
//!   connection of this process succeeds, then `false`).
//! - Liveness: no inbound frame for 1 min + jitter 1 min closes the connection; a connection older
//!   than 30 min + jitter 5 min is closed with code 1000 "ConnectionExpired: Reconnect to
//!   continue".
//! - Reconnection: a clean close (1000, 1001, 1006, 1011, or end of stream) after a connection
//!   that lived at least [`CLEAN_MIN_LIFETIME`] reconnects at once; anything else waits with
//!   backoff (250 ms → 2 min, ×1.5, jitter 0.2), reset once a connection stayed up 1 min + jitter
//!   1 min. `InactiveInstanceException` (deregistered instance): retry hourly, stop nothing.
//!
//! Every wait races the cancellation token. This module never interprets messages (the handler
//! does) and never logs frames, credentials or signed headers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::handler::{self, Disconnect, Handler, HandlerParts};
use crate::backoff::{self, Policy};
use crate::ecs::EcsApi;
use crate::ecs::discover::Discovery;
use crate::ecs::proxy::Proxies;
use crate::ecs::ws::{self, ConnectError, Ws};
use crate::store;

/// Close reason sent when a connection reaches its maximum age (protocol spec §5.6).
pub const EXPIRED_REASON: &str = "ConnectionExpired: Reconnect to continue";
/// A "clean" close sooner than this after connecting is treated as a failure (backoff), so a
/// server that accepts and closes at once cannot make the agent spin.
pub const CLEAN_MIN_LIFETIME: Duration = Duration::from_secs(1);

/// Session timings; the defaults are the protocol's. Tests shorten them.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Close after this long without any inbound frame...
    pub inactivity: Duration,
    /// ...plus up to this much jitter.
    pub inactivity_jitter: Duration,
    /// Close a connection this old...
    pub max_age: Duration,
    /// ...plus up to this much jitter.
    pub max_age_jitter: Duration,
    /// Reconnect backoff.
    pub reconnect: Policy,
    /// A connection up this long resets the backoff...
    pub healthy_after: Duration,
    /// ...plus up to this much jitter.
    pub healthy_jitter: Duration,
    /// Wait before retrying after `InactiveInstanceException`.
    pub inactive_retry: Duration,
    /// Deadline for TCP + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Deadline for writing one frame.
    pub write_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            inactivity: Duration::from_secs(60),
            inactivity_jitter: Duration::from_secs(60),
            max_age: Duration::from_secs(30 * 60),
            max_age_jitter: Duration::from_secs(5 * 60),
            reconnect: Policy::new(
                Duration::from_millis(250),
                Duration::from_secs(120),
                1.5,
                0.2,
            ),
            healthy_after: Duration::from_secs(60),
            healthy_jitter: Duration::from_secs(60),
            inactive_retry: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(180),
        }
    }
}

/// Who connects, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct AcsConfig {
    /// Configured cluster (name or ARN): the `clusterArn` parameter.
    pub cluster: String,
    /// Registered container instance ARN.
    pub container_instance_arn: String,
    /// Region to sign for.
    pub region: String,
    /// `agentVersion`, e.g. [`crate::COMPATIBLE_AGENT_VERSION`].
    pub agent_version: String,
    /// `agentHash`, see [`super::agent_hash`].
    pub agent_hash: String,
    /// Docker server version, e.g. `25.0.8`; the parameter is omitted when unknown.
    pub docker_version: Option<String>,
    /// Timings.
    pub timing: Timing,
}

/// Errors that end [`AcsSession::run`] (the supervisor restarts it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handler's store failed.
    #[error(transparent)]
    Handler(#[from] handler::Error),
    /// The store failed while building the handler.
    #[error("ACS session: {0}")]
    Store(#[from] store::Error),
}

impl Error {
    /// Not retryable in-process.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Everything an [`AcsSession`] needs.
pub struct AcsParts {
    /// Identity and timings.
    pub config: AcsConfig,
    /// ECS (DiscoverPollEndpoint).
    pub ecs: Arc<dyn EcsApi>,
    /// The endpoint cache (shared with the TCS session).
    pub discovery: Arc<Discovery>,
    /// Credentials to sign the upgrade with (the SDK configuration's provider).
    pub credentials_provider: SharedCredentialsProvider,
    /// What the handler works with.
    pub handler: HandlerParts,
}

/// How one connection ended.
enum Ended {
    Cancelled,
    Clean(String),
    Failed(String),
    Inactive(String),
}

/// The ACS session. One per process; share it as `Arc<AcsSession>` and run
/// [`AcsSession::run`] under the supervisor (restarts keep its state).
pub struct AcsSession {
    config: AcsConfig,
    ecs: Arc<dyn EcsApi>,
    discovery: Arc<Discovery>,
    credentials_provider: SharedCredentialsProvider,
    proxies: Proxies,
    handler: tokio::sync::Mutex<Handler>,
    first_connection: AtomicBool,
    connections: AtomicU64,
    attempts: AtomicU64,
}

impl std::fmt::Debug for AcsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcsSession")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AcsSession {
    /// A session; reads the handler's persisted state.
    pub fn new(parts: AcsParts) -> Result<AcsSession, store::Error> {
        Ok(AcsSession {
            config: parts.config,
            ecs: parts.ecs,
            discovery: parts.discovery,
            credentials_provider: parts.credentials_provider,
            proxies: Proxies::from_env(),
            handler: tokio::sync::Mutex::new(Handler::new(parts.handler)?),
            first_connection: AtomicBool::new(true),
            connections: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
        })
    }

    /// Heartbeats from ACS also wake `check`: the Docker watchdog's health round (protocol
    /// spec §5.4 "run local health checks (Docker ping)").
    pub fn with_health_check(mut self, check: Arc<tokio::sync::Notify>) -> AcsSession {
        self.handler.get_mut().set_health_check(check);
        self
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connection attempts made so far (successful or not).
    pub fn connect_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The query parameters of the next connection.
    pub fn query(&self, send_credentials: bool) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut q = vec![
            ("clusterArn", c.cluster.clone()),
            ("containerInstanceArn", c.container_instance_arn.clone()),
            ("agentHash", c.agent_hash.clone()),
            ("agentVersion", c.agent_version.clone()),
            ("seqNum", "1".to_owned()),
            ("protocolVersion", "2".to_owned()),
        ];
        if let Some(v) = &c.docker_version {
            q.push(("dockerVersion", format!("DockerVersion: {v}")));
        }
        q.push(("sendCredentials", send_credentials.to_string()));
        q
    }

    /// Keeps a session up until cancelled. Returns `Err` only when the store fails.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), Error> {
        let mut handler = self.handler.lock().await;
        let t = &self.config.timing;
        let mut backoff = t.reconnect.start();
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.connect() => r,
            };
            let delay = match attempt {
                Err(e) if e.is_inactive_instance() => {
                    error!(error = %e, retry_in = ?t.inactive_retry,
                        "ACS says this container instance is deregistered. Tasks keep running; retrying later.");
                    t.inactive_retry
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "Cannot connect to ACS.");
                    d
                }
                Ok((ws, endpoint)) => {
                    self.first_connection.store(false, Ordering::Relaxed);
                    let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(acs.endpoint = %endpoint, connection = n, seq_num = handler.latest_seq_num(),
                        "Connected to ACS.");
                    let started = Instant::now();
                    let healthy_after = t.healthy_after + backoff::jitter(t.healthy_jitter);
                    let ended = self.serve(ws, &mut handler, &cancel).await?;
                    let lived = started.elapsed();
                    if lived >= healthy_after {
                        backoff.reset();
                    }
                    match ended {
                        Ended::Cancelled => return Ok(()),
                        Ended::Clean(why) if lived >= CLEAN_MIN_LIFETIME => {
                            info!(reason = %why, lived = ?lived, "ACS connection closed; reconnecting.");
                            backoff.reset();
                            Duration::ZERO
                        }
                        Ended::Clean(why) | Ended::Failed(why) => {
                            let d = backoff.next_delay();
                            warn!(reason = %why, lived = ?lived, retry_in = ?d, "ACS connection lost; reconnecting.");
                            d
                        }
                        Ended::Inactive(why) => {
                            error!(reason = %why, retry_in = ?t.inactive_retry,
                                "ACS says this container instance is deregistered. Tasks keep running; retrying later.");
                            t.inactive_retry
                        }
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<(Ws, String), ConnectError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let c = &self.config;
        let endpoints = self
            .discovery
            .endpoints(&*self.ecs, &c.cluster, &c.container_instance_arn)
            .await?;
        let send_credentials = self.first_connection.load(Ordering::Relaxed);
        let url = ws::ws_url(&endpoints.acs, &self.query(send_credentials))?;
        let credentials = ws::credentials(&self.credentials_provider).await?;
        debug!(acs.endpoint = %endpoints.acs, send_credentials,
            proxy = ws::describe_route(&self.proxies, &url), "Connecting to ACS.");
        let ws = ws::open(
            &url,
            &c.region,
            &credentials,
            &self.proxies,
            c.timing.connect_timeout,
        )
        .await?;
        Ok((ws, endpoints.acs))
    }

    async fn send(&self, ws: &mut Ws, message: Message) -> Result<(), String> {
        ws::write(ws, message, self.config.timing.write_timeout).await
    }

    async fn serve(
        &self,
        mut ws: Ws,
        handler: &mut Handler,
        cancel: &CancellationToken,
    ) -> Result<Ended, handler::Error> {
        let t = &self.config.timing;
        let idle_timeout = t.inactivity + backoff::jitter(t.inactivity_jitter);
        let expires = Instant::now() + t.max_age + backoff::jitter(t.max_age_jitter);
        let mut idle_deadline = Instant::now() + idle_timeout;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    ws::close(&mut ws, CloseCode::Away, "agent stopping").await;
                    return Ok(Ended::Cancelled);
                }
                _ = tokio::time::sleep_until(expires) => {
                    ws::close(&mut ws, CloseCode::Normal, EXPIRED_REASON).await;
                    return Ok(Ended::Clean("connection reached its maximum age".into()));
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    ws::close(&mut ws, CloseCode::Normal, "no frame received").await;
                    return Ok(Ended::Failed(format!("no frame from ACS for {idle_timeout:?}")));
                }
                next = ws.next() => next,
            };
            idle_deadline = Instant::now() + idle_timeout;
            let message = match ws::read(next, "ACS") {
                Ok(m) => m,
                Err(ws::Closed { clean: true, why }) => return Ok(Ended::Clean(why)),
                Err(ws::Closed { why, .. }) => return Ok(Ended::Failed(why)),
            };
            match message {
                Message::Text(text) => {
                    let handled = handler.handle_frame(text.as_str()).await?;
                    for reply in &handled.replies {
                        debug!(message.type = reply.kind(), "Sending to ACS.");
                        if let Err(why) = self.send(&mut ws, Message::text(reply.encode())).await {
                            return Ok(Ended::Failed(why));
                        }
                    }
                    match handled.disconnect {
                        None => {}
                        Some(Disconnect::InactiveInstance(why)) => {
                            ws::close(&mut ws, CloseCode::Normal, "instance inactive").await;
                            return Ok(Ended::Inactive(why));
                        }
                        Some(Disconnect::Exception { kind, message }) => {
                            ws::close(&mut ws, CloseCode::Normal, "server exception").await;
                            return Ok(Ended::Failed(format!("ACS sent {kind}: {message}")));
                        }
                    }
                }
                Message::Binary(bytes) => {
                    warn!(
                        bytes = bytes.len(),
                        "Ignoring a binary ACS frame (ACS sends text)."
                    );
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
            }
        }
    }
}
