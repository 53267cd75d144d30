//! End-to-end start benchmark of issue 4 (prints figures; asserts nothing about speed).
//!
//! The real agent binary registered with ec2sim, tasks placed with RunTask. Per task, from the
//! agent's own start milestones (the `Task start milestones.` DEBUG line of
//! `ecs_hostd::ecs::report::milestones`, see `src/ecs/report.rs`): payload received → all containers RUNNING
//! in the engine → RUNNING report accepted by ECS; and, from outside, RunTask returned →
//! RUNNING visible in DescribeTasks. Beside them, in the same run, Docker's own create + start
//! time for the same containers (the agent's container configuration read back with inspect),
//! directly through bollard at the same concurrency.
//!
//! 1. Reference figure: 2-container tasks, one at a time (each placed once the previous one is
//!    RUNNING), so each latency is the agent's own, not a queue's.
//! 2. Burst: single-container tasks all placed at once.
//!
//! `cargo test --bench e2e_burst` runs a smoke pass (2 + 3 tasks); `cargo test --bench e2e_burst
//! -- --bench` runs 50 + 50. `ECS_HOSTD_BIN=target/release/ecs-hostd` measures a release agent
//! (the default is the debug binary Cargo built, whose figures are pessimistic).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use common::*;
use support::report::{Summary, ms};

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n_ref, n_burst) = if full { (50, 50) } else { (2, 3) };
    let bin = agent_binary();
    let run = unique("e2e");

    let sim = Ec2Sim::start();
    let cluster = unique("burst");
    create_cluster(&sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_HOSTD_METRICS", "false")
        .env("RUST_LOG", "info,ecs_hostd::ecs::report::milestones=debug")
        .start();
    agent.wait_registered(Duration::from_secs(60));
    let ecs = sim.ecs().await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();

    // 1. Reference: 2-container tasks, one at a time.
    let td2 = support::task_definition(&ecs, &unique("ref"), 2, &run).await;
    let reference = support::run_tasks(&sim, &agent, &cluster, &td2, n_ref, 2, 1).await;
    let bodies = support::agent_container_bodies(&docker, &run, &reference.arns[0]).await;
    support::stop_tasks(&sim, &agent, &cluster, &reference.arns).await;
    let ref_base = support::baseline(&docker, &run, &bodies, &vec![Duration::ZERO; n_ref], 1).await;

    // 2. Burst: single-container tasks, all at once; then the same containers directly.
    let td1 = support::task_definition(&ecs, &unique("burst"), 1, &run).await;
    let burst = support::run_tasks(&sim, &agent, &cluster, &td1, n_burst, 1, n_burst).await;
    let bodies = support::agent_container_bodies(&docker, &run, &burst.arns[0]).await;
    support::stop_tasks(&sim, &agent, &cluster, &burst.arns).await;
    // Same arrival schedule as the agent's payloads (RunTask places at most 10 per call).
    let arrivals = support::arrival_offsets(&burst.milestones);
    let burst_base = support::baseline(&docker, &run, &bodies, &arrivals, n_burst).await;

    agent.terminate();
    support::remove_run_containers(&docker, &run).await;

    println!(
        "\n== issue 4: payload → all containers RUNNING → report accepted ({}, {}) ==",
        support::profile_of(&bin),
        bin.display()
    );
    if full {
        println!("\nreference tasks (2 containers, one at a time), ms from the payload:");
        println!(
            "| task | delivered | all RUNNING (engine) | report accepted | RunTask → DescribeTasks RUNNING |"
        );
        println!("|---|---|---|---|---|");
        for (m, v) in reference.milestones.iter().zip(&reference.visible) {
            println!(
                "| …{} | {:.1} | {:.1} | {:.1} | {:.1} |",
                &m.task_arn[m.task_arn.len().saturating_sub(8)..],
                m.to_delivered.as_secs_f64() * 1e3,
                m.to_running.as_secs_f64() * 1e3,
                m.to_accepted.as_secs_f64() * 1e3,
                v.as_secs_f64() * 1e3
            );
        }
    }
    for (label, r, base) in [
        (
            "reference: 2-container tasks, one at a time",
            &reference,
            &ref_base,
        ),
        ("burst: 1-container tasks, all at once", &burst, &burst_base),
    ] {
        println!(
            "\n{label}: {} tasks (p50 / p99; the per-task order of milestones: payload → engine → ECS)",
            r.tasks
        );
        println!("| figure | p50 / p99 |\n|---|---|");
        println!(
            "| payload → all containers RUNNING (engine) | {} |",
            Summary::of(&r.to_running()).p50_p99_ms()
        );
        println!(
            "| payload → RUNNING report accepted | {} |",
            Summary::of(&r.to_accepted()).p50_p99_ms()
        );
        println!(
            "| RunTask returned → RUNNING in DescribeTasks | {} |",
            Summary::of(&r.visible).p50_p99_ms()
        );
        println!(
            "| Docker direct (bollard) create + start of the same {} container(s), concurrency {}{} | {} |",
            r.containers_per_task,
            r.concurrency,
            if r.concurrency > 1 {
                ", each task at its payload's arrival offset"
            } else {
                ""
            },
            Summary::of(&base.per_task).p50_p99_ms()
        );
        if r.concurrency == 1 {
            // One at a time: wall totals would include the waits between tasks.
            continue;
        }
        println!(
            "| totals: first payload → last all-RUNNING (engine) / bollard all started / first RunTask → all RUNNING visible | {} / {} / {} |",
            ms(r.total_engine),
            ms(base.total),
            ms(r.total_visible)
        );
        println!(
            "| ratio engine / bollard (wall time to all running) | {:.2}× |",
            r.total_engine.as_secs_f64() / base.total.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "\nagent CPU, first RunTask → all RUNNING: reference {:.2} s, burst {:.2} s",
        reference.agent_cpu, burst.agent_cpu
    );
}
