//! Per-request context (request and correlation ids, the client's address) and the
//! answers every command route gives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use colloquy_commands::Answer;
use serde::Serialize;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

/// The request header carrying a client's Idempotency-Key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// The request's id (also sent back in `x-request-id`).
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions().get::<RequestId>().map(|r| r.to_string()).unwrap_or_default()
}

/// The id that ties a chain of requests together: a caller-supplied `X-Correlation-Id`, or
/// else the request id.
pub fn correlation_id(req: &HttpRequest) -> String {
    req.headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .map(String::from)
        .unwrap_or_else(|| request_id(req))
}

/// A use case's answer with `status`, marked when it was replayed for an Idempotency-Key.
pub fn answer<T: Serialize>(status: StatusCode, answer: Answer<T>) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if answer.replayed {
        response.insert_header((REPLAYED_HEADER, "true"));
    }
    response.json(answer.value)
}

/// The reverse proxies whose `X-Forwarded-For` is believed (`http.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

/// A `http.trusted_proxies` entry that is neither an address nor a network.
#[derive(Debug, thiserror::Error)]
#[error("http.trusted_proxies: {0:?} is not an IP address or network (a.b.c.d/n, x::y/n)")]
pub struct ProxyConfigError(String);

fn masked(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl TrustedProxies {
    /// Parses addresses (`10.0.0.5`) and networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(entries: &[String]) -> Result<Self, ProxyConfigError> {
        let networks = entries
            .iter()
            .map(|entry| {
                let invalid = || ProxyConfigError(entry.clone());
                let (ip, bits) = match entry.trim().split_once('/') {
                    Some((ip, bits)) => (ip, Some(bits.parse::<u8>().map_err(|_| invalid())?)),
                    None => (entry.trim(), None),
                };
                let ip = ip.parse::<IpAddr>().map_err(|_| invalid())?.to_canonical();
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = bits.unwrap_or(max);
                if bits > max {
                    return Err(invalid());
                }
                Ok((masked(ip, bits), bits))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    /// Whether `ip` is one of the proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|(net, bits)| net.is_ipv4() == ip.is_ipv4() && masked(ip, *bits) == *net)
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// rightmost address of `X-Forwarded-For` (all its headers, in order) that is not itself
    /// a trusted proxy. Entries left of that one are the client's to write and ignored. A
    /// malformed entry ends the walk at the last trusted hop.
    pub fn client_address<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.contains(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|h| h.split(',')).map(str::trim).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// The client address of a request, decided once (by [`RootSpan`]) and used alike for the
/// login and registration limits and in the request's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unknown"),
        }
    }
}

fn decide_client_address(
    proxies: Option<&TrustedProxies>,
    peer: Option<IpAddr>,
    headers: &actix_web::http::header::HeaderMap,
) -> ClientAddress {
    let forwarded = headers.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    match proxies {
        Some(proxies) => ClientAddress(proxies.client_address(peer, forwarded)),
        None => ClientAddress(peer.map(|ip| ip.to_canonical())),
    }
}

/// The request's client address (see [`ClientAddress`]).
pub fn client_address(req: &HttpRequest) -> ClientAddress {
    if let Some(address) = req.extensions().get::<ClientAddress>() {
        return *address;
    }
    let proxies = req.app_data::<web::Data<TrustedProxies>>().map(|p| p.get_ref());
    decide_client_address(proxies, req.peer_addr().map(|a| a.ip()), req.headers())
}

/// The request target as logged: the value of an `access_token` query parameter (the
/// WebSocket route accepts one, for browsers) becomes `***`.
pub fn logged_target(uri: &actix_web::http::Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else { return path.to_string() };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("access_token", _)) => "access_token=***".to_string(),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// The route pattern a request matched (`/api/v1/conversations/{id}/messages`), or
/// `default`: decided once, by [`RootSpan`], and read from the request's extensions by the
/// request metrics. Finding it walks actix's resource patterns, a regular expression for
/// each dynamic one, so it is not done twice.
#[derive(Debug, Clone)]
pub struct RoutePattern(pub String);

/// The root span of every request: tracing-actix-web's fields, but with the client address
/// decided by [`TrustedProxies`] (its default believes any `X-Forwarded-For`), which it
/// also leaves in the request's extensions for the rate limits, as it leaves the
/// [`RoutePattern`] for the metrics.
pub struct RootSpan;

impl RootSpanBuilder for RootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let proxies = request.app_data::<web::Data<TrustedProxies>>().map(|p| p.get_ref());
        let client = decide_client_address(proxies, request.peer_addr().map(|a| a.ip()), request.headers());
        request.extensions_mut().insert(client);
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        request.extensions_mut().insert(RoutePattern(route.clone()));
        let method = request.method().as_str().to_string();
        let request_id = request.extensions().get::<RequestId>().map(|r| r.to_string()).unwrap_or_default();
        let user_agent = request.headers().get("user-agent").and_then(|h| h.to_str().ok()).unwrap_or("");
        tracing::info_span!(
            "HTTP request",
            http.method = %method,
            http.route = %route,
            http.target = %logged_target(request.uri()),
            http.client_ip = %client,
            http.user_agent = %user_agent,
            http.status_code = tracing::field::Empty,
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, actix_web::Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_in_query_strings_are_not_logged() {
        let uri: actix_web::http::Uri = "/api/v1/ws?a=1&access_token=eyJsecret&b=2".parse().unwrap();
        assert_eq!(logged_target(&uri), "/api/v1/ws?a=1&access_token=***&b=2");
        let uri: actix_web::http::Uri = "/api/v1/conversations?limit=5".parse().unwrap();
        assert_eq!(logged_target(&uri), "/api/v1/conversations?limit=5");
        assert_eq!(logged_target(&"/health".parse().unwrap()), "/health");
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_their_addresses_only() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(p.contains(ip("10.200.3.4")) && p.contains(ip("192.168.1.7")) && p.contains(ip("fd12::1")));
        assert!(!p.contains(ip("11.0.0.1")) && !p.contains(ip("192.168.1.8")) && !p.contains(ip("fe80::1")));
        assert!(p.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped peers count as IPv4");
        assert!(proxies(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/x", "::1/129"] {
            assert!(TrustedProxies::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        let xff = ["6.6.6.6, 7.7.7.7"];
        assert_eq!(none.client_address(Some(ip("1.2.3.4")), xff.into_iter()), Some(ip("1.2.3.4")));
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(p.client_address(Some(ip("1.2.3.4")), xff.into_iter()), Some(ip("1.2.3.4")));
        // The rightmost untrusted hop; what the client wrote left of it is ignored.
        assert_eq!(p.client_address(Some(ip("10.0.0.1")), xff.into_iter()), Some(ip("7.7.7.7")));
        let chain = ["6.6.6.6", "7.7.7.7, 10.0.0.2"];
        assert_eq!(p.client_address(Some(ip("10.0.0.1")), chain.into_iter()), Some(ip("7.7.7.7")));
        // Only proxies, or nothing forwarded: the leftmost proxy, or the peer.
        assert_eq!(p.client_address(Some(ip("10.0.0.1")), ["10.0.0.3"].into_iter()), Some(ip("10.0.0.3")));
        assert_eq!(p.client_address(Some(ip("10.0.0.1")), std::iter::empty()), Some(ip("10.0.0.1")));
        // A malformed hop ends the walk at the last trusted one.
        assert_eq!(p.client_address(Some(ip("10.0.0.1")), ["1.1.1.1, junk"].into_iter()), Some(ip("10.0.0.1")));
    }

    #[actix_web::test]
    async fn the_logs_and_the_limits_see_the_same_client_address() {
        use actix_web::{test, App};
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(proxies(&["10.0.0.0/8"])))
                .route(
                    "/",
                    web::get().to(|req: HttpRequest| async move {
                        // What the root span recorded (left in the extensions) is what
                        // `client_address` answers the rate limits.
                        let recorded = req.extensions().get::<ClientAddress>().copied();
                        HttpResponse::Ok().body(format!("{recorded:?} {}", client_address(&req)))
                    }),
                )
                .wrap(tracing_actix_web::TracingLogger::<RootSpan>::new()),
        )
        .await;
        let ask = |peer: &str| {
            test::TestRequest::get()
                .uri("/")
                .peer_addr(format!("{peer}:4000").parse().unwrap())
                .insert_header(("x-forwarded-for", "6.6.6.6, 7.7.7.7"))
                .to_request()
        };
        let body = test::call_and_read_body(&app, ask("10.0.0.1")).await;
        assert_eq!(body, "Some(ClientAddress(Some(7.7.7.7))) 7.7.7.7");
        let body = test::call_and_read_body(&app, ask("1.2.3.4")).await;
        assert_eq!(body, "Some(ClientAddress(Some(1.2.3.4))) 1.2.3.4");
    }
}
