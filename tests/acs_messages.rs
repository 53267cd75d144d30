//! The ACS wire format against the protocol fixtures and the ACS model: every fixture decodes,
//! every frame the agent can send matches the model, and no input makes the decoder or the
//! handler panic (the stable counterpart of `fuzz/fuzz_targets/acs_frame.rs`).

mod acs_support;

use std::sync::Arc;

use acs_support::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use ecs_hostd::ecs::acs::messages::{self, Inbound, Outbound};
use ecs_hostd::ecs::acs::{Handler, HandlerParts, Identity};
use ecs_hostd::store::Store;
use ecs_hostd::tasks::{CredentialsStore, RecordingSink};

fn fixtures() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/acs/messages");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert_eq!(out.len(), 10, "the fixture set changed");
    out
}

#[test]
fn every_fixture_decodes() {
    for (name, text) in fixtures() {
        let shape = name.split('.').next().unwrap();
        if shape == "ConnectError" {
            let (exception, message) = messages::decode_connect_error(text.as_bytes()).unwrap();
            assert_eq!(exception, "InvalidClusterException");
            assert_eq!(message, "Invalid cluster");
            continue;
        }
        let decoded = messages::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.kind(), shape, "{name}");
        assert!(!matches!(decoded, Inbound::Unknown { .. }), "{name}");
    }
}

#[test]
fn fixtures_use_the_model_except_known_extras() {
    // Members the fixtures carry that the model lacks (upstream's Go tests add them); the decoder
    // ignores unknown members, so they must not make a frame fail.
    let known_extras = [
        "IAMRoleCredentialsMessage.clusterArn: not a member",
        "containers[0].desiredStatus: not a member",
    ];
    let model = acs_model();
    for (name, text) in fixtures() {
        if name.starts_with("ConnectError") {
            continue;
        }
        let frame: Value = serde_json::from_str(&text).unwrap();
        for p in check_frame(&model, &frame) {
            assert!(
                known_extras.iter().any(|k| p.contains(k)),
                "{name}: unexpected model mismatch: {p}"
            );
        }
    }
}

fn sample_outbound() -> Vec<Outbound> {
    use messages::*;
    vec![
        Outbound::AckRequest(AckRequest {
            cluster: "arn:aws:ecs:us-west-2:123456789012:cluster/prod".into(),
            container_instance: "arn:aws:ecs:us-west-2:123456789012:container-instance/prod/0f1e"
                .into(),
            message_id: "123".into(),
        }),
        Outbound::HeartbeatAckRequest(HeartbeatAckRequest {
            message_id: "123".into(),
        }),
        Outbound::IamRoleCredentialsAckRequest(IamRoleCredentialsAckRequest {
            message_id: "123".into(),
            expiration: "2016-03-25T06:17:19.318+0000".into(),
            credentials_id: "credsId".into(),
        }),
        Outbound::TaskStopVerificationMessage(TaskStopVerificationMessage {
            message_id: "m".into(),
            stop_candidates: vec![TaskIdentifier {
                task_arn: Some("t".into()),
                task_cluster_arn: Some("c".into()),
                desired_status: Some("STOPPED".into()),
            }],
        }),
        Outbound::NackRequest(NackRequest {
            cluster: "c".into(),
            container_instance: "i".into(),
            message_id: "m".into(),
            reason: "r".into(),
        }),
    ]
}

#[test]
fn every_outbound_frame_matches_the_model() {
    let model = acs_model();
    let samples = sample_outbound();
    let kinds: std::collections::HashSet<_> = samples.iter().map(Outbound::kind).collect();
    assert_eq!(kinds.len(), 5, "one sample per outbound shape");
    for o in samples {
        let frame: Value = serde_json::from_str(&o.encode()).unwrap();
        assert_eq!(frame["type"], o.kind());
        assert_eq!(check_frame(&model, &frame), Vec::<String>::new(), "{frame}");
        // Every member of the shape is present (the model marks none required; ACS reads all).
        let members = model["shapes"][o.kind()]["members"].as_object().unwrap();
        let sent = frame["message"].as_object().unwrap();
        for m in members.keys() {
            assert!(sent.contains_key(m), "{} lacks {m}", o.kind());
        }
    }
}

fn handler(dir: &tempfile::TempDir) -> Handler {
    Handler::new(HandlerParts {
        identity: Identity {
            cluster: "default".into(),
            container_instance_arn: "arn:ci".into(),
        },
        // It holds the task of the credentials fixture (t1): a refresh for a task the engine
        // does not hold gets no ack.
        engine: Arc::new(RecordingEngine {
            running: std::sync::Mutex::new(vec!["t1".into()]),
            ..Default::default()
        }),
        credentials: Arc::new(CredentialsStore::default()),
        sink: Arc::new(RecordingSink::default()),
        store: Store::open(&dir.path().join("s.redb")).unwrap(),
        milestones: None,
    })
    .unwrap()
}

#[tokio::test]
async fn replies_to_every_fixture_match_the_model() {
    let model = acs_model();
    let dir = tempfile::tempdir().unwrap();
    let mut h = handler(&dir);
    let mut replies = 0;
    for (name, text) in fixtures() {
        for r in h.handle_frame(&text).await.unwrap().replies {
            let frame: Value = serde_json::from_str(&r.encode()).unwrap();
            assert_eq!(
                check_frame(&model, &frame),
                Vec::<String>::new(),
                "{name}: {frame}"
            );
            replies += 1;
        }
    }
    // Heartbeat, session payload (credentials + payload), credentials message, three attachments.
    assert_eq!(replies, 7);
}

// ------------------------------------------------------------------------------ no panics

const KINDS: &[&str] = &[
    "HeartbeatMessage",
    "PayloadMessage",
    "IAMRoleCredentialsMessage",
    "TaskManifestMessage",
    "TaskStopVerificationAck",
    "AttachTaskNetworkInterfacesMessage",
    "AttachInstanceNetworkInterfacesMessage",
    "ConfirmAttachmentMessage",
    "StageUpdateMessage",
    "PerformUpdateMessage",
    "CloseMessage",
    "ErrorMessage",
    "InactiveInstanceException",
    "ServerException",
    "Unknown",
];

/// Member names of the inbound shapes, so generated objects reach deep into the decoder.
const MEMBERS: &[&str] = &[
    "messageId",
    "clusterArn",
    "containerInstanceArn",
    "seqNum",
    "timeline",
    "generatedAt",
    "tasks",
    "arn",
    "desiredStatus",
    "taskClusterArn",
    "roleCredentials",
    "executionRoleCredentials",
    "credentialsId",
    "expiration",
    "secretAccessKey",
    "roleType",
    "taskArn",
    "stopTasks",
    "healthy",
    "attachment",
    "attachmentProperties",
    "elasticNetworkInterfaces",
    "updateInfo",
    "message",
    "containers",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("RUNNING".to_owned()),
            Just("STOPPED".to_owned()),
            Just("TaskApplication".to_owned()),
            Just(String::new()),
            ".{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(MEMBERS).prop_map(str::to_owned),
            1 => "[a-zA-Z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn frame() -> impl Strategy<Value = String> {
    prop_oneof![
        // Arbitrary text and bytes.
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ".*",
        // Envelopes of every known type with arbitrary (member-named) contents.
        (prop::sample::select(KINDS), json_value())
            .prop_map(|(k, m)| json!({"type": k, "message": m}).to_string()),
        // Arbitrary JSON.
        json_value().prop_map(|v| v.to_string()),
    ]
}

/// One handler (and store) for all generated cases: creating a store per case would make the
/// test slow, and a handler that has seen many strange frames is the better test anyway.
struct Shared {
    rt: tokio::runtime::Runtime,
    handler: Handler,
    _dir: tempfile::TempDir,
}

fn shared() -> &'static std::sync::Mutex<Shared> {
    static SHARED: std::sync::OnceLock<std::sync::Mutex<Shared>> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::sync::Mutex::new(Shared {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            handler: handler(&dir),
            _dir: dir,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Decoding never panics, and a decoded frame's handling never panics or fails.
    #[test]
    fn arbitrary_frames_never_panic(frames in prop::collection::vec(frame(), 1..8)) {
        let mut guard = shared().lock().unwrap_or_else(|p| p.into_inner());
        let Shared { rt, handler, .. } = &mut *guard;
        rt.block_on(async {
            for f in &frames {
                let _ = messages::decode(f);
                let handled = handler.handle_frame(f).await.unwrap();
                for r in handled.replies {
                    // Whatever comes back is a valid frame.
                    let v: Value = serde_json::from_str(&r.encode()).unwrap();
                    prop_assert!(v["type"].is_string());
                }
            }
            Ok(())
        })?;
    }

    /// The connect-error body parser never panics.
    #[test]
    fn arbitrary_connect_error_bodies(body in any::<Vec<u8>>()) {
        let _ = messages::decode_connect_error(&body);
    }
}
