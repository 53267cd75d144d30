//! The agent as a systemd service on a real, booted systemd 252 (a Debian bookworm "instance" in
//! a Docker container, see tests/systemd/common.rs): READY after registration, reboots, Docker
//! kept enabled and running over D-Bus, a frozen or crash-looping dockerd repaired, a wedged
//! agent restarted by systemd's watchdog, and exit code 5 leaving it down.
//!
//! Needs the shared Docker engine, Debian's archive once per machine (the image build) and
//! ec2sim's venv; fails, never skips, without them. Each test boots its own instance.

#[path = "systemd/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Ec2Sim, Instance, InstanceOptions, wait_for};

/// Watchdog settings used inside: fast enough for a test, same code paths as production.
const FAST_WATCHDOG: [&str; 5] = [
    "ECS_HOSTD_WATCHDOG_INTERVAL=2s",
    "ECS_HOSTD_WATCHDOG_TIMEOUT=2s",
    "ECS_HOSTD_WATCHDOG_FAILURES=3",
    "ECS_HOSTD_WATCHDOG_RESTART_BACKOFF=2s",
    "ECS_HOSTD_WATCHDOG_MAX_RESTARTS_PER_HOUR=20",
];

fn options(cluster: &str, service_lines: &[&str]) -> InstanceOptions {
    let mut ecs_config = vec![format!("ECS_CLUSTER={cluster}")];
    ecs_config.extend(FAST_WATCHDOG.iter().map(|s| s.to_string()));
    InstanceOptions {
        ecs_config,
        service_lines: service_lines.iter().map(|s| s.to_string()).collect(),
    }
}

/// Boots an instance with ec2sim, installs the agent and waits for READY.
fn registered(test: &str, service_lines: &[&str]) -> (Ec2Sim, Instance) {
    registered_with(test, service_lines, &[])
}

fn registered_with(test: &str, service_lines: &[&str], ecs_config: &[&str]) -> (Ec2Sim, Instance) {
    let sim = Ec2Sim::start();
    sim.create_cluster(test);
    let inst = Instance::boot(test, Some(&sim));
    let mut opts = options(test, service_lines);
    opts.ecs_config
        .extend(ecs_config.iter().map(|s| s.to_string()));
    inst.install_agent(Some(&sim), &opts);
    inst.wait_agent_ready(Duration::from_secs(90));
    (sim, inst)
}

fn repairs(journal: &str, action: &str) -> Vec<f64> {
    journal
        .lines()
        .filter(|l| {
            l.contains("Repairing Docker.") && l.contains(&format!("watchdog.action={action}"))
        })
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn ready_after_registration_and_a_reboot_keeps_docker_enabled_and_the_same_arn() {
    let (_sim, inst) = registered("reboot", &[]);
    let arn = inst.arn();
    let status = inst.prop("ecs-hostd", "StatusText");
    assert!(
        status.contains(&format!("registered as {arn}")),
        "STATUS= after READY: {status:?}"
    );
    // The agent's unit has the watchdog systemd gave it, and it pings (still active later).
    assert_eq!(inst.prop("ecs-hostd", "WatchdogUSec"), "1min");
    let first_pid = inst.prop("ecs-hostd", "MainPID");

    // While the agent is down, someone disables Docker; then the instance reboots.
    inst.sh("systemctl stop ecs-hostd && systemctl disable docker.service docker.socket");
    assert_eq!(inst.is_enabled("docker.service"), "disabled");
    let reboot = Instant::now();
    common::ok(std::process::Command::new("docker").args(["restart", &inst.name]));
    inst.wait_booted();
    inst.wait_agent_ready(Duration::from_secs(90));
    let ready_after = reboot.elapsed();

    wait_for(
        "docker.service enabled again",
        Duration::from_secs(30),
        || {
            (inst.is_enabled("docker.service") == "enabled"
                && inst.is_enabled("docker.socket") == "enabled")
                .then_some(())
        },
    );
    assert_eq!(inst.prop("docker", "ActiveState"), "active");
    assert!(inst.docker_answers());
    assert_eq!(
        inst.arn(),
        arn,
        "same container-instance ARN after a reboot"
    );
    assert_eq!(
        inst.prop("ecs-hostd", "NRestarts"),
        "0",
        "no crash loop at boot"
    );
    assert_ne!(inst.prop("ecs-hostd", "MainPID"), first_pid);
    let journal = inst.journal("ecs-hostd");
    assert!(
        !repairs(&journal, "enable docker.service").is_empty(),
        "the agent logged the re-enable with its reason:\n{journal}"
    );
    let status = inst.status();
    assert!(status.contains("watchdog:"), "{status}");
    eprintln!("reboot: agent READY {ready_after:.1?} after `docker restart`");
}

#[test]
fn an_operator_disable_now_of_docker_is_undone() {
    let (_sim, inst) = registered("disable", &[]);
    let t0 = Instant::now();
    inst.sh("systemctl disable --now docker.socket docker.service");
    wait_for(
        "Docker enabled and active again",
        Duration::from_secs(30),
        || {
            (inst.is_enabled("docker.service") == "enabled"
                && inst.is_enabled("docker.socket") == "enabled"
                && inst.prop("docker", "ActiveState") == "active")
                .then_some(())
        },
    );
    let repaired = t0.elapsed();
    wait_for(
        "the inner Docker to answer",
        Duration::from_secs(30),
        || inst.docker_answers().then_some(()),
    );
    let journal = inst.journal("ecs-hostd");
    assert!(
        !repairs(&journal, "enable docker.service").is_empty(),
        "{journal}"
    );
    assert!(
        !repairs(&journal, "start docker.service").is_empty(),
        "{journal}"
    );
    assert!(
        journal.contains("reason=docker.service is disabled"),
        "{journal}"
    );
    assert!(
        inst.metric("ecs_hostd_docker_watchdog_reenables_total")
            .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        inst.metric("ecs_hostd_docker_watchdog_starts_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        inst.metric("ecs_hostd_docker_watchdog_repair_enabled"),
        Some(1.0)
    );
    eprintln!("disable --now: enabled and active again after {repaired:.1?}");
}

#[test]
fn a_frozen_dockerd_is_detected_and_restarted() {
    let (_sim, inst) = registered("frozen", &[]);
    let pid = inst.prop("docker", "MainPID");
    assert_ne!(pid, "0");
    let t0 = Instant::now();
    inst.sh(&format!("kill -STOP {pid}"));
    // Detection: 3 failed rounds of (2 s ping deadline + 2 s interval) ≈ 12 s; allow 3×.
    let detected = wait_for(
        "the watchdog to restart docker",
        Duration::from_secs(40),
        || {
            (!repairs(
                &inst.journal("ecs-hostd"),
                "reset-failed and restart docker.service",
            )
            .is_empty())
            .then(|| t0.elapsed())
        },
    );
    let restarted = wait_for(
        "a new dockerd that answers",
        Duration::from_secs(60),
        || {
            let new = inst.prop("docker", "MainPID");
            (new != pid && new != "0" && inst.docker_answers()).then(|| t0.elapsed())
        },
    );
    let journal = inst.journal("ecs-hostd");
    assert!(journal.contains("ping timed out"), "{journal}");
    assert_eq!(
        inst.metric("ecs_hostd_docker_watchdog_restarts_total"),
        Some(1.0)
    );
    wait_for(
        "Docker healthy on /metrics",
        Duration::from_secs(20),
        || (inst.metric("ecs_hostd_docker_healthy") == Some(1.0)).then_some(()),
    );
    assert_eq!(inst.prop("ecs-hostd", "NRestarts"), "0");
    eprintln!(
        "frozen dockerd: restart issued {detected:.1?} after SIGSTOP, Docker answering again after {restarted:.1?}"
    );
}

#[test]
fn a_crash_looping_docker_is_reset_and_started_with_backoff() {
    let (_sim, inst) = registered("crashloop", &[]);
    // dockerd now fails at once; systemd's own Restart= burns its start limit (3 in 60 s).
    inst.write(
        "/etc/systemd/system/docker.service.d/crash.conf",
        "[Service]\nExecStartPre=/bin/false\n",
    );
    inst.sh("systemctl daemon-reload && systemctl restart --no-block docker.service");
    let starts = wait_for(
        "three reset-and-start repairs",
        Duration::from_secs(60),
        || {
            let r = repairs(
                &inst.journal("ecs-hostd"),
                "reset-failed and start docker.service",
            );
            (r.len() >= 3).then_some(r)
        },
    );
    let journal = inst.journal("docker");
    assert!(
        journal.contains("start-limit-hit")
            || journal.contains("Start request repeated too quickly"),
        "{journal}"
    );
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff 2 s, then 6 s (×3 per repair), measured to the second.
    assert!(gaps[0] >= 1.5, "gaps {gaps:?}");
    assert!(gaps[1] >= 5.0 && gaps[1] > gaps[0] * 2.0, "gaps {gaps:?}");
    let ours = inst.journal("ecs-hostd");
    assert!(
        ours.contains("start-limit-hit"),
        "the reason names the start limit:\n{ours}"
    );

    // Fixed: the next repair brings Docker back.
    inst.sh("rm /etc/systemd/system/docker.service.d/crash.conf && systemctl daemon-reload");
    wait_for(
        "Docker active after the fix",
        Duration::from_secs(60),
        || (inst.prop("docker", "ActiveState") == "active" && inst.docker_answers()).then_some(()),
    );
    eprintln!("crash loop: repairs at gaps {gaps:?} s");
}

#[test]
fn a_wedged_agent_is_restarted_by_the_systemd_watchdog() {
    // First without the hook: a 4 s watchdog is fed and the agent stays up.
    let (_sim, inst) = registered("wedge", &["WatchdogSec=4s"]);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        inst.prop("ecs-hostd", "NRestarts"),
        "0",
        "pings keep a healthy agent alive"
    );
    assert_eq!(inst.prop("ecs-hostd", "ActiveState"), "active");

    // Now a subsystem wedges 3 s after start: the pings stop and systemd kills and restarts it.
    inst.write(
        "/etc/systemd/system/ecs-hostd.service.d/wedge.conf",
        "[Service]\nEnvironment=ECS_HOSTD_TEST_WEDGE_AFTER=3s\n",
    );
    let pid = inst.prop("ecs-hostd", "MainPID");
    inst.sh("systemctl daemon-reload && systemctl restart ecs-hostd");
    let t0 = Instant::now();
    let killed = wait_for(
        "systemd's watchdog to fire",
        Duration::from_secs(60),
        || {
            inst.journal("ecs-hostd")
                .contains("Watchdog timeout")
                .then(|| t0.elapsed())
        },
    );
    wait_for("a restart by systemd", Duration::from_secs(30), || {
        (inst
            .prop("ecs-hostd", "NRestarts")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1)
            .then_some(())
    });
    let journal = inst.journal("ecs-hostd");
    assert!(
        journal.contains("withholding the systemd watchdog ping"),
        "{journal}"
    );
    assert_ne!(inst.prop("ecs-hostd", "MainPID"), pid);
    eprintln!(
        "wedge: watchdog timeout {killed:.1?} after the agent started (wedge at 3 s, WatchdogSec=4s)"
    );
}

#[test]
fn a_terminal_config_error_exits_5_and_systemd_leaves_it_down() {
    let inst = Instance::boot("exit5", None);
    inst.write(
        "/etc/ecs-hostd/config.toml",
        "[watchdog]\nenabled = \"maybe\"\n",
    );
    inst.install_agent(None, &options("exit5", &[]));
    wait_for("ecs-hostd failed", Duration::from_secs(30), || {
        (inst.prop("ecs-hostd", "ActiveState") == "failed").then_some(())
    });
    assert_eq!(inst.prop("ecs-hostd", "ExecMainStatus"), "5");
    assert_eq!(inst.prop("ecs-hostd", "Result"), "exit-code");
    // Longer than RestartSec=5s: still down, never restarted.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(inst.prop("ecs-hostd", "ActiveState"), "failed");
    assert_eq!(inst.prop("ecs-hostd", "NRestarts"), "0");
    let journal = inst.journal("ecs-hostd");
    assert!(
        journal.contains("config.toml"),
        "the error names the file:\n{journal}"
    );
}

#[test]
fn the_agent_waits_for_a_masked_docker_without_crash_looping() {
    let sim = Ec2Sim::start();
    sim.create_cluster("masked");
    let inst = Instance::boot("masked", Some(&sim));
    inst.sh("systemctl stop docker.socket docker.service && systemctl mask docker.service");
    inst.install_agent(Some(&sim), &options("masked", &[]));
    wait_for(
        "STATUS= saying it waits for Docker",
        Duration::from_secs(30),
        || {
            inst.prop("ecs-hostd", "StatusText")
                .contains("waiting for Docker")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        inst.prop("ecs-hostd", "ActiveState"),
        "activating",
        "no READY without Docker"
    );
    assert_eq!(
        inst.prop("ecs-hostd", "NRestarts"),
        "0",
        "waits, does not crash-loop"
    );
    assert_eq!(
        inst.prop("docker", "ActiveState"),
        "inactive",
        "a mask is not fought"
    );
    let journal = inst.journal("ecs-hostd");
    assert!(journal.contains("masked by an operator"), "{journal}");

    // The operator unmasks it: the watchdog starts Docker and the agent comes up.
    inst.sh("systemctl unmask docker.service");
    inst.wait_agent_ready(Duration::from_secs(60));
    assert_eq!(inst.prop("docker", "ActiveState"), "active");
    assert!(inst.arn().starts_with("arn:aws:ecs:"));
}

#[test]
fn with_the_watchdog_off_docker_is_reported_not_repaired() {
    let (_sim, inst) = registered_with("off", &[], &["ECS_HOSTD_DOCKER_WATCHDOG=false"]);
    inst.sh("systemctl disable --now docker.socket docker.service");
    wait_for(
        "the withheld repair to be reported",
        Duration::from_secs(30),
        || {
            inst.journal("ecs-hostd")
                .contains("repair is off (watchdog.enabled=false)")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(inst.is_enabled("docker.service"), "disabled");
    assert_eq!(inst.prop("docker", "ActiveState"), "inactive");
    assert_eq!(
        inst.metric("ecs_hostd_docker_watchdog_repair_enabled"),
        Some(0.0)
    );
    assert_eq!(inst.metric("ecs_hostd_docker_healthy"), Some(0.0));
    let status = inst.status();
    assert!(status.contains("FAIL docker"), "{status}");
    assert!(
        status.contains("ECS_HOSTD_DOCKER_WATCHDOG=false"),
        "{status}"
    );
    // Reported once per reason, not once per round.
    let withheld = inst
        .journal("ecs-hostd")
        .matches("Docker repair withheld.")
        .count();
    assert!(withheld <= 3, "{withheld} withheld lines");
}
