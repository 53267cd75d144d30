//! Task-level limits with Docker's systemd cgroup driver (issue 20, container-features.md §7):
//! the agent as a systemd service in the "instance" (a real systemd 252, tests/systemd/common.rs)
//! whose dockerd runs with `native.cgroupdriver=systemd`. The task's slice is made by the real
//! systemd through the agent's D-Bus `StartTransientUnit`, and what systemd and Docker say of it is
//! checked: its CPU quota and memory limit, every container's `CgroupParent`, the container's own
//! cgroup under it, and the slice gone after the task's cleanup.
//!
//! Needs the shared Docker engine, the systemd instance image and ec2sim's venv; fails, never
//! skips, without them.

#[path = "systemd/common.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{Ec2Sim, Instance, InstanceOptions, wait_for};
use serde_json::json;

const IMAGE: &str = "ecs-hostd-test/busybox:latest";

#[test]
fn task_limits_are_a_systemd_slice_with_the_systemd_cgroup_driver() {
    let sim = Ec2Sim::start();
    let cluster = format!("slices-{}", std::process::id());
    sim.create_cluster(&cluster);
    let inst = Instance::boot("slices", Some(&sim));

    // dockerd with the systemd cgroup driver, and the test image (never pulled inside).
    inst.write(
        "/etc/docker/daemon.json",
        r#"{"exec-opts":["native.cgroupdriver=systemd"]}"#,
    );
    inst.sh("systemctl restart docker");
    wait_for(
        "dockerd with the systemd driver",
        Duration::from_secs(60),
        || {
            let (ok, out) = inst.try_sh("docker info --format '{{.CgroupDriver}}'");
            (ok && out.trim() == "systemd").then_some(())
        },
    );
    let save = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {IMAGE} | docker exec -i {} docker load",
            inst.name
        ))
        .output()
        .unwrap();
    assert!(save.status.success(), "loading {IMAGE}: {save:?}");

    inst.install_agent(
        Some(&sim),
        &InstanceOptions {
            ecs_config: vec![
                format!("ECS_CLUSTER={cluster}"),
                "ECS_CONTAINER_STOP_TIMEOUT=2s".into(),
                "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=1s".into(),
                "ECS_IMAGE_PULL_BEHAVIOR=prefer-cached".into(),
            ],
            service_lines: Vec::new(),
        },
    );
    inst.wait_agent_ready(Duration::from_secs(90));

    // Half a vCPU and 256 MiB for the task; a container with a smaller limit of its own.
    let td = sim.ecs(
        "RegisterTaskDefinition",
        json!({"family": "slices", "cpu": "512", "memory": "256",
               "containerDefinitions": [{"name": "app", "image": IMAGE, "memory": 64,
                   "essential": true, "command": ["sleep", "3600"]}]}),
    )["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = sim.ecs(
        "RunTask",
        json!({"cluster": cluster, "taskDefinition": td, "count": 1}),
    );
    let task = run["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    let status = |want: &str| {
        let want = want.to_owned();
        let (sim, cluster, task) = (&sim, &cluster, &task);
        move || {
            let d = sim.ecs(
                "DescribeTasks",
                json!({"cluster": cluster, "tasks": [task]}),
            );
            (d["tasks"][0]["lastStatus"] == want.as_str()).then_some(d)
        }
    };
    let d = wait_for(
        "the task RUNNING",
        Duration::from_secs(90),
        status("RUNNING"),
    );
    let docker_id = d["tasks"][0]["containers"][0]["runtimeId"]
        .as_str()
        .unwrap()
        .to_owned();

    // The slice as systemd knows it: active, with the task's limits.
    let slice = format!("ecstasks-{}.slice", task.rsplit('/').next().unwrap());
    let show = |prop: &str| {
        inst.sh(&format!("systemctl show {slice} -p {prop} --value"))
            .trim()
            .to_owned()
    };
    assert_eq!(show("ActiveState"), "active", "{slice}");
    assert_eq!(show("MemoryMax"), (256u64 << 20).to_string(), "{slice}");
    assert_eq!(show("CPUQuotaPerSecUSec"), "500ms", "{slice}");
    // Docker put the container under it, and the kernel agrees.
    let parent = inst.sh(&format!(
        "docker inspect -f '{{{{.HostConfig.CgroupParent}}}}' {docker_id}"
    ));
    assert_eq!(parent.trim(), slice);
    let cgroup = inst.sh(&format!("docker exec {docker_id} cat /proc/self/cgroup"));
    let memory = cgroup
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .unwrap_or_default();
    assert!(
        memory.contains(&format!("/{slice}/docker-{docker_id}.scope")),
        "{cgroup}"
    );

    // Stopped and cleaned up: the slice goes with the task.
    sim.ecs("StopTask", json!({"cluster": cluster, "task": task}));
    wait_for(
        "the task STOPPED",
        Duration::from_secs(60),
        status("STOPPED"),
    );
    wait_for("the slice removed", Duration::from_secs(60), || {
        let state = show("ActiveState");
        let gone = state == "inactive" || state.is_empty();
        let no_container = inst
            .try_sh(&format!("docker inspect {docker_id}"))
            .0
            .then_some(())
            .is_none();
        (gone && no_container).then_some(())
    });

    // The host is left as the test found it: the instance's systemd mounted the v1 controllers
    // the host leaves unmounted, and with the instance gone the shared engine still reads
    // containers' memory (a kept hierarchy made `docker stats` say 0B for every container).
    drop(inst);
    wait_for(
        "the instance's own cgroup hierarchies to go",
        Duration::from_secs(30),
        || common::orphan_cgroup_hierarchies().is_empty().then_some(()),
    );
    let probe = common::ok(Command::new("docker").args([
        "run",
        "-d",
        "--rm",
        "--label",
        "ecs-hostd.test=probe",
        IMAGE,
        "sleep",
        "30",
    ]));
    let probe = probe.trim().to_owned();
    let usage = common::ok(Command::new("docker").args([
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        &probe,
    ]));
    let _ = common::run(Command::new("docker").args(["rm", "-f", &probe]));
    assert!(
        !usage.trim().starts_with("0B"),
        "docker stats on the host after the instance: {usage}"
    );
}
