//! Quotas and lockouts that hold across processes (PostgreSQL), the destination
//! rules for SMS, and the audit trail.

use std::time::Duration;

use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

const SEND: &str = "/api/v1/account/phone/verify/send";

async fn send(app: &TestApp, a: &Account) -> reqwest::Response {
    post_auth(app, SEND, &a.access, None).await
}

#[tokio::test]
async fn per_phone_hourly_quota_trips_and_recovers() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_per_phone_hour = 2).await;
    let a = account(&app).await;
    for _ in 0..2 {
        expect_json(send(&app, &a).await, 202).await;
        app.clock.advance(Duration::from_secs(31));
    }
    let r = send(&app, &a).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // A sliding hour: the two sends still count, in part, during the next hour.
    assert!((1..=7200).contains(&retry), "{retry}");
    expect_error(r, 429, "too_many_requests").await;
    // The refused send stored nothing and queued nothing.
    let db = app.db_client().await;
    let codes: i64 = db
        .query_one("SELECT count(*) FROM otp_codes", &[])
        .await
        .unwrap()
        .get(0);
    let msgs: i64 = db
        .query_one("SELECT count(*) FROM sms_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((codes, msgs), (2, 2));
    // Retry-After is honest: once it has passed, a send is admitted.
    app.clock.advance(Duration::from_secs(retry + 1));
    let fresh = relogin(&app, &a).await;
    expect_json(post_auth(&app, SEND, &fresh, None).await, 202).await;
}

#[tokio::test]
async fn per_account_quota_counts_every_purpose() {
    let (app, fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_per_account_hour = 3).await;
    let a = account(&app).await;
    verify_phone(&app, &fake, &a).await; // 1
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await,
        202,
    )
    .await; // 2
    app.clock.advance(Duration::from_secs(31));
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await,
        202,
    )
    .await; // 3
    app.clock.advance(Duration::from_secs(31));
    let r = post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_error(r, 429, "too_many_requests").await;
}

/// The global ceiling, with sends spread over two instances on one database:
/// exactly the ceiling gets through.
#[tokio::test]
async fn global_ceiling_holds_across_two_instances() {
    let (app, fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_global_per_minute = 5).await;
    let second = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()));
        c.quotas.sms_global_per_minute = 5;
    })
    .await;
    let mut accounts = Vec::new();
    for _ in 0..10 {
        accounts.push(account(&app).await);
    }
    let results = futures::future::join_all(accounts.iter().enumerate().map(|(i, a)| {
        let target = if i % 2 == 0 { &app } else { &second };
        async move { send(target, a).await.status().as_u16() }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|s| **s == 202).count(),
        5,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|s| **s == 429).count(),
        5,
        "{results:?}"
    );
    let db = app.db_client().await;
    let msgs: i64 = db
        .query_one("SELECT count(*) FROM sms_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(msgs, 5);
    // Open again once the burst's minute has slid out of the window.
    app.clock.advance(Duration::from_secs(120));
    let last = accounts.last().unwrap();
    let fresh = relogin(&app, last).await;
    let refused_before = results.last() == Some(&429);
    let r = post_auth(&app, SEND, &fresh, None).await;
    if refused_before {
        expect_json(r, 202).await;
    } else {
        // Its first code is still inside the cooldown? No: a minute passed.
        expect_json(r, 202).await;
    }
}

#[tokio::test]
async fn sms_only_to_allowed_countries_and_mobile_numbers() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| {
        c.quotas.sms_destinations.regions = Some(vec!["GB".to_owned()]);
    })
    .await;
    let us = account(&app).await;
    let r = send(&app, &us).await;
    expect_error(r, 422, "phone_country_not_allowed").await;

    let mut body = valid_signup();
    body["phone"] = json!("+44 20 7946 0958"); // a London landline
    expect_json(app.signup(&body).await, 201).await;
    let t = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": body["email"], "password": body["password"]}),
        )
        .await,
        200,
    )
    .await;
    let r = post_auth(&app, SEND, t["accessToken"].as_str().unwrap(), None).await;
    expect_error(r, 422, "phone_not_mobile").await;

    let db = app.db_client().await;
    let msgs: i64 = db
        .query_one("SELECT count(*) FROM sms_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(msgs, 0, "nothing was queued");
}

#[tokio::test]
async fn failed_passwords_lock_the_account_for_a_growing_but_bounded_time() {
    let app = spawn_app_with_short_lockout().await;
    let a = account(&app).await;
    let wrong = json!({"email": a.email, "password": "wrong-passw0rd"});
    let right = json!({"email": a.email, "password": a.password});
    for _ in 0..3 {
        expect_error(
            app.post_json("/api/v1/account/login", &wrong).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    // Locked: even the right password answers exactly like a wrong one.
    let mut locked = expect_error(
        app.post_json("/api/v1/account/login", &right).await,
        401,
        "invalid_credentials",
    )
    .await;
    let mut plain = expect_error(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": "nobody@example.com", "password": "x1xxxxxx"}),
        )
        .await,
        401,
        "invalid_credentials",
    )
    .await;
    locked.as_object_mut().unwrap().remove("timestamp");
    plain.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(locked, plain);

    // Once it passes, the owner logs in, and the count starts over.
    app.clock.advance(Duration::from_secs(61));
    expect_json(app.post_json("/api/v1/account/login", &right).await, 200).await;

    // The window grows with further failures, but never past the maximum.
    let db = app.db_client().await;
    let id = uuid::Uuid::parse_str(&a.id).unwrap();
    let mut windows = Vec::new();
    for _ in 0..3 {
        expect_error(
            app.post_json("/api/v1/account/login", &wrong).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    for _ in 0..4 {
        let row = db
            .query_one("SELECT locked_until FROM users WHERE id = $1", &[&id])
            .await
            .unwrap();
        let until: chrono::DateTime<chrono::Utc> = row.get(0);
        windows.push((until - app.clock.now()).num_seconds());
        // Wait the lockout out: the count starts from zero (one failure does
        // not relock), and the ceiling's worth of failures locks for longer.
        app.clock.advance(Duration::from_secs(241));
        for _ in 0..3 {
            expect_error(
                app.post_json("/api/v1/account/login", &wrong).await,
                401,
                "invalid_credentials",
            )
            .await;
        }
    }
    assert!((55..=60).contains(&windows[0]), "{windows:?}");
    assert!((115..=120).contains(&windows[1]), "{windows:?}");
    assert!((235..=240).contains(&windows[2]), "{windows:?}");
    assert!((235..=240).contains(&windows[3]), "bounded: {windows:?}");
}

#[tokio::test]
async fn security_events_are_audited_per_user() {
    let (app, fake) = spawn_app_with_twilio_and(|c| c.quotas.lockout_after = 2).await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    // A wrong 2FA code, then the right one.
    let before = count_to(&fake, &a.phone);
    let flow = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await,
        200,
    )
    .await;
    let code = code_for(&fake, &a.phone, before).await;
    let _ = app
        .post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "code": wrong(&code)}),
        )
        .await;
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "code": code}),
        )
        .await,
        200,
    )
    .await;
    // Refresh reuse.
    let rt = tokens["refreshToken"].clone();
    expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": rt}))
            .await,
        200,
    )
    .await;
    // Past the retry grace window: reuse, which ends that session.
    app.clock.advance(std::time::Duration::from_secs(11));
    let _ = app
        .post_json("/api/v1/auth/refresh", &json!({"refreshToken": rt}))
        .await;
    // Disable 2FA, with one wrong code first, from the first session.
    let access = a.access.as_str();
    let before = count_to(&fake, &a.phone);
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/disable", access, None).await,
        202,
    )
    .await;
    let code = code_for(&fake, &a.phone, before).await;
    let _ = post_auth(
        &app,
        "/api/v1/account/2fa/disable/confirm",
        access,
        Some(json!({"code": wrong(&code)})),
    )
    .await;
    expect_json(
        post_auth(
            &app,
            "/api/v1/account/2fa/disable/confirm",
            access,
            Some(json!({"code": code})),
        )
        .await,
        200,
    )
    .await;
    // Two wrong passwords: a lockout.
    for _ in 0..2 {
        let _ = app
            .post_json(
                "/api/v1/account/login",
                &json!({"email": a.email, "password": "wrong-passw0rd"}),
            )
            .await;
    }

    let r = app
        .http
        .get(app.url("/api/v1/account/audit"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    let body = expect_json(r, 200).await;
    let events = body["events"].as_array().unwrap();
    let kinds: std::collections::HashSet<&str> =
        events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "signup",
        "login_succeeded",
        "login_failed",
        "locked_out",
        "code_sent",
        "code_failed",
        "phone_verified",
        "two_fa_enabled",
        "two_fa_disabled",
        "refresh_reuse_detected",
    ] {
        assert!(kinds.contains(kind), "missing {kind}: {kinds:?}");
    }
    assert!(events.iter().all(|e| e["ip"] == "127.0.0.1"), "{events:?}");
    // Another user's trail is not visible.
    let b = account(&app).await;
    let r = app
        .http
        .get(app.url("/api/v1/account/audit"))
        .bearer_auth(&b.access)
        .send()
        .await
        .unwrap();
    let theirs = expect_json(r, 200).await;
    assert!(theirs["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] != "two_fa_enabled"));
}

// ---- Destinations by region and line type (issue 14, item 6) ----

/// Signs up with `phone` and logs in; the access token.
async fn account_with_phone(app: &TestApp, phone: &str) -> String {
    let mut body = valid_signup();
    body["phone"] = json!(phone);
    expect_json(app.signup(&body).await, 201).await;
    let t = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": body["email"], "password": body["password"]}),
        )
        .await,
        200,
    )
    .await;
    t["accessToken"].as_str().unwrap().to_owned()
}

async fn outbox_rows(app: &TestApp) -> i64 {
    app.db_client()
        .await
        .query_one("SELECT count(*) FROM sms_outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// +1 876 is Jamaica and +44 7797 Jersey: the calling codes of the US and the
/// UK, other regions of the numbering plan. An allow-list of calling codes let
/// them through; one of regions does not.
#[tokio::test]
async fn jamaica_under_us_ca_and_jersey_under_gb_are_refused() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| {
        c.quotas.sms_destinations.regions = Some(vec!["US".into(), "CA".into(), "GB".into()]);
    })
    .await;
    let jamaica = account_with_phone(&app, "+1 876 210 1234").await;
    let r = post_auth(&app, SEND, &jamaica, None).await;
    expect_error(r, 422, "phone_country_not_allowed").await;
    let jersey = account_with_phone(&app, "+44 7797 712345").await;
    let r = post_auth(&app, SEND, &jersey, None).await;
    expect_error(r, 422, "phone_country_not_allowed").await;
    assert_eq!(outbox_rows(&app).await, 0, "nothing was queued");
    // The allowed regions' own numbers go through.
    let us = account(&app).await;
    expect_json(send(&app, &us).await, 202).await;
    let gb = account_with_phone(&app, "+44 7400 123456").await;
    expect_json(post_auth(&app, SEND, &gb, None).await, 202).await;
}

/// With no configuration, the allow-list is a short list of regions: Jamaica
/// is not on it.
#[tokio::test]
async fn the_default_region_list_is_short() {
    let (app, _fake) = spawn_app_with_twilio().await;
    let jamaica = account_with_phone(&app, "+1 876 210 1234").await;
    let r = post_auth(&app, SEND, &jamaica, None).await;
    expect_error(r, 422, "phone_country_not_allowed").await;
}

/// UK VoIP (+44 56) and personal (+44 70) numbers are in an allowed region,
/// but SMS pumping rents such numbers: refused unless configured.
#[tokio::test]
async fn voip_and_personal_numbers_are_refused_by_default() {
    let (app, _fake) = spawn_app_with_twilio().await;
    for phone in ["+44 56 1234 5678", "+44 70 1234 5678"] {
        let token = account_with_phone(&app, phone).await;
        let r = post_auth(&app, SEND, &token, None).await;
        expect_error(r, 422, "phone_not_mobile").await;
    }
    assert_eq!(outbox_rows(&app).await, 0, "nothing was queued");

    let (app, _fake) = spawn_app_with_twilio_and(|c| {
        c.quotas
            .sms_destinations
            .number_types
            .push(authgate::domain::phone::NumberType::Voip);
    })
    .await;
    let token = account_with_phone(&app, "+44 56 1234 5678").await;
    expect_json(post_auth(&app, SEND, &token, None).await, 202).await;
}

/// A random UK mobile number (+44 7400 …).
fn unique_gb_mobile() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 1_000_000;
    format!("+447400{n:06}")
}

/// Each region has its own hourly ceiling (with overrides), counted across
/// every account and phone of that region.
#[tokio::test]
async fn per_region_hourly_ceilings_hold() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| {
        c.quotas.sms_per_region_hour = 3;
        c.quotas.sms_per_region_hour_overrides = vec![("GB".to_owned(), 1)];
    })
    .await;
    let mut us = Vec::new();
    for _ in 0..4 {
        us.push(account(&app).await);
    }
    let mut answers = Vec::new();
    for a in &us {
        answers.push(send(&app, a).await.status().as_u16());
    }
    assert_eq!(answers, [202, 202, 202, 429], "US: 3 an hour");
    let gb: Vec<String> = futures::future::join_all(
        (0..2).map(|_| async { account_with_phone(&app, &unique_gb_mobile()).await }),
    )
    .await;
    expect_json(post_auth(&app, SEND, &gb[0], None).await, 202).await;
    let r = post_auth(&app, SEND, &gb[1], None).await;
    expect_error(r, 429, "too_many_requests").await;
    assert_eq!(outbox_rows(&app).await, 4);
}

// ---- Quotas as a sliding window (issue 14, item 14) ----

/// A fixed window let the limit through just before its end and the limit
/// again just after: twice the limit within two seconds. The sliding estimate
/// still counts the first burst right after the boundary.
#[tokio::test]
async fn a_burst_at_a_window_boundary_is_not_admitted_twice() {
    let limit = 5;
    let (app, _fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_global_per_minute = limit).await;
    let mut accounts = Vec::new();
    for _ in 0..2 * limit {
        accounts.push(account(&app).await);
    }
    // Move the clock to 1.5 s before a minute boundary.
    let now = app.clock.now();
    let into_minute = now.timestamp_millis().rem_euclid(60_000) as u64;
    let to_boundary = 60_000 - into_minute;
    let skip = if to_boundary > 1_500 {
        to_boundary - 1_500
    } else {
        to_boundary + 58_500
    };
    app.clock.advance(Duration::from_millis(skip));
    let (before, after) = accounts.split_at(limit as usize);
    let first = futures::future::join_all(before.iter().map(|a| send(&app, a))).await;
    let first: Vec<u16> = first.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(first, vec![202; limit as usize], "the first burst fits");
    // Past the boundary: a fixed window would start again from zero.
    app.clock.advance(Duration::from_secs(3));
    let mut second = Vec::new();
    for a in after {
        second.push(send(&app, a).await.status().as_u16());
    }
    let refused = second.iter().filter(|s| **s == 429).count();
    assert!(refused >= 4, "second burst mostly refused: {second:?}");
    let db = app.db_client().await;
    let codes: i64 = db
        .query_one("SELECT count(*) FROM otp_codes", &[])
        .await
        .unwrap()
        .get(0);
    assert!(codes <= i64::from(limit) + 1, "{codes} codes stored");
}

// ---- Account-wide ceiling on wrong codes (issue 14, item 4) ----

const LOGIN: &str = "/api/v1/account/login";
const VERIFY: &str = "/api/v1/account/login/verify";
const RESEND: &str = "/api/v1/account/login/resend";

/// Quotas generous enough for the many codes these tests send.
fn many_codes(c: &mut authgate::config::Config) {
    c.quotas.sms_per_phone_hour = 1000;
    c.quotas.sms_per_phone_day = 1000;
    c.quotas.sms_per_account_hour = 1000;
}

/// Logs in with 2FA on: the flow id and its code.
async fn start_flow(
    app: &TestApp,
    fake: &crate::fake_twilio::FakeTwilio,
    a: &Account,
) -> (Value, String) {
    let before = count_to(fake, &a.phone);
    let r = app
        .post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["status"], "otp_required", "{body}");
    let code = code_for(fake, &a.phone, before).await;
    (body["flowId"].clone(), code)
}

/// Each code allows 5 tries, but resends, new login flows and other purposes
/// bring new codes: 21 wrong codes spread over all of them lock code entry for
/// the account. The right code of a live code is then refused, and so is
/// sending any new code.
#[tokio::test]
async fn twenty_wrong_codes_across_flows_resends_and_purposes_lock_code_entry() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    let cooldown = || app.clock.advance(Duration::from_secs(31));
    let mut wrong_so_far = 0;
    // Four wrong codes at a time, each answered 401 until the ceiling (20).
    let mut expect_wrong = |r: reqwest::Response| {
        wrong_so_far += 1;
        let n = wrong_so_far;
        async move {
            if n < 20 {
                expect_error(r, 401, "invalid_code").await;
            } else {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((3500..=3600).contains(&retry), "{retry}");
                expect_error(r, 429, "code_entry_locked").await;
            }
        }
    };

    // Flow 1: four wrong, a resend, four wrong.
    let (flow1, code) = start_flow(&app, &fake, &a).await;
    for _ in 0..4 {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow1, "code": wrong(&code)}))
            .await;
        expect_wrong(r).await;
    }
    cooldown();
    let before = count_to(&fake, &a.phone);
    expect_json(app.post_json(RESEND, &json!({"flowId": flow1})).await, 202).await;
    let code = code_for(&fake, &a.phone, before).await;
    for _ in 0..4 {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow1, "code": wrong(&code)}))
            .await;
        expect_wrong(r).await;
    }
    // Flow 2: four wrong.
    cooldown();
    let (flow2, code) = start_flow(&app, &fake, &a).await;
    for _ in 0..4 {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow2, "code": wrong(&code)}))
            .await;
        expect_wrong(r).await;
    }
    // Another purpose: turning 2FA off, four wrong.
    let before = count_to(&fake, &a.phone);
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await,
        202,
    )
    .await;
    let disable_code = code_for(&fake, &a.phone, before).await;
    for _ in 0..4 {
        let r = post_auth(
            &app,
            "/api/v1/account/2fa/disable/confirm",
            &a.access,
            Some(json!({"code": wrong(&disable_code)})),
        )
        .await;
        expect_wrong(r).await;
    }
    // Flow 3: the 20th wrong code locks, the 21st finds it locked.
    cooldown();
    let (flow3, code3) = start_flow(&app, &fake, &a).await;
    for _ in 0..5 {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow3, "code": wrong(&code3)}))
            .await;
        expect_wrong(r).await;
    }
    assert_eq!(wrong_so_far, 21);

    // Right codes of live codes are refused: nothing is compared.
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow3, "code": code3}))
        .await;
    expect_error(r, 429, "code_entry_locked").await;
    let r = post_auth(
        &app,
        "/api/v1/account/2fa/disable/confirm",
        &a.access,
        Some(json!({"code": disable_code})),
    )
    .await;
    expect_error(r, 429, "code_entry_locked").await;
    // No new code is sent either, for any purpose.
    let sent = count_to(&fake, &a.phone);
    cooldown();
    let r = app.post_json(RESEND, &json!({"flowId": flow3})).await;
    expect_error(r, 429, "code_entry_locked").await;
    let r = app
        .post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await;
    expect_error(r, 429, "code_entry_locked").await;
    let r = post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await;
    expect_error(r, 429, "code_entry_locked").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count_to(&fake, &a.phone), sent, "no SMS while locked");
    let db = app.db_client().await;
    let id = uuid::Uuid::parse_str(&a.id).unwrap();
    let two_fa: bool = db
        .query_one("SELECT two_fa FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(two_fa, "the refused right code changed nothing");
}

/// Fifty wrong codes at once, over two processes, against one code with 100
/// tries: exactly the ceiling's worth is compared, the rest find code entry
/// locked.
#[tokio::test]
async fn fifty_parallel_wrong_codes_on_two_instances_are_compared_at_most_up_to_the_ceiling() {
    let tweak = |c: &mut authgate::config::Config| {
        c.otp_max_attempts = 100;
        c.quotas.code_failures_max = 20;
    };
    let (app, fake) = spawn_app_with_twilio_and(tweak).await;
    let second = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()));
        tweak(c);
    })
    .await;
    let a = account(&app).await;
    expect_json(send(&app, &a).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    let bad = json!({"code": wrong(&code)});
    let results = futures::future::join_all((0..50).map(|i| {
        let target = if i % 2 == 0 { &app } else { &second };
        let (access, bad) = (&a.access, bad.clone());
        async move {
            let r = post_auth(
                target,
                "/api/v1/account/phone/verify/confirm",
                access,
                Some(bad),
            )
            .await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body["code"].as_str().unwrap_or("").to_owned())
        }
    }))
    .await;
    let wrong_answers = results.iter().filter(|(s, _)| *s == 401).count();
    let locked = results
        .iter()
        .filter(|(s, c)| *s == 429 && c == "code_entry_locked")
        .count();
    assert_eq!((wrong_answers, locked), (19, 31), "{results:?}");
    let db = app.db_client().await;
    let attempts: i32 = db
        .query_one("SELECT attempts FROM otp_codes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 20, "codes compared");
    let r = post_auth(
        &second,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_error(r, 429, "code_entry_locked").await;
}

/// The lock ends after `code_lock_base`; a further lock without a right code
/// in between lasts twice as long; a right code resets both.
#[tokio::test]
async fn the_code_lock_ends_doubles_when_repeated_and_a_right_code_resets_it() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        many_codes(c);
        c.quotas.code_failures_max = 3;
    })
    .await;
    let a = account(&app).await;
    let id = uuid::Uuid::parse_str(&a.id).unwrap();
    let db = app.db_client().await;
    let lock_left = || async {
        let row = db
            .query_one(
                "SELECT code_locked_until, code_failures, code_locks FROM users WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let until: Option<chrono::DateTime<chrono::Utc>> = row.get(0);
        let failures: i32 = row.get(1);
        let locks: i32 = row.get(2);
        (
            until.map(|u| (u - app.clock.now()).num_minutes()),
            failures,
            locks,
        )
    };
    // Three wrong codes, with a fresh token each time (the lock outlives it).
    let three_wrong = |access: String| {
        let app = &app;
        let fake = &fake;
        let phone = a.phone.clone();
        async move {
            let before = count_to(fake, &phone);
            expect_json(post_auth(app, SEND, &access, None).await, 202).await;
            let code = code_for(fake, &phone, before).await;
            let mut last = 0;
            for _ in 0..3 {
                let r = post_auth(
                    app,
                    "/api/v1/account/phone/verify/confirm",
                    &access,
                    Some(json!({"code": wrong(&code)})),
                )
                .await;
                last = r.status().as_u16();
            }
            assert_eq!(last, 429);
            code
        }
    };
    three_wrong(a.access.clone()).await;
    let (left, failures, locks) = lock_left().await;
    assert_eq!((failures, locks), (0, 1));
    assert!(matches!(left, Some(59 | 60)), "{left:?}");
    // Still locked a minute before it ends.
    app.clock.advance(Duration::from_secs(59 * 60));
    let access = relogin(&app, &a).await;
    let r = post_auth(&app, SEND, &access, None).await;
    expect_error(r, 429, "code_entry_locked").await;
    // Ended: codes again, and three more wrong ones lock for two hours.
    app.clock.advance(Duration::from_secs(61));
    three_wrong(access.clone()).await;
    let (left, _, locks) = lock_left().await;
    assert_eq!(locks, 2);
    assert!(matches!(left, Some(119 | 120)), "{left:?}");
    // After it, a right code verifies the phone and resets everything.
    app.clock.advance(Duration::from_secs(2 * 3600 + 1));
    let access = relogin(&app, &a).await;
    let before = count_to(&fake, &a.phone);
    expect_json(post_auth(&app, SEND, &access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, before).await;
    let user = expect_json(
        post_auth(
            &app,
            "/api/v1/account/phone/verify/confirm",
            &access,
            Some(json!({"code": code})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(user["isPhoneVerified"], true);
    assert_eq!(lock_left().await.1, 0);
    assert_eq!(lock_left().await.2, 0);
}
