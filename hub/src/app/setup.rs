//! What `run` builds from the configuration before it spawns anything: the MQTT endpoint's
//! settings and its device listener's TLS source, the client certificates that are identities,
//! and the admin token of the first run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::reload::TlsSource;
use crate::auth::clients::{ClientEntry, ClientIdentities};
use crate::auth::{AuthError, Scope, TokenRegistry, pki};
use crate::clock::now_ms;
use crate::config::{ClientAuth, Config, PasswordAuth};
use crate::files;
use crate::ingest::endpoint::login::Logins;
use crate::ingest::endpoint::{
    EndpointError, EndpointSettings, ListenerSettings, MAX_PLAIN_PACKET,
};
use crate::ingest::topics::DeviceTopics;
use crate::store::TokenRecord;

/// Where the MQTT device listener's TLS comes from, when `[mqtt.devices] listen` asks for it: the
/// API's server certificate, and device certificates checked against the device CA: required,
/// optional when passwords are allowed, not asked for when passwords are required.
pub(super) fn gate_tls(config: &Config, api: &TlsSource) -> Option<TlsSource> {
    config.mqtt.devices.listen.as_ref()?;
    let d = &config.mqtt.devices;
    Some(TlsSource {
        expiry: api.expiry.clone(),
        expiry_names: ("gate_server", "device_ca"),
        cert: api.cert.clone(),
        key: api.key.clone(),
        client_ca: d
            .ca
            .clone()
            .unwrap_or_else(|| config.tls_dir().join("ca.crt")),
        crls: d.crls.clone(),
        own_crl: d
            .ca
            .is_none()
            .then(|| crate::auth::revocation::crl_path(&config.tls_dir())),
        client_auth: match d.passwords {
            PasswordAuth::Off => ClientAuth::Required,
            PasswordAuth::Allow => ClientAuth::Optional,
            PasswordAuth::Require => ClientAuth::Off,
        },
        mqtt: true,
    })
}

/// The MQTT endpoint's settings from `[mqtt]` and `[mqtt.devices]`; `logins` checks devices'
/// passwords and closes their connections when their credentials change.
pub(super) fn endpoint_settings(
    config: &Config,
    topics: Arc<DeviceTopics>,
    logins: Logins,
) -> Result<EndpointSettings, EndpointError> {
    // `validate` has checked the addresses.
    let address = |text: &str| {
        text.parse::<SocketAddr>().map_err(|_| EndpointError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source: std::io::Error::other(format!("{text:?} is not an address:port")),
        })
    };
    let d = &config.mqtt.devices;
    let devices = match &d.listen {
        Some(listen) => Some(ListenerSettings {
            listen: address(listen)?,
            max_connections: d.max_connections,
            max_packet: d.max_packet.0 as usize,
        }),
        None => None,
    };
    Ok(EndpointSettings {
        plain: ListenerSettings {
            listen: address(&config.mqtt.listen)?,
            max_connections: config.mqtt.max_connections,
            max_packet: MAX_PLAIN_PACKET,
        },
        devices,
        connect_timeout: d.connect_timeout.0,
        max_payload: config.ingest.max_payload.0 as usize,
        topics,
        logins: Some(logins),
    })
}

/// The client certificates that are identities: `[[api.clients]]`, and the first-run admin
/// certificate while the client CA is the hub's own (a CA the operator chose may issue an
/// "admin" certificate that means something else).
pub(super) fn client_identities(config: &Config) -> ClientIdentities {
    let mut clients = ClientIdentities::new(
        config
            .api
            .clients
            .iter()
            .map(|c| ClientEntry {
                name: c.name.clone(),
                scopes: c.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                devices: c.devices.clone(),
            })
            .collect(),
    )
    // The hub's own CA signs devices' certificates too: only those marked as a client's count.
    .marked_only(config.api.client_ca.is_none());
    if config.api.client_ca.is_none() && !clients.names(pki::ADMIN_CLIENT_NAME) {
        clients.push(ClientEntry {
            name: pki::ADMIN_CLIENT_NAME.to_owned(),
            scopes: vec![Scope::Admin],
            devices: Vec::new(),
        });
    }
    clients
}

/// Makes the admin token on first run and writes it to `<data.dir>/admin.token` (mode 0600).
/// A later run reuses it; if the store was reset but the file kept, the token is registered again.
pub(super) fn ensure_admin_token(
    data_dir: &std::path::Path,
    tokens: &TokenRegistry,
) -> Result<Option<PathBuf>, AuthError> {
    let path = data_dir.join("admin.token");
    let record = TokenRecord {
        name: "admin".into(),
        scopes: vec!["admin".into()],
        devices: vec![],
        created_ms: now_ms(),
        expires_ms: None,
        revoked: false,
        last_used_ms: None,
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) => {
            let secret = secret.trim();
            if !tokens.contains(secret) {
                tokens.register(secret, record)?;
            }
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = tokens.create(record)?;
            files::write_private(&path, format!("{secret}\n").as_bytes())?;
            Ok(Some(path))
        }
        Err(e) => Err(e.into()),
    }
}
