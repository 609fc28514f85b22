//! Three authgate processes on one database, every request spread round-robin
//! across them: the limits that live in PostgreSQL hold as if there were one
//! process (global SMS quota, per-phone quota, five wrong codes, the login
//! lockout), login flows cross processes, and no SMS goes out twice though
//! three SMS actors drain the same outbox.

use std::sync::Arc;
use std::time::Duration;

use chrono::Timelike;
use futures::future::join_all;
use serde_json::json;

use crate::fake_twilio::FakeTwilio;
use crate::harness::*;
use crate::load::{newest_code, summary, Answer, Client, Load, Targets, User};

const GLOBAL_PER_MINUTE: i64 = 30;
const PER_PHONE_HOUR: i64 = 3;
const LOCKOUT_AFTER: i64 = 3;
const MAX_CODE_TRIES: usize = 5;
/// Burst users, each asking for `PER_PHONE_HOUR` codes (more than the ceiling).
const BURST_USERS: usize = 12;

const SEND: &str = "/api/v1/account/phone/verify/send";
const CONFIRM: &str = "/api/v1/account/phone/verify/confirm";

/// Status and error code of each answer (transient failures fail the test).
fn outcomes(answers: Vec<Answer>) -> Vec<(u16, String)> {
    answers
        .into_iter()
        .map(|a| match a {
            Answer::Ok(s, v) => (s, v["code"].as_str().unwrap_or_default().to_owned()),
            Answer::Transient(k) => panic!("request failed: {k}"),
        })
        .collect()
}

async fn global_count(sql: &tokio_postgres::Client, window: chrono::DateTime<chrono::Utc>) -> i64 {
    sql.query_opt(
        "SELECT count FROM quota_counters WHERE key = 'sms:global:m' AND window_start = $1",
        &[&window],
    )
    .await
    .unwrap()
    .map_or(0, |r| i64::from(r.get::<_, i32>(0)))
}

fn minute_start(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    t.with_second(0).unwrap().with_nanosecond(0).unwrap()
}

/// How far into its minute `t` is, from 0 to 1.
fn fraction_of_minute(t: chrono::DateTime<chrono::Utc>) -> f64 {
    (t - minute_start(t)).num_milliseconds() as f64 / 60_000.0
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_on_one_database_keep_every_limit() {
    let db = TestDb::fresh().await;
    let fake = Arc::new(FakeTwilio::start().await);
    let env = Env::new(&db.url, &fake)
        .set(
            "AUTHGATE_SMS_GLOBAL_PER_MINUTE",
            GLOBAL_PER_MINUTE.to_string(),
        )
        .set("AUTHGATE_SMS_PER_PHONE_HOUR", PER_PHONE_HOUR.to_string())
        .set("AUTHGATE_LOGIN_LOCKOUT_AFTER", LOCKOUT_AFTER.to_string())
        .set("OTP_MAX_ATTEMPTS", MAX_CODE_TRIES.to_string())
        .set("OTP_RESEND_COOLDOWN", "0s");
    // Started together: migrations under the advisory lock.
    let servers =
        join_all(["three-a", "three-b", "three-c"].map(|n| Server::start(n, &env, free_port())))
            .await;
    let client = Client::new(Targets::new(servers.iter().map(Server::base).collect()));
    let sql = db.client().await;

    let users: Vec<User> = join_all((0..3 + BURST_USERS).map(|_| client.new_user()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("set-up users");
    let (phone_user, code_user, lock_user) = (&users[0], &users[1], &users[2]);
    let empty = json!({});

    // Per-phone quota: twice the quota at once, spread: exactly the quota passes.
    let answers = outcomes(
        join_all(
            (0..2 * PER_PHONE_HOUR).map(|_| client.post(SEND, Some(&phone_user.access), &empty)),
        )
        .await,
    );
    let passed = answers.iter().filter(|(s, _)| *s == 202).count() as i64;
    assert_eq!(passed, PER_PHONE_HOUR, "per-phone quota: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, c)| *s == 202 || (*s == 429 && c == "too_many_requests")),
        "{answers:?}"
    );
    let issued: i64 = sql
        .query_one(
            "SELECT count(*) FROM otp_codes c JOIN users u ON u.id = c.user_id WHERE u.phone = $1",
            &[&phone_user.phone],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        issued, PER_PHONE_HOUR,
        "codes stored for the per-phone user"
    );

    // Five wrong codes kill a code, even seven sent at once to three processes.
    let before = crate::load::count_to(&fake, &code_user.phone);
    let r = client.post(SEND, Some(&code_user.access), &empty).await;
    assert!(matches!(r, Answer::Ok(202, _)));
    let code = newest_code(&fake, &code_user.phone, before).await.unwrap();
    let wrong: String = code
        .chars()
        .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
        .collect();
    let wrong_body = json!({ "code": wrong });
    let answers = outcomes(
        join_all(
            (0..MAX_CODE_TRIES + 2)
                .map(|_| client.post(CONFIRM, Some(&code_user.access), &wrong_body)),
        )
        .await,
    );
    let rejected = answers.iter().filter(|(s, _)| *s == 401).count();
    let exhausted = answers
        .iter()
        .filter(|(s, c)| *s == 410 && c == "code_attempts_exhausted")
        .count();
    assert_eq!(
        (rejected, exhausted),
        (MAX_CODE_TRIES, 2),
        "wrong codes: {answers:?}"
    );
    for _ in 0..servers.len() {
        let r = outcomes(vec![
            client
                .post(CONFIRM, Some(&code_user.access), &json!({"code": code}))
                .await,
        ]);
        assert_eq!(
            r[0],
            (410, "code_attempts_exhausted".to_owned()),
            "the right code after five wrong ones"
        );
    }
    let row = sql
        .query_one(
            "SELECT c.state, c.attempts FROM otp_codes c JOIN users u ON u.id = c.user_id
             WHERE u.phone = $1",
            &[&code_user.phone],
        )
        .await
        .unwrap();
    let (state, tries): (String, i32) = (row.get(0), row.get(1));
    assert_eq!((state.as_str(), tries), ("dead", MAX_CODE_TRIES as i32));

    // The login lockout: wrong passwords spread over the processes lock the
    // account everywhere; then even the right password is refused on each.
    let bad_login = json!({"email": lock_user.email, "password": "wrong-passw0rd"});
    let answers = outcomes(
        join_all(
            (0..LOCKOUT_AFTER + 2).map(|_| client.post("/api/v1/account/login", None, &bad_login)),
        )
        .await,
    );
    assert!(answers.iter().all(|(s, _)| *s == 401), "{answers:?}");
    for _ in 0..servers.len() {
        let r = outcomes(vec![
            client
                .post(
                    "/api/v1/account/login",
                    None,
                    &json!({"email": lock_user.email, "password": lock_user.password}),
                )
                .await,
        ]);
        assert_eq!(
            r[0],
            (401, "invalid_credentials".to_owned()),
            "right password while locked"
        );
    }
    let row = sql
        .query_one(
            "SELECT failed_logins, locked_until > now() FROM users WHERE email = $1",
            &[&lock_user.email],
        )
        .await
        .unwrap();
    let (failures, locked): (i32, Option<bool>) = (row.get(0), row.get(1));
    assert!(
        i64::from(failures) >= LOCKOUT_AFTER && locked == Some(true),
        "failed_logins {failures}, locked {locked:?}"
    );

    // Load spread over the three: journeys (2FA login flows begun on one
    // process and verified on the next) go through.
    let load_client = Client::new(Targets::new(servers.iter().map(Server::base).collect()));
    let load = Load::start(load_client, fake.clone(), 6);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let record = std::mem::take(&mut *load.stop().await.lock().unwrap());
    eprintln!("three processes: {}", summary(&record));
    assert!(record.journeys_done > 0, "{}", summary(&record));

    // The global quota: a burst over the ceiling lets exactly what the
    // sliding-window estimate leaves room for through, summed over the
    // processes. The room is the ceiling less this minute's count and the part
    // of the previous minute's count still inside the sliding minute; wait
    // until it is worth testing (the load above may have filled it). Units a
    // process took in a block and did not use go back to the counter once
    // idle (`store::reserved::HOLD`): wait for that, so the counter is what
    // was sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (window, used, previous, f_start) = loop {
        let now = chrono::Utc::now();
        let window = minute_start(now);
        let used = global_count(&sql, window).await;
        let previous = global_count(&sql, window - chrono::Duration::minutes(1)).await;
        let f = fraction_of_minute(now);
        let room = GLOBAL_PER_MINUTE as f64 - used as f64 - previous as f64 * (1.0 - f);
        if room >= 10.0 && f < 0.7 {
            break (window, used, previous, f);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let burst = &users[3..];
    let mut sends = Vec::new();
    for u in burst {
        for _ in 0..PER_PHONE_HOUR {
            sends.push(client.post(SEND, Some(&u.access), &empty));
        }
    }
    let answers = outcomes(join_all(sends).await);
    assert_eq!(
        minute_start(chrono::Utc::now()),
        window,
        "the burst crossed a minute boundary"
    );
    let f_end = fraction_of_minute(chrono::Utc::now());
    let passed = answers.iter().filter(|(s, _)| *s == 202).count() as i64;
    assert!(
        (BURST_USERS as i64) * PER_PHONE_HOUR > GLOBAL_PER_MINUTE - used,
        "the burst is not above the ceiling"
    );
    // The estimate's room grows as the previous minute slides out, so it is
    // bounded by the room at the burst's start and at its end.
    let room = |f: f64| {
        (GLOBAL_PER_MINUTE as f64 - used as f64 - previous as f64 * (1.0 - f) + 1e-9).floor() as i64
    };
    assert!(
        (room(f_start)..=room(f_end)).contains(&passed),
        "global quota {GLOBAL_PER_MINUTE}/min with {used} used in this minute and {previous} \
         in the previous one: {passed} passed, room {}..={}: {answers:?}",
        room(f_start),
        room(f_end)
    );
    assert!(
        answers
            .iter()
            .all(|(s, c)| *s == 202 || (*s == 429 && c == "too_many_requests")),
        "{answers:?}"
    );
    assert_eq!(global_count(&sql, window).await, used + passed);
    let codes_in_window: i64 = sql
        .query_one(
            "SELECT count(*) FROM otp_codes WHERE created_at >= $1 AND created_at < $1 + interval '1 minute'",
            &[&window],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(codes_in_window, used + passed, "codes stored in the window");

    // Three SMS actors, one outbox: every message once, and the processes'
    // own counts add up to the rows sent.
    wait_outbox_final(&sql, Duration::from_secs(30)).await;
    let delivery = check_delivery(&sql, &fake, |_| false).await;
    let mut sent_by_process = Vec::new();
    for s in &servers {
        let n = s
            .metric("authgate_sms_outcomes_total{outcome=\"sent\"}")
            .await
            .unwrap_or_else(|| panic!("{}: no sent metric", s.name));
        sent_by_process.push(n as usize);
    }
    eprintln!("three processes: {delivery:?}, sent by process {sent_by_process:?}");
    assert_eq!(
        sent_by_process.iter().sum::<usize>(),
        delivery.sent_rows,
        "sent counts of the processes vs sent rows"
    );
}
