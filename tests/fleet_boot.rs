//! A simulated fleet: 50 agents, each with its own EC2 identity (`POST /ec2sim/instances`), data
//! directory and API port, boot together against one ec2sim. The test prints the peak ECS (and
//! CloudWatch) request rate seen by ec2sim, per second, with and without the start-up jitter, and
//! shows the jitter spreads the first registrations (no thundering herd).
//!
//! CloudWatch requests are counted too: every agent publishes host metrics every 10 s here
//! (the minimum interval, so the test sees each agent's first flushes), and the flush phase each
//! process draws spreads PutMetricData over the interval the way the start-up jitter spreads
//! registrations.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const FLEET: usize = 50;

/// Request times (epoch seconds) of one service since the last clear.
fn times(sim: &Ec2Sim, service: &str, operation: Option<&str>) -> Vec<f64> {
    let path = match operation {
        Some(op) => format!("/ec2sim/requests?service={service}&operation={op}"),
        None => format!("/ec2sim/requests?service={service}"),
    };
    let mut t: Vec<f64> = sim.get(&path)["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["time"].as_f64())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// The largest number of requests in any one-second window.
fn peak_per_second(times: &[f64]) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1.0 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

/// Requests per whole second after the first one, for the printout.
fn histogram(times: &[f64]) -> Vec<usize> {
    let Some(first) = times.first() else {
        return Vec::new();
    };
    let mut h = Vec::new();
    for t in times {
        let i = (t - first) as usize;
        if h.len() <= i {
            h.resize(i + 1, 0);
        }
        h[i] += 1;
    }
    h
}

struct Round {
    ecs_peak: usize,
    cloudwatch_peak: usize,
    cloudwatch_total: usize,
    spread: f64,
    boot: Duration,
    rss_total_mib: u64,
    rss_max_mib: u64,
}

/// Boots the fleet into a fresh cluster; `jitter` None = the default.
async fn boot(
    sim: &Ec2Sim,
    instances: &[(String, String)],
    jitter: Option<&str>,
    label: &str,
) -> Round {
    let cluster = unique("fleet");
    create_cluster(sim, &cluster).await;
    let dirs: Vec<tempfile::TempDir> = (0..instances.len())
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    http("DELETE", &format!("{}/ec2sim/requests", sim.url()), None);
    let started = Instant::now();
    let mut agents: Vec<Agent> = instances
        .iter()
        .zip(&dirs)
        .map(|((_, imds), dir)| {
            let mut spec = AgentSpec::new(sim, &cluster, dir.path());
            spec.imds = imds.clone();
            spec.env.retain(|(k, _)| k != "ECS_HOSTD_STARTUP_JITTER");
            if let Some(j) = jitter {
                spec = spec.env("ECS_HOSTD_STARTUP_JITTER", j);
            }
            spec.env.push(("RUST_LOG".into(), "warn".into()));
            spec = spec
                .env("ECS_HOSTD_METRICS", "true")
                .env("ECS_HOSTD_METRICS_INTERVAL", "10s")
                .env("ECS_HOSTD_METRICS_FLUSH_INTERVAL", "10s");
            spec.start()
        })
        .collect();

    // All registered: one RegisterContainerInstance per agent.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = times(sim, "ecs", Some("RegisterContainerInstance")).len();
        if n >= instances.len() {
            break;
        }
        for a in agents.iter_mut() {
            if let Ok(Some(s)) = a.child.try_wait() {
                panic!("an agent exited with {s}:\n{}", a.log());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{label}: only {n} of {} registered in 90 s",
            instances.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let boot = started.elapsed();
    // Let the agents settle (first lifecycle polls, API up), then measure memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<u64> = agents.iter().map(|a| a.rss_kib() / 1024).collect();
    // What the agents sent (before the test's own ListContainerInstances below).
    let ecs = times(sim, "ecs", None);
    let registers = times(sim, "ecs", Some("RegisterContainerInstance"));

    // Every agent's first PutMetricData: the first 10 s collection, then its flush phase.
    let deadline = Instant::now() + Duration::from_secs(45);
    let cloudwatch = loop {
        let cw = times(sim, "cloudwatch", Some("PutMetricData"));
        if cw.len() >= instances.len() || Instant::now() > deadline {
            break cw;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        cloudwatch.len() >= instances.len(),
        "{label}: only {} PutMetricData requests from {} agents in 45 s",
        cloudwatch.len(),
        instances.len()
    );

    let listed = sim
        .ecs()
        .await
        .list_container_instances()
        .cluster(&cluster)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.container_instance_arns().len(),
        instances.len(),
        "{label}: one container instance per agent"
    );

    let spread = registers.last().unwrap() - registers.first().unwrap();
    println!(
        "figure: fleet of {} ({label}): {} ECS requests, peak {} per second, registrations spread over {spread:.1} s, per-second ECS requests {:?}; CloudWatch: {} requests, peak {} per second; all registered after {boot:?}; RSS total {} MiB, max {} MiB per agent",
        instances.len(),
        ecs.len(),
        peak_per_second(&ecs),
        histogram(&ecs),
        cloudwatch.len(),
        peak_per_second(&cloudwatch),
        rss.iter().sum::<u64>(),
        rss.iter().max().unwrap(),
    );

    // Stop them all at once, then wait: every process must exit cleanly.
    let pids: Vec<String> = agents.iter().map(|a| a.child.id().to_string()).collect();
    let _ = Command::new("kill").args(&pids).status();
    for a in agents.iter_mut() {
        let status = a.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", a.log());
    }
    Round {
        ecs_peak: peak_per_second(&ecs),
        cloudwatch_peak: peak_per_second(&cloudwatch),
        cloudwatch_total: cloudwatch.len(),
        spread,
        boot,
        rss_total_mib: rss.iter().sum(),
        rss_max_mib: rss.iter().copied().max().unwrap_or(0),
    }
}

#[test]
fn peak_window_counts_the_busiest_second() {
    assert_eq!(peak_per_second(&[]), 0);
    assert_eq!(peak_per_second(&[0.0, 0.5, 0.99, 1.0, 3.0]), 3);
    assert_eq!(peak_per_second(&[0.0, 2.0, 4.0]), 1);
    assert_eq!(histogram(&[10.0, 10.2, 12.5]), vec![2, 0, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_agents_boot_together_and_the_start_up_jitter_spreads_their_registrations() {
    let sim = Ec2Sim::start();
    let instances: Vec<(String, String)> =
        (0..FLEET).map(|_| sim.new_instance(json!({}))).collect();
    let ids: std::collections::BTreeSet<&String> = instances.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), FLEET, "distinct identities");

    let herd = boot(&sim, &instances, Some("0"), "no jitter").await;
    let spread = boot(&sim, &instances, None, "default start-up jitter (5s)").await;

    println!(
        "figure: fleet of {FLEET}: peak ECS requests per second {} without jitter, {} with the default jitter; CloudWatch {} / {} (CloudWatch requests: {} / {})",
        herd.ecs_peak,
        spread.ecs_peak,
        herd.cloudwatch_peak,
        spread.cloudwatch_peak,
        herd.cloudwatch_total,
        spread.cloudwatch_total
    );
    assert!(
        spread.spread >= 2.5,
        "a 5 s jitter spreads 50 registrations over seconds: {:.1} s",
        spread.spread
    );
    assert!(
        spread.ecs_peak < herd.ecs_peak,
        "jitter lowers the peak ECS rate: {} vs {}",
        spread.ecs_peak,
        herd.ecs_peak
    );
    assert!(
        spread.boot < Duration::from_secs(30) && herd.boot < Duration::from_secs(30),
        "boot times {:?} / {:?}",
        herd.boot,
        spread.boot
    );
    // Each agent flushes at its own random phase of the 10 s interval, whatever the start-up
    // jitter: 50 first requests spread over seconds, not one burst.
    for round in [&herd, &spread] {
        assert!(
            round.cloudwatch_peak <= FLEET / 2,
            "flush phases spread PutMetricData: peak {} per second of {}",
            round.cloudwatch_peak,
            round.cloudwatch_total
        );
    }
    // Bounded memory: 50 debug-build agents.
    assert!(
        herd.rss_max_mib < 100 && spread.rss_max_mib < 100,
        "per-agent RSS {} / {} MiB",
        herd.rss_max_mib,
        spread.rss_max_mib
    );
    println!(
        "figure: fleet of {FLEET}: RSS total {} MiB (no jitter), {} MiB (jitter)",
        herd.rss_total_mib, spread.rss_total_mib
    );
}
