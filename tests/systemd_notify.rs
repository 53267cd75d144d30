//! The sd_notify side of the service contract, observed from outside: the real binary runs with
//! `NOTIFY_SOCKET` pointing at a Unix datagram socket this test reads (test-world.md §6), plus
//! `WATCHDOG_USEC` for the watchdog.
//!
//! - while Docker is unreachable: `STATUS=waiting for Docker…`, pings, no `READY=1`;
//! - with Docker (the shared engine, only pinged) and ec2sim: STATUS lines in order, `READY=1`
//!   after registration, pings, the watchdog in ping-only mode on `/healthz`, `/metrics` and
//!   `ecs-hostd status` (this machine has no systemd as PID 1), `STOPPING=1` and exit 0;
//! - with the debug-build wedge hook: pings stop.

#[path = "systemd/common.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{AGENT, Ec2Sim, ok, wait_for};

/// A notify socket and what arrived on it.
struct Notify {
    sock: UnixDatagram,
    start: Instant,
    /// (seconds since start, one assignment such as `READY=1`)
    got: Vec<(f64, String)>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            sock,
            start: Instant::now(),
            got: Vec::new(),
        }
    }

    /// Reads for `d`.
    fn read_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let t = self.start.elapsed().as_secs_f64();
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    self.got.push((t, line.to_owned()));
                }
            }
        }
    }

    /// Reads until a line starting with `prefix` arrives, or panics after `timeout`.
    fn read_until(&mut self, prefix: &str, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((t, _)) = self.got.iter().find(|(_, l)| l.starts_with(prefix)) {
                return *t;
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix} within {timeout:?}; got {:?}",
                self.got
            );
            self.read_for(Duration::from_millis(100));
        }
    }

    fn lines(&self, prefix: &str) -> Vec<(f64, String)> {
        self.got
            .iter()
            .filter(|(_, l)| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the agent with its own data dir, config files and API port.
fn agent(dir: &Path, env: &[(&str, String)]) -> (Child, u16) {
    let ecs_config = dir.join("ecs.config");
    let toml = dir.join("config.toml");
    std::fs::write(&ecs_config, "").unwrap();
    std::fs::write(&toml, "").unwrap();
    let port = free_port();
    let mut cmd = Command::new(AGENT);
    cmd.arg("run")
        .arg("--ecs-config")
        .arg(&ecs_config)
        .arg("--config")
        .arg(&toml)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("ECS_DATADIR", dir.join("data"))
        .env("ECS_HOSTD_API_ADDR", format!("127.0.0.1:{port}"))
        .env("ECS_HOSTD_WATCHDOG_INTERVAL", "1s")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("the agent starts"), port)
}

fn terminate(child: &mut Child) -> i32 {
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "the agent did not stop within its stop deadline"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn while_docker_is_unreachable_it_says_so_pings_and_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(&dir.path().join("notify.sock"));
    let (mut child, _) = agent(
        dir.path(),
        &[
            (
                "DOCKER_HOST",
                format!("unix://{}/no-docker.sock", dir.path().display()),
            ),
            ("WATCHDOG_USEC", "900000".into()),
        ],
    );
    notify.read_for(Duration::from_secs(3));
    let status = notify.lines("STATUS=");
    assert!(
        status
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=waiting for Docker")),
        "{:?}",
        notify.got
    );
    // Pings every 300 ms while it waits: the subsystems are alive, only Docker is missing.
    let pings = notify.lines("WATCHDOG=1");
    assert!(pings.len() >= 5, "{:?}", notify.got);
    assert!(
        notify.lines("READY=1").is_empty(),
        "no READY without Docker"
    );

    assert_eq!(terminate(&mut child), 0, "SIGTERM is a clean stop");
    notify.read_for(Duration::from_millis(300));
    assert!(!notify.lines("STOPPING=1").is_empty(), "{:?}", notify.got);
}

#[test]
fn ready_after_docker_and_registration_then_pings_and_stopping() {
    assert!(
        Path::new("/var/run/docker.sock").exists(),
        "this test needs the shared Docker engine (scripts/world.sh starts it)"
    );
    let sim = Ec2Sim::start();
    sim.create_cluster("notify");
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(&dir.path().join("notify.sock"));
    let (mut child, port) = agent(
        dir.path(),
        &[
            ("ECS_CLUSTER", "notify".into()),
            ("AWS_ENDPOINT_URL", sim.url()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.url()),
            ("WATCHDOG_USEC", "1500000".into()),
        ],
    );
    let ready_at = notify.read_until("READY=1", Duration::from_secs(60));
    let status: Vec<String> = notify
        .lines("STATUS=")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let pos = |p: &str| {
        status
            .iter()
            .position(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} in {status:?}\nlog:\n{}", sim.log_text()))
    };
    assert!(pos("STATUS=waiting for Docker") < pos("STATUS=reading the instance identity"));
    assert!(
        pos("STATUS=reading the instance identity") < pos("STATUS=registering with cluster notify")
    );
    let ready_status = notify
        .got
        .iter()
        .find(|(t, l)| *t >= ready_at && l.starts_with("STATUS=registered as arn:aws:ecs:"));
    assert!(ready_status.is_some(), "{:?}", notify.got);

    // Pings at a third of 1.5 s while every subsystem beats.
    notify.read_for(Duration::from_secs(2));
    let pings = notify
        .lines("WATCHDOG=1")
        .into_iter()
        .filter(|(t, _)| *t > ready_at)
        .count();
    assert!(pings >= 3, "{:?}", notify.got);

    // No systemd as PID 1 here: the Docker watchdog only pings and reports, everywhere.
    let health = wait_for(
        "the watchdog's first report",
        Duration::from_secs(10),
        || {
            let h = get(port, "/healthz");
            h.contains("\"watchdog\"").then_some(h)
        },
    );
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    let wd = &h["components"]["watchdog"];
    assert!(
        wd["detail"]
            .as_str()
            .unwrap()
            .contains("ping and report only: systemd is not the init system"),
        "{h}"
    );
    assert_eq!(h["components"]["docker"]["ok"], true, "{h}");
    assert_eq!(h["components"]["supervisor"]["ok"], true, "{h}");
    let metrics = get(port, "/metrics");
    for line in [
        "ecs_hostd_docker_healthy 1",
        "ecs_hostd_docker_watchdog_repair_enabled 0",
        "ecs_hostd_docker_watchdog_restarts_total 0",
        "ecs_hostd_docker_watchdog_reenables_total 0",
        "ecs_hostd_docker_watchdog_ping_failures_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    let status = ok(Command::new(AGENT)
        .arg("status")
        .env("ECS_HOSTD_API_ADDR", format!("127.0.0.1:{port}")));
    assert!(
        status.contains("watchdog: ping and report only"),
        "{status}"
    );

    assert_eq!(terminate(&mut child), 0);
    notify.read_for(Duration::from_millis(300));
    let stopping = notify.lines("STOPPING=1");
    assert!(!stopping.is_empty(), "{:?}", notify.got);
    eprintln!("READY=1 {ready_at:.2}s after start");
}

#[test]
fn a_wedged_subsystem_stops_the_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(&dir.path().join("notify.sock"));
    let (mut child, _) = agent(
        dir.path(),
        &[
            (
                "DOCKER_HOST",
                format!("unix://{}/no-docker.sock", dir.path().display()),
            ),
            ("WATCHDOG_USEC", "600000".into()),
            ("ECS_HOSTD_TEST_WEDGE_AFTER", "1s".into()),
        ],
    );
    notify.read_for(Duration::from_secs(5));
    let pings: Vec<f64> = notify
        .lines("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(pings.len() >= 2, "pings before the wedge: {:?}", notify.got);
    let last = pings.last().copied().unwrap_or(0.0);
    // Wedge at 1 s + 1 s of allowed silence + one 200 ms period, plus process start-up.
    assert!(last < 3.0, "pings continued after the wedge: {pings:?}");
    assert_eq!(terminate(&mut child), 0);
}
