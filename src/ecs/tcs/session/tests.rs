//! The session against an in-process websocket server: frames, signatures, acks, liveness,
//! refusals and the queue while disconnected.

use std::sync::atomic::AtomicBool;

use async_trait::async_trait;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use super::*;
use crate::ecs::{ApiError, PollEndpoints, RegisterRequest, RegisteredInstance};

struct FakeEcs {
    telemetry: String,
}

#[async_trait]
impl EcsApi for FakeEcs {
    async fn register_container_instance(
        &self,
        _: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError> {
        unreachable!()
    }
    async fn create_cluster(&self, _: &str) -> Result<(), ApiError> {
        unreachable!()
    }
    async fn cluster_status(&self, _: &str) -> Result<Option<String>, ApiError> {
        unreachable!()
    }
    async fn discover_poll_endpoint(&self, _: &str, _: &str) -> Result<PollEndpoints, ApiError> {
        Ok(PollEndpoints {
            acs: "http://acs.invalid".into(),
            telemetry: Some(self.telemetry.clone()),
        })
    }
}

#[derive(Default)]
struct FakeSource {
    tasks: Mutex<Vec<TaskView>>,
    runtime_ok: Mutex<Option<bool>>,
    marked: AtomicU64,
    /// Docker ids whose sets fail.
    failing: Mutex<Vec<String>>,
}

impl Source for FakeSource {
    fn tasks(&self) -> Vec<TaskView> {
        self.tasks.lock().unwrap().clone()
    }
    fn sets(
        &self,
        docker_id: &str,
        network: bool,
    ) -> Result<serde_json::Map<String, Value>, String> {
        if self.failing.lock().unwrap().iter().any(|f| f == docker_id) {
            return Err("fewer than two samples".into());
        }
        let mut m = serde_json::Map::new();
        m.insert(
            "cpuStatsSet".into(),
            json!({"max": 50.0, "min": 50.0, "sampleCount": 4, "sum": 200.0}),
        );
        m.insert(
            "memoryStatsSet".into(),
            json!({"max": 64, "min": 64, "sampleCount": 4, "sum": 256}),
        );
        if network {
            m.insert("networkStatsSet".into(), json!({}));
        }
        Ok(m)
    }
    fn mark_sent(&self) {
        self.marked.fetch_add(1, Ordering::SeqCst);
    }
    fn runtime_ok(&self) -> Option<bool> {
        *self.runtime_ok.lock().unwrap()
    }
}

fn web_task() -> TaskView {
    TaskView {
        arn: "arn:aws:ecs:us-east-1:1:task/prod/t1".into(),
        family: "web".into(),
        revision: "3".into(),
        containers: vec![
            ContainerView {
                name: "app".into(),
                docker_id: "d1".into(),
                network: true,
                started_at: Some(SystemTime::now()),
                health: Some(("UNHEALTHY".into(), Some(1_782_907_180_500))),
            },
            ContainerView {
                name: "sidecar".into(),
                docker_id: "d2".into(),
                network: false,
                started_at: Some(SystemTime::now()),
                health: None,
            },
        ],
    }
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// Upgrade request: path and query, and whether it carried a SigV4 Authorization.
    upgrades: Mutex<Vec<(String, bool)>>,
    /// Inbound frames: (header block, envelope).
    frames: Mutex<Vec<(String, Value)>>,
    /// Close frames received: (code, reason).
    closes: Mutex<Vec<(u16, String)>>,
}

impl Seen {
    fn frames_of(&self, kind: &str) -> Vec<Value> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["type"] == kind)
            .map(|(_, v)| v["message"].clone())
            .collect()
    }
}

struct Server {
    url: String,
    seen: Arc<Seen>,
    /// Refuse upgrades with 403 while set.
    refuse: Arc<AtomicBool>,
    /// Ack requests while set.
    ack: Arc<AtomicBool>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let refuse = Arc::new(AtomicBool::new(false));
    let ack = Arc::new(AtomicBool::new(true));
    let (s, r, a) = (seen.clone(), refuse.clone(), ack.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, refuse, ack) = (s.clone(), r.clone(), a.clone());
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let callback = |req: &Request, resp: Response| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("/ecs/aws4_request"));
                    seen.upgrades
                        .lock()
                        .unwrap()
                        .push((req.uri().to_string(), auth));
                    if refuse.load(Ordering::SeqCst) {
                        let mut e = ErrorResponse::new(Some(
                            r#"{"AccessDeniedException":"no StartTelemetrySession"}"#.into(),
                        ));
                        *e.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
                        return Err(e);
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) => {
                            let (head, body) = t.as_str().split_once("\r\n\r\n").unwrap();
                            let v: Value = serde_json::from_str(body).unwrap();
                            let reply = match v["type"].as_str().unwrap() {
                                "PublishMetricsRequest" => "AckPublishMetric",
                                "PublishHealthRequest" => "AckPublishHealth",
                                _ => "AckPublishInstanceStatus",
                            };
                            seen.frames.lock().unwrap().push((head.to_owned(), v));
                            if ack.load(Ordering::SeqCst) {
                                let text = json!({"type": reply, "message": {"message": "ok"}});
                                let _ = ws.send(Message::text(text.to_string())).await;
                            }
                        }
                        Message::Close(Some(f)) => {
                            seen.closes
                                .lock()
                                .unwrap()
                                .push((u16::from(f.code), f.reason.as_str().to_owned()));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    Server {
        url,
        seen,
        refuse,
        ack,
    }
}

fn timing() -> Timing {
    Timing {
        publish_interval: Duration::from_millis(300),
        liveness: Duration::from_millis(1500),
        liveness_jitter: Duration::ZERO,
        read_deadline: Duration::from_secs(5),
        max_age: Duration::from_secs(60),
        max_age_jitter: Duration::ZERO,
        reconnect: Policy::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            2.0,
            0.0,
        ),
        connect_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        queue: 3,
        queue_wait: Duration::from_millis(50),
    }
}

fn session(url: &str, source: Arc<FakeSource>, metrics: bool) -> Arc<TcsSession> {
    Arc::new(TcsSession::new(TcsParts {
        config: TcsConfig {
            cluster: "prod".into(),
            container_instance_arn: "arn:aws:ecs:us-east-1:1:container-instance/prod/ci".into(),
            region: "us-east-1".into(),
            agent_version: "1.101.2".into(),
            agent_hash: "abc".into(),
            docker_version: Some("20.10.24".into()),
            metrics,
            health: true,
            timing: timing(),
        },
        ecs: Arc::new(FakeEcs {
            telemetry: url.to_owned(),
        }),
        discovery: Arc::new(Discovery::default()),
        credentials_provider: SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                "AKIDTCS",
                "secret",
                Some("tok".into()),
                None,
                "t",
            ),
        ),
        source,
    }))
}

fn spawn(s: &Arc<TcsSession>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (s, c) = (s.clone(), cancel.clone());
        async move {
            let _ = s.run(c).await;
        }
    });
    (cancel, task)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn collections_go_out_as_signed_frames_with_metrics_health_and_status() {
    let srv = server().await;
    let source = Arc::new(FakeSource::default());
    source.tasks.lock().unwrap().push(web_task());
    *source.runtime_ok.lock().unwrap() = Some(true);
    let s = session(&srv.url, source.clone(), true);
    let (cancel, task) = spawn(&s);
    until("two metrics frames", || {
        srv.seen.frames_of("PublishMetricsRequest").len() >= 2
    })
    .await;
    cancel.cancel();
    task.await.unwrap();

    let upgrades = srv.seen.upgrades.lock().unwrap().clone();
    assert_eq!(
        upgrades[0],
        (
            "/ws?agentHash=abc&agentVersion=1.101.2&cluster=prod&containerInstance=arn%3Aaws%3Aecs%3Aus-east-1%3A1%3Acontainer-instance%2Fprod%2Fci&dockerVersion=20.10.24".to_owned(),
            true
        )
    );
    // Every frame is signed: sorted headers, then the envelope.
    for (head, _) in srv.seen.frames.lock().unwrap().iter() {
        let names: Vec<&str> = head
            .split("\r\n")
            .map(|l| l.split_once(": ").unwrap().0)
            .collect();
        assert_eq!(
            names,
            [
                "Authorization",
                "Host",
                "X-Amz-Date",
                "X-Amz-Security-Token"
            ]
        );
        assert!(head.contains("Credential=AKIDTCS/"), "{head}");
    }
    let metrics = srv.seen.frames_of("PublishMetricsRequest");
    let m = &metrics[0];
    assert_eq!(m["metadata"]["idle"], false);
    assert_eq!(m["metadata"]["fin"], true);
    assert_eq!(m["metadata"]["cluster"], "prod");
    let t = &m["taskMetrics"][0];
    assert_eq!(t["taskArn"], "arn:aws:ecs:us-east-1:1:task/prod/t1");
    assert_eq!(t["taskDefinitionVersion"], "3");
    let c = t["containerMetrics"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert!(c[0].get("networkStatsSet").is_some(), "bridge container");
    assert!(c[1].get("networkStatsSet").is_none());
    assert_eq!(c[0]["cpuStatsSet"]["sum"], 200.0);
    assert!(metrics[0]["metadata"]["messageId"] != metrics[1]["metadata"]["messageId"]);
    assert!(
        source.marked.load(Ordering::SeqCst) >= 2,
        "samples marked sent per collection"
    );

    let health = srv.seen.frames_of("PublishHealthRequest");
    assert_eq!(
        health[0]["tasks"],
        json!([{"taskArn": "arn:aws:ecs:us-east-1:1:task/prod/t1", "taskDefinitionFamily": "web",
            "taskDefinitionVersion": "3",
            "containers": [{"containerName": "app", "healthStatus": "UNHEALTHY", "statusSince": 1782907180.5}]}])
    );
    // The instance status went once (it did not change).
    let status = srv.seen.frames_of("PublishInstanceStatusRequest");
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["statuses"][0]["type"], "ContainerRuntime");
    assert_eq!(status[0]["statuses"][0]["status"], "OK");
    assert_eq!(s.counters().connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_instance_and_disabled_metrics_send_idle_frames() {
    let srv = server().await;
    let source = Arc::new(FakeSource::default());
    let s = session(&srv.url, source.clone(), true);
    let (cancel, task) = spawn(&s);
    until("a metrics frame", || {
        !srv.seen.frames_of("PublishMetricsRequest").is_empty()
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let m = &srv.seen.frames_of("PublishMetricsRequest")[0];
    assert_eq!(m["metadata"]["idle"], true);
    assert!(m.get("taskMetrics").is_none());
    assert!(srv.seen.frames_of("PublishHealthRequest").is_empty());
    assert_eq!(
        srv.seen.frames_of("PublishInstanceStatusRequest")[0]["statuses"][0]["status"],
        "INITIALIZING"
    );

    // ECS_DISABLE_METRICS: a running task, and still idle frames (health still goes).
    let srv = server().await;
    let source = Arc::new(FakeSource::default());
    source.tasks.lock().unwrap().push(web_task());
    let s = session(&srv.url, source.clone(), false);
    let (cancel, task) = spawn(&s);
    until("two metrics frames", || {
        srv.seen.frames_of("PublishMetricsRequest").len() >= 2
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    assert!(
        srv.seen
            .frames_of("PublishMetricsRequest")
            .iter()
            .all(|m| m["metadata"]["idle"] == true && m.get("taskMetrics").is_none())
    );
    assert_eq!(source.marked.load(Ordering::SeqCst), 0);
    assert!(!srv.seen.frames_of("PublishHealthRequest").is_empty());
}

#[tokio::test]
async fn a_task_whose_containers_have_no_metrics_yet_sends_nothing() {
    let srv = server().await;
    let source = Arc::new(FakeSource::default());
    let mut t = web_task();
    for c in &mut t.containers {
        c.health = None;
    }
    source.tasks.lock().unwrap().push(t);
    *source.failing.lock().unwrap() = vec!["d1".into(), "d2".into()];
    let s = session(&srv.url, source.clone(), true);
    let (cancel, task) = spawn(&s);
    until("the status frame", || {
        !srv.seen
            .frames_of("PublishInstanceStatusRequest")
            .is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        srv.seen.frames_of("PublishMetricsRequest").is_empty(),
        "tracked tasks without metrics: no frame, not an idle one"
    );
    // One container recovers: only it is reported.
    source.failing.lock().unwrap().retain(|d| d != "d1");
    until("a metrics frame", || {
        !srv.seen.frames_of("PublishMetricsRequest").is_empty()
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let m = &srv.seen.frames_of("PublishMetricsRequest")[0];
    let names: Vec<&str> = m["taskMetrics"][0]["containerMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["containerName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"]);
}

#[tokio::test]
async fn silence_closes_the_connection_and_a_new_one_replaces_it() {
    let srv = server().await;
    srv.ack.store(false, Ordering::SeqCst);
    let s = session(&srv.url, Arc::new(FakeSource::default()), true);
    let (cancel, task) = spawn(&s);
    until("a second connection", || {
        srv.seen.upgrades.lock().unwrap().len() >= 2
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let closes = srv.seen.closes.lock().unwrap().clone();
    assert_eq!(closes[0], (1000, EXPIRED_REASON.to_owned()));
}

#[tokio::test]
async fn refused_upgrades_back_off_and_queued_collections_wait_within_the_bound() {
    let srv = server().await;
    srv.refuse.store(true, Ordering::SeqCst);
    let source = Arc::new(FakeSource::default());
    source.tasks.lock().unwrap().push(web_task());
    let s = session(&srv.url, source.clone(), true);
    let (cancel, task) = spawn(&s);
    // Refused for 2.5 s: about eight collections are made, three fit in the queue.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = srv.seen.upgrades.lock().unwrap().len();
    // Backoff 100, 200, 400, 400… ms: about seven attempts in 2.5 s, not a tight loop.
    assert!((3..=10).contains(&refused), "{refused} attempts");
    assert!(srv.seen.frames.lock().unwrap().is_empty());
    let counters = s.counters();
    assert!(counters.dropped.load(Ordering::SeqCst) >= 3, "{counters:?}");
    srv.refuse.store(false, Ordering::SeqCst);
    until("the queued collections", || {
        srv.seen.frames_of("PublishMetricsRequest").len() >= 3
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    // The queued collections were sent in the order they were made.
    let stamps: Vec<f64> = srv
        .seen
        .frames_of("PublishMetricsRequest")
        .iter()
        .map(|m| m["timestamp"].as_f64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(counters.attempts.load(Ordering::SeqCst) as usize > refused);
}
