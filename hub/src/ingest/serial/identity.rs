//! Who is on the line: the configured id, or the id of the line's last `Hello`, kept across
//! reopens of the port. An id is checked before it becomes the key readings are stored under.

use device_protocol::Uplink;

use super::super::Rejection;

/// Who is on the line: the configured id, or the last `Hello`'s.
#[derive(Debug, Default)]
pub(super) struct Identity {
    pub(super) configured: Option<String>,
    /// The id of the last `Hello` (without a configured id).
    pub(super) hello: Option<String>,
    /// The last other id a `Hello` named while an id is configured: warned about once.
    pub(super) warned: Option<String>,
}

impl Identity {
    /// The device whose message this is, or the reason to skip it. Notes a `Hello`'s id.
    pub(super) fn device_for(
        &mut self,
        message: &Uplink<'_>,
        path: &str,
    ) -> Result<&str, (Rejection, String)> {
        if let Uplink::Hello(hello) = message {
            // Uplink::decode validates ids already; checked again because the id becomes the
            // key every later reading is stored under.
            if !device_protocol::is_valid_id(hello.device_id) {
                return Err((
                    Rejection::BadDeviceId,
                    "Hello with an invalid device id".into(),
                ));
            }
            match &self.configured {
                Some(configured) => {
                    if hello.device_id != configured
                        && self.warned.as_deref() != Some(hello.device_id)
                    {
                        tracing::warn!(path, configured = %configured, hello = hello.device_id, "a Hello names another device than the one configured for this line; recorded under the configured id");
                        self.warned = Some(hello.device_id.to_owned());
                    }
                }
                None => {
                    if self.hello.as_deref() != Some(hello.device_id) {
                        tracing::info!(
                            path,
                            device = hello.device_id,
                            "device introduced itself on the serial line"
                        );
                        self.hello = Some(hello.device_id.to_owned());
                    }
                }
            }
        }
        self.known().ok_or_else(|| {
            (
                Rejection::UnknownDevice,
                "no Hello yet and no device_id configured for this line".into(),
            )
        })
    }

    /// The device on the line, if known.
    pub(super) fn known(&self) -> Option<&str> {
        self.configured.as_deref().or(self.hello.as_deref())
    }
}
