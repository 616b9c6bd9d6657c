//! Webhook delivery: POSTs the alert transitions waiting in the store's outbox to their
//! receivers, until each answers 2xx.
//!
//! Inputs: the outbox (entries are added by the rules task in the same commit as the transitions
//! they notify) and a wake-up when it adds some. Invariants: an entry leaves the outbox only on a
//! 2xx; entries for one URL go strictly in order, one at a time, and a failing one holds back the
//! later ones of its URL (never those of other URLs), so a receiver sees each alert's transitions
//! in order; each carries `Idempotency-Key: {hub}.{rule}.{device}.{transition}`, the same on every
//! try, so a receiver that honours it takes each transition once; retries back off exponentially
//! with jitter up to [`MAX_BACKOFF`], longer when the receiver's `Retry-After` asks; one exchange
//! ends within [`TIMEOUT`]; at most [`MAX_ANSWER`] bytes of an answer are read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{jitter, now_ms};
use crate::http_client::{Target, connect, describe, read_capped, retry_after};
use crate::store::Store;
use crate::store::alerts::OutboxEntry;

/// One exchange (connecting included) ends within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry waits up to this; each failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between tries (and the longest `Retry-After` honoured).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Most bytes of an answer read.
const MAX_ANSWER: usize = 16 << 10;
/// Outbox entries looked at per pass.
const PASS: usize = 256;
/// How long the sender sleeps with nothing due (it is woken when entries are added).
const IDLE: Duration = Duration::from_secs(60);
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What the webhook sender counts.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Notifications a receiver took (2xx).
    pub delivered: AtomicU64,
    /// Tries that failed and will be made again.
    pub retried: AtomicU64,
}

/// The outbox's sender task.
pub struct WebhookSender {
    store: Store,
    /// TLS for `https://` receivers (the system's roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    wake: Arc<Notify>,
    stats: Arc<WebhookStats>,
    /// A kept-alive connection per URL.
    connections: HashMap<String, SendRequest<Body>>,
}

/// Why a try failed: the reason, and the wait the receiver asked for.
struct Failed {
    reason: String,
    retry_after: Option<Duration>,
}

impl WebhookSender {
    /// A sender over the store's outbox, woken by `wake`.
    pub fn new(
        store: Store,
        tls: Option<Arc<rustls::ClientConfig>>,
        wake: Arc<Notify>,
        stats: Arc<WebhookStats>,
    ) -> Self {
        WebhookSender {
            store,
            tls,
            wake,
            stats,
            connections: HashMap::new(),
        }
    }

    /// Delivers until `shutdown`; fails only if the store does.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), String> {
        loop {
            let store = self.store.clone();
            let entries = tokio::task::spawn_blocking(move || store.outbox(PASS))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the webhook outbox: {e}"))?;
            let mut held: HashSet<String> = HashSet::new();
            let mut next_due: Option<u64> = None;
            let mut delivered_any = false;
            for (number, mut entry) in entries {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if held.contains(&entry.url) {
                    continue;
                }
                let now = now_ms();
                if entry.next_ms > now {
                    next_due = Some(next_due.map_or(entry.next_ms, |d| d.min(entry.next_ms)));
                    held.insert(entry.url.clone());
                    continue;
                }
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    outcome = self.post(&entry) => outcome,
                };
                let saved = match outcome {
                    Ok(()) => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        delivered_any = true;
                        self.save(number, None).await
                    }
                    Err(failed) => {
                        entry.attempts = entry.attempts.saturating_add(1);
                        let wait =
                            backoff(entry.attempts).max(failed.retry_after.unwrap_or_default());
                        entry.next_ms = now_ms() + wait.as_millis() as u64;
                        self.stats.retried.fetch_add(1, Ordering::Relaxed);
                        if entry.attempts == 1 || entry.attempts % 10 == 0 {
                            tracing::warn!(url = %entry.url, key = %entry.key, attempts = entry.attempts, reason = %failed.reason, retry_in_ms = wait.as_millis() as u64, "webhook not taken; it stays in the outbox");
                        }
                        next_due = Some(next_due.map_or(entry.next_ms, |d| d.min(entry.next_ms)));
                        held.insert(entry.url.clone());
                        self.save(number, Some(entry)).await
                    }
                };
                saved?;
            }
            if delivered_any {
                // Entries behind the ones delivered may be due now.
                continue;
            }
            let sleep = next_due.map_or(IDLE, |due| {
                Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn save(&self, number: u64, entry: Option<OutboxEntry>) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.update_outbox(number, entry.as_ref()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("updating the webhook outbox: {e}"))
    }

    /// One try: Ok on a 2xx.
    async fn post(&mut self, entry: &OutboxEntry) -> Result<(), Failed> {
        let failed = |reason: String| Failed {
            reason,
            retry_after: None,
        };
        let target = Target::parse(&entry.url).map_err(failed)?;
        let key = HeaderValue::from_str(&entry.key)
            .map_err(|_| failed(format!("key {:?} is not a header value", entry.key)))?;
        let request = Request::post(&target.path)
            .header(header::HOST, &target.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("hub/", env!("CARGO_PKG_VERSION")),
            )
            .header(IDEMPOTENCY_KEY, key)
            .body(Body::from(entry.body.clone()))
            .map_err(|e| failed(format!("building the request: {e}")))?;
        match tokio::time::timeout(TIMEOUT, self.exchange(&entry.url, &target, request)).await {
            Ok(result) => result,
            Err(_) => {
                self.connections.remove(&entry.url);
                Err(failed(format!("no answer within {TIMEOUT:?}")))
            }
        }
    }

    async fn exchange(
        &mut self,
        url: &str,
        target: &Target,
        request: Request<Body>,
    ) -> Result<(), Failed> {
        let failed = |reason: String| Failed {
            reason,
            retry_after: None,
        };
        let mut kept = self.connections.remove(url);
        if let Some(sender) = kept.as_mut()
            && sender.ready().await.is_err()
        {
            kept = None;
        }
        let mut sender = match kept {
            Some(kept) => kept,
            None => {
                let tls = if target.tls {
                    let config = self
                        .tls
                        .clone()
                        .ok_or_else(|| failed("no TLS configuration for https".into()))?;
                    let name = ServerName::try_from(target.host.clone())
                        .map_err(|e| failed(format!("host {:?}: {e}", target.host)))?;
                    Some((config, name))
                } else {
                    None
                };
                connect((target.host.as_str(), target.port), tls)
                    .await
                    .map_err(|e| failed(format!("{}:{}: {e}", target.host, target.port)))?
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(describe(&e)))?;
        let status = response.status();
        let wait = retry_after(
            response.headers().get(header::RETRY_AFTER),
            time::OffsetDateTime::now_utc(),
            MAX_BACKOFF,
        );
        let (body, complete) = read_capped(response, MAX_ANSWER).await;
        if complete {
            self.connections.insert(url.to_owned(), sender);
        }
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(256)])
            .trim()
            .to_owned();
        Err(Failed {
            reason: format!("{status}: {text}"),
            retry_after: wait,
        })
    }
}

/// The wait after the `attempts`-th failed try: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], jittered so receivers coming back are not hit in step.
fn backoff(attempts: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    jitter(doubled.min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        let t = Target::parse("https://alerts.example.com/hook?x=1").expect("https");
        assert_eq!((t.port, t.tls, t.path.as_str()), (443, true, "/hook?x=1"));
        assert!(Target::parse("http://127.0.0.1:9/hook").is_ok());
        assert!(Target::parse("http://alerts.example.com/hook").is_err());
        assert!(Target::parse("https://user:pw@example.com/").is_err());
        assert!(Target::parse("ftp://example.com/").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert!(backoff(1) <= FIRST_BACKOFF && backoff(1) >= FIRST_BACKOFF / 2);
        assert!(backoff(3) <= FIRST_BACKOFF * 4 && backoff(3) >= FIRST_BACKOFF * 2);
        assert!(backoff(40) <= MAX_BACKOFF && backoff(40) >= MAX_BACKOFF / 2);
    }
}
