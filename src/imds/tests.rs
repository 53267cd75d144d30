//! IMDS client against a small in-process fake IMDS (the integration tests use ec2sim).

use super::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct Fake {
    tokens: Mutex<HashMap<String, Instant>>,
    /// Granted TTL cap in seconds.
    ttl_cap: Option<u64>,
    /// Status for token PUTs instead of 200.
    token_status: Option<u16>,
    /// Answer the next N GETs with 500.
    fail_gets: AtomicU32,
    /// Answer the next N GETs with 401 even with a valid token.
    force_401: AtomicU32,
    /// Hang every GET for this long.
    hang: Option<Duration>,
    puts: AtomicU32,
    gets: AtomicU32,
}

async fn token(State(f): State<Arc<Fake>>, headers: HeaderMap) -> impl IntoResponse {
    f.puts.fetch_add(1, Ordering::SeqCst);
    if let Some(s) = f.token_status {
        return (
            StatusCode::from_u16(s).unwrap(),
            HeaderMap::new(),
            String::new(),
        );
    }
    let asked: u64 = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if asked == 0 {
        return (StatusCode::BAD_REQUEST, HeaderMap::new(), String::new());
    }
    let ttl = f.ttl_cap.map_or(asked, |c| c.min(asked));
    let value = format!("tok-{}", f.puts.load(Ordering::SeqCst));
    f.tokens
        .lock()
        .unwrap()
        .insert(value.clone(), Instant::now() + Duration::from_secs(ttl));
    let mut h = HeaderMap::new();
    h.insert(
        "x-aws-ec2-metadata-token-ttl-seconds",
        ttl.to_string().parse().unwrap(),
    );
    (StatusCode::OK, h, value)
}

async fn meta(
    State(f): State<Arc<Fake>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    f.gets.fetch_add(1, Ordering::SeqCst);
    if let Some(d) = f.hang {
        tokio::time::sleep(d).await;
    }
    let valid = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| f.tokens.lock().unwrap().get(t).copied())
        .is_some_and(|exp| exp > Instant::now());
    if !valid {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    if f.force_401
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    if f.fail_gets
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
    }
    match path.as_str() {
        "meta-data/instance-id" => (StatusCode::OK, "i-0123456789abcdef0".into()),
        "dynamic/instance-identity/document" => (
            StatusCode::OK,
            r#"{"instanceId":"i-0123456789abcdef0","instanceType":"c5.xlarge","region":"eu-west-1","availabilityZone":"eu-west-1b","accountId":"123456789012","imageId":"ami-1"}"#.into(),
        ),
        "dynamic/instance-identity/signature" => (StatusCode::OK, "c2ln".into()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn serve(fake: Fake) -> (String, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = axum::Router::new()
        .route("/latest/api/token", put(token))
        .route("/latest/{*path}", get(meta))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

#[tokio::test]
async fn reads_identity_with_one_token() {
    let (url, fake) = serve(Fake::default()).await;
    let c = ImdsClient::new(&url);
    let id = c.identity().await.unwrap();
    assert_eq!(id.document.instance_id, "i-0123456789abcdef0");
    assert_eq!(id.document.region, "eu-west-1");
    assert_eq!(id.document.availability_zone, "eu-west-1b");
    assert_eq!(id.signature, "c2ln");
    assert!(id.raw_document.contains("\"instanceType\":\"c5.xlarge\""));
    assert_eq!(c.get("latest/meta-data/nope").await.unwrap(), None);
    assert_eq!(fake.puts.load(Ordering::SeqCst), 1, "token reused");
}

#[tokio::test]
async fn token_is_refreshed_before_expiry() {
    // The fake grants at most 2 s; the client must not send a token about to expire.
    let (url, fake) = serve(Fake {
        ttl_cap: Some(2),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::new(&url).with_token_ttl(Duration::from_secs(2));
    c.require("latest/meta-data/instance-id").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.require("latest/meta-data/instance-id").await.unwrap();
    assert_eq!(fake.puts.load(Ordering::SeqCst), 2, "refreshed near expiry");
    assert_eq!(
        fake.gets.load(Ordering::SeqCst),
        2,
        "no 401 round trip needed"
    );
}

#[tokio::test]
async fn a_401_gets_a_new_token_and_succeeds() {
    let (url, fake) = serve(Fake {
        force_401: AtomicU32::new(1),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::new(&url);
    assert_eq!(
        c.require("latest/meta-data/instance-id").await.unwrap(),
        "i-0123456789abcdef0"
    );
    assert_eq!(fake.puts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let (url, fake) = serve(Fake {
        fail_gets: AtomicU32::new(2),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::new(&url);
    c.require("latest/meta-data/instance-id").await.unwrap();
    assert_eq!(fake.gets.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn attempts_run_out_with_a_clear_error() {
    let (url, _fake) = serve(Fake {
        fail_gets: AtomicU32::new(100),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::with_limits(&url, Duration::from_secs(1), Duration::from_secs(30), 3);
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("3 attempts") && text.contains("HTTP 500"),
        "{text}"
    );
}

#[tokio::test]
async fn hung_requests_time_out_within_the_deadline() {
    let (url, _fake) = serve(Fake {
        hang: Some(Duration::from_secs(30)),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::with_limits(
        &url,
        Duration::from_millis(200),
        Duration::from_secs(1),
        100,
    );
    let started = Instant::now();
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    // Generous: the deadline is 1 s; one more request timeout may be in flight.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn imdsv1_only_host_is_reported_not_retried() {
    let (url, fake) = serve(Fake {
        token_status: Some(403),
        ..Fake::default()
    })
    .await;
    let c = ImdsClient::new(&url);
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(e, Error::V2Unavailable { status: 403, .. }), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        fake.gets.load(Ordering::SeqCst),
        0,
        "never a token-less GET"
    );
}

#[tokio::test]
async fn unreachable_endpoint_fails_within_the_deadline() {
    // A port nobody listens on (bound then dropped).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = ImdsClient::with_limits(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(200),
        Duration::from_secs(1),
        100,
    );
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}

/// A map of paths, for [`vpc_facts`]: what a VPC instance, an instance outside any VPC and a
/// broken IMDS look like.
struct Paths(HashMap<&'static str, &'static str>, bool);

#[async_trait]
impl InstanceMetadata for Paths {
    async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        if self.1 {
            return Err(Error::Unreachable {
                endpoint: "fake".into(),
                path: path.into(),
                attempts: 1,
                elapsed: Duration::ZERO,
                last: "down".into(),
            });
        }
        Ok(self.0.get(path).map(|v| (*v).to_owned()))
    }
}

#[tokio::test]
async fn vpc_facts_come_from_the_primary_macs_paths_or_are_absent() {
    let base = "latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:01";
    let in_vpc = HashMap::from([
        ("latest/meta-data/mac", "0e:aa:bb:cc:dd:01\n"),
        (
            "latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:01/vpc-id",
            "vpc-1234",
        ),
        (
            "latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:01/subnet-id",
            "subnet-5678",
        ),
        // Another interface's paths must not be read.
        (
            "latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:02/vpc-id",
            "vpc-other",
        ),
    ]);
    let got = vpc_facts(&Paths(in_vpc.clone(), false)).await.unwrap();
    assert_eq!(
        got,
        Some(VpcFacts {
            mac: "0e:aa:bb:cc:dd:01".into(),
            vpc_id: "vpc-1234".into(),
            subnet_id: "subnet-5678".into(),
        })
    );
    // Not in a VPC: any of the three missing (or empty) means none.
    for missing in [
        "latest/meta-data/mac".to_owned(),
        format!("{base}/vpc-id"),
        format!("{base}/subnet-id"),
    ] {
        let mut paths = in_vpc.clone();
        paths.retain(|k, _| *k != missing);
        assert_eq!(
            vpc_facts(&Paths(paths, false)).await.unwrap(),
            None,
            "{missing}"
        );
    }
    let mut empty = in_vpc.clone();
    empty.insert("latest/meta-data/mac", " ");
    assert_eq!(vpc_facts(&Paths(empty, false)).await.unwrap(), None);
    // IMDS not answering is an error, not "no VPC".
    let e = vpc_facts(&Paths(in_vpc, true)).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}
