//! Prometheus metrics: the counters and histograms the request path bumps, and
//! their rendering in the Prometheus text exposition format 0.0.4 for
//! `GET /metrics` (served by `routes::metrics`).
//!
//! What it owns: every number authgate counts itself (requests by route and
//! status, login flow events, codes, SMS quota refusals, password-hash queue
//! wait, rows purged per table). Figures another part already keeps (live flow actors, SMS outcomes,
//! outbox depth, pool usage, rate-limit refusals) are read at scrape time and
//! passed in as a [`Live`] snapshot, so nothing is counted twice.
//!
//! What it must not do: slow the request path. Every series has a fixed slot in
//! arrays allocated once at start-up, updated with relaxed atomics: no lock, no
//! map lookup, no allocation per request. Labels come only from closed sets
//! (route patterns from [`ROUTES`], known status codes, purposes, classes), so a
//! client cannot create series by sending odd paths.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::otp::Purpose;
use crate::routes::limits::RouteClass;
use crate::sms::SmsMetricsSnapshot;
use crate::store::otp::CheckOutcome;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route table the `route` label comes from: `routes::ROUTES` (the same
/// list the OpenAPI document is built from). No route has a path parameter, so a
/// route's pattern is its path.
pub use crate::routes::ROUTES;

/// The `route` label of every path that matches no route (404s of any path).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Status codes authgate answers; any other lands in one `other` series.
const STATUSES: [u16; 18] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 410, 411, 413, 415, 422, 429, 500, 503,
];

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
        .position(|s| *s == status)
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

    /// Writes `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",` pairs
    /// (each followed by a comma) or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let labels = labels.trim_end_matches(',');
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {cumulative}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
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

/// Everything authgate counts itself, since start. One per process, in `AppState`.
pub struct Metrics {
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
            http: (0..cells).map(|_| Histogram::new(REQUEST_BOUNDS)).collect(),
            flows: counters(),
            codes_issued: counters(),
            code_checks: std::array::from_fn(|_| counters()),
            quota_refusals: counters(),
            hash_wait: Histogram::new(HASH_WAIT_BOUNDS),
            hash_dropped: counters(),
            purged: counters(),
            sms_test_numbers: AtomicU64::new(0),
        }
    }

    /// An SMS to a test number that no provider saw.
    pub fn sms_to_test_number(&self) {
        bump(Some(&self.sms_test_numbers));
    }

    /// One answered request. `path` is the raw request path; it is mapped to its
    /// route pattern (or `unmatched`) here, so no path ever becomes a label.
    pub fn observe_request(&self, path: &str, status: u16, latency: Duration) {
        let cell = route_index(path) * (STATUSES.len() + 1) + status_index(status);
        if let Some(h) = self.http.get(cell) {
            h.observe(latency);
        }
    }

    pub fn flow(&self, event: FlowEvent) {
        bump(self.flows.get(event.index()));
    }

    pub fn code_issued(&self, purpose: Purpose) {
        bump(self.codes_issued.get(purpose_index(purpose)));
    }

    pub fn code_checked(&self, purpose: Purpose, outcome: &CheckOutcome) {
        bump(
            self.code_checks
                .get(purpose_index(purpose))
                .and_then(|row| row.get(check_index(outcome))),
        );
    }

    pub fn quota_refused(&self, quota: QuotaRefusal) {
        bump(self.quota_refusals.get(quota.index()));
    }

    /// Rows the purge actor deleted from `table` (one of `PURGED_TABLES`; any
    /// other name is ignored, so no label is made up at run time).
    pub fn purged(&self, table: &str, rows: u64) {
        if let Some(c) = PURGED_TABLES
            .iter()
            .position(|t| *t == table)
            .and_then(|i| self.purged.get(i))
        {
            c.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Time a password hash or verify waited for a slot on the hashing pool.
    pub fn hash_waited(&self, waited: Duration) {
        self.hash_wait.observe(waited);
    }

    /// A password hash not run, `reason` one of [`HASH_DROP_REASONS`].
    pub fn hash_dropped(&self, reason: &str) {
        bump(
            HASH_DROP_REASONS
                .iter()
                .position(|r| *r == reason)
                .and_then(|i| self.hash_dropped.get(i)),
        );
    }

    /// The whole exposition: these counters plus the scrape-time figures.
    pub fn render(&self, live: &Live) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_http(&mut out);
        self.render_flows(&mut out, live);
        self.render_codes(&mut out);
        render_sms(&mut out, live);
        header(
            &mut out,
            "authgate_sms_quota_refusals_total",
            "counter",
            "Codes refused by a PostgreSQL send quota (nothing stored or sent), by quota.",
        );
        for q in QuotaRefusal::ALL {
            let n = load(self.quota_refusals.get(q.index()));
            let _ = writeln!(
                out,
                "authgate_sms_quota_refusals_total{{quota=\"{}\"}} {n}",
                q.label()
            );
        }
        header(
            &mut out,
            "authgate_sms_test_numbers_total",
            "counter",
            "SMS to test numbers (AUTHGATE_TEST_PHONES) in this process: kept from every provider (the outbox records them as sent, so authgate_sms_outcomes_total counts them too).",
        );
        let _ = writeln!(
            out,
            "authgate_sms_test_numbers_total {}",
            self.sms_test_numbers.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "authgate_password_hash_queue_wait_seconds",
            "histogram",
            "Time a password hash or verify waited for a slot on the bounded hashing pool.",
        );
        self.hash_wait
            .render(&mut out, "authgate_password_hash_queue_wait_seconds", "");
        header(
            &mut out,
            "authgate_password_hash_dropped_total",
            "counter",
            "Password hashes not run: queue full (503 overloaded), waited past the queue timeout, or the caller gone.",
        );
        for (i, reason) in HASH_DROP_REASONS.iter().enumerate() {
            let n = load(self.hash_dropped.get(i));
            let _ = writeln!(
                out,
                "authgate_password_hash_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        render_pool(&mut out, live);
        header(
            &mut out,
            "authgate_purged_rows_total",
            "counter",
            "Rows deleted by the purge actor after their retention, by table.",
        );
        for (i, table) in PURGED_TABLES.iter().enumerate() {
            let n = load(self.purged.get(i));
            let _ = writeln!(out, "authgate_purged_rows_total{{table=\"{table}\"}} {n}");
        }
        header(
            &mut out,
            "authgate_rate_limited_total",
            "counter",
            "Requests refused with 429 by the local per-IP rate limits, by route class.",
        );
        for (class, n) in &live.rate_limited {
            let _ = writeln!(
                out,
                "authgate_rate_limited_total{{class=\"{}\"}} {n}",
                class_label(*class)
            );
        }
        out
    }

    fn render_http(&self, out: &mut String) {
        let per_route = STATUSES.len() + 1;
        let label = |cell: usize| {
            let route = ROUTES
                .get(cell / per_route)
                .map_or(UNMATCHED_ROUTE, |(_, p)| p);
            let status = STATUSES
                .get(cell % per_route)
                .map_or_else(|| "other".to_owned(), u16::to_string);
            format!("route=\"{}\",status=\"{status}\",", escape(route))
        };
        header(
            out,
            "authgate_http_requests_total",
            "counter",
            "HTTP requests answered, by matched route pattern and status.",
        );
        for (cell, h) in self.http.iter().enumerate() {
            let n = h.count();
            if n > 0 {
                let labels = label(cell);
                let _ = writeln!(
                    out,
                    "authgate_http_requests_total{{{}}} {n}",
                    labels.trim_end_matches(',')
                );
            }
        }
        header(
            out,
            "authgate_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to its response, by matched route pattern and status.",
        );
        for (cell, h) in self.http.iter().enumerate() {
            if h.count() > 0 {
                h.render(out, "authgate_http_request_duration_seconds", &label(cell));
            }
        }
    }

    fn render_flows(&self, out: &mut String, live: &Live) {
        header(
            out,
            "authgate_login_flows_total",
            "counter",
            "2FA login flows started, completed (tokens issued), locked (too many wrong codes) and expired.",
        );
        for e in FlowEvent::ALL {
            let n = load(self.flows.get(e.index()));
            let _ = writeln!(
                out,
                "authgate_login_flows_total{{event=\"{}\"}} {n}",
                e.label()
            );
        }
        header(
            out,
            "authgate_login_flow_actors",
            "gauge",
            "FlowActors alive in this process (pending 2FA logins with an actor here).",
        );
        let _ = writeln!(out, "authgate_login_flow_actors {}", live.flow_actors);
    }

    fn render_codes(&self, out: &mut String) {
        header(
            out,
            "authgate_codes_issued_total",
            "counter",
            "One-time codes issued (stored and their SMS queued), by purpose.",
        );
        for p in Purpose::ALL {
            let n = load(self.codes_issued.get(purpose_index(p)));
            let _ = writeln!(
                out,
                "authgate_codes_issued_total{{purpose=\"{}\"}} {n}",
                p.as_str()
            );
        }
        header(
            out,
            "authgate_code_checks_total",
            "counter",
            "Codes checked, by purpose and result: accepted, rejected (wrong code), unusable (expired, used, exhausted or superseded), no_code, locked (too many wrong codes for the account).",
        );
        for p in Purpose::ALL {
            for (i, result) in CHECK_RESULTS.iter().enumerate() {
                let n = load(
                    self.code_checks
                        .get(purpose_index(p))
                        .and_then(|row| row.get(i)),
                );
                let _ = writeln!(
                    out,
                    "authgate_code_checks_total{{purpose=\"{}\",result=\"{result}\"}} {n}",
                    p.as_str()
                );
            }
        }
    }
}

fn render_sms(out: &mut String, live: &Live) {
    header(
        out,
        "authgate_sms_outbox_depth",
        "gauge",
        "SMS in the outbox not yet in a final state, across all processes (absent when the database did not answer within the scrape's timeout).",
    );
    if let Some(depth) = live.outbox_depth {
        let _ = writeln!(out, "authgate_sms_outbox_depth {depth}");
    }
    header(
        out,
        "authgate_sms_outbox_depth_known",
        "gauge",
        "1 when this scrape could read the outbox depth, 0 when the database did not answer in time.",
    );
    let _ = writeln!(
        out,
        "authgate_sms_outbox_depth_known {}",
        u8::from(live.outbox_depth.is_some())
    );
    header(
        out,
        "authgate_sms_outcomes_total",
        "counter",
        "SMS delivery outcomes in this process: sent (provider accepted), retried (transient failure, rescheduled), failed (gave up), expired (dropped unsent, code expired).",
    );
    let s = &live.sms;
    for (outcome, n) in [
        ("sent", s.sent),
        ("retried", s.retried),
        ("failed", s.failed),
        ("expired", s.expired),
    ] {
        let _ = writeln!(
            out,
            "authgate_sms_outcomes_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        out,
        "authgate_sms_outbox_statements_total",
        "counter",
        "Statements this process's SMS actor ran on the outbox: claim (each claims a batch) and record (each records many outcomes). Against outcomes, how well the work is batched.",
    );
    for (kind, n) in [
        ("claim", s.claim_statements),
        ("record", s.record_statements),
    ] {
        let _ = writeln!(
            out,
            "authgate_sms_outbox_statements_total{{kind=\"{kind}\"}} {n}"
        );
    }
}

fn render_pool(out: &mut String, live: &Live) {
    for (name, help, value) in [
        (
            "authgate_db_pool_size",
            "PostgreSQL connections the pool holds open.",
            live.pool_size,
        ),
        (
            "authgate_db_pool_available",
            "Open pool connections idle right now (size minus in use).",
            live.pool_available,
        ),
        (
            "authgate_db_pool_max_size",
            "The pool's maximum size (AUTHGATE_DB_POOL_SIZE).",
            live.pool_max,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn load(c: Option<&AtomicU64>) -> u64 {
    c.map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Label value escaping of the text format (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        for want in [
            format!("authgate_http_request_duration_seconds_bucket{{{l},le=\"0.001\"}} 1"),
            format!("authgate_http_request_duration_seconds_bucket{{{l},le=\"0.025\"}} 1"),
            format!("authgate_http_request_duration_seconds_bucket{{{l},le=\"0.05\"}} 2"),
            format!("authgate_http_request_duration_seconds_bucket{{{l},le=\"10\"}} 2"),
            format!("authgate_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
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
    fn every_family_has_help_and_type_once() {
        let text = Metrics::new().render(&Live {
            outbox_depth: Some(3),
            rate_limited: RouteClass::ALL.iter().map(|c| (*c, 0)).collect(),
            ..Live::default()
        });
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut names: Vec<_> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate families");
        assert!(text.contains("authgate_sms_outbox_depth 3\n"));
        assert!(text.contains("authgate_rate_limited_total{class=\"code_send\"} 0\n"));
    }
}
