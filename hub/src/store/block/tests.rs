//! Tests of the block codec: each column encoding's edge cases, whole blocks of every awkward
//! kind of reading, proptests against the plain readings and a plain summary, hostile bytes,
//! and (ignored) the measurements quoted in the module's doc.

use std::collections::BTreeMap;

use device_protocol::OwnedValue;
use proptest::prelude::*;

use super::bits::{Reader, put_varint, unzigzag, varint_len, zigzag};
use super::columns::{get_bools, get_ints, get_strings, put_bools, put_ints, put_strings};
use super::floats::{get_floats, places, put_decimal, put_floats, put_raw, put_xor};
use super::*;
use crate::store::records::SeqOrigin;

// ---- helpers ----

fn reading(seq: u32, timestamp_ms: u64, metrics: Vec<(u32, OwnedValue)>) -> ReadingRecord {
    ReadingRecord {
        device: 7,
        seq,
        timestamp_ms,
        metrics,
        origin: SeqOrigin::Device,
    }
}

/// Whether two values are the same, floats by their bits.
fn same_value(a: &OwnedValue, b: &OwnedValue) -> bool {
    match (a, b) {
        (OwnedValue::F64(x), OwnedValue::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Asserts the readings are the same, field by field, floats by their bits.
fn assert_same(got: &[(u64, ReadingRecord)], want: &[(u64, ReadingRecord)]) {
    assert_eq!(got.len(), want.len(), "reading count");
    for (i, ((go, g), (wo, w))) in got.iter().zip(want).enumerate() {
        assert_eq!(go, wo, "offset of reading {i}");
        assert_eq!(
            (g.device, g.seq, g.timestamp_ms, g.origin),
            (w.device, w.seq, w.timestamp_ms, w.origin),
            "reading {i}"
        );
        assert_eq!(
            g.metrics.len(),
            w.metrics.len(),
            "metric count of reading {i}"
        );
        for (j, ((gid, gv), (wid, wv))) in g.metrics.iter().zip(&w.metrics).enumerate() {
            assert_eq!(gid, wid, "metric {j} of reading {i}");
            assert!(
                same_value(gv, wv),
                "reading {i} metric {j}: {gv:?} != {wv:?}"
            );
        }
    }
}

/// Encodes, decodes, compares; the block's bytes.
fn round_trip(readings: &[(u64, ReadingRecord)]) -> Vec<u8> {
    let bytes = encode(readings).unwrap();
    assert_same(&decode(&bytes).unwrap(), readings);
    assert_summary(&summarize(&bytes).unwrap(), &plain_summary(readings));
    assert_metric_projections(&bytes, readings);
    bytes
}

/// For every metric of the readings (and one of none), [`decode_metric`] gives the first value of
/// it in each reading that has it, with the reading's offset and timestamp.
fn assert_metric_projections(bytes: &[u8], readings: &[(u64, ReadingRecord)]) {
    let mut ids: Vec<u32> = readings
        .iter()
        .flat_map(|(_, r)| r.metrics.iter().map(|(id, _)| *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.push(ids.last().map_or(0, |l| l.wrapping_add(1)));
    for id in ids {
        let got = decode_metric(bytes, id).unwrap();
        let want: Vec<(u64, u64, &OwnedValue)> = readings
            .iter()
            .filter_map(|(o, r)| {
                let (_, v) = r.metrics.iter().find(|(m, _)| *m == id)?;
                Some((*o, r.timestamp_ms, v))
            })
            .collect();
        assert_eq!(got.len(), want.len(), "values of metric {id}");
        for ((go, gt, gv), (wo, wt, wv)) in got.iter().zip(&want) {
            assert_eq!((go, gt), (wo, wt), "metric {id}");
            assert!(same_value(gv, wv), "metric {id}: {gv:?} != {wv:?}");
        }
    }
}

/// The summary computed straight from the readings, as the doc of [`BlockSummary`] defines it.
fn plain_summary(readings: &[(u64, ReadingRecord)]) -> BlockSummary {
    struct Acc {
        count: u64,
        bools: u64,
        trues: u64,
        numbers: Vec<f64>,
    }
    let mut metrics: BTreeMap<u32, Acc> = BTreeMap::new();
    for (_, r) in readings {
        for (id, v) in &r.metrics {
            let acc = metrics.entry(*id).or_insert(Acc {
                count: 0,
                bools: 0,
                trues: 0,
                numbers: Vec::new(),
            });
            acc.count += 1;
            match v {
                OwnedValue::F64(x) if x.is_finite() => acc.numbers.push(*x),
                OwnedValue::I64(i) => acc.numbers.push(*i as f64),
                OwnedValue::Bool(b) => {
                    acc.bools += 1;
                    acc.trues += u64::from(*b);
                }
                _ => {}
            }
        }
    }
    let first_least = |xs: &[f64], less: fn(f64, f64) -> bool| {
        xs.iter()
            .copied()
            .reduce(|m, x| if less(x, m) { x } else { m })
    };
    BlockSummary {
        device: readings[0].1.device,
        readings: readings.len(),
        first_offset: readings[0].0,
        last_offset: readings[readings.len() - 1].0,
        min_timestamp_ms: readings.iter().map(|(_, r)| r.timestamp_ms).min().unwrap(),
        max_timestamp_ms: readings.iter().map(|(_, r)| r.timestamp_ms).max().unwrap(),
        metrics: metrics
            .into_iter()
            .map(|(metric, a)| MetricSummary {
                metric,
                count: a.count,
                bools: a.bools,
                trues: a.trues,
                numeric: (!a.numbers.is_empty()).then(|| NumericSummary {
                    count: a.numbers.len() as u64,
                    min: first_least(&a.numbers, |x, m| x < m).unwrap(),
                    max: first_least(&a.numbers, |x, m| x > m).unwrap(),
                    sum: a.numbers.iter().fold(0.0, |s, x| s + x),
                }),
            })
            .collect(),
    }
}

/// Asserts two summaries are the same, floats by their bits.
fn assert_summary(got: &BlockSummary, want: &BlockSummary) {
    let bits = |s: &BlockSummary| {
        let mut s = s.clone();
        let figures: Vec<Option<(u64, u64, u64, u64)>> = s
            .metrics
            .iter_mut()
            .map(|m| {
                m.numeric
                    .take()
                    .map(|n| (n.count, n.min.to_bits(), n.max.to_bits(), n.sum.to_bits()))
            })
            .collect();
        (s, figures)
    };
    assert_eq!(bits(got), bits(want));
}

/// A seeded SplitMix64: the workspace's `rand` is not a dependency of the hub's tests, and
/// this is all the generator needs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        self.range(0.0, 1.0) < p
    }
}

/// Readings like firmware-sim's (firmware-sim/src/sensors.rs): its drifts, roundings and door,
/// one a second with a small jitter on one in ten, offsets stepping as in a store of 100
/// devices. Metric ids 1..=4: temperature, humidity, battery, door.
fn firmware_sim(seed: u64, count: usize) -> Vec<(u64, ReadingRecord)> {
    let mut rng = Rng(seed);
    let mut temperature = rng.range(18.0, 24.0);
    let mut humidity = rng.range(35.0, 60.0);
    let mut battery = rng.range(80.0, 100.0);
    let mut door = false;
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let mut offset = rng.below(100);
    let start_ms = 1_795_255_200_000 + rng.below(1000);
    let first_seq = rng.below(1000) as u32;
    (0..count)
        .map(|i| {
            temperature = (temperature + rng.range(-0.2, 0.2)).clamp(-20.0, 50.0);
            humidity = (humidity + rng.range(-0.5, 0.5)).clamp(5.0, 95.0);
            battery = (battery - rng.range(0.0, 0.01)).max(0.0);
            if rng.chance(0.02) {
                door = !door;
            }
            let jitter = if rng.chance(0.1) {
                rng.below(41) as i64 - 20
            } else {
                0
            };
            offset += 90 + rng.below(21);
            let r = ReadingRecord {
                device: 42,
                seq: first_seq + i as u32,
                timestamp_ms: (start_ms as i64 + i as i64 * 1000 + jitter) as u64,
                metrics: vec![
                    (1, OwnedValue::F64(round(temperature, 2))),
                    (2, OwnedValue::F64(round(humidity, 1))),
                    (3, OwnedValue::F64(round(battery, 2))),
                    (4, OwnedValue::Bool(door)),
                ],
                origin: SeqOrigin::Device,
            };
            (offset, r)
        })
        .collect()
}

fn ints_round_trip(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    put_ints(&mut out, values);
    let mut r = Reader::new(&out, "test");
    let mut back = Vec::new();
    get_ints(&mut r, values.len(), &mut back).unwrap();
    assert_eq!(back, values);
    assert_eq!(r.remaining(), 0);
    out
}

fn floats_back(bytes: &[u8], n: usize) -> Result<Vec<f64>, BlockError> {
    let mut r = Reader::new(bytes, "test");
    let mut out = Vec::new();
    get_floats(&mut r, n, &mut out, &mut Vec::new())?;
    assert_eq!(r.remaining(), 0, "bytes left after the floats");
    Ok(out)
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|x| x.to_bits()).collect()
}

fn assert_floats_round_trip(values: &[f64]) -> Vec<u8> {
    let mut encodings = Vec::new();
    let mut best = Vec::new();
    put_floats(&mut best, values);
    encodings.push(best.clone());
    let mut raw = Vec::new();
    put_raw(&mut raw, values);
    encodings.push(raw);
    let mut xor = Vec::new();
    put_xor(&mut xor, values);
    encodings.push(xor);
    // The scales the choice weighs: from the fewest places a value needs to the most.
    let needed: Vec<usize> = values.iter().filter_map(|&v| places(v)).collect();
    let weighed = |k: usize| {
        needed.iter().min().is_some_and(|&lo| lo <= k)
            && needed.iter().max().is_some_and(|&hi| k <= hi)
    };
    for k in 0..=9 {
        let mut decimal = Vec::new();
        put_decimal(&mut decimal, values, k);
        let back = floats_back(&decimal, values.len()).unwrap();
        assert_eq!(bits(&back), bits(values), "decimal at scale {k}");
        if weighed(k) {
            encodings.push(decimal);
        }
    }
    for bytes in &encodings {
        let back = floats_back(bytes, values.len()).unwrap();
        assert_eq!(bits(&back), bits(values), "encoding {}", bytes[0]);
        assert!(
            best.len() <= bytes.len(),
            "the chosen encoding is the smallest"
        );
    }
    best
}

const SPECIAL_FLOATS: [f64; 14] = [
    0.0,
    -0.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    f64::MAX,
    f64::MIN,
    f64::EPSILON,
    1e300,
    -123.456,
    0.1,
];

// ---- varints and zig-zag ----

#[test]
fn varints_round_trip_at_every_length_and_know_their_length() {
    for v in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u32::MAX as u64,
        u64::MAX >> 1,
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "{v}");
        let mut r = Reader::new(&out, "test");
        assert_eq!(r.varint().unwrap(), v);
        assert_eq!(r.remaining(), 0);
    }
}

#[test]
fn a_varint_over_64_bits_is_an_error_not_a_wrap() {
    let mut bytes = vec![0xff; 9];
    bytes.push(0x02);
    assert!(matches!(
        Reader::new(&bytes, "test").varint(),
        Err(BlockError::Corrupt { .. })
    ));
    let endless = vec![0x80; 100];
    assert!(Reader::new(&endless, "test").varint().is_err());
}

#[test]
fn a_varint_cut_short_is_truncated() {
    assert_eq!(
        Reader::new(&[0x80, 0x80], "here").varint(),
        Err(BlockError::Truncated("here"))
    );
    assert_eq!(
        Reader::new(&[], "here").varint(),
        Err(BlockError::Truncated("here"))
    );
}

#[test]
fn zigzag_maps_small_magnitudes_to_small_numbers_and_back_at_the_extremes() {
    assert_eq!(
        [0, -1, 1, -2, 2].map(zigzag),
        [0, 1, 2, 3, 4],
        "small magnitudes first"
    );
    for v in [0, 1, -1, i64::MIN, i64::MAX, i64::MIN + 1] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
    assert_eq!(zigzag(i64::MIN), u64::MAX);
}

// ---- integer sequences ----

#[test]
fn integer_sequences_round_trip_at_the_extremes_of_i64() {
    ints_round_trip(&[]);
    ints_round_trip(&[0]);
    ints_round_trip(&[i64::MIN]);
    ints_round_trip(&[i64::MIN, i64::MAX, i64::MIN, 0, i64::MAX, -1]);
    ints_round_trip(&[i64::MAX, i64::MAX - 1, i64::MIN, i64::MIN + 1]);
}

#[test]
fn a_constant_sequence_is_one_run() {
    let bytes = ints_round_trip(&[1_795_255_200_000; 4096]);
    assert!(bytes.len() <= 12, "{} bytes", bytes.len());
}

#[test]
fn a_steady_count_costs_a_few_bytes_as_deltas_of_deltas() {
    let values: Vec<i64> = (0..4096).map(|i| 1_795_255_200_000 + i * 1000).collect();
    let bytes = ints_round_trip(&values);
    assert!(bytes.len() <= 16, "{} bytes", bytes.len());
}

#[test]
fn small_noisy_values_take_a_few_bits_each() {
    let mut rng = Rng(3);
    let values: Vec<i64> = (0..1000).map(|_| rng.below(16) as i64 - 8).collect();
    let bytes = ints_round_trip(&values);
    // 4 bits of zig-zag each, as fixed-width bits.
    assert!(bytes.len() <= 2 + 500, "{} bytes", bytes.len());
}

#[test]
fn integer_runs_past_the_count_or_empty_are_errors() {
    // Mode: plain, runs. A run of 5 where 3 are expected.
    let mut bytes = vec![1 << 2];
    put_varint(&mut bytes, 0);
    put_varint(&mut bytes, 5);
    let mut out = Vec::new();
    assert!(get_ints(&mut Reader::new(&bytes, "t"), 3, &mut out).is_err());
    let empty_run = [1 << 2, 0, 0];
    assert!(get_ints(&mut Reader::new(&empty_run, "t"), 3, &mut out).is_err());
}

#[test]
fn unknown_integer_modes_and_widths_over_64_are_errors() {
    let mut out = Vec::new();
    for bytes in [&[3u8][..], &[3 << 2], &[2 << 2, 65, 0, 0]] {
        assert!(matches!(
            get_ints(&mut Reader::new(bytes, "t"), 1, &mut out),
            Err(BlockError::Corrupt { .. })
        ));
    }
}

#[test]
fn a_sequence_claiming_more_varints_than_bytes_fails_before_allocating() {
    let mut out = Vec::new();
    assert_eq!(
        get_ints(&mut Reader::new(&[0, 1, 2], "t"), usize::MAX, &mut out),
        Err(BlockError::Truncated("t"))
    );
    assert_eq!(out.capacity(), 0);
    // Bits: the length is checked, not multiplied blindly.
    assert!(
        get_ints(
            &mut Reader::new(&[2 << 2, 64, 0], "t"),
            usize::MAX / 2,
            &mut out
        )
        .is_err()
    );
}

// ---- booleans ----

#[test]
fn booleans_round_trip_as_runs_or_bits_whichever_is_smaller() {
    let mut rng = Rng(5);
    let cases: Vec<Vec<bool>> = vec![
        vec![],
        vec![true],
        vec![false; 5000],
        vec![true; 300],
        (0..1001).map(|i| i % 2 == 0).collect(),
        (0..999).map(|_| rng.chance(0.5)).collect(),
        (0..999).map(|_| rng.chance(0.02)).collect(),
    ];
    for values in cases {
        let mut out = Vec::new();
        put_bools(&mut out, &values);
        assert!(
            out.len() <= 2 + values.len().div_ceil(8),
            "{} bytes",
            out.len()
        );
        let mut back = Vec::new();
        let mut r = Reader::new(&out, "t");
        get_bools(&mut r, values.len(), &mut back).unwrap();
        assert_eq!(back, values);
        assert_eq!(r.remaining(), 0);
    }
}

#[test]
fn boolean_runs_that_are_empty_or_too_long_or_not_0_or_1_are_errors() {
    let mut out = Vec::new();
    for bytes in [&[0u8, 1, 0][..], &[0, 1, 4], &[0, 2, 1], &[2]] {
        assert!(
            get_bools(&mut Reader::new(bytes, "t"), 3, &mut out).is_err(),
            "{bytes:?}"
        );
    }
}

// ---- strings ----

#[test]
fn strings_round_trip_empty_long_repeated_and_unicode() {
    let long = "x".repeat(MAX_STRING_BYTES);
    let values = ["", "a", "", "grüße 🌡", &long, "a", "🌡", "", "\0", &long];
    let mut out = Vec::new();
    put_strings(&mut out, &values);
    // The long string is stored once.
    assert!(out.len() < MAX_STRING_BYTES + 100);
    let mut budget = usize::MAX;
    let mut r = Reader::new(&out, "t");
    let s = get_strings(&mut r, values.len(), MAX_STRING_BYTES, &mut budget).unwrap();
    let back: Vec<&str> = s.indices.iter().map(|&i| &s.dict[i as usize][..]).collect();
    assert_eq!(back, values);
    assert_eq!(r.remaining(), 0);
    assert_eq!(
        usize::MAX - budget,
        values.iter().map(|s| s.len()).sum::<usize>(),
        "each value's copy is charged"
    );
}

#[test]
fn strings_that_are_not_utf8_too_long_past_the_dictionary_or_over_budget_are_errors() {
    let decode = |bytes: &[u8], n: usize, budget: usize| {
        let mut budget = budget;
        get_strings(&mut Reader::new(bytes, "t"), n, 4, &mut budget).map(|_| ())
    };
    // One entry of 2 bytes, not UTF-8; then indices plain varints [0].
    assert!(decode(&[1, 2, 0xc3, 0x28, 0, 0], 1, 100).is_err());
    // An entry of 5 bytes where 4 is the limit.
    assert!(decode(&[1, 5, b'a', b'b', b'c', b'd', b'e', 0, 0], 1, 100).is_err());
    // Index 1 of a dictionary of one (zig-zag 2).
    assert!(decode(&[1, 1, b'a', 0, 2], 1, 100).is_err());
    // No dictionary for a value.
    assert!(decode(&[0, 0, 0], 1, 100).is_err());
    // Two copies of "ab" over a budget of 3.
    assert!(decode(&[1, 2, b'a', b'b', 0, 0, 0], 2, 3).is_err());
    assert!(decode(&[1, 2, b'a', b'b', 0, 0, 0], 2, 4).is_ok());
    // More entries than values.
    assert!(decode(&[2, 1, b'a', 1, b'b', 0, 0], 1, 100).is_err());
}

// ---- floats ----

#[test]
fn special_floats_round_trip_bit_for_bit_in_every_encoding() {
    assert_floats_round_trip(&SPECIAL_FLOATS);
    let nans = [
        f64::from_bits(0x7ff0_0000_0000_0001),
        f64::from_bits(0xfff8_0000_dead_beef),
        f64::from_bits(0x7fff_ffff_ffff_ffff),
        -f64::NAN,
    ];
    assert_floats_round_trip(&nans);
    assert_floats_round_trip(&[-0.0; 10]);
    assert_floats_round_trip(&[f64::NAN]);
}

#[test]
fn decimal_floats_are_stored_as_scaled_integers_with_the_odd_value_kept_aside() {
    let mut values: Vec<f64> = (0..1000)
        .map(|i| 20.0 + f64::from(i % 37) / 100.0)
        .collect();
    let plain = assert_floats_round_trip(&values);
    assert_eq!(plain[0], 2, "decimal");
    assert_eq!(plain[1], 2, "two places");
    values[10] = f64::NAN;
    values[500] = -0.0;
    values[900] = 0.123_456_789_012_345;
    let with_exceptions = assert_floats_round_trip(&values);
    assert_eq!(with_exceptions[0], 2, "still decimal");
    // Each exception: its position and bits, and two breaks in the runs of deltas.
    assert!(
        with_exceptions.len() <= plain.len() + 3 * 16,
        "{}",
        with_exceptions.len()
    );
}

#[test]
fn the_decimal_scale_is_the_fewest_places_that_hold_every_value() {
    for (values, k) in [
        (vec![1.0, 2.0, -3.0], 0),
        (vec![1.5, 2.25], 2),
        (vec![0.000_000_001, 1.0], 9),
        (vec![21.37, 21.4, 21.0], 2),
    ] {
        let mut out = Vec::new();
        put_floats(&mut out, &values);
        assert_eq!(&out[..2], &[2, k], "{values:?}");
        assert_floats_round_trip(&values);
    }
}

#[test]
fn values_whose_scaled_integers_overflow_i64_are_exceptions() {
    let values = [9.3e18, -9.3e18, 9.2e18, 1e19, 1.0];
    assert_floats_round_trip(&values);
    let mut out = Vec::new();
    put_decimal(&mut out, &values, 9);
    assert_eq!(
        floats_back(&out, values.len()).unwrap()[3].to_bits(),
        1e19f64.to_bits()
    );
}

#[test]
fn subnormals_and_random_bits_round_trip() {
    let mut rng = Rng(11);
    let random: Vec<f64> = (0..500).map(|_| f64::from_bits(rng.next())).collect();
    let best = assert_floats_round_trip(&random);
    assert!(best.len() <= 1 + 8 * random.len(), "never worse than raw");
    let subnormals: Vec<f64> = (0..100).map(|i| f64::from_bits(i * 7919)).collect();
    assert_floats_round_trip(&subnormals);
}

#[test]
fn a_constant_float_column_costs_about_a_bit_a_value_as_xor() {
    let values = vec![std::f64::consts::PI; 4000];
    let bytes = assert_floats_round_trip(&values);
    assert!(bytes.len() <= 1 + 8 + 500, "{} bytes", bytes.len());
}

#[test]
fn float_encodings_that_lie_are_errors() {
    // Decimal scale 10.
    assert!(floats_back(&[2, 10, 0, 0, 0], 1).is_err());
    // An exception past the values.
    let mut bytes = vec![2, 1, 1, 3];
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&[0, 0, 0]);
    assert!(floats_back(&bytes, 2).is_err());
    // XOR reusing a window before any: first value, then bits 1, 0.
    let mut bytes = vec![1];
    bytes.extend_from_slice(&[0; 8]);
    bytes.push(0b01);
    assert!(floats_back(&bytes, 2).is_err());
    // XOR with a window of 31 leading zeros and 64 bits.
    let mut bytes = vec![1];
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&[0b1111_1111, 0xff, 0xff, 0xff]);
    assert!(floats_back(&bytes, 2).is_err());
    // Unknown encoding, and raw cut short.
    assert!(floats_back(&[3], 1).is_err());
    assert!(floats_back(&[0, 1, 2, 3], 1).is_err());
    assert!(floats_back(&[1, 0, 0], 1).is_err());
}

// ---- whole blocks ----

#[test]
fn a_block_of_one_reading_without_metrics_round_trips() {
    round_trip(&[(0, reading(0, 0, vec![]))]);
    round_trip(&[(u64::MAX, reading(u32::MAX, u64::MAX, vec![]))]);
}

#[test]
fn awkward_readings_round_trip_exactly() {
    let long = "é".repeat(2000);
    let readings = vec![
        (5, reading(u32::MAX - 1, u64::MAX, vec![])),
        (
            6,
            reading(
                u32::MAX,
                0,
                vec![
                    (3, OwnedValue::F64(-0.0)),
                    (3, OwnedValue::F64(f64::NAN)),
                    (1, OwnedValue::I64(i64::MIN)),
                    (3, OwnedValue::Str(String::new())),
                ],
            ),
        ),
        (
            1_000,
            reading(
                0,
                u64::MAX - 1,
                vec![
                    (3, OwnedValue::I64(i64::MAX)),
                    (u32::MAX, OwnedValue::Str(long.clone())),
                    (0, OwnedValue::Bool(true)),
                ],
            ),
        ),
        (
            1_001,
            reading(
                1,
                12,
                vec![
                    (1, OwnedValue::F64(5e-324)),
                    (1, OwnedValue::F64(f64::NEG_INFINITY)),
                    (u32::MAX, OwnedValue::Str(long)),
                    (0, OwnedValue::Bool(false)),
                    (0, OwnedValue::Bool(true)),
                ],
            ),
        ),
        (
            u64::MAX,
            reading(7, 3, vec![(3, OwnedValue::Str("🌡 ≈ 21 °C".into()))]),
        ),
    ];
    let mut readings = readings;
    readings[1].1.origin = SeqOrigin::Boot(u32::MAX);
    readings[2].1.origin = SeqOrigin::Hub;
    readings[3].1.origin = SeqOrigin::Boot(0);
    round_trip(&readings);
}

#[test]
fn firmware_sim_blocks_round_trip_and_summarize_at_every_block_size() {
    for (seed, n) in [(1, 1), (2, 2), (3, 64), (4, 1000), (5, MAX_BLOCK_READINGS)] {
        let readings = firmware_sim(seed, n);
        let bytes = round_trip(&readings);
        if n >= 64 {
            assert!(
                bytes.len() < 10 * n,
                "{} bytes for {n} readings",
                bytes.len()
            );
        }
    }
}

#[test]
fn a_block_of_only_strings_and_integers_round_trips() {
    let readings: Vec<(u64, ReadingRecord)> = (0..500u32)
        .map(|i| {
            let metrics = vec![
                (
                    9,
                    OwnedValue::Str(["on", "off", "idle"][(i % 3) as usize].into()),
                ),
                (2, OwnedValue::I64(i64::from(i) * 3 - 700)),
                (9, OwnedValue::Str(format!("{i}"))),
            ];
            (
                u64::from(i) * 2,
                reading(i.wrapping_mul(7), u64::from(i % 17), metrics),
            )
        })
        .collect();
    round_trip(&readings);
}

#[test]
fn a_metric_that_changes_type_gets_a_column_per_type() {
    let values = [
        OwnedValue::F64(1.5),
        OwnedValue::I64(2),
        OwnedValue::Bool(true),
        OwnedValue::Str("3".into()),
        OwnedValue::F64(4.0),
    ];
    let readings: Vec<(u64, ReadingRecord)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, reading(i as u32, 0, vec![(1, v.clone())])))
        .collect();
    round_trip(&readings);
    let summary = summarize(&encode(&readings).unwrap()).unwrap();
    let m = &summary.metrics[0];
    assert_eq!((m.count, m.bools, m.trues), (5, 1, 1));
    assert_eq!(
        m.numeric.map(|n| (n.count, n.min, n.max, n.sum)),
        Some((3, 1.5, 4.0, 7.5))
    );
}

#[test]
fn the_summary_is_read_from_the_header_alone() {
    let readings = firmware_sim(9, 300);
    let bytes = encode(&readings).unwrap();
    let summary = summarize(&bytes).unwrap();
    // The header ends before the body byte: summarizing reads nothing after it.
    let mut r = Reader::new(&bytes, "t");
    r.byte().unwrap();
    BlockSummary::read(&mut r).unwrap();
    let header_len = bytes.len() - r.remaining();
    assert_eq!(summarize(&bytes[..header_len]).unwrap(), summary);
    assert_eq!(summary.readings, 300);
    assert_eq!(summary.metrics.len(), 4);
    assert_eq!(summary.metrics[3].bools, 300);
}

#[test]
fn a_small_block_has_these_exact_bytes() {
    // Pins format 1: a change here is a new format, and old blocks must still decode.
    let readings = vec![
        (
            100,
            reading(
                5,
                1000,
                vec![(1, OwnedValue::F64(21.5)), (2, OwnedValue::Bool(true))],
            ),
        ),
        (
            110,
            reading(
                6,
                2000,
                vec![(1, OwnedValue::F64(21.25)), (2, OwnedValue::Bool(true))],
            ),
        ),
    ];
    let bytes = round_trip(&readings);
    #[rustfmt::skip]
    let golden: &[u8] = &[
        1, // format
        // Header: device 7, 2 readings, offsets 100 and +10, timestamps 1000 and +1000, 2 metrics.
        7, 2, 100, 10, 232, 7, 232, 7, 2,
        // Metric 1: 2 values, no booleans, 2 numeric: min 21.25, max 21.5, sum 42.75.
        1, 2, 0, 0, 2,
        0, 0, 0, 0, 0, 64, 53, 64, 0, 0, 0, 0, 0, 128, 53, 64, 0, 0, 0, 0, 0, 96, 69, 64,
        // Metric 2: 2 values, 2 booleans, 2 true, none numeric.
        0, 2, 2, 2, 0,
        0, // columns not compressed
        0, 0, 20, // offsets - 100, plain zig-zag varints: 0, 10
        0, 0, 208, 15, // timestamps - 1000: 0, 1000
        0, 10, 12, // seqs: 5, 6
        0, 2, // origins: device, 2 readings
        1, 2, 4, 10, // one shape of 2 slots: (1, f64), (2, bool)
        8, 0, // each reading's shape: 0, as 0-bit values
        2, 2, 0, 1, 204, 33, 49, // (1, f64): decimal, 2 places, no exceptions, deltas 2150, -25
        1, 3, // (2, bool): bits 1, 1
    ];
    assert_eq!(bytes, golden, "{bytes:?}");
}

// ---- encode errors ----

#[test]
fn encoding_refuses_no_readings_two_devices_and_offsets_not_ascending() {
    assert_eq!(encode(&[]), Err(BlockError::Empty));
    let mut other = reading(1, 1, vec![]);
    other.device = 8;
    assert_eq!(
        encode(&[(1, reading(0, 0, vec![])), (2, other)]),
        Err(BlockError::MixedDevices { first: 7, other: 8 })
    );
    for (a, b) in [(5, 5), (5, 4), (u64::MAX, 0)] {
        assert_eq!(
            encode(&[(a, reading(0, 0, vec![])), (b, reading(1, 0, vec![]))]),
            Err(BlockError::OffsetsNotAscending {
                previous: a,
                offset: b
            })
        );
    }
}

#[test]
fn encoding_refuses_more_than_the_caps() {
    let many: Vec<(u64, ReadingRecord)> = (0..=MAX_BLOCK_READINGS as u64)
        .map(|i| (i, reading(0, 0, vec![])))
        .collect();
    assert_eq!(
        encode(&many),
        Err(BlockError::TooManyReadings {
            count: MAX_BLOCK_READINGS + 1
        })
    );
    assert!(encode(&many[..MAX_BLOCK_READINGS]).is_ok());

    let wide = vec![(1, OwnedValue::Bool(true)); 65];
    let too_many: Vec<(u64, ReadingRecord)> = (0..BLOCK_READINGS as u64)
        .map(|i| (i, reading(0, 0, wide.clone())))
        .collect();
    assert_eq!(
        encode(&too_many),
        Err(BlockError::TooManyValues {
            count: 65 * BLOCK_READINGS
        })
    );

    let long = OwnedValue::Str("x".repeat(MAX_STRING_BYTES + 1));
    assert_eq!(
        encode(&[(0, reading(0, 0, vec![(1, long)]))]),
        Err(BlockError::StringTooLong {
            len: MAX_STRING_BYTES + 1
        })
    );
    let big = OwnedValue::Str("x".repeat(MAX_STRING_BYTES));
    let heavy: Vec<(u64, ReadingRecord)> = (0..65u64)
        .map(|i| (i, reading(0, 0, vec![(1, big.clone())])))
        .collect();
    assert_eq!(
        encode(&heavy),
        Err(BlockError::TooManyStringBytes {
            bytes: 65 * MAX_STRING_BYTES
        })
    );
    assert!(encode(&heavy[..64]).is_ok());
}

// ---- hostile bytes ----

/// The same block with its columns not compressed, so changes to it reach the column
/// decoders rather than zstd's.
fn uncompressed(block: &[u8]) -> Vec<u8> {
    let mut r = Reader::new(block, "t");
    r.byte().unwrap();
    BlockSummary::read(&mut r).unwrap();
    let header_len = block.len() - r.remaining();
    let mut out = block[..header_len].to_vec();
    match r.byte().unwrap() {
        BODY_ZSTD => {
            out.push(BODY_PLAIN);
            out.extend_from_slice(&super::decompress(r.rest()).unwrap());
        }
        _ => out.extend_from_slice(&block[header_len..]),
    }
    out
}

/// Blocks of every kind this file makes, each compressed (where it gains) and not.
fn sample_blocks() -> Vec<Vec<u8>> {
    let mut blocks = vec![
        encode(&firmware_sim(21, 1)).unwrap(),
        encode(&firmware_sim(22, 40)).unwrap(),
        encode(&firmware_sim(23, 200)).unwrap(),
    ];
    let mixed: Vec<(u64, ReadingRecord)> = (0..60u32)
        .map(|i| {
            let metrics = vec![
                (
                    1,
                    OwnedValue::F64(SPECIAL_FLOATS[i as usize % SPECIAL_FLOATS.len()]),
                ),
                (2, OwnedValue::Str(format!("s{}", i % 4))),
                (3, OwnedValue::I64(i64::from(i) << 40)),
            ];
            let mut r = reading(i, u64::from(i * 997 % 13), metrics);
            r.origin = [SeqOrigin::Hub, SeqOrigin::Boot(i)][(i % 2) as usize];
            (u64::from(i) * 3 + 1, r)
        })
        .collect();
    blocks.push(encode(&mixed).unwrap());
    let plain: Vec<Vec<u8>> = blocks.iter().map(|b| uncompressed(b)).collect();
    for (block, plain) in blocks.iter().zip(&plain) {
        assert_same(&decode(plain).unwrap(), &decode(block).unwrap());
    }
    blocks.extend(plain);
    blocks
}

#[test]
fn a_block_cut_at_any_length_is_an_error() {
    for block in sample_blocks() {
        for len in 0..block.len() {
            assert!(
                decode(&block[..len]).is_err(),
                "cut at {len} of {}",
                block.len()
            );
        }
        assert!(decode(&block).is_ok());
    }
}

#[test]
fn a_block_with_any_byte_changed_decodes_or_errs_but_never_panics() {
    for block in sample_blocks() {
        for i in 0..block.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = block.clone();
                bad[i] ^= flip;
                let _ = summarize(&bad);
                if let Ok(readings) = decode(&bad) {
                    // Whatever it says, it says it again.
                    let again = decode(&encode(&readings).unwrap()).unwrap();
                    assert_same(&again, &readings);
                }
            }
        }
    }
}

#[test]
fn a_block_with_bytes_after_its_columns_is_an_error() {
    let readings = vec![(1, reading(1, 1, vec![(1, OwnedValue::I64(1))]))];
    let mut bytes = encode(&readings).unwrap();
    bytes.push(0);
    assert!(matches!(decode(&bytes), Err(BlockError::Corrupt { .. })));
}

#[test]
fn an_unknown_format_or_body_encoding_is_an_error() {
    let mut bytes = encode(&firmware_sim(1, 10)).unwrap();
    bytes[0] = 2;
    assert_eq!(decode(&bytes), Err(BlockError::UnknownFormat(2)));
    assert_eq!(summarize(&bytes), Err(BlockError::UnknownFormat(2)));
    assert_eq!(decode(&[]), Err(BlockError::Truncated("format")));
}

/// A header that claims what it likes (offsets first 0, last `span`; timestamps all 0), then
/// `rest`.
fn header_bytes(readings: u64, span: u64, metrics: &[(u64, u64)], rest: &[u8]) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    for v in [7, readings, 0, span, 0, 0, metrics.len() as u64] {
        put_varint(&mut out, v);
    }
    for &(id_gap, count) in metrics {
        for v in [id_gap, count, 0, 0, 0] {
            put_varint(&mut out, v);
        }
    }
    out.extend_from_slice(rest);
    out
}

#[test]
fn blocks_claiming_huge_counts_are_refused() {
    // Readings over the cap.
    let bytes = header_bytes(MAX_BLOCK_READINGS as u64 + 1, 0, &[], &[0]);
    assert!(matches!(summarize(&bytes), Err(BlockError::Corrupt { .. })));
    // No readings.
    assert!(decode(&header_bytes(0, 0, &[], &[0])).is_err());
    // A metric claiming u64::MAX values.
    assert!(summarize(&header_bytes(1, 0, &[(1, u64::MAX)], &[0])).is_err());
    // u32::MAX metrics in the header, with a few bytes behind.
    let mut bytes = vec![FORMAT_V1];
    for v in [7, 1, 0, 0, 0, 0, u64::from(u32::MAX)] {
        put_varint(&mut bytes, v);
    }
    bytes.extend_from_slice(&[0; 64]);
    assert!(summarize(&bytes).is_err());
    // A shape of 2^40 slots.
    let mut body = vec![BODY_PLAIN];
    // Offsets, timestamps, seqs: one plain varint 0 each; one origin run.
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, ORIGIN_TEST_DEVICE, 1]);
    put_varint(&mut body, 1);
    put_varint(&mut body, 1 << 40);
    body.extend_from_slice(&[0; 32]);
    let err = decode(&header_bytes(1, 0, &[], &body)).unwrap_err();
    assert!(
        matches!(
            err,
            BlockError::Corrupt {
                section: "shapes",
                ..
            }
        ),
        "{err}"
    );
    // MAX_BLOCK_READINGS readings all of a shape of 64 booleans of metric 0, in a few bytes of
    // runs claiming 262 144 values, over the cap.
    let n = MAX_BLOCK_READINGS as u64;
    let mut body = vec![BODY_PLAIN];
    // Offsets 0, 1, 2 ..: deltas of deltas 0, 1, then 0s, as runs.
    body.extend_from_slice(&[2 | 1 << 2, 0, 1, 2, 1, 0]);
    put_varint(&mut body, n - 2);
    for _ in 0..2 {
        body.extend_from_slice(&[1 << 2, 0]);
        put_varint(&mut body, n);
    }
    body.push(ORIGIN_TEST_DEVICE);
    put_varint(&mut body, n);
    put_varint(&mut body, 1);
    put_varint(&mut body, 64);
    body.extend_from_slice(&[2; 64]);
    body.extend_from_slice(&[1 << 2, 0]);
    put_varint(&mut body, n);
    let err = decode(&header_bytes(n, n - 1, &[(0, 1)], &body)).unwrap_err();
    assert_eq!(
        err,
        BlockError::Corrupt {
            section: "shape of each reading",
            what: "more values than the limit"
        }
    );
}

const ORIGIN_TEST_DEVICE: u8 = 0;

#[test]
fn a_compressed_body_declaring_more_than_the_cap_is_refused_before_decompressing() {
    let huge = zstd::bulk::compress(&vec![0u8; MAX_BODY_BYTES + 1], 1).unwrap();
    let mut bytes = header_bytes(1, 0, &[], &[BODY_ZSTD]);
    bytes.extend_from_slice(&huge);
    let err = decode(&bytes).unwrap_err();
    assert!(
        matches!(err, BlockError::Decompress(ref e) if e.contains("declares")),
        "{err}"
    );
    // A frame that does not declare its size.
    let mut streamed = Vec::new();
    {
        let mut encoder = zstd::stream::Encoder::new(&mut streamed, 1).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &[0; 100]).unwrap();
        encoder.finish().unwrap();
    }
    let mut bytes = header_bytes(1, 0, &[], &[BODY_ZSTD]);
    bytes.extend_from_slice(&streamed);
    assert!(matches!(decode(&bytes), Err(BlockError::Decompress(_))));
    // Not zstd at all.
    assert!(matches!(
        decode(&header_bytes(1, 0, &[], &[BODY_ZSTD, 0, 0, 0, 0])),
        Err(BlockError::Decompress(_))
    ));
}

// ---- properties ----

fn float_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        proptest::sample::select(SPECIAL_FLOATS.to_vec()),
        (-1_000_000i64..1_000_000, 0i32..4).prop_map(|(m, k)| m as f64 / 10f64.powi(k)),
        any::<f64>(),
    ]
}

fn value() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        3 => float_value().prop_map(OwnedValue::F64),
        2 => prop_oneof![any::<i64>(), -100i64..100, Just(i64::MIN), Just(i64::MAX)]
            .prop_map(OwnedValue::I64),
        1 => any::<bool>().prop_map(OwnedValue::Bool),
        1 => prop_oneof![
            proptest::sample::select(vec!["", "on", "off", "ü🌡"]).prop_map(String::from),
            ".{0,12}",
            proptest::collection::vec(any::<char>(), 200..400)
                .prop_map(|c| c.into_iter().collect::<String>()),
        ]
        .prop_map(OwnedValue::Str),
    ]
}

fn metrics() -> impl Strategy<Value = Vec<(u32, OwnedValue)>> {
    proptest::collection::vec(
        (prop_oneof![4 => 0u32..5, 1 => any::<u32>()], value()),
        0..6,
    )
}

fn origin() -> impl Strategy<Value = SeqOrigin> {
    prop_oneof![
        Just(SeqOrigin::Device),
        Just(SeqOrigin::Hub),
        prop_oneof![0u32..3, any::<u32>()].prop_map(SeqOrigin::Boot),
    ]
}

/// A block: offsets with gaps from any start, timestamps steady, jittered or anywhere, seqs
/// counting (and wrapping) or anywhere, and readings that repeat a few shapes or not.
fn block() -> impl Strategy<Value = Vec<(u64, ReadingRecord)>> {
    let reading = (
        prop_oneof![1u64..3, 1u64..200, 1u64..(1 << 40)],
        prop_oneof![Just(0i64), -50i64..50, any::<i64>()],
        prop_oneof![Just(1u32), any::<u32>()],
        origin(),
        prop_oneof![(0usize..3).prop_map(Some), Just(None)],
        metrics(),
    );
    (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(metrics(), 1..4),
        proptest::collection::vec(reading, 1..80),
    )
        .prop_map(|(offset, ts, seq, device, templates, parts)| {
            let mut offset = offset >> 1;
            let mut seq = seq;
            parts
                .into_iter()
                .enumerate()
                .map(|(i, (gap, jitter, step, origin, template, metrics))| {
                    offset += gap;
                    seq = seq.wrapping_add(step);
                    // A template keeps its shape; its values are this reading's where the
                    // types agree.
                    let metrics = match template {
                        Some(t) => templates[t % templates.len()].clone(),
                        None => metrics,
                    };
                    let ts = ts.wrapping_add(i as u64 * 1000).wrapping_add(jitter as u64);
                    let r = ReadingRecord {
                        device,
                        seq,
                        timestamp_ms: ts,
                        metrics,
                        origin,
                    };
                    (offset, r)
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any block decodes to exactly its readings, and its summary is the plain one.
    #[test]
    fn any_block_decodes_to_its_readings_and_summarizes_as_the_plain_model(readings in block()) {
        round_trip(&readings);
    }

    /// Any float column comes back bit for bit, whichever encoding it takes.
    #[test]
    fn any_float_column_round_trips(values in proptest::collection::vec(float_value(), 0..300)) {
        assert_floats_round_trip(&values);
    }

    /// Any integer sequence comes back exactly.
    #[test]
    fn any_integer_sequence_round_trips(
        values in proptest::collection::vec(prop_oneof![any::<i64>(), -3i64..3], 0..300),
    ) {
        ints_round_trip(&values);
    }

    /// Bytes of any kind never make decoding panic, and what decodes encodes again to itself.
    #[test]
    fn any_bytes_decode_or_err_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = summarize(&bytes);
        if let Ok(readings) = decode(&bytes) {
            assert_same(&decode(&encode(&readings).unwrap()).unwrap(), &readings);
        }
    }
}

// ---- measurements (ignored; see the module's doc) ----

/// Prints bytes per reading at each block size and the decode time per reading:
/// `cargo test --release -p hub --lib store::block::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure() {
    let devices = 20;
    let postcard: usize = firmware_sim(1, 1000)
        .iter()
        .map(|(_, r)| postcard::to_allocvec(r).unwrap().len())
        .sum();
    println!(
        "postcard record: {:.1} bytes a reading",
        postcard as f64 / 1000.0
    );
    println!("readings  bytes/reading  plain columns/reading  header/reading");
    for n in [64, 256, 1024, 4096] {
        let (mut total, mut plain, mut header) = (0, 0, 0);
        for d in 0..devices {
            let readings = firmware_sim(100 + d, n);
            let bytes = encode(&readings).unwrap();
            total += bytes.len();
            let mut r = Reader::new(&bytes, "t");
            r.byte().unwrap();
            let summary = BlockSummary::read(&mut r).unwrap();
            header += bytes.len() - r.remaining();
            let mut body = Vec::new();
            super::body::write(&readings, &summary, &mut body);
            plain += body.len();
        }
        let per = |b: usize| b as f64 / (devices as usize * n) as f64;
        println!(
            "{n:8}  {:13.2}  {:21.2}  {:14.2}",
            per(total),
            per(plain),
            per(header)
        );
    }
    let readings = firmware_sim(7, BLOCK_READINGS);
    let bytes = encode(&readings).unwrap();
    // The best of 100 batches of 10, so other work on the machine does not count: decoding
    // alone (the readings dropped off the clock), then with their drop; then encoding.
    let best = |mut run: Box<dyn FnMut() -> std::time::Duration>| {
        let mut batches: Vec<std::time::Duration> = (0..100).map(|_| run()).collect();
        batches.sort();
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / (10 * BLOCK_READINGS) as f64;
        (ns(batches[0]), ns(batches[50]))
    };
    let (fastest, median) = best(Box::new(|| {
        let mut kept = Vec::with_capacity(10);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            kept.push(decode(std::hint::black_box(&bytes)).unwrap());
        }
        start.elapsed()
    }));
    println!("decode: {fastest:.1} ns a reading, median {median:.1} ({BLOCK_READINGS} a block)");
    let (fastest, median) = best(Box::new(|| {
        let start = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(decode(std::hint::black_box(&bytes)).unwrap());
        }
        start.elapsed()
    }));
    println!("decode and drop: {fastest:.1} ns a reading, median {median:.1}");
    // One metric's values, as a downsampled query reads them.
    let metric = readings[0].1.metrics[0].0;
    let (fastest, median) = best(Box::new(|| {
        let start = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(decode_metric(std::hint::black_box(&bytes), metric).unwrap());
        }
        start.elapsed()
    }));
    println!("decode one metric and drop: {fastest:.1} ns a reading, median {median:.1}");
    // The floor of any decoder that returns these types: cloning the readings and dropping.
    let (fastest, median) = best(Box::new(|| {
        let start = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(std::hint::black_box(&readings).clone());
        }
        start.elapsed()
    }));
    println!("clone and drop: {fastest:.1} ns a reading, median {median:.1}");
    let (fastest, median) = best(Box::new(|| {
        let start = std::time::Instant::now();
        std::hint::black_box(encode(std::hint::black_box(&readings)).unwrap());
        start.elapsed() * 10
    }));
    println!("encode: {fastest:.1} ns a reading, median {median:.1}");
}

/// Writes sample blocks as seeds for the fuzz target:
/// `BLOCK_FUZZ_SEEDS=fuzz/corpus/block_decode cargo test -p hub --lib
/// store::block::tests::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("BLOCK_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (i, block) in sample_blocks().iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i}"), block).unwrap();
    }
}
