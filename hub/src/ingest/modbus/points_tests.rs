use proptest::prelude::*;
use serde_json::json;

use super::*;

fn point(name: &str, table: Table, address: u16, kind: PointType) -> PointConfig {
    PointConfig {
        name: name.into(),
        table,
        address,
        kind,
        length: None,
        word_order: ByteOrder::Big,
        byte_order: ByteOrder::Big,
        scale: None,
        offset: None,
        unit: None,
        writable: false,
    }
}

#[test]
fn registers_decode_in_every_order() {
    let mut p = point("p", Table::Holding, 0, PointType::U32);
    // 0x12345678, big words, big bytes: as the Modbus convention sends it.
    assert_eq!(
        decode(&p, &[0x1234, 0x5678]),
        Some(OwnedValue::I64(0x1234_5678))
    );
    p.word_order = ByteOrder::Little;
    assert_eq!(
        decode(&p, &[0x5678, 0x1234]),
        Some(OwnedValue::I64(0x1234_5678))
    );
    p.byte_order = ByteOrder::Little;
    assert_eq!(
        decode(&p, &[0x7856, 0x3412]),
        Some(OwnedValue::I64(0x1234_5678))
    );

    let mut f = point("f", Table::Input, 0, PointType::F32);
    let bits = 230.5f32.to_bits();
    let (hi, lo) = ((bits >> 16) as u16, bits as u16);
    assert_eq!(decode(&f, &[hi, lo]), Some(OwnedValue::F64(230.5)));
    f.word_order = ByteOrder::Little;
    assert_eq!(decode(&f, &[lo, hi]), Some(OwnedValue::F64(230.5)));
    // NaN is no value.
    f.word_order = ByteOrder::Big;
    assert_eq!(decode(&f, &[0x7FC0, 0]), None);

    let i = point("i", Table::Holding, 0, PointType::I16);
    assert_eq!(decode(&i, &[0xFFFE]), Some(OwnedValue::I64(-2)));
    let big = point("u", Table::Holding, 0, PointType::U64);
    assert_eq!(
        decode(&big, &[0xFFFF; 4]),
        Some(OwnedValue::F64(u64::MAX as f64)),
        "beyond i64: a float"
    );
}

#[test]
fn scale_and_offset_apply_to_numbers() {
    let mut p = point("v", Table::Holding, 0, PointType::I16);
    p.scale = Some(0.1);
    p.offset = Some(-40.0);
    let Some(OwnedValue::F64(x)) = decode(&p, &[652]) else {
        panic!("a float")
    };
    assert!((x - 25.2).abs() < 1e-9, "{x}");
    // A decimal scale gives the decimal the device meant, not its nearest float product.
    p.offset = None;
    assert_eq!(
        decode(&p, &[(-126i16) as u16]),
        Some(OwnedValue::F64(-12.6))
    );
    p.scale = Some(0.25);
    assert_eq!(decode(&p, &[10]), Some(OwnedValue::F64(2.5)));
    p.scale = Some(0.1);
    p.offset = Some(-40.0);
    // Undone for a write, rounded to the nearest raw value.
    assert_eq!(encode(&p, &json!(25.2)), Ok(Encoded::Registers(vec![652])));
    assert_eq!(
        encode(&p, &json!(-40.0 - 3.0)),
        Ok(Encoded::Registers(vec![(-30i16) as u16]))
    );
    let err = encode(&p, &json!(10_000)).unwrap_err();
    assert!(err.contains("does not fit"), "{err}");
    assert!(encode(&p, &json!("warm")).unwrap_err().contains("number"));
}

#[test]
fn strings_trim_their_padding() {
    let mut s = point("model", Table::Holding, 0, PointType::String);
    s.length = Some(8);
    let words = [
        u16::from_be_bytes(*b"SD"),
        u16::from_be_bytes(*b"M6"),
        u16::from_be_bytes(*b"30"),
        0,
    ];
    assert_eq!(decode(&s, &words), Some(OwnedValue::Str("SDM630".into())));
    s.byte_order = ByteOrder::Little;
    let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
    assert_eq!(decode(&s, &swapped), Some(OwnedValue::Str("SDM630".into())));
}

#[test]
fn coils_take_booleans() {
    let c = point("relay", Table::Coil, 3, PointType::Bool);
    assert_eq!(encode(&c, &json!(true)), Ok(Encoded::Coil(true)));
    assert_eq!(encode(&c, &json!(0)), Ok(Encoded::Coil(false)));
    assert!(encode(&c, &json!("on")).is_err());
    assert_eq!(decode(&c, &[1]), Some(OwnedValue::Bool(true)));
}

#[test]
fn contiguous_points_share_a_request_and_gaps_split() {
    let mut points = vec![
        point("a", Table::Input, 0, PointType::F32),
        point("b", Table::Input, 2, PointType::U16),
        point("c", Table::Input, 10, PointType::U16),
        point("d", Table::Holding, 0, PointType::U16),
        point("e", Table::Coil, 0, PointType::Bool),
        point("f", Table::Coil, 1, PointType::Bool),
    ];
    points.push(point("g", Table::Input, 1, PointType::U16)); // overlaps a
    let requests = plan(&points);
    let shape: Vec<(Table, u16, u16, Vec<usize>)> = requests
        .into_iter()
        .map(|r| (r.table, r.start, r.count, r.points))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Table::Holding, 0, 1, vec![3]),
            (Table::Input, 0, 3, vec![0, 1, 6]),
            (Table::Input, 10, 1, vec![2]),
            (Table::Coil, 0, 2, vec![4, 5]),
        ]
    );
}

#[test]
fn a_long_run_is_cut_at_the_request_limit() {
    let points: Vec<PointConfig> = (0..100)
        .map(|i| point(&format!("p{i}"), Table::Holding, i * 2, PointType::U32))
        .collect();
    let requests = plan(&points);
    // 200 registers: 62 points (124 registers) in the first, the rest in the second.
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].start, requests[0].count), (0, 124));
    assert_eq!((requests[1].start, requests[1].count), (124, 76));
}

fn any_kind() -> impl Strategy<Value = PointType> {
    prop_oneof![
        Just(PointType::U16),
        Just(PointType::I16),
        Just(PointType::U32),
        Just(PointType::I32),
        Just(PointType::U64),
        Just(PointType::I64),
        Just(PointType::F32),
        Just(PointType::F64),
    ]
}

fn any_order() -> impl Strategy<Value = ByteOrder> {
    prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)]
}

fn any_point() -> impl Strategy<Value = PointConfig> {
    (
        prop_oneof![
            Just(Table::Holding),
            Just(Table::Input),
            Just(Table::Coil),
            Just(Table::Discrete)
        ],
        0u16..300,
        any_kind(),
    )
        .prop_map(|(table, address, kind)| {
            let kind = if table.is_bits() {
                PointType::Bool
            } else {
                kind
            };
            point("p", table, address, kind)
        })
}

proptest! {
    /// Registers decoded and encoded again are the same registers, in every order (floats whose
    /// bits are a NaN excepted: they are no value).
    #[test]
    fn encoding_undoes_decoding(
        kind in any_kind(),
        word_order in any_order(),
        byte_order in any_order(),
        registers in proptest::collection::vec(any::<u16>(), 4),
    ) {
        let mut p = point("p", Table::Holding, 0, kind);
        p.word_order = word_order;
        p.byte_order = byte_order;
        let registers = &registers[..usize::from(p.span())];
        let Some(value) = decode(&p, registers) else { return Ok(()); };
        let json = match value {
            OwnedValue::I64(n) => json!(n),
            OwnedValue::F64(x) => json!(x),
            other => panic!("{other:?}"),
        };
        // u64 beyond i64 goes through a float and cannot come back exactly.
        prop_assume!(!(kind == PointType::U64 && json.is_f64()));
        prop_assert_eq!(encode(&p, &json), Ok(Encoded::Registers(registers.to_vec())));
    }

    /// Every point is in exactly one request, which holds all of it, stays within the
    /// protocol's limit, and reads no address that no point names.
    #[test]
    fn plans_cover_every_point_once_within_limits(
        points in proptest::collection::vec(any_point(), 1..60),
    ) {
        let requests = plan(&points);
        let mut seen = vec![0u32; points.len()];
        for r in &requests {
            prop_assert!(r.count >= 1 && r.count <= r.table.max_read());
            for &i in &r.points {
                seen[i] += 1;
                let p = &points[i];
                prop_assert_eq!(p.table, r.table);
                prop_assert!(p.address >= r.start);
                prop_assert!(u32::from(p.address) + u32::from(p.span())
                    <= u32::from(r.start) + u32::from(r.count));
            }
            for address in r.start..r.start + r.count {
                prop_assert!(r.points.iter().any(|&i| {
                    let p = &points[i];
                    address >= p.address && u32::from(address) < u32::from(p.address) + u32::from(p.span())
                }), "address {} of {:?} is no point's", address, r);
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
        // Requests of one table that touch could only be apart for the limit.
        for pair in requests.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.table == b.table && b.start <= a.start + a.count {
                prop_assert!(u32::from(b.start + b.count) - u32::from(a.start) > u32::from(a.table.max_read()));
            }
        }
    }
}
