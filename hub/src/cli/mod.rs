//! `hub token ...` and `hub certs ...`: what an operator runs next to the hub.
//!
//! Token commands must work while the hub runs, and the running hub holds the store's lock, so
//! they go through its HTTPS API (`api.listen`, trusting `<data.dir>/tls/ca.crt`, with the admin
//! token of `<data.dir>/admin.token`). When nothing listens there they open the store directly
//! and do the same through [`TokenRegistry`]. They say on stderr which of the two they did.
//!
//! Certificate commands only read the CA's files, so they work whether or not the hub runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, header};
use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::api::tokens::{CreatedToken, TokenList, TokenSummary};
use crate::auth::tokens::TokenSpec;
use crate::auth::{AuthError, TokenRegistry, pki};
use crate::config::Config;
use crate::files;
use crate::store::{self, Store, StoreError};

mod watch;
pub use watch::{WatchOptions, watch};

/// How long the CLI tries to reach the running hub before deciding that none runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer the CLI reads.
const MAX_ANSWER: usize = 8 << 20;

/// What a CLI command can fail with. No variant ever holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The running hub answered with an error.
    #[error("the hub at {url} refused: {status} {detail}")]
    Refused {
        /// Where.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its problem detail (or title).
        detail: String,
    },
    /// The running hub could not be talked to.
    #[error("the hub at {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The admin token file is missing or unreadable.
    #[error(
        "cannot read the admin token {path}: {source} (the hub writes it on its first run; pass --data-dir or --config to point at its data)"
    )]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory does not exist.
    #[error(
        "no data directory at {0} (start the hub once to make it, or pass --data-dir or --config)"
    )]
    NoDataDir(PathBuf),
    /// The store could not be opened directly.
    #[error(
        "cannot open the store in {dir} ({source}); if a hub runs on this data, it does not listen on api.listen {listen}: pass --api-listen or --config"
    )]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The listen address tried.
        listen: String,
        /// Why.
        source: StoreError,
    },
    /// The CA files are missing.
    #[error("no CA at {0} (the hub makes one on its first run)")]
    NoCa(PathBuf),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file to write exists already.
    #[error("{0} exists already; remove it or pick another --out")]
    Exists(PathBuf),
    /// The arguments are invalid.
    #[error("{0}")]
    Invalid(String),
    /// Tokens or certificates failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An answer could not be read.
    #[error("unexpected answer from the hub: {0}")]
    Answer(String),
    /// The command needs a running hub and none listens.
    #[error("no hub listens on {0} (start it, or pass --config / --api-listen to point at it)")]
    NotRunning(String),
    /// The command needs the hub stopped.
    #[error("a hub runs on {0}: stop it first (systemctl stop hub)")]
    Running(String),
    /// A backup or a restore failed.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

impl CliError {
    /// The process exit code: 2 for what the operator typed, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Invalid(_) => 2,
            _ => 1,
        }
    }
}

/// What `hub token` does.
#[derive(Debug, Clone)]
pub enum TokenAction {
    /// Make a token; print its secret alone on stdout.
    Create(TokenSpec),
    /// List tokens, as a table or as JSON.
    List {
        /// JSON instead of a table.
        json: bool,
    },
    /// Revoke the token with this id.
    Revoke(String),
}

/// Runs a `hub token` command.
pub async fn token(config: &Config, action: TokenAction) -> Result<(), CliError> {
    // What the operator typed is checked before anything is opened or asked.
    match &action {
        TokenAction::Create(spec) => {
            spec.validate(0).map_err(|e| CliError::Invalid(e.0))?;
        }
        TokenAction::Revoke(id) => check_id(id)?,
        TokenAction::List { .. } => {}
    }
    match RunningHub::find(config).await? {
        Some(hub) => {
            eprintln!("hub: through the running hub at {}", hub.url(""));
            token_remote(&hub, action).await
        }
        None => {
            eprintln!(
                "hub: no hub listening on {}; using the store in {} directly",
                config.api.listen,
                config.data.dir.display()
            );
            let registry = open_local(config)?;
            tokio::task::spawn_blocking(move || token_local(&registry, action))
                .await
                .map_err(|e| CliError::Answer(e.to_string()))?
        }
    }
}

async fn token_remote(hub: &RunningHub, action: TokenAction) -> Result<(), CliError> {
    match action {
        TokenAction::Create(spec) => {
            #[derive(Serialize)]
            struct NewTokenBody<'a> {
                name: &'a str,
                scopes: &'a [String],
                devices: &'a [String],
                expires: Option<&'a str>,
            }
            let body = serde_json::to_string(&NewTokenBody {
                name: &spec.name,
                scopes: &spec.scopes,
                devices: &spec.devices,
                expires: spec.expires.as_deref(),
            })
            .map_err(|e| CliError::Answer(e.to_string()))?;
            let answer = hub.call(Method::POST, "/api/v1/tokens", Some(body)).await?;
            let created: CreatedToken = serde_json::from_slice(&answer)
                .map_err(|e| CliError::Answer(format!("token: {e}")))?;
            eprintln!(
                "hub: made token {} ({}); its secret is shown once, below",
                created.id, created.name
            );
            println!("{}", created.secret);
            Ok(())
        }
        TokenAction::List { json } => {
            let answer = hub.call(Method::GET, "/api/v1/tokens", None).await?;
            let list: TokenList = serde_json::from_slice(&answer)
                .map_err(|e| CliError::Answer(format!("token list: {e}")))?;
            print_list(&list, json)
        }
        TokenAction::Revoke(id) => {
            check_id(&id)?;
            hub.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            eprintln!("hub: revoked token {id}");
            Ok(())
        }
    }
}

fn token_local(registry: &TokenRegistry, action: TokenAction) -> Result<(), CliError> {
    match action {
        TokenAction::Create(spec) => {
            let record = spec
                .validate(crate::clock::now_ms())
                .map_err(|e| CliError::Invalid(e.0))?;
            let (secret, info) = registry.create_token(record)?;
            eprintln!(
                "hub: made token {} ({}); its secret is shown once, below",
                info.id, info.record.name
            );
            println!("{secret}");
            Ok(())
        }
        TokenAction::List { json } => {
            let tokens = registry.list().iter().map(TokenSummary::new).collect();
            print_list(&TokenList { tokens }, json)
        }
        TokenAction::Revoke(id) => {
            check_id(&id)?;
            match registry.revoke(&id)? {
                Some(_) => {
                    eprintln!("hub: revoked token {id}");
                    Ok(())
                }
                None => Err(CliError::Invalid(format!("no token {id:?}"))),
            }
        }
    }
}

fn check_id(id: &str) -> Result<(), CliError> {
    let ok = id.len() == crate::auth::tokens::ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "{id:?} is not a token id (16 hex digits, as `hub token list` shows)"
        )))
    }
}

fn print_list(list: &TokenList, json: bool) -> Result<(), CliError> {
    if json {
        let text =
            serde_json::to_string_pretty(list).map_err(|e| CliError::Answer(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    print!("{}", table(&list.tokens));
    Ok(())
}

/// The token list as a table with a header line, columns padded to their widest cell.
pub fn table(tokens: &[TokenSummary]) -> String {
    let dash = || "-".to_owned();
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "SCOPES",
            "DEVICES",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "REVOKED",
        ]
        .map(str::to_owned),
    ];
    for t in tokens {
        rows.push([
            t.id.clone(),
            t.name.clone(),
            t.scopes.join(","),
            if t.devices.is_empty() {
                "*".to_owned()
            } else {
                t.devices.join(",")
            },
            t.created.clone(),
            t.expires.clone().unwrap_or_else(dash),
            t.last_used.clone().unwrap_or_else(dash),
            if t.revoked { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Opens the store of `config` directly, for when no hub runs.
fn open_local(config: &Config) -> Result<TokenRegistry, CliError> {
    let store = open_store(config)?;
    Ok(TokenRegistry::open(
        &config.data.dir.join("token.key"),
        store,
    )?)
}

/// The store of a hub that is not running.
fn open_store(config: &Config) -> Result<Store, CliError> {
    let dir = &config.data.dir;
    if !dir.is_dir() {
        return Err(CliError::NoDataDir(dir.clone()));
    }
    let store_err = |source| CliError::Store {
        dir: dir.clone(),
        listen: config.api.listen.clone(),
        source,
    };
    let engine = store::open_engine(config.data.engine, dir, config.data.cache.0 as usize)
        .map_err(store_err)?;
    Store::open(engine).map_err(store_err)
}

/// `hub status`: a one-screen summary of the running hub, from its `/metrics` (read twice, a
/// second apart, for the rates) and `/api/v1/sync/status`.
pub async fn status(config: &Config) -> Result<String, CliError> {
    let hub = RunningHub::find(config)
        .await?
        .ok_or_else(|| CliError::NotRunning(config.api.listen.clone()))?;
    let first = hub.call(Method::GET, "/metrics", None).await?;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = hub.call(Method::GET, "/metrics", None).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sync = hub.call(Method::GET, "/api/v1/sync/status", None).await?;
    let sync: serde_json::Value =
        serde_json::from_slice(&sync).map_err(|e| CliError::Answer(e.to_string()))?;
    let (first, second) = (
        String::from_utf8_lossy(&first).into_owned(),
        String::from_utf8_lossy(&second).into_owned(),
    );
    Ok(status_screen(&hub.url(""), &first, &second, elapsed, &sync))
}

/// The sum of the samples of `family` whose labels contain `having` (all when empty).
fn metric(text: &str, family: &str, having: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(having))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn size(bytes: f64) -> String {
    match bytes {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b / 1024.0),
    }
}

fn status_screen(
    url: &str,
    first: &str,
    second: &str,
    seconds: f64,
    sync: &serde_json::Value,
) -> String {
    use std::fmt::Write as _;
    let rate = |family: &str, having: &str| {
        (metric(second, family, having) - metric(first, family, having)).max(0.0) / seconds
    };
    let up = metric(second, "process_start_time_seconds", "");
    let uptime = (crate::clock::now_ms() / 1000).saturating_sub(up as u64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hub at {url}  up {}h{:02}m  rss {}  mqtt {}",
        uptime / 3600,
        uptime % 3600 / 60,
        size(metric(second, "process_resident_memory_bytes", "")),
        if metric(second, "hub_mqtt_connected", "") > 0.0 {
            "connected"
        } else {
            "NOT connected"
        }
    );
    let _ = writeln!(
        out,
        "devices    {} known, {} online",
        metric(second, "hub_devices", ""),
        metric(second, "hub_devices_online", "")
    );
    let stalled = metric(second, "hub_ingest_stalled_seconds", "");
    let _ = writeln!(
        out,
        "ingest     {:.0} readings/s stored, {:.0}/s skipped (bad input), {} QoS 0 dropped{}",
        rate("hub_store_items_total", "outcome=\"stored\""),
        rate("hub_ingest_messages_total", "")
            - rate("hub_ingest_messages_total", "outcome=\"accepted\""),
        metric(second, "hub_ingest_dropped_total", ""),
        if stalled > 0.0 {
            format!("  STALLED for {stalled:.0} s: readings wait, no commit finishes")
        } else {
            String::new()
        },
    );
    let store = &sync["store"];
    let _ = writeln!(
        out,
        "store      {} readings, file {} of {} quota{}, {} dropped unsynced",
        store["readings"],
        size(store["file_bytes"].as_f64().unwrap_or(0.0)),
        size(store["max_disk"].as_f64().unwrap_or(0.0)),
        if store["refusing_reason"] == "disk_full" {
            "  DISK FULL: new readings not stored nor acknowledged until the file system has room"
        } else if store["refusing"] == true {
            " FULL: refusing new readings"
        } else {
            ""
        },
        store["dropped"]
    );
    let sinks = sync["sinks"].as_array().cloned().unwrap_or_default();
    let consumers = sync["consumers"].as_array().cloned().unwrap_or_default();
    if sinks.is_empty() && consumers.is_empty() {
        let _ = writeln!(out, "sync       no sinks, no pull consumers");
    }
    for sink in &sinks {
        let f = &sink["follower"];
        let _ = writeln!(
            out,
            "sink       {} ({})  lag {} readings, {} s  delivered {}  parked {}{}",
            f["name"].as_str().unwrap_or(""),
            sink["kind"].as_str().unwrap_or(""),
            f["lag_readings"],
            f["lag_seconds"],
            sink["delivered"],
            sink["parked"],
            sink["error"]
                .as_str()
                .map(|e| format!("  FAILING: {e}"))
                .unwrap_or_default()
        );
    }
    for consumer in &consumers {
        let _ = writeln!(
            out,
            "consumer   {}  lag {} readings, {} s",
            consumer["name"].as_str().unwrap_or(""),
            consumer["lag_readings"],
            consumer["lag_seconds"]
        );
    }
    out
}

/// `hub backup`: a consistent backup. Through the running hub when one runs (it holds the
/// store), else directly. Returns where the backup is.
pub async fn backup(config: &Config, out: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(out) = out
        && out.exists()
    {
        return Err(CliError::Exists(out.to_owned()));
    }
    let made = match RunningHub::find(config).await? {
        Some(hub) => {
            let answer = hub.call(Method::POST, "/api/v1/backups", None).await?;
            let made: crate::api::BackupMade =
                serde_json::from_slice(&answer).map_err(|e| CliError::Answer(e.to_string()))?;
            eprintln!("backup made by the running hub");
            config.data.dir.join(made.dir)
        }
        None => {
            let store = open_store(config)?;
            let made = crate::backup::backup_in_place(
                &store,
                config.data.engine,
                &config.data.dir,
                crate::clock::now_ms(),
            )?;
            eprintln!(
                "no hub runs on {}: backup made from the store directly",
                config.api.listen
            );
            made.dir
        }
    };
    match out {
        Some(out) => {
            std::fs::rename(&made, out).map_err(|source| CliError::File {
                path: out.to_owned(),
                source,
            })?;
            Ok(out.to_owned())
        }
        None => Ok(made),
    }
}

/// `hub restore`: puts a backup into the data directory; the hub must be stopped.
pub async fn restore(config: &Config, from: &Path, force: bool) -> Result<(), CliError> {
    if RunningHub::find(config).await?.is_some() {
        return Err(CliError::Running(config.api.listen.clone()));
    }
    crate::backup::restore(from, config.data.engine, &config.data.dir, force)?;
    Ok(())
}

/// The running hub's API, as the admin.
struct RunningHub {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: String,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

impl RunningHub {
    /// The hub listening on `api.listen`, or `None` when nothing listens there.
    async fn find(config: &Config) -> Result<Option<RunningHub>, CliError> {
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

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.host)
    }

    /// Sends one request; the answer's body if it succeeded, else why not.
    async fn call(
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
            let mut sender = crate::sync::http::connect(self.addr, tls)
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

/// Which kind of certificate `hub certs` issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// An API client (an app).
    Client,
    /// A device.
    Device,
}

/// Issues a certificate for `name`, signed by the hub's CA, valid for `days`, and writes
/// `NAME.crt` and `NAME.key` (mode 0600) in `out` (default `<data.dir>/tls/clients/` or
/// `tls/devices/`). Returns the paths of the certificate and the key.
pub fn issue_cert(
    config: &Config,
    kind: CertKind,
    name: &str,
    days: u32,
    out: Option<&Path>,
) -> Result<(PathBuf, PathBuf), CliError> {
    if !device_protocol::is_valid_id(name) {
        let what = match kind {
            CertKind::Client => "--name",
            CertKind::Device => "--id",
        };
        return Err(CliError::Invalid(format!(
            "{what}: {name:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
        )));
    }
    if days == 0 || days > pki::MAX_ISSUE_DAYS {
        return Err(CliError::Invalid(format!(
            "--days: 1 to {}",
            pki::MAX_ISSUE_DAYS
        )));
    }
    let tls_dir = config.tls_dir();
    let (ca_cert, ca_key) = (tls_dir.join("ca.crt"), tls_dir.join("ca.key"));
    for path in [&ca_cert, &ca_key] {
        if !path.exists() {
            return Err(CliError::NoCa(path.clone()));
        }
    }
    let out = match out {
        Some(dir) => dir.to_owned(),
        None => tls_dir.join(match kind {
            CertKind::Client => "clients",
            CertKind::Device => "devices",
        }),
    };
    if !out.is_dir() {
        files::create_private_dir(&out).map_err(|source| CliError::File {
            path: out.clone(),
            source,
        })?;
    }
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CliError::Exists(path.clone()));
        }
    }
    // The role goes into the certificate: the API never takes a device's certificate for a
    // client's, whatever its name.
    let role = match kind {
        CertKind::Client => pki::Role::Client,
        CertKind::Device => pki::Role::Device,
    };
    let issued = pki::issue_client(&ca_cert, &ca_key, name, days, role)?;
    let write = |path: &PathBuf, text: &str| {
        files::write_private(path, text.as_bytes()).map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })
    };
    write(&key_path, &issued.key_pem)?;
    write(&cert_path, &issued.cert_pem)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, devices: &[&str], last_used: Option<&str>) -> TokenSummary {
        TokenSummary {
            created: "2026-01-01T00:00:00.000Z".into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            expires: None,
            id: id.into(),
            last_used: last_used.map(str::to_owned),
            name: "app-1".into(),
            revoked: false,
            scopes: vec!["read".into(), "command".into()],
        }
    }

    #[test]
    fn the_table_has_a_header_and_a_line_per_token() {
        let text = table(&[
            summary("0123456789abcdef", &[], None),
            summary("fedcba9876543210", &["greenhouse-*"], Some("x")),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID") && lines[0].contains("LAST USED"));
        assert!(lines[1].contains("read,command") && lines[1].contains(" * "));
        assert!(lines[2].contains("greenhouse-*"));
    }

    #[test]
    fn ids_are_checked_before_anything_is_asked() {
        assert!(check_id("0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            "../../etc",
        ] {
            assert!(matches!(check_id(bad), Err(CliError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn certificates_are_issued_by_the_ca_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.data.dir = dir.path().to_owned();
        assert!(matches!(
            issue_cert(&config, CertKind::Client, "app-1", 30, None),
            Err(CliError::NoCa(_))
        ));
        pki::ensure(&config.tls_dir()).unwrap();
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(matches!(
                issue_cert(&config, CertKind::Client, bad, 30, None),
                Err(CliError::Invalid(_))
            ));
        }
        assert!(matches!(
            issue_cert(&config, CertKind::Device, "dev-1", 0, None),
            Err(CliError::Invalid(_))
        ));
        let (cert, key) = issue_cert(&config, CertKind::Device, "dev-1", 30, None).unwrap();
        assert_eq!(cert, config.tls_dir().join("devices/dev-1.crt"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            std::fs::read_to_string(&cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(matches!(
            issue_cert(&config, CertKind::Device, "dev-1", 30, None),
            Err(CliError::Exists(_))
        ));
    }

    #[test]
    fn the_status_screen_shows_dropped_readings_and_a_stall() {
        let first = "hub_store_items_total{outcome=\"stored\"} 100\n";
        let second = "hub_store_items_total{outcome=\"stored\"} 300\n\
            hub_ingest_dropped_total{transport=\"mqtt\",reason=\"commit_failed\"} 7\n\
            hub_ingest_stalled_seconds 12\n";
        let screen = status_screen("https://h", first, second, 2.0, &serde_json::json!({}));
        assert!(
            screen.contains(
                "100 readings/s stored, 0/s skipped (bad input), 7 QoS 0 dropped  STALLED for 12 s"
            ),
            "{screen}"
        );
        let calm = status_screen("https://h", first, first, 2.0, &serde_json::json!({}));
        assert!(calm.contains("0 QoS 0 dropped\n"), "{calm}");
    }

    #[test]
    fn the_status_screen_tells_a_full_disk_from_a_full_quota() {
        let screen = |reason: serde_json::Value| {
            let sync = serde_json::json!({"store": {"refusing": true, "refusing_reason": reason}});
            status_screen("https://h", "", "", 1.0, &sync)
        };
        let disk = screen("disk_full".into());
        assert!(
            disk.contains("DISK FULL: new readings not stored nor acknowledged"),
            "{disk}"
        );
        let quota = screen("quota".into());
        assert!(quota.contains(" FULL: refusing new readings"), "{quota}");
        assert!(!quota.contains("DISK FULL"), "{quota}");
    }
}
