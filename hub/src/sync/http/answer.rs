//! Response classification: what the receiver's answer means for the batch (delivered, sent
//! again later, or refused for good), and how much of it is read.
//!
//! Invariants: at most [`MAX_ANSWER`] bytes of an answer are read and [`MAX_REASON`] put in a
//! reason; a `Retry-After` is honoured up to [`RETRY_AFTER_MAX`]; an answer that needs the
//! operator (401, 403, 404, 405, 407) is logged once per change of status and never refused, as
//! the data is not at fault.

use std::time::Duration;

use axum::http::header::HeaderValue;
use axum::http::{Response, StatusCode};
use hyper::body::Incoming;

use super::{HttpUplink, MAX_ANSWER};
use crate::sync::Delivery;

/// Most bytes of an answer's body put in a reason.
pub(super) const MAX_REASON: usize = 512;
/// Longest `Retry-After` honoured: a receiver asking for more is asked again after this.
pub(super) const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

impl HttpUplink {
    /// The delivery an answer means.
    pub(super) fn judge(&mut self, answer: Answer) -> Delivery {
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
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<HeaderValue>,
    /// At most [`MAX_ANSWER`] bytes of the body.
    pub(super) body: Vec<u8>,
}

/// Reads at most [`MAX_ANSWER`] bytes of the body; whether it was read to its end.
pub(super) async fn read_capped(response: Response<Incoming>) -> (Vec<u8>, bool) {
    crate::http_client::read_capped(response, MAX_ANSWER).await
}

/// The start of a body, as text for a reason.
fn reason_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_REASON)])
        .trim()
        .to_owned()
}

/// The wait a `Retry-After` asks for: delta-seconds or an HTTP-date, at most
/// [`RETRY_AFTER_MAX`]; `None` when absent or unreadable.
pub(super) fn retry_after(
    value: Option<&HeaderValue>,
    now: time::OffsetDateTime,
) -> Option<Duration> {
    crate::http_client::retry_after(value, now, RETRY_AFTER_MAX)
}
