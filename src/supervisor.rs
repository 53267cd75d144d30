//! The supervisor: owns every long-running subsystem, one cancellation token and one task tracker.
//!
//! A subsystem is an async function of a child token returning `Result<(), Failure>`. When it
//! fails it is logged with its error and restarted with backoff (reset after a healthy minute);
//! a terminal failure ends the process with exit code 5; an exit without cancellation is treated
//! as a failure. Nothing is ever silently lost. Each subsystem also beats a liveness heartbeat
//! that the systemd watchdog loop checks ([`Supervisor::all_alive`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backoff::Policy;

/// Restart backoff for failed subsystems.
const RESTART: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, 0.2);
/// A subsystem that ran this long before failing restarts from the shortest backoff again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Why a subsystem stopped.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Terminal failures stop the agent with exit code 5.
    pub terminal: bool,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure worth a restart.
    pub fn transient(message: impl std::fmt::Display) -> Failure {
        Failure {
            terminal: false,
            message: message.to_string(),
        }
    }
    /// A failure that needs an operator.
    pub fn terminal(message: impl std::fmt::Display) -> Failure {
        Failure {
            terminal: true,
            message: message.to_string(),
        }
    }
}

/// A liveness handle: a subsystem calls [`Heartbeat::beat`] from its main loop.
#[derive(Clone)]
pub struct Heartbeat {
    name: &'static str,
    beats: Arc<Mutex<BTreeMap<&'static str, (Instant, Duration)>>>,
}

impl Heartbeat {
    /// Records that the subsystem is alive.
    pub fn beat(&self) {
        if let Some(entry) = self.beats.lock().expect("beats lock").get_mut(self.name) {
            entry.0 = Instant::now();
        }
    }
}

/// Owner of all subsystems.
#[derive(Clone)]
pub struct Supervisor {
    cancel: CancellationToken,
    tracker: TaskTracker,
    terminal_tx: mpsc::UnboundedSender<String>,
    beats: Arc<Mutex<BTreeMap<&'static str, (Instant, Duration)>>>,
}

impl Supervisor {
    /// A supervisor and the receiver of terminal failures.
    pub fn new(cancel: CancellationToken) -> (Supervisor, mpsc::UnboundedReceiver<String>) {
        let (terminal_tx, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                cancel,
                tracker: TaskTracker::new(),
                terminal_tx,
                beats: Arc::default(),
            },
            rx,
        )
    }

    /// The root token.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// A heartbeat for `name` that counts as stale after `max_silence`.
    pub fn heartbeat(&self, name: &'static str, max_silence: Duration) -> Heartbeat {
        self.beats
            .lock()
            .expect("beats lock")
            .insert(name, (Instant::now(), max_silence));
        Heartbeat {
            name,
            beats: self.beats.clone(),
        }
    }

    /// Names of subsystems whose heartbeat is stale; empty when all are alive.
    pub fn stale(&self) -> Vec<&'static str> {
        let now = Instant::now();
        self.beats
            .lock()
            .expect("beats lock")
            .iter()
            .filter(|(_, (last, max))| now.duration_since(*last) > *max)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Whether every heartbeat is fresh.
    pub fn all_alive(&self) -> bool {
        self.stale().is_empty()
    }

    /// Runs `make(child_token)` as subsystem `name`, restarting it on failure.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let terminal_tx = self.terminal_tx.clone();
        let span = info_span!("subsystem", name);
        self.tracker.spawn(
            async move {
                let mut backoff = RESTART.start();
                loop {
                    let started = Instant::now();
                    let result = make(cancel.child_token()).await;
                    if cancel.is_cancelled() {
                        if let Err(e) = result {
                            warn!(error = %e, "Subsystem failed while stopping.");
                        }
                        return;
                    }
                    let failure = match result {
                        Ok(()) => Failure::transient("exited unexpectedly"),
                        Err(f) => f,
                    };
                    if failure.terminal {
                        error!(error = %failure, "Subsystem failed terminally; stopping the agent.");
                        let _ = terminal_tx.send(format!("{name}: {failure}"));
                        return;
                    }
                    if started.elapsed() > HEALTHY_AFTER {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    error!(error = %failure, restart_in = ?delay, "Subsystem failed; restarting.");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    info!("Restarting subsystem.");
                }
            }
            .instrument(span),
        );
    }

    /// Cancels everything and waits up to `deadline` for subsystems to finish. Returns whether
    /// they all finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn failed_subsystems_restart_with_backoff() {
        let (sup, _rx) = Supervisor::new(CancellationToken::new());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move |_c| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Err(Failure::transient("boom"))
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 1 + 2 + 4 s of backoff (+ jitter) fit in 10 s: at least 3 runs, at most 4.
        let n = runs.load(Ordering::SeqCst);
        assert!((3..=4).contains(&n), "{n}");
        assert!(sup.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn terminal_failures_reach_main() {
        let (sup, mut rx) = Supervisor::new(CancellationToken::new());
        sup.spawn("reg", |_c| async { Err(Failure::terminal("deregistered")) });
        assert_eq!(rx.recv().await.unwrap(), "reg: deregistered");
    }

    #[tokio::test]
    async fn shutdown_cancels_and_waits() {
        let (sup, _rx) = Supervisor::new(CancellationToken::new());
        let done = Arc::new(AtomicU32::new(0));
        let d = done.clone();
        sup.spawn("loop", move |c| {
            let d = d.clone();
            async move {
                c.cancelled().await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        assert!(sup.shutdown(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_heartbeats_are_reported() {
        let (sup, _rx) = Supervisor::new(CancellationToken::new());
        let hb = sup.heartbeat("engine", Duration::from_secs(5));
        assert!(sup.all_alive());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sup.stale(), vec!["engine"]);
        hb.beat();
        assert!(sup.all_alive());
    }
}
