//! The Docker watchdog: keeps docker.service (and docker.socket where present) enabled and
//! running, pings Docker with a deadline, and restarts it through systemd when it hangs.
//!
//! One round: read the units' state over D-Bus → ping Docker and probe a real API call, each
//! under the configured deadline (after a healthy round the API call alone, the ping only when it
//! fails) → ask [`policy::Policy`] what to do → do it through
//! [`systemd_dbus::ServiceManager`] (reset-failed first) → publish the outcome on the health board
//! (`docker`, `watchdog`), in [`Stats`] (`/metrics`) and in the log, each action with its reason.
//!
//! Without systemd as PID 1 or without a system bus, and when `ECS_HOSTD_DOCKER_WATCHDOG=false`,
//! it only pings and reports. It never talks to dockerd except to ping and list one container,
//! never restarts Docker while the agent drains ([`Draining`]), and never runs `systemctl`.

pub mod policy;
pub mod systemd_dbus;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::MetricsSection;
use crate::config::WatchdogConfig;
use crate::health;
use crate::supervisor::Heartbeat;

use policy::{Action, Decision, Observation, Policy, Probe, SERVICE, SOCKET, Settings};
use systemd_dbus::{DbusManager, ServiceManager};

/// Longest wait between two repairs.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Docker healthy this long resets the backoff.
const HEALTHY_RESET: Duration = Duration::from_secs(600);
/// Health-board component names.
pub const DOCKER_COMPONENT: &str = "docker";
/// Health-board component of the watchdog itself.
pub const WATCHDOG_COMPONENT: &str = "watchdog";

/// The "instance is draining" flag. The lifecycle code sets it; the watchdog never restarts
/// Docker while it is set. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Draining {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Draining {
    fn default() -> Self {
        Draining::new()
    }
}

impl Draining {
    /// Not draining.
    pub fn new() -> Draining {
        Draining {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }
    /// A flag shared with whoever owns the sender (the lifecycle subsystem raises it).
    pub fn from_sender(tx: watch::Sender<bool>) -> Draining {
        Draining { tx: Arc::new(tx) }
    }
    /// Starts or ends draining.
    pub fn set(&self, draining: bool) {
        self.tx.send_replace(draining);
    }
    /// Whether the instance is draining now.
    pub fn get(&self) -> bool {
        *self.tx.borrow()
    }
}

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    docker_healthy: AtomicBool,
    repair_mode: AtomicBool,
    rounds: AtomicU64,
    ping_failures: AtomicU64,
    api_hangs: AtomicU64,
    restarts: AtomicU64,
    starts: AtomicU64,
    reenables: AtomicU64,
    reset_failed: AtomicU64,
    held: AtomicU64,
    action_errors: AtomicU64,
}

impl Stats {
    /// docker.service restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    /// docker.service starts (from stopped or failed) so far.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }
    /// Unit files enabled again so far.
    pub fn reenables(&self) -> u64 {
        self.reenables.load(Ordering::Relaxed)
    }
    /// Rounds in which Docker did not answer in time.
    pub fn ping_failures(&self) -> u64 {
        self.ping_failures.load(Ordering::Relaxed)
    }
    fn summary(&self) -> String {
        format!(
            "restarts {}, starts {}, re-enables {}, failed probes {}",
            self.restarts(),
            self.starts(),
            self.reenables(),
            self.ping_failures()
        )
    }
}

impl MetricsSection for Stats {
    fn render(&self, out: &mut String) {
        let gauges = [
            (
                "ecs_hostd_docker_healthy",
                "Whether Docker answered the watchdog's last ping and API probe.",
                u64::from(self.docker_healthy.load(Ordering::Relaxed)),
            ),
            (
                "ecs_hostd_docker_watchdog_repair_enabled",
                "1 when the watchdog repairs Docker through systemd, 0 when it only pings and reports.",
                u64::from(self.repair_mode.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            ("rounds", "Watchdog rounds.", &self.rounds),
            (
                "ping_failures",
                "Rounds in which Docker's ping or API probe failed or timed out.",
                &self.ping_failures,
            ),
            (
                "api_hangs",
                "Rounds in which Docker answered the ping but not a list call (hung API).",
                &self.api_hangs,
            ),
            (
                "restarts",
                "docker.service restarts by the watchdog.",
                &self.restarts,
            ),
            (
                "starts",
                "docker.service starts by the watchdog (it was stopped or failed).",
                &self.starts,
            ),
            (
                "reenables",
                "docker.service or docker.socket unit files enabled again.",
                &self.reenables,
            ),
            (
                "reset_failed",
                "ResetFailedUnit calls before a start or restart.",
                &self.reset_failed,
            ),
            (
                "held",
                "Rounds in which a needed repair was withheld (backoff, ceiling, draining, mask, repair off).",
                &self.held,
            ),
            (
                "action_errors",
                "systemd calls of the watchdog that failed.",
                &self.action_errors,
            ),
        ];
        for (short, help, v) in counters {
            let name = format!("ecs_hostd_docker_watchdog_{short}_total");
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Where the watchdog gets systemd from.
#[derive(Clone)]
pub enum Systemd {
    /// The system bus (connected lazily, reconnected after errors).
    Dbus,
    /// A given manager (tests).
    Given(Arc<dyn ServiceManager>),
    /// None: ping and report only.
    Absent,
}

/// The watchdog subsystem. Build one per run of the subsystem; [`Watchdog::run`] loops until
/// cancelled.
/// The least time between a round and one asked for through [`Watchdog::check_now`].
pub const ASKED_ROUND_GAP: Duration = Duration::from_secs(2);

pub struct Watchdog {
    /// `[watchdog]` settings.
    pub config: WatchdogConfig,
    /// `DOCKER_HOST`; `None` = the local socket. Connected lazily: the socket may not exist yet.
    pub docker_host: Option<String>,
    /// Where systemd is.
    pub systemd: Systemd,
    /// The health board (components `docker` and `watchdog`).
    pub board: health::Board,
    /// Counters for `/metrics`.
    pub stats: Arc<Stats>,
    /// Set while the instance drains.
    pub draining: Draining,
    /// Liveness for the systemd watchdog.
    pub heartbeat: Option<Heartbeat>,
    /// Asks for a round now (an ACS heartbeat: protocol spec §5.4 "run local health checks").
    /// An asked-for round comes at least half an interval, or [`ASKED_ROUND_GAP`], after the last.
    pub check_now: Arc<tokio::sync::Notify>,
    /// When the task engine last heard from Docker (its listing): a round within an interval of
    /// that answer, after a round Docker answered too, asks Docker nothing itself.
    pub engine_answered: Option<crate::docker::Answered>,
}

/// The current systemd connection, or why there is none.
enum Link {
    Up(Arc<dyn ServiceManager>),
    /// Will not come (no systemd as PID 1).
    Never(String),
    /// Not now (bus down); try again next round.
    Down(String),
}

impl Watchdog {
    /// The heartbeat silence after which this loop counts as wedged: one interval plus the
    /// longest a round may take (two probes and a few bounded bus calls).
    pub fn max_silence(config: &WatchdogConfig) -> Duration {
        config.interval + 2 * config.timeout + 4 * systemd_dbus::DBUS_TIMEOUT
    }

    fn settings(&self) -> Settings {
        Settings {
            repair: self.config.enabled,
            failure_threshold: self.config.failure_threshold.max(1),
            max_repairs_per_hour: self.config.max_restarts_per_hour,
            backoff_min: self.config.restart_backoff,
            backoff_max: BACKOFF_MAX,
            healthy_reset: HEALTHY_RESET,
        }
    }

    fn beat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat();
        }
    }

    /// Runs rounds every `interval` until cancelled. Never fails: every error is a reported state.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), crate::supervisor::Failure> {
        let mut policy = Policy::new(self.settings());
        let mut link = self.link(None).await;
        let mut docker: Option<Docker> = None;
        let mut last_held: Option<String> = None;
        let mut answered = false;
        let mut last_action = String::from("none");
        // The last failed action, reported until an action succeeds.
        let mut last_error: Option<String> = None;
        info!(
            repair = self.config.enabled,
            interval = ?self.config.interval,
            timeout = ?self.config.timeout,
            failure_threshold = self.config.failure_threshold,
            max_restarts_per_hour = self.config.max_restarts_per_hour,
            mode = %self.mode_text(&link),
            "Docker watchdog started."
        );
        loop {
            self.beat();
            if !matches!(link, Link::Up(_) | Link::Never(_)) {
                link = self.link(Some(&link)).await;
            }
            let obs = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                obs = self.observe(&mut link, &mut docker, answered) => obs,
            };
            answered = obs.problem().is_none();
            self.beat();
            let now = tokio::time::Instant::now().into_std();
            let decision = policy.decide(&obs, now);
            self.count(&obs, &decision);
            // Logged when the reason changes, not every round: counts and seconds left do not
            // make a new reason.
            let held_key = decision.held.as_deref().map(without_digits);
            if held_key != last_held {
                if let Some(h) = &decision.held {
                    warn!(reason = %h, "Docker repair withheld.");
                }
                last_held = held_key;
            }
            if let Link::Up(manager) = &link {
                for (action, reason) in &decision.actions {
                    let text = action_text(action);
                    warn!(
                        watchdog.action = %text,
                        reason = %reason,
                        docker.service = %unit_text(obs.service.as_ref()),
                        docker.socket = %unit_text(obs.socket.as_ref()),
                        "Repairing Docker."
                    );
                    match self.execute(manager.as_ref(), action).await {
                        Ok(()) => {
                            last_action = format!("{text} at {} ({reason})", unix_now());
                            last_error = None;
                        }
                        Err(e) => {
                            error!(watchdog.action = %text, error = %e, "Docker repair failed.");
                            self.stats.action_errors.fetch_add(1, Ordering::Relaxed);
                            last_error = Some(format!("{text} failed: {e}"));
                        }
                    }
                    self.beat();
                }
            }
            self.report(&obs, &decision, &link, &last_action, last_error.as_deref());
            let round_done = tokio::time::Instant::now();
            // Both on the shared grid (`crate::clock`): the round then shares its wake-up with
            // the other periodic tasks.
            let interval = self.config.interval;
            let next = crate::clock::at_or_after(round_done + interval, interval);
            let earliest = crate::clock::at_or_after(
                round_done + (interval / 2).min(ASKED_ROUND_GAP),
                interval,
            );
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next) => {}
                _ = self.check_now.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep_until(earliest) => {}
                    }
                    debug!("Docker health round asked for (ACS heartbeat).");
                }
            }
        }
    }

    /// Connects to systemd (or keeps what `previous` says cannot change).
    async fn link(&self, previous: Option<&Link>) -> Link {
        match &self.systemd {
            Systemd::Absent => Link::Never("no systemd configured".into()),
            Systemd::Given(m) => Link::Up(m.clone()),
            Systemd::Dbus => match DbusManager::connect().await {
                Ok(m) => {
                    if previous.is_some() {
                        info!("Connected to systemd on the system bus again.");
                    }
                    Link::Up(Arc::new(m))
                }
                Err(e) if !e.is_retryable() => Link::Never(e.to_string()),
                Err(e) => {
                    if !matches!(previous, Some(Link::Down(_))) {
                        warn!(error = %e, "Cannot reach systemd; only pinging Docker until the system bus answers.");
                    }
                    Link::Down(e.to_string())
                }
            },
        }
    }

    fn mode_text(&self, link: &Link) -> String {
        match link {
            Link::Up(_) if self.config.enabled => "repairing docker.service through systemd".into(),
            Link::Up(_) => "ping and report only (ECS_HOSTD_DOCKER_WATCHDOG=false)".into(),
            Link::Never(why) | Link::Down(why) => format!("ping and report only: {why}"),
        }
    }

    /// Reads the units, then pings and probes Docker.
    /// `answered_before`: Docker answered the last round's probes.
    async fn observe(
        &self,
        link: &mut Link,
        docker: &mut Option<Docker>,
        answered_before: bool,
    ) -> Observation {
        let (mut service, mut socket) = (None, None);
        if let Link::Up(m) = &*link {
            let units = async {
                let s = m.unit_state(SERVICE).await?;
                let k = m.unit_state(SOCKET).await?;
                Ok::<_, systemd_dbus::Error>((s, k))
            };
            // One bound for the whole read, so a busy PID 1 cannot stall the round (and its
            // heartbeat) for longer than one call would.
            let units = async {
                tokio::time::timeout(systemd_dbus::DBUS_TIMEOUT, units)
                    .await
                    .unwrap_or_else(|_| {
                        Err(systemd_dbus::Error::Timeout {
                            op: "read unit state",
                            unit: format!("{SERVICE}, {SOCKET}"),
                        })
                    })
            };
            match units.await {
                Ok((s, k)) => (service, socket) = (s, k),
                Err(e) => {
                    warn!(error = %e, "Cannot read Docker's units from systemd; reconnecting next round.");
                    if matches!(self.systemd, Systemd::Dbus) {
                        *link = Link::Down(e.to_string());
                    }
                }
            }
        }
        // The engine listed containers within the interval and Docker answered our last round:
        // a probe now would only repeat that answer. A hung API stops the engine's answers, and
        // the next round probes again.
        if answered_before
            && self
                .engine_answered
                .as_ref()
                .is_some_and(|a| a.within(self.config.interval))
        {
            return Observation {
                ping: Probe::Ok,
                api: Probe::Ok,
                service,
                socket,
                draining: self.draining.get(),
            };
        }
        let timeout = self.config.timeout;
        if docker.is_none() {
            // The client checks the socket exists once, then connects by path per request.
            *docker = crate::docker::connect(self.docker_host.as_deref()).ok();
        }
        let Some(client) = docker.as_ref() else {
            return Observation {
                ping: Probe::Failed(format!(
                    "no Docker socket at {}",
                    crate::docker::endpoint(self.docker_host.as_deref())
                )),
                api: Probe::Skipped,
                service,
                socket,
                draining: self.draining.get(),
            };
        };
        let list = || async {
            let opts = ListContainersOptionsBuilder::new()
                .all(true)
                .limit(1)
                .build();
            match tokio::time::timeout(timeout, client.list_containers(Some(opts))).await {
                Ok(Ok(_)) => Probe::Ok,
                Ok(Err(e)) => Probe::Failed(e.to_string()),
                Err(_) => Probe::TimedOut,
            }
        };
        // A Docker that answered last round gets the list call alone: its answer, on a connection
        // of its own, proves all the ping would. Only a failed list is followed by the ping, to
        // tell a hung API from a dead daemon (that round takes up to two deadlines).
        let early = if answered_before {
            Some(list().await)
        } else {
            None
        };
        let (ping, api) = match early {
            Some(Probe::Ok) => (Probe::Ok, Probe::Ok),
            early => {
                let ping = match tokio::time::timeout(timeout, client.ping()).await {
                    Ok(Ok(_)) => Probe::Ok,
                    Ok(Err(e)) => Probe::Failed(e.to_string()),
                    Err(_) => Probe::TimedOut,
                };
                let api = match (&ping, early) {
                    (Probe::Ok, Some(listed)) => listed,
                    (Probe::Ok, None) => list().await,
                    _ => Probe::Skipped,
                };
                (ping, api)
            }
        };
        Observation {
            ping,
            api,
            service,
            socket,
            draining: self.draining.get(),
        }
    }

    async fn execute(
        &self,
        m: &dyn ServiceManager,
        action: &Action,
    ) -> Result<(), systemd_dbus::Error> {
        match action {
            Action::Enable(unit) => {
                m.enable(unit).await?;
                self.stats.reenables.fetch_add(1, Ordering::Relaxed);
            }
            Action::Start { unit, reset_failed } => {
                if *reset_failed {
                    m.reset_failed(unit).await?;
                    self.stats.reset_failed.fetch_add(1, Ordering::Relaxed);
                }
                m.start(unit).await?;
                if *unit == SERVICE {
                    self.stats.starts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Action::Restart(unit) => {
                // Clears a failed state and the start-limit counter, so the restart is accepted.
                m.reset_failed(unit).await?;
                self.stats.reset_failed.fetch_add(1, Ordering::Relaxed);
                m.restart(unit).await?;
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn count(&self, obs: &Observation, decision: &Decision) {
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .docker_healthy
            .store(obs.docker_healthy(), Ordering::Relaxed);
        if !obs.docker_healthy() {
            self.stats.ping_failures.fetch_add(1, Ordering::Relaxed);
        }
        if obs.ping == Probe::Ok && obs.api == Probe::TimedOut {
            self.stats.api_hangs.fetch_add(1, Ordering::Relaxed);
        }
        if decision.held.is_some() {
            self.stats.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(
        &self,
        obs: &Observation,
        decision: &Decision,
        link: &Link,
        last_action: &str,
        action_error: Option<&str>,
    ) {
        let repairing = matches!(link, Link::Up(_)) && self.config.enabled;
        self.stats.repair_mode.store(repairing, Ordering::Relaxed);
        let units = match &obs.service {
            Some(s) => format!("; {SERVICE} {s}"),
            None => String::new(),
        };
        match obs.problem() {
            None => self.board.set(
                DOCKER_COMPONENT,
                true,
                format!("answering ping and API{units}"),
            ),
            Some(p) => self.board.set(
                DOCKER_COMPONENT,
                false,
                format!("{p} ({} rounds in a row){units}", decision.failures.max(1)),
            ),
        }
        let mut detail = format!(
            "{}; {}; last action: {last_action}",
            self.mode_text(link),
            self.stats.summary()
        );
        if let Some(h) = &decision.held {
            let _ = write!(detail, "; withheld: {h}");
        }
        let ok = match action_error {
            Some(e) => {
                let _ = write!(detail, "; error: {e}");
                false
            }
            None => !decision.operator_needed,
        };
        self.board.set(WATCHDOG_COMPONENT, ok, detail);
    }
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Enable(u) => format!("enable {u}"),
        Action::Start {
            unit,
            reset_failed: true,
        } => format!("reset-failed and start {unit}"),
        Action::Start { unit, .. } => format!("start {unit}"),
        Action::Restart(u) => format!("reset-failed and restart {u}"),
    }
}

fn unit_text(u: Option<&policy::UnitState>) -> String {
    u.map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

fn without_digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
