//! The downsampler against a naive reference (group every value by bucket, aggregate each whole
//! group): by hand for alignment, mixed types, paging and time bounds, through the store's index,
//! and over random readings.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// The naive reference: group every value by bucket in a map, then aggregate each group
/// from the whole list, sorted by (time, offset).
fn reference(
    points: &[(u64, u64, OwnedValue)],
    width: u64,
    order: Order,
) -> Vec<BTreeMap<&'static str, AggValue>> {
    let mut groups: BTreeMap<u64, Vec<(u64, u64, OwnedValue)>> = BTreeMap::new();
    for p in points {
        groups
            .entry(p.0 / width * width)
            .or_default()
            .push(p.clone());
    }
    let mut out: Vec<_> = groups
        .into_iter()
        .map(|(start, mut group)| {
            group.sort_by_key(|p| (p.0, p.1));
            let nums: Vec<f64> = group
                .iter()
                .filter_map(|p| match &p.2 {
                    OwnedValue::F64(x) => Some(*x),
                    OwnedValue::I64(i) => Some(*i as f64),
                    OwnedValue::Bool(b) => Some(u8::from(*b) as f64),
                    OwnedValue::Str(_) => None,
                })
                .collect();
            let some = |x: f64| AggValue::Number((!nums.is_empty()).then_some(x));
            let sum: f64 = nums.iter().sum();
            let mut m = BTreeMap::new();
            m.insert("start", AggValue::Count(start));
            m.insert("count", AggValue::Count(group.len() as u64));
            m.insert("sum", some(sum));
            m.insert("avg", some(sum / nums.len().max(1) as f64));
            m.insert("min", some(nums.iter().copied().fold(f64::MAX, f64::min)));
            m.insert("max", some(nums.iter().copied().fold(f64::MIN, f64::max)));
            m.insert("first", AggValue::Value(group.first().map(|p| p.2.clone())));
            m.insert("last", AggValue::Value(group.last().map(|p| p.2.clone())));
            m
        })
        .collect();
    if order == Order::Newest {
        out.reverse();
    }
    out
}

fn flatten(bucket: &Bucket) -> BTreeMap<&'static str, AggValue> {
    let mut m = BTreeMap::new();
    m.insert("start", AggValue::Count(bucket.start_ms));
    for agg in Agg::ALL {
        m.insert(agg.name(), bucket.get(agg));
    }
    m
}

/// Runs the downsampler over `points` the way the store scans: sorted by (time, offset) in
/// `order`, limited to `[from, to)` and resuming after the cursor, page by page.
fn run_paged(
    points: &[(u64, u64, OwnedValue)],
    width: u64,
    order: Order,
    limit: usize,
    from: Option<u64>,
    to: Option<u64>,
) -> Vec<Bucket> {
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| (p.0, p.1));
    if order == Order::Newest {
        sorted.reverse();
    }
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let query = DownsampleQuery {
            device: "d".into(),
            metric: "m".into(),
            from_ms: from,
            to_ms: to,
            bucket_ms: width,
            order,
            limit,
            after,
        };
        let Some((lo, hi)) = query.scan_range() else {
            break;
        };
        let mut ds = Downsampler::new(width, order, limit);
        for p in sorted
            .iter()
            .filter(|p| p.0 >= lo && hi.is_none_or(|h| p.0 < h))
        {
            if ds.push(p.0, &p.2).is_break() {
                break;
            }
        }
        let page = ds.finish();
        assert!(page.buckets.len() <= limit);
        all.extend(page.buckets);
        match page.next {
            Some(n) => after = Some(n),
            None => return all,
        }
    }
    panic!("paging did not end");
}

fn close(a: &AggValue, b: &AggValue) -> bool {
    match (a, b) {
        (AggValue::Number(Some(x)), AggValue::Number(Some(y))) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

fn assert_matches(got: &[Bucket], want: &[BTreeMap<&'static str, AggValue>]) {
    assert_eq!(got.len(), want.len(), "bucket count");
    for (g, w) in got.iter().zip(want) {
        let g = flatten(g);
        for (k, wv) in w {
            assert!(close(&g[k], wv), "{k}: got {:?}, want {wv:?}", g[k]);
        }
    }
}

fn v(x: f64) -> OwnedValue {
    OwnedValue::F64(x)
}

#[test]
fn buckets_align_to_the_epoch_and_skip_empty_ones() {
    // 10 s buckets; readings at 5 s, 9.999 s, 10 s, and 45 s: buckets 0, 10 and 40 only.
    let points = vec![
        (5_000, 0, v(1.0)),
        (9_999, 1, v(3.0)),
        (10_000, 2, v(10.0)),
        (45_000, 3, v(7.0)),
    ];
    let got = run_paged(&points, 10_000, Order::Oldest, 100, None, None);
    let starts: Vec<u64> = got.iter().map(|b| b.start_ms).collect();
    assert_eq!(starts, vec![0, 10_000, 40_000]);
    assert_eq!(got[0].get(Agg::Avg), AggValue::Number(Some(2.0)));
    assert_eq!(got[0].get(Agg::Count), AggValue::Count(2));
    // A day bucket starts at midnight UTC: 2026-11-21T10:00:00Z falls into 2026-11-21T00:00Z.
    assert_eq!(
        bucket_start(1_795_255_200_000, 86_400_000),
        1_795_219_200_000
    );
    assert_eq!(buckets_in_range(0, 1, 1_000), 1);
    assert_eq!(buckets_in_range(999, 1_001, 1_000), 2);
    assert_eq!(buckets_in_range(0, 100_000_000, 1_000), 100_000);
    assert_eq!(buckets_in_range(5, 5, 1_000), 0);
}

#[test]
fn mixed_types_aggregate_by_their_kind() {
    let points = vec![
        (1_000, 0, OwnedValue::I64(4)),
        (1_100, 1, OwnedValue::Bool(true)),
        (1_200, 2, OwnedValue::Str("x".into())),
        (1_300, 3, v(2.5)),
        (2_000, 4, OwnedValue::Str("only".into())),
        (2_500, 5, OwnedValue::Str("strings".into())),
    ];
    for order in [Order::Oldest, Order::Newest] {
        let got = run_paged(&points, 1_000, order, 10, None, None);
        assert_matches(&got, &reference(&points, 1_000, order));
        let numbers = got.iter().find(|b| b.start_ms == 1_000).unwrap();
        assert_eq!(numbers.get(Agg::Count), AggValue::Count(4));
        assert_eq!(numbers.get(Agg::Sum), AggValue::Number(Some(7.5)));
        assert_eq!(numbers.get(Agg::Avg), AggValue::Number(Some(2.5)));
        assert_eq!(numbers.get(Agg::Min), AggValue::Number(Some(1.0)));
        assert_eq!(numbers.get(Agg::Max), AggValue::Number(Some(4.0)));
        assert_eq!(
            numbers.get(Agg::First),
            AggValue::Value(Some(OwnedValue::I64(4)))
        );
        assert_eq!(numbers.get(Agg::Last), AggValue::Value(Some(v(2.5))));
        let strings = got.iter().find(|b| b.start_ms == 2_000).unwrap();
        assert_eq!(strings.get(Agg::Count), AggValue::Count(2));
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Sum] {
            assert_eq!(strings.get(agg), AggValue::Number(None), "{agg:?}");
        }
        assert_eq!(
            strings.get(Agg::First),
            AggValue::Value(Some(OwnedValue::Str("only".into())))
        );
        assert_eq!(
            strings.get(Agg::Last),
            AggValue::Value(Some(OwnedValue::Str("strings".into())))
        );
    }
}

#[test]
fn paging_resumes_after_the_last_bucket_in_both_orders() {
    let points: Vec<_> = (0..100u64)
        .map(|i| (i * 730, i, v((i * 7 % 13) as f64)))
        .collect();
    for order in [Order::Oldest, Order::Newest] {
        let want = reference(&points, 5_000, order);
        for limit in [1, 2, 3, 7, 100] {
            let got = run_paged(&points, 5_000, order, limit, None, None);
            assert_matches(&got, &want);
        }
    }
    // A full last page says nothing follows once the data has ended.
    let mut ds = Downsampler::new(1_000, Order::Oldest, 2);
    assert!(ds.push(0, &v(1.0)).is_continue());
    assert!(ds.push(1_000, &v(1.0)).is_continue());
    assert_eq!(ds.finish().next, None);
}

#[test]
fn time_bounds_cut_readings_not_bucket_alignment() {
    let points: Vec<_> = (0..50u64).map(|i| (i * 100, i, v(i as f64))).collect();
    let inside: Vec<_> = points
        .iter()
        .filter(|p| p.0 >= 1_250 && p.0 < 3_333)
        .cloned()
        .collect();
    for order in [Order::Oldest, Order::Newest] {
        let got = run_paged(&points, 1_000, order, 2, Some(1_250), Some(3_333));
        assert_matches(&got, &reference(&inside, 1_000, order));
        assert!(got.iter().all(|b| b.start_ms % 1_000 == 0));
    }
}

#[test]
fn the_store_downsamples_its_index_page_by_page() {
    use std::sync::Arc;

    use crate::store::memory::MemoryEngine;
    use crate::store::{NewReading, Store, Transport};

    let dir = tempfile::tempdir().unwrap();
    let engines: Vec<Arc<dyn crate::store::Engine>> = vec![
        Arc::new(MemoryEngine::new()),
        crate::store::open_engine(crate::store::EngineKind::Redb, dir.path(), 1 << 20).unwrap(),
    ];
    for engine in engines {
        let store = Store::open(engine).unwrap();
        // Timestamps out of arrival order, another metric in between, another device too.
        let mut points = Vec::new();
        let mut batch = Vec::new();
        for i in 0..300u64 {
            let ts = 1_795_255_200_000 + (i * 7_919) % 600_000;
            let value = match i % 4 {
                0 => OwnedValue::I64(i as i64),
                1 => v(i as f64 / 3.0),
                2 => OwnedValue::Bool(i % 3 == 0),
                _ => OwnedValue::Str(format!("s{i}")),
            };
            let mut metrics = vec![("other".to_owned(), v(1.0))];
            if i % 5 != 0 {
                metrics.push(("m".to_owned(), value.clone()));
                points.push((ts, i, value));
            }
            for device in ["d", "e"] {
                batch.push(NewReading {
                    device: device.into(),
                    transport: Transport::Mqtt,
                    wire: crate::store::Wire::Json,
                    seq: Some(i as u32),
                    boot: None,
                    timestamp_ms: Some(ts),
                    received_ms: 0,
                    metrics: metrics.clone(),
                });
            }
        }
        store.append(&batch).unwrap();
        for order in [Order::Oldest, Order::Newest] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let query = DownsampleQuery {
                    device: "d".into(),
                    metric: "m".into(),
                    from_ms: None,
                    to_ms: None,
                    bucket_ms: 60_000,
                    order,
                    limit: 3,
                    after,
                };
                let page = store.downsample(&query).unwrap().unwrap();
                assert!(page.buckets.len() <= 3);
                got.extend(page.buckets);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_matches(&got, &reference(&points, 60_000, order));
        }
        let mut query = DownsampleQuery {
            device: "nobody".into(),
            metric: "m".into(),
            from_ms: None,
            to_ms: None,
            bucket_ms: 1_000,
            order: Order::Oldest,
            limit: 10,
            after: None,
        };
        assert_eq!(store.downsample(&query).unwrap(), None);
        query.device = "d".into();
        query.metric = "never-sent".into();
        assert!(
            store
                .downsample(&query)
                .unwrap()
                .unwrap()
                .buckets
                .is_empty()
        );
        // The span is over every reading, with the metric or not.
        let stamps = (0..300u64).map(|i| 1_795_255_200_000 + (i * 7_919) % 600_000);
        let (first, last) = (stamps.clone().min().unwrap(), stamps.max().unwrap());
        assert_eq!(store.reading_span("d").unwrap(), Some((first, last)));
        assert_eq!(store.reading_span("nobody").unwrap(), None);
    }
}

fn value() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        (-1_000i64..1_000).prop_map(OwnedValue::I64),
        (-1e6f64..1e6).prop_map(OwnedValue::F64),
        any::<bool>().prop_map(OwnedValue::Bool),
        "[a-z]{0,3}".prop_map(OwnedValue::Str),
    ]
}

proptest! {
    #[test]
    fn matches_the_naive_reference(
        raw in proptest::collection::vec((0u64..60_000, value()), 0..200),
        width in prop_oneof![Just(1_000u64), Just(7_000), Just(60_000)],
        limit in 1usize..20,
        newest in any::<bool>(),
        bounds in proptest::option::of((0u64..30_000, 30_000u64..70_000)),
    ) {
        let order = if newest { Order::Newest } else { Order::Oldest };
        let points: Vec<_> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (ts, v))| (ts, i as u64, v))
            .collect();
        let (from, to) = match bounds {
            Some((f, t)) => (Some(f), Some(t)),
            None => (None, None),
        };
        let inside: Vec<_> = points
            .iter()
            .filter(|p| from.is_none_or(|f| p.0 >= f) && to.is_none_or(|t| p.0 < t))
            .cloned()
            .collect();
        let got = run_paged(&points, width, order, limit, from, to);
        assert_matches(&got, &reference(&inside, width, order));
    }
}
