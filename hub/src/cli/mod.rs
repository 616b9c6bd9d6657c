//! What an operator runs next to the hub, one file per command: `hub token` (token.rs), `hub
//! device-credential` (credential.rs), `hub certs` (certs.rs), `hub status` (status.rs), `hub
//! backup` and `hub restore` (backup.rs), `hub watch` (watch.rs); here, what they share: their
//! errors, printing, and opening the store directly.
//!
//! Commands that need the running hub go through its HTTPS API (running.rs: `api.listen`,
//! trusting `<data.dir>/tls/ca.crt`, with the admin token of `<data.dir>/admin.token`), since the
//! running hub holds the store's lock. Token and credential commands, when nothing listens there, open the store
//! directly and say on stderr which of the two they did. Certificate commands only read the CA's
//! files, so they work whether or not the hub runs.

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

mod backup;
mod certs;
mod credential;
mod running;
mod status;
mod token;
mod watch;

pub use backup::{backup, restore};
pub use certs::{CertKind, CertRevoked, issue_cert, revoke_cert};
pub use credential::{CredentialAction, credential};
use running::RunningHub;
pub use status::status;
pub use token::{TokenAction, table, token};
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

/// Where a managing command goes: the running hub's API, or when none listens on `api.listen`,
/// the store directly.
enum Target {
    /// The running hub.
    Hub(RunningHub),
    /// The store of a hub that is not running.
    Store(Store),
}

impl Target {
    /// Finds where to go, and says on stderr which it is.
    async fn find(config: &Config) -> Result<Target, CliError> {
        match RunningHub::find(config).await? {
            Some(hub) => {
                eprintln!("hub: through the running hub at {}", hub.url(""));
                Ok(Target::Hub(hub))
            }
            None => {
                eprintln!(
                    "hub: no hub listening on {}; using the store in {} directly",
                    config.api.listen,
                    config.data.dir.display()
                );
                Ok(Target::Store(open_store(config)?))
            }
        }
    }
}

/// Runs `work` on the blocking pool (it opens or writes the store).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CliError::Answer(e.to_string()))?
}

/// `value` as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Answer(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `rows` (a header first) as lines of columns padded to their widest cell.
pub fn padded(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
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
    store::open(
        config.data.engine,
        dir,
        config.data.cache.0 as usize,
        config.data.write_path,
        config.data.log_config(),
    )
    .map_err(store_err)
}

#[cfg(test)]
mod tests {
    use super::status::status_screen;
    use super::token::check_id;
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
