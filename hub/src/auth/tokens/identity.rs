//! Who a caller is and what it may do: scopes, the identity a token or a client certificate
//! gives, and the `*` patterns that limit it to some devices.
//!
//! Invariants: admin holds every scope; an identity with device patterns sees only the devices
//! they match and never moves a pull consumer's cursor; `sync` moves only the cursor of the
//! consumer of its own name.

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read devices and readings.
    Read,
    /// Send commands.
    Command,
    /// Everything, including tokens and device metadata.
    Admin,
    /// Read `/metrics`.
    Metrics,
    /// Commit the cursor of the pull consumer named like the identity (see
    /// [`Identity::may_commit`]).
    Sync,
}

/// Every scope's name, in the order of [`Scope`], for messages and docs.
pub const SCOPE_NAMES: &str = "read, command, admin, metrics, sync";

impl Scope {
    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Scope> {
        match name {
            "read" => Some(Scope::Read),
            "command" => Some(Scope::Command),
            "admin" => Some(Scope::Admin),
            "metrics" => Some(Scope::Metrics),
            "sync" => Some(Scope::Sync),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Command => "command",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
            Scope::Sync => "sync",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name.
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Device-id patterns (`*` matches any run of characters); empty means all devices.
    pub devices: Vec<String>,
}

impl Identity {
    /// The key its rate limit is kept under.
    pub fn key(&self) -> String {
        self.name.clone()
    }

    /// Whether the identity holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the identity may move the cursor of the pull consumer `consumer`: an admin may
    /// move any; an identity with the `sync` scope only the consumer of its own name (the
    /// token's name, or the client certificate's name), so a reader, or another consumer's
    /// token, cannot commit for the cloud and let retention delete what it never pulled.
    /// Device-limited identities never may: a consumer holds back retention for every device.
    pub fn may_commit(&self, consumer: &str) -> bool {
        if !self.devices.is_empty() {
            return false;
        }
        if self.scopes.contains(&Scope::Admin) {
            return true;
        }
        let own = self.name.strip_prefix(CERT_PREFIX).unwrap_or(&self.name);
        self.scopes.contains(&Scope::Sync) && own == consumer
    }

    /// Whether the identity may see `device`.
    pub fn may_access(&self, device: &str) -> bool {
        self.devices.is_empty() || self.devices.iter().any(|p| pattern_matches(p, device))
    }
}

pub use crate::patterns::pattern_matches;

/// How a client certificate's identity name starts (`cert:app-1`), apart from tokens' names.
pub const CERT_PREFIX: &str = "cert:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_and_the_consumers_own_sync_identity_may_commit() {
        let identity = |name: &str, scopes: &[Scope], devices: &[&str]| Identity {
            name: name.into(),
            scopes: scopes.to_vec(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        };
        assert!(identity("cloud", &[Scope::Sync], &[]).may_commit("cloud"));
        assert!(identity("cert:cloud", &[Scope::Sync], &[]).may_commit("cloud"));
        assert!(identity("ops", &[Scope::Admin], &[]).may_commit("cloud"));
        assert!(!identity("cloud", &[Scope::Read], &[]).may_commit("cloud"));
        assert!(!identity("other", &[Scope::Sync], &[]).may_commit("cloud"));
        assert!(!identity("cert:other", &[Scope::Sync], &[]).may_commit("cloud"));
        assert!(!identity("cloud", &[Scope::Sync], &["gh-*"]).may_commit("cloud"));
        assert!(!identity("ops", &[Scope::Admin], &["gh-*"]).may_commit("cloud"));
    }
}
