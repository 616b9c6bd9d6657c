//! The OpenAPI description and the docs page, served by the real binary over TLS.

use serde_json::Value;

use crate::harness::Hub;

#[tokio::test(flavor = "multi_thread")]
async fn the_spec_needs_a_token_and_describes_the_api() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);

    let (status, spec) = hub.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{spec}");
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/api/v1/openapi.json",
        "/api/v1/devices",
        "/api/v1/devices/{id}",
        "/api/v1/devices/{id}/latest",
        "/api/v1/devices/{id}/readings",
    ] {
        assert!(paths.contains_key(path), "{path} is described");
    }

    // Without a token, or with a wrong one: 401 problem, like every /api/v1 route.
    let client = hub.client();
    for token in [None, Some("hub_not-a-token")] {
        let mut request = client.get(hub.url("/api/v1/openapi.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401);
        assert_eq!(problem["request_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_works_without_a_token_and_serves_gzipped_assets() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let client = hub.client();

    let response = client.get(hub.url("/docs")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert!(response.headers().contains_key("content-security-policy"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains(r#"id="token""#),
        "the page asks for the token"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );

    // Every script and stylesheet the page names: gzip, a long cache life, the right type.
    let assets: Vec<&str> = page
        .split("\"/docs/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(
        assets
            .iter()
            .any(|a| a.starts_with("swagger-ui-bundle.") && a.ends_with(".js"))
    );
    assert!(
        assets
            .iter()
            .any(|a| a.starts_with("swagger-ui.") && a.ends_with(".css"))
    );
    for asset in assets {
        // reqwest here has no gzip decoding: the bytes arrive as stored.
        let response = client
            .get(hub.url(&format!("/docs/{asset}")))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-encoding"], "gzip", "{asset}");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=31536000"),
            "{asset}"
        );
        let content_type = headers["content-type"].to_str().unwrap();
        let expected = match asset.rsplit('.').next().unwrap() {
            "js" => "text/javascript",
            "css" => "text/css",
            _ => "text/plain",
        };
        assert!(
            content_type.starts_with(expected),
            "{asset}: {content_type}"
        );
        let body = response.bytes().await.unwrap();
        assert!(body.len() > 100, "{asset} is not empty");
        assert_eq!(&body[..2], &[0x1f, 0x8b], "{asset} is gzip data");
        if asset.starts_with("swagger-ui-bundle.") {
            assert!(body.len() > 100_000, "the bundle: {} bytes", body.len());
        }
    }

    // The page script reads the description with the token it is given.
    let script = page
        .split("\"/docs/")
        .filter_map(|s| s.split('"').next())
        .find(|a| a.starts_with("hub-docs.") && a.ends_with(".js"))
        .unwrap()
        .to_owned();
    let gz = client
        .get(hub.url(&format!("/docs/{script}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = gunzip(&gz);
    assert!(text.contains("/api/v1/openapi.json"));
    assert!(text.contains("requestInterceptor") && text.contains("sessionStorage"));

    // Unknown files are problems; a client refusing gzip is told so.
    let response = client
        .get(hub.url("/docs/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = client
        .get(hub.url(&format!("/docs/{script}")))
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 406);
}

/// Decompresses with the system's gzip (the tests have no gzip crate).
fn gunzip(bytes: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
