//! How the ACS and TCS websockets leave the host when an HTTP proxy is configured (protocol spec §5.2:
//! "Honour `HTTPS_PROXY`/`NO_PROXY`"): the same environment rules as the SDK's clients and curl
//! (`HTTPS_PROXY` for `wss://`, `HTTP_PROXY` for `ws://`, `ALL_PROXY`, `NO_PROXY` with domain
//! suffixes, IPs and CIDRs; both spellings), read by hyper-util's proxy matcher, and an HTTP
//! `CONNECT` tunnel through it (hyper-util's tunnel connector, with the proxy's basic auth).
//!
//! It owns only the choice of route and the tunnel; the TLS and websocket handshakes over the
//! tunnel stay in the session. It never logs proxy credentials (only the proxy's host and port).

use std::future::poll_fn;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tower_service::Service;

/// The proxy rules of this process.
pub struct Proxies {
    matcher: Matcher,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxies")
    }
}

/// A proxy chosen for one endpoint.
pub struct Route {
    intercept: Intercept,
}

impl Route {
    /// `host:port` of the proxy, for logs (never its credentials).
    pub fn describe(&self) -> String {
        let uri = self.intercept.uri();
        format!(
            "{}:{}",
            uri.host().unwrap_or("?"),
            uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            })
        )
    }
}

impl Proxies {
    /// The rules from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`,
    /// upper or lower case).
    pub fn from_env() -> Proxies {
        Proxies {
            matcher: Matcher::from_env(),
        }
    }

    /// Explicit rules (tests): `http`/`https` proxy URLs and a `NO_PROXY` list.
    pub fn new(http: Option<&str>, https: Option<&str>, no: &str) -> Proxies {
        let mut b = Matcher::builder().no(no);
        if let Some(p) = http {
            b = b.http(p);
        }
        if let Some(p) = https {
            b = b.https(p);
        }
        Proxies { matcher: b.build() }
    }

    /// The proxy for a `ws://` or `wss://` URI, or `None` to connect directly.
    pub fn route(&self, ws: &Uri) -> Option<Route> {
        let (host, port, secure) = endpoint(ws)?;
        let scheme = if secure { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}:{port}/", bracket(host))
            .parse()
            .ok()?;
        self.matcher
            .intercept(&uri)
            .map(|intercept| Route { intercept })
    }
}

/// Host, port (the scheme's default when absent) and whether the URI is `wss://`.
fn endpoint(ws: &Uri) -> Option<(&str, u16, bool)> {
    let secure = matches!(ws.scheme_str(), Some("wss" | "https"));
    let host = ws.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((
        host,
        ws.port_u16().unwrap_or(if secure { 443 } else { 80 }),
        secure,
    ))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Opens a `CONNECT` tunnel through the route's proxy to the websocket URI's host and port.
pub async fn tunnel(route: &Route, ws: &Uri) -> Result<TcpStream, String> {
    let proxy = route.intercept.uri().clone();
    if proxy.scheme_str() == Some("https") {
        return Err(format!(
            "proxy {} speaks TLS (https://); only http:// proxies are supported for the ACS websocket",
            route.describe()
        ));
    }
    let (host, port, _) = endpoint(ws).ok_or_else(|| format!("no host in {ws}"))?;
    let dst: Uri = format!("http://{}:{port}/", bracket(host))
        .parse()
        .map_err(|e| format!("cannot tunnel to {host}:{port}: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut tunnel = Tunnel::new(proxy, connector);
    if let Some(auth) = route.intercept.basic_auth() {
        tunnel = tunnel.with_auth(auth.clone());
    }
    poll_fn(|cx| tunnel.poll_ready(cx))
        .await
        .map_err(|e| format!("proxy {}: {e}", route.describe()))?;
    let io = tunnel.call(dst).await.map_err(|e| {
        format!(
            "proxy {} refused or failed the CONNECT: {e}",
            route.describe()
        )
    })?;
    Ok(io.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(secure: bool, host: &str) -> Uri {
        let scheme = if secure { "wss" } else { "ws" };
        format!("{scheme}://{host}/ws?clusterArn=c")
            .parse()
            .unwrap()
    }

    #[test]
    fn wss_uses_the_https_proxy_and_ws_the_http_one() {
        let p = Proxies::new(
            Some("http://web-proxy:3128"),
            Some("http://user:secret@tls-proxy:8080"),
            "",
        );
        let r = p
            .route(&url(true, "ecs-a-1.us-east-1.amazonaws.com"))
            .unwrap();
        assert_eq!(r.describe(), "tls-proxy:8080");
        assert!(r.intercept.basic_auth().is_some());
        let r = p
            .route(&url(false, "ecs-a-1.us-east-1.amazonaws.com"))
            .unwrap();
        assert_eq!(r.describe(), "web-proxy:3128");
    }

    #[test]
    fn no_proxy_suffixes_and_cidrs_go_direct() {
        let p = Proxies::new(
            Some("http://proxy:3128"),
            Some("http://proxy:3128"),
            "169.254.169.254,.internal,10.0.0.0/8",
        );
        assert!(p.route(&url(true, "acs.eu-west-1.internal")).is_none());
        assert!(p.route(&url(false, "10.1.2.3")).is_none());
        assert!(p.route(&url(false, "169.254.169.254")).is_none());
        assert!(
            p.route(&url(true, "ecs-a-1.eu-west-1.amazonaws.com"))
                .is_some()
        );
    }

    #[test]
    fn no_proxy_configured_means_direct() {
        let p = Proxies::new(None, None, "");
        assert!(
            p.route(&url(true, "ecs-a-1.us-east-1.amazonaws.com"))
                .is_none()
        );
    }
}
