//! What the collector remembers of each tracked container between rounds: its ring of TCS points,
//! its last two samples (for Docker's `cpu_stats`/`precpu_stats`), its name and start time.
//!
//! Pure bookkeeping over rounds the reader produced: no I/O.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::SystemTime;

use serde::Serialize;

use super::cgroup::{Round, Sample};
use super::sets::{self, ContainerSets, Point, SetError};
use super::{GRACE, RING_CAPACITY, Running, docker};

/// One tracked container.
#[derive(Debug)]
pub struct Tracked {
    /// Docker's name (for the JSON's `name` and `/metrics` labels).
    pub name: String,
    /// When Docker started it, if known.
    pub started_at: Option<SystemTime>,
    /// When the collector first saw it: the grace period's start when `started_at` is unknown.
    pub first_seen: SystemTime,
    /// TCS points, oldest first, at most [`RING_CAPACITY`].
    pub ring: VecDeque<Point>,
    /// The latest sample.
    pub last: Option<Sample>,
    /// The sample before it.
    pub prev: Option<Sample>,
}

/// Received and sent bytes per second between the last two samples (the v4 `/stats`
/// `network_rate_stats`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NetworkRate {
    /// Received bytes per second.
    pub rx_bytes_per_sec: f64,
    /// Sent bytes per second.
    pub tx_bytes_per_sec: f64,
}

/// Every tracked container.
#[derive(Debug, Default)]
pub struct Book {
    /// By Docker id.
    pub containers: HashMap<String, Tracked>,
    /// The last round's time.
    pub last_round: Option<SystemTime>,
}

impl Book {
    /// Records a round: tracks exactly `running` (forgetting the rest) and appends each sample.
    pub fn record(&mut self, running: &[Running], round: Round, now: SystemTime) {
        let ids: HashSet<&str> = running.iter().map(|r| r.docker_id.as_str()).collect();
        self.containers.retain(|id, _| ids.contains(id.as_str()));
        for r in running {
            let t = self
                .containers
                .entry(r.docker_id.clone())
                .or_insert_with(|| Tracked {
                    name: String::new(),
                    started_at: None,
                    first_seen: now,
                    ring: VecDeque::with_capacity(RING_CAPACITY),
                    last: None,
                    prev: None,
                });
            if t.name != r.name {
                t.name.clone_from(&r.name);
            }
            t.started_at = r.started_at;
        }
        for (id, sample) in round.samples {
            let Some(t) = self.containers.get_mut(&id) else {
                continue;
            };
            let prev = t.last.as_ref().zip(t.ring.back());
            let p = sets::point(prev, &sample);
            if t.ring.len() == RING_CAPACITY {
                t.ring.pop_front();
            }
            t.ring.push_back(p);
            t.prev = t.last.replace(sample);
        }
        self.last_round = Some(now);
    }

    /// Whether `docker_id` started (or was first seen) less than [`GRACE`] before the last
    /// round.
    fn young(&self, t: &Tracked) -> bool {
        let start = t.started_at.unwrap_or(t.first_seen);
        self.last_round
            .and_then(|now| now.duration_since(start).ok())
            .is_none_or(|age| age < GRACE)
    }

    /// The TCS sets of one container over its unsent points.
    pub fn sets(&self, docker_id: &str, network: bool) -> Result<ContainerSets, SetError> {
        let t = self.containers.get(docker_id).ok_or(SetError::NotSampled)?;
        sets::container_sets(&t.ring, network, self.young(t))
    }

    /// Marks every point of every container sent.
    pub fn mark_sent(&mut self) {
        for t in self.containers.values_mut() {
            for p in &mut t.ring {
                p.sent = true;
            }
        }
    }

    /// Docker's stats JSON of one container, if it has a sample.
    pub fn docker_stats(&self, docker_id: &str) -> Option<serde_json::Value> {
        let t = self.containers.get(docker_id)?;
        let last = t.last.as_ref()?;
        Some(docker::stats_json(
            &t.name,
            docker_id,
            last,
            t.prev.as_ref(),
        ))
    }

    /// The network rates of the last sample, once there are two samples with a network.
    pub fn network_rate(&self, docker_id: &str) -> Option<NetworkRate> {
        let n = self.containers.get(docker_id)?.ring.back()?.net?;
        (!n.rx_bps.is_nan() && !n.tx_bps.is_nan()).then_some(NetworkRate {
            rx_bytes_per_sec: n.rx_bps,
            tx_bytes_per_sec: n.tx_bps,
        })
    }
}
