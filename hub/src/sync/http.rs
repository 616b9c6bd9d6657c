//! The `http` sink's uplink: POSTs each batch to one URL over a kept-alive HTTP/1.1 connection
//! and turns the receiver's answer into a [`Delivery`].
//!
//! Inputs: the sink's [`SinkConfig`] (URL, token, TLS material, timeout) and one [`Batch`] per
//! call. Invariants: one request per [`HttpUplink::deliver`], never retried here (the sink loop
//! owns back-off); the whole exchange, connecting included, ends within the sink's timeout; at
//! most [`MAX_ANSWER`] bytes of an answer are read; the bearer token is never logged or put in a
//! reason. Plain `http://` is only allowed to a loopback receiver (tests, a local relay).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::ToSocketAddrs;

use super::{Batch, Delivery, SyncError};
use crate::config::{Compression, SinkConfig};

/// Most bytes of an answer's body read (for the reason of a refusal or a retry).
pub const MAX_ANSWER: usize = 64 << 10;
/// Most bytes of an answer's body put in a reason.
const MAX_REASON: usize = 512;
/// Longest `Retry-After` honoured: a receiver asking for more is asked again after this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// How long a kept connection may take to be ready for the next request before a new one is
/// opened instead (the request has not been sent then, so this is no retry).
const READY_WAIT: Duration = Duration::from_secs(1);
/// The header that lets a receiver drop a batch it has already taken.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

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

/// The TLS client configuration of a sink: its `ca` (else the system bundle) and its client
/// certificate for mutual TLS.
pub(super) fn tls_config(config: &SinkConfig) -> Result<rustls::ClientConfig, SyncError> {
    let client = config
        .client_cert
        .as_deref()
        .zip(config.client_key.as_deref());
    crate::auth::tls::client_config(config.ca.as_deref(), client)
        .map_err(|e| config_error(config, e.to_string()))
}

fn config_error(config: &SinkConfig, reason: impl Into<String>) -> SyncError {
    SyncError::Config {
        sink: config.name.clone(),
        reason: reason.into(),
    }
}

/// Where the uplink connects.
struct Target {
    host: String,
    port: u16,
    /// TLS to speak, with the name the server's certificate must carry; `None` for `http://`.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// POSTs batches to one URL.
pub struct HttpUplink {
    name: String,
    target: Target,
    /// Path and query of the URL.
    path: String,
    /// Headers of every request: Host, Content-Type, User-Agent, Authorization.
    headers: HeaderMap,
    timeout: Duration,
    /// The kept-alive connection, when there is one.
    sender: Option<SendRequest<Body>>,
    /// The status last logged as needing the operator, so it is logged once per change.
    alarm: Option<u16>,
}

impl HttpUplink {
    /// An uplink for `config`; fails on an unusable URL, certificate or token file.
    pub fn new(config: &SinkConfig) -> Result<Self, SyncError> {
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e| config_error(config, format!("url {:?}: {e}", config.url)))?;
        let authority = uri
            .authority()
            .ok_or_else(|| config_error(config, format!("url {:?}: no host", config.url)))?;
        if authority.as_str().contains('@') {
            return Err(config_error(
                config,
                "url: no credentials in the URL; give token or token_file",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(config_error(
                    config,
                    format!("url {:?}: must start with https:// or http://", config.url),
                ));
            }
        };
        if !tls && !is_loopback(&host) {
            return Err(config_error(
                config,
                format!(
                    "url {:?}: http:// only to a loopback receiver; use https://",
                    config.url
                ),
            ));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls {
            let mut client = tls_config(config)?;
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            let server_name = ServerName::try_from(host.clone())
                .map_err(|e| config_error(config, format!("url host {host:?}: {e}")))?;
            Some((Arc::new(client), server_name))
        } else {
            None
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();

        let mut headers = HeaderMap::new();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| config_error(config, format!("url host: {e}")))?;
        headers.insert(header::HOST, host_header);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("hub/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(token) = token(config)? {
            // The value's text is never shown: the error says only where the token came from.
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                config_error(config, "token: holds a character not allowed in a header")
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }

        Ok(HttpUplink {
            name: config.name.clone(),
            target: Target { host, port, tls },
            path,
            headers,
            timeout: config.timeout(),
            sender: None,
            alarm: None,
        })
    }

    /// Sends `batch` once and says what became of it.
    pub async fn deliver(&mut self, batch: &Batch) -> Delivery {
        let request = match self.request(batch) {
            Ok(request) => request,
            Err(reason) => {
                return Delivery::Retry {
                    after: None,
                    reason,
                };
            }
        };
        let timeout = self.timeout;
        let answer = match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                return Delivery::Retry {
                    after: None,
                    reason,
                };
            }
            // The connection went with the dropped exchange: the next delivery opens a new one.
            Err(_) => {
                return Delivery::Retry {
                    after: None,
                    reason: format!("no answer within {timeout:?}"),
                };
            }
        };
        self.judge(answer)
    }

    fn request(&self, batch: &Batch) -> Result<Request<Body>, String> {
        let mut request = Request::post(&self.path)
            .body(Body::from(batch.body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let headers = request.headers_mut();
        headers.extend(self.headers.clone());
        let key = HeaderValue::from_str(&batch.key)
            .map_err(|_| format!("batch key {:?} is not a header value", batch.key))?;
        headers.insert(IDEMPOTENCY_KEY, key);
        let encoding = match batch.encoding {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        };
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        Ok(request)
    }

    /// Sends `request` on the kept-alive connection, or a new one when there is none or the
    /// receiver closed it while idle; the answer, or why there is none.
    async fn exchange(&mut self, request: Request<Body>) -> Result<Answer, String> {
        let mut reused = self.sender.take();
        if let Some(sender) = reused.as_mut()
            && !matches!(
                tokio::time::timeout(READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            )
        {
            reused = None;
        }
        let (sender, response) = match reused {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => (sender, response),
                // Closed before the request went out (an idle connection the receiver had just
                // dropped): it has not been sent, so sending it on a new connection is not a retry.
                Err(mut e) => match e.take_message() {
                    Some(request) => self.send_new(request).await?,
                    None => return Err(describe(&e.into_error())),
                },
            },
            None => self.send_new(request).await?,
        };
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let (body, complete) = read_capped(response).await;
        // An answer read to its end leaves the connection for the next batch (hyper closes it
        // when the receiver said `Connection: close`; the next exchange then sees it closed).
        // Not waited on here: the answer is in, and waiting could only turn it into a timeout.
        if complete {
            self.sender = Some(sender);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    async fn send_new(
        &self,
        request: Request<Body>,
    ) -> Result<(SendRequest<Body>, Response<Incoming>), String> {
        let t = &self.target;
        let mut sender = connect((t.host.as_str(), t.port), t.tls.clone())
            .await
            .map_err(|e| format!("{}:{}: {e}", t.host, t.port))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| describe(&e))?;
        Ok((sender, response))
    }

    /// The delivery an answer means.
    fn judge(&mut self, answer: Answer) -> Delivery {
        let status = answer.status;
        let code = status.as_u16();
        let text = || reason_text(&answer.body);
        if status.is_success() {
            if self.alarm.take().is_some() {
                tracing::info!(sink = %self.name, status = code, "the receiver takes batches again");
            }
            return Delivery::Delivered;
        }
        match code {
            429 | 503 => Delivery::Retry {
                after: retry_after(answer.retry_after.as_ref(), time::OffsetDateTime::now_utc()),
                reason: format!("{status}: {}", text()),
            },
            // The data is fine; the URL, token or receiver is not, and only a person can fix it.
            401 | 403 | 404 | 405 | 407 => {
                if self.alarm != Some(code) {
                    self.alarm = Some(code);
                    tracing::error!(sink = %self.name, status = code, body = %text(), "the receiver refuses every batch: operator must act (URL, token, receiver)");
                }
                Delivery::Retry {
                    after: None,
                    reason: format!("{status} (operator must act): {}", text()),
                }
            }
            400..=499 if !matches!(code, 408 | 425) => Delivery::Refused {
                status: code,
                reason: text(),
            },
            _ => Delivery::Retry {
                after: None,
                reason: format!("{status}: {}", text()),
            },
        }
    }
}

/// What the receiver answered.
struct Answer {
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    /// At most [`MAX_ANSWER`] bytes of the body.
    body: Vec<u8>,
}

/// Reads at most [`MAX_ANSWER`] bytes of the body; whether it was read to its end.
async fn read_capped(response: Response<Incoming>) -> (Vec<u8>, bool) {
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
                    let room = MAX_ANSWER - body.len();
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

/// The start of a body, as text for a reason.
fn reason_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_REASON)])
        .trim()
        .to_owned()
}

/// A hyper error with its cause (hyper's own text alone is often "connection error").
fn describe(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// The wait a `Retry-After` asks for: delta-seconds or an HTTP-date, at most
/// [`RETRY_AFTER_MAX`]; `None` when absent or unreadable.
fn retry_after(value: Option<&HeaderValue>, now: time::OffsetDateTime) -> Option<Duration> {
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
    Some(wait.min(RETRY_AFTER_MAX))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The bearer token of `config`: `token`, or `token_file` read once and trimmed.
fn token(config: &SinkConfig) -> Result<Option<String>, SyncError> {
    let token = match (&config.token, &config.token_file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(path)) => read_token(path).map_err(|reason| config_error(config, reason))?,
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(config_error(config, "token: empty"));
    }
    Ok(Some(token))
}

fn read_token(path: &Path) -> Result<String, String> {
    // A token file is a line; anything much larger is the wrong file.
    const MAX_TOKEN_FILE: u64 = 64 << 10;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("token_file {}: {e}", path.display()))?;
    if meta.len() > MAX_TOKEN_FILE {
        return Err(format!(
            "token_file {}: larger than {MAX_TOKEN_FILE} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("token_file {}: {e}", path.display()))
}

/// A real HTTP receiver for tests (of this uplink and of the sink loop): records each request,
/// counts connections, answers with scripted replies (200 once they run out).
#[cfg(test)]
pub(crate) mod test_receiver {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;

    use super::*;

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
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
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
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::test_receiver::{Receiver, Reply, retry_reason};
    use super::*;
    use crate::auth::pki;
    use crate::auth::tls::{TlsPaths, server_config};
    use crate::config::{ClientAuth, HumanDuration};
    use crate::sync::compress::{compress, tests::decompress};

    const BODY: &[u8] = br#"{"hub":"h1","key":"cloud-10-12","readings":[{"d":"t1","v":21.5}]}"#;

    fn sink(url: String) -> SinkConfig {
        SinkConfig {
            name: "cloud".into(),
            url,
            token: Some("s3cret".into()),
            timeout: Some(HumanDuration(Duration::from_secs(10))),
            ..SinkConfig::default()
        }
    }

    fn batch(encoding: Compression) -> Batch {
        Batch {
            first: 10,
            last: 12,
            count: 3,
            key: "cloud-10-12".into(),
            body: compress(BODY, encoding).unwrap(),
            encoding,
        }
    }

    fn header(seen: &test_receiver::Seen, name: &str) -> Option<String> {
        seen.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn posts_with_headers_over_one_kept_connection() {
        let receiver = Receiver::start(None).await;
        let mut uplink =
            HttpUplink::new(&sink(format!("http://{}/v1/ingest?x=1", receiver.addr))).unwrap();
        for encoding in [Compression::Gzip, Compression::Zstd, Compression::None] {
            assert_eq!(uplink.deliver(&batch(encoding)).await, Delivery::Delivered);
        }
        let requests = receiver.requests();
        assert_eq!(requests.len(), 3);
        for (seen, encoding) in
            requests
                .iter()
                .zip([Compression::Gzip, Compression::Zstd, Compression::None])
        {
            assert_eq!(
                header(seen, "idempotency-key").as_deref(),
                Some("cloud-10-12")
            );
            assert_eq!(
                header(seen, "authorization").as_deref(),
                Some("Bearer s3cret")
            );
            assert_eq!(
                header(seen, "content-type").as_deref(),
                Some("application/json")
            );
            assert_eq!(
                header(seen, "user-agent"),
                Some(format!("hub/{}", env!("CARGO_PKG_VERSION")))
            );
            let expected = match encoding {
                Compression::None => None,
                Compression::Gzip => Some("gzip"),
                Compression::Zstd => Some("zstd"),
            };
            assert_eq!(header(seen, "content-encoding").as_deref(), expected);
            assert_eq!(decompress(&seen.body, encoding), BODY);
        }
        assert_eq!(receiver.connections(), 1, "the connection is kept alive");
    }

    #[tokio::test]
    async fn answers_map_to_deliveries() {
        let receiver = Receiver::start(None).await;
        let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
        let date = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
        let http_date = date
            .format(
                &time::format_description::parse_borrowed::<2>(
                    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
                )
                .unwrap(),
            )
            .unwrap();
        let with = |code: u16, name: &'static str, value: &str| {
            Reply::Status(code, vec![(name, value.to_owned())], String::new())
        };
        receiver.reply(Reply::status(500));
        receiver.reply(with(429, "retry-after", "7"));
        receiver.reply(with(503, "retry-after", &http_date));
        receiver.reply(with(429, "retry-after", "86400"));
        receiver.reply(with(503, "retry-after", "soon"));
        receiver.reply(Reply::Status(
            400,
            Vec::new(),
            "reading 11: no unit\n".into(),
        ));
        receiver.reply(Reply::status(401));
        receiver.reply(Reply::status(408));
        receiver.reply(Reply::status(422));
        receiver.reply(Reply::status(502));

        let b = batch(Compression::Gzip);
        let after = |d: Delivery| match d {
            Delivery::Retry { after, .. } => after,
            other => panic!("not a retry: {other:?}"),
        };
        assert_eq!(after(uplink.deliver(&b).await), None);
        assert_eq!(
            after(uplink.deliver(&b).await),
            Some(Duration::from_secs(7))
        );
        let wait = after(uplink.deliver(&b).await).unwrap();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
        assert_eq!(after(uplink.deliver(&b).await), Some(RETRY_AFTER_MAX));
        assert_eq!(after(uplink.deliver(&b).await), None);
        assert_eq!(
            uplink.deliver(&b).await,
            Delivery::Refused {
                status: 400,
                reason: "reading 11: no unit".into()
            }
        );
        match uplink.deliver(&b).await {
            Delivery::Retry {
                after: None,
                reason,
            } => {
                assert!(reason.contains("401"), "{reason}");
                assert!(!reason.contains("s3cret"), "{reason}");
            }
            other => panic!("401: {other:?}"),
        }
        assert_eq!(after(uplink.deliver(&b).await), None, "408");
        assert!(matches!(
            uplink.deliver(&b).await,
            Delivery::Refused { status: 422, .. }
        ));
        assert_eq!(after(uplink.deliver(&b).await), None, "502");
        assert_eq!(uplink.deliver(&b).await, Delivery::Delivered);
    }

    #[tokio::test]
    async fn a_large_answer_is_read_in_part_and_the_next_delivery_still_goes() {
        let receiver = Receiver::start(None).await;
        let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
        receiver.reply(Reply::Status(413, Vec::new(), "x".repeat(1 << 20)));
        match uplink.deliver(&batch(Compression::Gzip)).await {
            Delivery::Refused { status, reason } => {
                assert_eq!(status, 413);
                assert_eq!(reason.len(), MAX_REASON);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            uplink.deliver(&batch(Compression::Gzip)).await,
            Delivery::Delivered
        );
    }

    #[tokio::test]
    async fn a_connection_the_receiver_closes_is_replaced() {
        let receiver = Receiver::start(None).await;
        let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
        receiver.reply(Reply::Status(
            200,
            vec![("connection", "close".into())],
            String::new(),
        ));
        for _ in 0..2 {
            assert_eq!(
                uplink.deliver(&batch(Compression::Gzip)).await,
                Delivery::Delivered
            );
        }
        assert_eq!(receiver.connections(), 2);
        assert_eq!(receiver.requests().len(), 2);
    }

    #[tokio::test]
    async fn no_receiver_is_a_retry() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut uplink = HttpUplink::new(&sink(format!("http://127.0.0.1:{port}/"))).unwrap();
        let reason = retry_reason(uplink.deliver(&batch(Compression::Gzip)).await);
        assert!(reason.contains("connecting"), "{reason}");
    }

    #[tokio::test]
    async fn a_silent_receiver_is_a_retry_within_the_timeout() {
        let receiver = Receiver::start(None).await;
        receiver.reply(Reply::Hang);
        let mut config = sink(format!("http://{}/", receiver.addr));
        config.timeout = Some(HumanDuration(Duration::from_millis(300)));
        let mut uplink = HttpUplink::new(&config).unwrap();
        let started = Instant::now();
        let reason = retry_reason(uplink.deliver(&batch(Compression::Gzip)).await);
        assert!(reason.contains("no answer"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The hung connection is given up: the next delivery opens another.
        assert_eq!(
            uplink.deliver(&batch(Compression::Gzip)).await,
            Delivery::Delivered
        );
        assert_eq!(receiver.connections(), 2);
    }

    /// An HTTPS receiver that requires a client certificate of the CA made in `dir`.
    async fn https_receiver(dir: &std::path::Path) -> (Receiver, pki::TlsFiles) {
        let (files, _) = pki::ensure(dir).unwrap();
        let config = server_config(
            &TlsPaths {
                cert: &files.server_cert,
                key: &files.server_key,
                client_ca: &files.ca_cert,
                crls: &[],
            },
            ClientAuth::Required,
        )
        .unwrap();
        (Receiver::start(Some(Arc::new(config))).await, files)
    }

    #[tokio::test]
    async fn https_with_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (receiver, files) = https_receiver(dir.path()).await;
        let mut config = sink(format!("https://localhost:{}/ingest", receiver.addr.port()));
        config.ca = Some(files.ca_cert.clone());
        config.client_cert = Some(files.admin_cert.clone());
        config.client_key = Some(files.admin_key.clone());
        let mut uplink = HttpUplink::new(&config).unwrap();
        for _ in 0..2 {
            assert_eq!(
                uplink.deliver(&batch(Compression::Zstd)).await,
                Delivery::Delivered
            );
        }
        assert_eq!(receiver.connections(), 1);
        let seen = receiver.requests();
        assert_eq!(decompress(&seen[0].body, Compression::Zstd), BODY);

        // A receiver whose certificate another CA signed is not trusted.
        let other = tempfile::tempdir().unwrap();
        let (other_files, _) = pki::ensure(other.path()).unwrap();
        config.ca = Some(other_files.ca_cert);
        let mut uplink = HttpUplink::new(&config).unwrap();
        let reason = retry_reason(uplink.deliver(&batch(Compression::Zstd)).await);
        assert!(reason.contains("TLS"), "{reason}");
    }

    #[tokio::test]
    async fn https_without_a_client_certificate_is_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (receiver, files) = https_receiver(dir.path()).await;
        let mut config = sink(format!("https://127.0.0.1:{}/", receiver.addr.port()));
        config.ca = Some(files.ca_cert);
        let mut uplink = HttpUplink::new(&config).unwrap();
        assert!(matches!(
            uplink.deliver(&batch(Compression::Gzip)).await,
            Delivery::Retry { after: None, .. }
        ));
        assert!(receiver.requests().is_empty());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for url in [
            "http://127.0.0.1:9/",
            "http://localhost/x",
            "http://[::1]:8080/",
        ] {
            assert!(HttpUplink::new(&sink(url.into())).is_ok(), "{url}");
        }
        for url in [
            "http://example.com/ingest",
            "http://10.0.0.5:8080/",
            "ftp://127.0.0.1/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(
                matches!(
                    HttpUplink::new(&sink(url.into())),
                    Err(SyncError::Config { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn token_file_is_read_once_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  t0ken\n").unwrap();
        let mut config = sink("http://127.0.0.1:9/".into());
        config.token = None;
        config.token_file = Some(path.clone());
        let uplink = HttpUplink::new(&config).unwrap();
        assert_eq!(uplink.headers[header::AUTHORIZATION], "Bearer t0ken");

        config.token_file = Some(dir.path().join("missing"));
        match HttpUplink::new(&config) {
            Err(SyncError::Config { reason, .. }) => assert!(reason.contains("token_file")),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a missing token file was taken"),
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = time::OffsetDateTime::from_unix_timestamp(784_111_777).unwrap(); // 1994-11-06 08:49:37
        let parse = |v: &str| retry_after(Some(&HeaderValue::from_str(v).unwrap()), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse("99999"), Some(RETRY_AFTER_MAX));
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("tomorrow"), None);
        assert_eq!(retry_after(None, now), None);
    }
}
