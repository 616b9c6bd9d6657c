//! The registry over a store in memory: tokens authenticate across a reload and under this hub's
//! key only, expired and revoked ones are refused, ids are short and stable, last use is saved
//! when asked.

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
