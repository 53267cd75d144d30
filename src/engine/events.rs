//! The Docker event watcher: turns container events on our containers (die, destroy,
//! health_status, oom: [`super::docker::WAKE_EVENTS`]) into wake-ups of the engine loop, so an
//! exit is seen within a second instead of at the next periodic resync.
//!
//! It carries no data: the loop re-lists Docker when woken (kube-rs style: the reconciler never
//! learns why it runs). On a broken stream it reconnects with backoff and wakes the loop so a
//! full resync covers anything missed. Never changes state itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Policy;
use crate::engine::runtime::ContainerRuntime;

/// Reconnect backoff for the event stream.
const RECONNECT: Policy = Policy::new(
    Duration::from_millis(200),
    Duration::from_secs(10),
    2.0,
    0.2,
);

/// Watches events until cancelled.
pub async fn watch(
    runtime: Arc<dyn ContainerRuntime>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = RECONNECT.start();
    let mut warned = false;
    loop {
        let mut stream = runtime.events();
        // A (re)connected stream may have missed events: resync.
        wake.notify_one();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(())) => {
                    backoff.reset();
                    warned = false;
                    wake.notify_one();
                }
                Some(Err(e)) => {
                    if !warned {
                        warn!(error = %e, "Docker event stream failed; reconnecting.");
                        warned = true;
                    } else {
                        debug!(error = %e, "Docker event stream still failing.");
                    }
                    break;
                }
                None => {
                    debug!("Docker event stream ended; reconnecting.");
                    break;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
