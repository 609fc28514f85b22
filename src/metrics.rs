//! Prometheus metrics: the counters and histograms the request path bumps, and
//! their exposition in the OpenMetrics 1.0 text format for `GET /metrics`
//! (served by `routes::metrics`), encoded by the Prometheus project's Rust
//! client, `prometheus-client`.
//!
//! What it owns: every number authgate counts itself (requests by route and
//! status, login flow events, codes, SMS quota refusals, password-hash queue
//! wait, rows purged per table). Figures another part already keeps (live flow actors, SMS outcomes,
//! outbox depth, pool usage, rate-limit refusals) are read at scrape time and
//! passed in as a [`Live`] snapshot, so nothing is counted twice.
//!
//! What it must not do: slow the request path. Every series has a fixed slot in
//! arrays allocated once at start-up, updated with relaxed atomics: no lock, no
//! map lookup, no allocation per request (`tests/metrics_alloc.rs` counts the
//! allocations). Labels come only from closed sets (route patterns from
//! [`ROUTES`], known status codes, purposes, classes), so a client cannot
//! create series by sending odd paths.
//!
//! Why the library encodes but does not store: its `Histogram` takes a mutex
//! on every `observe` (prometheus-client 0.26), and a `Family` is a map behind
//! a lock whose series, once created, are all exposed: creating the 36 × 19
//! route × status cells up front would put ~11,000 zero lines in every scrape,
//! where this module writes only the cells that have seen a request. So the
//! atomics stay, and [`Metrics::render`] hands them, with the [`Live`] figures,
//! to the library as one [`Collector`] that writes each family through its
//! OpenMetrics encoder (`# HELP`/`# TYPE`/`# UNIT`, label escaping, number
//! formatting, `_total`/`_bucket`/`_sum`/`_count` suffixes, `# EOF`).
//!
//! OpenMetrics names a counter family without `_total` and the encoder adds it
//! to the sample, so families are declared as `authgate_http_requests` and the
//! exposed samples keep their names (`authgate_http_requests_total`). The
//! latency histograms are declared with the unit `seconds` (`# UNIT` line),
//! which the encoder appends, so they keep theirs too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::otp::Purpose;
use crate::routes::limits::RouteClass;
use crate::sms::SmsMetricsSnapshot;
use crate::store::otp::CheckOutcome;

/// The `Content-Type` of the OpenMetrics 1.0 text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The route table the `route` label comes from: `routes::ROUTES` (the same
/// list the OpenAPI document is built from). A route's pattern is its path,
/// with `{name}` for a path parameter.
pub use crate::routes::ROUTES;

/// The `route` label of every path that matches no route (404s of any path).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Status codes authgate answers, with their label; any other lands in one
/// `other` series.
const STATUSES: [(u16, &str); 18] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (409, "409"),
    (410, "410"),
    (411, "411"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
];

/// The `status` label of a status code not in [`STATUSES`].
const OTHER_STATUS: &str = "other";

/// Request latency bounds, in seconds: from a cached lookup (1 ms) to a login
/// waiting for an argon2 slot under load (seconds).
const REQUEST_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Hash queue wait bounds, in seconds: usually zero; anything above a few
/// milliseconds means `AUTHGATE_HASH_CONCURRENCY` is the bottleneck.
const HASH_WAIT_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Room for the buckets of any histogram here (its bounds plus `+Inf`), so a
/// render copies them onto the stack instead of allocating per series.
const MAX_BUCKETS: usize = 14;
const _: () = assert!(
    REQUEST_BOUNDS.len() < MAX_BUCKETS && HASH_WAIT_BOUNDS.len() < MAX_BUCKETS,
    "MAX_BUCKETS too small"
);

/// The slot of a request path in [`ROUTES`], or `ROUTES.len()` for unmatched.
/// A `{name}` segment of a pattern matches any one segment, so
/// `/api/v1/account/sessions/<uuid>` counts under its pattern, never as itself.
pub fn route_index(path: &str) -> usize {
    ROUTES
        .iter()
        .position(|(_, p)| matches_pattern(p, path))
        .unwrap_or(ROUTES.len())
}

/// Whether `path` is an instance of the route `pattern` (`{name}` matches
/// one non-empty segment).
pub(crate) fn matches_pattern(pattern: &str, path: &str) -> bool {
    let (mut a, mut b) = (pattern.split('/'), path.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(p), Some(s))
                if p == s || (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) => {}
            _ => return false,
        }
    }
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|(s, _)| *s == status)
        .unwrap_or(STATUSES.len())
}

/// A histogram with fixed bounds. Bucket counts are kept per bucket (not
/// cumulative) so an observation is one increment; the count is their total, so
/// `_count` always equals the `+Inf` bucket even while requests race a scrape.
struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound, plus one for above the last bound.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in nanoseconds (u64: 584 years of total latency).
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes `_sum`, `_count` and the `_bucket` lines of one series. The
    /// encoder takes per-bucket counts and accumulates them itself; the count
    /// it is given is the total of the same loads, so `_count` and `+Inf` agree.
    fn encode(&self, metric: &mut MetricEncoder) -> std::fmt::Result {
        let mut buckets = [(0.0, 0u64); MAX_BUCKETS];
        let mut count = 0u64;
        for (i, (slot, b)) in buckets.iter_mut().zip(self.buckets.iter()).enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            *slot = (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), n);
        }
        let used = buckets.get(..self.buckets.len()).unwrap_or_default();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        metric.encode_histogram::<NoLabelSet>(sum, count, used, None)
    }
}

/// A login flow's milestones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// A right password with 2FA on: a flow began and its code was sent.
    Started,
    /// The right code: tokens issued.
    Completed,
    /// Too many wrong codes.
    Locked,
    /// Its time ran out before the right code came.
    Expired,
}

impl FlowEvent {
    const ALL: [FlowEvent; 4] = [
        FlowEvent::Started,
        FlowEvent::Completed,
        FlowEvent::Locked,
        FlowEvent::Expired,
    ];

    fn index(self) -> usize {
        match self {
            FlowEvent::Started => 0,
            FlowEvent::Completed => 1,
            FlowEvent::Locked => 2,
            FlowEvent::Expired => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            FlowEvent::Started => "started",
            FlowEvent::Completed => "completed",
            FlowEvent::Locked => "locked",
            FlowEvent::Expired => "expired",
        }
    }
}

/// How a code check ended, as a label.
const CHECK_RESULTS: [&str; 5] = ["accepted", "rejected", "unusable", "no_code", "locked"];

fn check_index(outcome: &CheckOutcome) -> usize {
    match outcome {
        CheckOutcome::Accepted => 0,
        CheckOutcome::Rejected { .. } => 1,
        CheckOutcome::Unusable(_) => 2,
        CheckOutcome::NoCode => 3,
        CheckOutcome::Locked { .. } => 4,
    }
}

fn purpose_index(p: Purpose) -> usize {
    match p {
        Purpose::PhoneVerify => 0,
        Purpose::Login2fa => 1,
        Purpose::Enable2fa => 2,
        Purpose::Disable2fa => 3,
        Purpose::PhoneChange => 4,
        Purpose::PasswordReset => 5,
    }
}

/// Which PostgreSQL send quota refused a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// `OTP_RESEND_COOLDOWN` for the same user and purpose.
    Cooldown,
    PerPhone,
    PerAccount,
    /// `AUTHGATE_SMS_PER_REGION_HOUR`.
    PerRegion,
    Global,
    /// Code entry is locked for the account (too many wrong codes).
    CodeLocked,
}

impl QuotaRefusal {
    const ALL: [QuotaRefusal; 6] = [
        QuotaRefusal::Cooldown,
        QuotaRefusal::PerPhone,
        QuotaRefusal::PerAccount,
        QuotaRefusal::PerRegion,
        QuotaRefusal::Global,
        QuotaRefusal::CodeLocked,
    ];

    fn index(self) -> usize {
        match self {
            QuotaRefusal::Cooldown => 0,
            QuotaRefusal::PerPhone => 1,
            QuotaRefusal::PerAccount => 2,
            QuotaRefusal::Global => 3,
            QuotaRefusal::PerRegion => 4,
            QuotaRefusal::CodeLocked => 5,
        }
    }

    fn label(self) -> &'static str {
        match self {
            QuotaRefusal::Cooldown => "cooldown",
            QuotaRefusal::PerPhone => "per_phone",
            QuotaRefusal::PerAccount => "per_account",
            QuotaRefusal::Global => "global",
            QuotaRefusal::PerRegion => "per_region",
            QuotaRefusal::CodeLocked => "code_locked",
        }
    }
}

/// The `table` label of `authgate_purged_rows_total`: what the purge actor
/// deletes (`users_unverified`: expired unverified sign-ups).
pub const PURGED_TABLES: [&str; 4] = [
    "audit_events",
    "quota_counters",
    "sms_outbox",
    "users_unverified",
];

/// The `class` label of a local rate-limit class.
pub fn class_label(class: RouteClass) -> &'static str {
    match class {
        RouteClass::Signup => "signup",
        RouteClass::Login => "login",
        RouteClass::CodeCheck => "code_check",
        RouteClass::CodeSend => "code_send",
        RouteClass::Admin => "admin",
    }
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn bump(c: Option<&AtomicU64>) {
    if let Some(c) = c {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn load(c: Option<&AtomicU64>) -> u64 {
    c.map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The atomics: shared (behind an `Arc`) between [`Metrics`] and the
/// collector a scrape hands to the encoder, which must own what it reads.
struct Cells {
    /// (route, status) cells, row-major: `route * (STATUSES.len() + 1) + status`.
    http: Box<[Histogram]>,
    flows: [AtomicU64; 4],
    codes_issued: [AtomicU64; Purpose::ALL.len()],
    /// purpose × check result.
    code_checks: [[AtomicU64; 5]; Purpose::ALL.len()],
    quota_refusals: [AtomicU64; 6],
    hash_wait: Histogram,
    /// Hashes not run, by [`HASH_DROP_REASONS`].
    hash_dropped: [AtomicU64; 3],
    /// Rows deleted by the purge actor, indexed like `PURGED_TABLES`.
    purged: [AtomicU64; 4],
    /// SMS to test numbers (`AUTHGATE_TEST_PHONES`), kept from every provider.
    sms_test_numbers: AtomicU64,
}

/// Everything authgate counts itself, since start. One per process, in `AppState`.
pub struct Metrics {
    cells: Arc<Cells>,
}

/// Why a password hash was not run: the queue was full, the wait too long, or
/// the caller gone.
pub const HASH_DROP_REASONS: [&str; 3] = ["shed", "timed_out", "abandoned"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Figures read at scrape time from the parts that keep them.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// `FlowRegistry::live()`.
    pub flow_actors: usize,
    /// Outbox messages not yet final, or None when the database did not answer
    /// in time.
    pub outbox_depth: Option<i64>,
    pub sms: SmsMetricsSnapshot,
    /// Pool connections open, idle, and the configured maximum.
    pub pool_size: usize,
    pub pool_available: usize,
    pub pool_max: usize,
    /// Local rate-limit refusals per class since start.
    pub rate_limited: Vec<(RouteClass, u64)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let cells = (ROUTES.len() + 1) * (STATUSES.len() + 1);
        Metrics {
            cells: Arc::new(Cells {
                http: (0..cells).map(|_| Histogram::new(REQUEST_BOUNDS)).collect(),
                flows: counters(),
                codes_issued: counters(),
                code_checks: std::array::from_fn(|_| counters()),
                quota_refusals: counters(),
                hash_wait: Histogram::new(HASH_WAIT_BOUNDS),
                hash_dropped: counters(),
                purged: counters(),
                sms_test_numbers: AtomicU64::new(0),
            }),
        }
    }

    /// An SMS to a test number that no provider saw.
    pub fn sms_to_test_number(&self) {
        bump(Some(&self.cells.sms_test_numbers));
    }

    /// One answered request. `path` is the raw request path; it is mapped to its
    /// route pattern (or `unmatched`) here, so no path ever becomes a label.
    pub fn observe_request(&self, path: &str, status: u16, latency: Duration) {
        let cell = route_index(path) * (STATUSES.len() + 1) + status_index(status);
        if let Some(h) = self.cells.http.get(cell) {
            h.observe(latency);
        }
    }

    pub fn flow(&self, event: FlowEvent) {
        bump(self.cells.flows.get(event.index()));
    }

    pub fn code_issued(&self, purpose: Purpose) {
        bump(self.cells.codes_issued.get(purpose_index(purpose)));
    }

    pub fn code_checked(&self, purpose: Purpose, outcome: &CheckOutcome) {
        bump(
            self.cells
                .code_checks
                .get(purpose_index(purpose))
                .and_then(|row| row.get(check_index(outcome))),
        );
    }

    pub fn quota_refused(&self, quota: QuotaRefusal) {
        bump(self.cells.quota_refusals.get(quota.index()));
    }

    /// Rows the purge actor deleted from `table` (one of `PURGED_TABLES`; any
    /// other name is ignored, so no label is made up at run time).
    pub fn purged(&self, table: &str, rows: u64) {
        if let Some(c) = PURGED_TABLES
            .iter()
            .position(|t| *t == table)
            .and_then(|i| self.cells.purged.get(i))
        {
            c.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Time a password hash or verify waited for a slot on the hashing pool.
    pub fn hash_waited(&self, waited: Duration) {
        self.cells.hash_wait.observe(waited);
    }

    /// A password hash not run, `reason` one of [`HASH_DROP_REASONS`].
    pub fn hash_dropped(&self, reason: &str) {
        bump(
            HASH_DROP_REASONS
                .iter()
                .position(|r| *r == reason)
                .and_then(|i| self.cells.hash_dropped.get(i)),
        );
    }

    /// The whole exposition: these counters plus the scrape-time figures, in
    /// OpenMetrics text, ending with `# EOF`.
    ///
    /// Writing into a `String` cannot fail, so neither can the encoder here;
    /// were it ever to, the body would lack `# EOF` and Prometheus would drop
    /// that scrape rather than store part of it.
    pub fn render(&self, live: &Live) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition {
            cells: Arc::clone(&self.cells),
            live: live.clone(),
        }));
        let mut out = String::with_capacity(32 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "metrics: encoding the exposition failed");
        }
        out
    }
}

/// One scrape: the atomics and the [`Live`] figures, written family by family
/// through the library's encoder.
struct Exposition {
    cells: Arc<Cells>,
    live: Live,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let (c, live) = (&*self.cells, &self.live);
        encode_http(&mut e, c)?;
        counter_family(
            &mut e,
            "authgate_login_flows",
            "2FA login flows started, completed (tokens issued), locked (too many wrong codes) and expired.",
            FlowEvent::ALL
                .iter()
                .map(|ev| ([("event", ev.label())], load(c.flows.get(ev.index())))),
        )?;
        gauge(
            &mut e,
            "authgate_login_flow_actors",
            "FlowActors alive in this process (pending 2FA logins with an actor here).",
            live.flow_actors,
        )?;
        counter_family(
            &mut e,
            "authgate_codes_issued",
            "One-time codes issued (stored and their SMS queued), by purpose.",
            Purpose::ALL.iter().map(|p| {
                (
                    [("purpose", p.as_str())],
                    load(c.codes_issued.get(purpose_index(*p))),
                )
            }),
        )?;
        counter_family(
            &mut e,
            "authgate_code_checks",
            "Codes checked, by purpose and result: accepted, rejected (wrong code), unusable (expired, used, exhausted or superseded), no_code, locked (too many wrong codes for the account).",
            Purpose::ALL.iter().flat_map(|p| {
                let row = c.code_checks.get(purpose_index(*p));
                CHECK_RESULTS.iter().enumerate().map(move |(i, result)| {
                    (
                        [("purpose", p.as_str()), ("result", *result)],
                        load(row.and_then(|r| r.get(i))),
                    )
                })
            }),
        )?;
        encode_sms(&mut e, live)?;
        counter_family(
            &mut e,
            "authgate_sms_quota_refusals",
            "Codes refused by a PostgreSQL send quota (nothing stored or sent), by quota.",
            QuotaRefusal::ALL.iter().map(|q| {
                (
                    [("quota", q.label())],
                    load(c.quota_refusals.get(q.index())),
                )
            }),
        )?;
        counter(
            &mut e,
            "authgate_sms_test_numbers",
            "SMS to test numbers (AUTHGATE_TEST_PHONES) in this process: kept from every provider (the outbox records them as sent, so authgate_sms_outcomes_total counts them too).",
            c.sms_test_numbers.load(Ordering::Relaxed),
        )?;
        {
            let mut m = e.encode_descriptor(
                "authgate_password_hash_queue_wait",
                "Time a password hash or verify waited for a slot on the bounded hashing pool.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            c.hash_wait.encode(&mut m)?;
        }
        counter_family(
            &mut e,
            "authgate_password_hash_dropped",
            "Password hashes not run: queue full (503 overloaded), waited past the queue timeout, or the caller gone.",
            HASH_DROP_REASONS
                .iter()
                .enumerate()
                .map(|(i, r)| ([("reason", *r)], load(c.hash_dropped.get(i)))),
        )?;
        gauge(
            &mut e,
            "authgate_db_pool_size",
            "PostgreSQL connections the pool holds open.",
            live.pool_size,
        )?;
        gauge(
            &mut e,
            "authgate_db_pool_available",
            "Open pool connections idle right now (size minus in use).",
            live.pool_available,
        )?;
        gauge(
            &mut e,
            "authgate_db_pool_max_size",
            "The pool's maximum size (AUTHGATE_DB_POOL_SIZE).",
            live.pool_max,
        )?;
        counter_family(
            &mut e,
            "authgate_purged_rows",
            "Rows deleted by the purge actor after their retention, by table.",
            PURGED_TABLES
                .iter()
                .enumerate()
                .map(|(i, t)| ([("table", *t)], load(c.purged.get(i)))),
        )?;
        counter_family(
            &mut e,
            "authgate_rate_limited",
            "Requests refused with 429 by the local per-IP rate limits, by route class.",
            live.rate_limited
                .iter()
                .map(|(class, n)| ([("class", class_label(*class))], *n)),
        )
    }
}

/// Requests and their latency, for the (route, status) cells that have seen a
/// request: a cell nobody hit writes nothing.
fn encode_http(e: &mut DescriptorEncoder, c: &Cells) -> std::fmt::Result {
    let per_route = STATUSES.len() + 1;
    let labels = |cell: usize| {
        let route = ROUTES
            .get(cell / per_route)
            .map_or(UNMATCHED_ROUTE, |(_, p)| p);
        let status = STATUSES
            .get(cell % per_route)
            .map_or(OTHER_STATUS, |(_, s)| s);
        [("route", route), ("status", status)]
    };
    counter_family(
        e,
        "authgate_http_requests",
        "HTTP requests answered, by matched route pattern and status.",
        c.http
            .iter()
            .enumerate()
            .map(|(cell, h)| (labels(cell), h.count()))
            .filter(|(_, n)| *n > 0),
    )?;
    let mut m = e.encode_descriptor(
        "authgate_http_request_duration",
        "Time from receiving a request to its response, by matched route pattern and status.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (cell, h) in c.http.iter().enumerate() {
        if h.count() > 0 {
            let labels = labels(cell);
            h.encode(&mut m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_sms(e: &mut DescriptorEncoder, live: &Live) -> std::fmt::Result {
    // A family with no sample: the depth is unknown, and saying 0 would lie.
    let mut m = e.encode_descriptor(
        "authgate_sms_outbox_depth",
        "SMS in the outbox not yet in a final state, across all processes (absent when the database did not answer within the scrape's timeout).",
        None,
        MetricType::Gauge,
    )?;
    if let Some(depth) = live.outbox_depth {
        m.encode_gauge(&depth)?;
    }
    gauge(
        e,
        "authgate_sms_outbox_depth_known",
        "1 when this scrape could read the outbox depth, 0 when the database did not answer in time.",
        u32::from(live.outbox_depth.is_some()),
    )?;
    let s = &live.sms;
    counter_family(
        e,
        "authgate_sms_outcomes",
        "SMS delivery outcomes in this process: sent (provider accepted), retried (transient failure, rescheduled), failed (gave up), expired (dropped unsent, code expired).",
        [
            ("sent", s.sent),
            ("retried", s.retried),
            ("failed", s.failed),
            ("expired", s.expired),
        ]
        .map(|(outcome, n)| ([("outcome", outcome)], n)),
    )?;
    counter_family(
        e,
        "authgate_sms_outbox_statements",
        "Statements this process's SMS actor ran on the outbox: claim (each claims a batch) and record (each records many outcomes). Against outcomes, how well the work is batched.",
        [("claim", s.claim_statements), ("record", s.record_statements)]
            .map(|(kind, n)| ([("kind", kind)], n)),
    )
}

/// A counter family with one series per label set. `name` is without
/// `_total`: the OpenMetrics encoder appends it to each sample.
fn counter_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in series {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
    }
    Ok(())
}

/// A counter without labels (`name` without `_total`, as above).
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&n, None)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeGaugeValue,
) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn raw_paths_map_to_patterns_or_one_unmatched_label() {
        assert_eq!(
            ROUTES[route_index("/api/v1/account/login")].1,
            "/api/v1/account/login"
        );
        assert_eq!(route_index("/api/v1/users/123"), ROUTES.len());
        let one = route_index("/api/v1/account/sessions/0b5a3c4e-6f1d-4e21-9d7a-2f0c8a1b3d5e");
        assert_eq!(ROUTES[one].1, "/api/v1/account/sessions/{id}");
        assert_eq!(route_index("/api/v1/account/sessions/"), ROUTES.len());
        assert_eq!(route_index("/api/v1/account/sessions/a/b"), ROUTES.len());
        assert_eq!(route_index("/api/v1/account/login?x=1"), ROUTES.len());
        let m = Metrics::new();
        for i in 0..100 {
            m.observe_request(&format!("/nope/{i}"), 404, Duration::from_millis(1));
        }
        let text = m.render(&Live::default());
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("authgate_http_requests_total"))
            .collect();
        assert_eq!(
            lines,
            ["authgate_http_requests_total{route=\"unmatched\",status=\"404\"} 100"]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_inf() {
        let m = Metrics::new();
        m.observe_request("/healthz", 200, Duration::from_micros(500));
        m.observe_request("/healthz", 200, Duration::from_millis(30));
        m.observe_request("/healthz", 200, Duration::from_secs(20));
        m.observe_request("/healthz", 299, Duration::from_millis(1));
        let text = m.render(&Live::default());
        let l = "route=\"/healthz\",status=\"200\"";
        let bucket = "authgate_http_request_duration_seconds_bucket";
        for want in [
            format!("{bucket}{{le=\"0.001\",{l}}} 1"),
            format!("{bucket}{{le=\"0.025\",{l}}} 1"),
            format!("{bucket}{{le=\"0.05\",{l}}} 2"),
            format!("{bucket}{{le=\"10.0\",{l}}} 2"),
            format!("{bucket}{{le=\"+Inf\",{l}}} 3"),
            format!("authgate_http_request_duration_seconds_count{{{l}}} 3"),
            format!("authgate_http_requests_total{{{l}}} 3"),
            "authgate_http_requests_total{route=\"/healthz\",status=\"other\"} 1".to_owned(),
        ] {
            assert!(
                text.lines().any(|line| line == want),
                "missing {want}\n{text}"
            );
        }
        let sum_line = text
            .lines()
            .find(|x| {
                x.starts_with(&format!(
                    "authgate_http_request_duration_seconds_sum{{{l}}}"
                ))
            })
            .unwrap();
        let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 20.0305).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn every_family_has_help_and_type_once_and_the_exposition_ends_with_eof() {
        let text = Metrics::new().render(&Live {
            outbox_depth: Some(3),
            rate_limited: RouteClass::ALL.iter().map(|c| (*c, 0)).collect(),
            ..Live::default()
        });
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut names: Vec<_> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate families");
        // Counter families are declared without `_total`; their samples have it.
        assert!(types.contains(&"# TYPE authgate_code_checks counter"));
        assert!(types.contains(&"# TYPE authgate_http_request_duration_seconds histogram"));
        assert!(text.contains("# UNIT authgate_password_hash_queue_wait_seconds seconds\n"));
        assert!(text.contains("authgate_sms_outbox_depth 3\n"));
        assert!(text.contains("authgate_rate_limited_total{class=\"code_send\"} 0\n"));
        assert!(text.contains("authgate_sms_test_numbers_total 0\n"));
        assert!(text.contains("authgate_password_hash_queue_wait_seconds_count 0\n"));
    }

    #[test]
    fn an_unknown_outbox_depth_writes_no_sample() {
        let text = Metrics::new().render(&Live::default());
        assert!(text.contains("# TYPE authgate_sms_outbox_depth gauge\n"));
        assert!(!text.contains("\nauthgate_sms_outbox_depth "), "{text}");
        assert!(text.contains("\nauthgate_sms_outbox_depth_known 0\n"));
    }
}
