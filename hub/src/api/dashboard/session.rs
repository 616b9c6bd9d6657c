//! Dashboard sessions: what the `hub_session` cookie names, kept in memory.
//!
//! A session is made from a live token (`POST /api/v1/session` with the token) or from a client
//! certificate that is an identity, and holds no secret: for a token, the token's keyed hash (a
//! [`TokenHandle`]), so each request finds the token again and a revoked or expired token ends
//! its sessions at once; for a certificate, the SHA-256 of the certificate, and the session is
//! honoured only on a connection that presents that same certificate (so a certificate the CA
//! revokes, refused by TLS, ends its sessions too).
//!
//! Invariants:
//! - a session id is 256 bits from the system's random source, sent once in `Set-Cookie`, and
//!   kept only as an HMAC-SHA256 under a key made at start-up: the map is keyed by that hash, so
//!   a look-up's timing says nothing about the id, and a memory dump holds no usable id;
//! - a session lives at most [`SESSION_LIFETIME`], and never past its token's expiry;
//! - at most [`MAX_SESSIONS`] sessions, at most [`MAX_SESSIONS_PER_IDENTITY`] per identity: a new
//!   one beyond either bound replaces the oldest (of that identity first), so memory is bounded
//!   and a person signing in again is never refused;
//! - sessions live in memory only: a restart signs everyone out, which costs a person one paste
//!   and keeps the store free of bearer material (see the README).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ring::digest;
use ring::hmac;

use crate::auth::clients::ClientIdentities;
use crate::auth::tokens::{TokenHandle, random_bytes};
use crate::auth::{AuthError, Identity, TokenRegistry};

/// The cookie's name.
pub const COOKIE: &str = "hub_session";
/// Longest a session lives.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 1024;
/// Most sessions of one identity at once.
pub const MAX_SESSIONS_PER_IDENTITY: usize = 16;
/// Length of a session id on the wire: 64 hex digits.
const ID_HEX_LEN: usize = 64;

/// What a session was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token.
    Token(TokenHandle),
    /// A client certificate, by the SHA-256 of its DER.
    Certificate(Vec<u8>),
}

impl Credential {
    /// The credential of a client certificate (DER).
    pub fn certificate(der: &[u8]) -> Self {
        Credential::Certificate(digest::digest(&digest::SHA256, der).as_ref().to_vec())
    }
}

#[derive(Debug)]
struct Session {
    credential: Credential,
    /// The identity's name, for the per-identity bound.
    name: String,
    created_ms: u64,
    expires_ms: u64,
}

/// The hub's dashboard sessions.
pub struct Sessions {
    key: hmac::Key,
    by_hash: Mutex<HashMap<Vec<u8>, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// A session just opened: the cookie's value (the only copy of the id) and how long it lives.
#[derive(Debug)]
pub struct Opened {
    /// The session id, for the cookie.
    pub id: String,
    /// Seconds until it expires, for the cookie's `Max-Age`.
    pub max_age_secs: u64,
}

impl Sessions {
    /// No sessions, under a fresh random key.
    pub fn new() -> Result<Self, AuthError> {
        let key = random_bytes::<32>()?;
        Ok(Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            by_hash: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Session>> {
        self.by_hash.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hash(&self, id: &str) -> Vec<u8> {
        hmac::sign(&self.key, id.as_bytes()).as_ref().to_vec()
    }

    /// Opens a session for `identity`, made from `credential`, that ends by `limit_ms` at the
    /// latest (the token's expiry).
    pub fn open(
        &self,
        credential: Credential,
        identity: &Identity,
        limit_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Opened, AuthError> {
        let lifetime = u64::try_from(SESSION_LIFETIME.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = now_ms
            .saturating_add(lifetime)
            .min(limit_ms.unwrap_or(u64::MAX));
        let id: String = random_bytes::<32>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let hash = self.hash(&id);
        let mut map = self.lock();
        map.retain(|_, s| s.expires_ms > now_ms);
        let own = map.values().filter(|s| s.name == identity.name).count();
        if own >= MAX_SESSIONS_PER_IDENTITY {
            evict_oldest(&mut map, Some(&identity.name));
        }
        if map.len() >= MAX_SESSIONS {
            evict_oldest(&mut map, None);
        }
        map.insert(
            hash,
            Session {
                credential,
                name: identity.name.clone(),
                created_ms: now_ms,
                expires_ms,
            },
        );
        Ok(Opened {
            id,
            max_age_secs: expires_ms.saturating_sub(now_ms) / 1000,
        })
    }

    /// The identity of the session `id`, if it is open and what it was made from still holds:
    /// the token is live, or the connection presents the same certificate and it is still an
    /// identity. A session whose token died is closed here.
    pub fn identity(
        &self,
        id: &str,
        tokens: &TokenRegistry,
        clients: &ClientIdentities,
        client_cert: Option<&[u8]>,
        now_ms: u64,
    ) -> Option<Identity> {
        if id.len() != ID_HEX_LEN {
            return None;
        }
        let hash = self.hash(id);
        let credential = {
            let map = self.lock();
            let session = map.get(&hash)?;
            if session.expires_ms <= now_ms {
                None
            } else {
                Some(session.credential.clone())
            }
        };
        let identity = match &credential {
            None => None,
            Some(Credential::Token(handle)) => tokens.identity_of(handle, now_ms),
            Some(Credential::Certificate(digest)) => client_cert
                .filter(|der| {
                    Credential::certificate(der) == Credential::Certificate(digest.clone())
                })
                .and_then(|der| clients.identify(der)),
        };
        // Expired, or its token is revoked or expired: the session is over for good. (A
        // certificate session used on a connection without its certificate stays: the
        // certificate may simply not have been sent on this connection.)
        if credential.is_none()
            || matches!(credential, Some(Credential::Token(_))) && identity.is_none()
        {
            self.lock().remove(&hash);
        }
        identity
    }

    /// Closes the session `id`; whether it was open.
    pub fn close(&self, id: &str) -> bool {
        id.len() == ID_HEX_LEN && self.lock().remove(&self.hash(id)).is_some()
    }

    /// Sessions open now (expired ones may still be counted until the next sign-in).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the oldest session (of `name` only, when given).
fn evict_oldest(map: &mut HashMap<Vec<u8>, Session>, name: Option<&str>) {
    let oldest = map
        .iter()
        .filter(|(_, s)| name.is_none_or(|n| s.name == n))
        .min_by_key(|(_, s)| s.created_ms)
        .map(|(hash, _)| hash.clone());
    if let Some(hash) = oldest {
        map.remove(&hash);
    }
}

/// The value of the `hub_session` cookie in a request's `Cookie` headers, if there is one.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// `Set-Cookie` for an opened session: never readable by scripts, sent only over HTTPS and only
/// with requests from the hub's own pages.
pub fn set_cookie(opened: &Opened) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        opened.id, opened.max_age_secs
    )
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;
    use crate::store::{Store, TokenRecord};
    use std::sync::Arc;

    fn registry() -> (tempfile::TempDir, TokenRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let tokens = TokenRegistry::open(&dir.path().join("token.key"), store).unwrap();
        (dir, tokens)
    }

    fn record(name: &str, expires_ms: Option<u64>) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            scopes: vec!["read".into()],
            devices: vec!["green-*".into()],
            created_ms: 0,
            expires_ms,
            revoked: false,
            last_used_ms: None,
        }
    }

    fn open_for(
        sessions: &Sessions,
        tokens: &TokenRegistry,
        secret: &str,
        now: u64,
    ) -> (Opened, Identity) {
        let (identity, handle) = tokens.authenticate_handle(secret, now).unwrap();
        let limit = tokens.expires_ms(&handle);
        let opened = sessions
            .open(Credential::Token(handle), &identity, limit, now)
            .unwrap();
        (opened, identity)
    }

    #[test]
    fn a_session_carries_its_tokens_identity_and_dies_with_the_token() {
        let (_dir, tokens) = registry();
        let clients = ClientIdentities::new(vec![]);
        let sessions = Sessions::new().unwrap();
        let secret = tokens.create(record("t", None)).unwrap();
        let (opened, identity) = open_for(&sessions, &tokens, &secret, 1_000);
        assert_eq!(opened.id.len(), 64);
        assert_eq!(opened.max_age_secs, SESSION_LIFETIME.as_secs());
        let seen = sessions.identity(&opened.id, &tokens, &clients, None, 2_000);
        assert_eq!(seen.as_ref(), Some(&identity));
        assert_eq!(seen.unwrap().devices, vec!["green-*".to_owned()]);
        // Another id, or a near one, finds nothing.
        let mut other = opened.id.clone();
        other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
        assert!(
            sessions
                .identity(&other, &tokens, &clients, None, 2_000)
                .is_none()
        );
        let id = tokens.list()[0].id.clone();
        tokens.revoke(&id).unwrap();
        assert!(
            sessions
                .identity(&opened.id, &tokens, &clients, None, 3_000)
                .is_none()
        );
        assert!(
            sessions.is_empty(),
            "closed when its token was found revoked"
        );
    }

    #[test]
    fn a_session_ends_at_its_lifetime_or_its_tokens_expiry_and_on_close() {
        let (_dir, tokens) = registry();
        let clients = ClientIdentities::new(vec![]);
        let sessions = Sessions::new().unwrap();
        let lifetime = SESSION_LIFETIME.as_millis() as u64;
        let forever = tokens.create(record("a", None)).unwrap();
        let (opened, _) = open_for(&sessions, &tokens, &forever, 0);
        assert!(
            sessions
                .identity(&opened.id, &tokens, &clients, None, lifetime - 1)
                .is_some()
        );
        assert!(
            sessions
                .identity(&opened.id, &tokens, &clients, None, lifetime)
                .is_none()
        );
        let soon = tokens.create(record("b", Some(60_000))).unwrap();
        let (opened, _) = open_for(&sessions, &tokens, &soon, 0);
        assert_eq!(opened.max_age_secs, 60);
        assert!(
            sessions
                .identity(&opened.id, &tokens, &clients, None, 60_000)
                .is_none()
        );
        let (opened, _) = open_for(&sessions, &tokens, &forever, 0);
        assert!(sessions.close(&opened.id));
        assert!(!sessions.close(&opened.id));
        assert!(
            sessions
                .identity(&opened.id, &tokens, &clients, None, 1)
                .is_none()
        );
    }

    #[test]
    fn sessions_are_bounded_per_identity_and_in_all() {
        let (_dir, tokens) = registry();
        let clients = ClientIdentities::new(vec![]);
        let sessions = Sessions::new().unwrap();
        let secret = tokens.create(record("t", None)).unwrap();
        let first = open_for(&sessions, &tokens, &secret, 0).0;
        for now in 1..=MAX_SESSIONS_PER_IDENTITY as u64 {
            open_for(&sessions, &tokens, &secret, now);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_IDENTITY);
        assert!(
            sessions
                .identity(&first.id, &tokens, &clients, None, 100)
                .is_none(),
            "the oldest made room"
        );
        let identity = |n: usize| Identity {
            name: format!("cert:{n}"),
            scopes: vec![],
            devices: vec![],
        };
        for n in 0..MAX_SESSIONS + 10 {
            let credential = Credential::certificate(&n.to_le_bytes());
            sessions
                .open(credential, &identity(n), None, 200 + n as u64)
                .unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_safely() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append("cookie", "a=1; hub_session=abc ; b=2".parse().unwrap());
        assert_eq!(cookie_value(&headers), Some("abc"));
        let mut headers = axum::http::HeaderMap::new();
        headers.append("cookie", "x=1".parse().unwrap());
        headers.append("cookie", "hub_session=def".parse().unwrap());
        assert_eq!(cookie_value(&headers), Some("def"));
        assert_eq!(cookie_value(&axum::http::HeaderMap::new()), None);
        let set = set_cookie(&Opened {
            id: "ab".into(),
            max_age_secs: 5,
        });
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=5",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
