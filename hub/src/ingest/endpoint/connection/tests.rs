//! A connection's tests.

use super::*;
use crate::ingest::endpoint::Identity;
use bytes::Bytes;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{Connect, LastWill};

fn device(id: &str) -> Identity {
    Identity::Device(id.to_owned())
}

#[test]
fn a_device_connects_as_itself_with_its_own_will_only() {
    let admitted = admit(&device("A"), 1, Connect::new("A")).unwrap();
    assert_eq!(admitted.client_id, "A");
    // An empty client id becomes the device id.
    assert_eq!(
        admit(&device("A"), 1, Connect::new("")).unwrap().client_id,
        "A"
    );
    let refused = |identity: &Identity, connect| admit(identity, 1, connect).unwrap_err().0;
    assert_eq!(
        refused(&device("A"), Connect::new("B")),
        ConnectReturnCode::NotAuthorized
    );
    let with_will = |topic: &str| {
        let mut connect = Connect::new("A");
        connect.last_will = Some(LastWill::new(topic, "offline", QoS::AtLeastOnce, false));
        connect
    };
    assert_eq!(
        refused(&device("A"), with_will("devices/B/status")),
        ConnectReturnCode::NotAuthorized
    );
    let admitted = admit(&device("A"), 1, with_will("devices/A/status")).unwrap();
    assert_eq!(
        admitted.will,
        Some(("devices/A/status".into(), Bytes::from("offline")))
    );
    assert_eq!(
        refused(&device("A"), with_will("tele/A/LWT")),
        ConnectReturnCode::NotAuthorized
    );
    // A local client's will may be on any topic (Tasmota's tele/{name}/LWT), but one topic.
    assert!(admit(&Identity::Local, 1, with_will("devices/B/status")).is_ok());
    assert!(admit(&Identity::Local, 1, with_will("tele/plug/LWT")).is_ok());
    for bad in ["tele/+/LWT", "a/#", ""] {
        assert_eq!(
            refused(&Identity::Local, with_will(bad)),
            ConnectReturnCode::NotAuthorized
        );
    }
    let mut v5 = Connect::new("A");
    v5.protocol = Protocol::V5;
    assert!(admit(&device("A"), 1, v5).is_ok());
}

#[test]
fn a_local_client_without_an_id_gets_one_for_a_clean_session_only() {
    let admitted = admit(&Identity::Local, 7, Connect::new("")).unwrap();
    assert_eq!(admitted.client_id, "hub-auto-7");
    let mut persistent = Connect::new("");
    persistent.clean_session = false;
    assert_eq!(
        admit(&Identity::Local, 7, persistent).unwrap_err().0,
        ConnectReturnCode::BadClientId
    );
}
