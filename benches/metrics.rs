//! Criterion benchmarks of `src/metrics.rs`: the cost a request pays to be
//! counted (route+status counter and latency histogram, from the raw path), and
//! one full `/metrics` render with every route having answered.
//! Run: `CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo bench --profile dev --bench metrics`
//! (dependencies are at opt-level 2 in dev already, so only authgate rebuilds).
// A benchmark that cannot set itself up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use authgate::metrics::{Live, Metrics, ROUTES};
use authgate::routes::limits::RouteClass;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// Every route answered 200 and 401 at a spread of latencies, plus unmatched
/// 404s: a busy process's exposition, not an empty one.
fn populated() -> Metrics {
    let m = Metrics::new();
    for (i, (_, pattern)) in ROUTES.iter().enumerate() {
        for status in [200, 401] {
            for ms in [0, 3, 40, 700] {
                m.observe_request(pattern, status, Duration::from_millis(ms + i as u64));
            }
        }
    }
    m.observe_request("/nope", 404, Duration::from_micros(300));
    m
}

fn live() -> Live {
    Live {
        flow_actors: 12,
        outbox_depth: Some(3),
        pool_size: 8,
        pool_available: 5,
        pool_max: 16,
        rate_limited: RouteClass::ALL.iter().map(|c| (*c, 7)).collect(),
        ..Live::default()
    }
}

fn metrics(c: &mut Criterion) {
    let m = Metrics::new();
    c.bench_function("metrics: record one request", |b| {
        b.iter(|| {
            m.observe_request(
                black_box("/api/v1/account/login/verify"),
                black_box(401),
                black_box(Duration::from_micros(2300)),
            )
        })
    });
    let m = populated();
    let live = live();
    c.bench_function("metrics: render one scrape", |b| {
        b.iter(|| m.render(black_box(&live)))
    });
}

criterion_group!(benches, metrics);
criterion_main!(benches);
