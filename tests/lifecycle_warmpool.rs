//! Warm pools against ec2sim: with `ECS_WARM_POOLS_CHECK=true` the agent does not register while
//! the target lifecycle state is `Warmed:*`, says so in systemd's `STATUS=`, and registers once
//! the state is `InService`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A bound NOTIFY_SOCKET; returns every message received so far.
struct NotifySocket {
    socket: UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    fn drain(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.received
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        &self.received
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warmed_instance_does_not_register_until_in_service() {
    let sim = Ec2Sim::start();
    let cluster = unique("warm");
    create_cluster(&sim, &cluster).await;
    let (instance_id, imds) = sim.new_instance(json!({"asg": "warm-asg"}));
    let control = format!("/ec2sim/instances/{instance_id}/imds");
    sim.post(&control, json!({"lifecycle_state": "Warmed:Stopped"}));

    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&socket_path);
    let data = tempfile::tempdir().unwrap();
    let mut spec = AgentSpec::new(&sim, &cluster, data.path())
        .env("ECS_WARM_POOLS_CHECK", "true")
        .env("ECS_HOSTD_WARM_POOL_POLL_INTERVAL", "1s")
        .env("NOTIFY_SOCKET", socket_path.to_str().unwrap());
    spec.imds = imds;
    let mut agent = spec.start();

    let gets_before = sim.get(&control)["gets"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running:\n{}",
        agent.log()
    );
    assert!(
        sim.requests("ecs", "RegisterContainerInstance").is_empty(),
        "registered while Warmed:Stopped"
    );
    assert!(
        sim.get(&control)["gets"].as_u64().unwrap() >= gets_before + 3,
        "the state is re-read every second"
    );
    let statuses = notify.drain().join("\n");
    assert!(
        statuses.contains(
            "STATUS=warm pool: not registering while the target lifecycle state is Warmed:Stopped"
        ),
        "{statuses}"
    );
    assert!(!statuses.contains("READY=1"), "{statuses}");

    sim.post(&control, json!({"lifecycle_state": "Warmed:Running"}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim.requests("ecs", "RegisterContainerInstance").is_empty());
    assert!(notify.drain().join("\n").contains("Warmed:Running"));

    let in_service = Instant::now();
    sim.post(&control, json!({"lifecycle_state": "InService"}));
    let switched_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let arn = agent.wait_registered(Duration::from_secs(30));
    println!(
        "figure: warm pool InService -> registered: {:?}",
        in_service.elapsed()
    );
    let regs = sim.requests("ecs", "RegisterContainerInstance");
    assert_eq!(regs.len(), 1);
    assert!(regs[0]["time"].as_f64().unwrap() >= switched_at - 0.05);
    let desc = describe_instance(&sim, &cluster, &arn).await;
    assert_eq!(desc["ec2InstanceId"], instance_id.as_str());
    // READY=1 follows registration.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !notify.drain().iter().any(|m| m.contains("READY=1")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(notify.drain().iter().any(|m| m.contains("READY=1")));
    agent.terminate();
}
