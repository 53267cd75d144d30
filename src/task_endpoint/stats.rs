//! Container stats for metadata `/stats` and `/task/stats` (task-metadata.md §6): the stats
//! collector's last samples ([`crate::stats::Stats`], read from cgroup files) in Docker's stats
//! JSON shape, plus `network_rate_stats` once two samples exist. No Docker call per request.
//!
//! Never reads files or asks Docker itself; never changes a container.

use async_trait::async_trait;

/// Where container stats come from.
#[async_trait]
pub trait StatsSource: Send + Sync {
    /// The stats of container `docker_id`, as Docker's `ContainerStats` JSON object (`{}` while
    /// it is tracked but not sampled yet); `Err` when it is not tracked.
    async fn stats(&self, docker_id: &str) -> Result<serde_json::Value, String>;
}

#[async_trait]
impl StatsSource for crate::stats::Stats {
    async fn stats(&self, docker_id: &str) -> Result<serde_json::Value, String> {
        if !self.tracks(docker_id) {
            return Err("the stats collector does not track this container".into());
        }
        let mut value = self
            .docker_stats(docker_id)
            .unwrap_or_else(|| serde_json::json!({}));
        if let (Some(rate), Some(object)) = (self.network_rate(docker_id), value.as_object_mut())
            && let Ok(rate) = serde_json::to_value(rate)
        {
            object.insert("network_rate_stats".into(), rate);
        }
        Ok(value)
    }
}

/// No stats anywhere (`ECS_DISABLE_METRICS`: every stats request answers 500).
pub struct NoStats;

#[async_trait]
impl StatsSource for NoStats {
    async fn stats(&self, _docker_id: &str) -> Result<serde_json::Value, String> {
        Err("metrics are disabled (ECS_DISABLE_METRICS)".into())
    }
}
