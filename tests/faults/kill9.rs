//! `kill -9` of an authgate process in the middle of a load run, and a new
//! process on the same database: no outbox message lost, none sent twice (but
//! the one in flight at the kill), no code or login flow accepted twice, and
//! the login flows the dead process left pending complete or expire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::fake_twilio::FakeTwilio;
use crate::harness::*;
use crate::load::{summary, Client, Load, Targets};

/// Short, so that flows left pending by the killed process expire in the test.
const FLOW_TTL_SECS: i64 = 20;
/// How long after its expiry a pending flow may stay pending (the sweep).
const SWEEP_GRACE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_message_and_accepts_no_code_twice() {
    let db = TestDb::fresh().await;
    let fake = Arc::new(FakeTwilio::start().await);
    let env = Env::new(&db.url, &fake).set("LOGIN_FLOW_TTL", format!("{FLOW_TTL_SECS}s"));
    let port = free_port();
    let mut a = Server::start("kill9-a", &env, port).await;
    // Same port after the restart: the clients keep their address.
    let client = Client::new(Targets::new(vec![a.base()]));

    // Users with 2FA whose logins will be pending on the process we kill.
    let users: Vec<_> = join_all((0..6).map(|_| async {
        let u = client.new_user().await.expect("set-up user");
        client.enable_2fa(&fake, &u).await.expect("set-up 2FA");
        u
    }))
    .await;

    let load = Load::start(client.clone(), fake.clone(), 24);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pending: Vec<_> = join_all(users.iter().map(|u| {
        let (client, fake) = (&client, &fake);
        async move { (u, client.start_2fa_login(fake, u).await.expect("login")) }
    }))
    .await;
    let done_before = client.record.lock().unwrap().journeys_done;

    let killed_at = Instant::now();
    a.kill9();
    let b = Server::start("kill9-b", &env, port).await;
    eprintln!(
        "kill9: SIGKILLed pid {} after {done_before} journeys; pid {} ready after {:?}",
        a.pid(),
        b.pid(),
        killed_at.elapsed()
    );

    // Half of the flows begun on the dead process finish on the new one.
    for (u, (flow, code)) in &pending[..3] {
        client
            .finish_2fa_login(u, flow, code)
            .await
            .unwrap_or_else(|e| panic!("flow {flow} begun before the kill: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let record = std::mem::take(&mut *load.stop().await.lock().unwrap());
    eprintln!("kill9: {}", summary(&record));
    assert!(
        record.journeys_done > done_before,
        "no journey completed after the restart: {}",
        summary(&record)
    );

    let sql = db.client().await;
    // 1. Every outbox row reaches a final state; each message reached the fake
    //    once, but the one whose request was in flight when the process died
    //    (accepted before the kill, sent again after the lease).
    wait_outbox_final(&sql, Duration::from_secs(30)).await;
    let delivery = check_delivery(&sql, &fake, |times| {
        times.len() == 2 && times[0] < killed_at && times[1] > killed_at
    })
    .await;
    eprintln!("kill9: {delivery:?}");
    assert!(delivery.sent_rows > 0);

    // 2, 3. No code accepted twice, no login flow issued tokens twice.
    assert_accepted_once(&client, &sql, &record).await;

    // 4. Flows left pending (three on purpose, and whatever the kill cut off)
    //    end completed or expired; nothing stays pending past its expiry.
    let last_expiry: Option<chrono::DateTime<chrono::Utc>> = scalar(
        &sql,
        "SELECT max((state->>'expires_at')::timestamptz) FROM login_flows
         WHERE state->>'state' IN ('password_pending', 'otp_pending')",
    )
    .await;
    let wait = last_expiry
        .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default())
        .unwrap_or_default()
        + SWEEP_GRACE;
    poll(
        "login flows left pending by the killed process to end (expired by a sweep)",
        wait,
        Duration::from_millis(500),
        async || {
            let rows = sql
                .query(
                    "SELECT id::text, state->>'state', state->>'expires_at' FROM login_flows
                     WHERE state->>'state' IN ('password_pending', 'otp_pending')",
                    &[],
                )
                .await
                .unwrap();
            if rows.is_empty() {
                Ok(())
            } else {
                let list: Vec<(String, String, String)> = rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                Err(format!("{} still pending: {list:?}", list.len()))
            }
        },
    )
    .await;
    let abandoned: Vec<&str> = pending[3..].iter().map(|(_, (f, _))| f.as_str()).collect();
    for flow in abandoned {
        let state: String = sql
            .query_one(
                "SELECT state->>'state' FROM login_flows WHERE id = $1::text::uuid",
                &[&flow],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "expired", "abandoned flow {flow}");
    }
    drop(b);
}
