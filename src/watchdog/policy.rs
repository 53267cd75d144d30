//! The Docker watchdog's decisions: a pure function of one [`Observation`] (Docker ping, API
//! probe, the state of docker.service and docker.socket, whether the agent is draining), the time,
//! and the little history kept in [`Policy`] (consecutive failures, recent repairs, backoff).
//!
//! It never performs I/O, never sleeps and never reads a clock: the loop in `watchdog/mod.rs`
//! observes, passes `now`, and executes the returned [`Action`]s. That is what lets the rules
//! (failure threshold, hung API, exponential backoff between repairs, a ceiling per hour, nothing
//! restarted while draining, masks respected) be tested with a fake clock.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The unit the watchdog keeps running.
pub const SERVICE: &str = "docker.service";
/// Docker's socket unit, repaired too where it exists.
pub const SOCKET: &str = "docker.socket";

/// The ceiling's window.
const HOUR: Duration = Duration::from_secs(3600);
/// Growth of the wait between repairs (10 s, 30 s, 90 s, ... as packaging-and-fleet.md §4.3).
const BACKOFF_FACTOR: u32 = 3;

/// The outcome of one probe of the Docker API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Answered in time.
    Ok,
    /// Answered with an error, or the connection failed.
    Failed(String),
    /// No answer within the deadline.
    TimedOut,
    /// Not tried (the ping already failed).
    Skipped,
}

impl Probe {
    fn is_ok(&self) -> bool {
        matches!(self, Probe::Ok)
    }
}

/// `ActiveState` of a systemd unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Active {
    /// Running.
    Active,
    /// Reloading its configuration.
    Reloading,
    /// Stopped (on purpose, or never started).
    Inactive,
    /// Failed, e.g. `Result=start-limit-hit`.
    Failed,
    /// Starting (including between automatic restarts).
    Activating,
    /// Stopping.
    Deactivating,
    /// A state this code does not know (`maintenance`, `refreshing`, ...).
    Other,
}

impl Active {
    /// Parses systemd's `ActiveState` text.
    pub fn parse(s: &str) -> Active {
        match s {
            "active" => Active::Active,
            "reloading" => Active::Reloading,
            "inactive" => Active::Inactive,
            "failed" => Active::Failed,
            "activating" => Active::Activating,
            "deactivating" => Active::Deactivating,
            _ => Active::Other,
        }
    }
}

/// `UnitFileState` of a systemd unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Enabled (also `enabled-runtime`, `alias`, `indirect`, `generated`, `static`: nothing to
    /// repair).
    Enabled,
    /// Disabled: enable it again.
    Disabled,
    /// Masked by an operator: never fought, only reported.
    Masked,
}

impl FileState {
    /// Parses systemd's `UnitFileState` text.
    pub fn parse(s: &str) -> FileState {
        match s {
            "disabled" => FileState::Disabled,
            "masked" | "masked-runtime" => FileState::Masked,
            _ => FileState::Enabled,
        }
    }
}

/// What systemd says about one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`.
    pub active: Active,
    /// `SubState`, for messages (`running`, `dead`, `auto-restart`, ...).
    pub sub_state: String,
    /// `Result` of the last run, for messages (`success`, `start-limit-hit`, ...).
    pub result: String,
    /// `UnitFileState`.
    pub file: FileState,
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active = match self.active {
            Active::Active => "active",
            Active::Reloading => "reloading",
            Active::Inactive => "inactive",
            Active::Failed => "failed",
            Active::Activating => "activating",
            Active::Deactivating => "deactivating",
            Active::Other => "other",
        };
        let file = match self.file {
            FileState::Enabled => "enabled",
            FileState::Disabled => "disabled",
            FileState::Masked => "masked",
        };
        write!(
            f,
            "{active} ({}), result {}, {file}",
            self.sub_state, self.result
        )
    }
}

/// Everything one round of the watchdog saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `GET /_ping` within the deadline.
    pub ping: Probe,
    /// A cheap real call (list one container) within the deadline: a hung API answers pings but
    /// not this.
    pub api: Probe,
    /// docker.service; `None` when systemd cannot be asked (no systemd, no bus: ping-only).
    pub service: Option<UnitState>,
    /// docker.socket, where the unit exists.
    pub socket: Option<UnitState>,
    /// The agent is draining the instance: never restart Docker under running tasks.
    pub draining: bool,
}

impl Observation {
    /// Whether Docker answered both probes.
    pub fn docker_healthy(&self) -> bool {
        self.ping.is_ok() && self.api.is_ok()
    }

    /// Why Docker is not healthy, for messages; `None` when it is.
    pub fn problem(&self) -> Option<String> {
        match (&self.ping, &self.api) {
            (Probe::Ok, Probe::Ok) => None,
            (Probe::TimedOut, _) => Some("ping timed out".into()),
            (Probe::Failed(e), _) => Some(format!("ping failed: {e}")),
            (Probe::Ok, Probe::TimedOut) => Some("API hung: ping answers, list does not".into()),
            (Probe::Ok, Probe::Failed(e)) => Some(format!("list failed: {e}")),
            (Probe::Skipped, _) | (Probe::Ok, Probe::Skipped) => Some("not probed".into()),
        }
    }
}

/// One thing to do to systemd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `EnableUnitFiles([unit])` then `Reload()`.
    Enable(&'static str),
    /// `ResetFailedUnit` (when `reset_failed`) then `StartUnit(unit, "replace")`.
    Start {
        /// The unit.
        unit: &'static str,
        /// The unit is `failed`: clear it first, or systemd refuses after a start-limit hit.
        reset_failed: bool,
    },
    /// `ResetFailedUnit` then `RestartUnit(unit, "replace")`: Docker is up but hung.
    Restart(&'static str),
}

impl Action {
    /// Whether this action (re)starts dockerd, so it counts against the backoff and the ceiling.
    pub fn is_repair(&self) -> bool {
        match self {
            Action::Enable(_) => false,
            Action::Start { unit, .. } => *unit == SERVICE,
            Action::Restart(_) => true,
        }
    }
}

/// What the policy wants done after one observation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Actions in order, each with the reason that is logged and reported.
    pub actions: Vec<(Action, String)>,
    /// A repair that was needed but withheld, and why (repair off, draining, backoff, ceiling,
    /// masked). Reported on the health board.
    pub held: Option<String>,
    /// Consecutive failed rounds while docker.service was active (or unit state unknown).
    pub failures: u32,
    /// The withheld repair waits for a person (mask, ceiling, no systemd, repair off), not for
    /// time (backoff, draining).
    pub operator_needed: bool,
}

/// The policy's knobs (from `[watchdog]` in config.toml).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Repair through systemd at all (`ECS_HOSTD_DOCKER_WATCHDOG`); otherwise only report.
    pub repair: bool,
    /// Consecutive failed rounds before a running docker.service is restarted.
    pub failure_threshold: u32,
    /// Ceiling on repairs (starts and restarts of docker.service) in any hour.
    pub max_repairs_per_hour: u32,
    /// Wait after the first repair before another; multiplied by 3 per repair.
    pub backoff_min: Duration,
    /// Longest wait between repairs.
    pub backoff_max: Duration,
    /// Docker healthy this long resets the backoff to `backoff_min`.
    pub healthy_reset: Duration,
}

/// The watchdog's memory between rounds.
#[derive(Clone, Debug)]
pub struct Policy {
    settings: Settings,
    failures: u32,
    last_problem: Option<String>,
    /// When recent repairs happened (oldest first), pruned to the last hour.
    repairs: VecDeque<Instant>,
    /// Number of repairs since the backoff was last reset.
    level: u32,
    /// No repair before this instant.
    next_repair_at: Option<Instant>,
    healthy_since: Option<Instant>,
}

impl Policy {
    /// A policy with no history.
    pub fn new(settings: Settings) -> Policy {
        Policy {
            settings,
            failures: 0,
            last_problem: None,
            repairs: VecDeque::new(),
            level: 0,
            next_repair_at: None,
            healthy_since: None,
        }
    }

    /// The wait after the `level`-th repair (0-based): `min × 3^level`, capped at `max`.
    pub fn backoff(&self, level: u32) -> Duration {
        let factor = BACKOFF_FACTOR.saturating_pow(level.min(20));
        self.settings
            .backoff_min
            .saturating_mul(factor)
            .min(self.settings.backoff_max.max(self.settings.backoff_min))
    }

    /// Repairs counted in the hour before `now`.
    pub fn repairs_last_hour(&self, now: Instant) -> usize {
        self.repairs
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < HOUR)
            .count()
    }

    /// Decides what to do about `obs`, seen at `now`.
    pub fn decide(&mut self, obs: &Observation, now: Instant) -> Decision {
        while self
            .repairs
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.repairs.pop_front();
        }
        self.track_health(obs, now);

        let mut decision = Decision::default();
        let Some(service) = &obs.service else {
            // Ping-only: nothing can be repaired, but say what would be.
            if self.failures >= self.settings.failure_threshold {
                decision.held = Some(format!(
                    "Docker unhealthy for {} rounds ({}); cannot repair without systemd",
                    self.failures,
                    self.last_problem.as_deref().unwrap_or("unknown")
                ));
                decision.operator_needed = true;
            }
            decision.failures = self.failures;
            return decision;
        };

        let mut wanted: Vec<(Action, String)> = Vec::new();
        let mut masked = None;
        match service.file {
            FileState::Disabled => wanted.push((
                Action::Enable(SERVICE),
                format!("{SERVICE} is disabled; Docker must start at boot"),
            )),
            FileState::Masked => {
                masked = Some(format!(
                    "{SERVICE} is masked by an operator; not fighting it ({service})"
                ))
            }
            FileState::Enabled => {}
        }
        if let Some(socket) = &obs.socket {
            if socket.file == FileState::Disabled {
                wanted.push((
                    Action::Enable(SOCKET),
                    format!("{SOCKET} is disabled; Docker must start at boot"),
                ));
            }
            if socket.file != FileState::Masked
                && masked.is_none()
                && matches!(socket.active, Active::Inactive | Active::Failed)
            {
                wanted.push((
                    Action::Start {
                        unit: SOCKET,
                        reset_failed: socket.active == Active::Failed,
                    },
                    format!("{SOCKET} is {socket}"),
                ));
            }
        }

        let repair = match service.active {
            _ if masked.is_some() => None,
            Active::Failed => Some((
                Action::Start {
                    unit: SERVICE,
                    reset_failed: true,
                },
                format!("{SERVICE} is {service}"),
            )),
            Active::Inactive => Some((
                Action::Start {
                    unit: SERVICE,
                    reset_failed: false,
                },
                format!("{SERVICE} is {service}"),
            )),
            Active::Active | Active::Reloading | Active::Other
                if self.failures >= self.settings.failure_threshold =>
            {
                Some((
                    Action::Restart(SERVICE),
                    format!(
                        "Docker failed {} rounds in a row while {SERVICE} is {}: {}",
                        self.failures,
                        service.sub_state,
                        self.last_problem.as_deref().unwrap_or("unknown")
                    ),
                ))
            }
            _ => None,
        };

        decision.operator_needed = masked.is_some();
        decision.held = masked;
        if let Some((action, reason)) = repair {
            match self.gate(&action, obs.draining, now) {
                Ok(()) => {
                    self.record_repair(now);
                    wanted.push((action, reason));
                }
                Err((why, operator_needed)) => {
                    decision.held = Some(format!("{reason}; {why}"));
                    decision.operator_needed = operator_needed;
                }
            }
        }
        if !self.settings.repair {
            if let Some((_, reason)) = wanted.first() {
                decision.held = Some(format!("{reason}; repair is off (watchdog.enabled=false)"));
                decision.operator_needed = true;
            }
            // Repairs that were not done must not consume backoff or budget.
            wanted.clear();
        }
        decision.actions = wanted;
        decision.failures = self.failures;
        decision
    }

    /// Updates the failure count and the healthy period.
    fn track_health(&mut self, obs: &Observation, now: Instant) {
        if obs.docker_healthy() {
            self.failures = 0;
            self.last_problem = None;
            let since = *self.healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.settings.healthy_reset {
                self.level = 0;
            }
            return;
        }
        self.healthy_since = None;
        self.last_problem = obs.problem();
        // Failures count only when Docker should be answering: a unit that is stopped, failed or
        // (re)starting explains the silence and is repaired by starting it, not restarting it.
        let counts = match &obs.service {
            None => true,
            Some(s) => matches!(s.active, Active::Active | Active::Reloading | Active::Other),
        };
        if counts {
            self.failures = self.failures.saturating_add(1);
        } else {
            self.failures = 0;
        }
    }

    /// Whether a repair may happen now; `Err` says why not and whether that waits for a person.
    fn gate(&self, action: &Action, draining: bool, now: Instant) -> Result<(), (String, bool)> {
        if !self.settings.repair {
            return Ok(()); // Reported as "repair is off" by the caller.
        }
        if draining && matches!(action, Action::Restart(_)) {
            return Err((
                "not restarting Docker while the instance is draining".into(),
                false,
            ));
        }
        let recent = self.repairs_last_hour(now);
        if recent >= self.settings.max_repairs_per_hour as usize {
            return Err((
                format!(
                    "ceiling of {} repairs per hour reached; only reporting",
                    self.settings.max_repairs_per_hour
                ),
                true,
            ));
        }
        if let Some(at) = self.next_repair_at
            && now < at
        {
            return Err((
                format!(
                    "backing off for another {}s",
                    at.saturating_duration_since(now).as_secs_f64().ceil() as u64
                ),
                false,
            ));
        }
        Ok(())
    }

    fn record_repair(&mut self, now: Instant) {
        if !self.settings.repair {
            return;
        }
        self.repairs.push_back(now);
        self.next_repair_at = Some(now + self.backoff(self.level));
        self.level = self.level.saturating_add(1);
        self.failures = 0;
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests;
