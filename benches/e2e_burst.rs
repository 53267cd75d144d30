//! End-to-end burst benchmark (prints figures; asserts nothing about speed).
//!
//! The real binary registered with ec2sim; N single-container tasks placed with RunTask all at
//! once; each task's latency is RunTask returned → RUNNING visible in DescribeTasks (which ec2sim
//! only shows once the agent's SubmitTaskStateChange was accepted), so it covers payload
//! delivery, the engine, Docker, and the report. Beside it, in the same run, the same N containers
//! created and started directly through bollard at the same concurrency.
//!
//! `cargo test --bench e2e_burst` runs a 3-task smoke pass; `cargo test --bench e2e_burst --
//! --bench` runs 50 (debug binary). Figures from a debug build are pessimistic for the agent.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use aws_sdk_ecs::types::ContainerDefinition;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use common::*;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 50 } else { 3 };
    let image = std::env::var("ECS_HOSTD_TEST_IMAGE")
        .unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into());

    let sim = Ec2Sim::start();
    let cluster = unique("burst");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_HOSTD_METRICS", "false")
        .env("ECS_HOSTD_STARTUP_JITTER", "0")
        .start();
    agent.wait_registered(Duration::from_secs(60));
    let ecs = sim.ecs().await;
    let td = ecs
        .register_task_definition()
        .family(unique("burst"))
        .container_definitions(
            ContainerDefinition::builder()
                .name("c")
                .image(&image)
                .memory(16)
                .essential(true)
                .command("sleep")
                .command("3600")
                .docker_labels("ecs-hostd.test", "burst")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();

    let rss_idle = agent.rss_kib();
    let cpu_before = cpu_secs(agent.child.id());
    let burst_start = Instant::now();
    let mut placed: Vec<(String, Instant)> = Vec::new();
    while placed.len() < n {
        let count = (n - placed.len()).min(10) as i32;
        let out = ecs
            .run_task()
            .cluster(&cluster)
            .task_definition(&td)
            .count(count)
            .send()
            .await
            .unwrap();
        let at = Instant::now();
        for t in out.tasks() {
            placed.push((t.task_arn().unwrap().to_owned(), at));
        }
        assert!(out.failures().is_empty(), "{:?}", out.failures());
    }
    let mut latencies = Vec::new();
    let mut pending: Vec<(String, Instant)> = placed.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() && Instant::now() < deadline {
        let arns: Vec<String> = pending.iter().take(100).map(|(a, _)| a.clone()).collect();
        let out = ecs
            .describe_tasks()
            .cluster(&cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .unwrap();
        let now = Instant::now();
        for t in out.tasks() {
            if t.last_status() == Some("RUNNING") {
                let arn = t.task_arn().unwrap();
                if let Some(pos) = pending.iter().position(|(a, _)| a == arn) {
                    let (_, at) = pending.remove(pos);
                    latencies.push(now - at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let burst_total = burst_start.elapsed();
    assert!(
        pending.is_empty(),
        "{} tasks never reached RUNNING:\n{}",
        pending.len(),
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let cpu_burst = cpu_secs(agent.child.id()) - cpu_before;
    let rss_running = agent.rss_kib();
    latencies.sort();

    // Stop the tasks (and let the agent clean nothing yet: containers stay until cleanup).
    for (arn, _) in &placed {
        let _ = ecs.stop_task().cluster(&cluster).task(arn).send().await;
    }

    // Baseline: the same containers straight through bollard, all at once.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let base_start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..n {
        let docker = docker.clone();
        let image = image.clone();
        let name = format!("{}-{i}", unique("burst-base"));
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let body = bollard::models::ContainerCreateBody {
                image: Some(image),
                cmd: Some(vec!["sleep".into(), "3600".into()]),
                labels: Some([("ecs-hostd.test".to_string(), "burst".to_string())].into()),
                host_config: Some(bollard::models::HostConfig {
                    memory: Some(16 * 1024 * 1024),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::default().name(&name).build();
            let id = docker.create_container(Some(opts), body).await.unwrap().id;
            docker.start_container(&id, None).await.unwrap();
            (id, t0.elapsed())
        }));
    }
    let mut base = Vec::new();
    let mut ids = Vec::new();
    for h in handles {
        let (id, d) = h.await.unwrap();
        ids.push(id);
        base.push(d);
    }
    let base_total = base_start.elapsed();
    base.sort();
    for id in ids {
        let _ = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
    }

    println!(
        "\n== end-to-end burst: {n} single-container tasks ({}) ==",
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "optimised build"
        }
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| RunTask → RUNNING accepted, p50 | {:?} |",
        pct(&latencies, 0.5)
    );
    println!(
        "| RunTask → RUNNING accepted, p99 | {:?} |",
        pct(&latencies, 0.99)
    );
    println!("| burst: first RunTask → all RUNNING | {burst_total:?} |");
    println!(
        "| bollard create+start, p50 / p99 | {:?} / {:?} |",
        pct(&base, 0.5),
        pct(&base, 0.99)
    );
    println!("| bollard: all {n} started | {base_total:?} |");
    println!(
        "| ratio (burst / bollard) | {:.2}× |",
        burst_total.as_secs_f64() / base_total.as_secs_f64()
    );
    println!("| agent CPU during the burst | {cpu_burst:.2} s |");
    println!(
        "| agent RSS registered+idle / with {n} running | {} / {} KiB |",
        rss_idle, rss_running
    );
    agent.terminate();
    for id in docker_ids_labelled(&docker).await {
        let _ = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
    }
}

/// Containers this bench (or the agent on its behalf) left behind.
async fn docker_ids_labelled(docker: &bollard::Docker) -> Vec<String> {
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&[("label", vec!["ecs-hostd.test=burst"])].into())
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}
