//! Shared steps for the OTP and login tests: a signed-up user with a token, and
//! reading the codes the fake Twilio captured.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_twilio::FakeTwilio;
use crate::helpers::*;

pub struct Account {
    pub email: String,
    pub phone: String,
    pub password: String,
    pub id: String,
    pub access: String,
    pub refresh: String,
}

/// Signs up and logs in (password only).
pub async fn account(app: &TestApp) -> Account {
    let body = valid_signup();
    let user = expect_json(app.signup(&body).await, 201).await;
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": body["email"], "password": body["password"]}),
        )
        .await,
        200,
    )
    .await;
    Account {
        email: body["email"].as_str().unwrap().to_owned(),
        phone: user["phone"].as_str().unwrap().to_owned(),
        password: body["password"].as_str().unwrap().to_owned(),
        id: user["id"].as_str().unwrap().to_owned(),
        access: tokens["accessToken"].as_str().unwrap().to_owned(),
        refresh: tokens["refreshToken"].as_str().unwrap().to_owned(),
    }
}

/// The 200 answer of a login with the account's password: tokens, or the
/// `otp_required` step of a 2FA account.
pub async fn password_login(app: &TestApp, a: &Account) -> Value {
    let r = app
        .post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await;
    expect_json(r, 200).await
}

/// Logs the account in again (password only) and returns a fresh access token.
pub async fn relogin(app: &TestApp, a: &Account) -> String {
    let t = password_login(app, a).await;
    t["accessToken"].as_str().unwrap().to_owned()
}

/// POST with a bearer token and an optional JSON body.
pub async fn post_auth(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// The code in the `nth` (0-based) message the fake Twilio got for `phone`.
pub async fn code_for(fake: &FakeTwilio, phone: &str, nth: usize) -> String {
    let msg = fake
        .wait_for_message_to(phone, nth, Duration::from_secs(20))
        .await;
    msg.body
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() >= 4)
        .unwrap_or_else(|| panic!("no code in {:?}", msg.body))
        .to_owned()
}

/// A code that is surely wrong (differs from `code` in every digit).
pub fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
        .collect()
}

/// Verifies the account's phone through the API.
pub async fn verify_phone(app: &TestApp, fake: &FakeTwilio, a: &Account) {
    let before = fake.messages().iter().filter(|m| m.to == a.phone).count();
    let r = post_auth(app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(fake, &a.phone, before).await;
    let r = post_auth(
        app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    let user = expect_json(r, 200).await;
    assert_eq!(user["isPhoneVerified"], true);
}

/// Verifies the phone and turns 2FA on.
pub async fn enable_2fa(app: &TestApp, fake: &FakeTwilio, a: &Account) {
    verify_phone(app, fake, a).await;
    let before = fake.messages().iter().filter(|m| m.to == a.phone).count();
    let r = post_auth(app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(fake, &a.phone, before).await;
    let r = post_auth(
        app,
        "/api/v1/account/2fa/enable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    let user = expect_json(r, 200).await;
    assert_eq!(user["twoFA"], true);
}

/// A 2FA login (password, then the SMS code): its access token.
pub async fn login_2fa(app: &TestApp, fake: &FakeTwilio, a: &Account) -> String {
    let before = count_to(fake, &a.phone);
    let flow = password_login(app, a).await;
    assert_eq!(flow["status"], "otp_required");
    let code = code_for(fake, &a.phone, before).await;
    let t = expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "code": code}),
        )
        .await,
        200,
    )
    .await;
    t["accessToken"].as_str().unwrap().to_owned()
}

pub fn count_to(fake: &FakeTwilio, phone: &str) -> usize {
    fake.messages().iter().filter(|m| m.to == phone).count()
}

/// The status of `GET /account/me` with `token`.
pub async fn me_status(app: &TestApp, token: &str) -> u16 {
    app.http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// Verifies the phone and turns 2FA on; the answer's recovery codes.
pub async fn enable_2fa_with_codes(app: &TestApp, fake: &FakeTwilio, a: &Account) -> Vec<String> {
    verify_phone(app, fake, a).await;
    let before = count_to(fake, &a.phone);
    expect_json(
        post_auth(app, "/api/v1/account/2fa/enable", &a.access, None).await,
        202,
    )
    .await;
    let code = code_for(fake, &a.phone, before).await;
    let r = post_auth(
        app,
        "/api/v1/account/2fa/enable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["twoFA"], true, "{body}");
    assert_eq!(body["id"], a.id.as_str(), "{body}");
    assert_eq!(body["isPhoneVerified"], true, "{body}");
    strings(&body["recoveryCodes"])
}

/// The account's ended sessions ended in the statement that made its latest
/// change (one transaction, one time: `users.updated_at`), so no connection
/// lost after the change's commit can leave them alive.
pub async fn sessions_ended_by_the_change(app: &TestApp, user_id: &str) {
    let db = app.db_client().await;
    let id: uuid::Uuid = user_id.parse().unwrap();
    let row = db
        .query_one(
            "SELECT (SELECT updated_at FROM users WHERE id = $1),
                    (SELECT array_agg(DISTINCT revoked_at) FROM sessions
                     WHERE user_id = $1 AND revoked_at IS NOT NULL)",
            &[&id],
        )
        .await
        .unwrap();
    let changed: chrono::DateTime<chrono::Utc> = row.get(0);
    let ended: Option<Vec<chrono::DateTime<chrono::Utc>>> = row.get(1);
    assert_eq!(
        ended,
        Some(vec![changed]),
        "sessions ended apart from the change"
    );
}
