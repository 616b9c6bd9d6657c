//! The port itself: opening it, telling whether its path still names the device that was opened
//! (unplugged, or replugged fast), waiting to reopen it, and why an open port was closed.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;

use super::{REPLUG_POLL, SerialSettings};

/// Why an open port was closed.
#[derive(Debug)]
pub(super) enum Lost {
    /// Reading failed.
    Read(io::Error),
    /// Writing failed or timed out.
    Write(io::Error),
    /// The port reported end of file (a hang-up).
    Eof,
    /// The path no longer exists, or names another device now (unplugged, or replugged fast).
    Vanished,
    /// No byte for the silence timeout.
    Silence(Duration),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Read(e) => write!(f, "read failed: {e}"),
            Lost::Write(e) => write!(f, "write failed: {e}"),
            Lost::Eof => f.write_str("end of file (hang-up)"),
            Lost::Vanished => f.write_str("the path vanished or names another device"),
            Lost::Silence(t) => write!(f, "no byte received for {} ms", t.as_millis()),
        }
    }
}

/// Opens the port 8N1 without flow control (exclusively: a second reader would steal frames).
pub(super) fn open(settings: &SerialSettings) -> Result<SerialStream, tokio_serial::Error> {
    tokio_serial::new(settings.path.to_string_lossy(), settings.baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
}

/// What a path names: device numbers and inode, so a path re-pointed at another device (a fast
/// replug, a new pseudo-terminal) is told apart from the one that was opened.
#[cfg(unix)]
pub(in crate::ingest) type PathIdentity = (u64, u64, u64);
#[cfg(not(unix))]
pub(in crate::ingest) type PathIdentity = ();

/// The identity of what `path` names now, or `None` when it names nothing.
#[cfg(unix)]
pub(in crate::ingest) fn path_identity(path: &Path) -> Option<PathIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.rdev()))
}

/// The identity of what `path` names now, or `None` when it names nothing.
#[cfg(not(unix))]
pub(in crate::ingest) fn path_identity(path: &Path) -> Option<PathIdentity> {
    std::fs::metadata(path).ok().map(|_| ())
}

/// Waits `wait` before the next open attempt, or less if the path was missing and reappears;
/// false on shutdown.
pub(in crate::ingest) async fn wait_to_reopen(
    path: &Path,
    wait: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let deadline = Instant::now() + wait;
    let was_missing = path_identity(path).is_none();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        let step = (deadline - now).min(REPLUG_POLL);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(step) => {}
        }
        if was_missing && path_identity(path).is_some() {
            return true;
        }
    }
}
