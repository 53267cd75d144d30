//! The task endpoint server on `127.0.0.1:51679` (task-credentials.md §4–§5, task-metadata.md
//! §1–§8): what a task's containers ask of the agent at `http://169.254.170.2` (NAT rules,
//! installed elsewhere, bring them here).
//!
//! ```text
//! request ─► rate limit (caller IP, path) ─► path cleaning (301) ─► route
//!            ├─ /v1/credentials?id=, /v2/credentials/<id> ─► CredentialsStore ─► audit log
//!            ├─ /v3/<endpoint id>…, /v4/<endpoint id>…   ─► the engine's published snapshot
//!            │                                              (+ the cgroup stats collector)
//!            └─ anything else ─► 404 `404 page not found`
//! ```
//!
//! Owns: the routes and their exact bodies, path cleaning, the per-(IP, path) token bucket
//! ([`limit`]), the credentials audit log ([`audit`]), the metadata JSON shapes ([`metadata`]).
//! Reads only what others publish: the in-memory [`CredentialsStore`], the engine's snapshot
//! through [`MetadataView`], the stats collector's samples through [`StatsSource`].
//!
//! Never: changes agent state; logs a credentials id or a secret (the audit log writes the
//! literal `/v2/credentials`); reaches into the engine (it reads only the published snapshot);
//! listens on anything but the configured address (loopback by default).

pub mod audit;
pub mod credentials;
pub mod limit;
pub mod metadata;
pub mod stats;
pub mod tags;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::credentials::CredentialsStore;

pub use metadata::{
    AwsvpcFacts, ContainerFacts, ContainerHealth, HealthStatus, MetadataIndex, MetadataView,
    TaskFacts,
};
pub use stats::StatsSource;

/// How containers address the endpoint (task-credentials.md §1): the base of the URIs put in
/// their environment.
pub const CONTAINER_BASE_URL: &str = "http://169.254.170.2";
/// The credentials path (v2); the id follows after a `/`.
pub const CREDENTIALS_V2_PATH: &str = "/v2/credentials";
/// The credentials path (v1); the id is the `id` query parameter.
pub const CREDENTIALS_V1_PATH: &str = "/v1/credentials";
/// Read and write deadline of one request (§4.1).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Listen retries (§4.1): 1 s … 1 min, ×2, jitter 0.2, forever.
const BIND_RETRY: crate::backoff::Policy =
    crate::backoff::Policy::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, 0.2);

/// Facts about this instance the responses and the audit log carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceFacts {
    /// The configured cluster (name or ARN, as configured).
    pub cluster: String,
    /// The container instance ARN.
    pub container_instance_arn: String,
    /// Availability zone from registration (task `AvailabilityZone`); empty = omitted.
    pub availability_zone: String,
}

/// Everything the server reads.
#[derive(Clone)]
pub struct EndpointState {
    /// Instance facts.
    pub instance: InstanceFacts,
    /// Task credentials (memory only).
    pub credentials: Arc<CredentialsStore>,
    /// The engine's published tasks.
    pub tasks: Arc<dyn MetadataView>,
    /// Container stats.
    pub stats: Arc<dyn StatsSource>,
    /// The rate limiter.
    pub limiter: Arc<limit::RateLimiter>,
    /// The credentials audit log.
    pub audit: Arc<audit::AuditLog>,
    /// Tags for `/taskWithTags` (ECS).
    pub tags: Arc<dyn tags::TagSource>,
}

impl EndpointState {
    /// The state of the agent's endpoint: settings from `config`, facts from `registration`.
    pub fn for_agent(
        config: &crate::config::Config,
        registration: &crate::ecs::register::Registration,
        credentials: Arc<CredentialsStore>,
        tasks: Arc<dyn MetadataView>,
        stats: Arc<dyn StatsSource>,
        tags: Arc<dyn tags::TagSource>,
    ) -> EndpointState {
        let c = &config.task_endpoint;
        EndpointState {
            instance: InstanceFacts {
                cluster: registration.cluster.clone(),
                container_instance_arn: registration.container_instance_arn.clone(),
                availability_zone: registration.availability_zone.clone(),
            },
            credentials,
            tasks,
            stats,
            limiter: Arc::new(limit::RateLimiter::new(c.rps, c.burst)),
            audit: Arc::new(audit::AuditLog::from_config(c)),
            tags,
        }
    }
}

/// What a request path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v1/credentials` (id in the query).
    CredentialsV1,
    /// `/v2/credentials/<id>` (`/v2/credentials` alone: empty id).
    CredentialsV2(&'a str),
    /// `/v3/<id>…` or `/v4/<id>…`.
    Metadata {
        /// v4 (else v3).
        v4: bool,
        /// The container's endpoint id.
        id: &'a str,
        /// Which document.
        what: metadata::What,
    },
    /// Nothing here: 404 `404 page not found`.
    NotFound,
}

/// Routes a clean path.
pub fn route(path: &str) -> Route<'_> {
    if path == CREDENTIALS_V1_PATH {
        return Route::CredentialsV1;
    }
    if path == CREDENTIALS_V2_PATH {
        return Route::CredentialsV2("");
    }
    if let Some(id) = path
        .strip_prefix(CREDENTIALS_V2_PATH)
        .and_then(|r| r.strip_prefix('/'))
    {
        return Route::CredentialsV2(id);
    }
    for (prefix, v4) in [("/v4/", true), ("/v3/", false)] {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        let (id, tail) = match rest.split_once('/') {
            Some((id, tail)) => (id, Some(tail)),
            None => (rest, None),
        };
        let what = match tail {
            None => metadata::What::Container,
            Some("task") => metadata::What::Task,
            Some("taskWithTags") => metadata::What::TaskWithTags,
            Some("stats") => metadata::What::ContainerStats,
            Some("task/stats") => metadata::What::TaskStats,
            Some(_) => return Route::NotFound,
        };
        return Route::Metadata { v4, id, what };
    }
    Route::NotFound
}

/// The path as Go's `path.Clean` leaves it, with a trailing slash kept (gorilla/mux's
/// `cleanPath`, which the official server applies before routing).
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    let rooted = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for seg in rooted.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if rooted.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// The path the audit log and the rate limiter's 429 line may show: never a credentials id.
pub fn loggable_path(path: &str) -> &str {
    if path.starts_with(CREDENTIALS_V2_PATH) {
        CREDENTIALS_V2_PATH
    } else if path.starts_with(CREDENTIALS_V1_PATH) {
        CREDENTIALS_V1_PATH
    } else {
        path
    }
}

fn text_response(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Go's `http.NotFound`, which the official router answers unknown paths with.
pub fn not_found() -> Response {
    let mut r = text_response(StatusCode::NOT_FOUND, "404 page not found\n");
    r.headers_mut().insert(
        header::HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A JSON body with `status`.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The router: every request goes through [`handle`] (rate limit, cleaning, routing happen in
/// one place so that they apply to every path, unknown ones included).
pub fn router(state: EndpointState) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(state))
}

/// Serves one request.
async fn handle(
    State(s): State<Arc<EndpointState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let request = audit::RequestInfo {
        peer,
        path: loggable_path(&path).to_owned(),
        user_agent,
    };
    if !s.limiter.allow(peer.ip(), &path) {
        s.audit.rejected(&request, 429);
        return text_response(
            StatusCode::TOO_MANY_REQUESTS,
            "You have reached maximum request limit.",
        );
    }
    let clean = clean_path(&path);
    if clean != path {
        let location = match req.uri().query() {
            Some(q) => format!("{clean}?{q}"),
            None => clean,
        };
        let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    match route(&path) {
        Route::CredentialsV1 => {
            let query =
                axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(
                    req.uri(),
                )
                .map(|q| q.0)
                .unwrap_or_default();
            let id = query.get("id").map(String::as_str).unwrap_or("");
            credentials::serve(&s, &request, id, credentials::Version::V1)
        }
        Route::CredentialsV2(id) => credentials::serve(&s, &request, id, credentials::Version::V2),
        Route::Metadata { v4, id, what } => metadata::serve(&s, v4, id, what).await,
        Route::NotFound => not_found(),
    }
}

/// Serves until cancelled. Binding is retried with backoff (another process may still hold the
/// port after a restart); each connection gets the 5 s header read deadline, and each request
/// the 5 s answer deadline.
pub async fn serve(
    addr: SocketAddr,
    state: EndpointState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut backoff = BIND_RETRY.start();
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(task_endpoint.addr = %addr, error = %e, retry_in = ?wait, "Cannot listen for the task endpoint; retrying.");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    info!(task_endpoint.addr = %listener.local_addr()?, "Task endpoint listening.");
    serve_on(listener, state, cancel).await
}

/// Serves on a bound listener until cancelled (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: EndpointState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    debug!(error = %e, "Task endpoint accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut app = app.clone();
                    async move {
                        let req = req.map(Body::new);
                        let answer = tower_service::Service::call(&mut app, req);
                        match tokio::time::timeout(TIMEOUT, answer).await {
                            Ok(r) => r,
                            Err(_) => {
                                Ok::<_, Infallible>(StatusCode::SERVICE_UNAVAILABLE.into_response())
                            }
                        }
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TIMEOUT);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "Task endpoint connection ended with an error.");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
