use std::sync::Arc;

use super::*;
use crate::store::memory::MemoryEngine;

fn registry(dir: &Path, engine: &MemoryEngine) -> DeviceCredentials {
    let store = Store::open(Arc::new(engine.reopen())).unwrap();
    DeviceCredentials::open(&dir.join("token.key"), store).unwrap()
}

#[test]
fn a_password_is_made_once_checked_rotated_and_revoked_and_the_store_keeps_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemoryEngine::new();
    let creds = registry(dir.path(), &engine);
    let issued = creds.create("dev-1", 1_000).unwrap();
    assert_eq!(issued.password.len(), 2 * PASSWORD_BYTES);
    assert!(issued.password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        creds.verify("dev-1", issued.password.as_bytes()),
        Verdict::Valid
    );
    assert_eq!(creds.verify("dev-1", b"not-it"), Verdict::Wrong);
    assert_eq!(
        creds.verify("dev-2", issued.password.as_bytes()),
        Verdict::Unknown
    );
    // A second create is refused: one credential per device.
    assert!(matches!(
        creds.create("dev-1", 2_000),
        Err(CredentialError::Exists(_))
    ));
    // The store holds a salt and a hash, not the password.
    let stored = Store::open(Arc::new(engine.reopen()))
        .unwrap()
        .credentials()
        .unwrap();
    assert_eq!(stored.len(), 1);
    let record = &stored[0].1;
    assert_eq!((record.salt.len(), record.hash.len()), (SALT_LEN, HASH_LEN));
    assert_ne!(record.hash, issued.password.as_bytes());

    // Rotated: the old password is refused, the new one taken, and watchers are told.
    let watch = creds.watch("dev-1");
    let rotated = creds.rotate("dev-1", 3_000).unwrap();
    assert!(watch.is_cancelled());
    assert_ne!(rotated.password, issued.password);
    assert_eq!(
        creds.verify("dev-1", issued.password.as_bytes()),
        Verdict::Wrong
    );
    assert_eq!(
        creds.verify("dev-1", rotated.password.as_bytes()),
        Verdict::Valid
    );
    assert_eq!(
        (rotated.info.created_ms, rotated.info.rotated_ms),
        (1_000, Some(3_000))
    );

    // A restart (a new registry over the same store and key) keeps the rotated password.
    let again = registry(dir.path(), &engine);
    assert_eq!(
        again.verify("dev-1", rotated.password.as_bytes()),
        Verdict::Valid
    );
    assert_eq!(
        again.verify("dev-1", issued.password.as_bytes()),
        Verdict::Wrong
    );

    // Revoked: refused without hashing, listed as revoked, also after a restart.
    let watch = creds.watch("dev-1");
    let revoked = creds.revoke("dev-1", 4_000).unwrap().unwrap();
    assert!(watch.is_cancelled());
    assert_eq!(revoked.revoked_ms, Some(4_000));
    assert_eq!(
        creds.verify("dev-1", rotated.password.as_bytes()),
        Verdict::Unknown
    );
    assert!(creds.revoke("dev-1", 5_000).unwrap().is_none());
    assert!(matches!(
        creds.rotate("dev-1", 5_000),
        Err(CredentialError::NotFound(_))
    ));
    let again = registry(dir.path(), &engine);
    assert_eq!(again.list()[0].revoked_ms, Some(4_000));
    assert_eq!(
        again.verify("dev-1", rotated.password.as_bytes()),
        Verdict::Unknown
    );
    // A revoked credential may be made anew.
    let fresh = again.create("dev-1", 6_000).unwrap();
    assert_eq!(
        again.verify("dev-1", fresh.password.as_bytes()),
        Verdict::Valid
    );
}

#[test]
fn another_hub_key_verifies_nothing_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemoryEngine::new();
    let creds = registry(dir.path(), &engine);
    let issued = creds.create("dev-1", 1).unwrap();
    // The same store with another hub key: the hash is keyed, so the password no longer fits.
    let other = tempfile::tempdir().unwrap();
    let foreign = registry(other.path(), &engine);
    assert_eq!(
        foreign.verify("dev-1", issued.password.as_bytes()),
        Verdict::Wrong
    );
    assert!(matches!(
        creds.create("bad id", 1),
        Err(CredentialError::InvalidDevice(_))
    ));
    let long = vec![b'a'; MAX_PASSWORD_LEN + 1];
    assert_eq!(creds.verify("dev-1", &long), Verdict::Wrong);
}

#[test]
fn the_working_memory_is_kept_for_the_next_hash_and_let_go_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let creds = registry(dir.path(), &MemoryEngine::new());
    assert!(
        !creds.release_memory(std::time::Duration::ZERO),
        "nothing held yet"
    );
    let issued = creds.create("dev-1", 1).unwrap();
    // Kept while hashes come closer together than the idle time.
    assert!(!creds.release_memory(std::time::Duration::from_secs(3600)));
    assert_eq!(
        creds.verify("dev-1", issued.password.as_bytes()),
        Verdict::Valid
    );
    assert!(creds.release_memory(std::time::Duration::ZERO));
    assert!(
        !creds.release_memory(std::time::Duration::ZERO),
        "let go once"
    );
    // Hashing still works after.
    assert_eq!(
        creds.verify("dev-1", issued.password.as_bytes()),
        Verdict::Valid
    );
}
