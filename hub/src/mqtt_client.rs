//! How the hub's MQTT clients are set up: the ingest client of an external broker and the sync
//! uplink to a cloud broker share it. Imports no part of the hub.

use std::sync::Arc;

use rumqttc::MqttOptions;

/// Options to reach `host:port` as `client_id`, over TLS and with credentials when given; the
/// session settings are the caller's.
pub fn client_options(
    client_id: &str,
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    credentials: Option<&(String, String)>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, host, port);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    if let Some((user, password)) = credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    options
}

/// A username and password as [`client_options`] takes them: the password empty when only a
/// username is given.
pub fn credentials(
    username: &Option<String>,
    password: &Option<String>,
) -> Option<(String, String)> {
    username
        .clone()
        .map(|user| (user, password.clone().unwrap_or_default()))
}
