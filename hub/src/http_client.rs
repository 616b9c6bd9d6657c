//! Opening an HTTP/1.1 connection, plain or over TLS, and reading answers within bounds: shared
//! by the sinks' uplink, the rules' webhooks and the CLI's client of a running hub. A leaf.
//!
//! Invariants: the connection runs in its own task, which ends when the sender is dropped or the
//! peer closes; Nagle is off (batches are small and latency matters).

use std::sync::Arc;

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::HeaderValue;
use axum::http::{Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::ToSocketAddrs;

/// Why an HTTP/1.1 connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP: refused, unreachable, name not resolved.
    #[error("connecting: {0}")]
    Tcp(std::io::Error),
    /// The TLS handshake failed (an untrusted or mismatched certificate, a refused client
    /// certificate).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The HTTP/1.1 connection could not be set up.
    #[error("HTTP: {0}")]
    Handshake(hyper::Error),
}

/// Where an `http://` or `https://` URL points, as the clients of this module use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host (no brackets around an IPv6 address).
    pub host: String,
    /// The port (443 or 80 unless given).
    pub port: u16,
    /// Whether to speak TLS (`https://`).
    pub tls: bool,
    /// Host and port as written, for the `Host` header.
    pub authority: String,
    /// Path and query (`/` when none).
    pub path: String,
}

impl Target {
    /// Reads `url`: `https://`, or `http://` only to a loopback host; no credentials in it.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url {url:?}: no host"))?;
        if authority.as_str().contains('@') {
            return Err("url: no credentials in the URL".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("url {url:?}: must start with https:// or http://")),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !tls && !loopback {
            return Err(format!(
                "url {url:?}: http:// only to a loopback receiver; use https://"
            ));
        }
        Ok(Target {
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            host,
            tls,
        })
    }
}

/// Opens an HTTP/1.1 connection to `addr`, over TLS when `tls` is given (the server checked as
/// the given name). The connection runs in its own task, which ends when the sender is dropped
/// or the peer closes; shared by the uplink and the CLI's client of a running hub.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<SendRequest<Body>, ConnectError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ConnectError::Tcp)?;
    // Batches are small and latency matters more than packing segments.
    let _ = tcp.set_nodelay(true);
    let Some((config, server_name)) = tls else {
        return handshake(tcp).await;
    };
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    handshake(tls).await
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A hyper error with its cause (hyper's own text alone is often "connection error").
pub fn describe(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Reads at most `max` bytes of an answer's body; whether it was read to its end (only then can
/// the connection carry the next request).
pub async fn read_capped(response: Response<Incoming>, max: usize) -> (Vec<u8>, bool) {
    use hyper::body::Body as _;
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    loop {
        let frame =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut incoming).poll_frame(cx)).await;
        match frame {
            None => return (body, true),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = max - body.len();
                    if data.len() > room {
                        // The rest is not wanted; dropping it closes the connection.
                        body.extend_from_slice(&data[..room]);
                        return (body, false);
                    }
                    body.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return (body, false),
        }
    }
}

/// The wait a `Retry-After` asks for: delta-seconds or an HTTP-date, at most `max`; `None` when
/// absent or unreadable.
pub fn retry_after(
    value: Option<&HeaderValue>,
    now: time::OffsetDateTime,
    max: Duration,
) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc2822)
                    .ok()?;
            // A date already past means now.
            Duration::try_from(at - now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(max))
}
