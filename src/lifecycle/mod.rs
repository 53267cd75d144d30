//! Fleet life of the instance: Spot interruptions, Auto Scaling scale-in and warm pools
//! (packaging spec §6, protocol spec §13).
//!
//! - [`signals`] polls IMDS and emits [`signals::Signal`]s; [`decide`] (pure) turns each into an
//!   [`Action`]; [`Lifecycle::run`] executes it with [`drain`]: DRAINING at once for a Spot
//!   notice (and a rebalance recommendation when configured), the full drain for the target state
//!   `Terminated` (DRAINING, wait for the tasks or the deadline while heartbeating the lifecycle
//!   action, then CompleteLifecycleAction CONTINUE for the configured hook only).
//! - [`warmpool`] waits for `InService` before registration (`ECS_WARM_POOLS_CHECK`).
//! - [`startup_jitter`] spreads a fleet's first registrations.
//! - [`autoscaling`] is the Auto Scaling seam.
//!
//! Progress ("DRAINING set", "termination handled") is persisted in the store (table
//! `lifecycle`), so a restart neither repeats nor skips a step. While draining, the `draining`
//! flag (a `watch` channel created by `app`) is true: the Docker watchdog must not restart Docker
//! then. The health board shows a `lifecycle` component. This module never stops tasks or
//! containers itself; ECS does that through the control plane.

pub mod autoscaling;
pub mod drain;
pub mod signals;
pub mod warmpool;

#[cfg(test)]
pub(crate) mod fakes;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::aws::ApiError;
use crate::config::{LifecycleConfig, RebalanceAction};
use crate::ecs::EcsApi;
use crate::health;
use crate::imds::{self, InstanceMetadata};
use crate::store::{self, Store, Table};
use crate::systemd;

use autoscaling::AutoScalingApi;
use drain::{Completion, Heartbeats, TaskCensus, WaitOutcome};
use signals::{PollPlan, Signal};

/// The store table of lifecycle progress.
pub const LIFECYCLE: Table = Table("lifecycle");
/// Key of the [`DrainRecord`].
pub const DRAIN_KEY: &str = "drain";
/// Health board component name.
pub const COMPONENT: &str = "lifecycle";

/// Lifecycle errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// IMDS failed.
    #[error(transparent)]
    Imds(#[from] imds::Error),
    /// An ECS call failed.
    #[error("ECS {0}")]
    Ecs(ApiError),
    /// An Auto Scaling call failed.
    #[error("Auto Scaling {0}")]
    AutoScaling(ApiError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// `ECS_WARM_POOLS_CHECK` is on but the instance never got a target lifecycle state.
    #[error(
        "ECS_WARM_POOLS_CHECK is on, but IMDS had no Auto Scaling target lifecycle state after {reads} reads: is this instance in an Auto Scaling group with a warm pool? Set ECS_WARM_POOLS_CHECK=false otherwise"
    )]
    NoLifecycleState {
        /// Reads made.
        reads: u32,
    },
    /// Shutdown was requested while waiting.
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl Error {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Imds(e) => e.is_retryable(),
            Error::Ecs(e) | Error::AutoScaling(e) => e.is_retryable(),
            Error::Store(_) | Error::NoLifecycleState { .. } | Error::Cancelled => false,
        }
    }

    /// Whether this needs an operator (exit 5): a warm-pool wait that cannot work here.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Error::NoLifecycleState { .. } | Error::Imds(imds::Error::V2Unavailable { .. })
        )
    }
}

/// Why the instance drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A Spot interruption notice.
    SpotInterruption,
    /// A rebalance recommendation, with `ECS_HOSTD_REBALANCE=drain`.
    Rebalance,
    /// The Auto Scaling target lifecycle state became `Terminated`.
    Terminating,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::SpotInterruption => "Spot interruption notice",
            Reason::Rebalance => "rebalance recommendation",
            Reason::Terminating => "Auto Scaling termination",
        })
    }
}

/// Drain progress, persisted so a restart neither repeats nor skips a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// The EC2 instance it belongs to (a record from another instance is ignored).
    pub ec2_instance_id: String,
    /// The container instance that was set to DRAINING.
    pub container_instance_arn: String,
    /// What started the drain.
    pub reason: Reason,
    /// Unix seconds when DRAINING was set.
    pub draining_since: u64,
    /// Unix seconds when the termination flow started (the drain deadline counts from here).
    pub termination_since: Option<u64>,
    /// The termination flow finished (hook completed, or nothing to complete).
    pub termination_done: bool,
}

/// What to do about a signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing (already done, or not enabled).
    Nothing,
    /// Log and show it; no change.
    Observe(String),
    /// Set DRAINING now, without waiting for tasks.
    MarkDraining(Reason),
    /// The full termination drain.
    Terminate,
}

/// Decides what a signal means, given the configuration and the progress so far. Pure.
pub fn decide(config: &LifecycleConfig, record: Option<&DrainRecord>, signal: &Signal) -> Action {
    let draining = record.is_some();
    match signal {
        Signal::Spot(_) if config.spot_instance_draining && !draining => {
            Action::MarkDraining(Reason::SpotInterruption)
        }
        Signal::Spot(n) => Action::Observe(format!(
            "Spot interruption notice: {} at {}",
            n.action, n.time
        )),
        Signal::TargetState(s) if s == "Terminated" => {
            if record.is_some_and(|r| r.termination_done) {
                Action::Nothing
            } else {
                Action::Terminate
            }
        }
        Signal::TargetState(s) => {
            Action::Observe(format!("Auto Scaling target lifecycle state: {s}"))
        }
        Signal::Rebalance(_) if config.rebalance == RebalanceAction::Drain && !draining => {
            Action::MarkDraining(Reason::Rebalance)
        }
        Signal::Rebalance(t) => {
            Action::Observe(format!("EC2 rebalance recommendation (notice time {t})"))
        }
        Signal::Maintenance(events) => {
            Action::Observe(format!("EC2 scheduled maintenance: {events}"))
        }
    }
}

/// The `draining` flag: `true` from the moment this instance starts draining. The Sender lives in
/// `app`; subsystems that must behave differently while draining (the Docker watchdog must not
/// restart Docker) hold a Receiver from [`watch::Sender::subscribe`].
pub fn draining_flag() -> watch::Sender<bool> {
    watch::Sender::new(false)
}

/// Waits a random time in `[0, max)` before a new instance's first registration, so a fleet that
/// boots together spreads its ECS calls. `false` when cancelled.
pub async fn startup_jitter(max: Duration, cancel: &CancellationToken) -> bool {
    let delay = crate::backoff::jitter(max);
    if delay.is_zero() {
        return true;
    }
    info!(delay = ?delay, max = ?max, "First registration of this instance: waiting a random start-up delay (ECS_HOSTD_STARTUP_JITTER).");
    systemd::status(&format!(
        "waiting {:.1}s (start-up jitter) before the first registration",
        delay.as_secs_f64()
    ));
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Reads the drain record if it belongs to this instance.
pub fn load_record(store: &Store, ec2_instance_id: &str) -> Result<Option<DrainRecord>, Error> {
    let record: Option<DrainRecord> = store.get(LIFECYCLE, DRAIN_KEY)?;
    Ok(record.filter(|r| r.ec2_instance_id == ec2_instance_id))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The lifecycle subsystem of one registered container instance.
pub struct Lifecycle {
    /// Settings.
    pub config: LifecycleConfig,
    /// Cluster.
    pub cluster: String,
    /// This container instance.
    pub container_instance_arn: String,
    /// This EC2 instance.
    pub ec2_instance_id: String,
    /// IMDS (shared token cache).
    pub imds: Arc<dyn InstanceMetadata>,
    /// ECS.
    pub ecs: Arc<dyn EcsApi>,
    /// Auto Scaling.
    pub autoscaling: Arc<dyn AutoScalingApi>,
    /// Which tasks remain while draining.
    pub census: Arc<dyn TaskCensus>,
    /// Durable store.
    pub store: Store,
    /// Health board.
    pub board: health::Board,
    /// The `draining` flag.
    pub draining: watch::Sender<bool>,
    /// Poll periods (the Spot switch is decided by `run`).
    pub plan: PollPlan,
}

impl Lifecycle {
    /// Runs until cancelled. Errors are worth a restart (the supervisor's); progress survives in
    /// the store.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), Error> {
        // A record of another container instance (registered afresh since) does not count.
        let mut record = load_record(&self.store, &self.ec2_instance_id)?
            .filter(|r| r.container_instance_arn == self.container_instance_arn);
        match &record {
            Some(r) => self.publish_draining(r),
            None => self.board.set(COMPONENT, true, "in service"),
        }
        let plan = PollPlan {
            spot: self.config.spot_instance_draining && record.is_none(),
            ..self.plan.clone()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let pollers_cancel = cancel.child_token();
        let _stop_pollers = pollers_cancel.clone().drop_guard();
        tokio::spawn(signals::run(self.imds.clone(), plan, tx, pollers_cancel));

        if record
            .as_ref()
            .is_some_and(|r| r.termination_since.is_some() && !r.termination_done)
        {
            info!("Resuming an unfinished termination drain.");
            self.terminate(&mut record, &cancel).await?;
        }
        loop {
            let signal = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                s = rx.recv() => match s {
                    Some(s) => s,
                    None => {
                        // Every poller ended (only on cancellation); wait for it.
                        cancel.cancelled().await;
                        return Ok(());
                    }
                },
            };
            match decide(&self.config, record.as_ref(), &signal) {
                Action::Nothing => {}
                Action::Observe(what) => match signal {
                    Signal::TargetState(ref s) if s == "InService" => info!("{what}."),
                    _ => warn!(signal = ?signal, "{what}."),
                },
                Action::MarkDraining(reason) => {
                    self.mark_draining(reason, &mut record, &cancel).await?;
                }
                Action::Terminate => self.terminate(&mut record, &cancel).await?,
            }
        }
    }

    fn publish_draining(&self, r: &DrainRecord) {
        self.draining.send_replace(true);
        let line = if r.termination_done {
            format!("draining ({}); lifecycle action handled", r.reason)
        } else {
            format!("draining ({})", r.reason)
        };
        self.board.set(COMPONENT, true, line.clone());
        systemd::status(&line);
    }

    /// DRAINING (once), persisted.
    async fn mark_draining(
        &self,
        reason: Reason,
        record: &mut Option<DrainRecord>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        if record.is_some() {
            return Ok(());
        }
        info!(%reason, instance.arn = %self.container_instance_arn, "Draining: setting the container instance to DRAINING.");
        // Stop accepting work locally before ECS hears about it.
        self.draining.send_replace(true);
        if let Err(e) = drain::mark_draining(
            &*self.ecs,
            &self.cluster,
            &self.container_instance_arn,
            drain::MARK_BUDGET,
            cancel,
        )
        .await
        {
            // Logged once, by the supervisor, which restarts the subsystem: the pollers then see
            // the notice again and the call is retried.
            if !matches!(e, Error::Cancelled) {
                self.board
                    .set(COMPONENT, false, format!("cannot set DRAINING: {e}"));
            }
            return Err(e);
        }
        let r = DrainRecord {
            ec2_instance_id: self.ec2_instance_id.clone(),
            container_instance_arn: self.container_instance_arn.clone(),
            reason,
            draining_since: now_secs(),
            termination_since: None,
            termination_done: false,
        };
        self.store.put(LIFECYCLE, DRAIN_KEY, &r)?;
        info!(%reason, "Container instance is DRAINING; ECS moves its service tasks elsewhere.");
        // publish_draining raises the draining flag; the metrics pipeline flushes on it (§6.4).
        self.publish_draining(&r);
        *record = Some(r);
        Ok(())
    }

    /// The full termination drain (spec §6.3), resumable.
    async fn terminate(
        &self,
        record: &mut Option<DrainRecord>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        self.mark_draining(Reason::Terminating, record, cancel)
            .await?;
        let Some(r) = record.as_mut() else {
            return Ok(());
        };
        let since = *r.termination_since.get_or_insert_with(now_secs);
        self.store.put(LIFECYCLE, DRAIN_KEY, &*r)?;

        let target = drain::resolve_hook(
            self.config.lifecycle_hook.as_deref(),
            &self.ec2_instance_id,
            &*self.imds,
            &*self.autoscaling,
            self.config.heartbeat_interval,
        )
        .await;
        let elapsed = Duration::from_secs(now_secs().saturating_sub(since));
        let left = self.config.drain_timeout.saturating_sub(elapsed);
        info!(deadline_in = ?left, hook = target.as_ref().map(|t| t.hook.as_str()), "Draining for termination: waiting for the instance's tasks to stop.");
        let heartbeats = target.as_ref().map(|t| Heartbeats {
            api: &*self.autoscaling,
            target: t,
            instance_id: &self.ec2_instance_id,
        });
        let board = &self.board;
        let mut shown = None;
        let outcome = drain::wait_for_tasks(
            &*self.census,
            tokio::time::Instant::now() + left,
            self.config.drain_poll_interval,
            heartbeats,
            cancel,
            |rem| {
                if shown != Some(rem) {
                    shown = Some(rem);
                    let line = format!(
                        "draining (Auto Scaling termination): waiting for {} task(s) to stop; {} standalone task(s) stay until the instance ends",
                        rem.waiting_for, rem.standalone
                    );
                    board.set(COMPONENT, true, line.clone());
                    systemd::status(&line);
                }
            },
        )
        .await?;
        match outcome {
            WaitOutcome::TasksGone => info!("Every task draining waits for has stopped."),
            WaitOutcome::DeadlineReached(rem) => warn!(
                remaining = rem.waiting_for,
                timeout = ?self.config.drain_timeout,
                "Drain deadline (ECS_HOSTD_DRAIN_TIMEOUT) reached with tasks still stopping; completing anyway."
            ),
        }
        if let Some(t) = &target {
            match drain::complete(&*self.autoscaling, t, &self.ec2_instance_id, cancel).await {
                Ok(Completion::Completed) => {
                    info!(group = %t.group, hook = %t.hook, "Lifecycle action completed (CONTINUE); Auto Scaling terminates the instance.")
                }
                Ok(Completion::AlreadyOver(e)) => {
                    warn!(error = %e, "The lifecycle action was already over (timed out or completed elsewhere).")
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => {
                    // Not retried forever: the hook's timeout applies its default result.
                    error!(error = %e, group = %t.group, hook = %t.hook, "Could not complete the lifecycle action; Auto Scaling applies the hook's default result when its timeout expires.");
                }
            }
        }
        r.termination_done = true;
        self.store.put(LIFECYCLE, DRAIN_KEY, &*r)?;
        self.publish_draining(r);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
