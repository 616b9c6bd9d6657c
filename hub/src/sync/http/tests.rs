//! The uplink against a real receiver: headers, kept connections, answers mapped to deliveries,
//! timeouts, TLS with client certificates, URL and token checks.

use std::time::Instant;

use super::answer::{MAX_REASON, RETRY_AFTER_MAX, retry_after};
use super::test_receiver::{Receiver, Reply, retry_reason};
use super::*;
use crate::auth::pki;
use crate::auth::tls::{TlsPaths, server_config};
use crate::config::{ClientAuth, HumanDuration, SinkConfig};
use crate::sync::SyncError;
use crate::sync::compress::{compress, tests::decompress};

const BODY: &[u8] = br#"{"hub":"h1","key":"cloud-10-12","readings":[{"d":"t1","v":21.5}]}"#;

fn sink(url: String) -> SinkConfig {
    SinkConfig {
        name: "cloud".into(),
        url,
        token: Some("s3cret".into()),
        timeout: Some(HumanDuration(Duration::from_secs(10))),
        ..SinkConfig::default()
    }
}

fn batch(encoding: Compression) -> Batch {
    Batch {
        first: 10,
        last: 12,
        count: 3,
        key: "cloud-10-12".into(),
        body: compress(BODY, encoding).unwrap(),
        encoding,
    }
}

fn header(seen: &test_receiver::Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn posts_with_headers_over_one_kept_connection() {
    let receiver = Receiver::start(None).await;
    let mut uplink =
        HttpUplink::new(&sink(format!("http://{}/v1/ingest?x=1", receiver.addr))).unwrap();
    for encoding in [Compression::Gzip, Compression::Zstd, Compression::None] {
        assert_eq!(uplink.deliver(&batch(encoding)).await, Delivery::Delivered);
    }
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for (seen, encoding) in
        requests
            .iter()
            .zip([Compression::Gzip, Compression::Zstd, Compression::None])
    {
        assert_eq!(
            header(seen, "idempotency-key").as_deref(),
            Some("cloud-10-12")
        );
        assert_eq!(
            header(seen, "authorization").as_deref(),
            Some("Bearer s3cret")
        );
        assert_eq!(
            header(seen, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header(seen, "user-agent"),
            Some(format!("hub/{}", env!("CARGO_PKG_VERSION")))
        );
        let expected = match encoding {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        };
        assert_eq!(header(seen, "content-encoding").as_deref(), expected);
        assert_eq!(decompress(&seen.body, encoding), BODY);
    }
    assert_eq!(receiver.connections(), 1, "the connection is kept alive");
}

#[tokio::test]
async fn answers_map_to_deliveries() {
    let receiver = Receiver::start(None).await;
    let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
    let date = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
    let http_date = date
        .format(
            &time::format_description::parse_borrowed::<2>(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
            )
            .unwrap(),
        )
        .unwrap();
    let with = |code: u16, name: &'static str, value: &str| {
        Reply::Status(code, vec![(name, value.to_owned())], String::new())
    };
    receiver.reply(Reply::status(500));
    receiver.reply(with(429, "retry-after", "7"));
    receiver.reply(with(503, "retry-after", &http_date));
    receiver.reply(with(429, "retry-after", "86400"));
    receiver.reply(with(503, "retry-after", "soon"));
    receiver.reply(Reply::Status(
        400,
        Vec::new(),
        "reading 11: no unit\n".into(),
    ));
    receiver.reply(Reply::status(401));
    receiver.reply(Reply::status(408));
    receiver.reply(Reply::status(422));
    receiver.reply(Reply::status(502));

    let b = batch(Compression::Gzip);
    let after = |d: Delivery| match d {
        Delivery::Retry { after, .. } => after,
        other => panic!("not a retry: {other:?}"),
    };
    assert_eq!(after(uplink.deliver(&b).await), None);
    assert_eq!(
        after(uplink.deliver(&b).await),
        Some(Duration::from_secs(7))
    );
    let wait = after(uplink.deliver(&b).await).unwrap();
    assert!(
        wait > Duration::from_secs(20) && wait <= Duration::from_secs(31),
        "{wait:?}"
    );
    assert_eq!(after(uplink.deliver(&b).await), Some(RETRY_AFTER_MAX));
    assert_eq!(after(uplink.deliver(&b).await), None);
    assert_eq!(
        uplink.deliver(&b).await,
        Delivery::Refused {
            status: 400,
            reason: "reading 11: no unit".into()
        }
    );
    match uplink.deliver(&b).await {
        Delivery::Retry {
            after: None,
            reason,
        } => {
            assert!(reason.contains("401"), "{reason}");
            assert!(!reason.contains("s3cret"), "{reason}");
        }
        other => panic!("401: {other:?}"),
    }
    assert_eq!(after(uplink.deliver(&b).await), None, "408");
    assert!(matches!(
        uplink.deliver(&b).await,
        Delivery::Refused { status: 422, .. }
    ));
    assert_eq!(after(uplink.deliver(&b).await), None, "502");
    assert_eq!(uplink.deliver(&b).await, Delivery::Delivered);
}

#[tokio::test]
async fn a_large_answer_is_read_in_part_and_the_next_delivery_still_goes() {
    let receiver = Receiver::start(None).await;
    let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
    receiver.reply(Reply::Status(413, Vec::new(), "x".repeat(1 << 20)));
    match uplink.deliver(&batch(Compression::Gzip)).await {
        Delivery::Refused { status, reason } => {
            assert_eq!(status, 413);
            assert_eq!(reason.len(), MAX_REASON);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        uplink.deliver(&batch(Compression::Gzip)).await,
        Delivery::Delivered
    );
}

#[tokio::test]
async fn a_connection_the_receiver_closes_is_replaced() {
    let receiver = Receiver::start(None).await;
    let mut uplink = HttpUplink::new(&sink(format!("http://{}/", receiver.addr))).unwrap();
    receiver.reply(Reply::Status(
        200,
        vec![("connection", "close".into())],
        String::new(),
    ));
    for _ in 0..2 {
        assert_eq!(
            uplink.deliver(&batch(Compression::Gzip)).await,
            Delivery::Delivered
        );
    }
    assert_eq!(receiver.connections(), 2);
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn no_receiver_is_a_retry() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut uplink = HttpUplink::new(&sink(format!("http://127.0.0.1:{port}/"))).unwrap();
    let reason = retry_reason(uplink.deliver(&batch(Compression::Gzip)).await);
    assert!(reason.contains("connecting"), "{reason}");
}

#[tokio::test]
async fn a_silent_receiver_is_a_retry_within_the_timeout() {
    let receiver = Receiver::start(None).await;
    receiver.reply(Reply::Hang);
    let mut config = sink(format!("http://{}/", receiver.addr));
    config.timeout = Some(HumanDuration(Duration::from_millis(300)));
    let mut uplink = HttpUplink::new(&config).unwrap();
    let started = Instant::now();
    let reason = retry_reason(uplink.deliver(&batch(Compression::Gzip)).await);
    assert!(reason.contains("no answer"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The hung connection is given up: the next delivery opens another.
    assert_eq!(
        uplink.deliver(&batch(Compression::Gzip)).await,
        Delivery::Delivered
    );
    assert_eq!(receiver.connections(), 2);
}

/// An HTTPS receiver that requires a client certificate of the CA made in `dir`.
async fn https_receiver(dir: &std::path::Path) -> (Receiver, pki::TlsFiles) {
    let (files, _) = pki::ensure(dir).unwrap();
    let config = server_config(
        &TlsPaths {
            cert: &files.server_cert,
            key: &files.server_key,
            client_ca: &files.ca_cert,
            crls: &[],
        },
        ClientAuth::Required,
    )
    .unwrap();
    (Receiver::start(Some(Arc::new(config))).await, files)
}

#[tokio::test]
async fn https_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, files) = https_receiver(dir.path()).await;
    let mut config = sink(format!("https://localhost:{}/ingest", receiver.addr.port()));
    config.ca = Some(files.ca_cert.clone());
    config.client_cert = Some(files.admin_cert.clone());
    config.client_key = Some(files.admin_key.clone());
    let mut uplink = HttpUplink::new(&config).unwrap();
    for _ in 0..2 {
        assert_eq!(
            uplink.deliver(&batch(Compression::Zstd)).await,
            Delivery::Delivered
        );
    }
    assert_eq!(receiver.connections(), 1);
    let seen = receiver.requests();
    assert_eq!(decompress(&seen[0].body, Compression::Zstd), BODY);

    // A receiver whose certificate another CA signed is not trusted.
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = pki::ensure(other.path()).unwrap();
    config.ca = Some(other_files.ca_cert);
    let mut uplink = HttpUplink::new(&config).unwrap();
    let reason = retry_reason(uplink.deliver(&batch(Compression::Zstd)).await);
    assert!(reason.contains("TLS"), "{reason}");
}

#[tokio::test]
async fn https_without_a_client_certificate_is_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, files) = https_receiver(dir.path()).await;
    let mut config = sink(format!("https://127.0.0.1:{}/", receiver.addr.port()));
    config.ca = Some(files.ca_cert);
    let mut uplink = HttpUplink::new(&config).unwrap();
    assert!(matches!(
        uplink.deliver(&batch(Compression::Gzip)).await,
        Delivery::Retry { after: None, .. }
    ));
    assert!(receiver.requests().is_empty());
}

#[test]
fn plain_http_only_to_loopback() {
    for url in [
        "http://127.0.0.1:9/",
        "http://localhost/x",
        "http://[::1]:8080/",
    ] {
        assert!(HttpUplink::new(&sink(url.into())).is_ok(), "{url}");
    }
    for url in [
        "http://example.com/ingest",
        "http://10.0.0.5:8080/",
        "ftp://127.0.0.1/",
        "https://user:pw@example.com/",
        "not a url",
    ] {
        assert!(
            matches!(
                HttpUplink::new(&sink(url.into())),
                Err(SyncError::Config { .. })
            ),
            "{url}"
        );
    }
}

#[test]
fn token_file_is_read_once_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "  t0ken\n").unwrap();
    let mut config = sink("http://127.0.0.1:9/".into());
    config.token = None;
    config.token_file = Some(path.clone());
    let uplink = HttpUplink::new(&config).unwrap();
    assert_eq!(uplink.headers[header::AUTHORIZATION], "Bearer t0ken");

    config.token_file = Some(dir.path().join("missing"));
    match HttpUplink::new(&config) {
        Err(SyncError::Config { reason, .. }) => assert!(reason.contains("token_file")),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a missing token file was taken"),
    }
}

#[test]
fn retry_after_forms() {
    let now = time::OffsetDateTime::from_unix_timestamp(784_111_777).unwrap(); // 1994-11-06 08:49:37
    let parse = |v: &str| retry_after(Some(&HeaderValue::from_str(v).unwrap()), now);
    assert_eq!(parse("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse("99999"), Some(RETRY_AFTER_MAX));
    assert_eq!(
        parse("Sun, 06 Nov 1994 08:50:37 GMT"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
    assert_eq!(parse("-5"), None);
    assert_eq!(parse("tomorrow"), None);
    assert_eq!(retry_after(None, now), None);
}
