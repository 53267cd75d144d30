//! The agent's side of the systemd service contract (`Type=notify`, `WatchdogSec=`): `READY=1`
//! once Docker answers and the instance is registered, `STATUS=` lines saying what it waits for
//! or what is wrong, `WATCHDOG=1` pings only while every supervised subsystem beats, and
//! `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//!
//! It also holds the debug-build test hook that wedges a subsystem, so tests can show that
//! systemd's watchdog restarts a wedged agent. It never talks to systemd over D-Bus (the Docker
//! watchdog does that) and never decides the agent's health itself: it reads the supervisor's
//! heartbeats and the health board.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::health;
use crate::supervisor::{Heartbeat, Supervisor};

/// How often heartbeats are checked (and reported) when systemd asked for no watchdog.
const CHECK_WITHOUT_WATCHDOG: Duration = Duration::from_secs(5);
/// Longest `STATUS=` line sent (systemctl shows one line anyway).
const STATUS_MAX: usize = 200;
/// The test hook's variable: wedge a subsystem this long after start (debug builds only).
pub const WEDGE_ENV: &str = "ECS_HOSTD_TEST_WEDGE_AFTER";

/// Sends `STATUS=<text>`.
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

/// Sends `READY=1` with a status line.
pub fn ready(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// Sends `STOPPING=1`.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends `WATCHDOG=1`.
pub fn watchdog_ping() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        None
    } else {
        Some(Duration::from_micros(usec))
    }
}

/// How often to check heartbeats: a third of systemd's interval (packaging-and-fleet.md §3.2),
/// so one late round does not cost a restart.
pub fn ping_period(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(CHECK_WITHOUT_WATCHDOG, |w| {
        (w / 3).max(Duration::from_millis(100))
    })
}

/// Checks every heartbeat each [`ping_period`] and sends `WATCHDOG=1` only while all are fresh:
/// a wedged subsystem stops the pings and systemd restarts the agent. Reports the result as the
/// `supervisor` component of the health board either way. Runs until cancelled.
pub async fn run_pinger(
    supervisor: Supervisor,
    board: health::Board,
    watchdog: Option<Duration>,
    cancel: CancellationToken,
) {
    let mut tick = crate::clock::Ticker::new(ping_period(watchdog));
    let mut was_stale = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stale = supervisor.stale();
        if stale.is_empty() {
            if watchdog.is_some() {
                watchdog_ping();
            }
            board.set("supervisor", true, "all subsystems alive");
            was_stale = false;
        } else {
            if !was_stale {
                warn!(
                    ?stale,
                    "Subsystems stopped beating; withholding the systemd watchdog ping."
                );
            }
            was_stale = true;
            board.set(
                "supervisor",
                false,
                format!("not beating: {}", stale.join(", ")),
            );
        }
    }
}

/// The `STATUS=` line for a health snapshot: `ready_text` while every component is healthy,
/// otherwise what is wrong.
pub fn status_line(ready_text: &str, snapshot: &health::Snapshot) -> String {
    let bad: Vec<String> = snapshot
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(name, c)| format!("{name}: {}", c.detail))
        .collect();
    let mut line = if bad.is_empty() {
        ready_text.to_owned()
    } else {
        format!("degraded; {}", bad.join("; "))
    };
    if line.len() > STATUS_MAX {
        let mut cut = STATUS_MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Keeps `STATUS=` in step with the health board after READY. Runs until cancelled.
pub async fn run_status(board: health::Board, ready_text: String, cancel: CancellationToken) {
    let mut rx = board.subscribe();
    let mut last = String::new();
    loop {
        let line = status_line(&ready_text, &rx.borrow_and_update());
        if line != last {
            status(&line);
            last = line;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The test hook: `ECS_HOSTD_TEST_WEDGE_AFTER=3s` (or `500ms`) in a debug build. Release builds
/// ignore the variable.
pub fn wedge_after() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    parse_short_duration(&std::env::var(WEDGE_ENV).ok()?)
}

fn parse_short_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.trim()
        .parse::<f64>()
        .ok()
        .and_then(|v| (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v)))
}

/// Beats `heartbeat` until `after`, then stops beating as a deadlocked subsystem would, and waits
/// for cancellation. Only ever spawned by the test hook.
pub async fn run_wedge(heartbeat: Heartbeat, after: Duration, cancel: CancellationToken) {
    let deadline = tokio::time::Instant::now() + after;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
    warn!(
        hook = WEDGE_ENV,
        "Test hook: this subsystem is now wedged and stops beating."
    );
    cancel.cancelled().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_a_third_of_the_interval() {
        assert_eq!(
            ping_period(Some(Duration::from_secs(60))),
            Duration::from_secs(20)
        );
        assert_eq!(ping_period(None), CHECK_WITHOUT_WATCHDOG);
    }

    #[test]
    fn status_says_what_is_wrong() {
        let board = health::Board::new();
        board.set("docker", true, "answering");
        assert_eq!(status_line("registered", &board.snapshot()), "registered");
        board.set("docker", false, "ping timed out (3 rounds in a row)");
        assert_eq!(
            status_line("registered", &board.snapshot()),
            "degraded; docker: ping timed out (3 rounds in a row)"
        );
        board.set("watchdog", false, "x".repeat(500));
        let line = status_line("registered", &board.snapshot());
        assert!(
            line.len() <= STATUS_MAX + 3 && line.ends_with('…'),
            "{line}"
        );
    }

    #[test]
    fn wedge_durations() {
        assert_eq!(parse_short_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_short_duration("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_short_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_short_duration("soon"), None);
        assert_eq!(parse_short_duration("-1s"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_subsystem_goes_stale() {
        let (sup, _rx) = Supervisor::new(CancellationToken::new());
        let hb = sup.heartbeat("wedge", Duration::from_secs(1));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_wedge(hb, Duration::from_secs(3), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(2900)).await;
        assert!(sup.all_alive());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(sup.stale(), vec!["wedge"]);
        cancel.cancel();
        task.await.unwrap();
    }
}
