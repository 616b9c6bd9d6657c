//! Whether a request comes from the hub's own pages: its `Origin` names the host it was sent to.
//!
//! A browser sends `Origin` with every cross-origin request, every non-GET request and every
//! WebSocket handshake, and a page cannot forge it. A request that carries the session cookie is
//! refused (403) when its `Origin` is another site's; a write or a WebSocket upgrade with the
//! cookie is also refused when it has no `Origin` at all. `SameSite=Strict` already keeps the
//! cookie off requests other sites start; this check is the second lock, and the only one for
//! a browser or a proxy that ignores `SameSite`.
//!
//! The hub's own origin is the scheme and the authority the request was sent to: the `Host`
//! header (HTTP/1.1; the API speaks nothing else), or the target's authority.

use axum::http::{HeaderMap, Method, header};

/// What the `Origin` header says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin`.
    Absent,
    /// The hub's own.
    Same,
    /// Another site's (or an unreadable one, or `null`).
    Foreign,
}

/// Compares the request's `Origin` with the host it was sent to.
pub fn check(headers: &HeaderMap, authority: Option<&str>) -> OriginCheck {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return OriginCheck::Absent;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority);
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return OriginCheck::Foreign;
    };
    // One port serves one scheme, so the authority decides; the scheme must still be a web one.
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match origin_host {
        Some(o) if !host.is_empty() && o.eq_ignore_ascii_case(host) => OriginCheck::Same,
        _ => OriginCheck::Foreign,
    }
}

/// Whether a request that carries the session cookie may go on: never from another origin, and
/// a write or a WebSocket upgrade only with the hub's own `Origin`.
pub fn cookie_request_allowed(
    method: &Method,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !upgrade;
    match check(headers, authority) {
        OriginCheck::Same => true,
        OriginCheck::Absent => safe,
        OriginCheck::Foreign => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_origin_must_name_the_host_the_request_went_to() {
        let same = headers(&[
            ("host", "hub.local:8443"),
            ("origin", "https://hub.local:8443"),
        ]);
        assert_eq!(check(&same, None), OriginCheck::Same);
        let other = headers(&[
            ("host", "hub.local:8443"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(check(&other, None), OriginCheck::Foreign);
        let port = headers(&[
            ("host", "hub.local:8443"),
            ("origin", "https://hub.local:9443"),
        ]);
        assert_eq!(check(&port, None), OriginCheck::Foreign);
        let null = headers(&[("host", "hub.local"), ("origin", "null")]);
        assert_eq!(check(&null, None), OriginCheck::Foreign);
        let suffix = headers(&[("host", "hub.local"), ("origin", "https://hub.local.evil")]);
        assert_eq!(check(&suffix, None), OriginCheck::Foreign);
        assert_eq!(check(&headers(&[("host", "h")]), None), OriginCheck::Absent);
        let no_host = headers(&[("origin", "https://h:1")]);
        assert_eq!(check(&no_host, Some("h:1")), OriginCheck::Same);
    }

    #[test]
    fn writes_and_upgrades_with_the_cookie_need_the_hubs_origin() {
        let none = headers(&[("host", "h")]);
        assert!(cookie_request_allowed(&Method::GET, &none, None));
        assert!(!cookie_request_allowed(&Method::POST, &none, None));
        assert!(!cookie_request_allowed(&Method::DELETE, &none, None));
        let upgrade = headers(&[("host", "h"), ("upgrade", "websocket")]);
        assert!(!cookie_request_allowed(&Method::GET, &upgrade, None));
        let own = headers(&[
            ("host", "h"),
            ("upgrade", "websocket"),
            ("origin", "https://h"),
        ]);
        assert!(cookie_request_allowed(&Method::GET, &own, None));
        let foreign = headers(&[("host", "h"), ("origin", "https://x")]);
        assert!(!cookie_request_allowed(&Method::GET, &foreign, None));
        assert!(!cookie_request_allowed(&Method::POST, &foreign, None));
    }
}
