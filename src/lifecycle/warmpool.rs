//! Warm pools (`ECS_WARM_POOLS_CHECK`, protocol spec §13.2): before registering, wait until the
//! Auto Scaling target lifecycle state is `InService`, so an instance sitting in a warm pool
//! (`Warmed:Stopped`, `Warmed:Running`, ...) never registers and never gets tasks.
//!
//! - While the state is absent (404 or empty), re-read once a minute, up to 120 times (about two
//!   hours); then give up: terminal, because the setting is wrong for this instance.
//! - Once present, while it is not `InService`, re-read every minute, for as long as it takes
//!   (the wait is cancellable; a warm instance may wait for days). IMDS throttling, server errors
//!   and timeouts are tolerated; an IMDS that refuses IMDSv2 is terminal.
//!
//! The period is configurable (`ECS_HOSTD_WARM_POOL_POLL_INTERVAL`, tests use 1 s). This module
//! only reads IMDS; it never registers and never talks to Auto Scaling.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Error;
use super::signals::TARGET_STATE_PATH;
use crate::imds::{self, InstanceMetadata};

/// The state that ends the wait.
pub const IN_SERVICE: &str = "InService";
/// Reads of an absent state before giving up (protocol spec §13.2).
pub const MAX_ABSENT_READS: u32 = 120;

/// How to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmPoolWait {
    /// Re-read period.
    pub poll_every: Duration,
    /// Reads of an absent state before giving up.
    pub max_absent_reads: u32,
}

impl WarmPoolWait {
    /// The official behaviour with period `poll_every`.
    pub fn new(poll_every: Duration) -> WarmPoolWait {
        WarmPoolWait {
            poll_every,
            max_absent_reads: MAX_ABSENT_READS,
        }
    }
}

/// Waits until the target lifecycle state is `InService`. `status` hears a line for operators
/// (systemd `STATUS=`) whenever what it waits for changes.
pub async fn wait_until_in_service(
    imds: &dyn InstanceMetadata,
    wait: &WarmPoolWait,
    cancel: &CancellationToken,
    mut status: impl FnMut(&str),
) -> Result<(), Error> {
    let mut absent_reads = 0u32;
    let mut seen: Option<String> = None;
    let mut announced: Option<String> = None;
    let mut last_error: Option<imds::Error> = None;
    loop {
        let state = match imds.get(TARGET_STATE_PATH).await {
            Ok(s) => {
                last_error = None;
                s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
            }
            Err(e @ imds::Error::V2Unavailable { .. }) => return Err(Error::Imds(e)),
            Err(e) => {
                if last_error.is_none() {
                    warn!(error = %e, "Cannot read the target lifecycle state; will read it again.");
                }
                last_error = Some(e);
                None
            }
        };
        match state.as_deref() {
            Some(IN_SERVICE) => {
                info!(
                    after = seen.as_deref().unwrap_or("nothing"),
                    "Target lifecycle state is InService; registering."
                );
                return Ok(());
            }
            Some(s) => seen = Some(s.to_owned()),
            None if seen.is_none() => {
                absent_reads += 1;
                if absent_reads >= wait.max_absent_reads {
                    // An IMDS that kept failing is worth a restart; a state that is simply not
                    // there means the setting is wrong for this instance.
                    return Err(match last_error {
                        Some(e) => Error::Imds(e),
                        None => Error::NoLifecycleState {
                            reads: absent_reads,
                        },
                    });
                }
            }
            // Present before and gone now: keep waiting as for a warmed state.
            None => {}
        }
        let line = match &seen {
            Some(s) => format!(
                "warm pool: not registering while the target lifecycle state is {s} (waiting for InService)"
            ),
            None => format!(
                "warm pool: waiting for an Auto Scaling target lifecycle state before registering (read {absent_reads} of {})",
                wait.max_absent_reads
            ),
        };
        if announced.as_deref() != Some(line.as_str()) {
            if seen.is_some() || absent_reads == 1 {
                info!(
                    state = seen.as_deref().unwrap_or("absent"),
                    "Warm pool: waiting for InService before registering."
                );
            }
            status(&line);
            announced = Some(line);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(wait.poll_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fakes::FakeImds;
    use std::sync::Arc;
    use tokio::time::Instant;

    fn wait() -> WarmPoolWait {
        WarmPoolWait::new(Duration::from_secs(60))
    }

    #[tokio::test(start_paused = true)]
    async fn warmed_states_wait_and_in_service_ends_the_wait() {
        let imds = Arc::new(FakeImds::on_demand());
        imds.set(TARGET_STATE_PATH, Some("Warmed:Stopped"));
        let flip = {
            let imds = imds.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(300)).await;
                imds.set(TARGET_STATE_PATH, Some("Warmed:Running"));
                tokio::time::sleep(Duration::from_secs(300)).await;
                imds.set(TARGET_STATE_PATH, Some("InService"));
            })
        };
        let started = Instant::now();
        let mut lines = Vec::new();
        wait_until_in_service(&*imds, &wait(), &CancellationToken::new(), |l| {
            lines.push(l.to_owned())
        })
        .await
        .unwrap();
        flip.await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(600) && waited <= Duration::from_secs(660),
            "{waited:?}"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("Warmed:Stopped"), "{lines:?}");
        assert!(lines[1].contains("Warmed:Running"), "{lines:?}");
        let reads = imds.reads(TARGET_STATE_PATH);
        assert!((11..=12).contains(&reads), "once a minute: {reads}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_absent_state_is_read_120_times_then_given_up() {
        let imds = FakeImds::on_demand();
        imds.set(TARGET_STATE_PATH, None);
        let started = Instant::now();
        let err = wait_until_in_service(&imds, &wait(), &CancellationToken::new(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::NoLifecycleState { reads: 120 }),
            "{err}"
        );
        assert!(err.is_terminal());
        assert_eq!(imds.reads(TARGET_STATE_PATH), 120);
        assert_eq!(started.elapsed(), Duration::from_secs(119 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn imds_errors_are_tolerated_and_cancellation_ends_the_wait() {
        let imds = Arc::new(FakeImds::on_demand());
        imds.set(TARGET_STATE_PATH, Some("Warmed:Running"));
        let cancel = CancellationToken::new();
        let (c, i) = (cancel.clone(), imds.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            i.fail(TARGET_STATE_PATH, true);
            tokio::time::sleep(Duration::from_secs(3600 * 5)).await;
            c.cancel();
        });
        let err = wait_until_in_service(&*imds, &wait(), &cancel, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert!(imds.reads(TARGET_STATE_PATH) > 120, "kept reading");

        let imds = FakeImds::on_demand();
        imds.fail(TARGET_STATE_PATH, true);
        let err = wait_until_in_service(&imds, &wait(), &CancellationToken::new(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Imds(_)) && err.is_retryable() && !err.is_terminal(),
            "an IMDS that never answers is worth a restart: {err}"
        );
    }
}
