//! The CloudWatch seam: [`MetricsPublisher`] (one PutMetricData call per namespace and batch),
//! its real implementation on the newest aws-sdk-cloudwatch (RPCv2 CBOR; request compression on;
//! the SDK's standard retry mode for short blips; 3 s connect and 20 s attempt timeouts, metrics.md
//! §7.3), the classification of failures into the pipeline's four classes, and a recording fake.
//!
//! This module never retries across delivery attempts, never splits batches and never touches
//! the spool: the pipeline owns all of that.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudwatch::error::SdkError;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::datum::{Datum, Value};
use crate::aws::{self, ErrorKind};

/// How the pipeline treats a failed request (metrics.md §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 5xx, timeouts, connection failures, credential hiccups: keep the batch, back off.
    Transient,
    /// Throttling: keep the batch, back off.
    Throttled,
    /// Access denied, bad or expired credentials, a request the SDK cannot build: keep the data,
    /// retry at the backoff cap, log rarely.
    Auth,
    /// The service refused the data: split to save the good datums, drop the bad ones.
    Invalid,
}

impl ErrorClass {
    /// Stable lower-case name (Prometheus label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Auth => "auth",
            ErrorClass::Invalid => "invalid",
        }
    }
}

/// A failed PutMetricData.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PutMetricData ({}): {}{message}", class.as_str(), code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct PublishError {
    /// What the pipeline does about it.
    pub class: ErrorClass,
    /// The service's error code, when there is one.
    pub code: Option<String>,
    /// Detail, with the cause chain.
    pub message: String,
}

impl PublishError {
    /// A failure of the given class (fakes and tests).
    pub fn new(class: ErrorClass, code: &str, message: &str) -> PublishError {
        PublishError {
            class,
            code: Some(code.to_owned()),
            message: message.to_owned(),
        }
    }

    /// Whether sending the same data again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class != ErrorClass::Invalid
    }
}

/// Codes that mean "who you are" rather than "what you sent".
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "AuthFailure",
    "OptInRequired",
];

/// Classifies an SDK failure of PutMetricData.
pub fn classify<E>(err: SdkError<E, aws_smithy_runtime_api::http::Response>) -> PublishError
where
    E: aws_sdk_cloudwatch::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // A request the SDK could not build is not the data's fault (datums are validated locally):
    // keep it, like an auth or configuration problem.
    let construction = matches!(err, SdkError::ConstructionFailure(_));
    let api = aws::classify("PutMetricData", err);
    let class = match api.kind {
        _ if construction => ErrorClass::Auth,
        ErrorKind::Throttled => ErrorClass::Throttled,
        ErrorKind::Transport | ErrorKind::Server => ErrorClass::Transient,
        ErrorKind::Client if api.code.as_deref().is_some_and(|c| AUTH_CODES.contains(&c)) => {
            ErrorClass::Auth
        }
        ErrorKind::Client => ErrorClass::Invalid,
    };
    PublishError {
        class,
        code: api.code,
        message: api.message,
    }
}

/// Sends datums to CloudWatch.
#[async_trait]
pub trait MetricsPublisher: Send + Sync {
    /// One PutMetricData request: every datum in `namespace`; the caller keeps within the limits.
    async fn put(&self, namespace: &str, datums: &[Datum]) -> Result<(), PublishError>;
}

/// Connect timeout per attempt (metrics.md §7.3).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one attempt (metrics.md §7.3).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The real publisher.
pub struct CloudWatchPublisher {
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatchPublisher {
    /// A client from the shared SDK configuration (region, credentials, `AWS_ENDPOINT_URL*`) with
    /// `attempts` SDK attempts per delivery (3 in production: standard mode, 1 s initial backoff).
    pub fn new(sdk: &aws_config::SdkConfig, attempts: u32) -> CloudWatchPublisher {
        let conf = aws_sdk_cloudwatch::config::Builder::from(sdk)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(attempts.max(1))
                    .with_initial_backoff(Duration::from_secs(1)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(ATTEMPT_TIMEOUT * attempts.max(1) + Duration::from_secs(10))
                    .build(),
            )
            .build();
        CloudWatchPublisher {
            client: aws_sdk_cloudwatch::Client::from_conf(conf),
        }
    }

    /// A publisher over an existing client (tests add interceptors).
    pub fn from_client(client: aws_sdk_cloudwatch::Client) -> CloudWatchPublisher {
        CloudWatchPublisher { client }
    }
}

/// The SDK shape of a datum.
pub fn to_sdk(d: &Datum) -> MetricDatum {
    let mut b = MetricDatum::builder()
        .metric_name(&d.name)
        .unit(StandardUnit::from(d.unit.as_str()))
        .timestamp(DateTime::from_millis(d.timestamp_ms))
        .set_dimensions(Some(
            d.dimensions
                .iter()
                .map(|(n, v)| Dimension::builder().name(n).value(v).build())
                .collect(),
        ));
    b = match &d.value {
        Value::Single(v) => b.value(*v),
        Value::Packed { values, counts } => b
            .set_values(Some(values.clone()))
            .set_counts(Some(counts.clone())),
    };
    if d.high_resolution {
        b = b.storage_resolution(1);
    }
    b.build()
}

#[async_trait]
impl MetricsPublisher for CloudWatchPublisher {
    async fn put(&self, namespace: &str, datums: &[Datum]) -> Result<(), PublishError> {
        self.client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(datums.iter().map(to_sdk).collect()))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// A recording fake: answers from a script (then success), and refuses as
/// `InvalidParameterValue` every request that contains a datum named in `poison`.
#[derive(Default)]
pub struct FakePublisher {
    calls: Mutex<Vec<(String, Vec<Datum>)>>,
    accepted: Mutex<Vec<(String, Datum)>>,
    script: Mutex<VecDeque<Result<(), PublishError>>>,
    poison: Mutex<Vec<String>>,
    down: std::sync::atomic::AtomicBool,
}

impl FakePublisher {
    /// A fake that accepts everything.
    pub fn new() -> FakePublisher {
        FakePublisher::default()
    }

    /// Queues answers for the next calls.
    pub fn script(&self, answers: impl IntoIterator<Item = Result<(), PublishError>>) {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(answers);
    }

    /// Makes every request containing a datum with this metric name fail as invalid.
    pub fn poison(&self, metric_name: &str) {
        self.poison
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(metric_name.to_owned());
    }

    /// While down, every call fails as `ServiceUnavailable` (an outage).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every call: (namespace, datums).
    pub fn calls(&self) -> Vec<(String, Vec<Datum>)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every accepted datum with its namespace, in order.
    pub fn accepted(&self) -> Vec<(String, Datum)> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl MetricsPublisher for FakePublisher {
    async fn put(&self, namespace: &str, datums: &[Datum]) -> Result<(), PublishError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((namespace.to_owned(), datums.to_vec()));
        let poisoned = {
            let p = self.poison.lock().unwrap_or_else(|p| p.into_inner());
            datums.iter().any(|d| p.contains(&d.name))
        };
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PublishError::new(
                ErrorClass::Transient,
                "ServiceUnavailable",
                "Service Unavailable",
            ));
        }
        if poisoned {
            return Err(PublishError::new(
                ErrorClass::Invalid,
                "InvalidParameterValue",
                "The value for parameter MetricData.member.1.Value is invalid.",
            ));
        }
        let answer = self
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(Ok(()));
        if answer.is_ok() {
            self.accepted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(datums.iter().map(|d| (namespace.to_owned(), d.clone())));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue::Unit;

    #[test]
    fn sdk_datum_carries_every_field() {
        let d = Datum::new(
            "disk_used_percent",
            Unit::Percent,
            73.5,
            1_700_000_000_123,
            vec![("path".into(), "/".into())],
            true,
        );
        let m = to_sdk(&d);
        assert_eq!(m.metric_name(), Some("disk_used_percent"));
        assert_eq!(m.unit(), Some(&StandardUnit::Percent));
        assert_eq!(m.value(), Some(73.5));
        assert_eq!(m.storage_resolution(), Some(1));
        assert_eq!(
            m.timestamp().unwrap().to_millis().unwrap(),
            1_700_000_000_123
        );
        assert_eq!(m.dimensions()[0].name(), Some("path"));
        let packed = Datum {
            value: Value::Packed {
                values: vec![1.0, 2.0],
                counts: vec![2.0, 1.0],
            },
            high_resolution: false,
            ..d
        };
        let m = to_sdk(&packed);
        assert_eq!(m.values(), &[1.0, 2.0]);
        assert_eq!(m.counts(), &[2.0, 1.0]);
        assert_eq!(m.value(), None);
        assert_eq!(m.storage_resolution(), None);
        for u in [
            Unit::Bytes,
            Unit::Kilobytes,
            Unit::Megabytes,
            Unit::Gigabytes,
            Unit::Count,
            Unit::None,
        ] {
            assert!(StandardUnit::values().contains(&u.as_str()), "{u:?}");
        }
    }

    /// metrics.md §12 test 6: each failure maps to the class whose action §7.3 prescribes.
    #[test]
    fn sdk_failures_are_classified_as_7_3_says() {
        use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        let service = |status: u16, code: &str| {
            let err = PutMetricDataError::generic(
                ErrorMetadata::builder().code(code).message("m").build(),
            );
            let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
            classify(SdkError::service_error(err, raw))
        };
        let cases = [
            (400, "Throttling", ErrorClass::Throttled),
            (400, "ThrottlingException", ErrorClass::Throttled),
            (500, "InternalServiceFault", ErrorClass::Transient),
            (503, "ServiceUnavailable", ErrorClass::Transient),
            (403, "AccessDenied", ErrorClass::Auth),
            (403, "InvalidClientTokenId", ErrorClass::Auth),
            (400, "ExpiredToken", ErrorClass::Auth),
            (400, "InvalidParameterValue", ErrorClass::Invalid),
            (400, "InvalidParameterCombination", ErrorClass::Invalid),
            (400, "MissingRequiredParameter", ErrorClass::Invalid),
        ];
        for (status, code, class) in cases {
            let e = service(status, code);
            assert_eq!(e.class, class, "{status} {code}");
            assert_eq!(e.code.as_deref(), Some(code));
            assert_eq!(e.is_retryable(), class != ErrorClass::Invalid);
        }
        let refused: SdkError<PutMetricDataError, Response> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert_eq!(classify(refused).class, ErrorClass::Transient);
        let timeout: SdkError<PutMetricDataError, Response> = SdkError::timeout_error("20 s");
        assert_eq!(classify(timeout).class, ErrorClass::Transient);
        let build: SdkError<PutMetricDataError, Response> =
            SdkError::construction_failure("no region");
        assert_eq!(classify(build).class, ErrorClass::Auth, "kept, not dropped");
    }

    #[tokio::test]
    async fn fake_follows_script_and_poison() {
        let f = FakePublisher::new();
        f.script([Err(PublishError::new(
            ErrorClass::Throttled,
            "Throttling",
            "slow down",
        ))]);
        f.poison("bad");
        let d = |n: &str| Datum::new(n, Unit::Count, 1.0, 0, Vec::new(), false);
        assert_eq!(
            f.put("N", &[d("a")]).await.unwrap_err().class,
            ErrorClass::Throttled
        );
        assert!(f.put("N", &[d("a")]).await.is_ok());
        let e = f.put("N", &[d("a"), d("bad")]).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Invalid);
        assert!(!e.is_retryable());
        assert_eq!(f.calls().len(), 3);
        assert_eq!(f.accepted().len(), 1);
    }
}
