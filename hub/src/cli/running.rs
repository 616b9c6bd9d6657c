//! The running hub's API, as the admin: found on `api.listen`, trusted through the hub's CA.

use super::*;

/// The running hub's API, as the admin.
pub(super) struct RunningHub {
    pub(super) addr: SocketAddr,
    pub(super) server_name: ServerName<'static>,
    pub(super) host: String,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) token: String,
}

impl RunningHub {
    /// The hub listening on `api.listen`, or `None` when nothing listens there.
    pub(super) async fn find(config: &Config) -> Result<Option<RunningHub>, CliError> {
        let Ok(listen) = config.api.listen.parse::<SocketAddr>() else {
            return Ok(None);
        };
        if listen.port() == 0 {
            return Ok(None);
        }
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let reachable = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        if !reachable {
            return Ok(None);
        }
        // The first-run server certificate names localhost and the loopback addresses.
        let (server_name, host) = if addr.ip().is_loopback() {
            (
                ServerName::try_from("localhost").map_err(|e| CliError::Invalid(e.to_string()))?,
                format!("localhost:{}", addr.port()),
            )
        } else {
            (ServerName::IpAddress(addr.ip().into()), addr.to_string())
        };
        let data = &config.data.dir;
        let token_path = data.join("admin.token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(|source| CliError::AdminToken {
                path: token_path.clone(),
                source,
            })?
            .trim()
            .to_owned();
        let tls_dir = config.tls_dir();
        let ca = tls_dir.join("ca.crt");
        let (cert, key) = (
            tls_dir.join(pki::ADMIN_CLIENT_NAME).with_extension("crt"),
            tls_dir.join(pki::ADMIN_CLIENT_NAME).with_extension("key"),
        );
        // The admin client certificate, when there is one, for a hub that requires one.
        let client = (cert.exists() && key.exists()).then_some((cert.as_path(), key.as_path()));
        let tls = crate::auth::tls::client_config(Some(&ca), client)?;
        Ok(Some(RunningHub {
            addr,
            server_name,
            host,
            tls: Arc::new(tls),
            token,
        }))
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.host)
    }

    /// Sends one request; the answer's body if it succeeded, else why not.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, CliError> {
        let url = self.url(path);
        let unreachable = |reason: String| CliError::Unreachable {
            url: url.clone(),
            reason,
        };
        let exchange = async {
            let tls = Some((self.tls.clone(), self.server_name.clone()));
            let mut sender = crate::http_client::connect(self.addr, tls)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.host)
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(header::ACCEPT, "application/json");
            if body.is_some() {
                request = request.header(header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(body.map_or_else(Body::empty, Body::from))
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok::<_, CliError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable("no answer in time".into()))??;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let detail = problem["detail"]
            .as_str()
            .or(problem["title"].as_str())
            .unwrap_or("")
            .to_owned();
        Err(CliError::Refused {
            url,
            status: status.as_u16(),
            detail,
        })
    }
}
