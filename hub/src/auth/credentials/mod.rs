//! Devices' MQTT passwords, for devices that cannot hold a client certificate: one credential per
//! device, whose user name is the device id. A password is 128 random bits (32 hex digits), shown
//! once when it is made or rotated; the store keeps only a random salt and the argon2id hash of
//! the password under a key derived from the hub's key (`<data.dir>/token.key`), so a copy of the
//! store alone cannot even be attacked offline.
//!
//! Checking a password costs an argon2 run (a few milliseconds and [`MEMORY_KIB`] of memory, by
//! design): [`DeviceCredentials::verify`] blocks, and its callers bound how many run at once and
//! how often one address may fail (see `ingest::endpoint::login`). A device without a live
//! credential is refused without hashing anything: device ids are not secrets.
//!
//! Invariants: a change (create, rotate, revoke) is durable before it takes effect in memory, so a
//! restart never brings back an older password; after a rotate or a revoke returns, the old
//! password is refused and every connection that holds the device's [`DeviceCredentials::watch`]
//! token is told to close.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio_util::sync::CancellationToken;

use super::AuthError;
use super::tokens::{constant_time_eq, hex, hub_key, random_bytes};
use crate::store::credentials::CredentialRecord;
use crate::store::{Store, StoreError};

/// Argon2id memory cost of new passwords, in KiB: one of OWASP's recommended settings (7 MiB,
/// 5 passes, one lane), small enough that [`MAX_VERIFYING`]-many at once stay within the
/// gateway's memory budget.
pub const MEMORY_KIB: u32 = 7 * 1024;
/// Argon2id passes of new passwords.
pub const PASSES: u32 = 5;
/// Argon2id lanes of new passwords.
pub const LANES: u32 = 1;
/// Most argon2 runs at once that callers should allow (each takes [`MEMORY_KIB`] and a core).
pub const MAX_VERIFYING: usize = 2;
/// Largest memory cost a stored record may ask for; a larger one is refused, not allocated.
const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// Longest password looked at; a longer one is wrong without being hashed.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Random bytes of a password (shown as twice as many hex digits).
const PASSWORD_BYTES: usize = 16;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// What the hub's key is bent to before it keys the password hashes: another use than tokens'.
const KEY_CONTEXT: &[u8] = b"hub device credentials v1";

/// What managing credentials can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The device id is not one.
    #[error("{0:?} is not a device id (1 to 64 of A-Z a-z 0-9 . _ -)")]
    InvalidDevice(String),
    /// The device has a live password already.
    #[error("device {0} has a password already: rotate it, or revoke it first")]
    Exists(String),
    /// The device has no live password.
    #[error("device {0} has no password (make one with create)")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
    /// Argon2 refused its parameters (a record from a newer hub, or corrupt).
    #[error("password hashing: {0}")]
    Hash(String),
}

impl From<AuthError> for CredentialError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(e) => CredentialError::Store(e),
            _ => CredentialError::Random,
        }
    }
}

/// A credential as listed: never its password, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    /// The device, which is also the MQTT user name.
    pub device: String,
    /// When it was first made (hub clock).
    pub created_ms: u64,
    /// When its password was last replaced, if it was.
    pub rotated_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// A password just made: the only time it exists outside the device.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The password.
    pub password: String,
    /// The credential.
    pub info: CredentialInfo,
}

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The device's live password.
    Valid,
    /// Not its password.
    Wrong,
    /// The device has no live password (none, or revoked): refused without hashing.
    Unknown,
}

/// The devices' credentials: the records in memory (a hub has few devices), the store the
/// durable copy. Cheap to clone.
#[derive(Clone)]
pub struct DeviceCredentials {
    secret: Arc<[u8; 32]>,
    store: Store,
    records: Arc<RwLock<HashMap<String, CredentialRecord>>>,
    /// Per device, the token its open connections hold; cancelled (and dropped) when its
    /// credentials change. Bounded by the devices that authenticated, never by what a client sends.
    watches: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// Held by every change, so two changes of one device cannot interleave.
    writes: Arc<Mutex<()>>,
    /// Argon2's working memory, reused from one hash to the next.
    memory: Arc<Mutex<WorkingMemory>>,
}

/// Blocks of argon2 working memory ([`MEMORY_KIB`] each), kept for the next hash: allocating them
/// afresh for every check left glibc holding several (72 MB RSS after 20 logins one after the
/// other, against 33 MB with them kept). At most [`MAX_VERIFYING`] are kept; they go when idle
/// ([`DeviceCredentials::release_memory`]).
#[derive(Default)]
struct WorkingMemory {
    free: Vec<Vec<Block>>,
    used_at: Option<Instant>,
}

impl WorkingMemory {
    /// Blocks of `count`: kept ones, or new ones.
    fn take(&mut self, count: usize) -> Vec<Block> {
        self.used_at = Some(Instant::now());
        match self.free.iter().position(|b| b.len() == count) {
            Some(i) => self.free.swap_remove(i),
            None => vec![Block::default(); count],
        }
    }

    /// Keeps `blocks` for the next hash, up to [`MAX_VERIFYING`] of them.
    fn give_back(&mut self, blocks: Vec<Block>) {
        if self.free.len() < MAX_VERIFYING {
            self.free.push(blocks);
        }
    }
}

impl DeviceCredentials {
    /// Derives the hashing key from the hub's key in `key_path` (made on first run) and loads the
    /// credentials from `store`.
    pub fn open(key_path: &Path, store: Store) -> Result<Self, AuthError> {
        let hub = hub_key(key_path)?;
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hub),
            KEY_CONTEXT,
        );
        let mut secret = [0u8; 32];
        secret.copy_from_slice(derived.as_ref());
        let records = store.credentials()?.into_iter().collect();
        Ok(DeviceCredentials {
            secret: Arc::new(secret),
            store,
            records: Arc::new(RwLock::new(records)),
            watches: Arc::new(Mutex::new(HashMap::new())),
            writes: Arc::new(Mutex::new(())),
            memory: Arc::new(Mutex::new(WorkingMemory::default())),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, CredentialRecord>> {
        self.records.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn watches(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The argon2id hash of `password` with `salt` at `cost` under the hub's key. Blocks.
    fn hash(
        &self,
        password: &[u8],
        salt: &[u8],
        cost: (u32, u32, u32),
    ) -> Result<[u8; HASH_LEN], CredentialError> {
        let failed = |e: argon2::Error| CredentialError::Hash(e.to_string());
        if cost.0 > MAX_MEMORY_KIB {
            return Err(CredentialError::Hash(format!(
                "a memory cost of {} KiB is more than this hub allows",
                cost.0
            )));
        }
        let params = Params::new(cost.0, cost.1, cost.2, Some(HASH_LEN)).map_err(failed)?;
        let argon = Argon2::new_with_secret(
            self.secret.as_slice(),
            Algorithm::Argon2id,
            Version::V0x13,
            params.clone(),
        )
        .map_err(failed)?;
        let mut blocks = self.memory().take(params.block_count());
        let mut out = [0u8; HASH_LEN];
        let hashed = argon.hash_password_into_with_memory(password, salt, &mut out, &mut blocks);
        self.memory().give_back(blocks);
        hashed.map_err(failed)?;
        Ok(out)
    }

    fn memory(&self) -> MutexGuard<'_, WorkingMemory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets argon2's working memory go if no password was hashed for `idle`; whether it did. The
    /// hub calls this about once a minute, so the memory of a burst of logins goes back to the
    /// system soon after it.
    pub fn release_memory(&self, idle: Duration) -> bool {
        let mut memory = self.memory();
        let unused = memory.used_at.is_none_or(|at| at.elapsed() >= idle);
        let held = !memory.free.is_empty();
        if unused && held {
            memory.free.clear();
            memory.free.shrink_to_fit();
        }
        unused && held
    }

    /// A new password and the record of its hash. Blocks (argon2).
    fn fresh(&self) -> Result<(String, CredentialRecord), CredentialError> {
        let password = hex(&random_bytes::<PASSWORD_BYTES>()?);
        let salt = random_bytes::<SALT_LEN>()?.to_vec();
        let cost = (MEMORY_KIB, PASSES, LANES);
        let hash = self.hash(password.as_bytes(), &salt, cost)?.to_vec();
        let record = CredentialRecord {
            salt,
            hash,
            cost,
            created_ms: 0,
            rotated_ms: None,
            revoked_ms: None,
        };
        Ok((password, record))
    }

    /// Stores `record` for `device`, then takes it in memory.
    fn save(&self, device: &str, record: CredentialRecord) -> Result<CredentialInfo, StoreError> {
        self.store.put_credential(device, &record)?;
        let info = info(device, &record);
        self.records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned(), record);
        Ok(info)
    }

    /// Makes `device`'s password; refused when it has a live one. Blocks (argon2).
    pub fn create(&self, device: &str, now_ms: u64) -> Result<Issued, CredentialError> {
        check_device(device)?;
        let (password, mut record) = self.fresh()?;
        let _writes = self.writes();
        if self.has_password(device) {
            return Err(CredentialError::Exists(device.to_owned()));
        }
        record.created_ms = now_ms;
        let info = self.save(device, record)?;
        Ok(Issued { password, info })
    }

    /// Replaces `device`'s live password with a new one: the old one is refused from now on,
    /// and the device's open connections are told to close. Blocks (argon2).
    pub fn rotate(&self, device: &str, now_ms: u64) -> Result<Issued, CredentialError> {
        check_device(device)?;
        let (password, mut record) = self.fresh()?;
        let _writes = self.writes();
        let Some(created_ms) = self.live(device).map(|r| r.created_ms) else {
            return Err(CredentialError::NotFound(device.to_owned()));
        };
        record.created_ms = created_ms;
        record.rotated_ms = Some(now_ms);
        let info = self.save(device, record)?;
        self.close(device);
        Ok(Issued { password, info })
    }

    /// Revokes `device`'s live password (it stays listed as revoked) and tells its open
    /// connections to close; `None` when it had none.
    pub fn revoke(
        &self,
        device: &str,
        now_ms: u64,
    ) -> Result<Option<CredentialInfo>, CredentialError> {
        check_device(device)?;
        let _writes = self.writes();
        let Some(mut record) = self.live(device) else {
            return Ok(None);
        };
        record.salt.clear();
        record.hash.clear();
        record.revoked_ms = Some(now_ms);
        let info = self.save(device, record)?;
        self.close(device);
        Ok(Some(info))
    }

    /// `device`'s record if its password is live.
    fn live(&self, device: &str) -> Option<CredentialRecord> {
        self.read()
            .get(device)
            .filter(|r| r.revoked_ms.is_none())
            .cloned()
    }

    /// Whether `device` has a live password. Cheap: no hashing.
    pub fn has_password(&self, device: &str) -> bool {
        self.read()
            .get(device)
            .is_some_and(|r| r.revoked_ms.is_none())
    }

    /// Every credential, by device id, live or revoked.
    pub fn list(&self) -> Vec<CredentialInfo> {
        let mut list: Vec<CredentialInfo> = self
            .read()
            .iter()
            .map(|(device, record)| info(device, record))
            .collect();
        list.sort_by(|a, b| a.device.cmp(&b.device));
        list
    }

    /// Checks `password` against `device`'s live password. Blocks for an argon2 run, unless
    /// the device has none (or the password is too long to be one).
    pub fn verify(&self, device: &str, password: &[u8]) -> Verdict {
        let Some(record) = self.live(device) else {
            return Verdict::Unknown;
        };
        if password.len() > MAX_PASSWORD_LEN {
            return Verdict::Wrong;
        }
        match self.hash(password, &record.salt, record.cost) {
            Ok(hash) if constant_time_eq(&hash, &record.hash) => Verdict::Valid,
            Ok(_) => Verdict::Wrong,
            Err(e) => {
                tracing::error!(%device, error = %e, "a device's password cannot be checked; it is refused");
                Verdict::Wrong
            }
        }
    }

    /// The token `device`'s connections hold: cancelled when its password is rotated or
    /// revoked, or the device removed ([`DeviceCredentials::close`]). Take it before checking a
    /// password, so a change made during the check is not missed.
    pub fn watch(&self, device: &str) -> CancellationToken {
        self.watches().entry(device.to_owned()).or_default().clone()
    }

    /// Tells every open connection of `device` (by password or certificate) to close.
    pub fn close(&self, device: &str) {
        if let Some(token) = self.watches().remove(device) {
            token.cancel();
        }
    }
}

fn info(device: &str, record: &CredentialRecord) -> CredentialInfo {
    CredentialInfo {
        device: device.to_owned(),
        created_ms: record.created_ms,
        rotated_ms: record.rotated_ms,
        revoked_ms: record.revoked_ms,
    }
}

fn check_device(device: &str) -> Result<(), CredentialError> {
    if device_protocol::is_valid_id(device) {
        Ok(())
    } else {
        Err(CredentialError::InvalidDevice(
            device.chars().take(80).collect(),
        ))
    }
}
