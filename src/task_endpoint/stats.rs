//! Container stats for metadata `/stats` and `/task/stats` (task-metadata.md §6).
//!
//! For now one Docker stats call per request (`stream=false`, not one-shot, so Docker fills
//! `precpu_stats` from a second cycle, about a second later), passed through as Docker's JSON.
//! TODO(issue 18 follow-up): read the cgroup collector's last sample instead (design.md Round 2:
//! "no per-container Docker stats stream"); then `network_rate_stats` can be added.
//!
//! Never holds a stream open; never changes a container.

use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;

/// Deadline of one stats call: inside the server's 5 s answer deadline.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(4);

/// Where container stats come from.
#[async_trait]
pub trait StatsSource: Send + Sync {
    /// The stats of container `docker_id`, as Docker's `ContainerStats` JSON object.
    async fn stats(&self, docker_id: &str) -> Result<serde_json::Value, String>;
}

#[async_trait]
impl StatsSource for bollard::Docker {
    async fn stats(&self, docker_id: &str) -> Result<serde_json::Value, String> {
        let opts = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(false)
            .build();
        let mut stream = self.stats(docker_id, Some(opts));
        let first = tokio::time::timeout(STATS_TIMEOUT, stream.next())
            .await
            .map_err(|_| format!("Docker stats did not answer within {STATS_TIMEOUT:?}"))?;
        match first {
            Some(Ok(s)) => serde_json::to_value(s).map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("Docker sent no stats".into()),
        }
    }
}

/// No stats anywhere (tests, or an agent without Docker access).
pub struct NoStats;

#[async_trait]
impl StatsSource for NoStats {
    async fn stats(&self, _docker_id: &str) -> Result<serde_json::Value, String> {
        Err("no stats source".into())
    }
}
