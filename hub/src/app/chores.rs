//! The small periodic chores `app` runs beside the parts: marking silent devices offline, and
//! saving when tokens were last used (and letting idle password checks' memory go). Each stops
//! on its shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::TokenRegistry;
use crate::auth::credentials::DeviceCredentials;
use crate::clock::now_ms;
use crate::live::{Live, Presence};

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
