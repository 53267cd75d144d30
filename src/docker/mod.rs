//! The connection to the Docker engine: connecting (honouring `DOCKER_HOST`), version
//! negotiation, and waiting for the engine at boot.
//!
//! The task engine builds its container runtime on the client made here; the watchdog and
//! `check` use [`ping`]. [`Answered`] tells the watchdog when the engine last heard from Docker,
//! so it need not ask again what the engine just learnt. This module never creates or removes
//! containers.

use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Policy;

/// When Docker last answered the task engine's container listing (its periodic resync, every
/// 20 s, and the rechecks after events). The watchdog skips its own probe while this is recent:
/// an answer it would only repeat. Cheap to clone; shared.
#[derive(Clone, Debug, Default)]
pub struct Answered {
    /// Milliseconds after [`Answered::base`] of the last answer, plus one (0: never).
    at: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Answered {
    fn base() -> std::time::Instant {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(std::time::Instant::now)
    }

    /// Docker answered just now.
    pub fn mark(&self) {
        let ms = Self::base().elapsed().as_millis() as u64 + 1;
        self.at.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether Docker answered within the last `window`.
    pub fn within(&self, window: Duration) -> bool {
        match self.at.load(std::sync::atomic::Ordering::Relaxed) {
            0 => false,
            at => {
                let since = (Self::base().elapsed().as_millis() as u64 + 1).saturating_sub(at);
                since < window.as_millis() as u64
            }
        }
    }
}

/// How long one ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff while waiting for Docker at boot.
const WAIT_RETRY: Policy = Policy::new(
    Duration::from_millis(500),
    Duration::from_secs(15),
    2.0,
    0.2,
);

/// Docker connection errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built (bad DOCKER_HOST).
    #[error("cannot use Docker endpoint {endpoint}: {source}")]
    Connect {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine did not answer.
    #[error("Docker at {endpoint} is not answering: {reason}")]
    Unreachable {
        /// Endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Shutdown while waiting.
    #[error("cancelled while waiting for Docker")]
    Cancelled,
}

impl Error {
    /// Whether waiting can help: an engine that does not answer yet, or whose socket does not
    /// exist yet (docker.socket not started at boot), may come; a malformed `DOCKER_HOST` will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { source, .. } => {
                matches!(source, bollard::errors::Error::SocketNotFoundError(_))
            }
            Error::Unreachable { .. } => true,
            Error::Cancelled => false,
        }
    }
}

/// What the engine says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Server version, e.g. `20.10.24`.
    pub version: String,
    /// Maximum API version, e.g. `1.41`.
    pub api_version: String,
}

/// The endpoint text for messages.
pub fn endpoint(docker_host: Option<&str>) -> String {
    docker_host
        .unwrap_or("unix:///var/run/docker.sock")
        .to_owned()
}

/// Builds a client for `docker_host` (or the local socket). Does not contact the engine.
pub fn connect(docker_host: Option<&str>) -> Result<Docker, Error> {
    let ep = endpoint(docker_host);
    let result = match docker_host {
        None => {
            Docker::connect_with_unix("/var/run/docker.sock", 120, bollard::API_DEFAULT_VERSION)
        }
        Some(h) if h.starts_with("unix://") => {
            Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION)
        }
        Some(h) => Docker::connect_with_http(h, 120, bollard::API_DEFAULT_VERSION),
    };
    result.map_err(|source| Error::Connect {
        endpoint: ep,
        source,
    })
}

/// Pings the engine and reads its version, within [`PING_TIMEOUT`].
pub async fn ping(docker: &Docker, endpoint: &str) -> Result<EngineInfo, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let v = tokio::time::timeout(PING_TIMEOUT, async {
        docker.ping().await?;
        docker.version().await
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {PING_TIMEOUT:?}")))?
    .map_err(|e| unreachable(e.to_string()))?;
    Ok(EngineInfo {
        version: v.version.unwrap_or_default(),
        api_version: v.api_version.unwrap_or_default(),
    })
}

/// Waits until the engine answers, with backoff; `on_wait` is told each failure (for STATUS=).
/// The agent starts before Docker at boot and must not crash-loop while it comes up.
pub async fn wait_ready(
    docker: &Docker,
    endpoint: &str,
    cancel: &CancellationToken,
    mut on_wait: impl FnMut(&Error),
) -> Result<EngineInfo, Error> {
    let mut backoff = WAIT_RETRY.start();
    let mut logged = false;
    loop {
        match ping(docker, endpoint).await {
            Ok(info) => {
                info!(docker.version = %info.version, docker.api = %info.api_version, "Docker is reachable.");
                return Ok(info);
            }
            Err(e) => {
                if !logged {
                    warn!(error = %e, "Waiting for Docker.");
                    logged = true;
                }
                on_wait(&e);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Connects to `docker_host` and waits until the engine answers, with backoff, also while the
/// socket does not exist yet. Fails only on a malformed endpoint or cancellation.
pub async fn connect_ready(
    docker_host: Option<&str>,
    cancel: &CancellationToken,
    mut on_wait: impl FnMut(&Error),
) -> Result<(Docker, EngineInfo), Error> {
    let ep = endpoint(docker_host);
    let mut backoff = WAIT_RETRY.start();
    let mut logged = false;
    let docker = loop {
        match connect(docker_host) {
            Ok(d) => break d,
            Err(e) if e.is_retryable() => {
                if !logged {
                    warn!(error = %e, "Waiting for the Docker socket.");
                    logged = true;
                }
                on_wait(&e);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let info = wait_ready(&docker, &ep, cancel, on_wait).await?;
    Ok((docker, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_missing_socket_is_waited_for_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let err = connect(Some(&host)).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let mut waits = 0;
        let task = async { connect_ready(Some(&host), &c, |_| waits += 1).await };
        let (result, ()) = tokio::join!(task, async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            cancel.cancel();
        });
        assert!(matches!(result, Err(Error::Cancelled)));
        assert!(waits >= 3, "{waits}");
    }

    #[test]
    fn an_answer_is_recent_for_a_window_and_shared_by_clones() {
        let a = Answered::default();
        assert!(!a.within(Duration::from_secs(3600)), "never answered");
        let seen_by_the_watchdog = a.clone();
        a.mark();
        assert!(seen_by_the_watchdog.within(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!seen_by_the_watchdog.within(Duration::from_millis(20)));
    }
}
