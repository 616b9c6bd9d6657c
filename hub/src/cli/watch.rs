//! `hub watch`: the running hub's live stream (`GET /api/v1/stream`) in the terminal.
//!
//! It subscribes with the same device and metric patterns as the WebSocket API and prints one line
//! per durable reading (`2026-12-04T10:00:00.000Z greenhouse-1 temp=21.5 door=false`), per device
//! event and per command state change, or the stream's own JSON messages one per line with
//! `--json`. It runs until interrupted, or until `--count` readings were printed.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};

use super::{CONNECT_TIMEOUT, CliError, RunningHub};
use crate::config::Config;

/// What `hub watch` shows.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Device-id patterns (`*` matches any run); all devices when empty.
    pub devices: Vec<String>,
    /// Metric patterns; all metrics when empty.
    pub metrics: Vec<String>,
    /// Device and command events too.
    pub events: bool,
    /// The stream's JSON messages as they come, one per line.
    pub json: bool,
    /// Stop after this many readings.
    pub count: Option<u64>,
}

/// Streams until interrupted, the hub ends the stream, or `options.count` readings were shown;
/// each line goes to `line`.
pub async fn watch(
    config: &Config,
    options: &WatchOptions,
    mut line: impl FnMut(&str),
) -> Result<(), CliError> {
    let hub = RunningHub::find(config)
        .await?
        .ok_or_else(|| CliError::NotRunning(config.api.listen.clone()))?;
    let url = format!("wss://{}/api/v1/stream", hub.host);
    let unreachable = |reason: String| CliError::Unreachable {
        url: url.clone(),
        reason,
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(hub.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(hub.tls.clone())
            .connect(hub.server_name.clone(), tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| CliError::Invalid(e.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", hub.token))
            .map_err(|_| CliError::Invalid("the admin token is not a header value".into()))?;
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        let (stream, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, CliError>(stream)
    };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT * 5, connect)
        .await
        .map_err(|_| unreachable("no answer in time".into()))??;
    let pattern_or_all = |patterns: &[String]| {
        if patterns.is_empty() {
            vec!["*".to_owned()]
        } else {
            patterns.to_vec()
        }
    };
    let subscribe = json!({
        "op": "subscribe",
        "id": "watch",
        "devices": pattern_or_all(&options.devices),
        "metrics": pattern_or_all(&options.metrics),
        "events": options.events,
    });
    stream
        .send(Message::text(subscribe.to_string()))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut readings = 0u64;
    while options.count.is_none_or(|count| readings < count) {
        let Some(message) = stream.next().await else {
            break;
        };
        let text = match message.map_err(|e| unreachable(e.to_string()))? {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(unreachable(format!("the hub closed the stream {reason}")));
            }
            _ => continue,
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match message["type"].as_str() {
            Some("reading") => readings += 1,
            Some("error") => {
                let detail = message["detail"].as_str().unwrap_or("").to_owned();
                return Err(CliError::Refused {
                    url,
                    status: 400,
                    detail,
                });
            }
            _ => {}
        }
        if options.json {
            line(&text);
        } else if let Some(shown) = render(&message) {
            line(&shown);
        }
    }
    let _ = stream.close(None).await;
    Ok(())
}

/// One stream message as a line for people; `None` for what they need not see.
fn render(message: &Value) -> Option<String> {
    let text = |key: &str| message[key].as_str().unwrap_or("?").to_owned();
    match message["type"].as_str()? {
        "reading" => {
            let metrics = message["metrics"].as_object()?;
            let values: Vec<String> = metrics
                .iter()
                .map(|(name, value)| match value {
                    Value::String(s) => format!("{name}={s:?}"),
                    other => format!("{name}={other}"),
                })
                .collect();
            Some(format!(
                "{} {} {}",
                text("ts"),
                text("device"),
                values.join(" ")
            ))
        }
        "device" => {
            let reason = message["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            Some(format!(
                "{} {} is {}{reason}",
                text("ts"),
                text("device"),
                text("event")
            ))
        }
        "command" => Some(format!(
            "command {} for {} is {}",
            message["id"],
            text("device"),
            text("state")
        )),
        "lagged" => Some(format!(
            "-- too slow: the hub dropped {} messages for this terminal",
            message["dropped"]
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_and_events_are_one_line_each() {
        let reading = json!({"type":"reading","subscriptions":["watch"],"device":"gh-1","offset":4,
            "seq":7,"ts":"2026-12-04T10:00:00.000Z","metrics":{"door":false,"mode":"auto","temp":21.5}});
        assert_eq!(
            render(&reading).unwrap(),
            r#"2026-12-04T10:00:00.000Z gh-1 door=false mode="auto" temp=21.5"#
        );
        let online = json!({"type":"device","device":"gh-1","event":"offline","reason":"silent",
            "ts":"2026-12-04T10:00:00.000Z"});
        assert_eq!(
            render(&online).unwrap(),
            "2026-12-04T10:00:00.000Z gh-1 is offline (silent)"
        );
        assert_eq!(render(&json!({"type":"subscribed","id":"watch"})), None);
    }
}
