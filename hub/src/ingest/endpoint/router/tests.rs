//! The router's tests: topic filters, sessions, queued and in-flight downlinks, takeover.

use super::*;

fn payload(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn filters_match_as_mqtt_says() {
    assert!(matches("devices/a/ack", "devices/a/ack"));
    assert!(!matches("devices/a/ack", "devices/b/ack"));
    assert!(matches("devices/+/ack", "devices/b/ack"));
    assert!(!matches("devices/+/ack", "devices/b/c/ack"));
    assert!(matches("devices/#", "devices/b/c/ack"));
    assert!(matches("#", "devices/b"));
    assert!(!matches("devices/+", "devices/b/ack"));
    assert!(!matches("devices/a/ack/x", "devices/a/ack"));
    for ok in ["a", "a/+/b", "#", "a/#", "+", "+/+"] {
        assert!(is_valid_filter(ok), "{ok}");
    }
    for bad in ["", "a/#/b", "a+/b", "a/b#", "#/a"] {
        assert!(!is_valid_filter(bad), "{bad}");
    }
}

#[test]
fn a_downlink_reaches_each_subscribed_session_once_at_the_lower_qos() {
    let router = Router::new(10, None);
    let a = router
        .connect("a", true, 1, CancellationToken::new())
        .session;
    let b = router
        .connect("b", true, 2, CancellationToken::new())
        .session;
    router.subscribe(&a, &[("devices/a/commands".into(), QoS::AtLeastOnce)]);
    router.subscribe(
        &b,
        &[
            ("devices/+/commands".into(), QoS::AtMostOnce),
            ("devices/#".into(), QoS::AtMostOnce),
        ],
    );
    router
        .publish("devices/a/commands", payload("x"), QoS::AtLeastOnce)
        .unwrap();
    let to_a = a.take_sendable().messages;
    assert_eq!(to_a.len(), 1);
    assert_eq!((to_a[0].qos, to_a[0].pkid), (QoS::AtLeastOnce, Some(1)));
    let to_b = b.take_sendable().messages;
    assert_eq!(to_b.len(), 1);
    assert_eq!((to_b[0].qos, to_b[0].pkid), (QoS::AtMostOnce, None));
    assert_eq!(
        router.publish("devices/z/ack", payload("y"), QoS::AtMostOnce),
        Ok(())
    );
    assert_eq!(
        router.publish("other/topic", payload("y"), QoS::AtMostOnce),
        Err(DownlinkError::NotConnected)
    );
}

#[test]
fn a_persistent_session_keeps_unacknowledged_messages_for_the_next_connection() {
    let router = Router::new(10, None);
    let first = CancellationToken::new();
    let s = router.connect("d", false, 1, first.clone());
    assert!(!s.session_present);
    let session = s.session;
    router.subscribe(&session, &[("devices/d/commands".into(), QoS::AtLeastOnce)]);
    router
        .publish("devices/d/commands", payload("1"), QoS::AtLeastOnce)
        .unwrap();
    let sent = session.take_sendable().messages;
    assert_eq!(sent[0].pkid, Some(1));
    router.disconnected(&session, 1);
    // Offline: QoS 1 waits, QoS 0 is refused.
    router
        .publish("devices/d/commands", payload("2"), QoS::AtLeastOnce)
        .unwrap();
    assert_eq!(
        router.publish("devices/d/commands", payload("3"), QoS::AtMostOnce),
        Err(DownlinkError::NotConnected)
    );
    let again = router.connect("d", false, 2, CancellationToken::new());
    assert!(again.session_present);
    let resent = again.session.take_sendable().messages;
    let got: Vec<(&[u8], Option<u16>)> = resent.iter().map(|m| (&m.payload[..], m.pkid)).collect();
    // The unacknowledged one again with its packet id, then the one that waited.
    assert_eq!(got, [(&b"1"[..], Some(1)), (&b"2"[..], Some(2))]);
    again.session.acked(1);
    again.session.acked(2);
    assert!(again.session.take_sendable().messages.is_empty());
}

#[test]
fn a_takeover_closes_the_old_connection_and_a_clean_session_starts_afresh() {
    let router = Router::new(10, None);
    let old = CancellationToken::new();
    let first = router.connect("d", false, 1, old.clone()).session;
    router.subscribe(&first, &[("devices/d/ack".into(), QoS::AtMostOnce)]);
    let second = router.connect("d", true, 2, CancellationToken::new());
    assert!(old.is_cancelled());
    assert!(!second.session_present);
    // The old connection ending does not end the new one's session.
    router.disconnected(&first, 1);
    assert_eq!(router.sessions(), 1);
    // The clean session has no subscriptions of the old one.
    assert_eq!(
        router.publish("devices/d/ack", payload("x"), QoS::AtMostOnce),
        Err(DownlinkError::NotConnected)
    );
    router.disconnected(&second.session, 2);
    assert_eq!(router.sessions(), 0);
}

#[test]
fn sessions_and_queues_are_bounded() {
    let router = Router::new(2, None);
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let s = router
            .connect(id, false, i as u64, CancellationToken::new())
            .session;
        router.disconnected(&s, i as u64);
    }
    assert_eq!(router.sessions(), 2);
    let s = router
        .connect("q", true, 9, CancellationToken::new())
        .session;
    router.subscribe(&s, &[("t".into(), QoS::AtLeastOnce)]);
    for _ in 0..MAX_QUEUED {
        router.publish("t", payload("x"), QoS::AtLeastOnce).unwrap();
    }
    assert_eq!(
        router.publish("t", payload("x"), QoS::AtLeastOnce),
        Err(DownlinkError::Busy)
    );
    assert_eq!(s.take_sendable().messages.len(), MAX_INFLIGHT_DOWN);
    let filters: Vec<(String, QoS)> = (0..MAX_SUBSCRIPTIONS + 1)
        .map(|i| (format!("f/{i}"), QoS::AtMostOnce))
        .collect();
    let granted = router.subscribe(&s, &filters);
    assert_eq!(granted.iter().filter(|g| g.is_none()).count(), 2);
}

#[test]
fn a_command_is_told_back_when_acknowledged_or_lost_with_its_session() {
    let (tx, mut rx) = mpsc::channel(8);
    let router = Router::new(10, Some(tx));
    let s = router
        .connect("d", false, 1, CancellationToken::new())
        .session;
    router.subscribe(&s, &[("devices/d/commands".into(), QoS::AtLeastOnce)]);
    assert_eq!(
        router.publish_command("devices/d/commands", payload("1"), 7),
        Ok(true)
    );
    assert_eq!(
        router.publish_command("devices/d/commands", payload("2"), 8),
        Ok(true)
    );
    let sent = s.take_sendable().messages;
    assert_eq!(s.acked(sent[0].pkid.unwrap()), Some(7));
    router.tell(CommandHandoff::Delivered(7));
    assert_eq!(rx.try_recv(), Ok(CommandHandoff::Delivered(7)));
    // The device goes and comes back clean: its session, with command 8 unacknowledged, ends.
    router.disconnected(&s, 1);
    assert!(rx.try_recv().is_err(), "a persistent session keeps it");
    let clean = router
        .connect("d", true, 2, CancellationToken::new())
        .session;
    assert_eq!(rx.try_recv(), Ok(CommandHandoff::Lost(8)));
    // A QoS 0 subscriber cannot acknowledge: not tracked.
    router.subscribe(&clean, &[("devices/d/commands".into(), QoS::AtMostOnce)]);
    assert_eq!(
        router.publish_command("devices/d/commands", payload("3"), 9),
        Ok(false)
    );
}

#[test]
fn packing_moves_the_sessions_no_connection_holds_and_keeps_what_they_hold() {
    let router = Router::new(1000, None);
    let mut connected = Vec::new();
    for n in 0..PACK_AFTER_DEPARTURES as u64 + 2 {
        let id = format!("d{n}");
        let session = router
            .connect(&id, false, n, CancellationToken::new())
            .session;
        router.subscribe(
            &session,
            &[(format!("devices/{id}/commands"), QoS::AtLeastOnce)],
        );
        connected.push(session);
    }
    router.subscribe(&connected[0], &[("devices/+/ack".into(), QoS::AtMostOnce)]);
    // All but the last leave; a command waits for the first.
    let staying = connected.pop().unwrap();
    for (n, session) in connected.iter().enumerate() {
        router.disconnected(session, n as u64);
    }
    router
        .publish("devices/d0/commands", payload("go"), QoS::AtLeastOnce)
        .unwrap();
    let before: Vec<*const Session> = connected.iter().map(Arc::as_ptr).collect();
    drop(connected);

    let left = Instant::now();
    assert!(!router.pack_when_quiet(left), "not before it is quiet");
    assert!(router.pack_when_quiet(left + PACK_WHEN_QUIET));
    assert!(
        !router.pack_when_quiet(left + PACK_WHEN_QUIET * 2),
        "once per wave of departures"
    );

    let routes = router.routes();
    let moved = routes.sessions.get("d0").unwrap().clone();
    assert!(!before.contains(&Arc::as_ptr(&moved)), "a fresh allocation");
    let kept = routes.sessions.get(&staying.client_id).unwrap().clone();
    assert!(
        Arc::ptr_eq(&kept, &staying),
        "a connection's session stays put"
    );
    drop(routes);
    assert_eq!(router.sessions(), PACK_AFTER_DEPARTURES + 2);

    // The moved session resumes with its queue and routes: the command, then a wildcard ack.
    let resumed = router.connect("d0", false, 100, CancellationToken::new());
    assert!(resumed.session_present);
    assert!(Arc::ptr_eq(&resumed.session, &moved));
    let waiting = resumed.session.take_sendable().messages;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].payload, payload("go"));
    router
        .publish("devices/d9/ack", payload("a"), QoS::AtMostOnce)
        .unwrap();
    assert_eq!(resumed.session.take_sendable().messages.len(), 1);
    router
        .publish("devices/d5/commands", payload("c"), QoS::AtLeastOnce)
        .unwrap();
    let d5 = router.connect("d5", false, 101, CancellationToken::new());
    assert_eq!(d5.session.take_sendable().messages.len(), 1);
}

#[test]
fn a_few_departures_do_not_pack() {
    let router = Router::new(1000, None);
    for n in 0..PACK_AFTER_DEPARTURES as u64 - 1 {
        let session = router
            .connect(&format!("d{n}"), false, n, CancellationToken::new())
            .session;
        router.disconnected(&session, n);
    }
    assert!(!router.pack_when_quiet(Instant::now() + PACK_WHEN_QUIET * 2));
}
