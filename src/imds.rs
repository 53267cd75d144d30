//! Instance metadata (IMDSv2 only): session token with TTL and refresh before expiry, retries with
//! backoff inside a total deadline, a fresh token on 401; the identity document and signature and
//! the instance facts the agent needs.
//!
//! The rest of the agent sees only [`InstanceMetadata`], so tests use fakes. This module never
//! falls back to IMDSv1 (token-less GETs): a host that refuses the token PUT is reported as such.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hyper::Method;
use hyper::header::HeaderValue;
use serde::Deserialize;

use crate::backoff::Policy;

/// Default token lifetime requested (the maximum IMDS allows).
pub const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token is refreshed when less than this is left, so a request never carries a token that
/// expires in flight.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Per-request timeout: IMDS answers in milliseconds; a hung request must not stall the agent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Total deadline for one read, retries included (protocol spec §3.1: up to 30 s).
pub const READ_DEADLINE: Duration = Duration::from_secs(30);
/// Retry backoff between attempts of one read (protocol spec §3.1: 100 ms → 5 s, ×2, 0.2).
pub const RETRY: Policy = Policy::new(Duration::from_millis(100), Duration::from_secs(5), 2.0, 0.2);

/// IMDS errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token PUT was refused (403/405/404): the host offers IMDSv1 only or IMDS is disabled.
    #[error(
        "IMDS at {endpoint} refused the IMDSv2 token request (HTTP {status}); ecs-hostd needs IMDSv2 (set the instance's metadata options to HttpTokens=required or optional)"
    )]
    V2Unavailable {
        /// Base URL.
        endpoint: String,
        /// Status received.
        status: u16,
    },
    /// Retries ran out (deadline or attempts) without an answer.
    #[error(
        "IMDS {path} at {endpoint}: no answer after {attempts} attempts in {elapsed:?}: {last}"
    )]
    Unreachable {
        /// Base URL.
        endpoint: String,
        /// Path read.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// Last failure.
        last: String,
    },
    /// The path does not exist (404) where a value was required.
    #[error("IMDS {path}: not found")]
    NotFound {
        /// Path read.
        path: String,
    },
    /// The configured endpoint is not a plain `http://` URL.
    #[error("IMDS endpoint: {0}")]
    BadEndpoint(String),
    /// The identity document is not the JSON expected.
    #[error("IMDS identity document is not valid: {0}")]
    BadDocument(String),
}

impl Error {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// The instance identity document's fields the agent uses.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    /// `i-...`
    pub instance_id: String,
    /// e.g. `c5.xlarge`
    pub instance_type: String,
    /// e.g. `us-east-1`
    pub region: String,
    /// e.g. `us-east-1a`
    pub availability_zone: String,
    /// Account number.
    #[serde(default)]
    pub account_id: String,
    /// AMI id.
    #[serde(default)]
    pub image_id: String,
    /// Private IPv4 address.
    #[serde(default)]
    pub private_ip: Option<String>,
}

/// The identity document as registration needs it: parsed, plus the raw text and signature that
/// are sent to ECS verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Parsed fields.
    pub document: IdentityDocument,
    /// Raw document text.
    pub raw_document: String,
    /// Raw signature text.
    pub signature: String,
}

/// Read access to instance metadata. `Ok(None)` is a 404.
#[async_trait]
pub trait InstanceMetadata: Send + Sync {
    /// Reads a path below the IMDS root, e.g. `latest/meta-data/instance-id`.
    async fn get(&self, path: &str) -> Result<Option<String>, Error>;

    /// Reads a path that must exist.
    async fn require(&self, path: &str) -> Result<String, Error> {
        self.get(path).await?.ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })
    }

    /// The identity document and its signature.
    async fn identity(&self) -> Result<Identity, Error> {
        let raw_document = self
            .require("latest/dynamic/instance-identity/document")
            .await?;
        let signature = self
            .require("latest/dynamic/instance-identity/signature")
            .await?;
        let document: IdentityDocument =
            serde_json::from_str(&raw_document).map_err(|e| Error::BadDocument(e.to_string()))?;
        Ok(Identity {
            document,
            raw_document,
            signature,
        })
    }
}

/// The instance's VPC as IMDS tells it (awsvpc.md §1): what the awsvpc network mode needs to be
/// on, and what registration advertises as `ecs.vpc-id` / `ecs.subnet-id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcFacts {
    /// The primary interface's MAC (`meta-data/mac`).
    pub mac: String,
    /// `vpc-...`
    pub vpc_id: String,
    /// `subnet-...`
    pub subnet_id: String,
}

/// Reads `mac`, then `network/interfaces/macs/<mac>/vpc-id` and `.../subnet-id`. `Ok(None)` when
/// the instance is not in a VPC (any of them absent or empty: EC2-Classic, or an IMDS that does
/// not serve them); `Err` when IMDS does not answer.
pub async fn vpc_facts(imds: &dyn InstanceMetadata) -> Result<Option<VpcFacts>, Error> {
    let value = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let Some(mac) = value(imds.get("latest/meta-data/mac").await?) else {
        return Ok(None);
    };
    let base = format!("latest/meta-data/network/interfaces/macs/{mac}");
    let Some(vpc_id) = value(imds.get(&format!("{base}/vpc-id")).await?) else {
        return Ok(None);
    };
    let Some(subnet_id) = value(imds.get(&format!("{base}/subnet-id")).await?) else {
        return Ok(None);
    };
    Ok(Some(VpcFacts {
        mac,
        vpc_id,
        subnet_id,
    }))
}

struct Token {
    /// As the header every read sends (a clone shares its bytes).
    value: HeaderValue,
    expires: Instant,
}

/// Checks that `endpoint` is a URL the client can use (`http://host[:port][/prefix]`): the same
/// parse the client does, so the configuration refuses what the client would.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    wire::Wire::new(endpoint, REQUEST_TIMEOUT).map(|_| ())
}

/// The real IMDSv2 client.
pub struct ImdsClient {
    wire: Result<wire::Wire, String>,
    endpoint: String,
    token: Mutex<Option<Token>>,
    ttl: Duration,
    deadline: Duration,
    max_attempts: u32,
}

impl ImdsClient {
    /// A client for `endpoint` (e.g. `http://169.254.169.254`) with the default limits.
    pub fn new(endpoint: &str) -> ImdsClient {
        ImdsClient::with_limits(endpoint, REQUEST_TIMEOUT, READ_DEADLINE, 5)
    }

    /// A client with explicit per-request timeout, total deadline and attempt budget per read.
    /// An endpoint that is not an `http://` URL fails every read with [`Error::BadEndpoint`].
    pub fn with_limits(
        endpoint: &str,
        request_timeout: Duration,
        deadline: Duration,
        max_attempts: u32,
    ) -> ImdsClient {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        ImdsClient {
            wire: wire::Wire::new(&endpoint, request_timeout),
            endpoint,
            token: Mutex::new(None),
            ttl: TOKEN_TTL,
            deadline,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Requests a different token lifetime (tests use short ones).
    pub fn with_token_ttl(mut self, ttl: Duration) -> ImdsClient {
        self.ttl = ttl;
        self
    }

    /// The base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn cached_token(&self) -> Option<HeaderValue> {
        let guard = self.token.lock().expect("token lock");
        guard
            .as_ref()
            .filter(|t| t.expires > Instant::now() + TOKEN_REFRESH_MARGIN.min(self.ttl / 2))
            .map(|t| t.value.clone())
    }

    fn forget_token(&self) {
        *self.token.lock().expect("token lock") = None;
    }

    /// Fetches a new token. `Err(Ok(e))` is final (IMDSv2 refused), `Err(Err(msg))` retryable.
    async fn fetch_token(&self, wire: &wire::Wire) -> Result<HeaderValue, Result<Error, String>> {
        let ttl = HeaderValue::from(self.ttl.as_secs().max(1));
        let resp = wire
            .send(Method::PUT, "latest/api/token", &[(wire::TOKEN_TTL, ttl)])
            .await
            .map_err(|e| Err(format!("token request failed: {e}")))?;
        let status = resp.status.as_u16();
        match status {
            200 => {}
            403..=405 => {
                return Err(Ok(Error::V2Unavailable {
                    endpoint: self.endpoint.clone(),
                    status,
                }));
            }
            _ => return Err(Err(format!("token request answered HTTP {status}"))),
        }
        let granted = resp
            .ttl_header
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(self.ttl);
        let body = resp.body.map_err(|e| Err(format!("token body: {e}")))?;
        let value = HeaderValue::try_from(body.trim())
            .map_err(|_| Err("token body is not a header value".to_owned()))?;
        *self.token.lock().expect("token lock") = Some(Token {
            value: value.clone(),
            expires: Instant::now() + granted,
        });
        Ok(value)
    }
}

#[async_trait]
impl InstanceMetadata for ImdsClient {
    async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        let wire = self
            .wire
            .as_ref()
            .map_err(|e| Error::BadEndpoint(e.clone()))?;
        let path = path.trim_start_matches('/');
        let started = Instant::now();
        let mut backoff = RETRY.start();
        let mut attempts = 0;
        let mut last;
        loop {
            attempts += 1;
            let token = match self.cached_token() {
                Some(t) => Ok(t),
                // Boxed: once in six hours, and kept out of every read's future.
                None => Box::pin(self.fetch_token(wire)).await,
            };
            last = match token {
                Err(Ok(fatal)) => return Err(fatal),
                Err(Err(msg)) => msg,
                Ok(token) => match wire.send(Method::GET, path, &[(wire::TOKEN, token)]).await {
                    Err(e) => e,
                    Ok(resp) => match resp.status.as_u16() {
                        200 => match resp.body {
                            Ok(body) => return Ok(Some(body)),
                            Err(e) => e,
                        },
                        404 => return Ok(None),
                        401 => {
                            // The token expired or was revoked: get a new one and retry at
                            // once, without counting the wait.
                            self.forget_token();
                            if attempts < self.max_attempts {
                                continue;
                            }
                            "HTTP 401 with a fresh token".into()
                        }
                        status => format!("HTTP {status}"),
                    },
                },
            };
            let delay = backoff.next_delay();
            if attempts >= self.max_attempts || started.elapsed() + delay > self.deadline {
                return Err(Error::Unreachable {
                    endpoint: self.endpoint.clone(),
                    path: path.to_owned(),
                    attempts,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

mod wire;

#[cfg(test)]
mod tests;
