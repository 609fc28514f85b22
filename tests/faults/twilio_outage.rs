//! A Twilio outage of a minute (real time): messages wait in the outbox and go
//! out once Twilio is back, each exactly once; messages whose content expired
//! meanwhile are dropped, not sent, and counted in `/metrics`.
//!
//! `OTP_EXPIRATION_MINUTES` counts whole minutes, so no code can expire inside a
//! one-minute outage with margin. The messages meant to expire are therefore
//! queued by the test itself, as the OTP code does (same sealing key, same
//! table), with a 40-second validity; the codes the API issues during the
//! outage (one-minute validity) must all be delivered after it, and still work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::domain::phone::PhoneE164;
use authgate::keyring::Keyring;
use authgate::store::outbox::NewSms;
use authgate::store::Store;
use futures::future::join_all;
use secrecy::SecretString;
use serde_json::json;

use crate::fake_twilio::FakeTwilio;
use crate::harness::*;
use crate::load::{count_to, newest_code, Client, Targets};

const OUTAGE: Duration = Duration::from_secs(60);
const SHORT_VALIDITY: chrono::Duration = chrono::Duration::seconds(40);
const EACH: usize = 8;

#[tokio::test(flavor = "multi_thread")]
async fn a_minute_of_twilio_outage_delays_delivery_and_drops_expired_messages() {
    let db = TestDb::fresh().await;
    let fake = Arc::new(FakeTwilio::start().await);
    let env = Env::new(&db.url, &fake)
        .set("OTP_EXPIRATION_MINUTES", "1")
        .set("AUTHGATE_SMS_BACKOFF_BASE", "500ms")
        .set("AUTHGATE_SMS_BACKOFF_MAX", "4s")
        .set("AUTHGATE_SMS_MAX_ATTEMPTS", "100");
    let server = Server::start("outage", &env, free_port()).await;
    let client = Client::new(Targets::new(vec![server.base()]));
    let users = join_all((0..EACH).map(|_| client.new_user()))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("set-up users");
    let store = Store::connect(db.cfg.clone(), 2, Duration::from_secs(5)).unwrap();
    let keys = Keyring::read(store.clone(), SecretString::from(JWT_SECRET.to_owned()))
        .await
        .unwrap();
    let enqueue = |tag: &str| {
        let (store, keys) = (store.clone(), keys.clone());
        let body = format!("{tag} message {}", uuid::Uuid::new_v4().simple());
        async move {
            let to = PhoneE164::parse(&crate::helpers::unique_phone()).unwrap();
            let now = chrono::Utc::now();
            let id = store
                .enqueue_sms(
                    &keys,
                    now,
                    NewSms {
                        to: &to,
                        body: &body,
                        purpose: "test",
                        expires_at: Some(now + SHORT_VALIDITY),
                    },
                )
                .await
                .unwrap();
            (id, body)
        }
    };

    fake.outage_for(OUTAGE);
    let outage_start = Instant::now();
    let outage_end = outage_start + OUTAGE;
    // Early in the outage: valid for 40 s, so they expire 20 s before it ends.
    let early: Vec<(i64, String)> = join_all((0..EACH).map(|_| enqueue("early"))).await;
    // Codes the API issues during the outage (valid a minute: past its end).
    tokio::time::sleep_until((outage_start + Duration::from_secs(15)).into()).await;
    let mut before = Vec::new();
    for u in &users {
        before.push(count_to(&fake, &u.phone));
        let answer = client
            .post(
                "/api/v1/account/phone/verify/send",
                Some(&u.access),
                &json!({}),
            )
            .await;
        assert!(
            matches!(answer, crate::load::Answer::Ok(202, _)),
            "a code could not be issued during the Twilio outage"
        );
    }
    // Late in the outage: valid 15 s past its end.
    tokio::time::sleep_until((outage_start + Duration::from_secs(35)).into()).await;
    let late: Vec<(i64, String)> = join_all((0..EACH).map(|_| enqueue("late"))).await;

    // Nothing gets through during the outage, though authgate keeps trying.
    tokio::time::sleep_until((outage_end - Duration::from_secs(2)).into()).await;
    assert!(fake.messages().is_empty(), "{:?}", fake.messages());
    let tried = fake.attempts().len();
    assert!(tried >= 3 * EACH, "only {tried} attempts during the outage");
    let sql = db.client().await;
    let expired_during: i64 = scalar(
        &sql,
        "SELECT count(*) FROM sms_outbox WHERE state = 'expired'",
    )
    .await;
    assert_eq!(
        expired_during, EACH as i64,
        "early messages expired during the outage"
    );

    // After it: every waiting message goes out soon, once.
    wait_outbox_final(&sql, Duration::from_secs(20)).await;
    let drained = Instant::now().saturating_duration_since(outage_end);
    let delivery = check_delivery(&sql, &fake, |_| false).await;
    eprintln!("outage: {delivery:?}; outbox drained {drained:?} after the outage; {tried} attempts during it");
    assert_eq!(delivery.sent_rows, 2 * EACH, "{delivery:?}");
    assert_eq!(delivery.expired_rows, EACH, "{delivery:?}");
    let attempts = fake.attempts();
    assert!(
        attempts
            .iter()
            .filter(|a| a.answer == crate::fake_twilio::Fault::Accept)
            .all(|a| a.at >= outage_end),
        "a message was accepted during the outage"
    );
    for (id, body) in &early {
        let state: String = sql
            .query_one("SELECT state FROM sms_outbox WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "expired", "early message {id}");
        assert!(
            !fake.messages().iter().any(|m| &m.body == body),
            "expired message {id} was sent"
        );
    }
    for (id, body) in &late {
        let n = fake.messages().iter().filter(|m| &m.body == body).count();
        assert_eq!(n, 1, "late message {id} delivered {n} times");
    }
    // The codes delivered after the outage still work.
    for (u, before) in users.iter().zip(before) {
        let code = newest_code(&fake, &u.phone, before).await.unwrap();
        let answer = client
            .post(
                "/api/v1/account/phone/verify/confirm",
                Some(&u.access),
                &json!({ "code": code }),
            )
            .await;
        assert!(
            matches!(answer, crate::load::Answer::Ok(200, _)),
            "a code delivered after the outage was refused"
        );
    }
    // Counted: dropped as expired, sent, and retried.
    let metric = |outcome: &str| format!("authgate_sms_outcomes_total{{outcome=\"{outcome}\"}}");
    assert_eq!(
        server.metric(&metric("expired")).await,
        Some(EACH as f64),
        "expired count in /metrics"
    );
    assert_eq!(
        server.metric(&metric("sent")).await,
        Some((2 * EACH) as f64),
        "sent count in /metrics"
    );
    assert_eq!(server.metric(&metric("failed")).await, Some(0.0));
    let retried = server.metric(&metric("retried")).await.unwrap_or(0.0);
    assert!(retried >= (3 * EACH) as f64, "retried {retried}");
    store.close();
}
