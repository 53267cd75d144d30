//! S3 reads for a task's environment files (task-credentials.md §9.6): a bucket's region
//! (`HeadBucket`, header `x-amz-bucket-region`) and `GetObject`, SigV4-signed with the given
//! credentials by `aws-sigv4` over hyper with the SDK's own TLS stack (rustls, native roots), so
//! S3 costs no SDK crate. `HTTPS_PROXY`/`NO_PROXY` are honoured the way the SDK's clients do.
//!
//! Owns the URL form (virtual-hosted on AWS, path-style on an `AWS_ENDPOINT_URL_S3` /
//! `AWS_ENDPOINT_URL` override), the signing and the error shape. Never retries (the caller
//! does), never logs a signed header or an object's bytes.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;

use crate::credentials::RoleCredentials;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an S3 call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", if code.is_empty() { message.clone() } else { format!("{code}: {message}") })]
pub struct S3Error {
    /// S3's error code (`AccessDenied`, `NoSuchKey`), empty for a transport failure.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// HTTP status, 0 when there was no answer.
    pub status: u16,
}

impl S3Error {
    fn transport(message: impl Into<String>) -> S3Error {
        S3Error {
            code: String::new(),
            message: message.into(),
            status: 0,
        }
    }

    /// Whether a later attempt may succeed (no answer, throttling, 5xx).
    pub fn is_retryable(&self) -> bool {
        self.status == 0 || self.status >= 500 || self.code == "SlowDown"
    }
}

/// An S3 client for signed reads.
pub struct S3 {
    direct: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    proxies: Matcher,
    endpoint: Option<String>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

fn tls()
-> Result<hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>, S3Error> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| S3Error::transport(format!("no TLS root certificates: {e}")))
}

impl S3 {
    /// A client with the endpoint override of the environment (`AWS_ENDPOINT_URL_S3`, else
    /// `AWS_ENDPOINT_URL`), if any.
    pub fn from_env() -> Result<S3, S3Error> {
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.is_empty());
        S3::new(endpoint)
    }

    /// A client for `endpoint` (path-style), or AWS's regional endpoints when `None`.
    pub fn new(endpoint: Option<String>) -> Result<S3, S3Error> {
        let connector = tls()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http_connector());
        Ok(S3 {
            direct: Client::builder(TokioExecutor::new()).build(connector),
            proxies: Matcher::from_env(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        })
    }

    /// The URL of `key` in `bucket` (the bucket itself when `key` is empty) in `region`.
    pub fn url(&self, region: &str, bucket: &str, key: &str) -> String {
        let key = encode_key(key);
        // Path-style: `/<bucket>` for the bucket itself, `/<bucket>/<key>` for an object.
        let path_style = |base: &str| {
            if key.is_empty() {
                format!("{base}/{bucket}")
            } else {
                format!("{base}/{bucket}/{key}")
            }
        };
        if let Some(e) = &self.endpoint {
            return path_style(e);
        }
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        // Virtual-hosted where the bucket name is a valid host label (what S3 recommends);
        // path-style for names with dots, which break the wildcard certificate.
        if !bucket.contains('.') {
            format!("https://{bucket}.s3.{region}.{suffix}/{key}")
        } else {
            path_style(&format!("https://s3.{region}.{suffix}"))
        }
    }

    /// The region of `bucket`, from `x-amz-bucket-region` of a `HeadBucket` signed for `region`
    /// (S3 names it on success, on a redirect to the right region and on most refusals).
    pub async fn bucket_region(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
    ) -> Result<String, S3Error> {
        let url = self.url(region, bucket, "");
        let response = self.send("HEAD", &url, region, creds).await?;
        let status = response.status();
        if let Some(found) = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            return Ok(found.to_owned());
        }
        Err(S3Error {
            code: match status.as_u16() {
                404 => "NoSuchBucket".into(),
                403 => "AccessDenied".into(),
                _ => String::new(),
            },
            message: format!("HeadBucket {bucket}: HTTP {status}, no bucket region"),
            status: status.as_u16(),
        })
    }

    /// `GetObject`: the object's bytes; more than `max_bytes` is an error.
    pub async fn get_object(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
        key: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, S3Error> {
        let url = self.url(region, bucket, key);
        let response = self.send("GET", &url, region, creds).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    S3Error {
                        code: "TooLarge".into(),
                        message: format!("the object is larger than {max_bytes} bytes"),
                        status: status.as_u16(),
                    }
                } else {
                    S3Error::transport(format!("reading the object: {e}"))
                }
            })?
            .to_bytes();
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            Err(error_of(status.as_u16(), &body))
        }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        region: &str,
        creds: &RoleCredentials,
    ) -> Result<hyper::Response<hyper::body::Incoming>, S3Error> {
        let headers = signed_headers(method, url, region, creds, SystemTime::now())?;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| S3Error::transport(format!("bad S3 URL {url}: {e}")))?;
        let mut request = hyper::Request::builder().method(method).uri(uri.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| S3Error::transport(e.to_string()))?;
        let sent = match self
            .proxies
            .intercept(&uri)
            .filter(|_| uri.scheme_str() == Some("https"))
        {
            None => self.direct.request(request).await,
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http_connector());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let connector = tls()?.https_only().enable_http1().wrap_connector(tunnel);
                Client::builder(TokioExecutor::new())
                    .build(connector)
                    .request(request)
                    .await
            }
        };
        sent.map_err(|e| {
            S3Error::transport(
                aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            )
        })
    }
}

/// Percent-encodes an object key for the URL path (every byte but unreserved ones and `/`).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The SigV4 headers (service `s3`: single-encoded path, `x-amz-content-sha256`).
fn signed_headers(
    method: &str,
    url: &str,
    region: &str,
    c: &RoleCredentials,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, S3Error> {
    let credentials = aws_credential_types::Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
        Some(c.session_token.clone()).filter(|t| !t.is_empty()),
        None,
        "ecs-hostd-execution-role",
    );
    let identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| S3Error::transport(format!("cannot sign: {e}")))?
        .into();
    let request = SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| S3Error::transport(format!("cannot sign: {e}")))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| S3Error::transport(format!("cannot sign: {e}")))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

/// S3's XML error (`<Error><Code>…</Code><Message>…</Message></Error>`).
fn error_of(status: u16, body: &[u8]) -> S3Error {
    let text = String::from_utf8_lossy(body);
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{tag}>"))? + start;
        Some(text[start..end].to_owned())
    };
    S3Error {
        code: field("Code").unwrap_or_default(),
        message: field("Message").unwrap_or_else(|| format!("HTTP {status}")),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_virtual_hosted_on_aws_and_path_style_on_an_override() {
        let aws = S3::new(None).unwrap();
        assert_eq!(
            aws.url("eu-west-1", "my-bucket", "path/app file.env"),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/path/app%20file.env"
        );
        assert_eq!(
            aws.url("us-east-1", "my.dotted.bucket", "a.env"),
            "https://s3.us-east-1.amazonaws.com/my.dotted.bucket/a.env"
        );
        assert_eq!(
            aws.url("cn-north-1", "b", "k"),
            "https://b.s3.cn-north-1.amazonaws.com.cn/k"
        );
        let local = S3::new(Some("http://127.0.0.1:5000/".into())).unwrap();
        assert_eq!(
            local.url("us-east-1", "b", "dir/k+1.env"),
            "http://127.0.0.1:5000/b/dir/k%2B1.env"
        );
        assert_eq!(local.url("us-east-1", "b", ""), "http://127.0.0.1:5000/b");
        assert_eq!(
            aws.url("us-east-1", "b", ""),
            "https://b.s3.us-east-1.amazonaws.com/"
        );
    }

    #[test]
    fn signing_covers_the_payload_hash_and_the_session_token() {
        let c = RoleCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: "token".into(),
            credentials_id: "id".into(),
            role_arn: "arn:aws:iam::1:role/x".into(),
            expiration: String::new(),
        };
        let h = signed_headers(
            "GET",
            "https://b.s3.us-east-1.amazonaws.com/k%20x",
            "us-east-1",
            &c,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(get("x-amz-security-token"), Some("token"));
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/s3/aws4_request"
            ),
            "{auth}"
        );
        assert!(auth.contains("x-amz-content-sha256"), "{auth}");
    }

    #[test]
    fn errors_carry_the_code_and_message_of_s3s_xml() {
        let e = error_of(
            403,
            b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        );
        assert_eq!(e.code, "AccessDenied");
        assert_eq!(e.to_string(), "AccessDenied: no");
        assert!(!e.is_retryable());
        assert!(error_of(503, b"<Error><Code>SlowDown</Code></Error>").is_retryable());
        assert_eq!(error_of(500, b"").message, "HTTP 500");
    }
}
