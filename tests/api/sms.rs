//! SMS delivery end to end: messages written to the outbox reach a fake Twilio on
//! loopback through the SMS actor, through rate limits, errors, a killed actor
//! and a second process, exactly once in the normal case and never lost.
//!
//! Assertions are on counts, order and recorded state; waits are generous. The
//! few timing checks are lower bounds authgate itself enforces (Retry-After,
//! the outbound rate), with slack.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authgate::domain::phone::PhoneE164;
use authgate::store::outbox::NewSms;
use chrono::{DateTime, Utc};

use crate::fake_twilio::{FakeTwilio, Fault};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

/// Queues a message the way the OTP code does (outside a transaction here),
/// then wakes the app's SMS actor as the OTP code does after its commit.
async fn enqueue(app: &TestApp, to: &str, body: &str, expires_at: Option<DateTime<Utc>>) -> i64 {
    let phone = PhoneE164::parse(to).unwrap();
    let id = app
        .state
        .store()
        .enqueue_sms(
            app.state.keys(),
            app.clock.now(),
            NewSms {
                to: &phone,
                body,
                purpose: "test",
                expires_at,
            },
        )
        .await
        .unwrap();
    app.state.sms().nudge();
    id
}

fn in_minutes(app: &TestApp, m: i64) -> Option<DateTime<Utc>> {
    Some(app.clock.now() + chrono::Duration::minutes(m))
}

#[derive(Debug)]
struct OutboxRow {
    state: String,
    attempts: i32,
    provider_sid: Option<String>,
    delivery_status: Option<String>,
    error_code: Option<i32>,
    last_error: Option<String>,
    has_body: bool,
    claimed_by: Option<String>,
    next_attempt_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

async fn outbox_row(app: &TestApp, id: i64) -> OutboxRow {
    let db = app.db_client().await;
    let r = db
        .query_one(
            "SELECT state, attempts, provider_sid, delivery_status, error_code, last_error,
                    body_sealed IS NOT NULL, claimed_by, next_attempt_at, updated_at
             FROM sms_outbox WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    OutboxRow {
        state: r.get(0),
        attempts: r.get(1),
        provider_sid: r.get(2),
        delivery_status: r.get(3),
        error_code: r.get(4),
        last_error: r.get(5),
        has_body: r.get(6),
        claimed_by: r.get(7),
        next_attempt_at: r.get(8),
        updated_at: r.get(9),
    }
}

/// Polls the row until `check` holds; panics with the last row after `timeout`.
async fn wait_for_row(
    app: &TestApp,
    id: i64,
    timeout: Duration,
    check: impl Fn(&OutboxRow) -> bool,
) -> OutboxRow {
    let deadline = Instant::now() + timeout;
    loop {
        let row = outbox_row(app, id).await;
        if check(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "timed out; last row: {row:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn count_states(app: &TestApp) -> HashMap<String, i64> {
    let db = app.db_client().await;
    db.query("SELECT state, count(*) FROM sms_outbox GROUP BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Lets the actor run a few more sweeps, so a duplicate or a retry that should
/// not happen would have had its chance.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

fn per_body(fake: &FakeTwilio) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in fake.messages() {
        *seen.entry(m.body).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_message_is_delivered_once_with_the_contract_fields() {
    let (app, fake) = spawn_app_with_twilio().await;
    let to = unique_phone();
    let id = enqueue(
        &app,
        &to,
        "Your authgate code is 123456",
        in_minutes(&app, 10),
    )
    .await;

    let got = fake.wait_for_message_to(&to, 0, WAIT).await;
    assert_eq!(got.body, "Your authgate code is 123456");
    let row = wait_for_row(&app, id, WAIT, |r| r.state == "sent").await;
    assert_eq!(row.provider_sid.as_deref(), Some(got.sid.as_str()));
    assert_eq!(row.delivery_status.as_deref(), Some("queued"));
    assert_eq!(row.attempts, 1);
    assert!(!row.has_body, "the sealed body is erased once sent");
    assert_eq!(row.claimed_by, None);

    settle().await;
    let attempts = fake.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let a = &attempts[0];
    assert_eq!(a.field("From"), Some(crate::fake_twilio::FROM_NUMBER));
    assert_eq!(a.field("StatusCallback"), Some(STATUS_CALLBACK_URL));
    let validity: u32 = a.field("ValidityPeriod").unwrap().parse().unwrap();
    assert!((590..=600).contains(&validity), "{validity}");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert_eq!(app.state.sms().metrics().snapshot().sent, 1);
    assert_eq!(app.state.sms().outbox_depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_arrives_within_the_concurrency_and_rate_limits() {
    const N: usize = 500;
    const RATE: u32 = 100;
    const CONCURRENCY: usize = 4;
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.rate_per_sec = RATE;
        c.sms.concurrency = CONCURRENCY;
    })
    .await;
    // Each answer takes a while, so several requests overlap.
    fake.set_latency(Duration::from_millis(30));
    for i in 0..N {
        enqueue(
            &app,
            &unique_phone(),
            &format!("burst {i}"),
            in_minutes(&app, 10),
        )
        .await;
    }

    fake.wait_for_messages(N, Duration::from_secs(120)).await;
    settle().await;

    let seen = per_body(&fake);
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1), "a message arrived twice");
    assert_eq!(fake.attempts().len(), N);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert_eq!(count_states(&app).await.get("sent"), Some(&(N as i64)));

    let max = fake.max_in_flight();
    assert!(max <= CONCURRENCY, "{max} requests in flight at once");
    assert!(max >= 2, "sends never overlapped");

    // The outbound rate: no one-second window holds more than the rate allows
    // (20% slack for scheduling noise), and the whole burst took as long as
    // the rate implies.
    let times: Vec<Instant> = fake.attempts().iter().map(|a| a.at).collect();
    let mut start = 0;
    let mut busiest = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    assert!(
        busiest as f64 <= f64::from(RATE) * 1.2 + 1.0,
        "{busiest} requests within one second"
    );
    let span = times[N - 1].duration_since(times[0]);
    let floor = Duration::from_secs_f64((N - 1) as f64 / f64::from(RATE) * 0.8);
    assert!(span >= floor, "500 messages in {span:?}");
}

#[tokio::test]
async fn a_429_burst_is_retried_after_retry_after_and_delivered_once() {
    let (app, fake) = spawn_app_with_twilio().await;
    const N: usize = 10;
    fake.script((0..N).map(|_| Fault::TooMany {
        retry_after: Some(1),
    }));
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(
            enqueue(
                &app,
                &unique_phone(),
                &format!("429 {i}"),
                in_minutes(&app, 10),
            )
            .await,
        );
    }

    fake.wait_for_messages(N, WAIT).await;
    settle().await;

    let seen = per_body(&fake);
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1));
    let attempts = fake.attempts();
    assert_eq!(attempts.len(), 2 * N, "one 429 and one success each");
    for i in 0..N {
        let body = format!("429 {i}");
        let mine: Vec<_> = attempts.iter().filter(|a| a.body == body).collect();
        assert_eq!(mine.len(), 2);
        assert!(matches!(mine[0].answer, Fault::TooMany { .. }));
        assert_eq!(mine[1].answer, Fault::Accept);
        let gap = mine[1].at.duration_since(mine[0].at);
        assert!(
            gap >= Duration::from_millis(950),
            "Retry-After ignored: {gap:?}"
        );
    }
    for id in ids {
        let row = wait_for_row(&app, id, WAIT, |r| r.state == "sent").await;
        assert_eq!(row.attempts, 2);
        assert_eq!(row.last_error, None);
    }
    let m = app.state.sms().metrics().snapshot();
    assert_eq!((m.sent, m.retried, m.failed), (N as u64, N as u64, 0));
}

#[tokio::test]
async fn a_500_burst_is_retried_with_backoff_and_delivered_once() {
    let (app, fake) = spawn_app_with_twilio().await;
    const N: usize = 10;
    // Two server errors per message, on average.
    fake.script((0..2 * N).map(|_| Fault::ServerError));
    for i in 0..N {
        enqueue(
            &app,
            &unique_phone(),
            &format!("500 {i}"),
            in_minutes(&app, 10),
        )
        .await;
    }

    fake.wait_for_messages(N, WAIT).await;
    settle().await;

    let seen = per_body(&fake);
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(fake.attempts().len(), 3 * N);
    assert_eq!(count_states(&app).await.get("sent"), Some(&(N as i64)));
    let m = app.state.sms().metrics().snapshot();
    assert_eq!((m.sent, m.retried), (N as u64, 2 * N as u64));
}

#[tokio::test]
async fn a_server_error_waits_for_its_backoff_before_the_retry() {
    // Backoff long enough that only moving the clock lets the retry happen.
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.backoff_base = Duration::from_secs(600);
        c.sms.backoff_max = Duration::from_secs(3600);
    })
    .await;
    fake.script([Fault::ServerError, Fault::ServerError]);
    let to = unique_phone();
    let id = enqueue(&app, &to, "backoff", None).await;

    for failures in 1..=2 {
        let row = wait_for_row(&app, id, WAIT, |r| {
            r.state == "pending" && r.attempts == failures
        })
        .await;
        assert!(
            row.next_attempt_at > row.updated_at,
            "the retry is scheduled later: {row:?}"
        );
        assert!(row.last_error.as_deref().unwrap().contains("500"));
        settle().await;
        assert_eq!(fake.attempts().len(), failures as usize, "retried too soon");
        // The second backoff's ceiling is twice the first, so an hour covers both.
        app.clock.advance(Duration::from_secs(3600));
        app.state.sms().nudge();
    }
    fake.wait_for_message_to(&to, 0, WAIT).await;
    let row = wait_for_row(&app, id, WAIT, |r| r.state == "sent").await;
    assert_eq!(row.attempts, 3);
    assert_eq!(fake.attempts().len(), 3);
}

#[tokio::test]
async fn a_permanent_error_fails_the_message_without_retrying() {
    let (app, fake) = spawn_app_with_twilio().await;
    let bad = unique_phone();
    fake.fail_to(
        &bad,
        Fault::Error {
            status: 400,
            code: 21211,
        },
    );
    let id = enqueue(&app, &bad, "never", in_minutes(&app, 10)).await;
    let good = unique_phone();
    enqueue(&app, &good, "fine", in_minutes(&app, 10)).await;

    let row = wait_for_row(&app, id, WAIT, |r| r.state == "failed").await;
    assert_eq!(row.error_code, Some(21211));
    assert!(!row.has_body);
    assert!(row.last_error.as_deref().unwrap().contains("21211"));
    fake.wait_for_message_to(&good, 0, WAIT).await;
    settle().await;
    assert_eq!(fake.attempts().iter().filter(|a| a.to == bad).count(), 1);
    let m = app.state.sms().metrics().snapshot();
    assert_eq!((m.failed, m.retried, m.sent), (1, 0, 1));
}

#[tokio::test]
async fn an_expired_message_is_never_sent() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.backoff_base = Duration::from_secs(600);
        c.sms.backoff_max = Duration::from_secs(600);
    })
    .await;
    // Already expired when the actor sees it.
    let stale = unique_phone();
    let past = Some(app.clock.now() - chrono::Duration::seconds(1));
    let stale_id = enqueue(&app, &stale, "too late", past).await;
    let row = wait_for_row(&app, stale_id, WAIT, |r| r.state == "expired").await;
    assert!(!row.has_body);

    // Expires while waiting for a retry: dropped, not sent late.
    fake.script([Fault::ServerError]);
    let late = unique_phone();
    let late_id = enqueue(&app, &late, "retry too late", in_minutes(&app, 30)).await;
    wait_for_row(&app, late_id, WAIT, |r| {
        r.state == "pending" && r.attempts == 1
    })
    .await;
    app.clock.advance(Duration::from_secs(3600));
    app.state.sms().nudge();
    let row = wait_for_row(&app, late_id, WAIT, |r| r.state == "expired").await;
    assert!(!row.has_body);

    settle().await;
    assert!(fake.attempts().iter().all(|a| a.to != stale));
    assert_eq!(fake.attempts().iter().filter(|a| a.to == late).count(), 1);
    assert!(fake.messages().is_empty());
    assert_eq!(app.state.sms().metrics().snapshot().expired, 2);
}

#[tokio::test]
async fn killing_the_actor_mid_batch_loses_nothing() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.request_timeout = Duration::from_secs(2);
        c.sms.lease = Duration::from_secs(4);
        c.sms.concurrency = 4;
    })
    .await;
    fake.set_default(Fault::Hang);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            enqueue(
                &app,
                &unique_phone(),
                &format!("kill {i}"),
                in_minutes(&app, 10),
            )
            .await,
        );
    }
    // All three requests are hanging inside the actor's batch.
    fake.wait_for_attempts(3, WAIT).await;
    let before = app.state.sms().actor().unwrap();
    fake.set_default(Fault::Accept);
    before.kill();

    // The supervisor restarts the actor; once the lease lapses it reclaims the batch.
    let got = fake.wait_for_messages(3, WAIT).await;
    settle().await;
    let after = app.state.sms().actor().unwrap();
    assert_ne!(before.get_id(), after.get_id(), "the actor was restarted");
    assert_eq!(got.len(), 3);
    let seen = per_body(&fake);
    assert!(
        (0..3).all(|i| seen.get(&format!("kill {i}")) == Some(&1)),
        "{seen:?}"
    );
    for id in ids {
        let row = wait_for_row(&app, id, WAIT, |r| r.state == "sent").await;
        // The killed claim counts as an attempt. The killed batch's own request
        // may also time out and record a retry before the lease lapses, which
        // adds one claim; either way the message went out exactly once (above).
        assert!(
            (2..=3).contains(&row.attempts),
            "attempts {}: the killed claim must count",
            row.attempts
        );
    }
}

#[tokio::test]
async fn stopping_the_app_returns_claimed_messages_to_the_outbox() {
    let (mut app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.request_timeout = Duration::from_secs(3);
        c.sms.lease = Duration::from_secs(60);
        c.sms.concurrency = 1;
        c.sms.rate_per_sec = 1;
    })
    .await;
    // One message hangs in flight; the rest wait for the rate limiter.
    fake.set_default(Fault::Hang);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            enqueue(
                &app,
                &unique_phone(),
                &format!("stop {i}"),
                in_minutes(&app, 10),
            )
            .await,
        );
    }
    fake.wait_for_attempts(1, WAIT).await;
    app.stop().await;

    // Nothing stays claimed by the stopped process: the hung one was recorded
    // as a retry after its timeout, the others released unsent.
    for id in ids {
        let row = outbox_row(&app, id).await;
        assert_eq!(row.state, "pending", "{row:?}");
        assert_eq!(row.claimed_by, None);
        assert!(row.has_body);
    }
    assert_eq!(fake.attempts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_never_send_a_message_twice() {
    const N: usize = 200;
    let (app, fake) = spawn_app_with_twilio().await;
    let base = fake.base_url();
    let other = spawn_on(app.db.clone(), move |c| {
        c.sms.twilio = Some(twilio_config(&base));
    })
    .await;
    fake.set_latency(Duration::from_millis(5));
    for i in 0..N {
        // Alternate which process writes, as behind a load balancer.
        let writer = if i % 2 == 0 { &app } else { &other };
        enqueue(
            writer,
            &unique_phone(),
            &format!("pair {i}"),
            in_minutes(&app, 10),
        )
        .await;
    }

    fake.wait_for_messages(N, Duration::from_secs(90)).await;
    settle().await;

    let seen = per_body(&fake);
    assert_eq!(seen.len(), N);
    let dupes: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dupes.is_empty(), "sent twice: {dupes:?}");
    assert_eq!(fake.attempts().len(), N);
    let a = app.state.sms().metrics().snapshot().sent;
    let b = other.state.sms().metrics().snapshot().sent;
    assert_eq!(a + b, N as u64, "each message sent by exactly one process");
    assert_eq!(count_states(&app).await.get("sent"), Some(&(N as i64)));
}

#[tokio::test]
async fn without_twilio_messages_go_to_the_console_and_count_as_sent() {
    let app = spawn_app().await;
    let id = enqueue(
        &app,
        &unique_phone(),
        "console code 000000",
        in_minutes(&app, 10),
    )
    .await;
    let row = wait_for_row(&app, id, WAIT, |r| r.state == "sent").await;
    assert_eq!(row.provider_sid, None);
    assert!(!row.has_body);
}
