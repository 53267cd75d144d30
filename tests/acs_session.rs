//! The ACS session against ec2sim: a real websocket with SigV4-shaped headers, tasks placed with
//! the ECS API as a user would, and a recording engine in place of the task engine.

mod acs_support;

use std::time::Duration;

use acs_support::*;
use serde_json::{Value, json};

use ecs_hostd::tasks::RoleType;

const WAIT: Duration = Duration::from_secs(15);

fn query(session: &Value, key: &str) -> String {
    session["query"][key]
        .as_str()
        .unwrap_or("<absent>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_delivers_tasks_acks_and_survives_garbage() {
    let sim = Ec2sim::start();
    sim.acs_config(json!({"heartbeat_interval": 0.3, "manifest_interval": null}))
        .await;
    let cluster = unique("acs");
    let arn = sim.register(&cluster).await;
    let family = sim.task_definition(&unique("fam")).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &sim,
        &cluster,
        &arn,
        &dir.path().join("s.redb"),
        test_timing(),
    );

    // Connected, with every query parameter of protocol spec §5.1.
    until("an ACS session", WAIT, || async {
        sim.acs_sessions()
            .await
            .iter()
            .any(|s| s["connected"] == true)
    })
    .await;
    let session = sim.acs_sessions().await.remove(0);
    assert_eq!(query(&session, "clusterArn"), cluster);
    assert_eq!(query(&session, "containerInstanceArn"), arn);
    assert_eq!(
        query(&session, "agentVersion"),
        ecs_hostd::COMPATIBLE_AGENT_VERSION
    );
    assert!(
        query(&session, "agentHash")
            .chars()
            .all(|c| c.is_ascii_hexdigit()),
        "{session}"
    );
    assert_eq!(query(&session, "seqNum"), "1");
    assert_eq!(query(&session, "protocolVersion"), "2");
    assert_eq!(query(&session, "dockerVersion"), "DockerVersion: 25.0.8");
    assert_eq!(query(&session, "sendCredentials"), "true");

    // RunTask reaches the engine as task JSON without credentials.
    let task = sim.run_task(&cluster, &family).await;
    until("the task delivered", WAIT, || async {
        agent.engine.count(&task, "RUNNING") == 1
    })
    .await;
    let payloads: Vec<Value> = of_type(&sim.sent().await, "PayloadMessage")
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(payloads.len(), 1);
    let sent_task = &payloads[0]["message"]["tasks"][0];
    let delivered = agent.engine.delivered.lock().unwrap()[0].clone();
    // Of each credential set only the role's ARN and the credentials id reach the engine (it
    // decides from the role whether it can run the task, and persists the id for the endpoint's
    // 503-after-restart rule), never a key, token or expiration.
    for role in ["roleCredentials", "executionRoleCredentials"] {
        assert_eq!(
            delivered[role],
            json!({"roleArn": sent_task[role]["roleArn"], "credentialsId": sent_task[role]["credentialsId"]}),
            "{role}"
        );
    }
    assert_eq!(delivered["containers"], sent_task["containers"]);
    let text = delivered.to_string();
    for role in ["roleCredentials", "executionRoleCredentials"] {
        for secret in ["accessKeyId", "secretAccessKey", "sessionToken"] {
            let value = sent_task[role][secret].as_str().unwrap();
            assert!(!text.contains(value), "{role}.{secret} reached the engine");
        }
    }
    let app = agent
        .credentials
        .get(&task, RoleType::TaskApplication)
        .unwrap();
    assert_eq!(
        app.secret_access_key,
        sent_task["roleCredentials"]["secretAccessKey"]
    );
    assert!(
        agent
            .credentials
            .get(&task, RoleType::TaskExecution)
            .is_some()
    );

    // The payload and both credential sets are acked, as the model says.
    let message_id = payloads[0]["message"]["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    until("the payload ack", WAIT, || async {
        of_type(&sim.received().await, "AckRequest")
            .iter()
            .any(|a| a["message"]["messageId"] == message_id.as_str())
    })
    .await;
    let received = sim.received().await;
    let ack = of_type(&received, "AckRequest")
        .into_iter()
        .find(|a| a["message"]["messageId"] == message_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        ack["message"]["cluster"],
        payloads[0]["message"]["clusterArn"]
    );
    assert_eq!(ack["message"]["containerInstance"], arn.as_str());
    let mut acked: Vec<String> = of_type(&received, "IAMRoleCredentialsAckRequest")
        .iter()
        .map(|a| {
            assert_eq!(a["message"]["messageId"], message_id.as_str());
            a["message"]["credentialsId"].as_str().unwrap().to_owned()
        })
        .collect();
    acked.sort();
    let mut expected: Vec<String> = ["roleCredentials", "executionRoleCredentials"]
        .iter()
        .map(|r| sent_task[r]["credentialsId"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(acked, expected);
    let exp =
        of_type(&received, "IAMRoleCredentialsAckRequest")[0]["message"]["expiration"].clone();
    assert!(
        exp == sent_task["roleCredentials"]["expiration"]
            || exp == sent_task["executionRoleCredentials"]["expiration"]
    );

    // Heartbeats are acked.
    until("two heartbeat acks", WAIT, || async {
        of_type(&sim.received().await, "HeartbeatAckRequest").len() >= 2
    })
    .await;
    let sent = sim.sent().await;
    let heartbeat_ids: Vec<&Value> = of_type(&sent, "HeartbeatMessage")
        .iter()
        .map(|h| &h["message"]["messageId"])
        .collect();
    for a in of_type(&sim.received().await, "HeartbeatAckRequest") {
        assert!(heartbeat_ids.contains(&&a["message"]["messageId"]), "{a}");
    }

    // Malformed and unknown frames leave the session up: later heartbeats are still acked.
    for raw in [
        "not json at all",
        r#"{"type":"BrandNewMessage","message":{"x":1}}"#,
        r#"{"type":"PayloadMessage","message":{"tasks":5}}"#,
        r#"{"type":"HeartbeatMessage","message":"x"}"#,
        "[1,2,3]",
    ] {
        sim.post(
            "/acs/send",
            json!({"container_instance_arn": arn, "raw": raw}),
        )
        .await;
    }
    let before = of_type(&sim.received().await, "HeartbeatAckRequest").len();
    until("a heartbeat acked after the garbage", WAIT, || async {
        of_type(&sim.received().await, "HeartbeatAckRequest").len() > before + 1
    })
    .await;
    let sessions = sim.acs_sessions().await;
    assert_eq!(sessions.len(), 1, "the session was never dropped");
    assert_eq!(sessions[0]["connected"], true);

    // StopTask reaches the engine as desired STOPPED.
    sim.stop_task(&cluster, &task).await;
    until("STOPPED delivered", WAIT, || async {
        agent.engine.count(&task, "STOPPED") == 1
    })
    .await;

    // Every frame the agent sent matches the ACS model.
    let model = acs_model();
    let received = sim.received().await;
    assert!(received.len() >= 6);
    for frame in &received {
        let mut f = frame.clone();
        f.as_object_mut().unwrap().remove("time");
        let problems = check_frame(&model, &f);
        assert!(problems.is_empty(), "{f}: {problems:?}");
    }

    agent.stop().await;
    let sessions = sim.acs_sessions().await;
    assert_eq!(sessions[0]["connected"], false);
    assert_eq!(sessions[0]["close_code"], 1001, "{}", sessions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mid_payload_reconnects_with_backoff_and_applies_once() {
    let sim = Ec2sim::start();
    sim.acs_config(json!({"heartbeat_interval": 0.5, "manifest_interval": null}))
        .await;
    let cluster = unique("acs");
    let arn = sim.register(&cluster).await;
    let family = sim.task_definition(&unique("fam")).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &sim,
        &cluster,
        &arn,
        &dir.path().join("s.redb"),
        test_timing(),
    );
    until("an ACS session", WAIT, || async {
        sim.acs_sessions()
            .await
            .iter()
            .any(|s| s["connected"] == true)
    })
    .await;

    sim.acs_config(json!({"drop_after_next_payload": true}))
        .await;
    let task = sim.run_task(&cluster, &family).await;

    until("a second session acking the payload", WAIT, || async {
        let sessions = sim.acs_sessions().await;
        sessions.len() >= 2
            && sessions[1]["received"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["type"] == "AckRequest")
    })
    .await;
    let sessions = sim.acs_sessions().await;
    let (first, second) = (&sessions[0], &sessions[1]);
    // Reconnected with backoff (250 ms minimum), not in a hot loop, and not slowly.
    let gap = second["opened_at"].as_f64().unwrap() - first["closed_at"].as_f64().unwrap();
    assert!((0.2..5.0).contains(&gap), "reconnect gap {gap}s");
    // Only the first connection of the process asks for all credentials.
    assert_eq!(query(first, "sendCredentials"), "true");
    assert_eq!(query(second, "sendCredentials"), "false");
    // The payload was sent again on the new session, acked there, and applied once.
    let payload_id = first["sent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "PayloadMessage")
        .unwrap()["message"]["messageId"]
        .clone();
    assert!(
        second["sent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "PayloadMessage" && f["message"]["messageId"] == payload_id)
    );
    assert!(
        second["received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "AckRequest" && f["message"]["messageId"] == payload_id)
    );
    assert_eq!(
        agent.engine.count(&task, "RUNNING"),
        1,
        "{:?}",
        agent.engine.deliveries()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.engine.count(&task, "RUNNING"), 1);
    assert_eq!(agent.session.connections(), 2);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_expiry_and_reconnects() {
    let sim = Ec2sim::start();
    sim.acs_config(json!({"heartbeat_interval": 0.3, "manifest_interval": null}))
        .await;
    let cluster = unique("acs");
    let arn = sim.register(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let timing = ecs_hostd::ecs::acs::Timing {
        max_age: Duration::from_secs(3),
        max_age_jitter: Duration::ZERO,
        ..test_timing()
    };
    let agent = start_agent(&sim, &cluster, &arn, &dir.path().join("s.redb"), timing);

    // The agent closes an expired connection with 1000 and reconnects at once.
    until("an expired and a new session", WAIT, || async {
        let s = sim.acs_sessions().await;
        s.len() >= 2 && s[1]["connected"] == true
    })
    .await;
    let s = sim.acs_sessions().await;
    assert_eq!(s[0]["close_code"], 1000, "{}", s[0]);
    let lived = s[0]["closed_at"].as_f64().unwrap() - s[0]["opened_at"].as_f64().unwrap();
    assert!((2.5..5.0).contains(&lived), "expired after {lived}s");
    let gap = s[1]["opened_at"].as_f64().unwrap() - s[0]["closed_at"].as_f64().unwrap();
    assert!(gap < 1.0, "clean reconnect took {gap}s");

    // ACS closing with an unexpected code: reconnect too (with backoff).
    let id = s[1]["id"].as_str().unwrap().to_owned();
    sim.post(&format!("/acs/sessions/{id}/drop"), json!({"code": 4000}))
        .await;
    until("a third session", WAIT, || async {
        let s = sim.acs_sessions().await;
        s.len() >= 3 && s[2]["connected"] == true
    })
    .await;
    // Heartbeats on the new session are acked.
    until("a heartbeat ack on the third session", WAIT, || async {
        sim.acs_sessions().await[2]["received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "HeartbeatAckRequest")
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_stop_verification_round_trip() {
    let sim = Ec2sim::start();
    sim.acs_config(json!({"heartbeat_interval": null, "manifest_interval": 0.5}))
        .await;
    let cluster = unique("acs");
    let arn = sim.register(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &sim,
        &cluster,
        &arn,
        &dir.path().join("s.redb"),
        test_timing(),
    );
    // A task the engine runs that ECS does not know.
    let ghost = format!("arn:aws:ecs:{REGION}:123456789012:task/{cluster}/ghost");
    agent.engine.running.lock().unwrap().push(ghost.clone());

    until("the ghost task stopped", WAIT, || async {
        agent.engine.stopped.lock().unwrap().contains(&ghost)
    })
    .await;
    let received = sim.received().await;
    let verification = of_type(&received, "TaskStopVerificationMessage")[0].clone();
    let candidates = verification["message"]["stopCandidates"]
        .as_array()
        .unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["taskArn"], ghost.as_str());
    assert_eq!(candidates[0]["desiredStatus"], "STOPPED");
    // The manifest itself was acked, with the same messageId the verification carries.
    let manifest_id = verification["message"]["messageId"].clone();
    assert!(
        of_type(&received, "AckRequest")
            .iter()
            .any(|a| a["message"]["messageId"] == manifest_id)
    );
    let model = acs_model();
    let mut frame = verification.clone();
    frame.as_object_mut().unwrap().remove("time");
    assert_eq!(check_frame(&model, &frame), Vec::<String>::new());
    // Later manifests (same timeline) are ignored: stopped exactly once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        agent
            .engine
            .stopped
            .lock()
            .unwrap()
            .iter()
            .filter(|a| **a == ghost)
            .count(),
        1
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_instance_keeps_running_and_retries_slowly() {
    let sim = Ec2sim::start();
    let cluster = unique("acs");
    let arn = sim.register(&cluster).await;
    sim.client()
        .deregister_container_instance()
        .cluster(&cluster)
        .container_instance(&arn)
        .force(true)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let timing = ecs_hostd::ecs::acs::Timing {
        inactive_retry: Duration::from_secs(1),
        ..test_timing()
    };
    let agent = start_agent(&sim, &cluster, &arn, &dir.path().join("s.redb"), timing);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Refused each time (InactiveInstanceException), retried on the slow timer only: about one
    // attempt per second, where the reconnect backoff alone would have made about ten.
    let attempts = agent.session.connect_attempts();
    assert!((2..=5).contains(&attempts), "{attempts} attempts");
    assert_eq!(agent.session.connections(), 0);
    assert!(!agent.task.is_finished(), "the session must keep running");
    assert!(agent.engine.stopped.lock().unwrap().is_empty());
    assert!(agent.engine.delivered.lock().unwrap().is_empty());
    agent.stop().await;
}
