//! Task credentials never leave memory: not in the log (captured at TRACE, with the `log` crate
//! bridged, so dependencies' records count too), not in the store file, not in what the engine
//! gets (which is all the local API can ever show). Their ids (which the engine persists) are
//! never logged either.
//!
//! One test per binary: it installs the process-wide subscriber.

mod acs_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acs_support::*;
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;

use ecs_hostd::ecs::acs::LOG_DIRECTIVES;
use ecs_hostd::tasks::RoleType;

const WAIT: Duration = Duration::from_secs(15);

/// A log sink tests can read.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

/// Every credential string in frames ec2sim sent.
fn secrets_in(frames: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |c: &Value| {
        for k in ["accessKeyId", "secretAccessKey", "sessionToken"] {
            if let Some(s) = c[k].as_str() {
                out.push(s.to_owned());
            }
        }
    };
    for f in frames {
        match f["type"].as_str() {
            Some("PayloadMessage") => {
                for t in f["message"]["tasks"].as_array().into_iter().flatten() {
                    take(&t["roleCredentials"]);
                    take(&t["executionRoleCredentials"]);
                }
            }
            Some("IAMRoleCredentialsMessage") => take(&f["message"]["roleCredentials"]),
            _ => {}
        }
    }
    out
}

/// Every credentials id in frames ec2sim sent (ids are bearer tokens for 169.254.170.2: never
/// logged; the store keeps them, as upstream does).
fn ids_in(frames: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |c: &Value| {
        if let Some(s) = c["credentialsId"].as_str() {
            out.push(s.to_owned());
        }
    };
    for f in frames {
        match f["type"].as_str() {
            Some("PayloadMessage") => {
                for t in f["message"]["tasks"].as_array().into_iter().flatten() {
                    take(&t["roleCredentials"]);
                    take(&t["executionRoleCredentials"]);
                }
            }
            Some("IAMRoleCredentialsMessage") => take(&f["message"]["roleCredentials"]),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_logs_store_or_engine() {
    // The process's filter as telemetry must set it: everything at TRACE except the websocket
    // library's frame dumps (LOG_DIRECTIVES).
    let log = Buffer::default();
    let mut filter = EnvFilter::new("trace");
    for d in LOG_DIRECTIVES {
        filter = filter.add_directive(d.parse().unwrap());
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log.clone())
        .with_ansi(false)
        .try_init()
        .expect("first subscriber of this test binary");

    let sim = Ec2sim::start();
    sim.acs_config(json!({"heartbeat_interval": 0.5, "manifest_interval": null}))
        .await;
    let cluster = unique("creds");
    let arn = sim.register(&cluster).await;
    let family = sim.task_definition(&unique("fam")).await;
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("state.redb");
    let agent = start_agent(&sim, &cluster, &arn, &store_path, test_timing());
    until("an ACS session", WAIT, || async {
        sim.acs_sessions()
            .await
            .iter()
            .any(|s| s["connected"] == true)
    })
    .await;

    // 1. A task placed with RunTask: task and execution role credentials.
    let good = sim.run_task(&cluster, &family).await;
    // 2. A second task, so there are several payloads.
    let second = sim.run_task(&cluster, &family).await;
    until("both tasks delivered", WAIT, || async {
        agent.engine.count(&good, "RUNNING") == 1 && agent.engine.count(&second, "RUNNING") == 1
    })
    .await;
    // 3. The protocol fixture (credentials, ENI), with unique secrets, for a task the engine
    //    refuses: its STOPPED report goes into the store's queue.
    let mut fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/acs/messages/PayloadMessage.session_test.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let refused_fixture = format!("arn:aws:ecs:{REGION}:123456789012:task/{cluster}/fixture");
    agent
        .engine
        .refuse
        .lock()
        .unwrap()
        .insert(refused_fixture.clone());
    let task = &mut fixture["message"]["tasks"][0];
    task["arn"] = json!(refused_fixture);
    task["roleCredentials"]["accessKeyId"] = json!("ASIAFIXTUREKEYID0001");
    task["roleCredentials"]["secretAccessKey"] = json!("fixture-secret-access-key-0001");
    task["roleCredentials"]["sessionToken"] = json!("fixture-session-token-0001");
    sim.post(
        "/acs/send",
        json!({"container_instance_arn": arn, "message": fixture}),
    )
    .await;
    // 4. A refresh for a task this instance does not hold (no ack, spec §2.3), then one for a
    //    task it does.
    let stray = sim
        .post(
            "/acs/credentials",
            json!({"container_instance_arn": arn,
                   "task_arn": format!("arn:aws:ecs:{REGION}:123456789012:task/{cluster}/not-here"),
                   "role_type": "TaskApplication"}),
        )
        .await;
    let refresh = sim
        .post(
            "/acs/credentials",
            json!({"container_instance_arn": arn, "task_arn": good, "role_type": "TaskExecution"}),
        )
        .await;
    // 5. Malformed frames carrying credential-looking text.
    for raw in [
        r#"{"type":"PayloadMessage","message":{"messageId":"x","tasks":[{"arn":"a","roleCredentials":"raw-secret-in-wrong-place-0001"}]}}"#,
        r#"{"type":"IAMRoleCredentialsMessage","message":{"roleCredentials":{"secretAccessKey":["raw-secret-in-a-list-0001"]}}}"#,
        r#"{"type":"PayloadMessage","message":{"seqNum":"raw-secret-as-seqnum-0001"}}"#,
    ] {
        sim.post(
            "/acs/send",
            json!({"container_instance_arn": arn, "raw": raw}),
        )
        .await;
    }
    let sim_ref = &sim;
    let acked = move |id: Value| async move {
        of_type(&sim_ref.received().await, "IAMRoleCredentialsAckRequest")
            .iter()
            .any(|a| a["message"]["messageId"] == id)
    };
    until("the refresh acked", WAIT, || {
        acked(refresh["message_id"].clone())
    })
    .await;
    // Frames are handled in order: the stray refresh came first and was not acked.
    assert!(
        !acked(stray["message_id"].clone()).await,
        "a refresh for a task the instance does not hold was acked"
    );
    until(
        "the fixture task reported STOPPED (queued)",
        WAIT,
        || async { agent.engine.count(&refused_fixture, "RUNNING") >= 1 },
    )
    .await;
    // Let heartbeats and the reconnect-free session log a little more.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut secrets = secrets_in(&sim.sent().await);
    secrets.extend(
        [
            "raw-secret-in-wrong-place-0001",
            "raw-secret-in-a-list-0001",
            "raw-secret-as-seqnum-0001",
        ]
        .map(String::from),
    );
    // Sanity: the secrets were really delivered (three payload credential sets at least, and the
    // refresh), and the agent holds them in memory.
    assert!(secrets.len() >= 3 * 5 + 3, "{} secrets", secrets.len());
    assert_eq!(
        agent
            .credentials
            .get(&refused_fixture, RoleType::TaskApplication)
            .unwrap()
            .secret_access_key,
        "fixture-secret-access-key-0001"
    );
    assert!(
        agent.reporter.queued().unwrap() >= 1,
        "a refused task is queued for reporting"
    );

    // The engine (and so the local API) never sees them.
    let delivered = serde_json::to_string(&*agent.engine.delivered.lock().unwrap()).unwrap();
    // The log has the session's story but no secret.
    let text = log.text();
    assert!(text.contains("ACS payload received"), "log capture works");
    assert!(text.contains("Task credentials refreshed"));
    assert!(text.contains("Ignoring a malformed ACS frame"));
    agent.stop().await;
    // The store file, byte for byte (after the handle is gone, and while it was open: same bytes).
    let raw = std::fs::read(&store_path).unwrap();
    let contains = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains(&refused_fixture),
        "the search finds what the store holds (the queued STOPPED report)"
    );
    let ids = ids_in(&sim.sent().await);
    assert!(ids.len() >= 4, "{} credentials ids", ids.len());
    for id in &ids {
        assert!(
            !text.contains(id.as_str()),
            "a credentials id is in the log"
        );
    }
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret is in the log");
        assert!(!contains(s), "a secret is in the store file");
        assert!(
            !delivered.contains(s.as_str()),
            "a secret reached the engine"
        );
    }

    // Control: without LOG_DIRECTIVES, the websocket library would log whole frames, secrets
    // included. This is why telemetry must apply them.
    let unfiltered = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("trace"))
        .with_writer(unfiltered.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir2 = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &sim,
        &cluster,
        &arn,
        &dir2.path().join("s2.redb"),
        test_timing(),
    );
    let leaked = sim.run_task(&cluster, &family).await;
    until("delivered", WAIT, || async {
        agent.engine.count(&leaked, "RUNNING") == 1
    })
    .await;
    let sent = secrets_in(&sim.sent().await);
    let last = sent.last().unwrap();
    assert!(
        unfiltered.text().contains(last.as_str()),
        "expected tungstenite's TRACE frame dump to show the secret without LOG_DIRECTIVES"
    );
    agent.stop().await;
}
