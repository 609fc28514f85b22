//! Local rate limits: per client IP and per route class, in this process's memory
//! (governor). The first shield, cheap enough to run before any body is parsed,
//! any password is hashed or any code is looked up.
//!
//! What it owns: deciding who the client is (the socket peer, or the address a
//! configured number of hops from the right of a trusted proxy header; an IPv6
//! client by its /64) and
//! refusing with 429 `too_many_requests` and `Retry-After` once a class's budget is
//! spent.
//!
//! What it must not do: be the only limit. Each process counts alone, so N processes
//! let N times as much through, and an attacker with many IPs walks past it. The
//! limits that must hold across processes and IPs (per phone, per account, global)
//! are the PostgreSQL quotas in `store`.
//!
//! Memory is bounded: each class keeps at most `max_keys` clients. Once full, every
//! client not already known shares one overflow bucket (so a flood of fresh IPs
//! throttles new clients together instead of growing the map), until housekeeping
//! evicts the clients whose budget is back to full.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use warp::filters::BoxedFilter;
use warp::http::header::HeaderName;
use warp::http::HeaderMap;
use warp::Filter;

use crate::config::{Rate, RateLimitConfig};
use crate::error::AppError;

/// How often idle clients are evicted. Short enough that a cap filled by a burst
/// of fresh IPs frees up soon after it stops; a sweep over a full map costs a few
/// milliseconds.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);

/// The budget a request draws from. Each class has its own limiter, so spending
/// one (say, sign-ups) never blocks another (logins) from the same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `POST /account/signup`.
    Signup,
    /// `POST /account/login` (which may also send a 2FA code: it counts as a login
    /// only, so a person logging in is not charged twice).
    Login,
    /// Every endpoint that checks a secret a script could guess: the code
    /// confirmations and `/auth/refresh`.
    CodeCheck,
    /// Every endpoint that sends an SMS code (each one costs money).
    CodeSend,
    /// The admin API (`/admin/...`): its token is a secret a script could guess.
    Admin,
}

impl RouteClass {
    pub const ALL: [RouteClass; 5] = [
        RouteClass::Signup,
        RouteClass::Login,
        RouteClass::CodeCheck,
        RouteClass::CodeSend,
        RouteClass::Admin,
    ];
}

/// governor's DashMap store with a hard cap on keys: when full, unseen keys share
/// `overflow` instead of being inserted.
pub struct CappedStore {
    map: DashMapStateStore<IpAddr>,
    /// Keys in `map` plus inserts under way. Counted by reservation before the
    /// insert, because checking `len()` and then inserting would let concurrent
    /// requests overshoot the cap.
    reserved: AtomicUsize,
    cap: usize,
    /// The one bucket every client shares once the map is full.
    overflow: InMemoryState,
}

impl CappedStore {
    pub fn new(cap: usize) -> CappedStore {
        CappedStore {
            map: DashMapStateStore::default(),
            reserved: AtomicUsize::new(0),
            cap,
            overflow: InMemoryState::default(),
        }
    }

    fn reserve(&self) -> bool {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.reserved.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

impl StateStore for CappedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if !self.reserve() {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut inserted = false;
        let state = self.map.entry(*key).or_insert_with(|| {
            inserted = true;
            InMemoryState::default()
        });
        if !inserted {
            // Another request inserted this key between our miss and our insert.
            self.release(1);
        }
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut removed = 0;
        self.map.retain(|_, state| {
            let keep = last_arrival(state).is_some_and(|t| t > drop_below);
            removed += usize::from(!keep);
            keep
        });
        self.release(removed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A state's theoretical arrival time (None: never used). governor exposes it only
/// to a measuring closure; one that always refuses reads it and writes nothing.
fn last_arrival(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

type Limiter = RateLimiter<IpAddr, CappedStore, DefaultClock>;

fn limiter(rate: Rate, max_keys: usize) -> Limiter {
    // `Rate` parsing keeps period / count at a microsecond or more; the fallback only
    // guards against a hand-built zero period.
    let quota = Quota::with_period(rate.period / rate.count.get())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(rate.count);
    RateLimiter::new(quota, CappedStore::new(max_keys), DefaultClock::default())
}

/// The per-process limiters, one per route class. Cloning shares them.
#[derive(Clone)]
pub struct LocalLimits {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    trusted_header: Option<HeaderName>,
    /// How many entries from the right of that header the client is.
    trusted_hops: usize,
    signup: Limiter,
    login: Limiter,
    code_check: Limiter,
    code_send: Limiter,
    admin: Limiter,
    /// Refusals per class since start, for `/metrics` (indexed like `RouteClass::ALL`).
    refused: [AtomicU64; 5],
}

impl Inner {
    fn limiter(&self, class: RouteClass) -> &Limiter {
        match class {
            RouteClass::Signup => &self.signup,
            RouteClass::Login => &self.login,
            RouteClass::CodeCheck => &self.code_check,
            RouteClass::CodeSend => &self.code_send,
            RouteClass::Admin => &self.admin,
        }
    }

    fn housekeeping(&self) {
        for class in RouteClass::ALL {
            let l = self.limiter(class);
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

impl LocalLimits {
    pub fn new(config: &RateLimitConfig) -> LocalLimits {
        let max = config.max_keys;
        LocalLimits {
            inner: Arc::new(Inner {
                enabled: config.enabled,
                trusted_header: config.trusted_proxy_header.clone(),
                trusted_hops: config.trusted_proxies,
                signup: limiter(config.signup, max),
                login: limiter(config.login, max),
                code_check: limiter(config.code_check, max),
                code_send: limiter(config.code_send, max),
                admin: limiter(config.admin, max),
                refused: Default::default(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Counts one request of `class` against its client; `TooManyRequests` with the
    /// wait until the next one would pass.
    pub fn check(
        &self,
        class: RouteClass,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), AppError> {
        if !self.inner.enabled {
            return Ok(());
        }
        let ip = client_ip(
            peer,
            headers,
            self.inner.trusted_header.as_ref(),
            self.inner.trusted_hops,
        );
        self.check_ip(class, ip)
    }

    /// As `check`, for a known client address.
    pub fn check_ip(&self, class: RouteClass, ip: IpAddr) -> Result<(), AppError> {
        if !self.inner.enabled {
            return Ok(());
        }
        let limiter = self.inner.limiter(class);
        limiter.check_key(&rate_key(ip)).map_err(|not_until| {
            if let Some(n) = self.inner.refused.get(class as usize) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            AppError::TooManyRequests {
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            }
        })
    }

    /// Requests of `class` refused with 429 since start.
    pub fn refused(&self, class: RouteClass) -> u64 {
        self.inner
            .refused
            .get(class as usize)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Clients currently tracked for `class` (the overflow bucket not counted).
    pub fn keys(&self, class: RouteClass) -> usize {
        self.inner.limiter(class).len()
    }

    /// Forgets clients whose budget is back to full, and returns the memory.
    pub fn housekeeping(&self) {
        self.inner.housekeeping();
    }

    /// Runs `housekeeping` every `every` while these limits are alive. The task holds
    /// only a weak reference, so it ends by itself once the app is dropped.
    pub fn spawn_housekeeping(&self, every: Duration) {
        if !self.inner.enabled {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick completes at once; nothing to evict yet.
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.housekeeping();
            }
        });
    }
}

/// Counts the request against `class`, after path and method matched (so unknown
/// routes stay 404 and a wrong method stays 405), before anything costly runs.
pub fn limit(limits: &LocalLimits, class: RouteClass) -> BoxedFilter<()> {
    let limits = limits.clone();
    warp::addr::remote()
        .and(warp::header::headers_cloned())
        .and_then(move |peer: Option<SocketAddr>, headers: HeaderMap| {
            let outcome = limits.check(class, peer, &headers);
            async move { outcome.map_err(warp::reject::custom) }
        })
        .untuple_one()
        .boxed()
}

/// The client's address: with a trusted proxy header, the address exactly
/// `hops` entries from its right (our `hops` proxies each appended one; every
/// entry further left is whatever the client wrote), else the socket peer. A
/// missing or unparsable entry at that position also means the peer: skipping
/// it to find a parsable one would let a client who sends `unknown` (or junk
/// our proxy passes on) choose its own address, and so its rate-limit bucket.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: Option<&HeaderName>,
    hops: usize,
) -> IpAddr {
    trusted
        .and_then(|name| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            forwarded_ip(&values, hops)
        })
        .or(peer.map(|p| p.ip()))
        // Only a test request has no peer; such requests share one bucket.
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}

/// The address `hops` entries from the right across the header's lines (later
/// lines were appended later; 1 is the last entry), or None when that entry is
/// missing or not an address. Empty entries count: a proxy never writes one.
pub fn forwarded_ip(values: &[&str], hops: usize) -> Option<IpAddr> {
    let back = hops.checked_sub(1)?;
    values
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .nth(back)
        .and_then(parse_forwarded_element)
}

/// One element of `X-Forwarded-For` (`203.0.113.7`, `203.0.113.7:4711`,
/// `[2001:db8::1]:4711`) or of RFC 7239 `Forwarded` (`for="[2001:db8::1]";proto=https`).
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let element = element.trim();
    let value = element
        .split(';')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })
        .unwrap_or(element)
        .trim_matches('"');
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            value
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

/// The key a client is counted under: an IPv4 address as is (an IPv4-mapped IPv6
/// address is the same client), an IPv6 address by its /64, since one host
/// commonly holds a whole /64 and could otherwise rotate through 2^64 keys.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config(rate: Rate, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            max_keys,
            signup: rate,
            login: rate,
            code_check: rate,
            code_send: rate,
            ..RateLimitConfig::default()
        }
    }

    fn rightmost_ip(values: &[&str]) -> Option<IpAddr> {
        forwarded_ip(values, 1)
    }

    #[test]
    fn the_entry_n_hops_from_the_right_is_the_client() {
        assert_eq!(
            rightmost_ip(&["198.51.100.1, 203.0.113.7"]),
            Some(ip("203.0.113.7"))
        );
        // Later header lines were appended later.
        assert_eq!(
            rightmost_ip(&["198.51.100.1", "203.0.113.7, 192.0.2.9"]),
            Some(ip("192.0.2.9"))
        );
        // Two proxies of ours: the second appended the first's address.
        assert_eq!(
            forwarded_ip(&["198.51.100.1, 203.0.113.7, 10.0.0.2"], 2),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            forwarded_ip(&["198.51.100.1, 203.0.113.7", "10.0.0.2"], 2),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(forwarded_ip(&["10.0.0.2"], 2), None);
        assert_eq!(forwarded_ip(&["203.0.113.7"], 0), None);
        assert_eq!(rightmost_ip(&["203.0.113.7:4711"]), Some(ip("203.0.113.7")));
        assert_eq!(
            rightmost_ip(&["[2001:db8::1]:4711"]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(rightmost_ip(&["2001:db8::1"]), Some(ip("2001:db8::1")));
        assert_eq!(
            rightmost_ip(&[r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#]),
            Some(ip("2001:db8:cafe::17"))
        );
    }

    #[test]
    fn an_unparsable_hop_is_never_skipped_to_an_address_the_client_wrote() {
        // Before: the right-most *parsable* entry won, so a client sending
        // `203.0.113.7, unknown` (or junk) picked 203.0.113.7 as its address.
        for header in [
            "203.0.113.7, unknown",
            "203.0.113.7, for=unknown",
            "203.0.113.7, _hidden",
            "203.0.113.7, junk",
            "203.0.113.7, ",
            "nonsense, 203.0.113.7, unknown, ",
        ] {
            assert_eq!(rightmost_ip(&[header]), None, "{header:?}");
        }
        assert_eq!(forwarded_ip(&["198.51.100.1, junk, 10.0.0.2"], 2), None);
        let peer: SocketAddr = "192.0.2.50:5000".parse().unwrap();
        let name = HeaderName::from_static("x-forwarded-for");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, unknown".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &headers, Some(&name), 1), peer.ip());
    }

    #[test]
    fn garbage_headers_give_nothing() {
        for bad in [
            "",
            " , ,",
            "unknown",
            "999.1.1.1",
            "1.2.3",
            "[::1",
            "for=",
            "<script>",
            "203.0.113.7:notaport",
        ] {
            assert_eq!(rightmost_ip(&[bad]), None, "{bad:?}");
        }
        assert_eq!(rightmost_ip(&[]), None);
    }

    #[test]
    fn peer_is_used_unless_a_trusted_header_parses() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let name = HeaderName::from_static("x-forwarded-for");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.7".parse().unwrap());
        // Not trusted: ignored, whatever it says.
        assert_eq!(client_ip(Some(peer), &headers, None, 1), peer.ip());
        assert_eq!(
            client_ip(Some(peer), &headers, Some(&name), 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(Some(peer), &headers, Some(&name), 2),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(Some(peer), &headers, Some(&name), 3), peer.ip());
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &headers, Some(&name), 1), peer.ip());
        assert_eq!(
            client_ip(Some(peer), &HeaderMap::new(), Some(&name), 1),
            peer.ip()
        );
        assert_eq!(
            client_ip(None, &HeaderMap::new(), None, 1),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            rate_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(rate_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(rate_key(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(rate_key(ip("203.0.113.7")), ip("203.0.113.7"));
    }

    #[test]
    fn a_whole_64_shares_one_budget() {
        let limits = LocalLimits::new(&config(Rate::new(2, Duration::from_secs(60)), 100));
        let c = RouteClass::Login;
        assert!(limits.check_ip(c, ip("2001:db8::1")).is_ok());
        assert!(limits.check_ip(c, ip("2001:db8::2")).is_ok());
        assert!(limits.check_ip(c, ip("2001:db8::ffff:3")).is_err());
        assert!(limits.check_ip(c, ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn trips_with_a_sane_retry_after_and_classes_are_independent() {
        let limits = LocalLimits::new(&config(Rate::new(2, Duration::from_secs(60)), 100));
        let a = ip("203.0.113.7");
        assert!(limits.check_ip(RouteClass::Signup, a).is_ok());
        assert!(limits.check_ip(RouteClass::Signup, a).is_ok());
        match limits.check_ip(RouteClass::Signup, a) {
            Err(AppError::TooManyRequests { retry_after }) => {
                // One request back every 30 s.
                assert!(retry_after > Duration::from_secs(29), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(30), "{retry_after:?}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        for class in [
            RouteClass::Login,
            RouteClass::CodeCheck,
            RouteClass::CodeSend,
        ] {
            assert!(limits.check_ip(class, a).is_ok(), "{class:?}");
        }
        assert!(limits
            .check_ip(RouteClass::Signup, ip("203.0.113.8"))
            .is_ok());
    }

    #[test]
    fn disabled_lets_everything_through() {
        let mut cfg = config(Rate::new(1, Duration::from_secs(60)), 1);
        cfg.enabled = false;
        let limits = LocalLimits::new(&cfg);
        for _ in 0..100 {
            assert!(limits
                .check_ip(RouteClass::CodeSend, ip("203.0.113.7"))
                .is_ok());
        }
        assert_eq!(limits.keys(RouteClass::CodeSend), 0);
    }

    #[test]
    fn keyed_state_never_exceeds_the_cap() {
        let cap = 1_000;
        let limits = LocalLimits::new(&config(Rate::new(5, Duration::from_secs(60)), cap));
        for n in 0..50_000u32 {
            let _ = limits.check_ip(RouteClass::CodeCheck, IpAddr::V4(Ipv4Addr::from(n)));
            // And IPv6 clients in distinct /64s.
            let v6 = Ipv6Addr::from(u128::from(n) << 64);
            let _ = limits.check_ip(RouteClass::CodeCheck, IpAddr::V6(v6));
        }
        assert_eq!(limits.keys(RouteClass::CodeCheck), cap);
        // Concurrent inserts cannot overshoot either.
        let limits = LocalLimits::new(&config(Rate::new(5, Duration::from_secs(60)), cap));
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let limits = &limits;
                s.spawn(move || {
                    for n in 0..20_000u32 {
                        let v4 = Ipv4Addr::from((t << 24) | n);
                        let _ = limits.check_ip(RouteClass::Signup, IpAddr::V4(v4));
                    }
                });
            }
        });
        assert!(limits.keys(RouteClass::Signup) <= cap);
    }

    #[test]
    fn when_full_unseen_clients_share_one_overflow_bucket() {
        let limits = LocalLimits::new(&config(Rate::new(1, Duration::from_secs(60)), 2));
        let c = RouteClass::Signup;
        assert!(limits.check_ip(c, ip("192.0.2.1")).is_ok());
        assert!(limits.check_ip(c, ip("192.0.2.2")).is_ok());
        // Full: a third client gets the overflow bucket's one request, a fourth none.
        assert!(limits.check_ip(c, ip("192.0.2.3")).is_ok());
        assert!(limits.check_ip(c, ip("192.0.2.4")).is_err());
        assert_eq!(limits.keys(c), 2);
    }

    #[test]
    fn housekeeping_evicts_idle_clients_and_frees_the_cap() {
        // 5 per second: a client is back to a full budget 200 ms after one request.
        let limits = LocalLimits::new(&config(Rate::new(5, Duration::from_secs(1)), 100));
        let c = RouteClass::Login;
        for n in 0..99u32 {
            assert!(limits.check_ip(c, IpAddr::V4(Ipv4Addr::from(n))).is_ok());
        }
        std::thread::sleep(Duration::from_millis(500));
        // A recent client (the 100th key) stays.
        assert!(limits.check_ip(c, ip("198.51.100.1")).is_ok());
        assert_eq!(limits.keys(c), 100);
        limits.housekeeping();
        assert_eq!(limits.keys(c), 1);
        // The freed room is usable: new clients get their own buckets again.
        for n in 0..99u32 {
            assert!(limits
                .check_ip(c, IpAddr::V4(Ipv4Addr::from(1000 + n)))
                .is_ok());
        }
        assert_eq!(limits.keys(c), 100);
    }

    #[tokio::test]
    async fn filter_rejects_with_too_many_requests() {
        let limits = LocalLimits::new(&config(Rate::new(1, Duration::from_secs(60)), 100));
        let route = warp::path!("x")
            .and(warp::post())
            .and(limit(&limits, RouteClass::Signup))
            .map(warp::reply);
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let req = || {
            warp::test::request()
                .method("POST")
                .path("/x")
                .remote_addr(peer)
        };
        assert!(req().filter(&route).await.is_ok());
        let rejection = match req().filter(&route).await {
            Err(r) => r,
            Ok(_) => panic!("second request passed"),
        };
        assert!(matches!(
            rejection.find::<AppError>(),
            Some(AppError::TooManyRequests { .. })
        ));
        // Another route's miss is a plain 404, not a 429.
        let miss = req().path("/y").filter(&route).await;
        assert!(matches!(miss, Err(r) if r.is_not_found()));
    }
}
