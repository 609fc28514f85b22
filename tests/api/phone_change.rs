//! Changing the phone number (issue 16, item 2): a code to the new number, the
//! switch in the statement that accepts it, the notice to the old number, the
//! other sessions ended, numbers another account verified refused at start
//! and at confirm, and the step-up an account with 2FA needs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

const CHANGE: &str = "/api/v1/account/phone/change";
const CONFIRM: &str = "/api/v1/account/phone/change/confirm";
const LOGIN: &str = "/api/v1/account/login";

/// A password login's `(access, refresh)`.
async fn login(app: &TestApp, a: &Account) -> (String, String) {
    let t = expect_json(
        app.post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
            .await,
        200,
    )
    .await;
    (
        t["accessToken"].as_str().unwrap().to_owned(),
        t["refreshToken"].as_str().unwrap().to_owned(),
    )
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn start(app: &TestApp, token: &str, phone: &str) -> reqwest::Response {
    post_auth(app, CHANGE, token, Some(json!({"phone": phone}))).await
}

async fn confirm(app: &TestApp, token: &str, code: &str) -> reqwest::Response {
    post_auth(app, CONFIRM, token, Some(json!({"code": code}))).await
}

/// `+•••••••••00`, as `PhoneE164::masked` shows a number.
fn masked(phone: &str) -> String {
    format!(
        "+{}{}",
        "•".repeat(phone.len() - 3),
        &phone[phone.len() - 2..]
    )
}

#[tokio::test]
async fn a_change_switches_to_the_new_number_tells_the_old_one_and_ends_other_sessions() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    verify_phone(&app, &fake, &a).await;
    let (other_access, other_refresh) = login(&app, &a).await;
    let old_before = count_to(&fake, &a.phone);

    let new = unique_phone();
    let sent = expect_json(start(&app, &a.access, &new).await, 202).await;
    assert_eq!(sent["status"], "code_sent");
    assert!(sent["expiresAt"].is_string() && sent["resendAfter"].is_string());
    let msg = fake
        .wait_for_message_to(&new, 0, Duration::from_secs(20))
        .await;
    assert!(
        msg.body.contains("make this your account's phone number"),
        "{}",
        msg.body
    );
    let code = code_for(&fake, &new, 0).await;
    // The number is not changed by asking.
    let still = expect_json(me(&app, &a.access).await, 200).await;
    assert_eq!(still["phone"], a.phone);

    let wrong_try = confirm(&app, &a.access, &wrong(&code)).await;
    expect_error(wrong_try, 401, "invalid_code").await;
    let user = expect_json(confirm(&app, &a.access, &code).await, 200).await;
    assert_eq!(user["phone"], new);
    assert_eq!(user["isPhoneVerified"], true);
    assert_eq!(user["id"], a.id);

    // The old number is told, and only told.
    let notice = fake
        .wait_for_message_to(&a.phone, old_before, Duration::from_secs(20))
        .await;
    assert!(notice.body.contains("was changed"), "{}", notice.body);
    assert!(!notice.body.contains(&new[2..]), "{}", notice.body);

    // The caller's session survives; the other one is over, access and refresh.
    expect_json(me(&app, &a.access).await, 200).await;
    expect_error(me(&app, &other_access).await, 401, "invalid_token").await;
    let r = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refreshToken": other_refresh}),
        )
        .await;
    // A revoked refresh token answers as a reused one (as after a 2FA change).
    expect_error(r, 401, "refresh_token_reused").await;

    sessions_ended_by_the_change(&app, &a.id).await;

    // The code is spent: a second confirm changes nothing.
    expect_error(confirm(&app, &a.access, &code).await, 410, "code_used").await;

    // The audit row names both numbers, masked only.
    let db = app.db_client().await;
    let row = db
        .query_one(
            "SELECT detail FROM audit_events WHERE kind = 'phone_changed' AND user_id = $1::text::uuid",
            &[&a.id],
        )
        .await
        .unwrap();
    let detail: Value = row.get(0);
    assert_eq!(
        detail,
        json!({"old": masked(&a.phone), "new": masked(&new)})
    );
    // And the login 2FA codes now go to the new number.
    let row = db
        .query_one(
            "SELECT phone, phone_verified FROM users WHERE id = $1::text::uuid",
            &[&a.id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        (new.clone(), true)
    );
}

#[tokio::test]
async fn a_number_another_account_verified_is_refused_at_start_and_at_confirm() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    verify_phone(&app, &fake, &a).await;
    let b = account(&app).await;
    verify_phone(&app, &fake, &b).await;

    // Refused at start: nothing is sent to b's number.
    let b_before = count_to(&fake, &b.phone);
    expect_error(start(&app, &a.access, &b.phone).await, 409, "phone_taken").await;
    // Its own number, and a number that is no number.
    expect_error(
        start(&app, &a.access, &a.phone).await,
        409,
        "phone_unchanged",
    )
    .await;
    let bad = expect_error(
        start(&app, &a.access, "not a phone").await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(bad["details"][0]["field"], "phone");

    // Free at start, taken before the confirm: d signs up with it and verifies it.
    let target = unique_phone();
    expect_json(start(&app, &a.access, &target).await, 202).await;
    let a_code = code_for(&fake, &target, 0).await;
    let mut signup = valid_signup();
    signup["phone"] = json!(target);
    let d_user = expect_json(app.signup(&signup).await, 201).await;
    let d = Account {
        email: signup["email"].as_str().unwrap().to_owned(),
        phone: target.clone(),
        password: signup["password"].as_str().unwrap().to_owned(),
        id: d_user["id"].as_str().unwrap().to_owned(),
        access: String::new(),
        refresh: String::new(),
    };
    let (d_access, _) = login(&app, &d).await;
    let d = Account {
        access: d_access,
        ..d
    };
    verify_phone(&app, &fake, &d).await;

    expect_error(confirm(&app, &a.access, &a_code).await, 409, "phone_taken").await;
    let still = expect_json(me(&app, &a.access).await, 200).await;
    assert_eq!(still["phone"], a.phone);
    assert_eq!(still["isPhoneVerified"], true);
    assert_eq!(
        count_to(&fake, &b.phone),
        b_before,
        "no SMS to a taken number"
    );
    // No notice went to a's number either: nothing changed.
    let db = app.db_client().await;
    let changed: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE kind = 'phone_changed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 0);
}

#[tokio::test]
async fn the_new_number_follows_the_destination_rules_of_sign_up() {
    let (app, _fake) = spawn_app_with_twilio_and(|c| {
        c.quotas.sms_destinations.regions = Some(vec!["US".to_owned()]);
    })
    .await;
    let a = account(&app).await;
    expect_error(
        start(&app, &a.access, "+44 7400 123456").await,
        422,
        "phone_country_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn with_2fa_on_a_change_needs_a_recent_login_with_a_second_factor() {
    let (app, fake) =
        spawn_app_with_twilio_and(|c| c.step_up_window = Duration::from_secs(60)).await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    // The password-only session that turned 2FA on is no step-up.
    expect_error(
        start(&app, &a.access, &unique_phone()).await,
        401,
        "step_up_required",
    )
    .await;
    let fresh = login_2fa(&app, &fake, &a).await;
    let first = unique_phone();
    expect_json(start(&app, &fresh, &first).await, 202).await;
    // Past the window, the same session is no longer enough.
    app.clock.advance(Duration::from_secs(61));
    expect_error(
        start(&app, &fresh, &unique_phone()).await,
        401,
        "step_up_required",
    )
    .await;
    // The code already sent still confirms (step-up guards the start).
    let code = code_for(&fake, &first, 0).await;
    let user = expect_json(confirm(&app, &fresh, &code).await, 200).await;
    assert_eq!(user["phone"], first);
    assert_eq!(user["twoFA"], true);
}
