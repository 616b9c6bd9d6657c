//! Bearer tokens: 256-bit random secrets, shown once, stored only as an HMAC-SHA256 under a key
//! of this hub (`<data.dir>/token.key`), compared in constant time.
//!
//! The registry keeps the records in memory (a hub has few tokens) so a request costs one HMAC and
//! one map look-up; the store is the durable copy.
//!
//! Here: the registry. `identity` says who a caller is and what it may do, `spec` checks what a
//! new token asks for.

mod identity;
mod spec;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

pub use self::identity::{CERT_PREFIX, Identity, SCOPE_NAMES, Scope, pattern_matches};
pub use self::spec::{
    InvalidToken, MAX_DEVICE_PATTERNS, MAX_EXPIRY, MAX_NAME, MAX_PATTERN, TokenSpec,
};
use super::AuthError;
use crate::files;
use crate::store::{Store, TokenRecord};

/// Prefix of every token, so a leaked one is easy to recognise in a scanner.
pub const TOKEN_PREFIX: &str = "hub_";
/// Length of a token's public id (hex digits of its keyed hash).
pub const ID_LEN: usize = 16;
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
        let key_bytes = hub_key(key_path)?;
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
        self.authenticate_handle(secret, now_ms)
            .map(|(identity, _)| identity)
    }

    /// Like [`TokenRegistry::authenticate`], and also a handle on the token, by which
    /// [`TokenRegistry::identity_of`] finds it again without the secret (a dashboard session
    /// keeps the handle, never the secret), and when the token expires.
    pub fn authenticate_handle(
        &self,
        secret: &str,
        now_ms: u64,
    ) -> Option<(Identity, TokenHandle)> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return None;
        }
        let handle = TokenHandle(self.hash(secret));
        let identity = self.identity_of(&handle, now_ms)?;
        Some((identity, handle))
    }

    /// The identity of the token `handle` names, if it is still live (not revoked, not expired):
    /// a session made from a token ends when the token does.
    pub fn identity_of(&self, handle: &TokenHandle, now_ms: u64) -> Option<Identity> {
        let hash = &handle.0;
        let map = self.read();
        // The map is keyed by a keyed hash, so the look-up's timing says nothing about the secret;
        // the final comparison is constant-time all the same.
        let (stored, entry) = map.get_key_value(hash)?;
        if !constant_time_eq(stored, hash) {
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

    /// When the token `handle` names expires (unix ms), if it does.
    pub fn expires_ms(&self, handle: &TokenHandle) -> Option<u64> {
        self.read()
            .get(&handle.0)
            .and_then(|entry| entry.record.expires_ms)
    }
}

/// Names a token by its keyed hash, without its secret. Not shown to anyone: a session keeps it
/// in memory to find its token again.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHandle(Vec<u8>);

impl std::fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHandle({})", token_id(&self.0))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hub's 32-byte secret key in `key_path` (`<data.dir>/token.key`), made on first run. Tokens
/// are hashed under it, and devices' MQTT passwords under a key derived from it (see
/// `auth::credentials`), so a backup that keeps this file keeps both working.
pub fn hub_key(key_path: &Path) -> Result<Vec<u8>, AuthError> {
    match std::fs::read(key_path) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        Ok(_) => Err(AuthError::Tls(format!(
            "{} is not a 32-byte key",
            key_path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = random_bytes::<32>()?.to_vec();
            files::write_private(key_path, &bytes)?;
            Ok(bytes)
        }
        Err(e) => Err(e.into()),
    }
}

/// Random bytes from the system source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
