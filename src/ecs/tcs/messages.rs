//! TCS frames (tcs.md §2, §3, §5): the outbound requests, their paging within the model's limits
//! (10 tasks and 1 MiB a request), the signed text frame each is sent as, and the inbound
//! envelope.
//!
//! Pure: no I/O, no clock (times are passed in).

use std::time::SystemTime;

use serde::{Deserialize, Serialize, Serializer};

use crate::ecs::ws::{self, ConnectError};

/// Most tasks in one request (model `TaskMetrics`/`TaskHealth` max 10).
pub const MAX_TASKS: usize = 10;
/// Most bytes of one request's `message` object.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Epoch milliseconds sent as epoch seconds with millisecond precision, a JSON number in its
/// shortest form (`1782907200.123`, `1782907200` when the milliseconds are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// A wall-clock time.
    pub fn of(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_i64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// `metadata` of a metrics request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsMetadata {
    /// Configured cluster.
    pub cluster: String,
    /// Container instance ARN.
    pub container_instance: String,
    /// No task metrics in this collection.
    pub idle: bool,
    /// Shared by every frame of one collection.
    pub message_id: String,
    /// The last frame of the collection.
    pub fin: bool,
}

/// One container's stats sets, as the collector renders them (`cpuStatsSet`, `memoryStatsSet`,
/// and when present `networkStatsSet`, `storageStatsSet`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMetric {
    /// Name in the task definition.
    pub container_name: String,
    /// The stats sets.
    #[serde(flatten)]
    pub sets: serde_json::Map<String, serde_json::Value>,
}

/// One task's metrics.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskMetric {
    /// Task ARN.
    pub task_arn: String,
    /// Family.
    pub task_definition_family: String,
    /// Revision.
    pub task_definition_version: String,
    /// Its containers that produced metrics.
    pub container_metrics: Vec<ContainerMetric>,
}

/// `PublishMetricsRequest.message`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishMetrics {
    /// Who and which collection.
    pub metadata: MetricsMetadata,
    /// Absent on an idle frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_metrics: Option<Vec<TaskMetric>>,
    /// Collection time.
    pub timestamp: Timestamp,
}

/// `metadata` of a health request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthMetadata {
    /// Configured cluster.
    pub cluster: String,
    /// Container instance ARN.
    pub container_instance: String,
    /// Shared by every frame of one collection.
    pub message_id: String,
    /// The last frame of the collection.
    pub fin: bool,
}

/// One container's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerHealth {
    /// Name in the task definition.
    pub container_name: String,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN`.
    pub health_status: String,
    /// Time of the last change (or now when there was none yet).
    pub status_since: Timestamp,
}

/// One task's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskHealth {
    /// Task ARN.
    pub task_arn: String,
    /// Family.
    pub task_definition_family: String,
    /// Revision.
    pub task_definition_version: String,
    /// Its health-checked containers.
    pub containers: Vec<ContainerHealth>,
}

/// `PublishHealthRequest.message`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishHealth {
    /// Who and which collection.
    pub metadata: HealthMetadata,
    /// Up to [`MAX_TASKS`].
    pub tasks: Vec<TaskHealth>,
    /// Collection time.
    pub timestamp: Timestamp,
}

/// `metadata` of an instance status request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusMetadata {
    /// Configured cluster.
    pub cluster: String,
    /// Container instance ARN.
    pub container_instance: String,
    /// A new UUID per request.
    pub request_id: String,
}

/// One instance health check result.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `ContainerRuntime`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `OK`, `IMPAIRED`, `INSUFFICIENT_DATA` or `INITIALIZING`.
    pub status: String,
    /// When it was last checked.
    pub last_updated: Timestamp,
    /// When the status last changed.
    pub last_status_change: Timestamp,
}

/// `PublishInstanceStatusRequest.message`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishInstanceStatus {
    /// Who.
    pub metadata: InstanceStatusMetadata,
    /// The results.
    pub statuses: Vec<InstanceStatus>,
    /// Send time.
    pub timestamp: Timestamp,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a T,
}

/// The envelope JSON of a request.
pub fn envelope<T: Serialize>(kind: &str, message: &T) -> String {
    serde_json::to_string(&Envelope { kind, message }).unwrap_or_default()
}

/// One collection's metrics as request envelopes: none when there are tasks but no task
/// produced metrics (tcs.md §6.3), one idle frame when there are no tasks at all, else pages of
/// at most [`MAX_TASKS`] tasks and [`MAX_MESSAGE_BYTES`], sharing `message_id`, `fin` only on the
/// last. A single task larger than the limit goes alone (the server refuses it, the others are
/// not held back).
pub fn metrics_frames(
    cluster: &str,
    instance: &str,
    message_id: &str,
    tracked: bool,
    tasks: Vec<TaskMetric>,
    at: Timestamp,
) -> Vec<String> {
    let metadata = |idle: bool, fin: bool| MetricsMetadata {
        cluster: cluster.to_owned(),
        container_instance: instance.to_owned(),
        idle,
        message_id: message_id.to_owned(),
        fin,
    };
    if tasks.is_empty() {
        if tracked {
            return Vec::new();
        }
        let idle = PublishMetrics {
            metadata: metadata(true, true),
            task_metrics: None,
            timestamp: at,
        };
        return vec![envelope("PublishMetricsRequest", &idle)];
    }
    // The message's size without tasks, with an empty list.
    let base = serde_json::to_string(&PublishMetrics {
        metadata: metadata(false, false),
        task_metrics: Some(Vec::new()),
        timestamp: at,
    })
    .map(|s| s.len())
    .unwrap_or(0);
    let mut pages: Vec<Vec<TaskMetric>> = Vec::new();
    let mut page: Vec<TaskMetric> = Vec::new();
    let mut size = base;
    for task in tasks {
        let len = serde_json::to_string(&task).map(|s| s.len()).unwrap_or(0);
        let comma = usize::from(!page.is_empty());
        if !page.is_empty() && size + comma + len > MAX_MESSAGE_BYTES {
            pages.push(std::mem::take(&mut page));
            size = base;
        }
        size += usize::from(!page.is_empty()) + len;
        page.push(task);
        if page.len() == MAX_TASKS {
            pages.push(std::mem::take(&mut page));
            size = base;
        }
    }
    if !page.is_empty() {
        pages.push(page);
    }
    let last = pages.len().saturating_sub(1);
    pages
        .into_iter()
        .enumerate()
        .map(|(i, page)| {
            envelope(
                "PublishMetricsRequest",
                &PublishMetrics {
                    metadata: metadata(false, i == last),
                    task_metrics: Some(page),
                    timestamp: at,
                },
            )
        })
        .collect()
}

/// One health collection as request envelopes: nothing when no container is health-checked,
/// else pages of [`MAX_TASKS`] tasks, `fin` on the last.
pub fn health_frames(
    cluster: &str,
    instance: &str,
    message_id: &str,
    tasks: Vec<TaskHealth>,
    at: Timestamp,
) -> Vec<String> {
    let pages: Vec<Vec<TaskHealth>> = tasks.chunks(MAX_TASKS).map(<[_]>::to_vec).collect();
    let last = pages.len().saturating_sub(1);
    pages
        .into_iter()
        .enumerate()
        .map(|(i, tasks)| {
            envelope(
                "PublishHealthRequest",
                &PublishHealth {
                    metadata: HealthMetadata {
                        cluster: cluster.to_owned(),
                        container_instance: instance.to_owned(),
                        message_id: message_id.to_owned(),
                        fin: i == last,
                    },
                    tasks,
                    timestamp: at,
                },
            )
        })
        .collect()
}

/// The text frame for a request envelope (tcs.md §2.2): the SigV4 headers of a GET of `url`
/// with the envelope as its body, plus `Host`, sorted by name, each `Name: value\r\n`, a blank
/// line, then the envelope.
pub fn signed_frame(
    url: &str,
    payload: &str,
    region: &str,
    credentials: &aws_credential_types::Credentials,
    time: SystemTime,
) -> Result<String, ConnectError> {
    let mut headers: Vec<(String, String)> =
        ws::signed_headers(url, payload.as_bytes(), region, credentials, time)?
            .into_iter()
            .map(|(n, v)| (canonical_name(n), v))
            .collect();
    headers.push(("Host".to_owned(), host_of(url)));
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut frame = String::with_capacity(payload.len() + 512);
    for (name, value) in headers {
        frame.push_str(&name);
        frame.push_str(": ");
        frame.push_str(&value);
        frame.push_str("\r\n");
    }
    frame.push_str("\r\n");
    frame.push_str(payload);
    Ok(frame)
}

/// `x-amz-date` → `X-Amz-Date` (Go's canonical header form).
fn canonical_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => {
                    first.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
                }
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The authority of a URL (host and any port).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split(['/', '?', '#']).next().unwrap_or("").to_owned()
}

/// An inbound frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// `HeartbeatMessage`.
    Heartbeat,
    /// `AckPublishMetric`, `AckPublishHealth`, `AckPublishInstanceStatus`.
    Ack(String),
    /// `StopTelemetrySessionMessage`.
    Stop(String),
    /// An exception, with its text.
    Exception {
        /// Its type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// Anything else (it still counts as activity).
    Other(String),
}

#[derive(Deserialize)]
struct InboundEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: serde_json::Value,
}

/// Parses an inbound text frame; `None` when it is not a `{type, message}` envelope.
pub fn parse_inbound(text: &str) -> Option<Inbound> {
    let env: InboundEnvelope = serde_json::from_str(text).ok()?;
    let message = || {
        env.message
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned()
    };
    Some(match env.kind.as_str() {
        "HeartbeatMessage" => Inbound::Heartbeat,
        "AckPublishMetric" | "AckPublishHealth" | "AckPublishInstanceStatus" => {
            Inbound::Ack(env.kind.clone())
        }
        "StopTelemetrySessionMessage" => Inbound::Stop(message()),
        k if k.ends_with("Exception") => Inbound::Exception {
            kind: k.to_owned(),
            message: message(),
        },
        other => Inbound::Other(other.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    fn task(i: usize, pad: usize) -> TaskMetric {
        let mut sets = serde_json::Map::new();
        sets.insert(
            "cpuStatsSet".into(),
            json!({"max": 1.5, "min": 0.5, "sampleCount": 4, "sum": 4.0}),
        );
        sets.insert("pad".into(), json!("x".repeat(pad)));
        TaskMetric {
            task_arn: format!("arn:aws:ecs:us-east-1:1:task/c/{i}"),
            task_definition_family: "web".into(),
            task_definition_version: "3".into(),
            container_metrics: vec![ContainerMetric {
                container_name: "app".into(),
                sets,
            }],
        }
    }

    fn parse(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect()
    }

    #[test]
    fn timestamps_are_seconds_with_milliseconds() {
        assert_eq!(
            serde_json::to_string(&Timestamp(1_782_907_200_123)).unwrap(),
            "1782907200.123"
        );
        assert_eq!(
            serde_json::to_string(&Timestamp(1_782_907_200_000)).unwrap(),
            "1782907200"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_782_907_200_456);
        assert_eq!(Timestamp::of(t), Timestamp(1_782_907_200_456));
    }

    #[test]
    fn an_idle_instance_sends_one_idle_frame_and_a_silent_collection_none() {
        let frames = metrics_frames("prod", "arn:ci", "m1", false, vec![], Timestamp(5000));
        assert_eq!(
            parse(&frames),
            vec![json!({"type": "PublishMetricsRequest", "message": {
                "metadata": {"cluster": "prod", "containerInstance": "arn:ci", "idle": true,
                    "messageId": "m1", "fin": true},
                "timestamp": 5}})]
        );
        assert!(metrics_frames("prod", "arn:ci", "m1", true, vec![], Timestamp(5000)).is_empty());
    }

    #[test]
    fn pages_of_ten_share_the_message_id_and_only_the_last_is_fin() {
        let tasks = (0..23).map(|i| task(i, 0)).collect();
        let frames = parse(&metrics_frames("c", "i", "m", true, tasks, Timestamp(1)));
        let counts: Vec<usize> = frames
            .iter()
            .map(|f| f["message"]["taskMetrics"].as_array().unwrap().len())
            .collect();
        assert_eq!(counts, [10, 10, 3]);
        let fins: Vec<bool> = frames
            .iter()
            .map(|f| f["message"]["metadata"]["fin"].as_bool().unwrap())
            .collect();
        assert_eq!(fins, [false, false, true]);
        assert!(
            frames
                .iter()
                .all(|f| f["message"]["metadata"]["messageId"] == "m")
        );
        assert!(
            frames
                .iter()
                .all(|f| f["message"]["metadata"]["idle"] == false)
        );
        let first = &frames[0]["message"]["taskMetrics"][0];
        assert_eq!(first["taskDefinitionFamily"], "web");
        assert_eq!(first["containerMetrics"][0]["containerName"], "app");
        assert_eq!(
            first["containerMetrics"][0]["cpuStatsSet"]["sampleCount"],
            4
        );
    }

    #[test]
    fn pages_stay_under_one_mebibyte() {
        // Each task is about 300 KiB: three fit, the fourth starts a new page.
        let tasks: Vec<TaskMetric> = (0..7).map(|i| task(i, 300 * 1024)).collect();
        let frames = metrics_frames("c", "i", "m", true, tasks, Timestamp(1));
        let parsed = parse(&frames);
        let counts: Vec<usize> = parsed
            .iter()
            .map(|f| f["message"]["taskMetrics"].as_array().unwrap().len())
            .collect();
        assert_eq!(counts, [3, 3, 1]);
        for f in &parsed {
            let message = serde_json::to_string(&f["message"]).unwrap();
            assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        }
        // A task too big for any page still goes, alone.
        let frames = metrics_frames(
            "c",
            "i",
            "m",
            true,
            vec![task(0, 10), task(1, 2 << 20)],
            Timestamp(1),
        );
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn health_pages() {
        let t = |i: usize| TaskHealth {
            task_arn: format!("t{i}"),
            task_definition_family: "f".into(),
            task_definition_version: "1".into(),
            containers: vec![ContainerHealth {
                container_name: "c".into(),
                health_status: "HEALTHY".into(),
                status_since: Timestamp(1500),
            }],
        };
        assert!(health_frames("c", "i", "m", vec![], Timestamp(1)).is_empty());
        let frames = parse(&health_frames(
            "c",
            "i",
            "m",
            (0..11).map(t).collect(),
            Timestamp(2000),
        ));
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0]["type"], "PublishHealthRequest");
        assert_eq!(frames[0]["message"]["metadata"]["fin"], false);
        assert_eq!(frames[1]["message"]["metadata"]["fin"], true);
        assert_eq!(
            frames[1]["message"]["tasks"][0],
            json!({"taskArn": "t10", "taskDefinitionFamily": "f", "taskDefinitionVersion": "1",
                "containers": [{"containerName": "c", "healthStatus": "HEALTHY", "statusSince": 1.5}]})
        );
    }

    #[test]
    fn frames_carry_sorted_signed_headers_then_the_payload() {
        let creds = aws_credential_types::Credentials::new(
            "AKIDTEST",
            "secret",
            Some("tok".into()),
            None,
            "t",
        );
        let url = "wss://ecs-t-1.us-east-1.amazonaws.com/ws?cluster=c";
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let payload = r#"{"type":"PublishMetricsRequest","message":{}}"#;
        let frame = signed_frame(url, payload, "us-east-1", &creds, at).unwrap();
        let (head, body) = frame.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, payload);
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
        assert!(head.contains("Host: ecs-t-1.us-east-1.amazonaws.com\r\n"));
        assert!(head.contains("Credential=AKIDTEST/20231114/us-east-1/ecs/aws4_request"));
        // The payload is signed: another payload, another signature.
        let other = signed_frame(url, "{}", "us-east-1", &creds, at).unwrap();
        assert_ne!(other.split("\r\n").next(), frame.split("\r\n").next());
        let no_token = aws_credential_types::Credentials::new("AKID", "s", None, None, "t");
        let frame = signed_frame(url, payload, "us-east-1", &no_token, at).unwrap();
        assert!(!frame.contains("X-Amz-Security-Token"));
    }

    #[test]
    fn inbound_frames() {
        assert_eq!(
            parse_inbound(r#"{"type":"HeartbeatMessage","message":{"healthy":true}}"#),
            Some(Inbound::Heartbeat)
        );
        assert_eq!(
            parse_inbound(r#"{"type":"AckPublishHealth","message":{}}"#),
            Some(Inbound::Ack("AckPublishHealth".into()))
        );
        assert_eq!(
            parse_inbound(r#"{"type":"BadRequestException","message":{"message":"too old"}}"#),
            Some(Inbound::Exception {
                kind: "BadRequestException".into(),
                message: "too old".into()
            })
        );
        assert_eq!(
            parse_inbound(r#"{"type":"StopTelemetrySessionMessage","message":{"message":"bye"}}"#),
            Some(Inbound::Stop("bye".into()))
        );
        assert_eq!(parse_inbound("not json"), None);
        assert_eq!(
            parse_inbound(r#"{"type":"Novel"}"#),
            Some(Inbound::Other("Novel".into()))
        );
    }
}
