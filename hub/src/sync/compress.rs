//! Body compression of sinks: gzip (pure Rust, miniz_oxide) and zstd, at levels that favour a
//! small CPU over the last percent of size, since a hub compresses every batch it sends.

use std::io::Write;

use super::SyncError;
use crate::config::Compression;

/// gzip level: flate2's default, the usual trade of speed for size.
const GZIP_LEVEL: u32 = 6;
/// zstd level: the library's default, faster than gzip 6 and smaller.
const ZSTD_LEVEL: i32 = 3;

/// `body` compressed with `compression`.
pub fn compress(body: &[u8], compression: Compression) -> Result<Vec<u8>, SyncError> {
    match compression {
        Compression::None => Ok(body.to_vec()),
        Compression::Gzip => {
            // JSON batches shrink several times over: a quarter of the input is a fair first guess.
            let out = Vec::with_capacity(body.len() / 4 + 64);
            let mut encoder =
                flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(body).map_err(SyncError::Compress)?;
            encoder.finish().map_err(SyncError::Compress)
        }
        Compression::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL).map_err(SyncError::Compress),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;

    use super::*;

    fn sample() -> Vec<u8> {
        let mut body = b"[".to_vec();
        for i in 0..500 {
            body.extend_from_slice(
                format!(
                    r#"{{"device":"dev-{}","offset":{i},"temp":{}.5}},"#,
                    i % 7,
                    i % 40
                )
                .as_bytes(),
            );
        }
        body.push(b']');
        body
    }

    /// Decodes `body` the way a receiver does for each `Content-Encoding`.
    pub(crate) fn decompress(body: &[u8], compression: Compression) -> Vec<u8> {
        match compression {
            Compression::None => body.to_vec(),
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::stream::decode_all(body).unwrap(),
        }
    }

    #[test]
    fn round_trips_and_shrinks() {
        let body = sample();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let packed = compress(&body, compression).unwrap();
            assert_eq!(decompress(&packed, compression), body, "{compression:?}");
            if compression != Compression::None {
                assert!(
                    packed.len() * 4 < body.len(),
                    "{compression:?}: {}",
                    packed.len()
                );
            }
        }
    }

    #[test]
    fn empty_body_round_trips() {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let packed = compress(b"", compression).unwrap();
            assert_eq!(decompress(&packed, compression), b"", "{compression:?}");
        }
    }

    #[test]
    fn gzip_has_the_gzip_magic() {
        let packed = compress(b"hello", Compression::Gzip).unwrap();
        assert_eq!(&packed[..2], &[0x1f, 0x8b]);
    }
}
