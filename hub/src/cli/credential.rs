//! `hub device-credential ...`: make, list, rotate and revoke devices' MQTT passwords, through
//! the running hub or in the store (like `hub token`).

use super::*;
use crate::api::credentials::{CredentialList, CredentialSummary, IssuedCredential};
use crate::auth::credentials::{DeviceCredentials, Issued};

/// What `hub device-credential` does.
#[derive(Debug, Clone)]
pub enum CredentialAction {
    /// Make this device's password; print it alone on stdout.
    Create(String),
    /// List credentials, as a table or as JSON.
    List {
        /// JSON instead of a table.
        json: bool,
    },
    /// Replace this device's password; print the new one alone on stdout.
    Rotate(String),
    /// Revoke this device's password.
    Revoke(String),
}

/// Runs a `hub device-credential` command.
pub async fn credential(config: &Config, action: CredentialAction) -> Result<(), CliError> {
    if let CredentialAction::Create(device)
    | CredentialAction::Rotate(device)
    | CredentialAction::Revoke(device) = &action
        && !device_protocol::is_valid_id(device)
    {
        return Err(CliError::Invalid(format!(
            "--device: {device:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
        )));
    }
    if config.mqtt.devices.passwords == crate::config::PasswordAuth::Off {
        eprintln!(
            "hub: note: [mqtt.devices] passwords is \"off\" in this configuration: devices cannot log in with passwords until it is \"allow\" or \"require\""
        );
    }
    match Target::find(config).await? {
        Target::Hub(hub) => remote(&hub, action).await,
        Target::Store(store) => {
            let credentials = DeviceCredentials::open(&config.data.dir.join("token.key"), store)?;
            blocking(move || local(&credentials, action)).await
        }
    }
}

async fn remote(hub: &RunningHub, action: CredentialAction) -> Result<(), CliError> {
    let issued = |answer: Vec<u8>| {
        serde_json::from_slice::<IssuedCredential>(&answer)
            .map_err(|e| CliError::Answer(format!("credential: {e}")))
    };
    match action {
        CredentialAction::Create(device) => {
            let body = serde_json::json!({ "device": device }).to_string();
            let answer = hub
                .call(Method::POST, "/api/v1/device-credentials", Some(body))
                .await?;
            let made = issued(answer)?;
            print_password(&made.device, &made.password, "made");
            Ok(())
        }
        CredentialAction::Rotate(device) => {
            let path = format!("/api/v1/device-credentials/{device}/rotate");
            let made = issued(hub.call(Method::POST, &path, None).await?)?;
            print_password(&made.device, &made.password, "rotated");
            Ok(())
        }
        CredentialAction::Revoke(device) => {
            let path = format!("/api/v1/device-credentials/{device}");
            hub.call(Method::DELETE, &path, None).await?;
            eprintln!("hub: revoked the MQTT password of device {device}");
            Ok(())
        }
        CredentialAction::List { json } => {
            let answer = hub
                .call(Method::GET, "/api/v1/device-credentials", None)
                .await?;
            let list: CredentialList = serde_json::from_slice(&answer)
                .map_err(|e| CliError::Answer(format!("credential list: {e}")))?;
            print_list(&list, json)
        }
    }
}

fn local(credentials: &DeviceCredentials, action: CredentialAction) -> Result<(), CliError> {
    let now = crate::clock::now_ms();
    let refused = |e: crate::auth::credentials::CredentialError| CliError::Invalid(e.to_string());
    let show = |issued: Issued, what| {
        print_password(&issued.info.device, &issued.password, what);
        Ok(())
    };
    match action {
        CredentialAction::Create(device) => {
            show(credentials.create(&device, now).map_err(refused)?, "made")
        }
        CredentialAction::Rotate(device) => show(
            credentials.rotate(&device, now).map_err(refused)?,
            "rotated",
        ),
        CredentialAction::Revoke(device) => match credentials.revoke(&device, now) {
            Ok(Some(_)) => {
                eprintln!("hub: revoked the MQTT password of device {device}");
                Ok(())
            }
            Ok(None) => Err(CliError::Invalid(format!(
                "device {device:?} has no password"
            ))),
            Err(e) => Err(refused(e)),
        },
        CredentialAction::List { json } => {
            let list = CredentialList {
                credentials: credentials
                    .list()
                    .iter()
                    .map(CredentialSummary::new)
                    .collect(),
            };
            print_list(&list, json)
        }
    }
}

/// The password alone on stdout (so `PW=$(...)` works), what was done on stderr.
fn print_password(device: &str, password: &str, what: &str) {
    eprintln!(
        "hub: {what} the MQTT password of device {device} (user name {device}); it is shown once, below"
    );
    println!("{password}");
}

fn print_list(list: &CredentialList, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(list);
    }
    let dash = || "-".to_owned();
    let mut rows = vec![
        ["DEVICE", "USER NAME", "CREATED", "ROTATED", "REVOKED"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for c in &list.credentials {
        rows.push(vec![
            c.device.clone(),
            c.username.clone(),
            c.created.clone(),
            c.rotated.clone().unwrap_or_else(dash),
            c.revoked.clone().unwrap_or_else(dash),
        ]);
    }
    print!("{}", padded(&rows));
    Ok(())
}
