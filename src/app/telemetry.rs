//! Wiring of task telemetry: which containers the stats collector samples (the engine's running
//! containers), and what the TCS session reports ([`TcsSource`]: the engine's snapshot, the
//! collector's stats sets, the health board's Docker state). Conversions only.

use std::time::SystemTime;

use crate::ecs::tcs;
use crate::engine::introspection::{EngineView, Snapshot};
use crate::health;
use crate::stats::{self, Stats};
use crate::task_endpoint::{ContainerFacts, TaskFacts};

/// Docker's RFC 3339 start time as a `SystemTime`.
fn started_at(c: &ContainerFacts) -> Option<SystemTime> {
    let s = c.started_at.as_deref()?;
    let t = aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime)
        .ok()?;
    SystemTime::try_from(t).ok()
}

/// Running containers of tasks that are not stopped, with their task, borrowed from the
/// snapshot (the collector asks every round: nothing of a task is copied but what it takes).
fn running(snap: &Snapshot) -> impl Iterator<Item = (&TaskFacts, Vec<&ContainerFacts>)> {
    snap.metadata
        .tasks
        .iter()
        .filter(|t| t.known_status != "STOPPED" && !t.arn.is_empty())
        .filter_map(|t| {
            let containers: Vec<&ContainerFacts> = t
                .containers
                .iter()
                .filter(|c| c.running && c.docker_id.is_some())
                .collect();
            (!containers.is_empty()).then_some((t, containers))
        })
}

/// The collector's targets: the engine's running containers, and its snapshot channel to wake
/// an idle collector when a task starts.
pub struct EngineTargets(pub EngineView);

impl stats::Targets for EngineTargets {
    fn running(&self) -> Vec<stats::Running> {
        sample_targets(&self.0)
    }

    async fn changed(&mut self) -> bool {
        self.0.changed().await
    }
}

/// What the collector samples: every running container of the engine's tasks.
pub(super) fn sample_targets(view: &EngineView) -> Vec<stats::Running> {
    let snap = view.snapshot();
    running(&snap)
        .flat_map(|(_, cs)| cs)
        .filter_map(|c| {
            Some(stats::Running {
                started_at: started_at(c),
                docker_id: c.docker_id.clone()?,
                name: c.docker_name.clone(),
            })
        })
        .collect()
}

/// The TCS session's view of the agent.
pub(super) struct TcsSource {
    pub(super) view: EngineView,
    /// `None` with `ECS_DISABLE_METRICS`.
    pub(super) stats: Option<Stats>,
    pub(super) board: health::Board,
}

impl tcs::Source for TcsSource {
    fn tasks(&self) -> Vec<tcs::TaskView> {
        let snap = self.view.snapshot();
        running(&snap)
            .map(|(t, cs)| tcs::TaskView {
                arn: t.arn.clone(),
                family: t.family.clone(),
                revision: t.revision.clone(),
                containers: cs
                    .into_iter()
                    .filter_map(|c| {
                        Some(tcs::ContainerView {
                            started_at: started_at(c),
                            // Bridge-mode containers report network stats (tcs.md §6.3).
                            network: c.networks.iter().any(|n| n.name == "bridge"),
                            health: c
                                .health
                                .as_ref()
                                .map(|h| (h.status.as_str().to_owned(), h.since_ms)),
                            docker_id: c.docker_id.clone()?,
                            name: c.name.clone(),
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    fn sets(
        &self,
        docker_id: &str,
        network: bool,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let stats = self.stats.as_ref().ok_or("metrics are disabled")?;
        let sets = stats.sets(docker_id, network).map_err(|e| e.to_string())?;
        match serde_json::to_value(sets) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(other) => Err(format!("stats sets are not an object: {other}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn mark_sent(&self) {
        if let Some(s) = &self.stats {
            s.mark_sent();
        }
    }

    fn runtime_ok(&self) -> Option<bool> {
        self.board.snapshot().get("docker").map(|c| c.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_start_times_parse() {
        let c = ContainerFacts {
            started_at: Some("2026-12-07T07:01:02.123456789Z".into()),
            ..Default::default()
        };
        let t = started_at(&c).unwrap();
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert_eq!(ms, 1_796_626_862_123);
        let none = ContainerFacts {
            started_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(
            started_at(&none)
                .is_none_or(|t| t < SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1))
        );
    }
}
