//! The watchdog loop against a fake dockerd (a Unix socket answering `/_ping` and
//! `/containers/json`, or hanging) and the fake systemd: what it calls, counts and reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::policy::{Active, FileState, UnitState};
use super::systemd_dbus::FakeManager;
use super::*;

/// A minimal Docker API on a Unix socket. `hang_list` makes `/containers/json` never answer.
struct FakeDocker {
    path: PathBuf,
    hang_list: Arc<AtomicBool>,
    /// Requests answered or held: (`/_ping`, `/containers/json`).
    calls: Arc<std::sync::Mutex<(u32, u32)>>,
    _dir: tempfile::TempDir,
}

impl FakeDocker {
    fn start() -> FakeDocker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let hang_list = Arc::new(AtomicBool::new(false));
        let hang = hang_list.clone();
        let calls = Arc::new(std::sync::Mutex::new((0, 0)));
        let counts = calls.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let hang = hang.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                            let body = if path.starts_with("/_ping") {
                                counts.lock().unwrap().0 += 1;
                                "OK"
                            } else if path.starts_with("/containers/json") {
                                counts.lock().unwrap().1 += 1;
                                if hang.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                                "[]"
                            } else {
                                "{}"
                            };
                            let ctype = if body == "OK" {
                                "text/plain"
                            } else {
                                "application/json"
                            };
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nApi-Version: 1.41\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if conn.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeDocker {
            path,
            hang_list,
            calls,
            _dir: dir,
        }
    }
}

fn client(path: &Path) -> Option<String> {
    Some(format!("unix://{}", path.display()))
}

fn config() -> WatchdogConfig {
    WatchdogConfig {
        enabled: true,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        failure_threshold: 2,
        max_restarts_per_hour: 6,
        restart_backoff: Duration::from_secs(10),
    }
}

fn unit(active: Active, file: FileState) -> UnitState {
    UnitState {
        active,
        sub_state: "running".into(),
        result: "success".into(),
        file,
    }
}

struct Running {
    check_now: Arc<tokio::sync::Notify>,
    board: health::Board,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the watchdog stops when cancelled")
            .unwrap();
    }
}

fn spawn(
    config: WatchdogConfig,
    docker_host: Option<String>,
    systemd: Systemd,
    draining: Draining,
) -> Running {
    spawn_with(config, docker_host, systemd, draining, None)
}

fn spawn_with(
    config: WatchdogConfig,
    docker_host: Option<String>,
    systemd: Systemd,
    draining: Draining,
    engine_answered: Option<crate::docker::Answered>,
) -> Running {
    let board = health::Board::new();
    let stats = Arc::new(Stats::default());
    let cancel = CancellationToken::new();
    let check_now = Arc::new(tokio::sync::Notify::new());
    let w = Watchdog {
        config,
        docker_host,
        systemd,
        board: board.clone(),
        stats: stats.clone(),
        draining,
        heartbeat: None,
        check_now: check_now.clone(),
        engine_answered,
    };
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        w.run(c).await.unwrap();
    });
    Running {
        check_now,
        board,
        stats,
        cancel,
        task,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_hung_api_is_reset_and_restarted_through_systemd() {
    let docker = FakeDocker::start();
    docker.hang_list.store(true, Ordering::SeqCst);
    let systemd = Arc::new(FakeManager::default());
    systemd.set(SERVICE, unit(Active::Active, FileState::Enabled));
    let run = spawn(
        config(),
        client(&docker.path),
        Systemd::Given(systemd.clone()),
        Draining::new(),
    );
    until("a restart", || run.stats.restarts() == 1).await;
    let calls = systemd.calls();
    assert_eq!(
        calls[..2],
        [
            "ResetFailedUnit docker.service",
            "RestartUnit docker.service"
        ]
    );
    let snap = run.board.snapshot();
    assert!(!snap[DOCKER_COMPONENT].ok);
    assert!(
        snap[DOCKER_COMPONENT].detail.contains("API hung"),
        "{snap:?}"
    );
    assert!(
        snap[WATCHDOG_COMPONENT]
            .detail
            .contains("reset-failed and restart docker.service"),
        "{snap:?}"
    );
    let mut metrics = String::new();
    run.stats.render(&mut metrics);
    assert!(metrics.contains("ecs_hostd_docker_watchdog_restarts_total 1\n"));
    assert!(metrics.contains("ecs_hostd_docker_watchdog_api_hangs_total "));
    assert!(metrics.contains("ecs_hostd_docker_healthy 0\n"));
    assert!(metrics.contains("ecs_hostd_docker_watchdog_repair_enabled 1\n"));

    // Healthy again: the board says so, and no further restarts happen.
    docker.hang_list.store(false, Ordering::SeqCst);
    until("Docker healthy", || {
        run.board.snapshot()[DOCKER_COMPONENT].ok
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(run.stats.restarts(), 1);
    assert!(run.board.snapshot()[WATCHDOG_COMPONENT].ok);
    run.stop().await;
}

#[tokio::test]
async fn a_disabled_stopped_docker_is_enabled_and_started() {
    let docker = FakeDocker::start();
    let systemd = Arc::new(FakeManager::default());
    systemd.set(SERVICE, unit(Active::Inactive, FileState::Disabled));
    systemd.set(SOCKET, unit(Active::Active, FileState::Disabled));
    let run = spawn(
        config(),
        client(&docker.path),
        Systemd::Given(systemd.clone()),
        Draining::new(),
    );
    until("a start", || run.stats.starts() == 1).await;
    assert_eq!(
        systemd.calls(),
        [
            "EnableUnitFiles docker.service",
            "EnableUnitFiles docker.socket",
            "StartUnit docker.service"
        ]
    );
    assert_eq!(run.stats.reenables(), 2);
    run.stop().await;
}

#[tokio::test]
async fn never_restarts_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Arc::new(FakeManager::default());
    systemd.set(SERVICE, unit(Active::Active, FileState::Enabled));
    let draining = Draining::new();
    draining.set(true);
    let run = spawn(
        config(),
        client(&dir.path().join("missing.sock")),
        Systemd::Given(systemd.clone()),
        draining.clone(),
    );
    until("a withheld repair", || {
        run.board
            .snapshot()
            .get(WATCHDOG_COMPONENT)
            .is_some_and(|c| c.detail.contains("draining"))
    })
    .await;
    assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
    draining.set(false);
    until("a restart after the drain", || run.stats.restarts() == 1).await;
    run.stop().await;
}

#[tokio::test]
async fn without_systemd_it_only_pings_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let run = spawn(
        config(),
        client(&dir.path().join("missing.sock")),
        Systemd::Absent,
        Draining::new(),
    );
    until("a report", || {
        run.board
            .snapshot()
            .get(WATCHDOG_COMPONENT)
            .is_some_and(|c| c.detail.contains("cannot repair without systemd"))
    })
    .await;
    let snap = run.board.snapshot();
    assert!(!snap[DOCKER_COMPONENT].ok);
    assert!(
        snap[DOCKER_COMPONENT].detail.contains("no Docker socket"),
        "{snap:?}"
    );
    assert!(!snap[WATCHDOG_COMPONENT].ok);
    assert!(
        snap[WATCHDOG_COMPONENT]
            .detail
            .contains("ping and report only")
    );
    assert!(run.stats.ping_failures() >= 2);
    assert_eq!(run.stats.restarts() + run.stats.starts(), 0);
    run.stop().await;
}

#[tokio::test]
async fn repair_off_never_touches_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Arc::new(FakeManager::default());
    systemd.set(SERVICE, unit(Active::Inactive, FileState::Disabled));
    let run = spawn(
        WatchdogConfig {
            enabled: false,
            ..config()
        },
        client(&dir.path().join("missing.sock")),
        Systemd::Given(systemd.clone()),
        Draining::new(),
    );
    until("a report", || {
        run.board
            .snapshot()
            .get(WATCHDOG_COMPONENT)
            .is_some_and(|c| c.detail.contains("repair is off"))
    })
    .await;
    assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
    run.stop().await;
}

#[tokio::test]
async fn failed_systemd_calls_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Arc::new(FakeManager::default());
    systemd.set(SERVICE, unit(Active::Inactive, FileState::Enabled));
    let failing = Arc::new(FailingStart(systemd.clone()));
    let run = spawn(
        config(),
        client(&dir.path().join("missing.sock")),
        Systemd::Given(failing),
        Draining::new(),
    );
    until("an error report", || {
        run.board
            .snapshot()
            .get(WATCHDOG_COMPONENT)
            .is_some_and(|c| !c.ok && c.detail.contains("start docker.service failed"))
    })
    .await;
    let mut metrics = String::new();
    run.stats.render(&mut metrics);
    assert!(metrics.contains("ecs_hostd_docker_watchdog_action_errors_total 1\n"));
    run.stop().await;
}

/// Reads state from the fake but refuses to start anything.
struct FailingStart(Arc<FakeManager>);

#[async_trait::async_trait]
impl ServiceManager for FailingStart {
    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, systemd_dbus::Error> {
        self.0.unit_state(unit).await
    }
    async fn enable(&self, unit: &str) -> Result<(), systemd_dbus::Error> {
        self.0.enable(unit).await
    }
    async fn start(&self, unit: &str) -> Result<(), systemd_dbus::Error> {
        Err(systemd_dbus::Error::Timeout {
            op: "StartUnit",
            unit: unit.to_owned(),
        })
    }
    async fn restart(&self, unit: &str) -> Result<(), systemd_dbus::Error> {
        self.0.restart(unit).await
    }
    async fn reset_failed(&self, unit: &str) -> Result<(), systemd_dbus::Error> {
        self.0.reset_failed(unit).await
    }
}

/// An ACS heartbeat asks for a round at once (protocol spec §5.4), not an interval later.
#[tokio::test]
async fn a_check_asked_for_runs_a_round_before_the_interval() {
    let docker = FakeDocker::start();
    let mut cfg = config();
    cfg.interval = Duration::from_secs(3600);
    let run = spawn(cfg, client(&docker.path), Systemd::Absent, Draining::new());
    let rounds = || run.stats.rounds.load(Ordering::Relaxed);
    until("the first round", || rounds() == 1).await;
    // The interval is an hour: only the request can bring the second round within `until`'s
    // 10 s.
    run.check_now.notify_one();
    until("the round asked for", || rounds() == 2).await;
    run.stop().await;
}

#[tokio::test]
async fn a_healthy_docker_is_probed_with_one_list_call_a_round() {
    let docker = FakeDocker::start();
    let run = spawn(
        config(),
        client(&docker.path),
        Systemd::Absent,
        Draining::new(),
    );
    until("ten rounds", || docker.calls.lock().unwrap().1 >= 10).await;
    let (pings, lists) = *docker.calls.lock().unwrap();
    // The first round pings; every later one lists only.
    assert_eq!(pings, 1, "{pings} pings for {lists} lists");
    assert!(run.board.snapshot()[DOCKER_COMPONENT].ok);
    // A list that stops answering brings the ping back, which tells a hung API from a dead
    // daemon.
    docker.hang_list.store(true, Ordering::SeqCst);
    until("a hung-API report", || {
        run.board
            .snapshot()
            .get(DOCKER_COMPONENT)
            .is_some_and(|c| !c.ok && c.detail.contains("API"))
    })
    .await;
    assert!(docker.calls.lock().unwrap().0 >= 2);
    assert!(
        run.stats.api_hangs.load(Ordering::Relaxed) >= 1,
        "counted as a hung API"
    );
    run.stop().await;
}

/// While the engine keeps hearing from Docker (its listings), the watchdog's rounds ask Docker
/// nothing after the first; when the engine's answers stop, the watchdog probes again.
#[tokio::test]
async fn rounds_ask_docker_nothing_while_the_engine_hears_from_it() {
    let docker = FakeDocker::start();
    let answered = crate::docker::Answered::default();
    let run = spawn_with(
        config(),
        client(&docker.path),
        Systemd::Absent,
        Draining::new(),
        Some(answered.clone()),
    );
    let rounds = || run.stats.rounds.load(Ordering::Relaxed);
    until("the first round", || rounds() >= 1).await;
    let first = *docker.calls.lock().unwrap();
    let engine = {
        let answered = answered.clone();
        tokio::spawn(async move {
            loop {
                answered.mark();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let from = rounds();
    until("ten more rounds", || rounds() >= from + 10).await;
    assert_eq!(
        *docker.calls.lock().unwrap(),
        first,
        "(pings, lists) while the engine hears from Docker"
    );
    assert!(run.board.snapshot()[DOCKER_COMPONENT].ok);
    engine.abort();
    until("the watchdog's own list again", || {
        docker.calls.lock().unwrap().1 > first.1
    })
    .await;
    run.stop().await;
}
