//! The handler against protocol spec §5.4, one rule at a time, with a recording engine, the real
//! store and the recording sink.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;
use crate::tasks::{DeliverError, RecordingSink};

#[derive(Default)]
struct FakeEngine {
    delivered: Mutex<Vec<Value>>,
    stopped: Mutex<Vec<String>>,
    refuse: Mutex<HashSet<String>>,
    unavailable: Mutex<HashSet<String>>,
    running: Mutex<Vec<String>>,
    attached: Mutex<Vec<crate::tasks::EniAttachment>>,
}

impl FakeEngine {
    fn delivered(&self) -> Vec<(String, String)> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["arn"].as_str().unwrap_or("").to_owned(),
                    t["desiredStatus"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

#[async_trait]
impl TaskControl for FakeEngine {
    async fn deliver(&self, task: Value) -> Result<(), DeliverError> {
        let arn = task["arn"].as_str().unwrap_or("").to_owned();
        self.delivered.lock().unwrap().push(task);
        if self.refuse.lock().unwrap().contains(&arn) {
            return Err(DeliverError::Refused("bad container".into()));
        }
        if self.unavailable.lock().unwrap().contains(&arn) {
            return Err(DeliverError::Unavailable("engine restarting".into()));
        }
        Ok(())
    }
    fn desired_running(&self) -> Vec<String> {
        self.running.lock().unwrap().clone()
    }
    fn knows(&self, task_arn: &str) -> bool {
        self.running.lock().unwrap().iter().any(|a| a == task_arn)
            || self
                .delivered
                .lock()
                .unwrap()
                .iter()
                .any(|t| t["arn"] == task_arn)
    }
    async fn stop(&self, task_arn: &str) -> Result<(), String> {
        self.stopped.lock().unwrap().push(task_arn.to_owned());
        Ok(())
    }
    async fn attach_eni(&self, a: crate::tasks::EniAttachment) -> Result<(), DeliverError> {
        if self.unavailable.lock().unwrap().contains(&a.task_arn) {
            return Err(DeliverError::Unavailable("engine restarting".into()));
        }
        self.attached.lock().unwrap().push(a);
        Ok(())
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    engine: Arc<FakeEngine>,
    creds: Arc<CredentialsStore>,
    sink: Arc<RecordingSink>,
    handler: Handler,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let engine = Arc::new(FakeEngine::default());
    let creds = Arc::new(CredentialsStore::default());
    let sink = Arc::new(RecordingSink::default());
    let handler = Handler::new(HandlerParts {
        identity: Identity {
            cluster: "default".into(),
            container_instance_arn: "arn:ci".into(),
        },
        engine: engine.clone(),
        credentials: creds.clone(),
        sink: sink.clone(),
        store: store.clone(),
        milestones: None,
    })
    .unwrap();
    World {
        _dir: dir,
        store,
        engine,
        creds,
        sink,
        handler,
    }
}

fn frame(kind: &str, message: Value) -> String {
    json!({"type": kind, "message": message}).to_string()
}

fn payload(id: &str, seq: i64, tasks: Value) -> String {
    frame(
        "PayloadMessage",
        json!({"messageId": id, "clusterArn": "arn:cluster", "containerInstanceArn": "arn:ci",
               "seqNum": seq, "tasks": tasks}),
    )
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/acs/messages/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn ack(id: &str) -> Outbound {
    Outbound::AckRequest(AckRequest {
        cluster: "arn:cluster".into(),
        container_instance: "arn:ci".into(),
        message_id: id.into(),
    })
}

#[tokio::test]
async fn heartbeats_are_acked() {
    let mut w = world();
    let check = Arc::new(tokio::sync::Notify::new());
    w.handler.set_health_check(check.clone());
    let h = w
        .handler
        .handle_frame(&fixture("HeartbeatMessage.session_test.json"))
        .await
        .unwrap();
    assert_eq!(
        h.replies,
        vec![Outbound::HeartbeatAckRequest(HeartbeatAckRequest {
            message_id: "123".into()
        })]
    );
    // The heartbeat asked for a Docker health round.
    tokio::time::timeout(std::time::Duration::from_secs(1), check.notified())
        .await
        .expect("a heartbeat wakes the health check");
    let h = w
        .handler
        .handle_frame(&frame("HeartbeatMessage", json!({"healthy": true})))
        .await
        .unwrap();
    assert!(h.replies.is_empty());
}

#[tokio::test]
async fn payload_without_ids_is_rejected_unacked() {
    let mut w = world();
    let base = json!({"messageId": "m", "clusterArn": "c", "containerInstanceArn": "i",
                      "tasks": [{"arn": "t1", "desiredStatus": "RUNNING"}]});
    for missing in ["messageId", "clusterArn", "containerInstanceArn"] {
        for empty in [Value::Null, json!("")] {
            let mut m = base.clone();
            m[missing] = empty.clone();
            let h = w
                .handler
                .handle_frame(&frame("PayloadMessage", m))
                .await
                .unwrap();
            assert_eq!(h, Handled::default(), "{missing}={empty}");
        }
    }
    // The minimal fixture has no ids either.
    let h = w
        .handler
        .handle_frame(&fixture("PayloadMessage.minimal.acs_client_test.json"))
        .await
        .unwrap();
    assert_eq!(h, Handled::default());
    assert!(w.engine.delivered().is_empty());
}

#[tokio::test]
async fn payload_credentials_are_stored_stripped_and_acked() {
    let mut w = world();
    let h = w
        .handler
        .handle_frame(&fixture("PayloadMessage.session_test.json"))
        .await
        .unwrap();
    assert_eq!(
        h.replies,
        vec![
            Outbound::IamRoleCredentialsAckRequest(IamRoleCredentialsAckRequest {
                message_id: "123".into(),
                expiration: "2016-03-25T06:17:19.318+0000".into(),
                credentials_id: "credsId".into(),
            }),
            Outbound::AckRequest(AckRequest {
                cluster: "1".into(),
                container_instance: "1".into(),
                message_id: "123".into(),
            }),
        ]
    );
    let delivered = w.engine.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    let text = delivered[0].to_string();
    for secret in ["secretAccessKey", "accessKeyId", "\"token\"", "expiration"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // What reaches the engine: that the task has a role, by ARN, and its credentials id (which
    // the engine persists and puts in the containers' environment), never a secret.
    let role = delivered[0]["roleCredentials"].as_object().unwrap();
    let mut keys: Vec<&String> = role.keys().collect();
    keys.sort();
    assert_eq!(keys, ["credentialsId", "roleArn"]);
    assert_eq!(role["credentialsId"], "credsId");
    assert_eq!(delivered[0]["containers"][0]["name"], "name");
    assert_eq!(
        delivered[0]["elasticNetworkInterfaces"][0]["ec2Id"],
        "eni_id"
    );
    let c = w.creds.get("arn", RoleType::TaskApplication).unwrap();
    assert_eq!(c.secret_access_key, "secretAccessKey");
    assert_eq!(c.credentials_id, "credsId");
    assert_eq!(w.handler.latest_seq_num(), 1);
    assert_eq!(w.store.get::<i64>(ACS, SEQ_NUM_KEY).unwrap(), Some(1));
}

#[tokio::test]
async fn execution_credentials_get_their_own_ack() {
    let mut w = world();
    let creds = |id: &str| {
        json!({"credentialsId": id, "accessKeyId": "AK", "secretAccessKey": "SK",
                                  "sessionToken": "ST", "expiration": "e", "roleArn": "r"})
    };
    let h = w
        .handler
        .handle_frame(&payload(
            "m1",
            3,
            json!([{"arn": "t1", "desiredStatus": "RUNNING",
                     "roleCredentials": creds("app"), "executionRoleCredentials": creds("exec")}]),
        ))
        .await
        .unwrap();
    let ids: Vec<_> = h
        .replies
        .iter()
        .filter_map(|r| match r {
            Outbound::IamRoleCredentialsAckRequest(a) => Some(a.credentials_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec!["app", "exec"]);
    assert_eq!(h.replies.last(), Some(&ack("m1")));
    assert!(w.creds.get("t1", RoleType::TaskExecution).is_some());
    assert_eq!(w.creds.len(), 2);
}

#[tokio::test]
async fn stopped_tasks_are_applied_first() {
    let mut w = world();
    w.handler
        .handle_frame(&payload(
            "m1",
            1,
            json!([{"arn": "a", "desiredStatus": "RUNNING"},
                    {"arn": "b", "desiredStatus": "STOPPED"},
                    {"arn": "c", "desiredStatus": "RUNNING"}]),
        ))
        .await
        .unwrap();
    let order: Vec<_> = w.engine.delivered().into_iter().map(|(a, _)| a).collect();
    assert_eq!(order, vec!["b", "a", "c"]);
}

#[tokio::test]
async fn desired_status_only_moves_forward_and_duplicates_are_not_reapplied() {
    let mut w = world();
    let running = json!([{"arn": "t", "desiredStatus": "RUNNING"}]);
    let stopped = json!([{"arn": "t", "desiredStatus": "STOPPED"}]);
    let h1 = w
        .handler
        .handle_frame(&payload("m1", 1, running.clone()))
        .await
        .unwrap();
    // The same payload again (redelivery after a lost ack): acked, not applied twice.
    let h2 = w
        .handler
        .handle_frame(&payload("m1", 1, running.clone()))
        .await
        .unwrap();
    assert_eq!(h1.replies, vec![ack("m1")]);
    assert_eq!(h2.replies, vec![ack("m1")]);
    w.handler
        .handle_frame(&payload("m2", 2, stopped))
        .await
        .unwrap();
    // RUNNING after STOPPED is stale.
    w.handler
        .handle_frame(&payload("m3", 3, running))
        .await
        .unwrap();
    assert_eq!(
        w.engine.delivered(),
        vec![
            ("t".to_owned(), "RUNNING".to_owned()),
            ("t".to_owned(), "STOPPED".to_owned())
        ]
    );
    assert_eq!(w.handler.latest_seq_num(), 3);
}

#[tokio::test]
async fn refused_task_is_reported_stopped_and_the_payload_not_acked() {
    let mut w = world();
    w.engine.refuse.lock().unwrap().insert("bad".into());
    let tasks = json!([{"arn": "good", "desiredStatus": "RUNNING"},
                       {"arn": "bad", "desiredStatus": "RUNNING", "taskClusterArn": "arn:task-cluster"}]);
    let h = w
        .handler
        .handle_frame(&payload("m1", 5, tasks.clone()))
        .await
        .unwrap();
    assert!(h.replies.is_empty(), "{h:?}");
    assert_eq!(w.handler.latest_seq_num(), INITIAL_SEQ_NUM);
    let changes = w.sink.changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].task_arn, "bad");
    assert_eq!(changes[0].cluster, "arn:task-cluster");
    assert_eq!(changes[0].status, ReportStatus::Stopped);
    assert_eq!(
        changes[0].reason.as_deref(),
        Some("UnrecognizedACSTask: Error loading task: bad container")
    );
    // Redelivery: the good task is not applied again; the bad one is retried.
    w.engine.refuse.lock().unwrap().clear();
    let h = w
        .handler
        .handle_frame(&payload("m1", 5, tasks))
        .await
        .unwrap();
    assert_eq!(h.replies, vec![ack("m1")]);
    let arns: Vec<_> = w.engine.delivered().into_iter().map(|(a, _)| a).collect();
    assert_eq!(arns, vec!["good", "bad", "bad"]);
}

#[tokio::test]
async fn task_without_arn_fails_the_payload() {
    let mut w = world();
    let h = w
        .handler
        .handle_frame(&payload(
            "m1",
            1,
            json!([{"desiredStatus": "RUNNING", "family": "f"}]),
        ))
        .await
        .unwrap();
    assert!(h.replies.is_empty());
    assert!(w.engine.delivered().is_empty());
}

#[tokio::test]
async fn credentials_messages_are_validated_stored_and_acked() {
    let mut w = world();
    // For a task this instance does not hold: stored (a payload may follow) but not acked.
    let h = w
        .handler
        .handle_frame(&fixture("IAMRoleCredentialsMessage.session_test.json"))
        .await
        .unwrap();
    assert!(h.replies.is_empty(), "{:?}", h.replies);
    assert_eq!(w.creds.len(), 1);
    w.creds.remove("t1", RoleType::TaskApplication);
    // Once the engine holds t1, the same message is acked.
    *w.engine.running.lock().unwrap() = vec!["t1".into()];
    let h = w
        .handler
        .handle_frame(&fixture("IAMRoleCredentialsMessage.session_test.json"))
        .await
        .unwrap();
    assert_eq!(
        h.replies,
        vec![Outbound::IamRoleCredentialsAckRequest(
            IamRoleCredentialsAckRequest {
                message_id: "123".into(),
                expiration: "later".into(),
                credentials_id: "credsId".into(),
            }
        )]
    );
    assert_eq!(
        w.creds
            .get("t1", RoleType::TaskApplication)
            .unwrap()
            .session_token,
        "newstkn"
    );
    // Without roleType (the other fixture), or without credentialsId: rejected, not acked.
    let h = w
        .handler
        .handle_frame(&fixture("IAMRoleCredentialsMessage.acs_client_test.json"))
        .await
        .unwrap();
    assert!(h.replies.is_empty());
    let h = w
        .handler
        .handle_frame(&frame(
            "IAMRoleCredentialsMessage",
            json!({"messageId": "m", "taskArn": "t2", "roleType": "TaskExecution",
                   "roleCredentials": {"accessKeyId": "a"}}),
        ))
        .await
        .unwrap();
    assert!(h.replies.is_empty());
    assert_eq!(w.creds.len(), 1);
}

#[tokio::test]
async fn manifest_stop_verification_round_trip() {
    let mut w = world();
    *w.engine.running.lock().unwrap() = vec!["keep".into(), "ghost".into(), "stopping".into()];
    let manifest = |id: &str, timeline: i64| {
        frame(
            "TaskManifestMessage",
            json!({"messageId": id, "clusterArn": "arn:cluster", "containerInstanceArn": "arn:ci",
                   "timeline": timeline,
                   "tasks": [{"taskArn": "keep", "desiredStatus": "RUNNING"},
                             {"taskArn": "stopping", "desiredStatus": "STOPPED"}]}),
        )
    };
    let h = w.handler.handle_frame(&manifest("man1", 4)).await.unwrap();
    assert_eq!(h.replies.len(), 2, "{h:?}");
    assert_eq!(h.replies[0], ack("man1"));
    let Outbound::TaskStopVerificationMessage(v) = &h.replies[1] else {
        panic!("{h:?}")
    };
    assert_eq!(v.message_id, "man1");
    let arns: Vec<_> = v
        .stop_candidates
        .iter()
        .map(|c| c.task_arn.clone().unwrap())
        .collect();
    assert_eq!(arns, vec!["ghost", "stopping"]);
    assert!(v.stop_candidates.iter().all(|c| {
        c.desired_status.as_deref() == Some("STOPPED")
            && c.task_cluster_arn.as_deref() == Some("arn:cluster")
    }));
    assert_eq!(w.store.get::<i64>(ACS, SEQ_NUM_KEY).unwrap(), Some(4));

    // A stale manifest is ignored entirely.
    let h = w.handler.handle_frame(&manifest("man0", 4)).await.unwrap();
    assert_eq!(h, Handled::default());

    // An ack for another manifest is ignored; the right one stops the listed tasks, once.
    let stop_ack = |id: &str| {
        frame(
            "TaskStopVerificationAck",
            json!({"messageId": id, "stopTasks": [{"taskArn": "ghost", "desiredStatus": "STOPPED"}]}),
        )
    };
    w.handler.handle_frame(&stop_ack("other")).await.unwrap();
    assert!(w.engine.stopped.lock().unwrap().is_empty());
    w.handler.handle_frame(&stop_ack("man1")).await.unwrap();
    w.handler.handle_frame(&stop_ack("man1")).await.unwrap();
    assert_eq!(*w.engine.stopped.lock().unwrap(), vec!["ghost"]);
}

#[tokio::test]
async fn manifest_older_than_a_payload_is_ignored() {
    let mut w = world();
    *w.engine.running.lock().unwrap() = vec!["t".into()];
    w.handler
        .handle_frame(&payload(
            "m1",
            7,
            json!([{"arn": "t", "desiredStatus": "RUNNING"}]),
        ))
        .await
        .unwrap();
    let h = w
        .handler
        .handle_frame(&frame(
            "TaskManifestMessage",
            json!({"messageId": "man", "timeline": 7, "tasks": []}),
        ))
        .await
        .unwrap();
    assert_eq!(h, Handled::default());
}

#[tokio::test]
async fn attachments_are_acked_updates_nacked_and_the_rest_survived() {
    let mut w = world();
    for f in [
        "AttachTaskNetworkInterfacesMessage.acs_client_test.json",
        "AttachInstanceNetworkInterfacesMessage.acs_client_test.json",
        "ConfirmAttachmentMessage.session_test.json",
    ] {
        let h = w.handler.handle_frame(&fixture(f)).await.unwrap();
        let [Outbound::AckRequest(a)] = h.replies.as_slice() else {
            panic!("{f}: {h:?}")
        };
        assert_eq!(a.message_id, "123");
        assert!(!a.cluster.is_empty() && !a.container_instance.is_empty());
    }
    // The instance-ENI fixture has no containerInstanceArn: the session's is used.
    let h = w
        .handler
        .handle_frame(&fixture(
            "AttachInstanceNetworkInterfacesMessage.acs_client_test.json",
        ))
        .await
        .unwrap();
    assert!(matches!(&h.replies[0], Outbound::AckRequest(a) if a.container_instance == "arn:ci"));

    for kind in ["StageUpdateMessage", "PerformUpdateMessage"] {
        let h = w
            .handler
            .handle_frame(&frame(
                kind,
                json!({"messageId": "u", "clusterArn": "c", "containerInstanceArn": "i",
                       "updateInfo": {"location": "https://x", "signature": "abc"}}),
            ))
            .await
            .unwrap();
        assert_eq!(
            h.replies,
            vec![Outbound::NackRequest(NackRequest {
                cluster: "c".into(),
                container_instance: "i".into(),
                message_id: "u".into(),
                reason: UPDATE_REFUSED.into(),
            })]
        );
    }
    for quiet in [
        frame("CloseMessage", json!({"message": "bye"})),
        frame("ErrorMessage", json!({"message": "oops"})),
        frame("SomethingNew", json!({"a": 1})),
        frame("SomethingNew", json!({"a": 2})),
        "garbage".to_owned(),
        r#"{"type":"PayloadMessage","message":{"tasks":"nope"}}"#.to_owned(),
    ] {
        assert_eq!(
            w.handler.handle_frame(&quiet).await.unwrap(),
            Handled::default(),
            "{quiet}"
        );
    }
    let h = w
        .handler
        .handle_frame(&frame(
            "InactiveInstanceException",
            json!({"message": "deregistered"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        h.disconnect,
        Some(Disconnect::InactiveInstance("deregistered".into()))
    );
    let h = w
        .handler
        .handle_frame(&frame("ServerException", json!({})))
        .await
        .unwrap();
    assert!(
        matches!(h.disconnect, Some(Disconnect::Exception { ref kind, .. }) if kind == "ServerException")
    );
}

#[tokio::test]
async fn seq_num_survives_a_new_handler() {
    let mut w = world();
    w.handler
        .handle_frame(&payload("m", 42, json!([])))
        .await
        .unwrap();
    let again = Handler::new(HandlerParts {
        identity: Identity {
            cluster: "c".into(),
            container_instance_arn: "i".into(),
        },
        engine: w.engine.clone(),
        credentials: w.creds.clone(),
        sink: w.sink.clone(),
        store: w.store.clone(),
        milestones: None,
    })
    .unwrap();
    assert_eq!(again.latest_seq_num(), 42);
}

/// awsvpc.md §2.1: each ENI's attachment goes to the engine (joined later by attachment ARN)
/// before the ack; an engine that cannot record it gets no ack, so ACS sends it again.
#[tokio::test]
async fn task_eni_attachments_are_recorded_before_the_ack() {
    let w = world();
    let mut w = w;
    let msg = |id: &str, task: &str| {
        frame(
            "AttachTaskNetworkInterfacesMessage",
            json!({"messageId": id, "clusterArn": "arn:cluster", "containerInstanceArn": "arn:ci",
                   "taskArn": task, "waitTimeoutMs": 5000,
                   "elasticNetworkInterfaces": [{
                       "attachmentArn": "arn:att/1", "ec2Id": "eni-1",
                       "macAddress": "0A:1B:2C:3D:4E:5F",
                       "ipv4Addresses": [{"privateAddress": "10.0.1.23", "primary": true}],
                       "subnetGatewayIpv4Address": "10.0.1.1/24"}]}),
        )
    };
    w.engine
        .unavailable
        .lock()
        .unwrap()
        .insert("arn:task/busy".into());
    let h = w
        .handler
        .handle_frame(&msg("m0", "arn:task/busy"))
        .await
        .unwrap();
    assert!(h.replies.is_empty(), "no ack without a record: {h:?}");
    assert!(w.engine.attached.lock().unwrap().is_empty());

    let h = w
        .handler
        .handle_frame(&msg("m1", "arn:task/1"))
        .await
        .unwrap();
    assert_eq!(h.replies, vec![ack("m1")]);
    assert_eq!(
        *w.engine.attached.lock().unwrap(),
        vec![crate::tasks::EniAttachment {
            attachment_arn: "arn:att/1".into(),
            task_arn: "arn:task/1".into(),
            mac: "0a:1b:2c:3d:4e:5f".into(),
            wait_timeout_ms: Some(5000),
        }]
    );
    // Without a task ARN nothing can be joined: no record, no ack.
    let h = w
        .handler
        .handle_frame(&frame(
            "AttachTaskNetworkInterfacesMessage",
            json!({"messageId": "m2", "elasticNetworkInterfaces": []}),
        ))
        .await
        .unwrap();
    assert!(h.replies.is_empty());
}
