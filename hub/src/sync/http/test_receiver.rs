//! A real HTTP receiver for tests (of this uplink and of the sink loop): records each request,
//! counts connections, answers with scripted replies (200 once they run out).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::HeaderMap;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::sync::Delivery;

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A status, headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// Nothing, ever.
    Hang,
}

impl Reply {
    pub(crate) fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new(), String::new())
    }
}

/// The reason of a retry without a wait from the receiver; panics on any other delivery.
pub(crate) fn retry_reason(delivery: Delivery) -> String {
    match delivery {
        Delivery::Retry {
            after: None,
            reason,
        } => reason,
        other => panic!("not a retry without a wait: {other:?}"),
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Seen>>,
    replies: Mutex<VecDeque<Reply>>,
    connections: AtomicUsize,
}

/// A receiver on 127.0.0.1, stopped on drop.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Plain HTTP, or HTTPS with `tls`.
    pub(crate) async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept(listener, tls, shared.clone()));
        Receiver { addr, shared, task }
    }

    /// Queues the answer to a coming request.
    pub(crate) fn reply(&self, reply: Reply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }

    /// The requests so far.
    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            match tls {
                None => serve(tcp, shared).await,
                Some(config) => {
                    if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                        serve(stream, shared).await;
                    }
                }
            }
        });
    }
}

async fn serve<T>(io: T, shared: Arc<Shared>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(Body::new(body), 64 << 20)
                .await
                .unwrap_or_default()
                .to_vec();
            shared.requests.lock().unwrap().push(Seen {
                headers: parts.headers,
                body,
            });
            let reply = shared.replies.lock().unwrap().pop_front();
            let response = match reply.unwrap_or(Reply::status(200)) {
                Reply::Hang => std::future::pending::<Response<Body>>().await,
                Reply::Status(code, headers, body) => {
                    let mut response = Response::builder().status(code);
                    for (name, value) in headers {
                        response = response.header(name, value);
                    }
                    response.body(Body::from(body)).unwrap()
                }
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}
