//! Bearer tokens: 256-bit random secrets, shown once, stored only as an HMAC-SHA256 under a key
//! of this hub (`<data.dir>/token.key`), compared in constant time.
//!
//! The registry keeps the records in memory (a hub has few tokens) so a request costs one HMAC and
//! one map look-up; the store is the durable copy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::AuthError;
use crate::config::HumanDuration;
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

/// How a client certificate's identity name starts (`cert:app-1`), apart from tokens' names.
pub const CERT_PREFIX: &str = "cert:";

/// Longest life a token may be given: beyond it, an expiry is a typo or a way around expiry.
pub const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

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

/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Most device patterns one token may carry.
pub const MAX_DEVICE_PATTERNS: usize = 32;
/// Longest device pattern.
pub const MAX_PATTERN: usize = 64;
/// Length of a token's public id (hex digits of its keyed hash).
pub const ID_LEN: usize = 16;

/// What a new token asks for, before validation (the API body and the CLI's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSpec {
    /// A name for people: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Scope names: at least one of `read`, `command`, `admin`, `metrics`, `sync`.
    pub scopes: Vec<String>,
    /// Device-id patterns (`*` wildcards); empty means every device.
    pub devices: Vec<String>,
    /// How long it lives (`30d`, `12h`); `None` for ever.
    pub expires: Option<String>,
}

/// Why a [`TokenSpec`] was refused; the text names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

impl TokenSpec {
    /// The record for this spec, made at `now_ms`, or why it is refused.
    pub fn validate(&self, now_ms: u64) -> Result<TokenRecord, InvalidToken> {
        let bad = |text: String| Err(InvalidToken(text));
        if !device_protocol::is_valid_id(&self.name) || self.name.len() > MAX_NAME {
            return bad(format!(
                "`name`: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ - (got {:?})",
                self.name.chars().take(80).collect::<String>()
            ));
        }
        if self.scopes.is_empty() {
            return bad(format!("`scopes`: at least one of {SCOPE_NAMES}"));
        }
        let mut scopes: Vec<Scope> = Vec::new();
        for name in &self.scopes {
            match Scope::parse(name) {
                Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
                Some(_) => {}
                None => {
                    return bad(format!(
                        "`scopes`: {:?} is not one of {SCOPE_NAMES}",
                        name.chars().take(80).collect::<String>()
                    ));
                }
            }
        }
        scopes.sort_by_key(|s| *s as u8);
        if self.devices.len() > MAX_DEVICE_PATTERNS {
            return bad(format!("`devices`: at most {MAX_DEVICE_PATTERNS} patterns"));
        }
        let mut devices: Vec<String> = Vec::new();
        for pattern in &self.devices {
            let valid = !pattern.is_empty()
                && pattern.len() <= MAX_PATTERN
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
            if !valid {
                return bad(format!(
                    "`devices`: {:?} is not 1 to {MAX_PATTERN} of A-Z a-z 0-9 . _ - and *",
                    pattern.chars().take(80).collect::<String>()
                ));
            }
            if !devices.contains(pattern) {
                devices.push(pattern.clone());
            }
        }
        let expires_ms = match &self.expires {
            None => None,
            Some(text) => {
                let d = HumanDuration::parse(text)
                    .map_err(|e| InvalidToken(format!("`expires`: {e}")))?
                    .0;
                if d.is_zero() {
                    return bad("`expires`: a duration above zero, like 30d or 12h".into());
                }
                // A saturated parse (`3000000d` and larger) or a life of centuries would make a
                // token that never expires while it looks like one that does.
                let at = u64::try_from(d.as_millis())
                    .ok()
                    .filter(|_| d <= MAX_EXPIRY)
                    .and_then(|ms| now_ms.checked_add(ms));
                match at {
                    Some(at) => Some(at),
                    None => {
                        return bad(format!(
                            "`expires`: at most {} days (100 years); omit it for a token that never expires",
                            MAX_EXPIRY.as_secs() / 86_400
                        ));
                    }
                }
            }
        };
        Ok(TokenRecord {
            name: self.name.clone(),
            scopes: scopes.iter().map(|s| s.name().to_owned()).collect(),
            devices,
            created_ms: now_ms,
            expires_ms,
            revoked: false,
            last_used_ms: None,
        })
    }
}

/// A token as listed: its public id and its record (never the secret, nor its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id: the first 16 hex digits of the keyed hash of the secret.
    pub id: String,
    /// The record; `last_used_ms` is the registry's in-memory value, the freshest there is.
    pub record: TokenRecord,
}

/// The public id of the token stored under `hash`.
pub fn token_id(hash: &[u8]) -> String {
    let mut id = hex(hash);
    id.truncate(ID_LEN);
    id
}

/// One token in memory: its record, as stored, and when it was last used (0: never), which
/// `authenticate` updates without a store write.
#[derive(Debug)]
struct Entry {
    record: TokenRecord,
    last_used: AtomicU64,
}

impl Entry {
    fn new(record: TokenRecord) -> Self {
        let last_used = AtomicU64::new(record.last_used_ms.unwrap_or(0));
        Entry { record, last_used }
    }

    fn info(&self, hash: &[u8]) -> TokenInfo {
        let mut record = self.record.clone();
        let used = self.last_used.load(Ordering::Relaxed);
        record.last_used_ms = (used > 0).then_some(used).max(record.last_used_ms);
        TokenInfo {
            id: token_id(hash),
            record,
        }
    }
}

/// The hub's tokens.
///
/// Every change to a stored record (create, register, revoke, saving last-used times) holds
/// `writes`, so one cannot overwrite another with an older copy of the record.
#[derive(Clone)]
pub struct TokenRegistry {
    key: Arc<hmac::Key>,
    store: Store,
    by_hash: Arc<RwLock<HashMap<Vec<u8>, Entry>>>,
    writes: Arc<Mutex<()>>,
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
        let by_hash = store
            .tokens()?
            .into_iter()
            .map(|(hash, record)| (hash, Entry::new(record)))
            .collect();
        Ok(TokenRegistry {
            key: Arc::new(key),
            store,
            by_hash: Arc::new(RwLock::new(by_hash)),
            writes: Arc::new(Mutex::new(())),
        })
    }

    fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.by_hash.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.by_hash.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a token and returns its secret, the only time the secret exists outside the caller.
    pub fn create(&self, record: TokenRecord) -> Result<String, AuthError> {
        self.create_token(record).map(|(secret, _)| secret)
    }

    /// Makes a token; returns its secret (shown once, never stored) and what the list shows.
    pub fn create_token(&self, record: TokenRecord) -> Result<(String, TokenInfo), AuthError> {
        // A public id is 64 bits of the hash: a clash is all but impossible, and made again if
        // it happens, so an id always names one token.
        for _ in 0..8 {
            let secret = format!("{TOKEN_PREFIX}{}", hex(&random_bytes::<32>()?));
            let hash = self.hash(&secret);
            let id = token_id(&hash);
            let _writes = self.writes();
            if self.read().keys().any(|h| token_id(h) == id) {
                continue;
            }
            self.store.put_token(&hash, &record)?;
            let entry = Entry::new(record);
            let info = entry.info(&hash);
            self.write().insert(hash, entry);
            return Ok((secret, info));
        }
        Err(AuthError::Random)
    }

    /// Stores `record` for an existing `secret` (used to re-register the first-run admin token).
    pub fn register(&self, secret: &str, record: TokenRecord) -> Result<(), AuthError> {
        let hash = self.hash(secret);
        let _writes = self.writes();
        self.store.put_token(&hash, &record)?;
        self.write().insert(hash, Entry::new(record));
        Ok(())
    }

    /// Whether a record exists for `secret`, live, expired or revoked.
    pub fn contains(&self, secret: &str) -> bool {
        let hash = self.hash(secret);
        self.read().contains_key(&hash)
    }

    /// Every token, oldest first, live, expired or revoked.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self
            .read()
            .iter()
            .map(|(hash, entry)| entry.info(hash))
            .collect();
        tokens.sort_by(|a, b| (a.record.created_ms, &a.id).cmp(&(b.record.created_ms, &b.id)));
        tokens
    }

    /// Revokes the token with public id `id`, in the store first, then in memory: it is refused
    /// from the moment this returns, and after a restart. `None` when no token has that id.
    pub fn revoke(&self, id: &str) -> Result<Option<TokenInfo>, AuthError> {
        let _writes = self.writes();
        let found = self
            .read()
            .iter()
            .find(|(hash, _)| token_id(hash) == id)
            .map(|(hash, entry)| (hash.clone(), entry.info(hash)));
        let Some((hash, mut info)) = found else {
            return Ok(None);
        };
        info.record.revoked = true;
        self.store.put_token(&hash, &info.record)?;
        if let Some(entry) = self.write().get_mut(&hash) {
            entry.record = info.record.clone();
        }
        Ok(Some(info))
    }

    /// Saves the last-used times that changed since they were last saved; returns how many.
    /// The hub calls this about once a minute and when it stops.
    pub fn save_last_used(&self) -> Result<usize, AuthError> {
        let _writes = self.writes();
        let changed: Vec<(Vec<u8>, TokenRecord)> = self
            .read()
            .iter()
            .filter_map(|(hash, entry)| {
                let used = entry.last_used.load(Ordering::Relaxed);
                (used > entry.record.last_used_ms.unwrap_or(0)).then(|| {
                    let mut record = entry.record.clone();
                    record.last_used_ms = Some(used);
                    (hash.clone(), record)
                })
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        self.store.put_tokens(&changed)?;
        let mut map = self.write();
        for (hash, record) in &changed {
            if let Some(entry) = map.get_mut(hash) {
                entry.record.last_used_ms = record.last_used_ms;
            }
        }
        Ok(changed.len())
    }

    /// The identity of a presented secret, if it is a live token. Notes the time of use in
    /// memory only (see [`TokenRegistry::save_last_used`]).
    pub fn authenticate(&self, secret: &str, now_ms: u64) -> Option<Identity> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return None;
        }
        let hash = self.hash(secret);
        let map = self.read();
        // The map is keyed by a keyed hash, so the look-up's timing says nothing about the secret;
        // the final comparison is constant-time all the same.
        let (stored, entry) = map.get_key_value(&hash)?;
        if !constant_time_eq(stored, &hash) {
            return None;
        }
        let record = &entry.record;
        if record.revoked || record.expires_ms.is_some_and(|at| at <= now_ms) {
            return None;
        }
        entry.last_used.fetch_max(now_ms, Ordering::Relaxed);
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
            last_used_ms: None,
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

    #[test]
    fn patterns_match_like_shell_stars() {
        assert!(pattern_matches("greenhouse-*", "greenhouse-"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-c"));
        assert!(!pattern_matches("door-1", "door-10"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }

    fn spec(name: &str, scopes: &[&str], devices: &[&str], expires: Option<&str>) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            expires: expires.map(str::to_owned),
        }
    }

    #[test]
    fn specs_are_validated_with_a_reason() {
        let ok = spec(
            "app-1",
            &["command", "read", "read"],
            &["greenhouse-*"],
            Some("30d"),
        )
        .validate(1000)
        .unwrap();
        assert_eq!(ok.scopes, vec!["read", "command"]);
        assert_eq!(ok.devices, vec!["greenhouse-*"]);
        assert_eq!(ok.expires_ms, Some(1000 + 30 * 86_400_000));
        assert_eq!(
            (ok.created_ms, ok.revoked, ok.last_used_ms),
            (1000, false, None)
        );
        // A century is the longest life; `sync` is a scope.
        let century = spec("a", &["sync"], &[], Some("36500d"))
            .validate(0)
            .unwrap();
        assert_eq!(century.expires_ms, Some(36_500 * 86_400_000));
        assert_eq!(century.scopes, vec!["sync"]);
        assert_eq!(
            spec("a", &["metrics"], &[], None)
                .validate(0)
                .unwrap()
                .expires_ms,
            None
        );

        let long = "x".repeat(65);
        let many: Vec<String> = (0..33).map(|i| format!("d{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for (bad, field) in [
            (spec("", &["read"], &[], None), "`name`"),
            (spec(&long, &["read"], &[], None), "`name`"),
            (spec("a b", &["read"], &[], None), "`name`"),
            (spec("a", &[], &[], None), "`scopes`"),
            (spec("a", &["write"], &[], None), "`scopes`"),
            (spec("a", &["read"], &[""], None), "`devices`"),
            (spec("a", &["read"], &["door/1"], None), "`devices`"),
            (spec("a", &["read"], &[&long], None), "`devices`"),
            (spec("a", &["read"], &many, None), "`devices`"),
            (spec("a", &["read"], &[], Some("soon")), "`expires`"),
            (spec("a", &["read"], &[], Some("0s")), "`expires`"),
            (spec("a", &["read"], &[], Some("5y")), "`expires`"),
            (spec("a", &["read"], &[], Some("3000000d")), "`expires`"),
            (spec("a", &["read"], &[], Some("36501d")), "`expires`"),
            (
                spec("a", &["read"], &[], Some("99999999999999999999999d")),
                "`expires`",
            ),
            (
                spec("a", &["read"], &[], Some("18446744073709551615ms")),
                "`expires`",
            ),
        ] {
            let e = bad.validate(0).unwrap_err();
            assert!(e.0.starts_with(field), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ids_are_short_stable_and_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let key = dir.path().join("k");
        let registry = TokenRegistry::open(&key, store.clone()).unwrap();
        let (secret, info) = registry.create_token(record(&["read"], &[])).unwrap();
        assert_eq!(info.id.len(), ID_LEN);
        assert!(info.id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!secret.contains(&info.id));
        let again = TokenRegistry::open(&key, store).unwrap();
        assert_eq!(again.list()[0].id, info.id);
    }

    #[test]
    fn revoked_tokens_are_refused_at_once_and_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let key = dir.path().join("k");
        let registry = TokenRegistry::open(&key, store.clone()).unwrap();
        let (secret, info) = registry.create_token(record(&["admin"], &[])).unwrap();
        let (other, _) = registry.create_token(record(&["read"], &[])).unwrap();
        assert!(registry.revoke("0000000000000000").unwrap().is_none());
        assert!(registry.revoke(&info.id).unwrap().unwrap().record.revoked);
        assert!(registry.authenticate(&secret, 0).is_none());
        assert!(registry.authenticate(&other, 0).is_some());
        let again = TokenRegistry::open(&key, store).unwrap();
        assert!(again.authenticate(&secret, 0).is_none());
        assert!(again.authenticate(&other, 0).is_some());
        let listed = again.list();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|t| t.id == info.id && t.record.revoked));
    }

    #[test]
    fn last_use_is_kept_in_memory_and_saved_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let key = dir.path().join("k");
        let registry = TokenRegistry::open(&key, store.clone()).unwrap();
        let (secret, info) = registry.create_token(record(&["read"], &[])).unwrap();
        assert_eq!(info.record.last_used_ms, None);
        assert!(registry.authenticate(&secret, 50).is_some());
        assert!(registry.authenticate(&secret, 40).is_some());
        assert_eq!(registry.list()[0].record.last_used_ms, Some(50));
        // Not in the store until saved.
        assert_eq!(store.tokens().unwrap()[0].1.last_used_ms, None);
        assert_eq!(registry.save_last_used().unwrap(), 1);
        assert_eq!(registry.save_last_used().unwrap(), 0);
        assert_eq!(store.tokens().unwrap()[0].1.last_used_ms, Some(50));
        // Saving does not undo a revocation made meanwhile.
        registry.revoke(&info.id).unwrap();
        assert!(registry.authenticate(&secret, 60).is_none());
        assert_eq!(registry.save_last_used().unwrap(), 0);
        let again = TokenRegistry::open(&key, store).unwrap();
        assert!(again.list()[0].record.revoked);
        assert_eq!(again.list()[0].record.last_used_ms, Some(50));
    }
}
