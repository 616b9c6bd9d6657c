//! Who is calling and what they may do: TLS server configuration (`tls`), bearer tokens (`tokens`),
//! devices' MQTT passwords (`credentials`), and first-run TLS material (`pki`).

pub mod clients;
pub mod credentials;
pub mod pki;
pub mod revocation;
pub mod tls;
pub mod tokens;

pub use tokens::{Identity, Scope, TokenRegistry};

/// What authentication set-up can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificates could not be made.
    #[error("certificate generation: {0}")]
    Pki(String),
    /// The TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The token store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}
