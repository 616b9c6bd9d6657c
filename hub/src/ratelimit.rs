//! Per-key rate limits: a token bucket per identity (and one per peer address for failed
//! authentication, of the API and of the MQTT endpoint's passwords), so one client cannot starve
//! the others on a small gateway, and a secret cannot be guessed at line rate.
//!
//! A bucket holds at most `burst` tokens and refills at `rate` per second; a request takes one. An
//! empty bucket answers how long until the next token, which becomes `Retry-After`. The number of
//! buckets is bounded: when it is full, buckets that have refilled completely (idle clients) are
//! dropped first, and if none has, the oldest half is.
//!
//! Next to rates, [`OpenCounts`] caps how many things (connections, requests in progress) one key
//! holds open at once: a rate limit does not stop a few slow requests from holding the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most buckets kept at once.
const MAX_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Buckets of `burst` tokens refilled at `rate` per second. A rate of 0 turns limiting off.
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now`; `Err(wait)` when there is none, with the time until one.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(key) && buckets.len() >= MAX_BUCKETS {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        self.take(&mut bucket.tokens)
    }

    /// The tokens `bucket` holds at `now`.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Takes one of `tokens`, or says how long until there is one.
    fn take(&self, tokens: &mut f64) -> Result<(), Duration> {
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }

    /// Whether `key` has a token at `now`, without taking it; `Err(wait)` as [`Self::check`].
    /// For refusing cheaply before costly work whose failure will then take the token.
    pub fn allows(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let Ok(buckets) = self.buckets.lock() else {
            return Ok(());
        };
        match buckets.get(key) {
            Some(bucket) => self.take(&mut self.refilled(bucket, now)),
            None => Ok(()),
        }
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.rate);
        buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
        if buckets.len() >= MAX_BUCKETS {
            let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            buckets.retain(|_, b| b.updated > cut);
        }
    }
}

/// The `Retry-After` value for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_a_wait_that_matches() {
        let limiter = RateLimiter::new(10.0, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.check("a", t0).unwrap();
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // Others are not affected.
        limiter.check("b", t0).unwrap();
        // 100 ms later one more token.
        let t1 = t0 + Duration::from_millis(100);
        limiter.check("a", t1).unwrap();
        assert!(limiter.check("a", t1).is_err());
        // After a long pause, the burst again, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            limiter.check("a", t2).unwrap();
        }
        assert!(limiter.check("a", t2).is_err());
    }

    #[test]
    fn allows_looks_without_taking() {
        let limiter = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.allows("a", t0).unwrap();
        }
        limiter.check("a", t0).unwrap();
        limiter.check("a", t0).unwrap();
        let wait = limiter.allows("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        limiter.allows("a", t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn zero_rate_is_off_and_buckets_stay_bounded() {
        let off = RateLimiter::new(0.0, 1);
        for _ in 0..100 {
            off.check("a", Instant::now()).unwrap();
        }
        let limiter = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS * 3) {
            let _ = limiter.check(&format!("k{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}

/// How many things each key holds open, capped per key. Only keys with something open are
/// kept, so the map is bounded by what is open in all.
#[derive(Debug)]
pub struct OpenCounts<K: std::hash::Hash + Eq + Clone> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for OpenCounts<K> {
    fn default() -> Self {
        OpenCounts {
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// One thing counted in [`OpenCounts`], uncounted when dropped.
#[derive(Debug)]
pub struct OpenSlot<K: std::hash::Hash + Eq + Clone> {
    counts: std::sync::Arc<OpenCounts<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> OpenCounts<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `key`, or `None` when it already holds `cap`.
    pub fn take(self: &std::sync::Arc<Self>, key: &K, cap: usize) -> Option<OpenSlot<K>> {
        let mut open = self.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                open.remove(key);
            }
            return None;
        }
        *count += 1;
        Some(OpenSlot {
            counts: self.clone(),
            key: key.clone(),
        })
    }

    /// How many `key` holds now.
    pub fn open(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for OpenSlot<K> {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn open_counts_cap_each_key_and_forget_keys_with_nothing_open() {
        let counts = Arc::new(OpenCounts::<&str>::default());
        let a1 = counts.take(&"a", 2).unwrap();
        let a2 = counts.take(&"a", 2).unwrap();
        assert!(counts.take(&"a", 2).is_none());
        let b = counts.take(&"b", 2).unwrap();
        assert_eq!((counts.open(&"a"), counts.open(&"b")), (2, 1));
        drop(a1);
        let a3 = counts.take(&"a", 2).unwrap();
        drop((a2, a3, b));
        assert!(counts.lock().is_empty());
        assert!(counts.take(&"c", 0).is_none());
        assert!(counts.lock().is_empty());
    }
}
