//! The `http` sink's uplink: POSTs each batch to one URL over a kept-alive HTTP/1.1 connection
//! and turns the receiver's answer into a [`Delivery`].
//!
//! Inputs: the sink's [`SinkConfig`] (URL, token, TLS material, timeout) and one [`Batch`] per
//! call. Invariants: one request per [`HttpUplink::deliver`], never retried here (the sink loop
//! owns back-off); the whole exchange, connecting included, ends within the sink's timeout; at
//! most [`MAX_ANSWER`] bytes of an answer are read; the bearer token is never logged or put in a
//! reason. Plain `http://` is only allowed to a loopback receiver (tests, a local relay).
//!
//! Here: building each request and the exchange on the kept connection. `setup` turns the
//! config into an uplink, `connection` opens connections, `answer` says what an answer means.

mod answer;
mod setup;
#[cfg(test)]
pub(crate) mod test_receiver;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;

use self::answer::{Answer, read_capped};
pub(super) use self::setup::tls_config;
use super::{Batch, Delivery};
use crate::config::Compression;
use crate::http_client::{connect, describe};

/// Most bytes of an answer's body read (for the reason of a refusal or a retry).
pub const MAX_ANSWER: usize = 64 << 10;
/// How long a kept connection may take to be ready for the next request before a new one is
/// opened instead (the request has not been sent then, so this is no retry).
const READY_WAIT: Duration = Duration::from_secs(1);
/// The header that lets a receiver drop a batch it has already taken.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

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
}
