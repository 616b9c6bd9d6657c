//! The hub's HTTPS API, as the benchmark needs it: a plain GET (for `/metrics`) and the
//! WebSocket stream, trusting only the hub's CA and sending the admin bearer token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where the API is and how to get in.
#[derive(Clone)]
pub struct Api {
    /// The API's address.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    /// The API at `addr`, its server certificate checked against the PEM CA in `ca`, with the
    /// token read from `token_file`.
    pub fn new(addr: SocketAddr, ca: &Path, token_file: &Path) -> anyhow::Result<Api> {
        // Only the ring provider is compiled in; a second install (another tool part) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.context("a certificate of the CA file")?)?;
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(Api {
            addr,
            token,
            tls: Arc::new(tls),
        })
    }

    /// A TLS connection to the API (the first-run certificate names `localhost`).
    pub async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(connector.connect(name, tcp).await?)
    }

    /// GET `path`; the body of a 200 answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut tls = self.connect().await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // The hub closes after the answer (Connection: close); a TLS close without close_notify
        // still leaves the whole body read.
        if let Err(e) = tls.read_to_end(&mut response).await
            && response.is_empty()
        {
            return Err(e.into());
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("an HTTP answer without a body")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        if status != "200" {
            bail!("GET {path}: HTTP {status}");
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(body)
    }

    /// A sample of a counter or gauge in `/metrics`: the line `name` (with its labels, exactly
    /// as the hub writes them) and its value.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let body = self.get("/metrics").await?;
        find_sample(&body, sample).with_context(|| format!("{sample} is not in /metrics"))
    }
}

/// The value of the sample `name` (labels included) in Prometheus text.
pub fn find_sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_labelled_sample() {
        let body = "# HELP x\nhub_store_items_total{outcome=\"stored\"} 1234\nhub_store_items_total{outcome=\"duplicate\"} 5\n";
        assert_eq!(
            find_sample(body, "hub_store_items_total{outcome=\"stored\"}"),
            Some(1234.0)
        );
        assert_eq!(find_sample(body, "hub_store_items_total"), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
