//! Quotas and lockouts that hold across processes (PostgreSQL), the destination
//! rules for SMS, and the audit trail.

use std::time::Duration;

use serde_json::json;

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
    assert!((1..=3600).contains(&retry), "{retry}");
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
    app.clock.advance(Duration::from_secs(3600));
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
    // The next minute opens again.
    app.clock.advance(Duration::from_secs(60));
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
    let (app, _fake) =
        spawn_app_with_twilio_and(|c| c.quotas.sms_allowed_countries = vec![44]).await;
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
    let app = spawn_app_with(|c| {
        c.quotas.lockout_after = 3;
        c.quotas.lockout_base = Duration::from_secs(60);
        c.quotas.lockout_max = Duration::from_secs(240);
    })
    .await;
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
        // Wait the lockout out, then fail once more.
        app.clock.advance(Duration::from_secs(241));
        expect_error(
            app.post_json("/api/v1/account/login", &wrong).await,
            401,
            "invalid_credentials",
        )
        .await;
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
