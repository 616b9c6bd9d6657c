//! Tokens and certificates: the admin API (`/api/v1/tokens`), `hub token` while the hub runs and
//! while it does not, `hub certs`, against the real binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, binary, eventually, mosquitto_pub};

/// A request with `token`; returns status and JSON body (null when there is none).
async fn call(
    hub: &Hub,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = hub
        .client()
        .request(method, hub.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn create(hub: &Hub, token: &str, body: Value) -> (u16, Value) {
    call(
        hub,
        token,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(body),
    )
    .await
}

async fn list(hub: &Hub) -> Vec<Value> {
    let (status, body) = call(
        hub,
        &hub.token(),
        reqwest::Method::GET,
        "/api/v1/tokens",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["tokens"].as_array().unwrap().clone()
}

async fn status_of(hub: &Hub, token: &str, path: &str) -> u16 {
    call(hub, token, reqwest::Method::GET, path, None).await.0
}

fn register_device(hub: &Hub, device: &str) {
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{device}/telemetry"),
        br#"{"seq":0,"metrics":{"v":1}}"#,
        1,
    );
}

/// `hub <args>` against the hub's data directory (and its API address when it runs).
fn hub_cli(data: &Path, api: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("hub"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("HUB_CONFIG");
    // A port nothing listens on stands for "the hub is stopped".
    command.args(["--api-listen", api.unwrap_or("127.0.0.1:1")]);
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_through_the_api_scopes_devices_list_revoke_expiry_and_restart() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let admin = hub.token();
    register_device(&hub, "greenhouse-1");
    register_device(&hub, "door-1");
    eventually("both devices are registered", || async {
        (hub.get("/api/v1/devices/door-1").await.0 == 200
            && hub.get("/api/v1/devices/greenhouse-1").await.0 == 200)
            .then_some(())
    })
    .await;

    // A read-only token for the greenhouses; its secret is in the creation answer only.
    let response = hub
        .client()
        .post(hub.url("/api/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "app-1", "scopes": ["read"], "devices": ["greenhouse-*"], "expires": "30d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let created: Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("hub_") && secret.len() == 68,
        "{created}"
    );
    assert_eq!(id.len(), 16);
    assert!(!secret.contains(&id));
    assert_eq!(created["name"], "app-1");
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(created["devices"], json!(["greenhouse-*"]));
    assert!(created["created"].is_string() && created["expires"].is_string());

    // It reads what it may see, nothing else, and cannot command or manage tokens.
    let (status, devices) =
        call(&hub, &secret, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["greenhouse-1"]);
    assert_eq!(
        status_of(&hub, &secret, "/api/v1/devices/greenhouse-1").await,
        200
    );
    assert_eq!(
        status_of(&hub, &secret, "/api/v1/devices/door-1").await,
        404
    );
    assert_eq!(status_of(&hub, &admin, "/api/v1/devices/door-1").await, 200);
    let (status, _) = call(
        &hub,
        &secret,
        reqwest::Method::POST,
        "/api/v1/devices/greenhouse-1/commands",
        Some(json!({"name": "echo"})),
    )
    .await;
    assert_eq!(status, 403);
    // A token without `admin` gets 403 on every token route.
    assert_eq!(status_of(&hub, &secret, "/api/v1/tokens").await, 403);
    let (status, body) = create(&hub, &secret, json!({"name": "x", "scopes": ["admin"]})).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(
        &hub,
        &secret,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A command token without admin is refused too.
    let (_, commander) = create(
        &hub,
        &admin,
        json!({"name": "cmd", "scopes": ["command", "metrics"]}),
    )
    .await;
    let commander = commander["secret"].as_str().unwrap().to_owned();
    assert_eq!(status_of(&hub, &commander, "/api/v1/tokens").await, 403);

    // The list shows every token, with when it was last used, and never a secret.
    let listed = hub
        .client()
        .get(hub.url("/api/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&secret) && !listed.contains(&secret[4..]));
    assert!(!listed.contains(&admin[4..]) && !listed.contains("secret"));
    let tokens: Value = serde_json::from_str(&listed).unwrap();
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3, "{listed}");
    let app = tokens.iter().find(|t| t["id"] == id.as_str()).unwrap();
    let mut keys: Vec<&str> = app
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created",
            "devices",
            "expires",
            "id",
            "last_used",
            "name",
            "revoked",
            "scopes"
        ]
    );
    assert!(app["last_used"].is_string(), "{app}");
    assert_eq!(app["revoked"], false);
    let cmd = tokens.iter().find(|t| t["name"] == "cmd").unwrap();
    assert!(cmd["last_used"].is_string() && cmd["expires"].is_null());

    // Bad requests: 400 with a reason that names the field.
    for (body, field) in [
        (json!({"name": "", "scopes": ["read"]}), "name"),
        (json!({"name": "a b", "scopes": ["read"]}), "name"),
        (json!({"name": "a", "scopes": []}), "scopes"),
        (json!({"name": "a", "scopes": ["write"]}), "scopes"),
        (
            json!({"name": "a", "scopes": ["read"], "devices": ["door/1"]}),
            "devices",
        ),
        (
            json!({"name": "a", "scopes": ["read"], "expires": "soon"}),
            "expires",
        ),
        (json!({"name": "a"}), "scopes"),
        (
            json!({"name": "a", "scopes": ["read"], "secret": "hub_x"}),
            "secret",
        ),
    ] {
        let (status, problem) = create(&hub, &admin, body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{body}: {problem}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("d{i}")).collect();
    let (status, _) = create(
        &hub,
        &admin,
        json!({"name": "a", "scopes": ["read"], "devices": many}),
    )
    .await;
    assert_eq!(status, 400);

    // An expired token is refused.
    let (_, short) = create(
        &hub,
        &admin,
        json!({"name": "short", "scopes": ["read"], "expires": "1s"}),
    )
    .await;
    let short = short["secret"].as_str().unwrap().to_owned();
    assert_eq!(status_of(&hub, &short, "/api/v1/devices").await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_of(&hub, &short, "/api/v1/devices").await, 401);

    // Revoked: refused at once. Unknown ids: 404.
    let (status, _) = call(
        &hub,
        &admin,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(status_of(&hub, &secret, "/api/v1/devices").await, 401);
    for unknown in ["0000000000000000", "nope"] {
        let (status, _) = call(
            &hub,
            &admin,
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{unknown}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "{unknown}");
    }
    assert!(
        list(&hub)
            .await
            .iter()
            .any(|t| t["id"] == id.as_str() && t["revoked"] == true)
    );

    // A token may revoke itself.
    let (_, own) = create(&hub, &admin, json!({"name": "own", "scopes": ["admin"]})).await;
    let (own_secret, own_id) = (
        own["secret"].as_str().unwrap().to_owned(),
        own["id"].as_str().unwrap().to_owned(),
    );
    let (status, _) = call(
        &hub,
        &own_secret,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{own_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(status_of(&hub, &own_secret, "/api/v1/tokens").await, 401);

    // The OpenAPI description has the routes, and no secret.
    let (status, spec) = hub.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["paths"]["/api/v1/tokens"]["post"].is_object());
    assert!(spec["paths"]["/api/v1/tokens/{id}"]["delete"].is_object());
    assert!(!spec.to_string().contains(&admin[4..]));

    // After a restart: still revoked, the others still work, last use was saved on the way down.
    let data = hub.data.clone();
    let log = hub.log();
    assert!(hub.stop().success());
    let hub = Hub::start(root.path(), &[]);
    assert_eq!(hub.data, data);
    assert_eq!(status_of(&hub, &secret, "/api/v1/devices").await, 401);
    assert_eq!(status_of(&hub, &own_secret, "/api/v1/devices").await, 401);
    assert_eq!(status_of(&hub, &commander, "/api/v1/tokens").await, 403);
    let tokens = list(&hub).await;
    let app = tokens.iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert!(
        app["last_used"].is_string() && app["revoked"] == true,
        "{app}"
    );

    // No secret in the hub's log, in either run.
    for log in [log, hub.log()] {
        for s in [&secret, &short, &commander, &own_secret, &admin] {
            assert!(!log.contains(&s[4..]), "a secret is in the log");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_makes_lists_and_revokes_tokens_with_the_hub_running_or_stopped() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let data = hub.data.clone();
    let api = hub.api.to_string();

    // While the hub runs: through its API. The secret alone on stdout.
    let out = hub_cli(
        &data,
        Some(&api),
        &[
            "token",
            "create",
            "--name",
            "cli-app",
            "--scope",
            "read",
            "--devices",
            "greenhouse-*",
            "--expires",
            "30d",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout).trim().to_owned();
    assert_eq!(text(&out.stdout), format!("{secret}\n"));
    assert!(secret.starts_with("hub_") && secret.len() == 68);
    assert!(
        text(&out.stderr).contains("running hub"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains(&secret[4..]));
    assert_eq!(status_of(&hub, &secret, "/api/v1/devices").await, 200);
    assert_eq!(
        status_of(&hub, &secret, "/api/v1/devices/door-1").await,
        404
    );
    assert_eq!(status_of(&hub, &secret, "/api/v1/tokens").await, 403);

    let out = hub_cli(&data, Some(&api), &["token", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cli-app")
        .unwrap()
        .clone();
    assert_eq!(app["scopes"], json!(["read"]));
    assert!(!text(&out.stdout).contains(&secret[4..]));
    let id = app["id"].as_str().unwrap().to_owned();
    let out = hub_cli(&data, Some(&api), &["token", "list"]);
    let table = text(&out.stdout);
    assert!(
        out.status.success() && table.starts_with("ID") && table.contains(&id),
        "{table}"
    );
    assert!(table.contains("cli-app") && table.contains("greenhouse-*"));

    // Bad requests fail with the hub's reason and a non-zero exit.
    let out = hub_cli(
        &data,
        Some(&api),
        &["token", "create", "--name", "bad name", "--scope", "read"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("name"), "{}", text(&out.stderr));
    let out = hub_cli(&data, Some(&api), &["token", "revoke", "0000000000000000"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));

    let out = hub_cli(&data, Some(&api), &["token", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status_of(&hub, &secret, "/api/v1/devices").await, 401);

    // Without the admin token, the CLI cannot talk to the hub and says why.
    let elsewhere = root.path().join("other-data");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = hub_cli(&elsewhere, Some(&api), &["token", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("admin token"),
        "{}",
        text(&out.stderr)
    );

    // With the hub stopped: directly in the store.
    assert!(hub.stop().success());
    let out = hub_cli(
        &data,
        Some(&api),
        &[
            "token",
            "create",
            "--name",
            "offline",
            "--scope",
            "read,command",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("directly"),
        "{}",
        text(&out.stderr)
    );
    let offline = text(&out.stdout).trim().to_owned();
    let out = hub_cli(&data, None, &["token", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&offline[4..]));
    let out = hub_cli(
        &data,
        None,
        &["token", "create", "--name", "x", "--scope", "write"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = hub_cli(&root.path().join("missing"), None, &["token", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no data directory"),
        "{}",
        text(&out.stderr)
    );

    let hub = Hub::start(root.path(), &[]);
    assert_eq!(status_of(&hub, &offline, "/api/v1/devices").await, 200);
    assert_eq!(status_of(&hub, &offline, "/api/v1/tokens").await, 403);
    assert_eq!(status_of(&hub, &secret, "/api/v1/devices").await, 401);
    for s in [&secret, &offline] {
        assert!(!hub.log().contains(&s[4..]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_client_certificates_verify_and_the_api_accepts_them() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let data = hub.data.clone();
    let out = hub_cli(
        &data,
        None,
        &["certs", "issue-client", "--name", "app-1", "--days", "30"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paths: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    let clients = data.join("tls/clients");
    assert_eq!(
        paths,
        [
            clients.join("app-1.crt").display().to_string(),
            clients.join("app-1.key").display().to_string()
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(clients.join("app-1.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out_dir = root.path().join("device-certs");
    let out = hub_cli(
        &data,
        None,
        &[
            "certs",
            "issue-device",
            "--id",
            "dev-1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out_dir.join("dev-1.crt").exists() && out_dir.join("dev-1.key").exists());
    let out = hub_cli(&data, None, &["certs", "issue-client", "--name", "../evil"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = hub_cli(
        &root.path().join("missing"),
        None,
        &["certs", "issue-device", "--id", "d"],
    );
    assert!(!out.status.success());

    let ca = data.join("tls/ca.crt");
    if Command::new("openssl").arg("version").output().is_ok() {
        for cert in [clients.join("app-1.crt"), out_dir.join("dev-1.crt")] {
            let out = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&ca)
                .arg(&cert)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(clients.join("app-1.crt"))
            .output()
            .unwrap();
        let dump = text(&out.stdout);
        assert!(
            dump.contains("CN = app-1") || dump.contains("CN=app-1"),
            "{dump}"
        );
        assert!(dump.contains("DNS:app-1"), "{dump}");
        assert!(dump.contains("TLS Web Client Authentication"), "{dump}");
    } else {
        eprintln!("openssl is missing: the openssl checks are skipped");
    }

    // The API takes the certificate as a TLS client certificate (with a token: certificates
    // grant no scopes yet).
    crate::harness::init_tls();
    let mut pem = std::fs::read(clients.join("app-1.crt")).unwrap();
    pem.extend(std::fs::read(clients.join("app-1.key")).unwrap());
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client
        .get(hub.url("/api/v1/devices"))
        .bearer_auth(hub.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Without a CA there is nothing to sign with, and the CLI says so.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(binary("hub"))
        .args(["certs", "issue-client", "--name", "stranger", "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "no CA there: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no CA"), "{}", text(&out.stderr));
}
