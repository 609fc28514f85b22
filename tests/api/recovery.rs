//! Recovery codes (issue 16, item 1): shown once when 2FA turns on, stored only
//! as keyed hashes, each finishing one 2FA login instead of the SMS code with
//! amr `["pwd","otp"]`, replaced on request after a recent second factor,
//! deleted with 2FA, and guessed no faster than SMS codes.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::accounts::*;
use crate::fake_twilio::FakeTwilio;
use crate::helpers::*;

const LOGIN: &str = "/api/v1/account/login";
const VERIFY: &str = "/api/v1/account/login/verify";
const REPLACE: &str = "/api/v1/account/2fa/recovery-codes";

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Quotas generous enough for the many logins these tests start.
fn many_codes(c: &mut authgate::config::Config) {
    c.quotas.sms_per_phone_hour = 1000;
    c.quotas.sms_per_phone_day = 1000;
    c.quotas.sms_per_account_hour = 1000;
}

/// Starts a 2FA login: the flow id and the SMS code.
async fn start_flow(app: &TestApp, fake: &FakeTwilio, a: &Account) -> (String, String) {
    let before = count_to(fake, &a.phone);
    let r = app
        .post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["status"], "otp_required", "{body}");
    let code = code_for(fake, &a.phone, before).await;
    (body["flowId"].as_str().unwrap().to_owned(), code)
}

async fn recover(app: &TestApp, flow: &str, code: &str) -> reqwest::Response {
    app.post_json(VERIFY, &json!({"flowId": flow, "recoveryCode": code}))
        .await
}

/// A code of the alphabet that is surely not one of `codes` (differs in the
/// first character from each of them would be too strict; uniqueness is enough).
fn not_one_of(codes: &[String]) -> String {
    let mut candidate = "zzzzz-zzzzz".to_owned();
    let mut n = 0u8;
    while codes.iter().any(|c| c == &candidate) {
        n += 1;
        candidate = format!("zzzzz-zzzz{}", char::from(b'2' + n));
    }
    candidate
}

async fn rows(app: &TestApp, user: &str) -> Vec<(Vec<u8>, bool)> {
    let db = app.db_client().await;
    db.query(
        "SELECT code_hash, used_at IS NOT NULL FROM recovery_codes WHERE user_id = $1::text::uuid ORDER BY id",
        &[&user],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn audit(app: &TestApp, user: &str, kind: &str) -> Vec<Value> {
    let db = app.db_client().await;
    db.query(
        "SELECT detail FROM audit_events WHERE user_id = $1::text::uuid AND kind = $2 ORDER BY id",
        &[&user, &kind],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Every text the database holds about the account, as one string.
async fn database_text(app: &TestApp) -> String {
    let db = app.db_client().await;
    let mut out = String::new();
    for table in [
        "recovery_codes",
        "audit_events",
        "users",
        "sessions",
        "login_flows",
    ] {
        let rows = db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap();
        for r in rows {
            out.push_str(&r.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

fn canonical(code: &str) -> String {
    code.replace('-', "").to_lowercase()
}

#[tokio::test]
async fn enabling_2fa_answers_ten_codes_stored_only_as_keyed_hashes() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    assert_eq!(codes.len(), 10);
    for c in &codes {
        assert_eq!(c.len(), 11, "{c}");
        assert_eq!(&c[5..6], "-", "{c}");
        assert!(
            c.chars()
                .filter(|ch| *ch != '-')
                .all(|ch| "23456789abcdefghjkmnpqrstvwxyz".contains(ch)),
            "{c}"
        );
    }
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);

    // Ten unused rows, each the keyed hash bound to this user.
    let stored = rows(&app, &a.id).await;
    assert_eq!(stored.len(), 10);
    assert!(stored.iter().all(|(_, used)| !used));
    let user = uuid::Uuid::parse_str(&a.id).unwrap();
    let keys = app.state.keys();
    let mut expected: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| keys.recovery_hash(&user, &canonical(c)).to_vec())
        .collect();
    let mut got: Vec<Vec<u8>> = stored.into_iter().map(|(h, _)| h).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // Bound to the user: another account's hash of the same code differs.
    let other = keys.recovery_hash(&uuid::Uuid::new_v4(), &canonical(&codes[0]));
    assert!(!got.contains(&other.to_vec()));

    // No code, in either form, anywhere in the database.
    let text = database_text(&app).await;
    assert!(text.contains(&a.id), "the dump covers the account");
    for c in &codes {
        assert!(!text.contains(c.as_str()), "{c} stored");
        assert!(!text.contains(&canonical(c)), "{c} stored");
    }

    // Other confirmations answer the bare user; /me never shows codes.
    let r = app
        .http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    let me = expect_json(r, 200).await;
    assert!(me.get("recoveryCodes").is_none(), "{me}");
}

#[tokio::test]
async fn a_recovery_code_finishes_a_2fa_login_once_with_amr_pwd_otp() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;

    // Typed in capitals with a space instead of the hyphen: the same code.
    let (flow, _sms) = start_flow(&app, &fake, &a).await;
    let typed = codes[3].to_uppercase().replace('-', " ");
    let t = expect_json(recover(&app, &flow, &typed).await, 200).await;
    assert_eq!(t["status"], "authenticated");
    assert_eq!(t["recoveryCodesLeft"], 9, "{t}");
    assert!(t["deviceToken"].is_string(), "{t}");
    let c = claims(t["accessToken"].as_str().unwrap());
    assert_eq!(c["amr"], json!(["pwd", "otp"]));
    // The session says so too, and the token works.
    let db = app.db_client().await;
    let amr: Vec<String> = db
        .query_one(
            "SELECT amr FROM sessions WHERE id = $1::text::uuid",
            &[&c["sid"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(amr, ["pwd", "otp"]);
    let me = app
        .http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(t["accessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    expect_json(me, 200).await;

    // Audited: how many remain, never the code; the login says how.
    let used = audit(&app, &a.id, "recovery_code_used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["remaining"], 9, "{}", used[0]);
    assert_eq!(used[0]["flowId"], flow.as_str(), "{}", used[0]);
    let logins = audit(&app, &a.id, "login_succeeded").await;
    assert_eq!(logins.last().unwrap()["amr"], json!(["pwd", "otp"]));
    let stored = rows(&app, &a.id).await;
    assert_eq!(stored.iter().filter(|(_, used)| *used).count(), 1);

    // The same code again, in a new login: a wrong code.
    app.clock.advance(Duration::from_secs(31));
    let (flow2, sms2) = start_flow(&app, &fake, &a).await;
    let body = expect_error(recover(&app, &flow2, &codes[3]).await, 401, "invalid_code").await;
    assert_eq!(body["attemptsLeft"], 4, "{body}");
    let failed = audit(&app, &a.id, "code_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["purpose"], "recovery", "{}", failed[0]);
    // That login goes on with the SMS code, whose tokens carry no count.
    let t = expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow2, "code": sms2}))
            .await,
        200,
    )
    .await;
    assert!(t.get("recoveryCodesLeft").is_none(), "{t}");
    assert_eq!(
        claims(t["accessToken"].as_str().unwrap())["amr"],
        json!(["pwd", "sms"])
    );
}

#[tokio::test]
async fn each_of_the_ten_codes_works_once_and_the_count_goes_down() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    for (i, code) in codes.iter().enumerate() {
        app.clock.advance(Duration::from_secs(31));
        let (flow, _) = start_flow(&app, &fake, &a).await;
        let t = expect_json(recover(&app, &flow, code).await, 200).await;
        assert_eq!(t["recoveryCodesLeft"], 9 - i, "{t}");
    }
    assert!(rows(&app, &a.id).await.iter().all(|(_, used)| *used));
    // None is left: every one of them is now a wrong code.
    app.clock.advance(Duration::from_secs(31));
    let (flow, _) = start_flow(&app, &fake, &a).await;
    expect_error(recover(&app, &flow, &codes[0]).await, 401, "invalid_code").await;
    let remaining: Vec<i64> = audit(&app, &a.id, "recovery_code_used")
        .await
        .iter()
        .map(|d| d["remaining"].as_i64().unwrap())
        .collect();
    assert_eq!(remaining, (0..10).rev().collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_recovery_code_still_works_after_the_sms_code_expired() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.otp_expiration = Duration::from_secs(60);
        c.login_flow_ttl = Duration::from_secs(600);
    })
    .await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let (flow, sms) = start_flow(&app, &fake, &a).await;
    app.clock.advance(Duration::from_secs(120));
    expect_error(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": sms}))
            .await,
        410,
        "code_expired",
    )
    .await;
    let t = expect_json(recover(&app, &flow, &codes[0]).await, 200).await;
    assert_eq!(t["recoveryCodesLeft"], 9);
}

#[tokio::test]
async fn verify_takes_exactly_one_of_code_and_recovery_code() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let (flow, sms) = start_flow(&app, &fake, &a).await;

    let both = json!({"flowId": flow, "code": sms, "recoveryCode": codes[0]});
    let body = expect_error(app.post_json(VERIFY, &both).await, 400, "validation_failed").await;
    assert_eq!(body["details"][0]["field"], "recoveryCode", "{body}");

    let neither = json!({"flowId": flow});
    let body = expect_error(
        app.post_json(VERIFY, &neither).await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(body["details"][0]["field"], "code", "{body}");
    assert!(body["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("recoveryCode"));

    for bad in [
        json!("abcde-fghj"),
        json!("0oO1l-iIuUu"),
        json!(12345),
        json!(""),
    ] {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow, "recoveryCode": bad}))
            .await;
        let body = expect_error(r, 400, "validation_failed").await;
        assert_eq!(body["details"][0]["field"], "recoveryCode", "{body}");
        assert_eq!(body["details"].as_array().unwrap().len(), 1, "{body}");
    }
    // Nothing was tried: the right code still works and nothing was counted.
    assert!(audit(&app, &a.id, "code_failed").await.is_empty());
    let t = expect_json(recover(&app, &flow, &codes[0]).await, 200).await;
    assert_eq!(t["recoveryCodesLeft"], 9);
}

#[tokio::test]
async fn replacing_needs_2fa_and_a_recent_second_factor_and_ends_the_old_set() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    // Without 2FA: 409.
    let plain = account(&app).await;
    expect_error(
        post_auth(&app, REPLACE, &plain.access, None).await,
        409,
        "two_fa_not_enabled",
    )
    .await;
    assert!(rows(&app, &plain.id).await.is_empty());

    let a = account(&app).await;
    let old = enable_2fa_with_codes(&app, &fake, &a).await;
    // The password-only session that turned 2FA on is no second factor.
    expect_error(
        post_auth(&app, REPLACE, &a.access, None).await,
        401,
        "step_up_required",
    )
    .await;
    // Unauthenticated: 401 invalid_token.
    expect_error(
        app.post_json(REPLACE, &json!({})).await,
        401,
        "invalid_token",
    )
    .await;

    // A fresh SMS login may.
    let (flow, sms) = start_flow(&app, &fake, &a).await;
    let t = expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": sms}))
            .await,
        200,
    )
    .await;
    let access = t["accessToken"].as_str().unwrap().to_owned();
    let body = expect_json(post_auth(&app, REPLACE, &access, None).await, 200).await;
    let new = strings(&body["recoveryCodes"]);
    assert_eq!(new.len(), 10);
    assert!(new.iter().all(|c| !old.contains(c)));
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let replaced = audit(&app, &a.id, "recovery_codes_replaced").await;
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0]["replaced"], 10, "{}", replaced[0]);
    assert_eq!(replaced[0]["issued"], 10, "{}", replaced[0]);
    assert_eq!(rows(&app, &a.id).await.len(), 10);

    // The old set stops working at once, the new one works.
    app.clock.advance(Duration::from_secs(31));
    let (flow, _) = start_flow(&app, &fake, &a).await;
    expect_error(recover(&app, &flow, &old[0]).await, 401, "invalid_code").await;
    let t2 = expect_json(recover(&app, &flow, &new[0]).await, 200).await;
    assert_eq!(t2["recoveryCodesLeft"], 9);

    // A login with a recovery code is a second factor too.
    let otp_access = t2["accessToken"].as_str().unwrap().to_owned();
    let body = expect_json(post_auth(&app, REPLACE, &otp_access, None).await, 200).await;
    let newest = strings(&body["recoveryCodes"]);
    assert_eq!(rows(&app, &a.id).await.len(), 10);

    // Past the step-up window (10 minutes), even after a refresh: 401.
    app.clock.advance(Duration::from_secs(11 * 60));
    expect_error(
        post_auth(&app, REPLACE, &otp_access, None).await,
        401,
        "step_up_required",
    )
    .await;
    let refreshed = expect_json(
        app.post_json(
            "/api/v1/auth/refresh",
            &json!({"refreshToken": t2["refreshToken"]}),
        )
        .await,
        200,
    )
    .await;
    expect_error(
        post_auth(
            &app,
            REPLACE,
            refreshed["accessToken"].as_str().unwrap(),
            None,
        )
        .await,
        401,
        "step_up_required",
    )
    .await;
    // The refused attempts changed nothing.
    let (flow, _) = start_flow(&app, &fake, &a).await;
    let t3 = expect_json(recover(&app, &flow, &newest[5]).await, 200).await;
    assert_eq!(t3["recoveryCodesLeft"], 9);
}

#[tokio::test]
async fn disabling_2fa_deletes_the_codes_and_enabling_again_gives_a_new_set() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    let first = enable_2fa_with_codes(&app, &fake, &a).await;
    assert_eq!(rows(&app, &a.id).await.len(), 10);
    let before = count_to(&fake, &a.phone);
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await,
        202,
    )
    .await;
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
    assert!(user.get("recoveryCodes").is_none(), "{user}");
    assert!(rows(&app, &a.id).await.is_empty());

    // On again: ten new codes; the first set stays dead.
    app.clock.advance(Duration::from_secs(31));
    let before = count_to(&fake, &a.phone);
    expect_json(
        post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await,
        202,
    )
    .await;
    let code = code_for(&fake, &a.phone, before).await;
    let body = expect_json(
        post_auth(
            &app,
            "/api/v1/account/2fa/enable/confirm",
            &a.access,
            Some(json!({"code": code})),
        )
        .await,
        200,
    )
    .await;
    let second = strings(&body["recoveryCodes"]);
    assert_eq!(rows(&app, &a.id).await.len(), 10);
    app.clock.advance(Duration::from_secs(31));
    let (flow, _) = start_flow(&app, &fake, &a).await;
    expect_error(recover(&app, &flow, &first[0]).await, 401, "invalid_code").await;
    expect_json(recover(&app, &flow, &second[0]).await, 200).await;
}

#[tokio::test]
async fn wrong_recovery_codes_cost_flow_tries_and_lock_code_entry_at_the_ceiling() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        many_codes(c);
        c.quotas.code_failures_max = 7;
    })
    .await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let wrong_code = not_one_of(&codes);

    // A login's five tries: four answered with what is left, the fifth locks it.
    let (flow1, _) = start_flow(&app, &fake, &a).await;
    for left in (1..5).rev() {
        let body = expect_error(
            recover(&app, &flow1, &wrong_code).await,
            401,
            "invalid_code",
        )
        .await;
        assert_eq!(body["attemptsLeft"], left, "{body}");
    }
    expect_error(recover(&app, &flow1, &wrong_code).await, 410, "flow_locked").await;
    // A right code in a locked login gets nothing, and is not spent.
    expect_error(recover(&app, &flow1, &codes[0]).await, 410, "flow_locked").await;
    assert!(rows(&app, &a.id).await.iter().all(|(_, used)| !used));

    // The account ceiling (7 here) counts them all: two more lock code entry.
    app.clock.advance(Duration::from_secs(31));
    let (flow2, sms2) = start_flow(&app, &fake, &a).await;
    expect_error(
        recover(&app, &flow2, &wrong_code).await,
        401,
        "invalid_code",
    )
    .await;
    let r = recover(&app, &flow2, &wrong_code).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "code_entry_locked").await;
    // Locked: a right recovery code and the right SMS code are not compared.
    expect_error(
        recover(&app, &flow2, &codes[0]).await,
        429,
        "code_entry_locked",
    )
    .await;
    expect_error(
        app.post_json(VERIFY, &json!({"flowId": flow2, "code": sms2}))
            .await,
        429,
        "code_entry_locked",
    )
    .await;
    assert!(rows(&app, &a.id).await.iter().all(|(_, used)| !used));
    let failed = audit(&app, &a.id, "code_failed").await;
    assert_eq!(failed.len(), 7);
    assert!(failed.iter().all(|d| d["purpose"] == "recovery"));
    let locked = audit(&app, &a.id, "locked_out").await;
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0]["purpose"], "recovery", "{}", locked[0]);

    // After the lock (1 hour by default), a right recovery code works and
    // resets the count.
    app.clock.advance(Duration::from_secs(3601));
    let (flow3, _) = start_flow(&app, &fake, &a).await;
    let t = expect_json(recover(&app, &flow3, &codes[0]).await, 200).await;
    assert_eq!(t["recoveryCodesLeft"], 9);
    let db = app.db_client().await;
    let failures: i32 = db
        .query_one(
            "SELECT code_failures FROM users WHERE id = $1::text::uuid",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 0);
}

/// Two processes on one database, the same code sent at once: to two flows of
/// the user (one on each process), then to one flow through both processes.
/// Exactly one login succeeds each time, and only one session is made.
#[tokio::test]
async fn the_same_code_at_once_on_two_processes_succeeds_once() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let other = spawn_on(app.db.clone(), many_codes).await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let db = app.db_client().await;
    let otp_sessions = || async {
        db.query_one(
            "SELECT count(*) FROM sessions WHERE user_id = $1::text::uuid AND amr = '{pwd,otp}'",
            &[&a.id],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };

    for (round, code) in codes.iter().enumerate().take(3) {
        app.clock.advance(Duration::from_secs(31));
        let (flow1, _) = start_flow(&app, &fake, &a).await;
        app.clock.advance(Duration::from_secs(31));
        let (flow2, _) = start_flow(&app, &fake, &a).await;
        let (r1, r2) = tokio::join!(recover(&app, &flow1, code), recover(&other, &flow2, code));
        let statuses = [r1.status().as_u16(), r2.status().as_u16()];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "two flows, round {round}: {statuses:?}"
        );
        assert!(statuses.contains(&401), "{statuses:?}");
    }
    assert_eq!(otp_sessions().await, 3);

    for (round, code) in codes.iter().enumerate().take(6).skip(3) {
        app.clock.advance(Duration::from_secs(31));
        let (flow, _) = start_flow(&app, &fake, &a).await;
        let (r1, r2) = tokio::join!(recover(&app, &flow, code), recover(&other, &flow, code));
        let statuses = [r1.status().as_u16(), r2.status().as_u16()];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "one flow, round {round}: {statuses:?}"
        );
        // The loser found the code spent (401) or the flow finished (410).
        assert!(
            statuses.contains(&401) || statuses.contains(&410),
            "{statuses:?}"
        );
    }
    assert_eq!(otp_sessions().await, 6);
    let used = rows(&app, &a.id).await;
    assert_eq!(used.iter().filter(|(_, u)| *u).count(), 6);
    assert_eq!(audit(&app, &a.id, "recovery_code_used").await.len(), 6);
}

#[tokio::test]
async fn recovery_codes_never_reach_the_logs() {
    let logs = crate::logs::captured_logs();
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let (flow, _) = start_flow(&app, &fake, &a).await;
    let t = expect_json(recover(&app, &flow, &codes[0]).await, 200).await;
    let access = t["accessToken"].as_str().unwrap();
    let body = expect_json(post_auth(&app, REPLACE, access, None).await, 200).await;
    let new = strings(&body["recoveryCodes"]);
    app.clock.advance(Duration::from_secs(31));
    let (flow, _) = start_flow(&app, &fake, &a).await;
    expect_error(recover(&app, &flow, &codes[1]).await, 401, "invalid_code").await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("recovery code used"),
        "logs were not captured"
    );
    for c in codes.iter().chain(&new) {
        assert!(
            !text.contains(c.as_str()),
            "a recovery code appears in the logs"
        );
        assert!(
            !text.contains(&canonical(c)),
            "a recovery code appears in the logs"
        );
    }
}

#[tokio::test]
async fn a_recovery_code_login_retires_the_flows_sms_code_so_the_next_login_is_not_delayed() {
    let (app, fake) = spawn_app_with_twilio_and(many_codes).await;
    let a = account(&app).await;
    let codes = enable_2fa_with_codes(&app, &fake, &a).await;
    let (flow, sms) = start_flow(&app, &fake, &a).await;
    expect_json(recover(&app, &flow, &codes[0]).await, 200).await;
    // The SMS code of that flow is spent with it: no longer live ...
    let db = app.db_client().await;
    let state: String = db
        .query_one(
            "SELECT state FROM otp_codes WHERE flow_id = $1::text::uuid",
            &[&flow],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "superseded");
    // ... so it cannot finish the flow, and a second login right away (another
    // device) gets its code at once instead of 429 for the resend cooldown.
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": sms}))
        .await;
    assert_eq!(r.status(), 410);
    let (second, code) = start_flow(&app, &fake, &a).await;
    let t = expect_json(
        app.post_json(VERIFY, &json!({"flowId": second, "code": code}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        claims(t["accessToken"].as_str().unwrap())["amr"],
        json!(["pwd", "sms"])
    );
}
