//! Phone verification and turning 2FA on and off with SMS codes.

use std::time::Duration;

use serde_json::json;

use crate::accounts::*;
use crate::helpers::*;

const SEND: &str = "/api/v1/account/phone/verify/send";
const CONFIRM: &str = "/api/v1/account/phone/verify/confirm";

#[tokio::test]
async fn phone_verification_round_trip() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;

    let sent = expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let expires =
        chrono::DateTime::parse_from_rfc3339(sent["expiresAt"].as_str().unwrap()).unwrap();
    let resend =
        chrono::DateTime::parse_from_rfc3339(sent["resendAfter"].as_str().unwrap()).unwrap();
    assert_eq!((expires - resend).num_seconds(), 600 - 30);

    let msg = fake
        .wait_for_message_to(&a.phone, 0, Duration::from_secs(20))
        .await;
    assert!(msg.body.contains("expires in 10 minutes"), "{}", msg.body);
    let code = code_for(&fake, &a.phone, 0).await;
    assert_eq!(code.len(), 6);

    let user = expect_json(
        post_auth(&app, CONFIRM, &a.access, Some(json!({"code": code}))).await,
        200,
    )
    .await;
    assert_eq!(user["isPhoneVerified"], true);
    let me = app
        .http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(me, 200).await["isPhoneVerified"], true);

    // Used once; a verified phone needs no new code.
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": code}))).await;
    expect_error(r, 410, "code_used").await;
    let r = post_auth(&app, SEND, &a.access, None).await;
    expect_error(r, 409, "phone_already_verified").await;

    // The code is stored only as a keyed hash.
    let db = app.db_client().await;
    let rows = db
        .query("SELECT code_hash FROM otp_codes", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: Vec<u8> = rows[0].get(0);
    assert_eq!(hash.len(), 32);
    assert!(!String::from_utf8_lossy(&hash).contains(&code));
}

#[tokio::test]
async fn two_fa_on_and_off() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;

    let r = post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_error(r, 409, "phone_not_verified").await;
    let r = post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await;
    expect_error(r, 409, "two_fa_not_enabled").await;

    enable_2fa(&app, &fake, &a).await;
    let r = post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_error(r, 409, "two_fa_already_enabled").await;

    let before = count_to(&fake, &a.phone);
    let r = post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &a.phone, before).await;
    let user = expect_json(
        post_auth(
            &app,
            "/api/v1/account/2fa/disable/confirm",
            &a.access,
            Some(json!({"code": code})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(user["twoFA"], false);
    assert_eq!(user["isPhoneVerified"], true);
}

#[tokio::test]
async fn wrong_codes_count_down_then_the_code_is_dead() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    for left in (0..5).rev() {
        let r = post_auth(
            &app,
            CONFIRM,
            &a.access,
            Some(json!({"code": wrong(&code)})),
        )
        .await;
        let body = expect_error(r, 401, "invalid_code").await;
        assert_eq!(body["attemptsLeft"], left);
    }
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": code}))).await;
    expect_error(r, 410, "code_attempts_exhausted").await;
}

#[tokio::test]
async fn codes_expire() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    app.clock.advance(Duration::from_secs(600));
    // The access token expired too (15 minutes is more than 10): get a fresh one.
    let fresh = relogin(&app, &a).await;
    let r = post_auth(&app, CONFIRM, &fresh, Some(json!({"code": code}))).await;
    expect_error(r, 410, "code_expired").await;
}

#[tokio::test]
async fn a_new_code_supersedes_the_old_and_resends_wait_for_the_cooldown() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let first = code_for(&fake, &a.phone, 0).await;

    let r = post_auth(&app, SEND, &a.access, None).await;
    assert_eq!(r.headers()["retry-after"], "30");
    expect_error(r, 429, "too_many_requests").await;

    app.clock.advance(Duration::from_secs(31));
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let second = code_for(&fake, &a.phone, 1).await;
    if first != second {
        let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": first}))).await;
        expect_error(r, 401, "invalid_code").await;
    }
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": second}))).await;
    expect_json(r, 200).await;
    // Exactly two messages were sent.
    assert_eq!(count_to(&fake, &a.phone), 2);
}

#[tokio::test]
async fn missing_or_malformed_codes_are_400_and_no_code_is_404() {
    let (app, _fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": "123456"}))).await;
    expect_error(r, 404, "no_active_code").await;
    for body in [
        json!({}),
        json!({"code": "12345"}),
        json!({"code": 123456}),
        json!({"code": "abcdef"}),
    ] {
        let r = post_auth(&app, CONFIRM, &a.access, Some(body.clone())).await;
        expect_error(r, 400, "validation_failed").await;
    }
    let r = app
        .http
        .post(app.url(CONFIRM))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_code_for_one_purpose_never_works_for_another() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    for path in [
        "/api/v1/account/2fa/enable/confirm",
        "/api/v1/account/2fa/disable/confirm",
    ] {
        let r = post_auth(&app, path, &a.access, Some(json!({"code": code}))).await;
        expect_error(r, 404, "no_active_code").await;
    }
    // Still good for its own purpose.
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": code}))).await;
    expect_json(r, 200).await;
}

#[tokio::test]
async fn account_endpoints_need_a_valid_bearer_token() {
    let (app, _fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let paths = [
        SEND,
        "/api/v1/account/2fa/enable",
        "/api/v1/account/2fa/disable",
    ];
    for path in paths {
        let r = app.http.post(app.url(path)).send().await.unwrap();
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        expect_error(r, 401, "invalid_token").await;
        let r = post_auth(&app, path, "not.a.jwt", None).await;
        expect_error(r, 401, "invalid_token").await;
        let r = post_auth(&app, path, &format!("{}x", a.access), None).await;
        expect_error(r, 401, "invalid_token").await;
    }
    let r = app
        .http
        .get(app.url("/api/v1/account/me"))
        .header("authorization", format!("Basic {}", a.access))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_token").await;
}

/// Fifty confirmations of `code` at once, alternating between two instances;
/// each answer's status and error code.
async fn confirm_fifty_times(
    app: &TestApp,
    second: &TestApp,
    access: &str,
    code: &str,
) -> Vec<(u16, String)> {
    futures::future::join_all((0..50).map(|i| async move {
        let target = if i % 2 == 0 { app } else { second };
        let r = post_auth(target, CONFIRM, access, Some(json!({"code": code}))).await;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or("").to_owned())
    }))
    .await
}

/// Fifty confirmations of the right code at once, spread over two instances:
/// exactly one succeeds.
#[tokio::test]
async fn fifty_concurrent_right_codes_succeed_exactly_once_across_two_instances() {
    let (app, fake) = spawn_app_with_twilio().await;
    let second = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()))
    })
    .await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    let results = confirm_fifty_times(&app, &second, &a.access, &code).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != 200)
            .all(|(s, c)| *s == 410 && c == "code_used"),
        "{results:?}"
    );
}

/// Fifty wrong guesses at once, over two instances: never more than five count.
#[tokio::test]
async fn fifty_concurrent_wrong_codes_never_count_past_the_limit() {
    let (app, fake) = spawn_app_with_twilio().await;
    let second = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()))
    })
    .await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    let bad = wrong(&code);
    let results = confirm_fifty_times(&app, &second, &a.access, &bad).await;
    let counted = results.iter().filter(|(s, _)| *s == 401).count();
    assert_eq!(counted, 5, "{results:?}");
    assert_eq!(results.iter().filter(|(s, _)| *s == 410).count(), 45);
    let db = app.db_client().await;
    let row = db
        .query_one("SELECT attempts, state FROM otp_codes", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    assert_eq!(row.get::<_, String>(1), "dead");
    // Even the right code is refused now.
    let r = post_auth(&app, CONFIRM, &a.access, Some(json!({"code": code}))).await;
    expect_error(r, 410, "code_attempts_exhausted").await;
}

#[tokio::test]
async fn finished_codes_are_purged() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    expect_json(post_auth(&app, SEND, &a.access, None).await, 202).await;
    let _ = code_for(&fake, &a.phone, 0).await;
    let store = app.state.store();
    let now = app.clock.now();
    assert_eq!(store.purge(now).await.unwrap(), 0, "a live code is kept");
    let later = now + chrono::Duration::minutes(11);
    assert_eq!(store.purge(later).await.unwrap(), 1, "an expired code goes");
    let db = app.db_client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM otp_codes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
