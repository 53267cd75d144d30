//! The agent's side of the systemd service contract: `READY=1` once Docker answers and the
//! instance is registered, `STATUS=` lines saying what it waits for, `WATCHDOG=1` pings, and
//! `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

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
