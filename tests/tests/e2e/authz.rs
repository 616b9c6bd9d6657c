//! The authorization matrix, generated from the served OpenAPI description: every operation is
//! called as every kind of caller, and each must get the answer the description implies. A route
//! added without its scope check, or a device check forgotten on a new `{id}` route, fails here.
//!
//! Callers: none (401), a bad token (401), a revoked or expired identity is refused at the TLS
//! layer (see security.rs), a certificate identity without the operation's scope (403), one with
//! the scope but limited to other devices (404 on device routes), and one with exactly the scope
//! it needs (served: neither 401, 403 nor 404).

use serde_json::{Value, json};

use crate::harness::{Hub, eventually, mosquitto_pub, wait_for_readings};
use crate::security::{TestCa, client};

const DEVICE: &str = "mx-1";
const SCOPES: [&str; 5] = ["read", "command", "admin", "metrics", "sync"];
/// The pull consumer of the matrix: named like the `sync` identity, which may commit only the
/// consumer of its own name.
const CONSUMER: &str = "only-sync";

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_kind_of_caller_as_described() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("clients CA");
    let ca_path = root.path().join("clients-ca.crt");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let mut config = format!(
        "[api]\nclient_ca = \"{}\"\nrate_limit = 0\n",
        ca_path.display()
    );
    for scope in SCOPES {
        config.push_str(&format!(
            "\n[[api.clients]]\nname = \"only-{scope}\"\nscopes = [\"{scope}\"]\n\n\
             [[api.clients]]\nname = \"elsewhere-{scope}\"\nscopes = [\"{scope}\"]\ndevices = [\"nomatch-*\"]\n"
        ));
    }
    let config_path = root.path().join("hub.toml");
    std::fs::write(&config_path, config).unwrap();
    let hub = Hub::start(
        root.path(),
        &["--config", &config_path.display().to_string()],
    );
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{DEVICE}/telemetry"),
        br#"{"seq":0,"metrics":{"v":1}}"#,
        1,
    );
    wait_for_readings(&hub, DEVICE, 1).await;
    // A command to read back.
    let (_, command) = hub
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{DEVICE}/commands"),
            Some(&json!({"name": "echo"})),
        )
        .await;
    let command_id = command["id"].as_u64().unwrap().to_string();
    // A token to look at (and revoke).
    let (_, token) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "matrix", "scopes": ["read"]})),
        )
        .await;
    let token_id = token["id"].as_str().unwrap().to_owned();

    // A pull consumer to look at (and delete).
    let (status, _) = hub
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/sync/consumers/{CONSUMER}"),
            Some(&json!({"cursor": 0})),
        )
        .await;
    assert_eq!(status, 200);

    let (_, spec) = hub.get("/api/v1/openapi.json").await;
    let identity = |name: &str| client(&hub, Some(&ca.client(name, &[], 30)));
    let nobody = client(&hub, None);
    let mut checked = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(security) = operation["security"].as_array() else {
                continue; // /healthz: public by design.
            };
            let scope = security[0]["bearer"]
                .as_array()
                .and_then(|s| s.first())
                .and_then(Value::as_str)
                .map(str::to_owned);
            // A device's password is managed like its other things: only where it may be seen.
            let credential_route = template.starts_with("/api/v1/device-credentials/{id}");
            let device_route = template.starts_with("/api/v1/devices/{id}") || credential_route;
            let path = if device_route {
                template
                    .replace("{id}", DEVICE)
                    .replace("{cid}", &command_id)
            } else {
                template
                    .replace("{id}", &token_id)
                    .replace("{name}", CONSUMER)
            };
            // A rule of that name exists before each call, so one the matrix deleted is back.
            let rule_route = template == "/api/v1/rules/{name}";
            let hub_ref = &hub;
            let call = |c: reqwest::Client, token: Option<String>| {
                let url = hub.url(&path);
                let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let body = match (method.as_str(), template.as_str()) {
                    ("POST", "/api/v1/tokens") => Some(json!({"name": "t", "scopes": ["read"]})),
                    ("POST", "/api/v1/device-credentials") => Some(json!({"device": "mx-new"})),
                    ("POST", "/api/v1/device-credentials/{id}/rotate") => None,
                    ("POST", _) => Some(json!({"name": "echo"})),
                    ("PATCH", _) => Some(json!({})),
                    ("PUT", _) => Some(json!({"cursor": 0})),
                    _ => None,
                };
                async move {
                    if credential_route {
                        // The device has a live password before each call (201, or 409: it had).
                        let made = json!({"device": DEVICE});
                        let (status, _) = hub_ref
                            .send(
                                reqwest::Method::POST,
                                "/api/v1/device-credentials",
                                Some(&made),
                            )
                            .await;
                        assert!(
                            status == 201 || status == 409,
                            "the matrix's password: {status}"
                        );
                    }
                    if rule_route {
                        let rule = json!({"name": CONSUMER, "metric": "v", "above": 1.0});
                        let (status, _) = hub_ref
                            .send(reqwest::Method::POST, "/api/v1/rules", Some(&rule))
                            .await;
                        assert!(
                            status == 200 || status == 201,
                            "the matrix's rule: {status}"
                        );
                    }
                    let mut request = c.request(method, url);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    if let Some(body) = body {
                        request = request.json(&body);
                    }
                    request.send().await.unwrap().status().as_u16()
                }
            };
            let at = format!("{method} {template}");

            assert_eq!(
                call(nobody.clone(), None).await,
                401,
                "{at}: no credentials"
            );
            assert_eq!(
                call(nobody.clone(), Some("hub_0000".into())).await,
                401,
                "{at}: a bad token"
            );
            match &scope {
                Some(scope) => {
                    // Another single scope than the one needed (admin holds them all).
                    let other = SCOPES
                        .iter()
                        .find(|s| *s != scope && **s != "admin")
                        .unwrap();
                    let status = call(identity(&format!("only-{other}")), None).await;
                    assert_eq!(status, 403, "{at}: scope {other} instead of {scope}");
                    let served = call(identity(&format!("only-{scope}")), None).await;
                    assert!(
                        ![401, 403, 404].contains(&served),
                        "{at}: scope {scope} -> {served}"
                    );
                    if device_route {
                        let status = call(identity(&format!("elsewhere-{scope}")), None).await;
                        assert_eq!(status, 404, "{at}: another device's identity");
                    }
                    if template.starts_with("/api/v1/sync/consumers/") && method != "delete" {
                        // A consumer is moved only by its own identity (or an admin): a
                        // device-limited one, or one named otherwise, is refused.
                        let status = call(identity(&format!("elsewhere-{scope}")), None).await;
                        assert_eq!(status, 403, "{at}: a device-limited identity");
                    }
                }
                None => {
                    // Any identity at all.
                    let served = call(identity("only-metrics"), None).await;
                    assert!(
                        ![401, 403].contains(&served),
                        "{at}: any identity -> {served}"
                    );
                }
            }
            if template == "/api/v1/devices/{id}" && method == "delete" {
                // The admin removed the device (its readings kept): it publishes again and is
                // registered anew, for the routes that follow.
                mosquitto_pub(
                    hub.mqtt_port(),
                    &format!("devices/{DEVICE}/telemetry"),
                    br#"{"metrics":{"v":2}}"#,
                    1,
                );
                eventually("the device registered anew", || async {
                    (hub.get(&format!("/api/v1/devices/{DEVICE}")).await.0 == 200).then_some(())
                })
                .await;
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "the description lists the API's operations ({checked})"
    );
    // Nothing above changed the device's data but what admin may change.
    eventually("the hub still serves", || async {
        (hub.get(&format!("/api/v1/devices/{DEVICE}")).await.0 == 200).then_some(())
    })
    .await;
    hub.stop();
}
