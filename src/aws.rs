//! Shared AWS plumbing: building the SDK configuration (region, credentials chain, endpoint
//! overrides from the SDK's standard variables) and classifying SDK errors once for every client.
//!
//! Endpoints come only from what the SDK itself reads (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_ECS`, ...) plus the official `ECS_BACKEND_HOST` for ECS. Retries are not left
//! to the SDK: each caller owns its retry loop (backoff, deadlines, what is retryable), so the SDK
//! makes one attempt per call.

pub mod s3;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response as HttpResponse;

/// Per-call timeouts: the official agent uses a 42 s request timeout and 30 s dial.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(42);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where TLS root certificates are looked for (Debian/Ubuntu, Amazon Linux/RHEL, SUSE, Alpine).
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// Checks that the host has TLS root certificates. Without them the SDK's HTTPS client cannot be
/// built (it would panic), so the agent reports this as a terminal condition instead.
fn check_root_certificates() -> Result<(), String> {
    let from_env = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .any(|p| std::path::Path::new(&p).exists());
    if from_env || CA_BUNDLES.iter().any(|p| std::path::Path::new(p).exists()) {
        Ok(())
    } else {
        Err(format!(
            "no TLS root certificates on this host (looked for {} and SSL_CERT_FILE/SSL_CERT_DIR); install the ca-certificates package",
            CA_BUNDLES.join(", ")
        ))
    }
}

/// Loads the SDK configuration for `region`, with one attempt per call and bounded timeouts.
/// Credentials follow the default chain (environment, profile, IMDS instance role). Fails when the
/// host has no TLS root certificates, which the SDK's HTTPS client cannot be built without.
pub async fn sdk_config(region: &str) -> Result<aws_config::SdkConfig, String> {
    check_root_certificates()?;
    Ok(aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(OPERATION_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .app_name(aws_config::AppName::new("ecs-hostd").expect("valid app name"))
        .load()
        .await)
}

/// How an API failure should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer (connection, timeout): retry.
    Transport,
    /// Throttled: retry, slower.
    Throttled,
    /// Server-side failure (5xx, ServerException): retry.
    Server,
    /// The request was refused (4xx): do not retry.
    Client,
}

/// A classified AWS API failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct ApiError {
    /// The operation that failed.
    pub operation: &'static str,
    /// Classification.
    pub kind: ErrorKind,
    /// The service's error code, e.g. `ClientException`.
    pub code: Option<String>,
    /// Human-readable detail (with the cause chain for transport errors).
    pub message: String,
}

impl ApiError {
    /// Whether the call may succeed if repeated later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self.kind, ErrorKind::Client)
    }

    /// Whether the error code is `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequestsException",
    "LimitExceededException",
    "SlowDown",
];

const SERVER_CODES: &[&str] = &[
    "ServerException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Classifies any SDK error (every aws-sdk-* client shares the error type).
pub fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&err).to_string();
    let (kind, code, message) = match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().map(str::to_owned);
            let message = se.err().message().map(str::to_owned).unwrap_or(detail);
            let kind = match code.as_deref() {
                Some(c) if THROTTLING_CODES.contains(&c) => ErrorKind::Throttled,
                Some(c) if SERVER_CODES.contains(&c) => ErrorKind::Server,
                _ if status == 429 => ErrorKind::Throttled,
                _ if status >= 500 => ErrorKind::Server,
                _ => ErrorKind::Client,
            };
            (kind, code, message)
        }
        SdkError::ResponseError(re) if re.raw().status().as_u16() < 500 => {
            (ErrorKind::Transport, None, detail)
        }
        SdkError::ResponseError(_) => (ErrorKind::Server, None, detail),
        SdkError::ConstructionFailure(_) => (ErrorKind::Client, None, detail),
        _ => (ErrorKind::Transport, None, detail),
    };
    ApiError {
        operation,
        kind,
        code,
        message,
    }
}
