//! The health board: every subsystem reports its state here (Docker reachable, registered,
//! watchdog actions, ...), and the local API, `ecs-hostd status` and the systemd watchdog read it.
//!
//! A `watch` channel holds the latest snapshot; writers replace one component at a time. It never
//! decides anything itself.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One component's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Healthy or not.
    pub ok: bool,
    /// What it is doing or what is wrong, for operators.
    pub detail: String,
    /// Unix seconds when `ok` last changed.
    pub since: u64,
}

/// All components by name.
pub type Snapshot = BTreeMap<String, Component>;

/// Shared handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Board {
    tx: watch::Sender<Snapshot>,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Board {
    /// An empty board.
    pub fn new() -> Board {
        Board {
            tx: watch::Sender::new(Snapshot::new()),
        }
    }

    /// Sets one component's state; `since` moves only when `ok` changes.
    pub fn set(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        // Subscribers (the systemd status line) wake only on a change, not on every report.
        self.tx.send_if_modified(|s| {
            if let Some(c) = s.get_mut(name) {
                if c.ok == ok && c.detail == detail {
                    return false;
                }
                if c.ok != ok {
                    c.since = now();
                }
                c.ok = ok;
                c.detail = detail;
                return true;
            }
            s.insert(
                name.to_owned(),
                Component {
                    ok,
                    detail,
                    since: now(),
                },
            );
            true
        });
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    /// Whether every component is healthy.
    pub fn all_ok(&self) -> bool {
        self.tx.borrow().values().all(|c| c.ok)
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_wake_only_when_a_component_changes() {
        let b = Board::new();
        b.set("docker", true, "up");
        let mut rx = b.subscribe();
        rx.borrow_and_update();
        b.set("docker", true, "up");
        assert!(
            !rx.has_changed().unwrap(),
            "the same report again is no change"
        );
        b.set("docker", true, "still up");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        b.set("docker", false, "still up");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        b.set("api", true, "listening");
        assert!(rx.has_changed().unwrap(), "a new component is a change");
    }

    #[test]
    fn since_moves_only_on_change() {
        let b = Board::new();
        b.set("docker", true, "up");
        let first = b.snapshot()["docker"].since;
        b.set("docker", true, "still up");
        assert_eq!(b.snapshot()["docker"].since, first);
        assert_eq!(b.snapshot()["docker"].detail, "still up");
        assert!(b.all_ok());
        b.set("registration", false, "waiting");
        assert!(!b.all_ok());
    }
}
