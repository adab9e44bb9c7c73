//! Per-client rate limiting for the public edge.
//!
//! Why: the edge faces scanners and floods. A client (one IPv4 address, or
//! one IPv6 /64, since a single host usually gets a whole /64) gets a token
//! bucket per class of request:
//!
//! - [`Class::Redirect`]: generous, many users can share one NAT'd address;
//! - [`Class::NotFound`]: 404s, 410s, reserved paths and refused methods,
//!   strict, so guessing codes is throttled hard;
//! - [`Class::Postback`]: for `/_postback/{network}` (the endpoint calls
//!   [`RateLimiter::check`] itself).
//!
//! Buckets are keyed by the *salted IP hash* ([`SaltRatchet`]), never the
//! raw IP: the table holds nothing that identifies a client once the salt
//! has rotated. The client is the one [`client_ip`] names (the first
//! `X-Forwarded-For` hop behind a trusted proxy); a trusted proxy that sends
//! no usable hop is not one client and is not limited, and neither is
//! anyone in the configured allow-list. A salt rotation starts every client
//! with a fresh bucket, once a day by default.
//!
//! Each bucket is one `AtomicU64` in GCRA form (the theoretical arrival
//! time of the next request, in ns on a monotonic clock), updated by CAS
//! under the map shard's read lock: a request costs one hash, one map
//! lookup and one CAS. A bucket whose arrival time is in the past has
//! refilled completely and is exactly equivalent to no bucket, so dropping
//! it loses nothing; the sweeper does that periodically.
//!
//! Memory is bounded by a hard cap on tracked keys. When the cap is hit the
//! sweeper runs at once (at most once a second) and, until it frees room,
//! clients that are not tracked yet share one overflow bucket per class
//! worth [`OVERFLOW_SCALE`] clients: already-tracked clients keep their own
//! buckets, memory never grows past the cap, and a wide scan (many /64s)
//! cannot switch the limiter off; the price is that new clients may be
//! limited early while the table is full of active attackers. Counted in
//! `clickedge_rate_limit_overflow_total{class}`.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use ipnet::IpNet;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client_ip::client_ip;
use crate::clicks::{IpHash, SaltRatchet};
use crate::config::{BucketConfig, RateLimitConfig};
use crate::server::Body;
use crate::telemetry::RateLimitMetrics;

/// The overflow bucket of a class (used while the key table is full) is
/// worth this many clients: rate and burst are multiplied by it.
pub const OVERFLOW_SCALE: u32 = 64;
/// The sweeper runs on demand (cap hit) at most this often.
const MIN_SWEEP_GAP: Duration = Duration::from_secs(1);
/// After a sweep, the map is shrunk when it uses less than 1/this of its
/// capacity, so memory taken during a flood is given back.
const SHRINK_RATIO: usize = 4;

static NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// What a request is, for the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Redirect = 0,
    NotFound = 1,
    Postback = 2,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Redirect, Class::NotFound, Class::Postback];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Redirect => "redirect",
            Class::NotFound => "not_found",
            Class::Postback => "postback",
        }
    }
}

/// The limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit; a token is due in this many seconds (at least 1).
    Limit {
        retry_after_secs: u64,
    },
}

/// One class's rate in GCRA form: a request is allowed when, after it, the
/// theoretical arrival time is at most `tolerance_ns` ahead of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per token (1 / rate).
    interval_ns: u64,
    /// `burst` tokens' worth of nanoseconds.
    tolerance_ns: u64,
}

impl Gcra {
    pub fn new(per_sec: f64, burst: u32) -> Gcra {
        let interval_ns = (1e9 / per_sec).round().max(1.0) as u64;
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }

    fn from_config(b: &BucketConfig, scale: u32) -> Gcra {
        Gcra::new(
            b.per_sec * f64::from(scale),
            b.burst.get().saturating_mul(scale),
        )
    }

    /// One request at `now_ns` against a bucket whose theoretical arrival
    /// time is `tat_ns`: the new arrival time, or how long to wait.
    pub fn step(&self, tat_ns: u64, now_ns: u64) -> Result<u64, u64> {
        let next = tat_ns.max(now_ns).saturating_add(self.interval_ns);
        let ahead = next - now_ns;
        if ahead > self.tolerance_ns {
            Err(ahead - self.tolerance_ns)
        } else {
            Ok(next)
        }
    }
}

/// Applies `gcra` to the bucket in `cell`, retrying on a concurrent update.
fn take(cell: &AtomicU64, gcra: &Gcra, now_ns: u64) -> Result<(), u64> {
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let next = gcra.step(tat, now_ns)?;
        match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(seen) => tat = seen,
        }
    }
}

/// The address a client is limited by: IPv4 as is, IPv6 by its /64.
pub fn limit_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
        v4 => v4,
    }
}

/// Hashes a bucket key to itself. Keys are already keyed-blake3 output,
/// uniformly random and unknown to clients (the salt is secret), so hashing
/// them again (SipHash) would only cost time.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Per-client token buckets for every class, in bounded memory.
pub struct RateLimiter {
    enabled: bool,
    classes: [Gcra; 3],
    overflow_rates: [Gcra; 3],
    overflow: [AtomicU64; 3],
    buckets: DashMap<u64, AtomicU64, BuildHasherDefault<KeyHasher>>,
    tracked: AtomicUsize,
    max_keys: usize,
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    salts: Arc<SaltRatchet>,
    /// Zero of the monotonic clock the buckets count in.
    epoch: Instant,
    sweep_now: Notify,
    sweep_interval: Duration,
    metrics: RateLimitMetrics,
}

impl RateLimiter {
    pub fn new(
        cfg: &RateLimitConfig,
        trusted_proxies: Vec<IpNet>,
        salts: Arc<SaltRatchet>,
    ) -> RateLimiter {
        let rates = [&cfg.redirect, &cfg.not_found, &cfg.postback];
        RateLimiter {
            enabled: cfg.enabled,
            classes: rates.map(|b| Gcra::from_config(b, 1)),
            overflow_rates: rates.map(|b| Gcra::from_config(b, OVERFLOW_SCALE)),
            overflow: Default::default(),
            buckets: DashMap::default(),
            tracked: AtomicUsize::new(0),
            max_keys: cfg.max_keys.get(),
            allow: cfg.allow.clone(),
            trusted_proxies,
            salts,
            epoch: Instant::now(),
            sweep_now: Notify::new(),
            sweep_interval: cfg.sweep_interval,
            metrics: RateLimitMetrics::register(),
        }
    }

    /// Checks (and, when allowed, counts) one request of `class` from the
    /// socket peer `peer` with these request `headers`. `now_ms` is the
    /// wall clock, for the salt epoch; the buckets use a monotonic clock.
    pub fn check(&self, class: Class, peer: IpAddr, headers: &HeaderMap, now_ms: i64) -> Verdict {
        let client = client_ip(peer, headers, &self.trusted_proxies);
        self.check_client(class, client, None, now_ms, Instant::now())
    }

    /// [`check`](Self::check) for a caller that has already resolved the
    /// client (with [`client_ip`]) and perhaps hashed it under the salt of
    /// `now_ms` (the redirect path: the click event's `ip_hash`), so the
    /// hash is not computed twice. `now` is the request's arrival.
    pub fn check_client(
        &self,
        class: Class,
        client: IpAddr,
        hashed: Option<IpHash>,
        now_ms: i64,
        now: Instant,
    ) -> Verdict {
        if !self.enabled {
            return Verdict::Allow;
        }
        let exempt = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&client));
        // A trusted proxy that named no client is many clients: not limited.
        if exempt(&self.allow) || exempt(&self.trusted_proxies) {
            return Verdict::Allow;
        }
        let address = limit_address(client);
        let key = match hashed {
            // An IPv4 client (or an IPv6 one at the bottom of its /64) is
            // its own limit address: the event's hash is the key's hash.
            Some(hash) if address == client.to_canonical() => hash.visitor_key(),
            _ => self.salts.hash(address, now_ms as u64).visitor_key(),
        };
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let verdict = self.check_key(class, key, now_ns);
        if verdict != Verdict::Allow {
            self.metrics.limited[class as usize].increment(1);
        }
        verdict
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The bucket step for an already-hashed client key at `now_ns`.
    pub fn check_key(&self, class: Class, key: u64, now_ns: u64) -> Verdict {
        let i = class as usize;
        // One map for all classes: the class lives in the key's low bits.
        let key = (key & !0b11) | i as u64;
        let gcra = &self.classes[i];
        let taken = match self.buckets.get(&key) {
            Some(cell) => take(&cell, gcra, now_ns),
            None => self.take_new(class, key, now_ns),
        };
        match taken {
            Ok(()) => Verdict::Allow,
            Err(wait_ns) => Verdict::Limit {
                retry_after_secs: wait_ns.div_ceil(1_000_000_000).max(1),
            },
        }
    }

    /// First request of a key not in the table (or racing its insertion).
    fn take_new(&self, class: Class, key: u64, now_ns: u64) -> Result<(), u64> {
        let i = class as usize;
        match self.buckets.entry(key) {
            Entry::Occupied(cell) => take(cell.get(), &self.classes[i], now_ns),
            Entry::Vacant(slot) => {
                if self.tracked.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                    self.tracked.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                    self.metrics.overflow[i].increment(1);
                    self.sweep_now.notify_one();
                    return take(&self.overflow[i], &self.overflow_rates[i], now_ns);
                }
                let tat = self.classes[i].step(0, now_ns)?;
                slot.insert(AtomicU64::new(tat));
                Ok(())
            }
        }
    }

    /// Drops every bucket that has refilled (equivalent to none) and gives
    /// memory back after a flood. Returns how many were dropped.
    pub fn sweep_at(&self, now_ns: u64) -> usize {
        let mut dropped = 0;
        self.buckets.retain(|_, tat| {
            let keep = tat.load(Ordering::Relaxed) > now_ns;
            dropped += usize::from(!keep);
            keep
        });
        self.tracked.fetch_sub(dropped, Ordering::Relaxed);
        let left = self.buckets.len();
        if left.saturating_mul(SHRINK_RATIO) < self.buckets.capacity() {
            self.buckets.shrink_to_fit();
        }
        self.metrics.keys.set(left as f64);
        dropped
    }

    pub fn sweep(&self) -> usize {
        self.sweep_at(self.now_ns())
    }

    /// Clients currently tracked (all classes).
    pub fn tracked_keys(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Slots the table has allocated (a proxy for its memory).
    pub fn capacity(&self) -> usize {
        self.buckets.capacity()
    }

    /// Sweeps every `sweep_interval`, and soon after the cap was hit, until
    /// shutdown. Each sweep runs on the blocking pool.
    pub async fn run_sweeper(self: Arc<RateLimiter>, shutdown: CancellationToken) {
        let mut ticker = crate::time::Ticker::new(self.sweep_interval, shutdown.clone());
        loop {
            tokio::select! {
                more = ticker.tick() => if !more { return },
                _ = self.sweep_now.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let me = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || me.sweep()).await {
                tracing::error!(error = %e, "rate limit: sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(MIN_SWEEP_GAP) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The 429 answer: `Retry-After` in seconds, never cached.
pub fn too_many_requests(retry_after_secs: u64) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"too many requests\n")));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    h.insert(CACHE_CONTROL, NO_STORE.clone());
    h.insert(CONTENT_TYPE, TEXT.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroUsize};

    const SEC: u64 = 1_000_000_000;

    fn bucket(per_sec: f64, burst: u32) -> BucketConfig {
        BucketConfig {
            per_sec,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn config(max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            redirect: bucket(10.0, 20),
            not_found: bucket(0.5, 3),
            postback: bucket(100.0, 100),
            max_keys: NonZeroUsize::new(max_keys).unwrap(),
            sweep_interval: Duration::from_secs(10),
            allow: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    fn limiter(max_keys: usize) -> (RateLimiter, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let salts = SaltRatchet::open(
            dir.path(),
            Duration::from_secs(86_400),
            Duration::from_secs(300),
            crate::time::now_ms() as u64,
        )
        .unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        (
            RateLimiter::new(&config(max_keys), trusted, Arc::new(salts)),
            dir,
        )
    }

    fn allowed(l: &RateLimiter, class: Class, key: u64, now_ns: u64) -> bool {
        l.check_key(class, key, now_ns) == Verdict::Allow
    }

    #[test]
    fn a_fresh_bucket_allows_exactly_its_burst_then_one_per_interval() {
        let g = Gcra::new(2.0, 3); // a token every 500 ms, 3 at once
        let now = 100 * SEC;
        let mut tat = 0;
        for _ in 0..3 {
            tat = g.step(tat, now).unwrap();
        }
        // The fourth must wait one interval.
        assert_eq!(g.step(tat, now), Err(SEC / 2));
        assert_eq!(g.step(tat, now + SEC / 4), Err(SEC / 4));
        let tat = g.step(tat, now + SEC / 2).unwrap();
        assert!(g.step(tat, now + SEC / 2).is_err());
        // Idle for burst × interval: the whole burst is back.
        let mut tat = tat;
        let later = now + SEC / 2 + 3 * SEC / 2;
        for _ in 0..3 {
            tat = g.step(tat, later).unwrap();
        }
        assert!(g.step(tat, later).is_err());
    }

    #[test]
    fn fractional_rates_refill_slowly() {
        let g = Gcra::new(0.5, 1); // one every 2 s
        let tat = g.step(0, SEC).unwrap();
        assert_eq!(g.step(tat, SEC), Err(2 * SEC));
        assert!(g.step(tat, 3 * SEC).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let (l, _dir) = limiter(1024);
        let now = 50 * SEC;
        for _ in 0..3 {
            assert!(allowed(&l, Class::NotFound, 7, now));
        }
        // 0.5/s: the next token is 2 s away.
        assert_eq!(
            l.check_key(Class::NotFound, 7, now),
            Verdict::Limit {
                retry_after_secs: 2
            }
        );
        assert_eq!(
            l.check_key(Class::NotFound, 7, now + 1_500_000_000),
            Verdict::Limit {
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn classes_and_clients_have_separate_buckets() {
        let (l, _dir) = limiter(1024);
        let now = 10 * SEC;
        for _ in 0..3 {
            assert!(allowed(&l, Class::NotFound, 1, now));
        }
        assert!(!allowed(&l, Class::NotFound, 1, now));
        assert!(allowed(&l, Class::Redirect, 1, now), "other class");
        assert!(allowed(&l, Class::NotFound, 2 << 2, now), "other client");
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_address(a), limit_address(b));
        assert_ne!(limit_address(a), limit_address(c));
        assert_eq!(
            limit_address(a),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(limit_address(v4), v4);
        assert_eq!(limit_address("::ffff:203.0.113.5".parse().unwrap()), v4);

        let (l, _dir) = limiter(1024);
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert_eq!(l.check(Class::NotFound, a, &h, 0), Verdict::Allow);
        }
        assert_ne!(l.check(Class::NotFound, b, &h, 0), Verdict::Allow);
        assert_eq!(l.check(Class::NotFound, c, &h, 0), Verdict::Allow);
    }

    #[test]
    fn a_reused_event_hash_hits_the_same_bucket_as_a_fresh_one() {
        let (l, _dir) = limiter(1024);
        let now = Instant::now();
        let v4: IpAddr = "198.51.100.4".parse().unwrap();
        let v6: IpAddr = "2001:db8:7::42".parse().unwrap();
        for ip in [v4, v6] {
            let event_hash = l.salts.hash(ip, 0);
            for i in 0..3 {
                let hashed = (i % 2 == 0).then_some(event_hash);
                let v = l.check_client(Class::NotFound, ip, hashed, 0, now);
                assert_eq!(v, Verdict::Allow, "{ip} request {i}");
            }
            // The event hash of an IPv6 address is not its /64's: ignored.
            let v = l.check_client(Class::NotFound, ip, Some(event_hash), 0, now);
            assert_ne!(v, Verdict::Allow, "{ip}");
        }
    }

    #[test]
    fn allow_listed_clients_and_bare_trusted_proxies_are_never_limited() {
        let (l, _dir) = limiter(1024);
        let h = HeaderMap::new();
        for _ in 0..100 {
            let allowed = "192.0.2.77".parse().unwrap();
            assert_eq!(l.check(Class::NotFound, allowed, &h, 0), Verdict::Allow);
            let proxy = "10.1.1.1".parse().unwrap();
            assert_eq!(l.check(Class::NotFound, proxy, &h, 0), Verdict::Allow);
        }
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn clients_behind_a_trusted_proxy_are_limited_one_by_one() {
        let (l, _dir) = limiter(1024);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let from = |xff: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", xff.parse().unwrap());
            h
        };
        for _ in 0..3 {
            let v = l.check(Class::NotFound, proxy, &from("198.51.100.1"), 0);
            assert_eq!(v, Verdict::Allow);
        }
        let v = l.check(Class::NotFound, proxy, &from("198.51.100.1"), 0);
        assert_ne!(v, Verdict::Allow);
        let v = l.check(Class::NotFound, proxy, &from("198.51.100.2"), 0);
        assert_eq!(v, Verdict::Allow);
        // The forwarded header from an untrusted peer names nobody.
        let peer: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                l.check(Class::NotFound, peer, &from("198.51.100.200"), 0),
                Verdict::Allow
            );
        }
        let v = l.check(Class::NotFound, peer, &from("198.51.100.201"), 0);
        assert_ne!(v, Verdict::Allow, "same peer, other header");
    }

    #[test]
    fn a_disabled_limiter_allows_everything_and_tracks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let salts = SaltRatchet::open(
            dir.path(),
            Duration::from_secs(86_400),
            Duration::from_secs(300),
            0,
        )
        .unwrap();
        let cfg = RateLimitConfig {
            enabled: false,
            ..config(1024)
        };
        let l = RateLimiter::new(&cfg, vec![], Arc::new(salts));
        let ip = "198.51.100.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(
                l.check(Class::NotFound, ip, &HeaderMap::new(), 0),
                Verdict::Allow
            );
        }
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn a_sweep_drops_refilled_buckets_only() {
        let (l, _dir) = limiter(1024);
        let now = 10 * SEC;
        // Key 4 spends one token (refilled 2 s later), key 8 three (6 s).
        assert!(allowed(&l, Class::NotFound, 4, now));
        for _ in 0..3 {
            assert!(allowed(&l, Class::NotFound, 8, now));
        }
        assert_eq!(l.tracked_keys(), 2);
        assert_eq!(l.sweep_at(now + SEC), 0);
        assert_eq!(l.sweep_at(now + 2 * SEC), 1);
        assert_eq!(l.tracked_keys(), 1);
        // The survivor kept its state: one token back after 2 s, not three.
        assert!(allowed(&l, Class::NotFound, 8, now + 2 * SEC));
        assert!(!allowed(&l, Class::NotFound, 8, now + 2 * SEC));
        assert_eq!(l.sweep_at(now + 10 * SEC), 1);
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn at_the_cap_new_clients_share_the_overflow_bucket_and_tracked_ones_keep_theirs() {
        let (l, _dir) = limiter(1024);
        let now = 10 * SEC;
        for key in 0..1024u64 {
            assert!(allowed(&l, Class::NotFound, key << 2, now));
        }
        assert_eq!(l.tracked_keys(), 1024);
        // A tracked client still has its own bucket (2 of 3 tokens left).
        assert!(allowed(&l, Class::NotFound, 0, now));
        assert!(allowed(&l, Class::NotFound, 0, now));
        assert!(!allowed(&l, Class::NotFound, 0, now));
        // New clients share 64 clients' worth of burst (3 × 64).
        let shared = (5000..6000u64)
            .filter(|k| allowed(&l, Class::NotFound, k << 2, now))
            .count();
        assert_eq!(shared, 3 * OVERFLOW_SCALE as usize);
        assert_eq!(l.tracked_keys(), 1024, "the cap holds");
        // Once the buckets have refilled, a sweep makes room again.
        assert_eq!(l.sweep_at(now + 60 * SEC), 1024);
        assert!(allowed(&l, Class::NotFound, 5000 << 2, now + 60 * SEC));
        assert_eq!(l.tracked_keys(), 1);
    }

    #[test]
    fn a_million_distinct_clients_keep_the_table_bounded() {
        const CAP: usize = 16_384;
        let (l, _dir) = limiter(CAP);
        let mut peak_capacity = 0;
        // 1M distinct clients, one request each, 1 µs apart; the sweeper
        // runs every simulated 100 ms as it would in the server.
        let mut now = 10 * SEC;
        for key in 0..1_000_000u64 {
            now += 1_000;
            let _ = l.check_key(Class::Redirect, key << 2, now);
            assert!(l.tracked_keys() <= CAP);
            if key % 100_000 == 0 {
                l.sweep_at(now);
                peak_capacity = peak_capacity.max(l.capacity());
            }
        }
        peak_capacity = peak_capacity.max(l.capacity());
        assert!(l.tracked_keys() <= CAP);
        // hashbrown rounds up to powers of two per shard: within 4× the cap.
        assert!(peak_capacity <= 4 * CAP, "{peak_capacity}");
        // Idle long enough, everything is dropped and memory given back.
        let before = l.tracked_keys();
        assert_eq!(l.sweep_at(now + 3600 * SEC), before);
        assert_eq!(l.tracked_keys(), 0);
        assert!(l.capacity() < CAP, "{}", l.capacity());
    }

    #[test]
    fn the_429_answer_has_retry_after_and_no_store() {
        let r = too_many_requests(7);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        assert_eq!(r.headers()[CACHE_CONTROL], "private, no-store");
    }
}
