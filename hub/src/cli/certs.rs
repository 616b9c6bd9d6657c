//! `hub certs ...`: certificates signed by the hub's CA.

use super::*;

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

/// What `hub certs revoke` did.
#[derive(Debug)]
pub struct CertRevoked {
    /// The certificate's serial, hex.
    pub serial: String,
    /// Whether it was revoked before already.
    pub already: bool,
    /// The revocation list written.
    pub crl: PathBuf,
    /// Where the revoked certificate and key went (`NAME.crt.revoked`), so the name can be
    /// issued again.
    pub moved_to: Option<PathBuf>,
}

/// Revokes the certificate of `name` issued by `hub certs` (`tls/clients/NAME.crt` or
/// `tls/devices/NAME.crt`), or the one in `cert` (a PEM file the hub's CA issued), and writes the
/// CA's revocation list. A running hub applies it on SIGHUP. The revoked certificate and key are
/// renamed `NAME.crt.revoked` and `NAME.key.revoked`, so the name can be issued a new one.
pub fn revoke_cert(
    config: &Config,
    kind: CertKind,
    name: &str,
    cert: Option<&Path>,
) -> Result<CertRevoked, CliError> {
    if !device_protocol::is_valid_id(name) {
        return Err(CliError::Invalid(format!(
            "{name:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
        )));
    }
    let tls_dir = config.tls_dir();
    for path in [tls_dir.join("ca.crt"), tls_dir.join("ca.key")] {
        if !path.exists() {
            return Err(CliError::NoCa(path));
        }
    }
    let issued_dir = tls_dir.join(match kind {
        CertKind::Client => "clients",
        CertKind::Device => "devices",
    });
    let now = i64::try_from(crate::clock::now_ms() / 1000).unwrap_or(i64::MAX);
    let (revoked, moved_to) = match cert {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|source| CliError::File {
                path: path.to_owned(),
                source,
            })?;
            (
                crate::auth::revocation::revoke(&tls_dir, &pem, name, now)?,
                None,
            )
        }
        None => match crate::auth::revocation::revoke_issued(&tls_dir, &issued_dir, name, now)? {
            Some((revoked, moved_to)) => (revoked, Some(moved_to)),
            None => {
                let path = issued_dir.join(format!("{name}.crt"));
                return Err(CliError::File {
                    path,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
        },
    };
    Ok(CertRevoked {
        serial: revoked.serial,
        already: revoked.already,
        crl: revoked.crl,
        moved_to,
    })
}
