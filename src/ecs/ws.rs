//! The signed websocket ECS speaks on both of its agent channels, ACS and TCS (protocol spec
//! §5.2, tcs.md §1): the `/ws?query` URL built from a discovered endpoint, SigV4 signing for
//! service `ecs` (of the upgrade, and for TCS of every frame), and the upgrade itself, directly
//! or through an HTTP proxy tunnel ([`super::proxy`]), bounded by a deadline.
//!
//! It owns opening a connection and the mechanics both sessions share once it is open (a bounded
//! write, a bounded close, what a read or a close frame says about the connection); what flows
//! over it, liveness and reconnection are each session's. It never logs signed headers or
//! frames.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::acs::messages;
use super::discover;
use super::proxy::{self, Proxies};

/// An open connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exceptions that say retrying soon will not help (protocol spec §5.2).
const SLOW_RETRY_EXCEPTIONS: &[&str] = &[
    "AccessDeniedException",
    "InvalidClusterException",
    "InvalidInstanceException",
    "InactiveInstanceException",
];

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No endpoint.
    #[error(transparent)]
    Discover(#[from] discover::Error),
    /// The credentials chain had nothing to sign with.
    #[error("no AWS credentials to sign the websocket upgrade: {0}")]
    Credentials(String),
    /// DiscoverPollEndpoint named no telemetry endpoint.
    #[error("DiscoverPollEndpoint named no telemetry endpoint")]
    NoTelemetryEndpoint,
    /// The discovered endpoint is not usable.
    #[error("endpoint {0:?} is not an http(s) or ws(s) URL")]
    BadEndpoint(String),
    /// Signing failed.
    #[error("cannot sign the websocket upgrade: {0}")]
    Sign(String),
    /// The server answered the upgrade with an HTTP error.
    #[error("the websocket upgrade was refused: HTTP {status} {}{message}", exception.as_deref().map(|e| format!("{e}: ")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// Exception named by the body, e.g. `InvalidClusterException`.
        exception: Option<String>,
        /// Its text.
        message: String,
    },
    /// TCP, TLS or websocket failure.
    #[error("websocket connection failed: {0}")]
    Transport(String),
    /// No upgrade within the deadline.
    #[error("websocket handshake did not complete within {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// Whether a quick retry may help (all are retried with backoff regardless).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Refused {
                exception: Some(e), ..
            } => !SLOW_RETRY_EXCEPTIONS.contains(&e.as_str()),
            ConnectError::Discover(e) => e.is_retryable(),
            ConnectError::BadEndpoint(_) | ConnectError::Sign(_) => false,
            _ => true,
        }
    }

    /// ECS says this container instance is deregistered.
    pub fn is_inactive_instance(&self) -> bool {
        matches!(self, ConnectError::Refused { exception: Some(e), .. } if e == "InactiveInstanceException")
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters are kept).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The websocket URL for an endpoint: `https`→`wss`, `http`→`ws`, `/ws` appended to the path,
/// then the query in the order given.
pub fn ws_url(endpoint: &str, query: &[(&str, String)]) -> Result<String, ConnectError> {
    let endpoint = endpoint.trim();
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| ConnectError::BadEndpoint(endpoint.to_owned()))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        _ => return Err(ConnectError::BadEndpoint(endpoint.to_owned())),
    };
    let base = rest
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if base.is_empty() || base.starts_with('/') {
        return Err(ConnectError::BadEndpoint(endpoint.to_owned()));
    }
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    Ok(format!("{scheme}://{base}/ws?{}", query.join("&")))
}

/// The SigV4 headers for a GET of `url` with `body` (service `ecs`): `Authorization`,
/// `X-Amz-Date` and, for temporary credentials, `X-Amz-Security-Token`.
pub fn signed_headers(
    url: &str,
    body: &[u8],
    region: &str,
    credentials: &aws_credential_types::Credentials,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, ConnectError> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ecs")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ConnectError::Sign(e.to_string()))?
        .into();
    let request = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(body))
        .map_err(|e| ConnectError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| ConnectError::Sign(e.to_string()))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

/// The credentials to sign with, from the SDK configuration's provider (which caches them).
pub async fn credentials(
    provider: &SharedCredentialsProvider,
) -> Result<aws_credential_types::Credentials, ConnectError> {
    provider.provide_credentials().await.map_err(|e| {
        ConnectError::Credentials(aws_sdk_ecs::error::DisplayErrorContext(e).to_string())
    })
}

/// Opens the websocket at `url` with a signed upgrade, through a proxy when the environment
/// names one for it, within `timeout`.
pub async fn open(
    url: &str,
    region: &str,
    credentials: &aws_credential_types::Credentials,
    proxies: &Proxies,
    timeout: Duration,
) -> Result<Ws, ConnectError> {
    let headers = signed_headers(url, &[], region, credentials, SystemTime::now())?;
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::BadEndpoint(format!("{url}: {e}")))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConnectError::Sign(e.to_string()))?;
        let value = HeaderValue::from_str(&value).map_err(|e| ConnectError::Sign(e.to_string()))?;
        request.headers_mut().insert(name, value);
    }
    let route = proxies.route(request.uri());
    let connecting = async {
        match &route {
            None => tokio_tungstenite::connect_async(request).await,
            Some(route) => {
                let stream = proxy::tunnel(route, request.uri())
                    .await
                    .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
                tokio_tungstenite::client_async_tls_with_config(request, stream, None, None).await
            }
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or(&[]);
            let (exception, message) = match messages::decode_connect_error(body) {
                Some((e, m)) => (Some(e), m),
                None => (None, String::new()),
            };
            Err(ConnectError::Refused {
                status,
                exception,
                message,
            })
        }
        Ok(Err(e)) => Err(ConnectError::Transport(e.to_string())),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// Writes one message within `timeout`; the error says what went wrong.
pub async fn write(ws: &mut Ws, message: Message, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("write did not complete within {timeout:?}")),
    }
}

/// Sends a close frame (best effort, within 2 s).
pub async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

/// The end of a connection as one read or close frame reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// A clean close (1000, 1001, 1005, 1006, 1011, or the end of the stream): reconnect at
    /// once rather than back off (protocol spec §5.6, tcs.md §4).
    pub clean: bool,
    /// Why, for the log.
    pub why: String,
}

/// What the next item of the stream says: a message, or how the connection ended (`peer` names
/// the other side in the reason).
pub fn read(
    next: Option<Result<Message, tungstenite::Error>>,
    peer: &str,
) -> Result<Message, Closed> {
    let ended = |clean: bool, why: String| Err(Closed { clean, why });
    match next {
        None => ended(true, format!("{peer} ended the stream")),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            ended(true, "connection closed".into())
        }
        Some(Err(e)) => ended(false, format!("read failed: {e}")),
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame
                .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                .unwrap_or((1005, String::new()));
            ended(
                clean_close(code),
                format!("{peer} closed the connection with code {code} {reason:?}"),
            )
        }
        Some(Ok(m)) => Ok(m),
    }
}

/// Whether a close code counts as clean (protocol spec §5.6; 1005: no code given).
pub fn clean_close(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1005 | 1006 | 1011)
}

/// Where a route goes, for a log line (the proxy's host and port; never its credentials).
pub fn describe_route(proxies: &Proxies, url: &str) -> Option<String> {
    let uri = url.parse().ok()?;
    proxies.route(&uri).map(|r| r.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_from_endpoint() {
        let q = vec![
            (
                "clusterArn",
                "arn:aws:ecs:us-east-1:1:cluster/a b".to_owned(),
            ),
            ("dockerVersion", "DockerVersion: 25.0.8".to_owned()),
        ];
        assert_eq!(
            ws_url("https://ecs-a-1.us-east-1.amazonaws.com", &q).unwrap(),
            "wss://ecs-a-1.us-east-1.amazonaws.com/ws?clusterArn=arn%3Aaws%3Aecs%3Aus-east-1%3A1%3Acluster%2Fa%20b&dockerVersion=DockerVersion%3A%2025.0.8"
        );
        assert!(
            ws_url("http://127.0.0.1:8080/", &[])
                .unwrap()
                .starts_with("ws://127.0.0.1:8080/ws?")
        );
        assert!(
            ws_url("http://127.0.0.1:8080/base", &[])
                .unwrap()
                .starts_with("ws://127.0.0.1:8080/base/ws?")
        );
        for bad in ["ftp://x", "no-scheme", "https://", "https:///path"] {
            let e = ws_url(bad, &[]).unwrap_err();
            assert!(!e.is_retryable(), "{bad}: {e}");
        }
    }

    #[test]
    fn signing_produces_sigv4_headers_for_ecs() {
        let creds = aws_credential_types::Credentials::new(
            "AKIDTEST",
            "secret",
            Some("tok".into()),
            None,
            "t",
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = "wss://ecs-a-1.us-east-1.amazonaws.com/ws?seqNum=1";
        let headers = signed_headers(url, &[], "us-east-1", &creds, at).unwrap();
        let get = |h: &[(&str, String)], n: &str| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let auth = get(&headers, "authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/20231114/us-east-1/ecs/aws4_request, SignedHeaders="),
            "{auth}"
        );
        assert_eq!(
            get(&headers, "x-amz-date").as_deref(),
            Some("20231114T221320Z")
        );
        assert_eq!(
            get(&headers, "x-amz-security-token").as_deref(),
            Some("tok")
        );
        // The body is part of the signature (TCS signs every frame's payload).
        let with_body = signed_headers(url, b"{}", "us-east-1", &creds, at).unwrap();
        assert_ne!(get(&with_body, "authorization"), Some(auth));
    }

    #[test]
    fn how_reads_end_a_connection() {
        for c in [1000, 1001, 1005, 1006, 1011] {
            assert!(clean_close(c));
        }
        for c in [1002, 1008, 4000] {
            assert!(!clean_close(c));
        }
        let frame = |code: u16| {
            Some(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            }))))
        };
        assert_eq!(
            read(frame(1000), "TCS"),
            Err(Closed {
                clean: true,
                why: "TCS closed the connection with code 1000 \"bye\"".into()
            })
        );
        assert!(!read(frame(4001), "TCS").unwrap_err().clean);
        assert!(read(None, "ACS").unwrap_err().clean);
        assert!(
            !read(Some(Err(tungstenite::Error::Utf8(String::new()))), "ACS")
                .unwrap_err()
                .clean
        );
        assert_eq!(
            read(Some(Ok(Message::text("x"))), "ACS"),
            Ok(Message::text("x"))
        );
    }

    #[test]
    fn refusals() {
        let e = ConnectError::Refused {
            status: 400,
            exception: Some("InactiveInstanceException".into()),
            message: "gone".into(),
        };
        assert!(e.is_inactive_instance());
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "the websocket upgrade was refused: HTTP 400 InactiveInstanceException: gone"
        );
    }
}
