//! The request path's promise in `src/metrics.rs`: counting a request (and the
//! other per-event counters) allocates nothing. A counting global allocator
//! measures it, so this is its own test binary, without libtest's harness:
//! nothing else runs (or allocates) on another thread while it measures.
//! A `Family::get_or_create` with owned labels, a `format!` of a label, or a
//! map insert on that path would make it fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::time::Duration;

use authgate::domain::otp::Purpose;
use authgate::metrics::{FlowEvent, Live, Metrics, QuotaRefusal, HASH_DROP_REASONS, ROUTES};
use authgate::store::otp::CheckOutcome;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROUNDS: u64 = 20_000;

fn main() {
    let metrics = Metrics::new();
    // Raw paths as requests bring them: every route (a parameter filled in),
    // and paths that match none. Built before measuring.
    let mut paths: Vec<String> = ROUTES
        .iter()
        .map(|(_, p)| p.replace("{id}", "0b5a3c4e-6f1d-4e21-9d7a-2f0c8a1b3d5e"))
        .collect();
    paths.push("/nope".to_owned());
    paths.push("/api/v1/users/123".to_owned());
    let statuses = [200, 201, 401, 404, 429, 503, 299];

    let region = Region::new(GLOBAL);
    for i in 0..ROUNDS {
        let path = &paths[i as usize % paths.len()];
        let status = statuses[i as usize % statuses.len()];
        metrics.observe_request(path, status, Duration::from_micros(i * 37));
        metrics.flow(FlowEvent::Started);
        metrics.code_issued(Purpose::Login2fa);
        metrics.code_checked(Purpose::Login2fa, &CheckOutcome::Accepted);
        metrics.quota_refused(QuotaRefusal::Cooldown);
        metrics.hash_waited(Duration::from_micros(i));
        metrics.hash_dropped(HASH_DROP_REASONS[i as usize % HASH_DROP_REASONS.len()]);
        metrics.purged("audit_events", 1);
        metrics.sms_to_test_number();
    }
    let counting = region.change();
    assert_eq!(
        (
            counting.allocations,
            counting.reallocations,
            counting.bytes_allocated
        ),
        (0, 0, 0),
        "counting {ROUNDS} requests allocated: {counting:?}"
    );

    // The allocator does count (a render allocates), and every request above
    // was counted, so the zero above is not a zero from doing nothing.
    let region = Region::new(GLOBAL);
    let text = metrics.render(&Live::default());
    assert!(
        region.change().allocations > 0,
        "the allocator counts nothing"
    );
    let requests: u64 = text
        .lines()
        .filter(|l| l.starts_with("authgate_http_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, ROUNDS, "{text}");
    assert!(text.contains(&format!(
        "authgate_login_flows_total{{event=\"started\"}} {ROUNDS}\n"
    )));
    println!("metrics_alloc: 1 passed, 0 failed");
}
