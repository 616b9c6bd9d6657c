//! The small periodic chores `app` runs beside the parts: marking silent devices offline, saving
//! when tokens were last used (and letting idle password checks' memory go), and sealing the rows
//! of an older store into blocks. Each stops on its shutdown token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth::TokenRegistry;
use crate::auth::credentials::DeviceCredentials;
use crate::clock::now_ms;
use crate::live::{Live, Presence};
use crate::store::{EngineKind, Store};

/// How often the tokens' last-used times are saved: the time a token list shows is exact, the
/// saved one (what a restart after a crash shows) may lag by this much.
pub const TOKEN_USE_SAVE_PERIOD: Duration = Duration::from_secs(60);

/// Saves the tokens' last-used times once a period, off the request path, and once more when the
/// hub stops; and lets the password checks' working memory go when no device logged in for a
/// period.
pub async fn save_token_use(
    tokens: TokenRegistry,
    credentials: DeviceCredentials,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(TOKEN_USE_SAVE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        if credentials.release_memory(TOKEN_USE_SAVE_PERIOD) {
            tracing::debug!("password checks idle: their working memory let go");
        }
        let registry = tokens.clone();
        match tokio::task::spawn_blocking(move || registry.save_last_used()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save when tokens were last used"),
            Err(_) => tracing::warn!("saving when tokens were last used panicked"),
        }
        if stopping {
            break;
        }
    }
}

/// Marks silent devices offline, about ten times per `offline_after` (at most once a second).
pub async fn sweep_presence(
    presence: Arc<Presence>,
    live: Live,
    offline_after: Duration,
    shutdown: CancellationToken,
) {
    let period = (offline_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                for event in presence.sweep(now_ms()) {
                    live.event(event);
                }
            }
        }
    }
}

/// Room left free beside the backup taken before sealing old rows: ingest's own.
const BACKUP_MARGIN: u64 = 256 << 20;
/// How often sealing old rows says how far it got.
const SEAL_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Seals the readings `store` holds as rows below offset `below` into blocks, `batch` a commit
/// (the upgrade to store schema 4, see `store::seal_rows`), after a backup under
/// `<data_dir>/backups` that it takes first unless an interrupted run already did. Nothing to do
/// (no rows) costs one short scan. A failure is logged and leaves the rows as they are: they are
/// read as rows, and the next start tries again. Then waits for shutdown, as every task does.
pub async fn seal_old_rows(
    store: Store,
    kind: EngineKind,
    data_dir: PathBuf,
    below: u64,
    batch: usize,
    shutdown: CancellationToken,
) {
    seal_rows_once(store, kind, data_dir, below, batch, &shutdown).await;
    shutdown.cancelled().await;
}

async fn seal_rows_once(
    store: Store,
    kind: EngineKind,
    data_dir: PathBuf,
    below: u64,
    batch: usize,
    shutdown: &CancellationToken,
) {
    let counted = store.clone();
    let rows = match tokio::task::spawn_blocking(move || counted.rows_below(below)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot count the store's rows to seal"),
        Err(_) => return tracing::warn!("counting the store's rows to seal panicked"),
    };
    if rows == 0 {
        return;
    }
    let started = Instant::now();
    let prepared = store.clone();
    let backup = tokio::task::spawn_blocking(move || -> Result<String, String> {
        if let Some(dir) = prepared.seal_backup().map_err(|e| e.to_string())? {
            return Ok(dir);
        }
        // The backup takes about the store's live bytes, outside the quota: taken on a disk
        // without room for it, it would leave none for ingest.
        let live = prepared.usage().map_err(|e| e.to_string())?.live_bytes;
        let need = live.saturating_add(BACKUP_MARGIN);
        if let Ok(stat) = rustix::fs::statvfs(&data_dir) {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            if free < need {
                return Err(format!(
                    "the file system has {free} bytes free, the backup needs about {need}"
                ));
            }
        }
        let summary = crate::backup::backup_in_place(&prepared, kind, &data_dir, now_ms())
            .map_err(|e| e.to_string())?;
        let dir = summary.dir.display().to_string();
        prepared
            .set_seal_backup(Some(&dir))
            .map_err(|e| e.to_string())?;
        Ok(dir)
    })
    .await;
    let backup = match backup {
        Ok(Ok(dir)) => dir,
        Ok(Err(e)) => {
            return tracing::warn!(error = %e, rows, "cannot back the store up before sealing its old rows into blocks: they stay rows (read as they are) and the next start tries again");
        }
        Err(_) => return tracing::warn!("the backup before sealing old rows panicked"),
    };
    tracing::info!(rows, backup = %backup, "store upgrade: sealing the readings kept as rows into compressed blocks, in the background; the backup is the way back (hub restore)");
    let mut sealed = 0u64;
    let mut told = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return tracing::info!(
                sealed,
                left = rows.saturating_sub(sealed),
                "store upgrade stopped with the hub; it goes on at the next start"
            );
        }
        let step = store.clone();
        match tokio::task::spawn_blocking(move || step.seal_rows(below, batch)).await {
            Ok(Ok(step)) => {
                sealed += step.readings;
                if !step.more {
                    break;
                }
            }
            Ok(Err(e)) => {
                return tracing::warn!(error = %e, sealed, "sealing old rows failed: the rest stay rows until the next start");
            }
            Err(_) => return tracing::warn!("sealing old rows panicked"),
        }
        if told.elapsed() >= SEAL_PROGRESS_EVERY {
            told = Instant::now();
            tracing::info!(sealed, of = rows, "store upgrade: sealing rows");
        }
        // Ingest's turn between two commits.
        tokio::task::yield_now().await;
    }
    let done = store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || done.set_seal_backup(None)).await {
        tracing::warn!(error = %e, "cannot clear the store upgrade's backup mark");
    }
    tracing::info!(
        sealed,
        seconds = started.elapsed().as_secs_f64(),
        backup = %backup,
        "store upgrade: every old row is sealed into blocks"
    );
}
