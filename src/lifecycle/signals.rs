//! The lifecycle signals an instance gets through IMDS, polled and turned into [`Signal`]s:
//!
//! | signal | path | every |
//! |---|---|---|
//! | Spot interruption | `meta-data/spot/instance-action` | 1 s (protocol spec §13.1), only with `ECS_ENABLE_SPOT_INSTANCE_DRAINING` |
//! | Auto Scaling target state | `meta-data/autoscaling/target-lifecycle-state` | 5 s |
//! | Rebalance recommendation | `meta-data/events/recommendations/rebalance` | 30 s |
//! | Scheduled maintenance | `meta-data/events/maintenance/scheduled` | 5 min |
//!
//! Spot paths (interruption, rebalance) are polled only when `meta-data/instance-life-cycle` is
//! `spot`, or cannot be read (packaging spec §6.1). All pollers share one IMDSv2 client and its
//! token cache. A 404 is "no signal"; IMDS errors are logged once per outage and never end a
//! poller. Each signal is emitted once per change (the spot notice once, after which its poller
//! stops). This module decides nothing: what a signal means is [`super::decide`]'s business.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::imds::InstanceMetadata;

/// Spot interruption notice path.
pub const SPOT_PATH: &str = "latest/meta-data/spot/instance-action";
/// Auto Scaling target lifecycle state path.
pub const TARGET_STATE_PATH: &str = "latest/meta-data/autoscaling/target-lifecycle-state";
/// Rebalance recommendation path.
pub const REBALANCE_PATH: &str = "latest/meta-data/events/recommendations/rebalance";
/// Scheduled maintenance events path.
pub const MAINTENANCE_PATH: &str = "latest/meta-data/events/maintenance/scheduled";
/// `spot`, `on-demand`, `scheduled`, ...
pub const LIFE_CYCLE_PATH: &str = "latest/meta-data/instance-life-cycle";

/// A Spot interruption notice (`{"action": "terminate", "time": "...Z"}`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SpotNotice {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When the action happens (UTC, ISO 8601).
    pub time: String,
}

/// A lifecycle signal, emitted once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The instance will be interrupted.
    Spot(SpotNotice),
    /// The Auto Scaling target lifecycle state, e.g. `InService`, `Terminated`, `Warmed:Stopped`.
    TargetState(String),
    /// A rebalance recommendation, with its notice time.
    Rebalance(String),
    /// Scheduled maintenance events (raw JSON array), when there are any.
    Maintenance(String),
}

/// What to poll and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPlan {
    /// Poll the Spot interruption notice (draining enabled and not done already).
    pub spot: bool,
    /// Spot notice period.
    pub spot_every: Duration,
    /// Target lifecycle state period.
    pub target_state_every: Duration,
    /// Rebalance recommendation period.
    pub rebalance_every: Duration,
    /// Scheduled maintenance period.
    pub maintenance_every: Duration,
}

impl PollPlan {
    /// The documented periods (module docs).
    pub fn standard(spot: bool) -> PollPlan {
        PollPlan {
            spot,
            spot_every: Duration::from_secs(1),
            target_state_every: Duration::from_secs(5),
            rebalance_every: Duration::from_secs(30),
            maintenance_every: Duration::from_secs(300),
        }
    }
}

/// Parses a Spot instance-action body; other actions and invalid JSON are ignored (protocol spec
/// §13.1).
pub fn parse_spot_notice(body: &str) -> Option<SpotNotice> {
    let notice: SpotNotice = serde_json::from_str(body).ok()?;
    matches!(notice.action.as_str(), "terminate" | "stop" | "hibernate").then_some(notice)
}

/// Parses a rebalance recommendation body into its notice time.
pub fn parse_rebalance(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rebalance {
        notice_time: String,
    }
    serde_json::from_str::<Rebalance>(body)
        .ok()
        .map(|r| r.notice_time)
}

/// What one poll of a path yields.
enum Step {
    /// Nothing new.
    Continue,
    /// Emit a signal and keep polling.
    Emit(Signal),
    /// Emit a signal and stop this poller.
    EmitAndStop(Signal),
}

/// Runs every poller of `plan` until `cancel` fires or the receiver is dropped.
pub async fn run(
    imds: Arc<dyn InstanceMetadata>,
    plan: PollPlan,
    tx: mpsc::Sender<Signal>,
    cancel: CancellationToken,
) {
    let spot_capable = match imds.get(LIFE_CYCLE_PATH).await {
        Ok(Some(kind)) => {
            let spot = kind.trim() == "spot";
            info!(instance.life_cycle = %kind.trim(), spot_notices = spot && plan.spot, "Lifecycle signals: polling IMDS.");
            spot
        }
        Ok(None) | Err(_) => {
            info!("Instance life cycle unknown; polling the Spot paths anyway.");
            true
        }
    };

    let spot = async {
        if !(spot_capable && plan.spot) {
            return;
        }
        poll(
            &*imds,
            SPOT_PATH,
            plan.spot_every,
            &tx,
            &cancel,
            |body| match body.and_then(parse_spot_notice) {
                Some(n) => Step::EmitAndStop(Signal::Spot(n)),
                None => Step::Continue,
            },
        )
        .await;
    };

    let mut last_state: Option<String> = None;
    let target = poll(
        &*imds,
        TARGET_STATE_PATH,
        plan.target_state_every,
        &tx,
        &cancel,
        |body| {
            let state = body.map(str::trim).filter(|s| !s.is_empty());
            if state == last_state.as_deref() {
                return Step::Continue;
            }
            last_state = state.map(str::to_owned);
            match state {
                Some(s) => Step::Emit(Signal::TargetState(s.to_owned())),
                None => Step::Continue,
            }
        },
    );

    let mut last_notice: Option<String> = None;
    let rebalance = async {
        if !spot_capable {
            return;
        }
        poll(
            &*imds,
            REBALANCE_PATH,
            plan.rebalance_every,
            &tx,
            &cancel,
            |body| {
                let notice = body.and_then(parse_rebalance);
                if notice.is_none() || notice == last_notice {
                    return Step::Continue;
                }
                last_notice = notice.clone();
                Step::Emit(Signal::Rebalance(notice.unwrap_or_default()))
            },
        )
        .await;
    };

    let mut last_events: Option<String> = None;
    let maintenance = poll(
        &*imds,
        MAINTENANCE_PATH,
        plan.maintenance_every,
        &tx,
        &cancel,
        |body| {
            let events = body
                .map(str::trim)
                .filter(|b| !b.is_empty() && *b != "[]")
                .map(str::to_owned);
            if events == last_events {
                return Step::Continue;
            }
            last_events = events.clone();
            match events {
                Some(e) => Step::Emit(Signal::Maintenance(e)),
                None => Step::Continue,
            }
        },
    );

    tokio::join!(spot, target, rebalance, maintenance);
}

/// Polls one path every `every` until cancelled, the receiver is gone, or `step` says stop.
async fn poll(
    imds: &dyn InstanceMetadata,
    path: &'static str,
    every: Duration,
    tx: &mpsc::Sender<Signal>,
    cancel: &CancellationToken,
    mut step: impl FnMut(Option<&str>) -> Step,
) {
    let mut tick = crate::clock::Ticker::new(every);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = tokio::select! {
            _ = cancel.cancelled() => return,
            r = imds.get(path) => r,
        };
        let body = match body {
            Ok(b) => {
                if failing {
                    info!(imds.path = path, "IMDS answers again.");
                    failing = false;
                }
                b
            }
            Err(e) => {
                // Logged once per outage; the poller keeps going.
                if failing {
                    debug!(imds.path = path, error = %e, "IMDS still failing.");
                } else {
                    warn!(imds.path = path, error = %e, "Cannot read a lifecycle signal from IMDS; will keep polling.");
                    failing = true;
                }
                continue;
            }
        };
        let (signal, stop) = match step(body.as_deref()) {
            Step::Continue => continue,
            Step::Emit(s) => (s, false),
            Step::EmitAndStop(s) => (s, true),
        };
        debug!(?signal, "Lifecycle signal.");
        if tx.send(signal).await.is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fakes::FakeImds;
    use tokio::time::Instant;

    #[test]
    fn spot_notices_parse_and_other_actions_are_ignored() {
        assert_eq!(
            parse_spot_notice(r#"{"action":"terminate","time":"2030-01-01T00:02:00Z"}"#),
            Some(SpotNotice {
                action: "terminate".into(),
                time: "2030-01-01T00:02:00Z".into()
            })
        );
        assert!(parse_spot_notice(r#"{"action":"hibernate","time":"t"}"#).is_some());
        assert!(parse_spot_notice(r#"{"action":"reboot","time":"t"}"#).is_none());
        assert!(parse_spot_notice("not json").is_none());
        assert_eq!(
            parse_rebalance(r#"{"noticeTime":"2030-01-01T00:00:00Z"}"#).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        assert!(parse_rebalance("{}").is_none());
    }

    fn start(imds: &Arc<FakeImds>, spot: bool) -> (mpsc::Receiver<Signal>, CancellationToken) {
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        tokio::spawn(run(
            imds.clone(),
            PollPlan::standard(spot),
            tx,
            cancel.clone(),
        ));
        (rx, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn a_spot_notice_is_seen_within_a_second_and_emitted_once() {
        let imds = Arc::new(FakeImds::spot());
        let (mut rx, cancel) = start(&imds, true);
        assert_eq!(
            rx.recv().await,
            Some(Signal::TargetState("InService".into()))
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let armed = Instant::now();
        imds.set(
            SPOT_PATH,
            Some(r#"{"action":"terminate","time":"2030-01-01T00:02:00Z"}"#),
        );
        let Some(Signal::Spot(n)) = rx.recv().await else {
            panic!("spot notice expected")
        };
        assert_eq!(n.action, "terminate");
        assert!(
            armed.elapsed() <= Duration::from_secs(1),
            "{:?}",
            armed.elapsed()
        );
        let reads = imds.reads(SPOT_PATH);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            imds.reads(SPOT_PATH),
            reads,
            "the spot poller stops after the notice"
        );
        assert!(rx.try_recv().is_err(), "emitted once");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn spot_paths_are_not_polled_when_disabled_or_on_demand() {
        let imds = Arc::new(FakeImds::spot());
        let (_rx, cancel) = start(&imds, false);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(imds.reads(SPOT_PATH), 0);
        assert!(
            imds.reads(REBALANCE_PATH) >= 2,
            "rebalance is still observed"
        );
        cancel.cancel();

        let imds = Arc::new(FakeImds::on_demand());
        let (_rx, cancel) = start(&imds, true);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(imds.reads(SPOT_PATH), 0);
        assert_eq!(imds.reads(REBALANCE_PATH), 0);
        let target_reads = imds.reads(TARGET_STATE_PATH);
        assert!(
            (12..=14).contains(&target_reads),
            "every 5 s: {target_reads}"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn target_state_changes_are_emitted_once_each_and_errors_do_not_stop_polling() {
        let imds = Arc::new(FakeImds::on_demand());
        let (mut rx, cancel) = start(&imds, true);
        assert_eq!(
            rx.recv().await,
            Some(Signal::TargetState("InService".into()))
        );
        imds.fail(TARGET_STATE_PATH, true);
        tokio::time::sleep(Duration::from_secs(30)).await;
        imds.fail(TARGET_STATE_PATH, false);
        imds.set(TARGET_STATE_PATH, Some("Terminated"));
        assert_eq!(
            rx.recv().await,
            Some(Signal::TargetState("Terminated".into()))
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(rx.try_recv().is_err(), "no repeat while unchanged");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn rebalance_and_maintenance_are_emitted_per_new_notice() {
        let imds = Arc::new(FakeImds::spot());
        imds.set(TARGET_STATE_PATH, None);
        let (mut rx, cancel) = start(&imds, false);
        imds.set(REBALANCE_PATH, Some(r#"{"noticeTime":"T1"}"#));
        assert_eq!(rx.recv().await, Some(Signal::Rebalance("T1".into())));
        imds.set(MAINTENANCE_PATH, Some("[]"));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(rx.try_recv().is_err(), "an empty event list is no signal");
        imds.set(MAINTENANCE_PATH, Some(r#"[{"Code":"system-reboot"}]"#));
        assert!(matches!(rx.recv().await, Some(Signal::Maintenance(_))));
        cancel.cancel();
    }
}
