//! The issue path at database speed: a code, its SMS and its audit event are one
//! commit; a wrong code and its events are one commit; the shared quotas are
//! taken in blocks that never pass their ceiling across processes.

use std::time::Duration;

use authgate::store::quotas::Quota;
use authgate::store::Store;
use chrono::{TimeZone, Utc};
use futures::future::join_all;
use serde_json::json;

use crate::accounts::*;
use crate::helpers::*;

const SEND: &str = "/api/v1/account/phone/verify/send";
const CONFIRM: &str = "/api/v1/account/phone/verify/confirm";

/// The transaction that last wrote each row of a query (PostgreSQL's `xmin`).
async fn writers(db: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn a_code_its_sms_and_its_audit_event_are_written_by_one_transaction() {
    let (app, fake) = spawn_app_with_twilio_and(|c| c.quotas.code_failures_max = 2).await;
    let a = account(&app).await;
    let db = app.db_client().await;

    // With the SMS insert failing (an injected fault), nothing of the send
    // exists: no code, no audit event, no quota counted.
    db.batch_execute(
        "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER injected_fault BEFORE INSERT ON sms_outbox
             FOR EACH ROW EXECUTE FUNCTION injected_fault();",
    )
    .await
    .unwrap();
    let r = post_auth(&app, SEND, &a.access, None).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    // The per-phone and per-account counts roll back with it; the shared
    // quotas' unit returns to this process's block, for the next send.
    assert_eq!(app.state.store().units_held("sms:global:m"), 1);
    for table in [
        "otp_codes",
        "sms_outbox",
        "quota_counters WHERE key LIKE 'sms:phone:%' OR key LIKE 'sms:user:%'",
    ] {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} kept a row of the failed send");
    }
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE kind = 'code_sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "code_sent recorded for a send that failed");
    db.batch_execute("DROP TRIGGER injected_fault ON sms_outbox")
        .await
        .unwrap();

    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = writers(&db, "SELECT xmin::text FROM otp_codes").await;
    let event = writers(
        &db,
        "SELECT xmin::text FROM audit_events WHERE kind = 'code_sent'",
    )
    .await;
    assert_eq!(code.len(), 1);
    assert_eq!(event, code, "code_sent was recorded by another transaction");
    let detail: serde_json::Value = db
        .query_one(
            "SELECT detail FROM audit_events WHERE kind = 'code_sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(detail, json!({"purpose": "phone_verify"}));
    let _ = fake
        .wait_for_message_to(&a.phone, 0, Duration::from_secs(20))
        .await;

    // A wrong code: the try counted on the code and its event, one commit.
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": "000000"}))).await;
    let r = match r.status().as_u16() {
        // The real code may be 000000 (one in a million): try another.
        200 => panic!("the code was 000000; rerun"),
        _ => r,
    };
    expect_error(r, 401, "invalid_code").await;
    let tried = writers(&db, "SELECT xmin::text FROM otp_codes").await;
    let failed = writers(
        &db,
        "SELECT xmin::text FROM audit_events WHERE kind = 'code_failed'",
    )
    .await;
    assert_eq!(
        failed, tried,
        "code_failed was recorded by another transaction"
    );
    let detail: serde_json::Value = db
        .query_one(
            "SELECT detail FROM audit_events WHERE kind = 'code_failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        detail,
        json!({"purpose": "phone_verify", "attemptsLeft": 4})
    );

    // The second wrong code reaches the account's ceiling of 2: the lock and
    // its event are written with the try.
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": "000001"}))).await;
    expect_error(r, 429, "code_entry_locked").await;
    let users = writers(&db, "SELECT xmin::text FROM users").await;
    let locked = writers(
        &db,
        "SELECT xmin::text FROM audit_events WHERE kind = 'locked_out'",
    )
    .await;
    assert_eq!(
        locked, users,
        "locked_out was recorded by another transaction"
    );
    let failed = writers(
        &db,
        "SELECT xmin::text FROM audit_events WHERE kind = 'code_failed' ORDER BY id",
    )
    .await;
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[1], users[0]);
    let detail: serde_json::Value = db
        .query_one(
            "SELECT detail FROM audit_events WHERE kind = 'locked_out'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(detail["what"], "code_entry");
    assert!(
        chrono::DateTime::parse_from_rfc3339(detail["until"].as_str().unwrap()).is_ok(),
        "{detail}"
    );
}

#[tokio::test]
async fn a_refused_send_writes_nothing_and_counts_nothing() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_per_phone_hour = 1).await;
    let a = account(&app).await;
    let db = app.db_client().await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    app.clock.advance(Duration::from_secs(60));
    let r = post_auth(&app, SEND, &a.access, None).await;
    expect_error(r, 429, "too_many_requests").await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM otp_codes").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM sms_outbox WHERE purpose = 'phone_verify'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM audit_events WHERE kind = 'code_sent'").await,
        1
    );
    // The refused send's counts were rolled back with it.
    let phone_count: i32 = db
        .query_one(
            "SELECT sum(count)::int FROM quota_counters WHERE key LIKE 'sms:phone:%:h'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone_count, 1);
}

fn quota(limit: i32) -> Quota {
    Quota {
        key: "test:shared:m".to_owned(),
        window: chrono::Duration::minutes(1),
        limit,
    }
}

/// Sends at `now` from `workers` concurrent senders per store, each asking
/// until the quota refuses it, as a busy process does. Returns the units used.
///
/// A sender stops only when its store had no unit left and the counter had
/// no room, and a sender that is granted a block goes on to use it, so no
/// store is left holding units: what the senders used is what was counted.
async fn take_until_refused(
    stores: &[Store],
    workers: usize,
    q: &Quota,
    now: chrono::DateTime<Utc>,
) -> usize {
    let senders = stores.iter().flat_map(|store| {
        (0..workers).map(move |_| {
            let store = store.clone();
            let q = q.clone();
            async move {
                let mut used = 0;
                loop {
                    let client = store.client().await.unwrap();
                    match store.take_unit(&client, &q, now).await.unwrap() {
                        Ok(_) => used += 1,
                        Err(_) => return used,
                    }
                }
            }
        })
    });
    join_all(senders).await.into_iter().sum()
}

async fn counter(db: &tokio_postgres::Client, window: chrono::DateTime<Utc>) -> i32 {
    db.query_opt(
        "SELECT count FROM quota_counters WHERE key = 'test:shared:m' AND window_start = $1",
        &[&window],
    )
    .await
    .unwrap()
    .map_or(0, |r| r.get(0))
}

#[tokio::test]
async fn blocks_of_a_shared_quota_never_pass_its_ceiling_across_processes() {
    let app = spawn_app().await;
    let db = app.db_client().await;
    // Two processes' stores on one database.
    let stores: Vec<Store> = (0..2)
        .map(|_| Store::connect(app.db.clone(), 8, Duration::from_secs(10)).unwrap())
        .collect();
    let limit = 640; // blocks of 10
    let window = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    let now = window + chrono::Duration::seconds(1);
    let q = quota(limit);

    // Eight senders per process at once: blocks shrink to single units near
    // the ceiling, so the ceiling is reached exactly and never passed.
    let used = take_until_refused(&stores, 8, &q, now).await;
    let held: i32 = stores.iter().map(|s| s.units_held(&q.key)).sum();
    assert_eq!(held, 0, "a process still asking kept units unused");
    assert_eq!(counter(&db, window).await, limit);
    assert_eq!(used, limit as usize, "units used are the count");

    // A process that stops asking holds the rest of its block only until it
    // is idle: then the units go back to the counter, and the other process
    // can have them. (An hour on: a new window with an empty previous one.)
    let later = window + chrono::Duration::hours(1);
    let client = stores[0].client().await.unwrap();
    stores[0]
        .take_unit(&client, &q, later)
        .await
        .unwrap()
        .unwrap();
    drop(client);
    assert_eq!(stores[0].units_held(&q.key), 9, "a block of 10, one used");
    assert_eq!(counter(&db, later).await, 10);
    tokio::time::sleep(authgate::store::reserved::HOLD + Duration::from_millis(100)).await;
    let mut returned = 0;
    for s in &stores {
        returned += s.return_idle_units(later).await.unwrap();
    }
    assert_eq!(returned, 9);
    assert_eq!(stores[0].units_held(&q.key), 0);
    assert_eq!(counter(&db, later).await, 1);
    let more = take_until_refused(&stores[1..], 8, &q, later).await;
    assert_eq!(
        more,
        limit as usize - 1,
        "the returned units were not reusable"
    );
    assert_eq!(counter(&db, later).await, limit);
}

#[tokio::test]
async fn a_block_respects_the_sliding_estimate_of_the_previous_window() {
    let app = spawn_app().await;
    let db = app.db_client().await;
    let stores = vec![Store::connect(app.db.clone(), 8, Duration::from_secs(10)).unwrap()];
    let limit = 640;
    let window = Utc.with_ymd_and_hms(2026, 11, 30, 12, 1, 0).unwrap();
    db.execute(
        "INSERT INTO quota_counters (key, window_start, count, expires_at)
         VALUES ('test:shared:m', $1, 640, $2)",
        &[
            &(window - chrono::Duration::minutes(1)),
            &(window + chrono::Duration::hours(1)),
        ],
    )
    .await
    .unwrap();
    // Half-way through the minute, half of the previous one still counts.
    let now = window + chrono::Duration::seconds(30);
    let used = take_until_refused(&stores, 8, &quota(limit), now).await;
    let counted = counter(&db, window).await;
    assert_eq!(counted, 320, "the previous window's half was not counted");
    assert_eq!(used, 320, "units used are the count");
    // A unit a send could not use goes back to this process's block.
    let later = window + chrono::Duration::minutes(5);
    let client = stores[0].client().await.unwrap();
    let unit = stores[0]
        .take_unit(&client, &quota(limit), later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stores[0].units_held("test:shared:m"),
        9,
        "a block of 10, one used"
    );
    stores[0].release_unit(unit);
    assert_eq!(stores[0].units_held("test:shared:m"), 10);
}
