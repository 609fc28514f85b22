//! The fallbacks for engines without LISTEN/NOTIFY or advisory locks (issue
//! 19): `DATABASE_LISTEN_URL` (its own URL, or `off`), `AUTHGATE_LOCKS=rows`,
//! and the failover errors answered 503. Each test pins the mode it is about,
//! whatever `AUTHGATE_TEST_FALLBACKS` says for the rest of the suite.

use std::time::{Duration, Instant};

use authgate::config::ListenSource;
use authgate::domain::phone::PhoneE164;
use authgate::store::outbox::NewSms;
use authgate::store::{LockMode, Store, StoreError};
use futures::future::join_all;

use crate::accounts::*;
use crate::helpers::*;

const SEND: &str = "/api/v1/account/phone/verify/send";

/// Backends of `db` running LISTEN (the listener connections stay idle in it).
async fn listeners(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN %'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn with_listen_off_another_instance_sends_what_one_queued_by_polling() {
    // The writer's own actor sweeps once an hour, and queueing here nudges no
    // one (as a process that died between commit and nudge): only the other
    // instance's poll of the outbox can send it.
    let (writer, writer_fake) = spawn_app_with_twilio_and(|c| {
        c.listen = ListenSource::Off;
        c.sms.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let poller_fake = crate::fake_twilio::FakeTwilio::start().await;
    let base = poller_fake.base_url();
    let poller = spawn_on(writer.db.clone(), move |c| {
        c.listen = ListenSource::Off;
        c.sms.twilio = Some(twilio_config(&base));
    })
    .await;
    let db = writer.db_client().await;
    assert_eq!(
        listeners(&db).await,
        0,
        "listen=off opens no LISTEN connection"
    );

    let to = unique_phone();
    let started = Instant::now();
    writer
        .state
        .store()
        .enqueue_sms(
            writer.state.keys(),
            writer.clock.now(),
            NewSms {
                to: &PhoneE164::parse(&to).unwrap(),
                body: "polled 424242",
                purpose: "test",
                expires_at: Some(writer.clock.now() + chrono::Duration::minutes(10)),
            },
        )
        .await
        .unwrap();
    let msg = poller_fake
        .wait_for_message_to(&to, 0, Duration::from_secs(10))
        .await;
    assert_eq!(msg.body, "polled 424242");
    // The poller's sweep is 200 ms in the tests: well under the wait.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(writer_fake.messages().is_empty());
    // With nobody listening, the revocation cache never turns on.
    assert!(!poller.state.revocations().is_listening());
}

#[tokio::test]
async fn with_listen_off_no_notification_is_sent() {
    let app = spawn_app_with(|c| c.listen = ListenSource::Off).await;
    let a = account(&app).await;
    let user: uuid::Uuid = a.id.parse().unwrap();
    // Our own listener on both channels.
    let (client, mut connection) = app.db.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.channel().to_owned());
            }
        }
    });
    client
        .batch_execute("LISTEN authgate_revocation; LISTEN authgate_outbox")
        .await
        .unwrap();
    let quiet = |s: &Store| {
        let s = s.clone();
        async move {
            let now = chrono::Utc::now();
            // Ends the login's session: a revocation that would notify.
            assert_eq!(s.revoke_other_sessions(user, None, now).await.unwrap(), 1);
            s.notify_sms_backlog("someone").await.unwrap();
        }
    };
    quiet(app.state.store()).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), heard.recv())
            .await
            .is_err(),
        "a notification was sent with listen=off"
    );
    // The same calls on a store that notifies are heard: the listener works.
    let loud = Store::connect(app.db.clone(), 1, Duration::from_secs(5)).unwrap();
    loud.notify_sms_backlog("someone").await.unwrap();
    let channel = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the notifying store was heard")
        .unwrap();
    assert_eq!(channel, "authgate_outbox");
}

#[tokio::test]
async fn a_listen_url_of_its_own_carries_both_listeners() {
    let (name, db) = fresh_database().await;
    let mut listen = db.clone();
    listen.application_name("authgate-listen-test");
    let app = spawn_on(db, move |c| c.listen = ListenSource::Url(Box::new(listen))).await;
    let db = app.db_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both LISTEN connections come from the listen URL's settings, and the
    // heartbeat sent through the pool comes back on them: the cache turns on.
    loop {
        let on_listen_url: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN %'
                   AND application_name = 'authgate-listen-test'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if on_listen_url == 2 && app.state.revocations().is_listening() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listeners on the listen URL: {on_listen_url}, cache on: {}",
            app.state.revocations().is_listening()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listeners(&db).await, 2, "no LISTEN on the pool's settings");
    drop(app);
    drop_database(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_row_locks_concurrent_issuing_keeps_one_live_code() {
    // No cooldown, so (nearly) every request issues and supersedes: without
    // the per-(user, purpose) lock two issuers would both insert a live code
    // and the loser would trip the one-live-code index (a 500).
    let tweak = |c: &mut authgate::config::Config| {
        c.locks = LockMode::Rows;
        c.otp_resend_cooldown = Duration::ZERO;
        c.quotas.sms_per_phone_hour = 1000;
        c.quotas.sms_per_phone_day = 1000;
        c.quotas.sms_per_account_hour = 1000;
        c.quotas.sms_global_per_minute = 1000;
        c.quotas.sms_per_region_hour = 1000;
    };
    let app = spawn_app_with(tweak).await;
    // Three processes: one process's OTP actor serialises one account's
    // requests, so the database lock is what stands between processes.
    let others = [
        spawn_on(app.db.clone(), tweak).await,
        spawn_on(app.db.clone(), tweak).await,
    ];
    let a = account(&app).await;
    let instances = [&app, &others[0], &others[1]];
    const N: usize = 12;
    let answers =
        join_all((0..N).map(|i| post_auth(instances[i % 3], SEND, &a.access, None))).await;
    // A request whose clock reads before another process's fresh code is
    // refused as too soon (429): the cooldown, not a failure. Nothing else.
    let mut issued = 0i64;
    for r in answers {
        match r.status().as_u16() {
            202 => issued += 1,
            429 => {
                expect_error(r, 429, "too_many_requests").await;
            }
            other => panic!("answered {other}: {}", r.text().await.unwrap()),
        }
    }
    assert!(issued >= 1);
    let db = app.db_client().await;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'live'), count(*) FROM otp_codes
             WHERE user_id = $1::text::uuid AND purpose = 'phone_verify'",
            &[&a.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "one live code");
    assert_eq!(row.get::<_, i64>(1), issued, "each 202 issued one code");
    let locked: i64 = db
        .query_one(
            "SELECT count(*) FROM lock_rows
             WHERE key = hashtextextended('otp:' || $1 || ':phone_verify', 0)",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locked, 1, "the issue lock is a row of lock_rows");
}

#[tokio::test]
async fn migrations_run_twice_at_once_in_rows_mode_on_a_fresh_database() {
    let name = empty_database().await;
    let mut cfg = admin_config();
    cfg.dbname(&name);
    // Pools of one: the lock holder needs a connection of its own.
    let stores: Vec<Store> = (0..2)
        .map(|_| {
            Store::connect(cfg.clone(), 1, Duration::from_secs(30))
                .unwrap()
                .with_coordination(LockMode::Rows, false)
        })
        .collect();
    let (a, b) = tokio::join!(stores[0].migrate(), stores[1].migrate());
    let (a, b) = (a.unwrap(), b.unwrap());
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(a + b, files, "each migration applied once: {a} + {b}");
    assert!(
        a == 0 || b == 0,
        "one process migrated, the other found it done"
    );
    let db = connect(&cfg).await;
    let history: i64 = db
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, files as i64);
    // The migration lock's row was released (rolled back), not left behind.
    let rows: i64 = db
        .query_one("SELECT count(*) FROM lock_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // And again, now with nothing to do.
    assert_eq!(stores[0].migrate().await.unwrap(), 0);
    for s in &stores {
        s.close();
    }
    drop(db);
    drop_database(name);
}

#[tokio::test]
async fn a_read_only_server_answers_503_unavailable() {
    // As after a failover, when the pooler still reaches the demoted leader:
    // every new connection is read-only and writes fail with SQLSTATE 25006.
    let app = spawn_app().await;
    let name = app.db.get_dbname().unwrap().to_owned();
    let admin = connect(&admin_config()).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap();
    // Let the pool see its connections close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let body = expect_error(app.signup(&valid_signup()).await, 503, "unavailable").await;
        assert!(
            !body["message"].as_str().unwrap().contains("read-only"),
            "no SQL detail leaks: {body}"
        );
    }
    // The error behind it is the read-only one, and it maps to Unavailable.
    let db = app.db_client().await;
    let e = db
        .execute("INSERT INTO lock_rows (key) VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    assert!(matches!(StoreError::from(e), StoreError::Unavailable(_)));
}

#[tokio::test]
async fn purge_drops_unheld_lock_rows_only() {
    let app = spawn_app_with(|c| c.locks = LockMode::Rows).await;
    let db = app.db_client().await;
    db.batch_execute(
        "INSERT INTO lock_rows (key, touched_at) VALUES (1, now() - interval '1 day'),
                                                        (2, now() - interval '1 day')",
    )
    .await
    .unwrap();
    // Key 2 is held by an open transaction: the purge skips it, never waits.
    let mut holder = connect(&app.db).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM lock_rows WHERE key = 2 FOR UPDATE", &[])
        .await
        .unwrap();
    let purged = tokio::time::timeout(
        Duration::from_secs(5),
        app.state
            .store()
            .purge(app.clock.now() - chrono::Duration::hours(1)),
    )
    .await
    .expect("the purge waited on a held lock row")
    .unwrap();
    assert_eq!(
        purged, 0,
        "lock rows are not counted as purged codes or tokens"
    );
    tx.rollback().await.unwrap();
    let keys: Vec<i64> = db
        .query("SELECT key FROM lock_rows WHERE key IN (1, 2)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, [2]);
}
