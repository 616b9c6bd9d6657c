//! Who a CONNECT is, from what its connection showed before it (nothing on the plain listener, a
//! device certificate, or on the TLS listener without one, nothing yet) and its user name and
//! password.
//!
//! A password is checked with argon2 (slow by design, see `auth::credentials`), so the check is
//! kept from becoming a way to take the gateway's CPU:
//! - it runs on the blocking pool, never on the async workers, at most
//!   [`credentials::MAX_VERIFYING`] at once; a login that cannot start its check before its
//!   CONNECT deadline is refused with "server unavailable";
//! - a user name that has no live password is refused without hashing anything;
//! - failed logins are limited per address: after [`FAILURE_BURST`] failures, one more each
//!   [`FAILURE_EVERY`]; past that the address is refused before any hashing ("server
//!   unavailable"), so a flood of bad passwords from one address costs a map look-up each.
//!
//! A device that logged in holds its credential's watch token: a rotate or a revoke closes the
//! connection (`connection::serve`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::mqttbytes::v4::{ConnectReturnCode, Login};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Identity;
use crate::auth::credentials::{self, DeviceCredentials, Verdict};
use crate::exposition::{Collect, CollectError, Exposition};
use crate::ratelimit::RateLimiter;

/// Failed logins one address may make at once before it is limited.
pub const FAILURE_BURST: u32 = 10;
/// Then, one more failed login per this period.
pub const FAILURE_EVERY: Duration = Duration::from_secs(5);

/// What a connection showed before its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A client of the plain listener: trusted as local, user name and password ignored.
    Local,
    /// A device certificate, whose common name is this device id.
    Certificate(String),
    /// A TLS connection without a certificate: its CONNECT must log in as a device.
    Nothing,
}

/// Why a login was refused, with the CONNACK code it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No user name or password where one is needed.
    NoLogin,
    /// The user name has no live password (unknown device, or revoked).
    UnknownUser,
    /// Not the device's password.
    WrongPassword,
    /// Too many failed logins from this address lately.
    Limited,
    /// The password could not be checked in time (too many checks waiting).
    Busy,
    /// A certificate's device logging in as another device.
    NotItsName,
}

impl Refusal {
    /// The CONNACK code (MQTT 3.1.1; MQTT 5 gets its counterpart).
    pub fn code(self) -> ConnectReturnCode {
        match self {
            Refusal::NoLogin | Refusal::UnknownUser | Refusal::WrongPassword => {
                ConnectReturnCode::BadUserNamePassword
            }
            Refusal::Limited | Refusal::Busy => ConnectReturnCode::ServiceUnavailable,
            Refusal::NotItsName => ConnectReturnCode::NotAuthorized,
        }
    }

    /// What the log says.
    pub fn why(self) -> &'static str {
        match self {
            Refusal::NoLogin => "no certificate, and no user name and password",
            Refusal::UnknownUser => "the user name is not a device with a password",
            Refusal::WrongPassword => "wrong password",
            Refusal::Limited => "too many failed logins from this address: refused unchecked",
            Refusal::Busy => "too many password checks waiting: refused unchecked",
            Refusal::NotItsName => "the user name is not the certificate's device id",
        }
    }

    /// Every refusal, in a fixed order (the counters are indexed by it).
    const ALL: [Refusal; 6] = [
        Refusal::NoLogin,
        Refusal::UnknownUser,
        Refusal::WrongPassword,
        Refusal::Limited,
        Refusal::Busy,
        Refusal::NotItsName,
    ];

    /// Its name in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoLogin => "no_login",
            Refusal::UnknownUser => "unknown_user",
            Refusal::WrongPassword => "wrong_password",
            Refusal::Limited => "rate_limited",
            Refusal::Busy => "busy",
            Refusal::NotItsName => "not_its_name",
        }
    }
}

/// Counters of password logins.
#[derive(Debug, Default)]
pub struct LoginStats {
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Argon2 runs made to check passwords.
    checks: AtomicU64,
}

impl LoginStats {
    fn count(&self, outcome: Result<(), Refusal>) {
        let counter = match outcome {
            Ok(()) => &self.accepted,
            Err(refusal) => &self.refused[refusal as usize],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Collect for LoginStats {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.family(
            "hub_mqtt_logins_total",
            "counter",
            "Password logins on the MQTT endpoint's TLS listener, by outcome.",
        );
        out.sample(
            "hub_mqtt_logins_total",
            "outcome=\"accepted\"",
            self.accepted.load(Ordering::Relaxed),
        );
        for refusal in Refusal::ALL {
            out.sample(
                "hub_mqtt_logins_total",
                &format!("outcome=\"{}\"", refusal.name()),
                self.refused[refusal as usize].load(Ordering::Relaxed),
            );
        }
        out.single(
            "hub_mqtt_password_checks_total",
            "counter",
            "Passwords checked with argon2 (logins refused before hashing are not).",
            self.checks.load(Ordering::Relaxed),
        );
        Ok(())
    }
}

/// Password logins: the credentials, the per-address limit of failures and the bound on checks.
/// Cheap to clone: clones share all of it.
#[derive(Clone)]
pub struct Logins {
    credentials: DeviceCredentials,
    failures: Arc<RateLimiter>,
    checking: Arc<Semaphore>,
    stats: Arc<LoginStats>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logins")
    }
}

impl Logins {
    /// Logins against `credentials`, counted in `stats`.
    pub fn new(credentials: DeviceCredentials, stats: Arc<LoginStats>) -> Self {
        Logins {
            credentials,
            failures: Arc::new(RateLimiter::new(
                1.0 / FAILURE_EVERY.as_secs_f64(),
                FAILURE_BURST,
            )),
            checking: Arc::new(Semaphore::new(credentials::MAX_VERIFYING)),
            stats,
        }
    }

    /// Who a CONNECT with `login`, on a connection from `peer` that showed `presented`, is; and
    /// for a device, the token that tells its connection to close. `deadline` bounds the wait
    /// for a check. Never hashes for a refusal it can make without.
    pub async fn admit(
        this: Option<&Self>,
        presented: Presented,
        login: Option<&Login>,
        peer: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<(Identity, Option<CancellationToken>), Refusal> {
        match presented {
            Presented::Local => Ok((Identity::Local, None)),
            Presented::Certificate(device) => {
                // A user name, if given, must be the certificate's device; the password is not
                // looked at (the certificate is the proof).
                if login.is_some_and(|l| !l.username.is_empty() && l.username != device) {
                    if let Some(logins) = this {
                        logins.stats.count(Err(Refusal::NotItsName));
                    }
                    return Err(Refusal::NotItsName);
                }
                let watch = this.map(|logins| logins.credentials.watch(&device));
                Ok((Identity::Device(device), watch))
            }
            Presented::Nothing => {
                let Some(logins) = this else {
                    return Err(Refusal::NoLogin);
                };
                let outcome = logins.check(login, peer, deadline).await;
                logins
                    .stats
                    .count(outcome.as_ref().map(|_| ()).map_err(|r| *r));
                outcome.map(|(device, watch)| (Identity::Device(device), Some(watch)))
            }
        }
    }

    async fn check(
        &self,
        login: Option<&Login>,
        peer: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<(String, CancellationToken), Refusal> {
        let key = peer.to_string();
        if self
            .failures
            .allows(&key, std::time::Instant::now())
            .is_err()
        {
            return Err(Refusal::Limited);
        }
        let failed = |refusal| {
            let _ = self.failures.check(&key, std::time::Instant::now());
            Err(refusal)
        };
        let Some(login) = login.filter(|l| !l.username.is_empty()) else {
            return failed(Refusal::NoLogin);
        };
        let device = login.username.clone();
        if !device_protocol::is_valid_id(&device) || !self.credentials.has_password(&device) {
            return failed(Refusal::UnknownUser);
        }
        // Taken before the check: a rotate or revoke during it cancels this token.
        let watch = self.credentials.watch(&device);
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline, self.checking.clone().acquire_owned()).await
        else {
            return Err(Refusal::Busy);
        };
        self.stats.checks.fetch_add(1, Ordering::Relaxed);
        let credentials = self.credentials.clone();
        let password = login.password.clone().into_bytes();
        let who = device.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            credentials.verify(&who, &password)
        })
        .await
        .unwrap_or(Verdict::Wrong);
        match verdict {
            Verdict::Valid if !watch.is_cancelled() => Ok((device, watch)),
            Verdict::Valid | Verdict::Unknown => failed(Refusal::UnknownUser),
            Verdict::Wrong => failed(Refusal::WrongPassword),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::memory::MemoryEngine;

    fn logins(dir: &std::path::Path) -> (Logins, Arc<LoginStats>, String) {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let credentials = DeviceCredentials::open(&dir.join("token.key"), store).unwrap();
        let password = credentials.create("dev-1", 1).unwrap().password;
        let stats = Arc::new(LoginStats::default());
        (Logins::new(credentials, stats.clone()), stats, password)
    }

    fn login(user: &str, password: &str) -> Login {
        Login {
            username: user.into(),
            password: password.into(),
        }
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(10)
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn who_a_connect_is_by_what_it_showed_and_its_login() {
        let dir = tempfile::tempdir().unwrap();
        let (logins, stats, password) = logins(dir.path());
        let l = Some(&logins);
        let admit = |presented, login: Option<Login>| async move {
            Logins::admit(l, presented, login.as_ref(), PEER, soon()).await
        };
        // The plain listener: local, whatever the login says.
        let (who, watch) = admit(Presented::Local, Some(login("x", "y")))
            .await
            .unwrap();
        assert_eq!((who, watch.is_none()), (Identity::Local, true));
        // A certificate: its device, with a watch; a user name other than its id is refused.
        let cert = || Presented::Certificate("dev-2".into());
        let (who, watch) = admit(cert(), None).await.unwrap();
        assert_eq!(who, Identity::Device("dev-2".into()));
        assert!(watch.is_some());
        assert!(admit(cert(), Some(login("dev-2", ""))).await.is_ok());
        assert_eq!(
            admit(cert(), Some(login("dev-1", &password)))
                .await
                .unwrap_err(),
            Refusal::NotItsName
        );
        // Nothing shown: the password decides.
        let (who, _) = admit(Presented::Nothing, Some(login("dev-1", &password)))
            .await
            .unwrap();
        assert_eq!(who, Identity::Device("dev-1".into()));
        for (login, refusal) in [
            (None, Refusal::NoLogin),
            (Some(login("dev-1", "wrong")), Refusal::WrongPassword),
            (Some(login("dev-9", &password)), Refusal::UnknownUser),
            (Some(login("not an id", &password)), Refusal::UnknownUser),
        ] {
            assert_eq!(admit(Presented::Nothing, login).await.unwrap_err(), refusal);
        }
        // Only the two that had a live password were hashed.
        assert_eq!(stats.checks.load(Ordering::Relaxed), 2);
        assert_eq!(
            Refusal::WrongPassword.code(),
            ConnectReturnCode::BadUserNamePassword
        );
        // Each refusal's counter is its place in ALL.
        for (i, refusal) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal as usize, i, "{}", refusal.name());
        }
        // Without password logins (no credentials), a connection without a certificate is refused.
        let refused = Logins::admit(
            None,
            Presented::Nothing,
            Some(&login("dev-1", &password)),
            PEER,
            soon(),
        )
        .await;
        assert_eq!(refused.unwrap_err(), Refusal::NoLogin);
    }

    #[tokio::test]
    async fn failed_logins_of_an_address_are_limited_before_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let (logins, stats, password) = logins(dir.path());
        let l = Some(&logins);
        for _ in 0..FAILURE_BURST {
            let refused = Logins::admit(
                l,
                Presented::Nothing,
                Some(&login("dev-1", "bad")),
                PEER,
                soon(),
            )
            .await;
            assert_eq!(refused.unwrap_err(), Refusal::WrongPassword);
        }
        // The burst is spent: refused unchecked, even with the right password, from this address.
        for _ in 0..100 {
            let refused = Logins::admit(
                l,
                Presented::Nothing,
                Some(&login("dev-1", &password)),
                PEER,
                soon(),
            )
            .await;
            assert_eq!(refused.unwrap_err(), Refusal::Limited);
        }
        assert_eq!(
            stats.checks.load(Ordering::Relaxed),
            u64::from(FAILURE_BURST)
        );
        assert_eq!(
            Refusal::Limited.code(),
            ConnectReturnCode::ServiceUnavailable
        );
        // Another address is not affected.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let admitted = Logins::admit(
            l,
            Presented::Nothing,
            Some(&login("dev-1", &password)),
            other,
            soon(),
        )
        .await;
        assert!(admitted.is_ok());
    }

    #[tokio::test]
    async fn a_rotated_password_cancels_the_watch_of_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (logins, _, password) = logins(dir.path());
        let (_, watch) = Logins::admit(
            Some(&logins),
            Presented::Nothing,
            Some(&login("dev-1", &password)),
            PEER,
            soon(),
        )
        .await
        .unwrap();
        let watch = watch.unwrap();
        assert!(!watch.is_cancelled());
        logins.credentials.rotate("dev-1", 2).unwrap();
        assert!(watch.is_cancelled());
    }
}
