//! From a sink's configuration to an [`HttpUplink`]: the URL, TLS and the headers of every
//! request.
//!
//! Invariants: plain `http://` is only allowed to a loopback receiver; no credentials in the URL;
//! the bearer token (`token`, or `token_file` read once and trimmed) is never logged or put in an
//! error, its header value marked sensitive.

use std::path::Path;
use std::sync::Arc;

use axum::http::header::{self, HeaderMap, HeaderValue};
use rustls::pki_types::ServerName;

use super::{HttpUplink, Target};
use crate::config::SinkConfig;
use crate::sync::SyncError;

/// The TLS client configuration of a sink: its `ca` (else the system bundle) and its client
/// certificate for mutual TLS.
pub(in crate::sync) fn tls_config(config: &SinkConfig) -> Result<rustls::ClientConfig, SyncError> {
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

impl HttpUplink {
    /// An uplink for `config`; fails on an unusable URL, certificate or token file.
    pub fn new(config: &SinkConfig) -> Result<Self, SyncError> {
        let target = crate::http_client::Target::parse(&config.url)
            .map_err(|reason| config_error(config, reason))?;
        let host = target.host.clone();
        let port = target.port;
        let tls = if target.tls {
            let mut client = tls_config(config)?;
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            let server_name = ServerName::try_from(host.clone())
                .map_err(|e| config_error(config, format!("url host {host:?}: {e}")))?;
            Some((Arc::new(client), server_name))
        } else {
            None
        };
        let path = target.path.clone();

        let mut headers = HeaderMap::new();
        let host_header = HeaderValue::from_str(&target.authority)
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
