//! Opening an HTTP/1.1 connection, plain or over TLS: shared by the sinks' uplink and the CLI's
//! client of a running hub. A leaf.
//!
//! Invariants: the connection runs in its own task, which ends when the sender is dropped or the
//! peer closes; Nagle is off (batches are small and latency matters).

use std::sync::Arc;

use axum::body::Body;
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
