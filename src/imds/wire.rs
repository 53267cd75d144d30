//! The IMDS transport: plain HTTP/1.1 to the metadata endpoint over a kept-alive connection that
//! the requesting task drives itself (hyper's connection-level client, no background task, no
//! connection pool, no proxy).
//!
//! The Spot notice is read every second for the life of a Spot instance; through a general
//! purpose client each read also paid for a pool checkout, a second task's wake-ups and URL
//! parsing (issue 8's idle CPU). Up to [`MAX_IDLE`] idle connections are kept, so the lifecycle
//! pollers, whose periods coincide (1 s, 5 s, 30 s, 5 min from one start), each find one
//! instead of connecting anew. Owns nothing of IMDSv2 itself (tokens, retries): that is
//! `super::ImdsClient`'s.

use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response: status, one header's value, body text.
pub(super) struct Answer {
    pub status: StatusCode,
    pub ttl_header: Option<String>,
    pub body: Result<String, String>,
    /// The connection is finished (not to be kept).
    ended: bool,
}

/// Idle connections kept: one per IMDS poller that can run at the same instant
/// (`crate::lifecycle::signals`); a read finding none connects, and a connection beyond this is
/// closed when its read ends.
pub(super) const MAX_IDLE: usize = 4;

/// IMDSv2's session token header (sent with every read).
pub(super) const TOKEN: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");
/// The token's TTL header (sent with the token request, and in its answer).
pub(super) const TOKEN_TTL: HeaderName =
    HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");

type Connection = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
    conn: std::pin::Pin<Box<Connection>>,
}

/// Where IMDS is and the connection kept to it.
pub(super) struct Wire {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header (made once).
    host: HeaderValue,
    /// Path before `latest/...` (empty on EC2; a test world may serve several instances).
    prefix: String,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Wire {
    /// `endpoint` is `http://host[:port][/prefix]`.
    pub(super) fn new(endpoint: &str, timeout: Duration) -> Result<Wire, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("IMDS endpoint {endpoint:?} is not a URL: {e}"))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(format!("IMDS endpoint {endpoint:?} must be http://"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("IMDS endpoint {endpoint:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Wire {
            addr: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("IMDS endpoint {endpoint:?}: {e}"))?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The most recently kept idle connection still open (the others closed meanwhile are
    /// dropped on the way).
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn keep(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connection failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connection failed: {e}"))?;
        Ok(Conn {
            sender,
            conn: Box::pin(conn),
        })
    }

    /// One request for `path` (below the endpoint, e.g. `latest/api/token`) with the given
    /// headers, within the per-request timeout. A kept connection the server closed meanwhile
    /// is replaced once, without counting as a failure.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, String> {
        // Parsed once per request (the same URI for a retry on a fresh connection), with the
        // headers made before: a Spot instance sends this every second.
        let uri = Uri::try_from(format!("{}/{}", self.prefix, path.trim_start_matches('/')))
            .map_err(|e| format!("bad request: {e}"))?;
        let work = async {
            let mut reused = self.take_idle();
            loop {
                let was_reused = reused.is_some();
                let mut c = match reused.take() {
                    Some(c) => c,
                    // Boxed: rare, and kept out of every request's future.
                    None => Box::pin(self.connect()).await?,
                };
                let mut req = Request::new(Empty::<Bytes>::new());
                *req.method_mut() = method.clone();
                *req.uri_mut() = uri.clone();
                let h = req.headers_mut();
                h.reserve(headers.len() + 1);
                h.insert(HOST, self.host.clone());
                for (k, v) in headers {
                    h.insert(k.clone(), v.clone());
                }
                match exchange(&mut c, req).await {
                    Ok(answer) => {
                        if !answer.ended && !c.sender.is_closed() {
                            self.keep(c);
                        }
                        return Ok(answer);
                    }
                    // Closed by the server while idle (keep-alive timeout): a new connection.
                    Err(Failure::Unsent(_)) if was_reused => continue,
                    Err(Failure::Unsent(e) | Failure::Broken(e)) => return Err(e),
                }
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }
}

enum Failure {
    /// The request never got a response head (the connection was already gone).
    Unsent(String),
    /// Failed after the response began.
    Broken(String),
}

/// Sends `req` and reads the whole response, polling the connection in this task.
async fn exchange(c: &mut Conn, req: Request<Empty<Bytes>>) -> Result<Answer, Failure> {
    let Conn { sender, conn } = c;
    let work = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Unsent(describe(&e)))?;
        // What the head says is taken before the body is read; the head is not kept.
        let status = resp.status();
        let ttl_header = resp
            .headers()
            .get(&TOKEN_TTL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp.into_body().collect().await {
            Ok(b) => String::from_utf8(Vec::from(b.to_bytes())).map_err(|e| e.to_string()),
            Err(e) => return Err(Failure::Broken(describe(&e))),
        };
        Ok(Answer {
            status,
            ttl_header,
            body,
            ended: false,
        })
    };
    tokio::pin!(work);
    tokio::select! {
        biased;
        r = &mut work => r,
        end = conn.as_mut() => {
            // The connection finished (the server closed it, maybe right after this response):
            // whatever it delivered is with the exchange, which now ends too. The connection
            // is never polled again.
            if let Err(e) = end {
                tracing::debug!(error = %e, "IMDS connection ended.");
            }
            let r = work.await;
            r.map(|mut a| {
                a.ended = true;
                a
            })
        }
    }
}

fn describe(e: &hyper::Error) -> String {
    if e.is_closed() || e.is_incomplete_message() {
        "connection closed".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers `per_connection` requests on a connection, then closes it (as a
    /// keep-alive timeout would); returns its endpoint and the count of connections accepted.
    async fn closing_server(per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    for n in 0..per_connection {
                        // Request head: until the empty line.
                        let mut path = String::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line.is_empty() {
                                break;
                            }
                            if path.is_empty() {
                                path = line;
                            }
                        }
                        if path.is_empty() {
                            return;
                        }
                        let body = format!("{n} {path}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        w.write_all(resp.as_bytes()).await.unwrap();
                    }
                    // Dropping both halves closes the connection.
                });
            }
        });
        (format!("http://{addr}/imds/i-1"), accepted)
    }

    #[tokio::test]
    async fn keeps_one_connection_and_replaces_one_the_server_closed() {
        let (endpoint, accepted) = closing_server(2).await;
        let wire = Wire::new(&endpoint, Duration::from_secs(2)).unwrap();
        for i in 0..6 {
            let a = wire
                .send(Method::GET, "latest/meta-data/x", &[])
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(a.status, StatusCode::OK);
            let body = a.body.unwrap();
            assert!(
                body.ends_with("GET /imds/i-1/latest/meta-data/x HTTP/1.1"),
                "{body}"
            );
            // Give the server's close time to arrive, so reuse meets a closed connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two requests per connection: three connections, none per request.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_reads_keep_their_connections_up_to_the_limit() {
        // A server that never closes: every connection it accepts is one the client opened.
        let (endpoint, accepted) = closing_server(usize::MAX).await;
        let wire = Wire::new(&endpoint, Duration::from_secs(2)).unwrap();
        let read = || async {
            let a = wire.send(Method::GET, "latest/meta-data/x", &[]).await;
            assert_eq!(a.unwrap().status, StatusCode::OK);
        };
        // Three pollers due at the same instant, ten times: three connections, kept.
        for _ in 0..10 {
            tokio::join!(read(), read(), read());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // More at once than are kept: the surplus is closed after its read, so the next round
        // of as many connects again only for that surplus.
        let wide = || async {
            let reads: Vec<_> = (0..MAX_IDLE + 2).map(|_| read()).collect();
            futures_util::future::join_all(reads).await;
        };
        wide().await;
        let after_first = accepted.load(Ordering::SeqCst);
        assert_eq!(after_first, MAX_IDLE + 2);
        wide().await;
        assert_eq!(accepted.load(Ordering::SeqCst), after_first + 2);
    }

    #[test]
    fn only_plain_http_endpoints() {
        assert!(Wire::new("https://169.254.169.254", Duration::from_secs(1)).is_err());
        assert!(Wire::new("not a url", Duration::from_secs(1)).is_err());
        let w = Wire::new("http://[fd00:ec2::254]/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (w.addr.as_str(), w.prefix.as_str()),
            ("[fd00:ec2::254]:80", "")
        );
    }
}
