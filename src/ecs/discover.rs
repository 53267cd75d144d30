//! Endpoint discovery (protocol spec §4): which ACS (and TCS) endpoint serves this container
//! instance, asked with DiscoverPollEndpoint and cached for 12 hours per container-instance ARN.
//! When a refresh fails, the expired cached answer is used rather than no answer.
//!
//! Owns only the in-memory cache; talks to ECS through [`EcsApi`]. It never retries: the ACS
//! session's reconnect backoff decides when to ask again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{ApiError, EcsApi, PollEndpoints};

/// How long an answer is fresh (protocol spec §4).
pub const CACHE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Upper bound on one call (upstream's is about 126 s; the SDK's own timeout is shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(126);

/// Discovery errors (only when there is no cached answer to fall back to).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// ECS refused or failed.
    #[error("DiscoverPollEndpoint failed: {0}")]
    Api(#[from] ApiError),
    /// No answer within [`CALL_TIMEOUT`].
    #[error("DiscoverPollEndpoint did not answer within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Whether asking again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(e) => e.is_retryable(),
            Error::Timeout(_) => true,
        }
    }
}

struct Cached {
    endpoints: PollEndpoints,
    fetched: Instant,
}

/// The cache. One per process (shared by every ACS reconnect).
pub struct Discovery {
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery::new(CACHE_TTL)
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("ttl", &self.ttl).finish()
    }
}

impl Discovery {
    /// A cache whose answers stay fresh for `ttl`.
    pub fn new(ttl: Duration) -> Discovery {
        Discovery {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, arn: &str) -> Option<(PollEndpoints, bool)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(arn)
            .map(|c| (c.endpoints.clone(), c.fetched.elapsed() < self.ttl))
    }

    /// The endpoints for `container_instance`: cached if fresh, else asked; on failure the
    /// expired cached answer if there is one.
    pub async fn endpoints(
        &self,
        ecs: &dyn EcsApi,
        cluster: &str,
        container_instance: &str,
    ) -> Result<PollEndpoints, Error> {
        let cached = self.cached(container_instance);
        if let Some((endpoints, true)) = &cached {
            return Ok(endpoints.clone());
        }
        let asked = match tokio::time::timeout(
            CALL_TIMEOUT,
            ecs.discover_poll_endpoint(cluster, container_instance),
        )
        .await
        {
            Ok(Ok(endpoints)) => Ok(endpoints),
            Ok(Err(e)) => Err(Error::Api(e)),
            Err(_) => Err(Error::Timeout(CALL_TIMEOUT)),
        };
        match (asked, cached) {
            (Ok(endpoints), _) => {
                debug!(acs.endpoint = %endpoints.acs, "Discovered the ACS endpoint.");
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    container_instance.to_owned(),
                    Cached {
                        endpoints: endpoints.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(endpoints)
            }
            (Err(e), Some((stale, _))) => {
                warn!(error = %e, acs.endpoint = %stale.acs, "DiscoverPollEndpoint failed; using the expired cached endpoint.");
                Ok(stale)
            }
            (Err(e), None) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::{ErrorKind, RegisterRequest, RegisteredInstance};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Fake {
        calls: AtomicU32,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl EcsApi for Fake {
        async fn register_container_instance(
            &self,
            _: &RegisterRequest,
        ) -> Result<RegisteredInstance, ApiError> {
            unreachable!()
        }
        async fn create_cluster(&self, _: &str) -> Result<(), ApiError> {
            unreachable!()
        }
        async fn cluster_status(&self, _: &str) -> Result<Option<String>, ApiError> {
            unreachable!()
        }
        async fn discover_poll_endpoint(
            &self,
            _cluster: &str,
            ci: &str,
        ) -> Result<PollEndpoints, ApiError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(ApiError {
                    operation: "DiscoverPollEndpoint",
                    kind: ErrorKind::Server,
                    code: None,
                    message: "down".into(),
                });
            }
            Ok(PollEndpoints {
                acs: format!("https://acs-{n}/{ci}"),
                telemetry: None,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cached_for_ttl_per_arn_with_stale_fallback() {
        let ecs = Fake::default();
        let d = Discovery::new(Duration::from_secs(100));
        let a = d.endpoints(&ecs, "c", "arn1").await.unwrap();
        assert_eq!(d.endpoints(&ecs, "c", "arn1").await.unwrap(), a);
        assert_eq!(ecs.calls.load(Ordering::SeqCst), 1);
        // Another ARN is asked separately.
        d.endpoints(&ecs, "c", "arn2").await.unwrap();
        assert_eq!(ecs.calls.load(Ordering::SeqCst), 2);
        // Expired: asked again.
        tokio::time::advance(Duration::from_secs(101)).await;
        let b = d.endpoints(&ecs, "c", "arn1").await.unwrap();
        assert_ne!(a, b);
        // Expired and failing: the stale answer.
        tokio::time::advance(Duration::from_secs(101)).await;
        ecs.fail.store(true, Ordering::SeqCst);
        assert_eq!(d.endpoints(&ecs, "c", "arn1").await.unwrap(), b);
        // Failing with nothing cached: the error.
        let e = d.endpoints(&ecs, "c", "arn3").await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}
