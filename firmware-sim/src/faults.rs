//! Line noise for serial devices (`--noise P`).
//!
//! Every frame is written after a 0x00, the resynchronisation marker the frame decoder skips, so
//! whatever came before it (noise, a frame cut short by a reopened port) costs at most itself.
//! With probability `P` per frame, 1 to 32 random bytes of garbage go before that 0x00; with
//! probability `P / 4`, one bit of the frame's body is flipped, so the hub sees a CRC (or COBS)
//! failure and the reading has to be retransmitted.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The noise of one serial line.
pub struct Noise {
    probability: f64,
    rng: SmallRng,
    /// Frames preceded by garbage.
    pub garbage_frames: u64,
    /// Frames with a flipped bit.
    pub corrupted_frames: u64,
}

impl Noise {
    /// Noise with probability `probability` (0 to 1) per frame.
    pub fn new(probability: f64, seed: u64) -> Self {
        Noise {
            probability: probability.clamp(0.0, 1.0),
            rng: SmallRng::seed_from_u64(seed),
            garbage_frames: 0,
            corrupted_frames: 0,
        }
    }

    /// Appends to `out` what goes on the line for `frame` (a whole frame with its 0x00).
    pub fn dress(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        if self.probability > 0.0 && self.rng.random_bool(self.probability) {
            let len = self.rng.random_range(1..=32);
            out.extend((0..len).map(|_| self.rng.random::<u8>()));
            self.garbage_frames += 1;
        }
        out.push(0);
        let start = out.len();
        out.extend_from_slice(frame);
        let body = frame.len().saturating_sub(1);
        if body > 0 && self.probability > 0.0 && self.rng.random_bool(self.probability / 4.0) {
            let at = start + self.rng.random_range(0..body);
            out[at] ^= 1 << self.rng.random_range(0..8);
            self.corrupted_frames += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use device_protocol::{FeedResult, FrameDecoder, Uplink, encode_frame};

    use super::*;
    use crate::sensors::Sensors;

    fn frames(n: u32) -> Vec<Vec<u8>> {
        let mut sensors = Sensors::new(1);
        (0..n)
            .map(|seq| {
                let message = sensors.reading(seq, 0);
                let uplink = Uplink::decode(&message).unwrap();
                let mut buf = [0u8; device_protocol::MAX_FRAME_LEN + 1];
                let len = encode_frame(&uplink, &mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    /// The seqs a hub's decoder gets out of `line`.
    fn decode(line: &[u8]) -> Vec<u32> {
        let mut decoder = FrameDecoder::new();
        let mut input = line;
        let mut seqs = Vec::new();
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => return seqs,
                FeedResult::Frame { payload, remaining } => {
                    if let Ok(Uplink::Telemetry(t)) = Uplink::decode(payload) {
                        seqs.push(t.seq);
                    }
                    input = remaining;
                }
                FeedResult::Dropped { remaining, .. } => input = remaining,
            }
        }
    }

    #[test]
    fn without_noise_every_frame_arrives() {
        let mut noise = Noise::new(0.0, 1);
        let mut line = Vec::new();
        for frame in frames(50) {
            noise.dress(&frame, &mut line);
        }
        assert_eq!(decode(&line), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn garbage_never_costs_a_good_frame_and_flipped_ones_are_dropped() {
        let mut noise = Noise::new(0.5, 2);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        for frame in frames(400) {
            let before = noise.corrupted_frames;
            let start = line.len();
            noise.dress(&frame, &mut line);
            lines.push((noise.corrupted_frames > before, start));
        }
        assert!(noise.garbage_frames > 100 && noise.corrupted_frames > 20);
        let got = decode(&line);
        let expected: Vec<u32> = (0..400u32).filter(|&s| !lines[s as usize].0).collect();
        assert_eq!(got, expected);
    }
}
