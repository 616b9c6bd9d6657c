use super::proto::{Value, datatype::*};
use super::*;

fn metric(name: Option<&str>, alias: Option<u64>, datatype: Option<u32>, value: Value) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias,
        datatype,
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: u64, metrics: Vec<Metric>) -> Payload {
    Payload {
        timestamp: Some(1_000),
        seq: Some(seq),
        metrics,
        ..Payload::default()
    }
}

fn birth(seq: u64, bd: u64) -> Payload {
    payload(
        seq,
        vec![
            metric(Some("bdSeq"), None, Some(INT64), Value::Long(bd)),
            metric(
                Some("Node Control/Rebirth"),
                None,
                Some(BOOLEAN),
                Value::Boolean(false),
            ),
            metric(Some("Inputs/Offset"), Some(1), Some(INT8), Value::Int(0xfe)),
            metric(
                Some("Properties/Hardware Make"),
                Some(2),
                Some(STRING),
                Value::String("acme".into()),
            ),
        ],
    )
}

#[test]
fn a_birth_names_aliases_that_data_then_uses() {
    let mut node = EdgeNode::default();
    let mut said = Said::default();
    node.node_birth(&birth(0, 3), &mut said);
    assert!(node.is_born());
    assert_eq!(said.statuses, vec![(None, true)]);
    assert_eq!(
        said.readings,
        vec![(
            Some(1_000),
            vec![
                ("Inputs.Offset".into(), OwnedValue::I64(-2)),
                (
                    "Properties.Hardware_Make".into(),
                    OwnedValue::Str("acme".into())
                ),
            ]
        )],
        "control metrics are not stored; folders become dots"
    );
    let mut said = Said::default();
    let mut data = payload(1, vec![metric(None, Some(1), None, Value::Int(0xff))]);
    data.metrics[0].timestamp = Some(2_000);
    node.data(None, &data, &mut said);
    assert_eq!(
        said.readings,
        vec![(
            Some(2_000),
            vec![("Inputs.Offset".into(), OwnedValue::I64(-1))]
        )]
    );
    assert!(!said.rebirth && !said.seq_gap);
    assert_eq!(
        node.datatype(&None, "Inputs.Offset"),
        Some(("Inputs/Offset".into(), INT8))
    );
}

#[test]
fn a_sequence_gap_asks_for_a_rebirth_and_keeps_the_values() {
    let mut node = EdgeNode::default();
    node.node_birth(&birth(0, 0), &mut Said::default());
    let mut said = Said::default();
    node.data(
        None,
        &payload(1, vec![metric(None, Some(1), None, Value::Int(1))]),
        &mut said,
    );
    assert!(!said.seq_gap);
    let mut said = Said::default();
    node.data(
        None,
        &payload(3, vec![metric(None, Some(1), None, Value::Int(2))]),
        &mut said,
    );
    assert!(said.seq_gap && said.rebirth);
    assert_eq!(said.readings.len(), 1, "the values that came are kept");
    // The count goes on from the message that came.
    let mut said = Said::default();
    node.data(
        None,
        &payload(4, vec![metric(None, Some(1), None, Value::Int(2))]),
        &mut said,
    );
    assert!(!said.seq_gap);
    // 255 wraps to 0.
    let mut node = EdgeNode::default();
    node.node_birth(&birth(255, 0), &mut Said::default());
    let mut said = Said::default();
    node.data(None, &payload(0, vec![]), &mut said);
    assert!(!said.seq_gap);
}

#[test]
fn data_of_a_node_never_born_asks_for_a_rebirth() {
    let mut node = EdgeNode::default();
    let mut said = Said::default();
    node.data(
        None,
        &payload(
            9,
            vec![
                metric(None, Some(1), None, Value::Int(1)),
                metric(Some("t"), None, Some(DOUBLE), Value::Double(1.5)),
            ],
        ),
        &mut said,
    );
    assert!(said.rebirth);
    assert_eq!(said.skipped, vec![Skipped::UnknownAlias]);
    assert_eq!(
        said.readings,
        vec![(Some(1_000), vec![("t".into(), OwnedValue::F64(1.5))])]
    );
}

#[test]
fn devices_are_born_and_die_and_the_node_death_takes_them_all() {
    let mut node = EdgeNode::default();
    node.node_birth(&birth(0, 7), &mut Said::default());
    for (seq, device) in [(1, "d1"), (2, "d2")] {
        let mut said = Said::default();
        let dbirth = payload(
            seq,
            vec![metric(
                Some("temp"),
                Some(10 + seq),
                Some(FLOAT),
                Value::Float(1.5),
            )],
        );
        node.device_birth(device, &dbirth, &mut said);
        assert_eq!(said.statuses, vec![(Some(device.into()), true)]);
        assert_eq!(
            said.readings[0].1,
            vec![("temp".into(), OwnedValue::F64(1.5))]
        );
    }
    // An alias of d1 is not d2's.
    let mut said = Said::default();
    node.data(
        Some("d2"),
        &payload(3, vec![metric(None, Some(11), None, Value::Float(2.0))]),
        &mut said,
    );
    assert_eq!(said.skipped, vec![Skipped::UnknownAlias]);
    let mut said = Said::default();
    node.device_death("d1", &payload(4, vec![]), &mut said);
    assert_eq!(said.statuses, vec![(Some("d1".into()), false)]);
    assert!(!node.has_device("d1") && node.has_device("d2"));
    // A death of an earlier birth is ignored.
    let mut said = Said::default();
    node.node_death(
        &Payload {
            metrics: vec![metric(Some("bdSeq"), None, Some(INT64), Value::Long(6))],
            ..Payload::default()
        },
        &mut said,
    );
    assert!(said.stale_death && said.statuses.is_empty() && node.is_born());
    let mut said = Said::default();
    node.node_death(
        &Payload {
            metrics: vec![metric(Some("bdSeq"), None, Some(INT64), Value::Long(7))],
            ..Payload::default()
        },
        &mut said,
    );
    assert_eq!(
        said.statuses,
        vec![(None, false), (Some("d2".into()), false)]
    );
    assert!(!node.is_born());
}

#[test]
fn unstorable_metrics_are_skipped_by_reason_and_readings_stay_bounded() {
    let mut node = EdgeNode::default();
    let mut metrics = vec![
        metric(Some("blob"), None, Some(17), Value::Bytes(vec![1])),
        metric(
            Some("long"),
            None,
            Some(STRING),
            Value::String("x".repeat(300)),
        ),
        metric(Some("bad:name"), None, Some(BOOLEAN), Value::Boolean(true)),
        Metric {
            name: Some("none".into()),
            ..Metric::default()
        },
        Metric {
            name: Some("null".into()),
            is_null: Some(true),
            ..Metric::default()
        },
    ];
    metrics
        .extend((0..100).map(|i| metric(Some(&format!("m{i}")), None, Some(INT32), Value::Int(i))));
    let mut said = Said::default();
    node.node_birth(&payload(0, metrics), &mut said);
    assert_eq!(
        said.skipped,
        vec![
            Skipped::Unsupported,
            Skipped::TooLong,
            Skipped::BadName,
            Skipped::Unsupported
        ]
    );
    let sizes: Vec<usize> = said.readings.iter().map(|(_, m)| m.len()).collect();
    assert_eq!(sizes, [64, 36]);
}

#[test]
fn sparkplug_names_become_metric_names_or_are_refused() {
    assert_eq!(
        metric_name("Inputs/Temperature").as_deref(),
        Some("Inputs.Temperature")
    );
    assert_eq!(
        metric_name("Hardware Make").as_deref(),
        Some("Hardware_Make")
    );
    assert_eq!(metric_name("a:b"), None);
    assert_eq!(metric_name(""), None);
}
