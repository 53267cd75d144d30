use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::{HeaderMap, Request};

use super::*;
use crate::credentials::{RoleCredentials, RoleType};
use crate::engine::model::ContainerNetwork;
use crate::tasks::NetworkBinding;

const APP_ID: &str = "6f1d1a0e-2b8e-4a31-9d6b-0c7e5e0b1c11";
const EXEC_ID: &str = "0c4f0a7e-7e33-4b59-8a2d-5f2d1ad8f0a2";
const TASK: &str = "arn:aws:ecs:us-east-1:123456789012:task/prod/9a8b";
const ENDPOINT: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

fn creds(id: &str, key: &str, secret: &str, token: &str) -> RoleCredentials {
    RoleCredentials {
        credentials_id: id.into(),
        role_arn: "arn:aws:iam::123456789012:role/app".into(),
        access_key_id: key.into(),
        secret_access_key: secret.into(),
        session_token: token.into(),
        expiration: "2026-07-01T13:00:00Z".into(),
    }
}

/// Stats that record what was asked.
#[derive(Default)]
struct FakeStats {
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl StatsSource for FakeStats {
    async fn stats(&self, docker_id: &str) -> Result<serde_json::Value, String> {
        self.asked.lock().unwrap().push(docker_id.to_owned());
        Ok(
            serde_json::json!({"id": docker_id, "name": "/x", "read": "2026-07-01T12:00:00.000000001Z"}),
        )
    }
}

struct World {
    state: EndpointState,
    audit_file: std::path::PathBuf,
    stats: Arc<FakeStats>,
    _dir: tempfile::TempDir,
}

fn container(endpoint: &str, name: &str, docker_id: Option<&str>) -> ContainerFacts {
    ContainerFacts {
        endpoint_id: endpoint.into(),
        docker_id: docker_id.map(str::to_owned),
        name: name.into(),
        docker_name: format!("ecs-web-3-{name}-b2f0c4d8e6a1f3b5c701"),
        image: "local/busybox:test".into(),
        image_id: Some("sha256:5f1c".into()),
        ports: vec![NetworkBinding {
            bind_ip: "0.0.0.0".into(),
            container_port: Some(8080),
            host_port: Some(32768),
            protocol: "tcp".into(),
            container_port_range: None,
            host_port_range: None,
        }],
        labels: BTreeMap::from([("com.amazonaws.ecs.task-arn".to_owned(), TASK.to_owned())]),
        desired_status: "RUNNING".into(),
        known_status: "RUNNING".into(),
        exit_code: None,
        cpu_units: 256,
        memory_mib: 128,
        created_at: Some("2026-07-01T12:00:00.412318071Z".into()),
        started_at: Some("2026-07-01T12:00:00.698817273Z".into()),
        finished_at: None,
        networks: vec![ContainerNetwork {
            name: "bridge".into(),
            ipv4: "172.17.0.3".into(),
            ipv6: String::new(),
        }],
        volumes: Vec::new(),
        log_driver: Some("json-file".into()),
        log_options: BTreeMap::from([("max-size".to_owned(), "10m".to_owned())]),
        container_arn: Some("arn:aws:ecs:us-east-1:123456789012:container/prod/9a8b/web".into()),
        running: docker_id.is_some(),
        listed: docker_id.is_some(),
        health: None,
        awsvpc: None,
    }
}

fn index() -> MetadataIndex {
    MetadataIndex::new(vec![TaskFacts {
        arn: TASK.into(),
        family: "web".into(),
        revision: "3".into(),
        desired_status: "RUNNING".into(),
        known_status: "RUNNING".into(),
        containers: vec![
            container(ENDPOINT, "web", Some("3c1de9")),
            container("11111111-2222-4333-8444-555555555555", "later", None),
        ],
        cpu_vcpu: Some(0.25),
        memory_mib: Some(256),
        pull_started_at: Some(1_782_907_199.9),
        pull_stopped_at: None,
        execution_stopped_at: None,
        launch_type: Some("EC2".into()),
        service_name: None,
        fault_injection: false,
    }])
}

fn world(rps: u32, burst: u32) -> World {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("log/ecs/audit.log");
    let store = Arc::new(CredentialsStore::default());
    store.set(
        TASK,
        RoleType::TaskApplication,
        creds(APP_ID, "ASIAEXAMPLEAPP", "s1", "t1"),
    );
    store.set(
        TASK,
        RoleType::TaskExecution,
        creds(EXEC_ID, "ASIAEXAMPLEEXE", "s2", "t2"),
    );
    store.register_pending(
        "arn:aws:ecs:us-east-1:123456789012:task/prod/old",
        RoleType::TaskApplication,
        "pending-id",
    );
    let stats = Arc::new(FakeStats::default());
    let state = EndpointState {
        instance: InstanceFacts {
            cluster: "prod".into(),
            container_instance_arn:
                "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/1f2e".into(),
            availability_zone: "us-east-1a".into(),
        },
        credentials: store,
        tasks: Arc::new(Arc::new(index())),
        stats: stats.clone(),
        limiter: Arc::new(limit::RateLimiter::new(rps, burst)),
        audit: Arc::new(audit::AuditLog::new(audit::Sink::file(
            audit_file.clone(),
            Default::default(),
        ))),
        tags: Arc::new(FakeTags),
    };
    World {
        state,
        audit_file,
        stats,
        _dir: dir,
    }
}

struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn get(state: &EndpointState, path: &str, peer: &str) -> Got {
    let mut app = router(state.clone());
    let mut req = Request::builder()
        .uri(path)
        .header("user-agent", "aws-sdk-rust/1.3")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    let resp = tower_service::Service::call(&mut app, req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

const PEER: &str = "172.17.0.3:40112";

fn audit_lines(w: &World) -> Vec<String> {
    std::fs::read_to_string(&w.audit_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn credentials_success_is_exactly_the_five_keys() {
    let w = world(40, 60);
    for path in [
        format!("/v2/credentials/{APP_ID}"),
        format!("/v1/credentials?id={APP_ID}"),
    ] {
        let g = get(&w.state, &path, PEER).await;
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(g.headers["content-type"], "application/json");
        assert_eq!(
            g.body,
            r#"{"RoleArn":"arn:aws:iam::123456789012:role/app","AccessKeyId":"ASIAEXAMPLEAPP","SecretAccessKey":"s1","Token":"t1","Expiration":"2026-07-01T13:00:00Z"}"#
        );
    }
    // The execution role's entry is served by the same URL.
    let g = get(&w.state, &format!("/v2/credentials/{EXEC_ID}"), PEER).await;
    assert_eq!(g.status, 200);
    assert!(g.body.contains(r#""AccessKeyId":"ASIAEXAMPLEEXE""#));
}

#[tokio::test]
async fn credentials_errors_in_the_specs_order_and_shape() {
    let w = world(40, 60);
    let cases = [
        (
            "/v2/credentials/",
            400,
            r#"{"code":"NoIdInRequest","message":"CredentialsV2Request: No Credential ID in the request","HTTPErrorCode":400}"#,
        ),
        (
            "/v2/credentials",
            400,
            r#"{"code":"NoIdInRequest","message":"CredentialsV2Request: No Credential ID in the request","HTTPErrorCode":400}"#,
        ),
        (
            "/v1/credentials",
            400,
            r#"{"code":"NoIdInRequest","message":"CredentialsV1Request: No Credential ID in the request","HTTPErrorCode":400}"#,
        ),
        (
            "/v1/credentials?id=",
            400,
            r#"{"code":"NoIdInRequest","message":"CredentialsV1Request: No Credential ID in the request","HTTPErrorCode":400}"#,
        ),
        (
            "/v2/credentials/pending-id",
            503,
            r#"{"code":"CredentialsUninitialized","message":"CredentialsV2Request: Credentials uninitialized for ID","HTTPErrorCode":503}"#,
        ),
        (
            "/v1/credentials?id=pending-id",
            503,
            r#"{"code":"CredentialsUninitialized","message":"CredentialsV1Request: Credentials uninitialized for ID","HTTPErrorCode":503}"#,
        ),
        (
            "/v2/credentials/never-seen",
            400,
            r#"{"code":"InvalidIdInRequest","message":"CredentialsV2Request: Credentials not found","HTTPErrorCode":400}"#,
        ),
        (
            "/v1/credentials?id=never-seen",
            400,
            r#"{"code":"InvalidIdInRequest","message":"CredentialsV1Request: Credentials not found","HTTPErrorCode":400}"#,
        ),
    ];
    for (path, status, body) in cases {
        let g = get(&w.state, path, PEER).await;
        assert_eq!((g.status, g.body.as_str()), (status, body), "{path}");
        assert_eq!(g.headers["content-type"], "application/json", "{path}");
    }
    // Removal (task stopped) makes a served id unknown.
    w.state.credentials.remove(TASK, RoleType::TaskApplication);
    let g = get(&w.state, &format!("/v2/credentials/{APP_ID}"), PEER).await;
    assert_eq!(g.status, 400);
    assert!(g.body.contains("InvalidIdInRequest"));
}

#[tokio::test]
async fn audit_lines_name_the_task_and_event_but_never_the_id_or_a_secret() {
    let w = world(40, 60);
    get(&w.state, &format!("/v2/credentials/{APP_ID}"), PEER).await;
    get(&w.state, &format!("/v1/credentials?id={EXEC_ID}"), PEER).await;
    get(&w.state, "/v2/credentials/pending-id", PEER).await;
    get(&w.state, "/v2/credentials/never-seen", PEER).await;
    // Metadata requests are not audited (only when rate limited).
    get(&w.state, &format!("/v4/{ENDPOINT}"), PEER).await;
    let lines = audit_lines(&w);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    // <time> <status> <ip:port> "<path>" "<UA>" <task ARN> <event> 2 <cluster> <instance ARN>
    assert_eq!(
        &fields[0][1..],
        [
            "200",
            PEER,
            "\"/v2/credentials\"",
            "\"aws-sdk-rust/1.3\"",
            TASK,
            "GetCredentials",
            "2",
            "prod",
            "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/1f2e"
        ]
    );
    assert!(
        fields[0][0].len() == 20 && fields[0][0].ends_with('Z'),
        "{}",
        fields[0][0]
    );
    assert_eq!(fields[1][3], "\"/v1/credentials\"");
    assert_eq!(fields[1][6], "GetCredentialsExecutionRole");
    // Errors: six fields; the task is known for a pending id, else `-`.
    assert_eq!(
        &fields[2][1..],
        [
            "503",
            PEER,
            "\"/v2/credentials\"",
            "\"aws-sdk-rust/1.3\"",
            "arn:aws:ecs:us-east-1:123456789012:task/prod/old"
        ]
    );
    assert_eq!(
        &fields[3][1..],
        [
            "400",
            PEER,
            "\"/v2/credentials\"",
            "\"aws-sdk-rust/1.3\"",
            "-"
        ]
    );
    let all = lines.join("\n");
    for never in [
        APP_ID,
        EXEC_ID,
        "pending-id",
        "never-seen",
        "ASIAEXAMPLE",
        "s1",
        "t1 ",
    ] {
        assert!(!all.contains(never), "{never} in {all}");
    }
}

#[tokio::test]
async fn audit_can_be_disabled_and_defaults_to_the_log() {
    let mut w = world(40, 60);
    w.state.audit = Arc::new(audit::AuditLog::from_config(
        &crate::config::TaskEndpointConfig {
            audit_disabled: true,
            audit_logfile: Some(w.audit_file.clone()),
            ..crate::config::Config::default().task_endpoint
        },
    ));
    get(&w.state, &format!("/v2/credentials/{APP_ID}"), PEER).await;
    assert!(!w.audit_file.exists());
    let default = audit::AuditLog::from_config(&crate::config::Config::default().task_endpoint);
    assert!(format!("{default:?}").contains("Log"), "{default:?}");
}

#[test]
fn routes() {
    use metadata::What::*;
    assert_eq!(route("/v1/credentials"), Route::CredentialsV1);
    assert_eq!(route("/v2/credentials/abc"), Route::CredentialsV2("abc"));
    assert_eq!(route("/v2/credentials/"), Route::CredentialsV2(""));
    assert_eq!(route("/v2/credentialsx"), Route::NotFound);
    let m = |v4, id, what| Route::Metadata { v4, id, what };
    assert_eq!(route("/v4/e"), m(true, "e", Container));
    assert_eq!(route("/v4/e/task"), m(true, "e", Task));
    assert_eq!(route("/v4/e/taskWithTags"), m(true, "e", TaskWithTags));
    assert_eq!(route("/v4/e/stats"), m(true, "e", ContainerStats));
    assert_eq!(route("/v4/e/task/stats"), m(true, "e", TaskStats));
    assert_eq!(route("/v3/e/task"), m(false, "e", Task));
    assert_eq!(route("/v4/e/"), Route::NotFound);
    assert_eq!(route("/v4/e/tasks"), Route::NotFound);
    assert_eq!(route("/v2/metadata"), Route::NotFound);
    assert_eq!(route("/"), Route::NotFound);
}

#[test]
fn paths_are_cleaned_as_go_does() {
    for (dirty, clean) in [
        ("//v2//credentials/x", "/v2/credentials/x"),
        ("/v4/e/./task", "/v4/e/task"),
        ("/v4/e/x/../task", "/v4/e/task"),
        ("/v4/e/", "/v4/e/"),
        ("/..", "/"),
        ("", "/"),
        ("v1/credentials", "/v1/credentials"),
        ("/v4/e//", "/v4/e/"),
    ] {
        assert_eq!(clean_path(dirty), clean, "{dirty}");
    }
}

#[tokio::test]
async fn unclean_paths_redirect_and_unknown_paths_are_404_text() {
    let w = world(40, 60);
    let g = get(&w.state, "/v2//credentials/abc?x=1", PEER).await;
    assert_eq!(g.status, 301);
    assert_eq!(g.headers["location"], "/v2/credentials/abc?x=1");
    assert!(g.body.is_empty());
    for path in [
        "/",
        "/v4/",
        "/nothing",
        &format!("/v4/{ENDPOINT}/"),
        "/v2/metadata",
    ] {
        let g = get(&w.state, path, PEER).await;
        if path == "/v4/" {
            // An empty endpoint id is an id (`[^/]*`) that names no container.
            assert_eq!(g.status, 404);
            assert_eq!(g.headers["content-type"], "application/json");
            continue;
        }
        assert_eq!(g.status, 404, "{path}");
        assert_eq!(g.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(g.body, "404 page not found\n");
    }
}

#[tokio::test]
async fn rate_limit_per_ip_and_path_with_429_text_and_audit() {
    let w = world(1, 3);
    let path = format!("/v2/credentials/{APP_ID}");
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(get(&w.state, &path, PEER).await.status);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    let g = get(&w.state, &path, PEER).await;
    assert_eq!(g.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(g.body, "You have reached maximum request limit.");
    // Another caller, another path: their own buckets.
    assert_eq!(get(&w.state, &path, "172.17.0.4:1000").await.status, 200);
    assert_eq!(
        get(&w.state, &format!("/v4/{ENDPOINT}"), PEER).await.status,
        200
    );
    // Metadata requests refused are audited too.
    for _ in 0..4 {
        get(&w.state, &format!("/v4/{ENDPOINT}"), PEER).await;
    }
    let lines = audit_lines(&w);
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains(" 429 ")).collect();
    assert_eq!(refused.len(), 3 + 2, "{lines:#?}");
    assert!(refused[0].ends_with("\"/v2/credentials\" \"aws-sdk-rust/1.3\" -"));
    assert!(
        refused
            .iter()
            .any(|l| l.contains(&format!("\"/v4/{ENDPOINT}\"")))
    );
    assert!(!lines.join("\n").contains(APP_ID));
}

/// The keys of a JSON object, in the order they were written.
fn keys_in_order(body: &str) -> Vec<String> {
    // A streaming walk over the top level only.
    let mut de = serde_json::Deserializer::from_str(body);
    struct Keys(Vec<String>);
    impl<'de> serde::de::Visitor<'de> for &mut Keys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                self.0.push(k);
                m.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut keys = Keys(Vec::new());
    serde::Deserializer::deserialize_map(&mut de, &mut keys).unwrap();
    keys.0
}

#[tokio::test]
async fn v4_container_object_keys_in_the_specs_order() {
    let w = world(40, 60);
    let g = get(&w.state, &format!("/v4/{ENDPOINT}"), PEER).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.headers["content-type"], "application/json");
    assert_eq!(
        keys_in_order(&g.body),
        [
            "DockerId",
            "Name",
            "DockerName",
            "Image",
            "ImageID",
            "Ports",
            "Labels",
            "DesiredStatus",
            "KnownStatus",
            "Limits",
            "CreatedAt",
            "StartedAt",
            "Type",
            "Networks",
            "LogDriver",
            "LogOptions",
            "ContainerARN"
        ]
    );
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(v["DockerId"], "3c1de9");
    assert_eq!(
        v["ContainerARN"],
        "arn:aws:ecs:us-east-1:123456789012:container/prod/9a8b/web"
    );
    assert!(g.body.contains(
        r#""Ports":[{"ContainerPort":8080,"Protocol":"tcp","HostPort":32768,"HostIp":"0.0.0.0"}]"#
    ));
    assert!(g.body.contains(r#""Limits":{"CPU":256,"Memory":128}"#));
    assert!(g.body.contains(r#""Type":"NORMAL""#));
    assert!(
        g.body
            .contains(r#""Networks":[{"NetworkMode":"bridge","IPv4Addresses":["172.17.0.3"]}]"#)
    );
    assert!(
        g.body
            .contains(r#""CreatedAt":"2026-07-01T12:00:00.412318071Z""#)
    );
}

/// `Health` (task-metadata.md §4) of a health-checked container, in v4 and v3: after
/// `Networks`, `status` omitted while UNKNOWN, `exitCode` omitted when 0, `output` when empty,
/// `statusSince` in RFC 3339 with the fraction; absent for a container without a health check.
#[test]
fn health_is_shown_for_health_checked_containers_only() {
    let mut c = container(ENDPOINT, "web", Some("3c1de9"));
    let body = |c: &ContainerFacts, v4| {
        serde_json::from_slice::<serde_json::Value>(&metadata::container_body(c, v4)).unwrap()
    };
    assert!(body(&c, true).get("Health").is_none());

    c.health = Some(ContainerHealth {
        status: HealthStatus::Unhealthy,
        since_ms: Some(1_782_907_201_500),
        exit_code: Some(1),
        output: Some("connection refused\n".into()),
    });
    for v4 in [true, false] {
        let text = String::from_utf8(metadata::container_body(&c, v4)).unwrap();
        let keys = keys_in_order(&text);
        let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
        assert_eq!(at("Health"), at("Networks") + 1, "{text}");
        assert_eq!(
            body(&c, v4)["Health"],
            serde_json::json!({"status": "UNHEALTHY", "statusSince": "2026-07-01T12:00:01.5Z",
                "exitCode": 1, "output": "connection refused\n"})
        );
    }

    c.health = Some(ContainerHealth {
        status: HealthStatus::Healthy,
        since_ms: Some(1_782_907_201_000),
        exit_code: Some(0),
        output: None,
    });
    assert_eq!(
        body(&c, true)["Health"],
        serde_json::json!({"status": "HEALTHY", "statusSince": "2026-07-01T12:00:01Z"})
    );
    c.health = Some(ContainerHealth::default());
    assert_eq!(body(&c, true)["Health"], serde_json::json!({}));
    assert_eq!(HealthStatus::Unknown.as_str(), "UNKNOWN");
}

#[tokio::test]
async fn v4_task_object_keys_in_the_specs_order() {
    let w = world(40, 60);
    let g = get(&w.state, &format!("/v4/{ENDPOINT}/task"), PEER).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        keys_in_order(&g.body),
        [
            "Cluster",
            "TaskARN",
            "Family",
            "Revision",
            "DesiredStatus",
            "KnownStatus",
            "Containers",
            "Limits",
            "PullStartedAt",
            "AvailabilityZone",
            "LaunchType",
            "FaultInjectionEnabled"
        ]
    );
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    // What the OpenTelemetry ECS detector reads.
    assert_eq!(v["TaskARN"], TASK);
    assert_eq!(v["Cluster"], "prod");
    assert_eq!(v["LaunchType"], "EC2");
    assert_eq!(v["Family"], "web");
    assert_eq!(v["Revision"], "3");
    assert_eq!(v["FaultInjectionEnabled"], false);
    assert!(g.body.contains(r#""Limits":{"CPU":0.25,"Memory":256}"#));
    assert_eq!(v["PullStartedAt"], "2026-07-01T11:59:59.9Z");
    // Only created (or pulled) containers are listed.
    assert_eq!(v["Containers"].as_array().unwrap().len(), 1);

    let g = get(&w.state, &format!("/v4/{ENDPOINT}/taskWithTags"), PEER).await;
    assert_eq!(g.status, 200);
    let keys = keys_in_order(&g.body);
    let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
    assert!(at("LaunchType") < at("Errors") && at("Errors") < at("FaultInjectionEnabled"));
    assert!(at("AvailabilityZone") < at("TaskTags") && at("TaskTags") < at("LaunchType"));
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    // The task's tags came back; the instance's were denied: one entry, empty fields left out.
    assert_eq!(
        v["TaskTags"],
        serde_json::json!({"env": "prod", "team": "web"})
    );
    assert!(v.get("ContainerInstanceTags").is_none(), "{}", g.body);
    assert_eq!(
        v["Errors"],
        serde_json::json!([{"ErrorField": "ContainerInstanceTags",
            "ErrorCode": "AccessDeniedException", "ErrorMessage": "denied", "StatusCode": 400,
            "ResourceARN": "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/1f2e"}])
    );
    // /task does not ask for tags.
    let g = get(&w.state, &format!("/v4/{ENDPOINT}/task"), PEER).await;
    assert!(
        !g.body.contains("Tags") && !g.body.contains("Errors"),
        "{}",
        g.body
    );
}

/// Tags of the task; the container instance's are denied (no request id).
struct FakeTags;

#[async_trait::async_trait]
impl tags::TagSource for FakeTags {
    async fn tags(&self, arn: &str) -> Result<BTreeMap<String, String>, tags::TagFailure> {
        if arn == TASK {
            Ok([("team", "web"), ("env", "prod")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into_iter()
                .collect())
        } else {
            Err(tags::TagFailure {
                code: "AccessDeniedException".into(),
                message: "denied".into(),
                status: Some(400),
                request_id: None,
            })
        }
    }
}

#[tokio::test]
async fn v3_drops_the_v4_only_keys() {
    let w = world(40, 60);
    let g = get(&w.state, &format!("/v3/{ENDPOINT}"), PEER).await;
    assert_eq!(g.status, 200);
    let keys = keys_in_order(&g.body);
    for k in ["LogDriver", "LogOptions", "ContainerARN"] {
        assert!(!keys.contains(&k.to_owned()), "{k} in v3: {}", g.body);
    }
    assert!(!g.body.contains("HostIp"));
    let g = get(&w.state, &format!("/v3/{ENDPOINT}/taskWithTags"), PEER).await;
    let keys = keys_in_order(&g.body);
    for k in [
        "LaunchType",
        "Errors",
        "FaultInjectionEnabled",
        "ServiceName",
    ] {
        assert!(!keys.contains(&k.to_owned()), "{k} in v3: {}", g.body);
    }
}

#[tokio::test]
async fn metadata_lookup_failures_per_version() {
    let w = world(40, 60);
    let unknown = "no-such-endpoint";
    let cases = [
        (format!("/v4/{unknown}"), 404, format!("\"V4 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: {unknown}\"")),
        (format!("/v4/{unknown}/task"), 404, format!("\"V4 task metadata handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {unknown}\"")),
        (format!("/v4/{unknown}/stats"), 404, format!("\"V4 container stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {unknown}\"")),
        (format!("/v3/{unknown}"), 500, format!("\"V3 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: {unknown}\"")),
        (format!("/v3/{unknown}/stats"), 400, format!("\"V3 container stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {unknown}\"")),
        // A container not created yet has no endpoint mapping.
        ("/v4/11111111-2222-4333-8444-555555555555".to_owned(), 404, "\"V4 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: 11111111-2222-4333-8444-555555555555\"".to_owned()),
    ];
    for (path, status, body) in cases {
        let g = get(&w.state, &path, PEER).await;
        assert_eq!(
            (g.status, g.body.as_str()),
            (status, body.as_str()),
            "{path}"
        );
        assert_eq!(g.headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn stats_come_from_the_stats_source() {
    let w = world(40, 60);
    let g = get(&w.state, &format!("/v4/{ENDPOINT}/stats"), PEER).await;
    assert_eq!(g.status, 200);
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(v["id"], "3c1de9");
    let g = get(&w.state, &format!("/v4/{ENDPOINT}/task/stats"), PEER).await;
    assert_eq!(g.status, 200);
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(v["3c1de9"]["id"], "3c1de9");
    assert_eq!(v.as_object().unwrap().len(), 1, "only created containers");
    assert_eq!(*w.stats.asked.lock().unwrap(), ["3c1de9", "3c1de9"]);
}

#[tokio::test]
async fn the_real_server_sees_the_peer_and_stops_on_cancel() {
    let w = world(40, 60);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_on(listener, w.state.clone(), cancel.clone()));
    let url = format!("http://127.0.0.1:{port}/v2/credentials/{APP_ID}");
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with(r#"{"RoleArn":"#));
    let lines = audit_lines(&w);
    assert!(lines[0].contains(" 200 127.0.0.1:"), "{lines:?}");
    // A raw request with an unclean path (reqwest would clean it itself).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET //v2//credentials/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 301"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: /v2/credentials/x"),
        "{text}"
    );
    cancel.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A container of an awsvpc task: no Docker network of its own (it shares the pause's
/// namespace), its port on the ENI with host port = container port.
fn awsvpc_container(ipv6: bool) -> ContainerFacts {
    let mut c = container(ENDPOINT, "web", Some("3c1de9"));
    c.networks = Vec::new();
    c.ports = vec![NetworkBinding {
        bind_ip: "10.0.17.23".into(),
        container_port: Some(8080),
        host_port: Some(8080),
        protocol: "tcp".into(),
        container_port_range: None,
        host_port_range: None,
    }];
    c.awsvpc = Some(Arc::new(AwsvpcFacts {
        ipv4: vec!["10.0.17.23".into(), "10.0.17.24".into()],
        ipv6: if ipv6 {
            vec!["2600:1f18:4a3b:7d00::17".into()]
        } else {
            Vec::new()
        },
        mac: "0a:1b:2c:3d:4e:5f".into(),
        ipv4_subnet_cidr: Some("10.0.16.0/20".into()),
        ipv6_subnet_cidr: ipv6.then(|| "2600:1f18:4a3b:7d00::/64".into()),
        dns_servers: vec!["10.0.0.2".into()],
        dns_search: vec!["ec2.internal".into()],
        private_dns_name: Some("ip-10-0-17-23.ec2.internal".into()),
        subnet_gateway_ipv4: Some("10.0.16.1/20".into()),
    }));
    c
}

/// Keys of the first `Networks` item, in order (read from the text: a `Value` sorts them).
fn network_keys(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    let at = text.find(r#""Networks":["#).expect("a Networks key") + r#""Networks":["#.len();
    keys_in_order(&text[at..])
}

#[test]
fn awsvpc_networks_in_v4_carry_the_enis_properties_in_upstreams_order() {
    let c = awsvpc_container(true);
    let body = metadata::container_body(&c, true);
    let text = String::from_utf8(body.clone()).unwrap();
    assert_eq!(
        network_keys(&body),
        [
            "NetworkMode",
            "IPv4Addresses",
            "IPv6Addresses",
            "AttachmentIndex",
            "MACAddress",
            "IPv4SubnetCIDRBlock",
            "IPv6SubnetCIDRBlock",
            "DomainNameServers",
            "DomainNameSearchList",
            "PrivateDNSName",
            "SubnetGatewayIpv4Address"
        ],
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["Networks"],
        serde_json::json!([{
            "NetworkMode": "awsvpc",
            "IPv4Addresses": ["10.0.17.23", "10.0.17.24"],
            "IPv6Addresses": ["2600:1f18:4a3b:7d00::17"],
            "AttachmentIndex": 0,
            "MACAddress": "0a:1b:2c:3d:4e:5f",
            "IPv4SubnetCIDRBlock": "10.0.16.0/20",
            "IPv6SubnetCIDRBlock": "2600:1f18:4a3b:7d00::/64",
            "DomainNameServers": ["10.0.0.2"],
            "DomainNameSearchList": ["ec2.internal"],
            "PrivateDNSName": "ip-10-0-17-23.ec2.internal",
            "SubnetGatewayIpv4Address": "10.0.16.1/20"
        }])
    );
    assert!(
        text.contains(
            r#""Ports":[{"ContainerPort":8080,"Protocol":"tcp","HostPort":8080,"HostIp":"10.0.17.23"}]"#
        ),
        "{text}"
    );

    // Without IPv6, its two keys are left out (Go's omitempty), nothing else moves.
    let c = awsvpc_container(false);
    let keys = network_keys(&metadata::container_body(&c, true));
    assert!(!keys.iter().any(|k| k.starts_with("IPv6")), "{keys:?}");
    assert_eq!(keys.len(), 9, "{keys:?}");
}

#[test]
fn awsvpc_networks_in_v3_are_the_addresses_only() {
    for ipv6 in [true, false] {
        let c = awsvpc_container(ipv6);
        let body = metadata::container_body(&c, false);
        let text = String::from_utf8(body.clone()).unwrap();
        let want: &[&str] = if ipv6 {
            &["NetworkMode", "IPv4Addresses", "IPv6Addresses"]
        } else {
            &["NetworkMode", "IPv4Addresses"]
        };
        assert_eq!(network_keys(&body), want, "{text}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Networks"][0]["NetworkMode"], "awsvpc");
        assert_eq!(
            v["Networks"][0]["IPv4Addresses"],
            serde_json::json!(["10.0.17.23", "10.0.17.24"])
        );
        // v3 has no HostIp; the host port is the container port.
        assert!(
            text.contains(r#""Ports":[{"ContainerPort":8080,"Protocol":"tcp","HostPort":8080}]"#),
            "{text}"
        );
    }
}

#[test]
fn bridge_and_host_networks_are_unchanged_by_awsvpc() {
    let mut c = container(ENDPOINT, "web", Some("3c1de9"));
    c.networks.push(ContainerNetwork {
        name: "host".into(),
        ipv4: String::new(),
        ipv6: String::new(),
    });
    for v4 in [true, false] {
        let text = String::from_utf8(metadata::container_body(&c, v4)).unwrap();
        assert!(
            text.contains(
                r#""Networks":[{"NetworkMode":"bridge","IPv4Addresses":["172.17.0.3"]},{"NetworkMode":"host","IPv4Addresses":[""]}]"#
            ),
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_awsvpc_task_object_lists_each_container_with_the_eni() {
    let mut idx = index();
    idx.tasks[0].containers[0] = awsvpc_container(false);
    let mut later = awsvpc_container(false);
    later.endpoint_id = "22222222-2222-4333-8444-555555555555".into();
    later.name = "side".into();
    later.docker_id = Some("4d2ef0".into());
    later.ports = Vec::new();
    idx.tasks[0].containers[1] = later;
    let mut w = world(40, 60);
    w.state.tasks = Arc::new(Arc::new(MetadataIndex::new(idx.tasks)));
    let g = get(&w.state, &format!("/v4/{ENDPOINT}/task"), PEER).await;
    assert_eq!(g.status, 200);
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    let containers = v["Containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{}", g.body);
    for c in containers {
        assert_eq!(c["Networks"][0]["MACAddress"], "0a:1b:2c:3d:4e:5f", "{c}");
        assert_eq!(c["Networks"][0]["IPv4Addresses"][0], "10.0.17.23");
    }
    let g = get(&w.state, "/v3/22222222-2222-4333-8444-555555555555", PEER).await;
    assert_eq!(g.status, 200);
    let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(
        v["Networks"],
        serde_json::json!([{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.17.23", "10.0.17.24"]}])
    );
    assert!(v.get("Ports").is_none(), "{}", g.body);
}
