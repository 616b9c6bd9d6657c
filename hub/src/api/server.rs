//! Serves the router over TLS: a bounded number of connections and of connections from one
//! address (so one address cannot take every slot), a deadline for the handshake and the request
//! head (against slowloris) and one for the whole request body (see [`BodyDeadline`]), HTTP/1.1
//! with keep-alive, and a graceful drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection a request came on, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The client certificate (DER) that TLS verified, if the client sent one.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

/// When the body of a request must have arrived whole, in the request's extensions: the end of
/// its head plus the body timeout. Whoever reads a body reads it by then (see `read_body`).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub tokio::time::Instant);

/// Kernel send buffer of each API connection.
const SEND_BUFFER: usize = 128 * 1024;

/// Most header lines hyper parses; the API's own, lower limit (`MAX_HEADERS` in the router)
/// answers with a problem body, so hyper's bare 431 is left for heads far beyond it.
const HYPER_MAX_HEADERS: usize = 256;

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Most concurrent connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most concurrent connections from one address; more are closed at once.
    pub max_connections_per_address: usize,
    /// Time for the TLS handshake, and then for each request head.
    pub header_timeout: Duration,
    /// Time for a whole request body, from the end of its head.
    pub body_timeout: Duration,
    /// How long shutdown waits for open requests.
    pub drain_timeout: Duration,
}

/// Accepts connections until `shutdown`, then lets open ones finish within the drain timeout.
pub async fn serve(
    listener: TcpListener,
    tls: tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(crate::ratelimit::OpenCounts::<std::net::IpAddr>::default());
    let mut refused_logged: Option<std::time::Instant> = None;
    let connections = TaskTracker::new();
    let mut accept_backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => { accept_backoff = Duration::from_millis(5); a }
                Err(e) => {
                    // Out of file descriptors and the like: wait, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // Over its address's share: closed before TLS, so it costs next to nothing and its
        // permit goes back at once.
        let Some(address_slot) = per_address.take(&peer.ip(), limits.max_connections_per_address)
        else {
            // At most one line a minute: a flood must not flood the log too.
            if refused_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                refused_logged = Some(std::time::Instant::now());
                tracing::warn!(address = %peer.ip(), cap = limits.max_connections_per_address,
                    "API connections refused: too many open from one address");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // A fixed send buffer instead of the kernel's autotuning (up to megabytes per socket):
        // the memory a slow or stalled client can pin stays small, and a stream client that does
        // not keep up is told it lagged instead of having megabytes queued for it.
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER);
        // The configuration of the moment: a reload (SIGHUP) affects new connections only.
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let router = router.clone();
        let stop = shutdown.clone();
        let header_timeout = limits.header_timeout;
        let body_timeout = limits.body_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // What the handlers learn of the connection: the peer, and the client certificate
            // TLS verified (if any).
            let connection_info = Connection {
                peer,
                client_cert: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| Arc::new(cert.as_ref().to_vec())),
            };
            let service = TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .map_request(move |mut request: axum::http::Request<_>| {
                        request.extensions_mut().insert(connection_info.clone());
                        // The head has just been read: the body's time starts now.
                        request
                            .extensions_mut()
                            .insert(BodyDeadline(tokio::time::Instant::now() + body_timeout));
                        request
                    })
                    .service(router),
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_headers(HYPER_MAX_HEADERS)
                .keep_alive(true);
            let connection = http
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(connection);
            // On shutdown, finish the request in progress, then close.
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the drain timeout; closing them");
    }
}
