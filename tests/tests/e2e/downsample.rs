//! Downsampled readings and streamed export end to end: buckets checked against a reference the
//! test computes itself, bad parameters named in the problem, and CSV/NDJSON exports that return
//! exactly the readings of a range spanning several of the hub's internal pages.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::Hub;

/// 2026-11-20T10:00:00Z.
const BASE_MS: u64 = 1_795_168_800_000;

/// A metric value as the test sends it.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl V {
    fn json(&self) -> String {
        match self {
            V::Int(i) => i.to_string(),
            // Always with a fraction, so the hub stores it as a float.
            V::Float(x) => format!("{x:.2}"),
            V::Bool(b) => b.to_string(),
            V::Str(s) => serde_json::to_string(s).unwrap(),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(x) => Some(*x),
            V::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            V::Str(_) => None,
        }
    }

    /// Whether the API's JSON value is this one.
    fn matches_json(&self, v: &Value) -> bool {
        match self {
            V::Int(i) => v.as_i64() == Some(*i),
            V::Float(x) => v.as_f64().is_some_and(|y| (x - y).abs() < 1e-9),
            V::Bool(b) => v.as_bool() == Some(*b),
            V::Str(s) => v.as_str() == Some(s),
        }
    }

    /// Whether a CSV field is this value (strings quoted, so unquoted by the parser).
    fn matches_csv(&self, field: &str) -> bool {
        match self {
            V::Str(s) => field == s,
            V::Int(i) => field == i.to_string(),
            V::Float(x) => field.parse::<f64>().is_ok_and(|y| (x - y).abs() < 1e-9),
            V::Bool(b) => field == b.to_string(),
        }
    }
}

/// One reading as the test sends it.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    ts: u64,
    metrics: Vec<(&'static str, V)>,
}

/// Readings with known timestamps (7.3 s apart, not in arrival order) and a mix of types: `v`
/// numeric (integers and floats), `flag` boolean, `s` a string on every fifth reading, with
/// commas, quotes and line breaks to exercise CSV quoting.
fn readings(n: u64) -> Vec<Sent> {
    (0..n)
        .map(|i| {
            // Swap neighbours, so arrival order is not time order.
            let slot = (if i % 2 == 0 { i + 1 } else { i - 1 }).min(n - 1);
            let ts = BASE_MS + slot * 7_300 + i % 2;
            let v = if i % 7 == 0 {
                V::Int(i as i64 - 300)
            } else {
                V::Float(i as f64 * 0.25)
            };
            let mut metrics = vec![("v", v), ("flag", V::Bool(i % 3 == 0))];
            if i % 5 == 0 {
                metrics.push(("s", V::Str(format!("n{i}, \"q\"\nline"))));
            }
            Sent {
                seq: i,
                ts,
                metrics,
            }
        })
        .collect()
}

/// Publishes every reading through one `mosquitto_pub -l` (a message per stdin line), then waits
/// until the hub has stored them all.
async fn seed(hub: &Hub, device: &str, sent: &[Sent]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port().to_string()])
        .args([
            "-t",
            &format!("devices/{device}/telemetry"),
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = String::new();
    for r in sent {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .map(|(name, v)| format!("\"{name}\":{}", v.json()))
            .collect();
        lines.push_str(&format!(
            "{{\"seq\":{},\"ts\":{},\"metrics\":{{{}}}}}\n",
            r.seq,
            r.ts,
            metrics.join(",")
        ));
    }
    stdin.write_all(lines.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = sent.len() as u64;
    crate::harness::wait_for_readings(hub, device, n).await;
}

/// The reference buckets of `metric` over `[from, to)`: start ms -> the values in time order.
fn reference(sent: &[Sent], metric: &str, width: u64, from: u64, to: u64) -> BTreeMap<u64, Vec<V>> {
    let mut points: Vec<(u64, u64, V)> = sent
        .iter()
        .filter(|r| r.ts >= from && r.ts < to)
        .filter_map(|r| {
            let v = r.metrics.iter().find(|(m, _)| *m == metric)?;
            Some((r.ts, r.seq, v.1.clone()))
        })
        .collect();
    // Seqs arrive in order here, so offsets follow seqs: time, then offset, is time, then seq.
    points.sort_by_key(|p| (p.0, p.1));
    let mut buckets: BTreeMap<u64, Vec<V>> = BTreeMap::new();
    for (ts, _, v) in points {
        buckets.entry(ts / width * width).or_default().push(v);
    }
    buckets
}

fn close(got: &Value, want: Option<f64>) -> bool {
    match want {
        None => got.is_null(),
        Some(w) => got
            .as_f64()
            .is_some_and(|g| (g - w).abs() <= 1e-9 * w.abs().max(1.0)),
    }
}

/// Checks an API bucket against the reference values of its bucket.
fn check_bucket(b: &Value, values: &[V], what: &str) {
    let nums: Vec<f64> = values.iter().filter_map(V::number).collect();
    let has = !nums.is_empty();
    let sum: f64 = nums.iter().sum();
    assert_eq!(
        b["count"].as_u64(),
        Some(values.len() as u64),
        "{what}: {b}"
    );
    if b.get("sum").is_some() {
        assert!(close(&b["sum"], has.then_some(sum)), "{what} sum: {b}");
    }
    if b.get("avg").is_some() {
        assert!(
            close(&b["avg"], has.then(|| sum / nums.len() as f64)),
            "{what} avg: {b}"
        );
    }
    if b.get("min").is_some() {
        let min = nums.iter().copied().fold(f64::MAX, f64::min);
        assert!(close(&b["min"], has.then_some(min)), "{what} min: {b}");
    }
    if b.get("max").is_some() {
        let max = nums.iter().copied().fold(f64::MIN, f64::max);
        assert!(close(&b["max"], has.then_some(max)), "{what} max: {b}");
    }
    if b.get("first").is_some() {
        assert!(values[0].matches_json(&b["first"]), "{what} first: {b}");
    }
    if b.get("last").is_some() {
        assert!(
            values[values.len() - 1].matches_json(&b["last"]),
            "{what} last: {b}"
        );
    }
}

/// Every bucket of a downsampled query, page by page.
async fn all_buckets(hub: &Hub, device: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = format!("/api/v1/devices/{device}/readings?{query}");
    for _ in 0..1_000 {
        let (status, body) = hub.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = body["buckets"].as_array().unwrap();
        out.extend(page.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices/{device}/readings?{query}&cursor={c}"),
            None => return out,
        }
    }
    panic!("paging did not end");
}

fn start_ms(b: &Value) -> u64 {
    let text = b["start"].as_str().unwrap();
    // RFC 3339 with milliseconds in UTC; the test only needs minutes and seconds past BASE's day.
    let t = time_of(text);
    assert_eq!(t % 1_000, 0, "{text}");
    t
}

/// Parses `2026-11-20THH:MM:SS.mmmZ` on BASE's day into unix ms.
fn time_of(text: &str) -> u64 {
    assert!(
        text.starts_with("2026-11-20T") && text.ends_with('Z'),
        "{text}"
    );
    let h: u64 = text[11..13].parse().unwrap();
    let m: u64 = text[14..16].parse().unwrap();
    let s: u64 = text[17..19].parse().unwrap();
    let ms: u64 = text[20..23].parse().unwrap();
    BASE_MS - 10 * 3_600_000 + ((h * 60 + m) * 60 + s) * 1_000 + ms
}

#[tokio::test(flavor = "multi_thread")]
async fn downsampled_buckets_match_a_reference_and_bad_parameters_are_named() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let sent = readings(600);
    seed(&hub, "ds", &sent).await;
    let all = "avg,min,max,count,first,last,sum";

    // Every aggregate, both orders, small pages: the same buckets as the reference.
    for (width_text, width) in [("1m", 60_000u64), ("15s", 15_000), ("1h", 3_600_000)] {
        let want = reference(&sent, "v", width, 0, u64::MAX);
        for order in ["oldest", "newest"] {
            let got = all_buckets(
                &hub,
                "ds",
                &format!("metric=v&bucket={width_text}&agg={all}&order={order}&limit=7"),
            )
            .await;
            let mut starts: Vec<u64> = want.keys().copied().collect();
            if order == "newest" {
                starts.reverse();
            }
            assert_eq!(
                got.iter().map(start_ms).collect::<Vec<_>>(),
                starts,
                "{width_text} {order}: only non-empty buckets, aligned, in order"
            );
            for b in &got {
                check_bucket(b, &want[&start_ms(b)], &format!("{width_text} {order}"));
            }
        }
    }

    // Default aggregate (avg), time bounds that cut buckets, booleans as 0/1.
    let (from, to) = (BASE_MS + 95_500, BASE_MS + 1_234_567);
    let want = reference(&sent, "flag", 60_000, from, to);
    let got = all_buckets(
        &hub,
        "ds",
        &format!("metric=flag&bucket=1m&from={from}&to={to}&order=oldest"),
    )
    .await;
    assert_eq!(got.len(), want.len());
    for b in &got {
        let mut keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["avg", "count", "start"], "{b}");
        check_bucket(b, &want[&start_ms(b)], "flag");
    }

    // Strings count, and have a first and last, but no numeric aggregates.
    let want = reference(&sent, "s", 300_000, 0, u64::MAX);
    let (status, body) = hub
        .get(&format!(
            "/api/v1/devices/ds/readings?metric=s&bucket=5m&agg={all}&order=oldest&limit=1000"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"], "ds");
    assert_eq!(body["metric"], "s");
    assert_eq!(body["bucket"], "5m");
    assert!(body["next_cursor"].is_null());
    let got = body["buckets"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for b in got {
        assert!(b["avg"].is_null() && b["sum"].is_null() && b["min"].is_null());
        check_bucket(b, &want[&start_ms(b)], "s");
    }

    // A metric the device never sent: no buckets.
    let (status, body) = hub
        .get("/api/v1/devices/ds/readings?metric=nothing&bucket=1m")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["buckets"], serde_json::json!([]));

    // Bad parameters: 400 problem+json naming the parameter.
    let cursor = {
        let (_, raw) = hub.get("/api/v1/devices/ds/readings?limit=1").await;
        raw["next_cursor"].as_str().unwrap().to_owned()
    };
    let cases = [
        ("metric=v&bucket=0s".to_owned(), "bucket"),
        ("metric=v&bucket=10x".to_owned(), "bucket"),
        ("metric=v&bucket=500ms".to_owned(), "bucket"),
        ("metric=v&bucket=ten".to_owned(), "bucket"),
        // 1 s buckets over three years: far more than 100000.
        (
            "metric=v&bucket=1s&from=2024-01-01T00:00:00Z&to=2027-01-01T00:00:00Z".to_owned(),
            "bucket",
        ),
        ("bucket=1m".to_owned(), "metric"),
        ("metric=v&bucket=1m&agg=median".to_owned(), "agg"),
        ("metric=v&bucket=1m&agg=avg,".to_owned(), "agg"),
        ("metric=v&agg=avg".to_owned(), "agg"),
        ("metric=v&bucket=1m&limit=0".to_owned(), "limit"),
        (format!("metric=v&bucket=1m&cursor={cursor}"), "cursor"),
        ("format=xml".to_owned(), "format"),
        ("format=csv&limit=10".to_owned(), "limit"),
    ];
    for (query, needle) in cases {
        let path = format!("/api/v1/devices/ds/readings?{query}");
        let response = hub
            .client()
            .get(hub.url(&path))
            .bearer_auth(hub.token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(&format!("`{needle}`")),
            "{path}: detail {detail:?} should name {needle:?}"
        );
    }
    // A bucket cursor of another width is refused too.
    let (_, page) = hub
        .get("/api/v1/devices/ds/readings?metric=v&bucket=1m&limit=1")
        .await;
    let c = page["next_cursor"].as_str().unwrap();
    let (status, body) = hub
        .get(&format!(
            "/api/v1/devices/ds/readings?metric=v&bucket=2m&cursor={c}"
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    // Unknown device with a bucket: 404.
    let (status, _) = hub
        .get("/api/v1/devices/nobody/readings?metric=v&bucket=1m")
        .await;
    assert_eq!(status, 404);
}

/// Parses RFC 4180 CSV (quoted fields with doubled quotes and line breaks, CRLF records).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => assert_eq!(chars.next(), Some('\n'), "CR without LF"),
            '\n' => panic!("bare LF ends a CSV record"),
            _ => field.push(c),
        }
        if c == '\r' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the last record ends with CRLF"
    );
    rows
}

/// A numeric CSV field as JSON: an integer when written as one, else a float, else null.
fn csv_number(field: &str) -> Value {
    match (field.parse::<i64>(), field.parse::<f64>()) {
        (Ok(i), _) => serde_json::json!(i),
        (_, Ok(x)) => serde_json::json!(x),
        _ => Value::Null,
    }
}

/// GETs `path` with `accept`; returns the content type and the body.
async fn fetch(hub: &Hub, path: &str, accept: &str) -> (String, String) {
    let response = hub
        .client()
        .get(hub.url(path))
        .bearer_auth(hub.token())
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (ct, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn export_streams_every_reading_as_csv_and_ndjson() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    // Three internal pages of 1000 and a bit.
    let sent = readings(2_600);
    seed(&hub, "exp", &sent).await;
    let by_seq: BTreeMap<u64, &Sent> = sent.iter().map(|r| (r.seq, r)).collect();

    // CSV through Accept: a row per metric value, newest first by default.
    let (ct, text) = fetch(&hub, "/api/v1/devices/exp/readings", "text/csv").await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    let rows = parse_csv(&text);
    assert_eq!(
        rows[0],
        ["ts", "offset", "boot", "seq", "hub_seq", "metric", "value"]
    );
    let values: usize = sent.iter().map(|r| r.metrics.len()).sum();
    assert_eq!(rows.len() - 1, values, "one row per metric value");
    let mut seen = BTreeMap::new();
    let mut last_ts = u64::MAX;
    for row in &rows[1..] {
        assert_eq!(row.len(), 7, "{row:?}");
        // The device numbers its readings and sends no boot: no boot, no hub number.
        assert!(row[2].is_empty() && row[4].is_empty(), "{row:?}");
        let seq: u64 = row[3].parse().unwrap();
        let r = by_seq[&seq];
        let ts = time_of(&row[0]);
        assert_eq!(ts, r.ts, "{row:?}");
        assert!(ts <= last_ts, "newest first");
        last_ts = ts;
        let (_, v) = r.metrics.iter().find(|(m, _)| *m == row[5]).unwrap();
        assert!(v.matches_csv(&row[6]), "{row:?} should hold {v:?}");
        *seen.entry((seq, row[5].clone())).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), values, "every value exactly once");
    assert!(seen.values().all(|n| *n == 1));

    // NDJSON through `format`, oldest first: one reading per line, the JSON API's shape.
    let (ct, text) = fetch(
        &hub,
        "/api/v1/devices/exp/readings?format=ndjson&order=oldest",
        "*/*",
    )
    .await;
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sent.len());
    let mut expected: Vec<&Sent> = sent.iter().collect();
    expected.sort_by_key(|r| (r.ts, r.seq));
    for (line, want) in lines.iter().zip(&expected) {
        assert_eq!(line["seq"].as_u64(), Some(want.seq), "{line}");
        assert_eq!(time_of(line["ts"].as_str().unwrap()), want.ts);
        assert!(line["offset"].is_u64());
        let metrics = line["metrics"].as_object().unwrap();
        assert_eq!(metrics.len(), want.metrics.len(), "{line}");
        for (m, v) in &want.metrics {
            assert!(v.matches_json(&metrics[*m]), "{line}: {m} should be {v:?}");
        }
    }
    // The same readings as the paged JSON API returns.
    let (_, page) = hub
        .get("/api/v1/devices/exp/readings?order=oldest&limit=3")
        .await;
    assert_eq!(&page["readings"].as_array().unwrap()[..], &lines[..3]);

    // `from`, `to` and `metric` apply to an export.
    let (from, to) = (BASE_MS + 1_000_000, BASE_MS + 15_000_000);
    let (ct, text) = fetch(
        &hub,
        &format!("/api/v1/devices/exp/readings?metric=v&from={from}&to={to}"),
        "application/x-ndjson",
    )
    .await;
    assert_eq!(ct, "application/x-ndjson");
    let want = sent.iter().filter(|r| r.ts >= from && r.ts < to).count();
    assert!(want > 1_000, "the range spans several internal pages");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want);
    for line in &lines {
        let keys: Vec<&String> = line["metrics"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["v"]);
    }

    // An empty range: the CSV header alone.
    let (_, text) = fetch(
        &hub,
        "/api/v1/devices/exp/readings?format=csv&from=0&to=1",
        "*/*",
    )
    .await;
    assert_eq!(text, "ts,offset,boot,seq,hub_seq,metric,value\r\n");

    // Buckets export too: CSV columns start, count and the aggregates; every bucket, no limit.
    let width = 15_000;
    let want = reference(&sent, "v", width, 0, u64::MAX);
    assert!(want.len() > 1_000, "more buckets than one internal page");
    let (ct, text) = fetch(
        &hub,
        "/api/v1/devices/exp/readings?metric=v&bucket=15s&agg=avg,count,max,last&order=oldest",
        "text/csv",
    )
    .await;
    assert!(ct.starts_with("text/csv"));
    let rows = parse_csv(&text);
    assert_eq!(rows[0], ["start", "count", "avg", "max", "last"]);
    assert_eq!(rows.len() - 1, want.len());
    for (row, (start, values)) in rows[1..].iter().zip(&want) {
        let b = serde_json::json!({
            "start": row[0],
            "count": row[1].parse::<u64>().unwrap(),
            "avg": row[2].parse::<f64>().ok(),
            "max": row[3].parse::<f64>().ok(),
            "last": csv_number(&row[4]),
        });
        assert_eq!(time_of(&row[0]), *start);
        check_bucket(&b, values, "csv bucket");
    }
    // And as NDJSON, newest first.
    let (_, text) = fetch(
        &hub,
        "/api/v1/devices/exp/readings?metric=v&bucket=15s&agg=sum,first&format=ndjson",
        "*/*",
    )
    .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want.len());
    for (line, (start, values)) in lines.iter().zip(want.iter().rev()) {
        assert_eq!(start_ms(line), *start);
        check_bucket(line, values, "ndjson bucket");
    }
}
