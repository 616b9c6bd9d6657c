//! Body compression of sinks. (Skeleton: filled in by the sink transports work.)

use super::SyncError;
use crate::config::Compression;

/// `body` compressed with `compression`.
pub fn compress(body: &[u8], compression: Compression) -> Result<Vec<u8>, SyncError> {
    match compression {
        Compression::None => Ok(body.to_vec()),
        Compression::Gzip | Compression::Zstd => Err(SyncError::Compress(std::io::Error::other(
            "compression is not built yet",
        ))),
    }
}
