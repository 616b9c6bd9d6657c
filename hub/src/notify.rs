//! Tells systemd how the hub is doing (the `sd_notify` protocol), without libsystemd.
//!
//! Under a `Type=notify` unit, systemd sets `NOTIFY_SOCKET` to a unix datagram socket: an absolute
//! path, or `@name` for a socket in the abstract namespace (the `@` stands for a leading NUL byte).
//! The hub sends `READY=1` once it listens, so `systemctl start` returns only then and units
//! ordered after it find it serving, and `STOPPING=1` when it starts shutting down. Without the
//! variable nothing is sent. A failed send is logged and otherwise ignored: the hub serves the same.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The service is up: every listener is bound and the hub is subscribed.
pub const READY: &str = "READY=1";
/// The service is shutting down.
pub const STOPPING: &str = "STOPPING=1";

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The variable holds neither an absolute path nor `@name`.
    #[error("{NOTIFY_SOCKET}={0:?} is neither an absolute path nor an abstract name (@name)")]
    BadAddress(OsString),
    /// The socket could not be made, or the datagram not sent.
    #[error("cannot send {state:?} to {socket:?}: {source}")]
    Send {
        /// The variable's value.
        socket: OsString,
        /// What was to be sent.
        state: String,
        /// The error of the socket call.
        source: std::io::Error,
    },
}

/// Sends `state` (lines of `KEY=value`) to the socket named by `NOTIFY_SOCKET`. Returns `false`
/// when the variable is not set (not run by systemd, or not as `Type=notify`).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => send_to(&socket, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to `socket`, a value of `NOTIFY_SOCKET`.
pub fn send_to(socket: &OsStr, state: &str) -> Result<(), NotifyError> {
    let bytes = socket.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(name, state)
    } else if bytes.starts_with(b"/") {
        UnixDatagram::unbound().and_then(|s| s.send_to(state.as_bytes(), socket))
    } else {
        return Err(NotifyError::BadAddress(socket.to_owned()));
    };
    match sent {
        // A datagram goes whole or not at all; a short count would be a kernel oddity.
        Ok(_) => Ok(()),
        Err(source) => Err(NotifyError::Send {
            socket: socket.to_owned(),
            state: state.to_owned(),
            source,
        }),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(name: &[u8], state: &str) -> std::io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
}

/// Abstract sockets are Linux's; elsewhere an `@` address cannot be reached.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_name: &[u8], _state: &str) -> std::io::Result<usize> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Tells systemd the hub is ready; logs a failure.
pub fn ready() {
    log_failure(notify(READY));
}

/// Tells systemd the hub is stopping; logs a failure.
pub fn stopping() {
    log_failure(notify(STOPPING));
}

fn log_failure(result: Result<bool, NotifyError>) {
    if let Err(e) = result {
        // WARN, not ERROR: the hub serves regardless; at worst systemd times the start out.
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), READY).unwrap();
        assert_eq!(receive(&receiver), "READY=1");
        send_to(path.as_os_str(), STOPPING).unwrap();
        assert_eq!(receive(&receiver), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        // Unique per run, so parallel test runs on one machine do not meet in the namespace.
        let name = format!(
            "hub-notify-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), READY).unwrap();
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn refuses_a_relative_address() {
        let err = send_to(OsStr::new("notify.sock"), READY).unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress(_)), "{err}");
    }

    #[test]
    fn reports_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = send_to(path.as_os_str(), READY).unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err}");
    }
}
