//! The SMS actor at database speed (#15): outcomes recorded many to a
//! statement, and wake-ups without a NOTIFY in the transaction that queues a
//! message.
//!
//! The store-level tests run on a database no app drains, so they hold every
//! claim themselves; the others drive the actor through the fake Twilio.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authgate::store::outbox::{ClaimedSms, OutboxListener, SmsOutcome};
use authgate::store::{count_checkouts, Store};
use chrono::{DateTime, Utc};

use crate::accounts::*;
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

/// A migrated database no SMS actor drains, and a store on it.
struct Quiet {
    name: Option<String>,
    db: tokio_postgres::Config,
    store: Store,
}

impl Quiet {
    async fn new() -> Quiet {
        let (name, db) = fresh_database().await;
        let store = Store::connect(db.clone(), 4, Duration::from_secs(10)).unwrap();
        Quiet {
            name: Some(name),
            db,
            store,
        }
    }

    /// Queues `n` messages directly (the sealed body is opaque to these tests).
    async fn insert(&self, n: i64) -> Vec<i64> {
        let db = connect(&self.db).await;
        db.query(
            "INSERT INTO sms_outbox (recipient, body_sealed, purpose, next_attempt_at)
             SELECT '+1415555' || lpad(i::text, 4, '0'), '\\x00'::bytea, 'test', now() - interval '1 second'
             FROM generate_series(1, $1::bigint) AS i
             RETURNING id",
            &[&n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    async fn claim(&self, claimer: &str, limit: i64) -> Vec<ClaimedSms> {
        let now = Utc::now();
        self.store
            .claim_sms(claimer, now, now + chrono::Duration::seconds(60), limit)
            .await
            .unwrap()
    }

    async fn row(&self, id: i64) -> Row {
        let db = connect(&self.db).await;
        let r = db
            .query_one(
                "SELECT state, attempts, claimed_by, body_sealed IS NOT NULL, provider_sid,
                        delivery_status, delivery_rank, last_error, error_code,
                        next_attempt_at, sent_at
                 FROM sms_outbox WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        Row {
            state: r.get(0),
            attempts: r.get(1),
            claimed_by: r.get(2),
            has_body: r.get(3),
            provider_sid: r.get(4),
            delivery_status: r.get(5),
            delivery_rank: r.get(6),
            last_error: r.get(7),
            error_code: r.get(8),
            next_attempt_at: r.get(9),
            sent_at: r.get(10),
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        self.store.close();
        if let Some(name) = self.name.take() {
            drop_database(name);
        }
    }
}

#[derive(Debug)]
struct Row {
    state: String,
    attempts: i32,
    claimed_by: Option<String>,
    has_body: bool,
    provider_sid: Option<String>,
    delivery_status: Option<String>,
    delivery_rank: Option<i16>,
    last_error: Option<String>,
    error_code: Option<i32>,
    next_attempt_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

fn sent(sid: &str) -> SmsOutcome {
    SmsOutcome::Sent {
        provider_sid: Some(sid.to_owned()),
        delivery_status: Some("queued".to_owned()),
        delivery_rank: authgate::sms::delivery_rank("queued"),
    }
}

#[tokio::test]
async fn one_statement_records_the_outcomes_of_300_messages() {
    let q = Quiet::new().await;
    let ids = q.insert(300).await;
    let claimed = q.claim("sms-a", 300).await;
    assert_eq!(claimed.len(), 300);

    let outcomes: Vec<(i64, SmsOutcome)> = claimed
        .iter()
        .map(|m| (m.id, sent(&format!("SM{:032}", m.id))))
        .collect();
    let (recorded, checkouts) =
        count_checkouts(q.store.record_sms_outcomes("sms-a", &outcomes, Utc::now())).await;
    let mut recorded = recorded.unwrap();
    recorded.sort_unstable();
    assert_eq!(recorded, ids, "every outcome recorded");
    assert_eq!(checkouts, 1, "one statement for all 300");

    let db = connect(&q.db).await;
    let r = db
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'sent' AND body_sealed IS NULL
                                      AND claimed_by IS NULL AND sent_at IS NOT NULL
                                      AND provider_sid = 'SM' || lpad(id::text, 32, '0')),
                    count(*)
             FROM sms_outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (300, 300));

    // Nothing to record costs nothing.
    let (none, checkouts) =
        count_checkouts(q.store.record_sms_outcomes("sms-a", &[], Utc::now())).await;
    assert!(none.unwrap().is_empty());
    assert_eq!(checkouts, 0);
}

#[tokio::test]
async fn each_outcome_in_a_batch_keeps_its_per_message_meaning() {
    let q = Quiet::new().await;
    let ids = q.insert(6).await;
    let claimed = q.claim("sms-a", 6).await;
    assert_eq!(claimed.len(), 6);
    let db = connect(&q.db).await;
    // An earlier attempt's error, and a status callback that beat the recording.
    db.execute(
        "UPDATE sms_outbox SET last_error = 'earlier', error_code = 1 WHERE id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE sms_outbox SET delivery_status = 'delivered', delivery_rank = 5 WHERE id = $1",
        &[&ids[1]],
    )
    .await
    .unwrap();

    let now = Utc::now();
    let retry_at = now + chrono::Duration::seconds(90);
    let outcomes = vec![
        (ids[0], sent("SM-sent")),
        (ids[1], sent("SM-late")),
        (
            ids[2],
            SmsOutcome::Retry {
                next_attempt_at: retry_at,
                last_error: "provider answered HTTP 500".to_owned(),
                error_code: None,
            },
        ),
        (
            ids[3],
            SmsOutcome::Failed {
                error_code: Some(21211),
                last_error: "provider answered HTTP 400 with error 21211".to_owned(),
            },
        ),
        (ids[4], SmsOutcome::Expired),
        (ids[5], SmsOutcome::Released),
    ];
    let mut recorded = q
        .store
        .record_sms_outcomes("sms-a", &outcomes, now)
        .await
        .unwrap();
    recorded.sort_unstable();
    assert_eq!(recorded, ids);

    // Every kind leaves the claim behind.
    for &id in &ids {
        assert_eq!(q.row(id).await.claimed_by, None);
    }
    // Sent: body erased, sid and time set, earlier error cleared.
    let r = q.row(ids[0]).await;
    assert_eq!(r.state, "sent");
    assert!(!r.has_body);
    assert_eq!(r.provider_sid.as_deref(), Some("SM-sent"));
    assert_eq!(
        (r.delivery_status.as_deref(), r.delivery_rank),
        (Some("queued"), Some(2))
    );
    assert_eq!((r.last_error, r.error_code), (None, None));
    assert!(r.sent_at.is_some());
    // A status a callback already set is not moved back.
    let r = q.row(ids[1]).await;
    assert_eq!(
        (
            r.state.as_str(),
            r.delivery_status.as_deref(),
            r.delivery_rank
        ),
        ("sent", Some("delivered"), Some(5))
    );
    // Retry: pending later, body kept for the next attempt, attempt counted.
    let r = q.row(ids[2]).await;
    assert_eq!(r.state, "pending");
    assert!(r.has_body);
    assert_eq!(r.attempts, 1);
    assert_eq!(
        r.next_attempt_at.timestamp_micros(),
        retry_at.timestamp_micros()
    );
    assert_eq!(
        (r.last_error.as_deref(), r.error_code),
        (Some("provider answered HTTP 500"), None)
    );
    // Failed: final, body erased, the provider's code kept.
    let r = q.row(ids[3]).await;
    assert_eq!(r.state, "failed");
    assert!(!r.has_body);
    assert_eq!(r.error_code, Some(21211));
    assert!(r.last_error.unwrap().contains("21211"));
    assert_eq!(r.sent_at, None);
    // Expired: final, body erased, nothing else touched.
    let r = q.row(ids[4]).await;
    assert_eq!(r.state, "expired");
    assert!(!r.has_body);
    assert_eq!(
        (r.last_error.as_deref(), r.error_code),
        (Some("earlier"), Some(1))
    );
    // Released: pending and due at once, body kept, the attempt given back.
    let r = q.row(ids[5]).await;
    assert_eq!(r.state, "pending");
    assert!(r.has_body);
    assert_eq!(r.attempts, 0);
    assert!(r.next_attempt_at <= now);
    assert_eq!(r.provider_sid, None);

    // Recorded outcomes are final for this claimer: a repeat records nothing.
    let again = q
        .store
        .record_sms_outcomes("sms-a", &outcomes, Utc::now())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_lost_claim_is_not_overwritten_by_the_batch_recorder() {
    let q = Quiet::new().await;
    let ids = q.insert(3).await;
    assert_eq!(q.claim("sms-a", 3).await.len(), 3);
    // Process a stalls past its lease on one message; process b reclaims it.
    let db = connect(&q.db).await;
    db.execute(
        "UPDATE sms_outbox SET claimed_until = now() - interval '1 second' WHERE id = $1",
        &[&ids[1]],
    )
    .await
    .unwrap();
    let taken = q.claim("sms-b", 10).await;
    assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[1]]);

    // a records its whole batch: only what it still holds is written.
    let outcomes: Vec<_> = ids
        .iter()
        .map(|&id| (id, sent(&format!("SM-a-{id}"))))
        .collect();
    let mut recorded = q
        .store
        .record_sms_outcomes("sms-a", &outcomes, Utc::now())
        .await
        .unwrap();
    recorded.sort_unstable();
    assert_eq!(recorded, [ids[0], ids[2]]);
    let r = q.row(ids[1]).await;
    assert_eq!(
        (r.state.as_str(), r.claimed_by.as_deref()),
        ("sending", Some("sms-b"))
    );
    assert!(r.has_body, "b still needs the body");
    assert_eq!(r.provider_sid, None);
    assert_eq!(r.attempts, 2, "a's claim and b's");

    // A release by a of a message it lost gives back nothing either.
    let released = q
        .store
        .record_sms_outcomes("sms-a", &[(ids[1], SmsOutcome::Released)], Utc::now())
        .await
        .unwrap();
    assert!(released.is_empty());
    assert_eq!(q.row(ids[1]).await.attempts, 2);

    // b's own outcome is recorded.
    let b = q
        .store
        .record_sms_outcomes("sms-b", &[(ids[1], sent("SM-b"))], Utc::now())
        .await
        .unwrap();
    assert_eq!(b, [ids[1]]);
    assert_eq!(q.row(ids[1]).await.provider_sid.as_deref(), Some("SM-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_300_is_sent_once_and_recorded_many_to_a_statement() {
    const N: usize = 300;
    // The load tool's settings; the default batch of 50.
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.rate_per_sec = 10_000;
        c.sms.concurrency = 64;
        c.sms.sweep_interval = Duration::from_secs(60);
    })
    .await;
    assert_eq!(app.state.config().sms.batch_size, 50);
    // The actor has connected its LISTEN and found the outbox empty; with no
    // sweep, nothing but the nudge below wakes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = app.state.sms().metrics();
    let before = (
        metrics
            .claim_statements
            .load(std::sync::atomic::Ordering::Relaxed),
        metrics
            .record_statements
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    // Answers that take a moment, as a provider's do.
    fake.set_latency(Duration::from_millis(30));
    let keys = app.state.keys();
    let phone = authgate::domain::phone::PhoneE164::parse(&unique_phone()).unwrap();
    for i in 0..N {
        app.state
            .store()
            .enqueue_sms(
                keys,
                app.clock.now(),
                authgate::store::outbox::NewSms {
                    to: &phone,
                    body: &format!("burst {i}"),
                    purpose: "test",
                    expires_at: Some(app.clock.now() + chrono::Duration::minutes(10)),
                },
            )
            .await
            .unwrap();
    }
    app.state.sms().nudge();

    fake.wait_for_messages(N, Duration::from_secs(60)).await;
    wait_for_depth_zero(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in fake.messages() {
        *seen.entry(m.body).or_default() += 1;
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1), "a message arrived twice");
    assert_eq!(fake.attempts().len(), N);
    let db = app.db_client().await;
    let sent: i64 = db
        .query_one(
            "SELECT count(*) FROM sms_outbox WHERE state = 'sent' AND body_sealed IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sent, N as i64);
    assert_eq!(metrics.snapshot().sent, N as u64);
    assert!(
        fake.max_in_flight() > 50,
        "the next claim's sends start beside the last one's: {} in flight at most",
        fake.max_in_flight()
    );

    let claims = metrics
        .claim_statements
        .load(std::sync::atomic::Ordering::Relaxed)
        - before.0;
    let records = metrics
        .record_statements
        .load(std::sync::atomic::Ordering::Relaxed)
        - before.1;
    eprintln!("{N} messages: {claims} claim statements, {records} recording statements");
    // At most a batch (50) to a statement: at least 6; one per message would be 300.
    assert!(records >= 6, "{records}");
    assert!(
        records <= (N / 10) as u64,
        "{records} statements recorded {N} outcomes"
    );
    assert!(
        claims <= (N / 10) as u64,
        "{claims} claims for {N} messages"
    );
}

async fn wait_for_depth_zero(app: &TestApp) {
    let deadline = Instant::now() + WAIT;
    while app.state.sms().outbox_depth().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collects the payloads heard on `authgate_outbox` until none came for 1.5 s.
async fn listen(db: &tokio_postgres::Config) -> tokio::task::JoinHandle<Vec<String>> {
    let mut listener = OutboxListener::connect(db).await.unwrap();
    tokio::spawn(async move {
        let mut heard = Vec::new();
        while let Ok(Some(from)) =
            tokio::time::timeout(Duration::from_millis(1500), listener.next()).await
        {
            heard.push(from);
        }
        heard
    })
}

#[tokio::test]
async fn a_code_is_sent_within_a_second_and_queueing_it_notifies_no_one() {
    // No sweep to fall back on: only the nudge after commit can deliver it.
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.sms.sweep_interval = Duration::from_secs(600);
    })
    .await;
    let a = account(&app).await;
    let heard = listen(&app.db).await;

    let started = Instant::now();
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    assert_eq!(r.status().as_u16(), 202);
    fake.wait_for_message_to(&a.phone, 0, Duration::from_secs(1))
        .await;
    let db = app.db_client().await;
    loop {
        let state: String = db
            .query_one("SELECT state FROM sms_outbox", &[])
            .await
            .unwrap()
            .get(0);
        if state == "sent" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still {state} after a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The listener gives up 1.5 s after the last notification it heard.
    let heard = heard.await.unwrap();
    assert!(heard.is_empty(), "NOTIFY sent: {heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_claim_wakes_an_idle_second_process() {
    const N: usize = 60;
    let quiet = |c: &mut authgate::config::Config| {
        // No sweep: nothing but a wake makes these actors claim. The wake
        // under test is a NOTIFY: listening, even with the fallbacks on.
        pin_listening(c);
        c.sms.sweep_interval = Duration::from_secs(600);
        c.sms.batch_size = 5;
        c.sms.concurrency = 2;
        c.sms.rate_per_sec = 10_000;
    };
    let (app, fake) = spawn_app_with_twilio_and(quiet).await;
    let base = fake.base_url();
    let other = spawn_on(app.db.clone(), move |c| {
        c.sms.twilio = Some(twilio_config(&base));
        quiet(c);
    })
    .await;
    // Both actors have connected their LISTEN and found the outbox empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.set_latency(Duration::from_millis(20));
    let heard = listen(&app.db).await;
    for i in 0..N {
        let phone = authgate::domain::phone::PhoneE164::parse(&unique_phone()).unwrap();
        app.state
            .store()
            .enqueue_sms(
                app.state.keys(),
                app.clock.now(),
                authgate::store::outbox::NewSms {
                    to: &phone,
                    body: &format!("backlog {i}"),
                    purpose: "test",
                    expires_at: None,
                },
            )
            .await
            .unwrap();
    }
    // Only the first process is told, as after its own commits.
    app.state.sms().nudge();

    fake.wait_for_messages(N, WAIT).await;
    wait_for_depth_zero(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in fake.messages() {
        *seen.entry(m.body).or_default() += 1;
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1), "a message arrived twice");
    let a = app.state.sms().metrics().snapshot().sent;
    let b = other.state.sms().metrics().snapshot().sent;
    assert_eq!(a + b, N as u64);
    assert!(b > 0, "the second process was never woken (first sent {a})");
    let heard = heard.await.unwrap();
    assert!(
        !heard.is_empty() && heard.iter().all(|from| from.starts_with("sms-")),
        "the backlog NOTIFY names its claimer: {heard:?}"
    );
}
