//! Issue 20's start-latency figure: what every mapped container-definition field costs a task's
//! start. A 10-container task whose containers set every Linux and runtime parameter
//! (`tests/container_fields.rs` proves each reaches Docker and the process) against a plain
//! 10-container task, alternating on one agent in the same run, RunTask → RUNNING.
//!
//! Owns that step; prints, never asserts a speed.

use std::time::Duration;

use serde_json::{Value, json};

use super::report::{Row, Summary, Verdict, ms};
use super::{RUN_LABEL, image};
use crate::common::{AgentSpec, Ec2Sim, boto, create_cluster, unique};

/// Containers per task.
const CONTAINERS: usize = 10;

/// One container of the plain task.
fn plain(i: usize, run: &str) -> Value {
    json!({
        "name": format!("c{i}"), "image": image(), "memory": 16, "essential": true,
        "command": ["sleep", "3600"], "dockerLabels": {RUN_LABEL: run}
    })
}

/// One container with every mapped field set (as in tests/container_fields.rs, minus what
/// needs a second container: links).
fn every_field(i: usize, run: &str) -> Value {
    json!({
        "name": format!("c{i}"), "image": image(), "essential": true,
        "cpu": 16, "memory": 16, "memoryReservation": 8,
        "entryPoint": ["sleep"], "command": ["3600"],
        "environment": [{"name": "FIELDS", "value": "1"}],
        "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
        "user": "65534:65534", "workingDirectory": "/www", "hostname": format!("c{i}"),
        "readonlyRootFilesystem": true, "interactive": true, "pseudoTerminal": true,
        "dnsServers": ["10.53.0.53"], "dnsSearchDomains": ["fields.example"],
        "extraHosts": [{"hostname": "db.fields.example", "ipAddress": "10.11.12.13"}],
        "dockerLabels": {RUN_LABEL: run, "team": "fields"},
        "dockerSecurityOptions": ["no-new-privileges"],
        "ulimits": [{"name": "nofile", "softLimit": 1000, "hardLimit": 2000}],
        "systemControls": [{"namespace": "net.core.somaxconn", "value": "1234"}],
        "stopTimeout": 1,
        "linuxParameters": {
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN", "NET_RAW"]},
            "devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/fields-fuse", "permissions": ["read"]}],
            "initProcessEnabled": true,
            "sharedMemorySize": 16,
            "tmpfs": [{"containerPath": "/scratch", "size": 8, "mountOptions": ["noexec"]}],
            "maxSwap": 16,
            "swappiness": 10
        }
    })
}

fn register(sim: &Ec2Sim, family: &str, containers: Vec<Value>) -> String {
    boto(
        &sim.url(),
        r#"
OUT = client("ecs").register_task_definition(
    family=A["family"], containerDefinitions=A["containers"]
)["taskDefinition"]["taskDefinitionArn"]
"#,
        &json!({"family": family, "containers": containers}),
    )
    .as_str()
    .expect("task definition ARN")
    .to_owned()
}

/// The figure: `rounds` of (plain, every field) one task at a time on one fresh agent.
pub async fn start_latency(sim: &Ec2Sim, rounds: usize) -> Vec<Row> {
    let run = unique("fields");
    let cluster = unique("fields");
    create_cluster(sim, &cluster).await;
    let data = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new(sim, &cluster, data.path())
        .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
        .env("ECS_HOSTD_METRICS", "false")
        .env("RUST_LOG", "info,ecs_hostd::ecs::report::milestones=debug");
    let mut agent = spec.start();
    agent.wait_registered(Duration::from_secs(60));
    let plain_td = register(
        sim,
        &unique("plain10"),
        (0..CONTAINERS).map(|i| plain(i, &run)).collect(),
    );
    let fields_td = register(
        sim,
        &unique("fields10"),
        (0..CONTAINERS).map(|i| every_field(i, &run)).collect(),
    );
    let (mut plain_visible, mut plain_engine) = (Vec::new(), Vec::new());
    let (mut fields_visible, mut fields_engine) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (td, visible, engine) in [
            (&plain_td, &mut plain_visible, &mut plain_engine),
            (&fields_td, &mut fields_visible, &mut fields_engine),
        ] {
            let r = super::run_tasks(sim, &agent, &cluster, td, 1, CONTAINERS, 1).await;
            visible.extend(r.visible.iter().copied());
            engine.push(r.total_engine);
            super::stop_tasks(sim, &agent, &cluster, &r.arns).await;
        }
    }
    agent.terminate();
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    super::remove_run_containers(&docker, &run).await;

    let (pv, fv) = (Summary::of(&plain_visible), Summary::of(&fields_visible));
    let (pe, fe) = (Summary::of(&plain_engine), Summary::of(&fields_engine));
    let ratio = |f: Duration, p: Duration| f.as_secs_f64() / p.as_secs_f64().max(1e-9);
    vec![Row {
        figure: format!(
            "{CONTAINERS}-container task with every Linux/runtime field set: RunTask → RUNNING vs a plain one"
        ),
        value: format!(
            "{:.2}× (median every-field {} vs plain {}; payload → all RUNNING in the engine {:.2}×: {} vs {}; n={} each)",
            ratio(fv.p50, pv.p50),
            ms(fv.p50),
            ms(pv.p50),
            ratio(fe.p50, pe.p50),
            ms(fe.p50),
            ms(pe.p50),
            pv.n
        ),
        budget: "none (reported)".into(),
        verdict: Verdict::Info,
        method: format!(
            "one fresh agent; {rounds} rounds of a plain task ({CONTAINERS} × busybox sleep, 16 MiB) then a task whose {CONTAINERS} containers set cpu, memory, memoryReservation, entryPoint/command, environment, a dynamic port, user, workingDirectory, hostname, readonlyRootFilesystem, interactive, pseudoTerminal, DNS servers and search domains, extraHosts, labels, no-new-privileges, ulimits, a sysctl, stopTimeout and every linuxParameters member (capabilities, a device, init, shm, tmpfs, maxSwap, swappiness), one task at a time, each stopped before the next; RunTask returned → RUNNING visible in DescribeTasks (250 ms polling), and the agent's own milestones (first payload → all RUNNING); medians"
        ),
    }]
}
