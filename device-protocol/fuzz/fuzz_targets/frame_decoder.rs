//! Feeds arbitrary bytes, in chunks, to `FrameDecoder` and decodes every payload as `Uplink` and
//! `Downlink`. Checks: no panic, every call makes progress, payloads are non-empty and shorter
//! than a frame, stats match what was reported, and a decoded message survives re-encoding.
#![no_main]

use device_protocol::{Downlink, Error, FeedResult, FrameDecoder, MAX_FRAME_LEN, Uplink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk length (1..=256); the rest is the serial stream.
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk_len = usize::from(first) + 1;

    let mut decoder = FrameDecoder::new();
    let mut frames = 0u64;
    let mut dropped = 0u64;
    let mut buf = [0u8; MAX_FRAME_LEN];
    for chunk in stream.chunks(chunk_len) {
        let mut input = chunk;
        loop {
            let before = input.len();
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Frame { payload, remaining } => {
                    frames += 1;
                    assert!(!payload.is_empty() && payload.len() < MAX_FRAME_LEN);
                    if let Ok(message) = Uplink::decode(payload) {
                        let again = message.encode(&mut buf).expect("decoded uplink re-encodes");
                        assert_eq!(Uplink::decode(again), Ok(message));
                    }
                    if let Ok(message) = Downlink::decode(payload) {
                        let again = message
                            .encode(&mut buf)
                            .expect("decoded downlink re-encodes");
                        assert_eq!(Downlink::decode(again), Ok(message));
                    }
                    assert!(remaining.len() < before);
                    input = remaining;
                }
                FeedResult::Dropped { reason, remaining } => {
                    dropped += 1;
                    assert!(matches!(
                        reason,
                        Error::FrameTooLong | Error::Cobs | Error::Crc
                    ));
                    assert!(remaining.len() < before);
                    input = remaining;
                }
            }
        }
    }

    let stats = decoder.stats();
    assert_eq!(stats.frames, frames);
    assert_eq!(
        stats.dropped_too_long + stats.dropped_cobs + stats.dropped_crc,
        dropped
    );
});
