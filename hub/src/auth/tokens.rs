//! Bearer tokens: 256-bit random secrets, shown once, stored only as an HMAC-SHA256 under a key
//! of this hub (`<data.dir>/token.key`), compared in constant time.
//!
//! The registry keeps the records in memory (a hub has few tokens) so a request costs one HMAC and
//! one map look-up; the store is the durable copy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::AuthError;
use crate::files;
use crate::store::{Store, TokenRecord};

/// Prefix of every token, so a leaked one is easy to recognise in a scanner.
pub const TOKEN_PREFIX: &str = "hub_";

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
}

impl Scope {
    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Scope> {
        match name {
            "read" => Some(Scope::Read),
            "command" => Some(Scope::Command),
            "admin" => Some(Scope::Admin),
            "metrics" => Some(Scope::Metrics),
            _ => None,
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

    /// Whether the identity may see `device`.
    pub fn may_access(&self, device: &str) -> bool {
        self.devices.is_empty() || self.devices.iter().any(|p| pattern_matches(p, device))
    }
}

/// Matches `*` wildcards (any run of characters, possibly empty); everything else literally.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The hub's tokens.
#[derive(Clone)]
pub struct TokenRegistry {
    key: Arc<hmac::Key>,
    store: Store,
    by_hash: Arc<RwLock<HashMap<Vec<u8>, TokenRecord>>>,
}

impl TokenRegistry {
    /// Loads the HMAC key from `key_path` (making it on first run) and the tokens from `store`.
    pub fn open(key_path: &Path, store: Store) -> Result<Self, AuthError> {
        let key_bytes = match std::fs::read(key_path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(_) => {
                return Err(AuthError::Tls(format!(
                    "{} is not a 32-byte key",
                    key_path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_bytes::<32>()?.to_vec();
                files::write_private(key_path, &bytes)?;
                bytes
            }
            Err(e) => return Err(e.into()),
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
        let by_hash = store.tokens()?.into_iter().collect();
        Ok(TokenRegistry {
            key: Arc::new(key),
            store,
            by_hash: Arc::new(RwLock::new(by_hash)),
        })
    }

    fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    /// Makes a token and returns its secret, the only time the secret exists outside the caller.
    pub fn create(&self, record: TokenRecord) -> Result<String, AuthError> {
        let secret = format!("{TOKEN_PREFIX}{}", hex(&random_bytes::<32>()?));
        self.register(&secret, record)?;
        Ok(secret)
    }

    /// Stores `record` for an existing `secret` (used to re-register the first-run admin token).
    pub fn register(&self, secret: &str, record: TokenRecord) -> Result<(), AuthError> {
        let hash = self.hash(secret);
        self.store.put_token(&hash, &record)?;
        if let Ok(mut map) = self.by_hash.write() {
            map.insert(hash, record);
        }
        Ok(())
    }

    /// Whether a record exists for `secret`, live, expired or revoked.
    pub fn contains(&self, secret: &str) -> bool {
        let hash = self.hash(secret);
        self.by_hash.read().is_ok_and(|map| map.contains_key(&hash))
    }

    /// The identity of a presented secret, if it is a live token.
    pub fn authenticate(&self, secret: &str, now_ms: u64) -> Option<Identity> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return None;
        }
        let hash = self.hash(secret);
        let map = self.by_hash.read().ok()?;
        // The map is keyed by a keyed hash, so the look-up's timing says nothing about the secret;
        // the final comparison is constant-time all the same.
        let (stored, record) = map.get_key_value(&hash)?;
        if !constant_time_eq(stored, &hash) {
            return None;
        }
        if record.revoked || record.expires_ms.is_some_and(|at| at <= now_ms) {
            return None;
        }
        Some(Identity {
            name: record.name.clone(),
            scopes: record
                .scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .collect(),
            devices: record.devices.clone(),
        })
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes from the system source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;

    fn record(scopes: &[&str], devices: &[&str]) -> TokenRecord {
        TokenRecord {
            name: "t".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            created_ms: 0,
            expires_ms: None,
            revoked: false,
        }
    }

    #[test]
    fn tokens_authenticate_survive_reload_and_refuse_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let key = dir.path().join("token.key");
        let registry = TokenRegistry::open(&key, store.clone()).unwrap();
        let secret = registry
            .create(record(&["read"], &["greenhouse-*"]))
            .unwrap();
        assert!(secret.starts_with("hub_") && secret.len() == 68);

        let again = TokenRegistry::open(&key, store.clone()).unwrap();
        let id = again.authenticate(&secret, 0).unwrap();
        assert!(id.has(Scope::Read) && !id.has(Scope::Command));
        assert!(id.may_access("greenhouse-7") && !id.may_access("door-1"));

        assert!(again.authenticate("hub_wrong", 0).is_none());
        assert!(again.authenticate(&secret[..secret.len() - 1], 0).is_none());
        assert!(
            again
                .authenticate(&secret.replace("hub_", "bub_"), 0)
                .is_none()
        );
        // The stored form is never the secret itself.
        for (hash, _) in store.tokens().unwrap() {
            assert!(!String::from_utf8_lossy(&hash).contains(&secret[4..]));
        }
        // Another hub's key does not accept it.
        let other = TokenRegistry::open(&dir.path().join("other.key"), store).unwrap();
        assert!(other.authenticate(&secret, 0).is_none());
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let registry = TokenRegistry::open(&dir.path().join("k"), store).unwrap();
        let mut expiring = record(&["admin"], &[]);
        expiring.expires_ms = Some(100);
        let secret = registry.create(expiring.clone()).unwrap();
        assert!(registry.authenticate(&secret, 99).is_some());
        assert!(registry.authenticate(&secret, 100).is_none());
        let mut revoked = record(&["admin"], &[]);
        revoked.revoked = true;
        let secret = registry.create(revoked).unwrap();
        assert!(registry.authenticate(&secret, 0).is_none());
    }

    #[test]
    fn patterns_match_like_shell_stars() {
        assert!(pattern_matches("greenhouse-*", "greenhouse-"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-c"));
        assert!(!pattern_matches("door-1", "door-10"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }
}
