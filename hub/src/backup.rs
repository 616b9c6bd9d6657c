//! Backup and restore of the data directory.
//!
//! A backup is a directory holding a consistent copy of the store (one snapshot, taken by the
//! program while it runs: see [`crate::store::backup`]) and the data directory's small files: the
//! token key (without it no token verifies), the admin token and the TLS material. Restore puts
//! them back into a data directory while no hub runs on it.

use std::path::{Path, PathBuf};

use crate::files;
use crate::store::{EngineKind, Store, StoreError};

/// Small files of the data directory a backup carries, besides the store.
const FILES: &[&str] = &["token.key", "admin.token"];
/// The TLS directory, copied whole (one level).
const TLS_DIR: &str = "tls";
/// Backups kept under `<data>/backups`; older ones are deleted when a new one is made.
pub const KEEP: usize = 3;

/// What a backup or a restore can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Copying the store failed.
    #[error("copying the store: {0}")]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The restore would overwrite a store.
    #[error(
        "{0} already holds a store: move it away, or restore with --force (the old files are kept beside, renamed *.before-restore)"
    )]
    Exists(PathBuf),
    /// The directory is not a backup.
    #[error("{0} is not a backup of a hub (no store file in it)")]
    NotABackup(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The store file of `kind` in `dir`.
fn store_path(dir: &Path, kind: EngineKind) -> PathBuf {
    match kind {
        EngineKind::Redb => dir.join("store.redb"),
        EngineKind::Sled => dir.join("store.sled"),
    }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Where it is.
    pub dir: PathBuf,
    /// Store entries copied.
    pub entries: u64,
    /// Bytes of those entries.
    pub bytes: u64,
}

/// Makes a backup of the running store and `data_dir`'s small files in a new directory `dest`.
pub fn backup(
    store: &Store,
    kind: EngineKind,
    data_dir: &Path,
    dest: &Path,
) -> Result<Summary, BackupError> {
    files::create_private_dir(dest).map_err(io(dest))?;
    let copied = store.backup_to(kind, dest, 1 << 20)?;
    copy_small_files(data_dir, dest)?;
    Ok(Summary {
        dir: dest.to_owned(),
        entries: copied.entries,
        bytes: copied.bytes,
    })
}

/// Makes a backup under `<data_dir>/backups/<UTC time>` and keeps the newest [`KEEP`].
pub fn backup_in_place(
    store: &Store,
    kind: EngineKind,
    data_dir: &Path,
    now_ms: u64,
) -> Result<Summary, BackupError> {
    let root = data_dir.join("backups");
    files::create_private_dir(&root).map_err(io(&root))?;
    let name = crate::clock::rfc3339(now_ms)
        .replace([':', '-'], "")
        .replace(".", "-");
    let dest = root.join(name);
    let summary = match backup(store, kind, data_dir, &dest) {
        Ok(summary) => summary,
        Err(e) => {
            // A backup cut short (a full disk, mostly) is no backup: its room goes back.
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
    };
    let mut existing: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    existing.sort();
    let excess = existing.len().saturating_sub(KEEP);
    for old in existing.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(summary)
}

fn copy_small_files(from: &Path, to: &Path) -> Result<(), BackupError> {
    for name in FILES {
        let source = from.join(name);
        if source.exists() {
            let bytes = std::fs::read(&source).map_err(io(&source))?;
            let target = to.join(name);
            files::write_private(&target, &bytes).map_err(io(&target))?;
        }
    }
    let tls = from.join(TLS_DIR);
    if tls.is_dir() {
        let target = to.join(TLS_DIR);
        files::create_private_dir(&target).map_err(io(&target))?;
        for entry in std::fs::read_dir(&tls).map_err(io(&tls))? {
            let path = entry.map_err(io(&tls))?.path();
            if let (true, Some(name)) = (path.is_file(), path.file_name()) {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let out = target.join(name);
                files::write_private(&out, &bytes).map_err(io(&out))?;
            }
        }
    }
    Ok(())
}

/// Puts the backup in `from` into `data_dir`. The hub must not run on it. Without `force`, a data
/// directory that already holds a store is refused; with it, the files it replaces are kept beside,
/// renamed `*.before-restore`.
pub fn restore(
    from: &Path,
    kind: EngineKind,
    data_dir: &Path,
    force: bool,
) -> Result<(), BackupError> {
    let source = store_path(from, kind);
    if !source.exists() {
        return Err(BackupError::NotABackup(from.to_owned()));
    }
    let target = store_path(data_dir, kind);
    if target.exists() && !force {
        return Err(BackupError::Exists(data_dir.to_owned()));
    }
    files::create_private_dir(data_dir).map_err(io(data_dir))?;
    if target.exists() {
        let aside = target.with_extension("redb.before-restore");
        std::fs::rename(&target, &aside).map_err(io(&target))?;
        for name in FILES {
            let old = data_dir.join(name);
            if old.exists() {
                let aside = data_dir.join(format!("{name}.before-restore"));
                std::fs::rename(&old, &aside).map_err(io(&old))?;
            }
        }
    }
    // The log of the replaced store holds records of that store, not of the backup: replayed on
    // the backup they would store its readings again. Kept beside like the rest.
    let log = crate::store::log_dir(data_dir);
    if log.exists() {
        let aside = data_dir.join("log.before-restore");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
        }
        std::fs::rename(&log, &aside).map_err(io(&log))?;
    }
    // The store file is copied under a temporary name and renamed, so a failed restore never
    // leaves half a store where the hub would open it.
    let partial = target.with_extension("restoring");
    std::fs::copy(&source, &partial).map_err(io(&source))?;
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io(&partial))?;
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    copy_small_files(from, data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewReading, Transport, Wire};
    use device_protocol::OwnedValue;

    fn store_in(dir: &Path) -> Store {
        Store::open(crate::store::open_engine(EngineKind::Redb, dir, 1 << 20).unwrap()).unwrap()
    }

    #[test]
    fn a_restore_over_a_logged_store_never_replays_that_store_s_log_on_the_backup() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        files::create_private_dir(&data).unwrap();
        let config = crate::store::LogConfig {
            checkpoint_bytes: 1 << 30,
            ..Default::default()
        };
        let open = || {
            crate::store::open(
                EngineKind::Redb,
                &data,
                1 << 20,
                crate::store::WritePath::Log,
                config,
            )
            .unwrap()
        };
        // Hub-numbered readings: replayed twice, they would be stored twice.
        let reading = |n: u64| NewReading {
            device: "d".into(),
            transport: Transport::Mqtt,
            wire: Wire::Json,
            seq: None,
            boot: None,
            timestamp_ms: Some(n),
            received_ms: n,
            metrics: vec![("v".into(), OwnedValue::I64(n as i64))],
        };
        let store = open();
        store.append(&[reading(1), reading(2)]).unwrap();
        let made = backup_in_place(&store, EngineKind::Redb, &data, 1_000_000).unwrap();
        store.append(&[reading(3)]).unwrap();
        drop(store);
        restore(&made.dir, EngineKind::Redb, &data, true).unwrap();
        assert!(data.join("log.before-restore").exists());
        let restored = open();
        assert_eq!(restored.next_offset().unwrap(), 2);
    }

    #[test]
    fn a_backup_restores_into_an_empty_data_dir_and_refuses_to_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        files::create_private_dir(&data).unwrap();
        files::write_private(&data.join("token.key"), b"key").unwrap();
        let store = store_in(&data);
        store
            .append(&[NewReading {
                device: "d".into(),
                transport: Transport::Mqtt,
                wire: Wire::Json,
                seq: Some(1),
                boot: None,
                timestamp_ms: Some(5),
                received_ms: 5,
                metrics: vec![("v".into(), OwnedValue::I64(1))],
            }])
            .unwrap();
        let mut made = Vec::new();
        for i in 0..(KEEP as u64 + 2) {
            made.push(
                backup_in_place(&store, EngineKind::Redb, &data, 1_000_000 + i * 1000).unwrap(),
            );
        }
        let kept = std::fs::read_dir(data.join("backups")).unwrap().count();
        assert_eq!(kept, KEEP, "older backups are deleted");
        let last = made.last().unwrap();

        let other = root.path().join("restored");
        restore(&last.dir, EngineKind::Redb, &other, false).unwrap();
        assert_eq!(std::fs::read(other.join("token.key")).unwrap(), b"key");
        let restored = store_in(&other);
        assert_eq!(restored.next_offset().unwrap(), 1);
        drop(restored);
        assert!(matches!(
            restore(&last.dir, EngineKind::Redb, &other, false),
            Err(BackupError::Exists(_))
        ));
        restore(&last.dir, EngineKind::Redb, &other, true).unwrap();
        assert!(other.join("store.redb.before-restore").exists());
        assert!(matches!(
            restore(root.path(), EngineKind::Redb, &other, true),
            Err(BackupError::NotABackup(_))
        ));
    }
}
