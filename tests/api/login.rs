//! Password login, 2FA login through a FlowActor, tokens, refresh and logout.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

const LOGIN: &str = "/api/v1/account/login";
const VERIFY: &str = "/api/v1/account/login/verify";
const RESEND: &str = "/api/v1/account/login/resend";

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn login(app: &TestApp, a: &Account) -> reqwest::Response {
    app.post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.url("/api/v1/account/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn password_login_without_2fa_returns_pwd_tokens() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let t = expect_json(login(&app, &a).await, 200).await;
    assert_eq!(t["status"], "authenticated");
    assert_eq!(t["tokenType"], "Bearer");
    assert_eq!(t["expiresIn"], 900);
    let c = claims(t["accessToken"].as_str().unwrap());
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(c["sub"], a.id);
    assert_eq!(c["iss"], "authgate");
    assert_eq!(c["aud"], "authgate");
    assert!(c["jti"].is_string());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
    let user = expect_json(me(&app, t["accessToken"].as_str().unwrap()).await, 200).await;
    assert_eq!(user["email"], a.email.as_str());
    assert!(user.get("passwordHash").is_none());
    // E-mail case does not matter.
    let r = app
        .post_json(
            LOGIN,
            &json!({"email": a.email.to_uppercase(), "password": a.password}),
        )
        .await;
    expect_json(r, 200).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_alike() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let wrong_pw = app
        .post_json(
            LOGIN,
            &json!({"email": a.email, "password": "not-the-passw0rd"}),
        )
        .await;
    let unknown = app
        .post_json(
            LOGIN,
            &json!({"email": "nobody@example.com", "password": a.password}),
        )
        .await;
    let malformed = app
        .post_json(
            LOGIN,
            &json!({"email": "not-an-email", "password": a.password}),
        )
        .await;
    let mut bodies = Vec::new();
    for r in [wrong_pw, unknown, malformed] {
        let mut b = expect_error(r, 401, "invalid_credentials").await;
        b.as_object_mut().unwrap().remove("timestamp");
        bodies.push(b);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    let r = app.post_json(LOGIN, &json!({"email": a.email})).await;
    expect_error(r, 400, "validation_failed").await;
}

#[tokio::test]
async fn two_fa_login_needs_the_sms_code_before_any_token() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;

    let before = count_to(&fake, &a.phone);
    let body = expect_json(login(&app, &a).await, 200).await;
    assert_eq!(body["status"], "otp_required");
    for forbidden in ["accessToken", "refreshToken"] {
        assert!(body.get(forbidden).is_none(), "{body}");
    }
    let hint = body["phoneHint"].as_str().unwrap();
    assert!(hint.ends_with(&a.phone[a.phone.len() - 2..]));
    assert!(!hint.contains(&a.phone[2..8]), "{hint}");
    assert!(body["expiresAt"].is_string() && body["resendAfter"].is_string());
    let flow = body["flowId"].as_str().unwrap().to_owned();
    assert_eq!(app.state.flows().live(), 1);

    let code = code_for(&fake, &a.phone, before).await;
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": wrong(&code)}))
        .await;
    let err = expect_error(r, 401, "invalid_code").await;
    assert_eq!(err["attemptsLeft"], 4);
    let t = expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": code}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        claims(t["accessToken"].as_str().unwrap())["amr"],
        json!(["pwd", "sms"])
    );
    expect_json(me(&app, t["accessToken"].as_str().unwrap()).await, 200).await;

    // The flow is over: its actor is gone and the flow answers 410.
    wait_until(|| app.state.flows().live() == 0).await;
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
        .await;
    expect_error(r, 410, "flow_finished").await;
}

async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

async fn start_2fa_login(
    app: &TestApp,
    fake: &crate::fake_twilio::FakeTwilio,
) -> (Account, String, String) {
    let a = account(app).await;
    enable_2fa(app, fake, &a).await;
    let before = count_to(fake, &a.phone);
    let body = expect_json(login(app, &a).await, 200).await;
    let code = code_for(fake, &a.phone, before).await;
    (a, body["flowId"].as_str().unwrap().to_owned(), code)
}

#[tokio::test]
async fn five_wrong_codes_lock_the_flow() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (_a, flow, code) = start_2fa_login(&app, &fake).await;
    for left in (1..5).rev() {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow, "code": wrong(&code)}))
            .await;
        assert_eq!(
            expect_error(r, 401, "invalid_code").await["attemptsLeft"],
            left
        );
    }
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": wrong(&code)}))
        .await;
    expect_error(r, 410, "flow_locked").await;
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
        .await;
    expect_error(r, 410, "flow_locked").await;
    wait_until(|| app.state.flows().live() == 0).await;
}

#[tokio::test]
async fn expired_flows_and_unknown_flows_are_410() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (_a, flow, code) = start_2fa_login(&app, &fake).await;
    app.clock.advance(Duration::from_secs(15 * 60));
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
        .await;
    expect_error(r, 410, "flow_expired").await;
    let r = app
        .post_json(
            VERIFY,
            &json!({"flowId": uuid::Uuid::new_v4(), "code": code}),
        )
        .await;
    expect_error(r, 410, "flow_expired").await;
    let r = app
        .post_json(VERIFY, &json!({"flowId": "nope", "code": "12"}))
        .await;
    let body = expect_error(r, 400, "validation_failed").await;
    assert_eq!(body["details"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_expired_code_in_a_live_flow_is_410_until_resent() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (a, flow, code) = start_2fa_login(&app, &fake).await;
    app.clock.advance(Duration::from_secs(10 * 60));
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
        .await;
    expect_error(r, 410, "code_expired").await;
    let before = count_to(&fake, &a.phone);
    expect_json(app.post_json(RESEND, &json!({"flowId": flow})).await, 202).await;
    let fresh = code_for(&fake, &a.phone, before).await;
    expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": fresh}))
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn resend_waits_for_the_cooldown_and_is_capped() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (a, flow, first) = start_2fa_login(&app, &fake).await;
    let r = app.post_json(RESEND, &json!({"flowId": flow})).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "too_many_requests").await;

    let mut last = first.clone();
    for i in 0..3 {
        app.clock.advance(Duration::from_secs(31));
        let before = count_to(&fake, &a.phone);
        let body = expect_json(app.post_json(RESEND, &json!({"flowId": flow})).await, 202).await;
        assert!(body["expiresAt"].is_string() && body["resendAfter"].is_string());
        last = code_for(&fake, &a.phone, before).await;
        if i < 2 {
            // Straight away again: too soon, by the app's clock (not the wall clock).
            let r = app.post_json(RESEND, &json!({"flowId": flow})).await;
            assert_eq!(r.headers()["retry-after"], "30");
            expect_error(r, 429, "too_many_requests").await;
        }
    }
    app.clock.advance(Duration::from_secs(31));
    let r = app.post_json(RESEND, &json!({"flowId": flow})).await;
    expect_error(r, 429, "resend_limit_reached").await;
    if first != last {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow, "code": first}))
            .await;
        expect_error(r, 401, "invalid_code").await;
    }
    expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": last}))
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn a_flow_started_on_one_instance_finishes_on_another() {
    let (app, fake) = spawn_app_with_twilio().await;
    let second = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()))
    })
    .await;
    let (_a, flow, code) = start_2fa_login(&app, &fake).await;
    assert_eq!(second.state.flows().live(), 0);
    let r = second
        .post_json(VERIFY, &json!({"flowId": flow, "code": wrong(&code)}))
        .await;
    assert_eq!(
        expect_error(r, 401, "invalid_code").await["attemptsLeft"],
        4
    );
    // Back on the first: it sees the attempt the second counted.
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": wrong(&code)}))
        .await;
    assert_eq!(
        expect_error(r, 401, "invalid_code").await["attemptsLeft"],
        3
    );
    let t = expect_json(
        second
            .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        claims(t["accessToken"].as_str().unwrap())["amr"],
        json!(["pwd", "sms"])
    );
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow, "code": code}))
        .await;
    expect_error(r, 410, "flow_finished").await;
}

#[tokio::test]
async fn fifty_concurrent_verifies_give_exactly_one_set_of_tokens() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (_a, flow, code) = start_2fa_login(&app, &fake).await;
    let body = json!({"flowId": flow, "code": code});
    let results = futures::future::join_all((0..50).map(|_| app.post_json(VERIFY, &body))).await;
    let mut ok = 0;
    for r in results {
        match r.status().as_u16() {
            200 => ok += 1,
            _ => {
                expect_error(r, 410, "flow_finished").await;
            }
        }
    }
    assert_eq!(ok, 1);
    wait_until(|| app.state.flows().live() == 0).await;
    let db = app.db_client().await;
    let sms_families: i64 = db
        .query_one(
            "SELECT count(DISTINCT family_id) FROM refresh_tokens WHERE 'sms' = ANY(amr)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sms_families, 1);
}

#[tokio::test]
async fn flow_actors_end_with_their_flows() {
    let (app, fake) = spawn_app_with_twilio().await;
    let mut flows = Vec::new();
    for _ in 0..3 {
        flows.push(start_2fa_login(&app, &fake).await);
    }
    assert_eq!(app.state.flows().live(), 3);
    let (_, f0, c0) = &flows[0];
    expect_json(
        app.post_json(VERIFY, &json!({"flowId": f0, "code": c0}))
            .await,
        200,
    )
    .await;
    let (_, f1, c1) = &flows[1];
    for _ in 0..5 {
        let _ = app
            .post_json(VERIFY, &json!({"flowId": f1, "code": wrong(c1)}))
            .await;
    }
    wait_until(|| app.state.flows().live() == 1).await;
    // The third expires: its timer stops the actor once the clock passes its expiry.
    app.clock.advance(Duration::from_secs(15 * 60));
    let (_, f2, c2) = &flows[2];
    let r = app
        .post_json(VERIFY, &json!({"flowId": f2, "code": c2}))
        .await;
    expect_error(r, 410, "flow_expired").await;
    wait_until(|| app.state.flows().live() == 0).await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let t1 = expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
            .await,
        200,
    )
    .await;
    let r1 = t1["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(r1, a.refresh);
    assert_eq!(
        claims(t1["accessToken"].as_str().unwrap())["amr"],
        json!(["pwd"])
    );
    let t2 = expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": r1}))
            .await,
        200,
    )
    .await;
    let r2 = t2["refreshToken"].as_str().unwrap().to_owned();
    // Reusing r1 (already rotated) after the retry grace window revokes the
    // family, r2 included.
    app.clock.advance(Duration::from_secs(11));
    let r = app
        .post_json("/api/v1/auth/refresh", &json!({"refreshToken": r1}))
        .await;
    expect_error(r, 401, "refresh_token_reused").await;
    let r = app
        .post_json("/api/v1/auth/refresh", &json!({"refreshToken": r2}))
        .await;
    expect_error(r, 401, "refresh_token_reused").await;
    for bad in [
        json!({"refreshToken": "garbage"}),
        json!({"refreshToken": "A".repeat(43)}),
    ] {
        let r = app.post_json("/api/v1/auth/refresh", &bad).await;
        expect_error(r, 401, "invalid_refresh_token").await;
    }
    let r = app.post_json("/api/v1/auth/refresh", &json!({})).await;
    expect_error(r, 400, "validation_failed").await;
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let app = spawn_app().await;
    let a = account(&app).await;
    app.clock.advance(Duration::from_secs(30 * 86_400));
    let r = app
        .post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
        .await;
    expect_error(r, 401, "invalid_refresh_token").await;
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let r = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .json(&json!({"refreshToken": a.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
        .await;
    expect_error(r, 401, "refresh_token_reused").await;

    // With only a bearer token: every refresh token of the user goes.
    let other = expect_json(login(&app, &a).await, 200).await;
    let r = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(other["accessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refreshToken": other["refreshToken"]}),
        )
        .await;
    expect_error(r, 401, "refresh_token_reused").await;
    let r = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_token").await;
}

#[tokio::test]
async fn every_bad_access_token_is_401() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let parts: Vec<&str> = a.access.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let mut forged_claims = claims(&a.access);
    forged_claims["sub"] = json!(uuid::Uuid::new_v4());
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged_claims.to_string()),
        parts[2]
    );
    let other_key = {
        let other = spawn_app_with(|c| {
            c.jwt_secret = Some(secrecy::SecretString::from(
                "another-secret-another-secret-42".to_owned(),
            ))
        })
        .await;
        account(&other).await.access
    };
    let bad = [
        format!("{none_header}.{}.", parts[1]),
        forged,
        other_key,
        "garbage".to_owned(),
        String::new(),
    ];
    for token in bad {
        let r = me(&app, &token).await;
        expect_error(r, 401, "invalid_token").await;
    }
    expect_json(me(&app, &a.access).await, 200).await;
    app.clock.advance(Duration::from_secs(15 * 60));
    expect_error(me(&app, &a.access).await, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_password_hash_with_old_parameters_is_upgraded_on_login() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let weak = {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let params = argon2::Params::new(8 * 1024, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(a.password.as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    };
    let db = app.db_client().await;
    let id = uuid::Uuid::parse_str(&a.id).unwrap();
    db.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[&id, &weak],
    )
    .await
    .unwrap();
    expect_json(login(&app, &a).await, 200).await;
    let hash: String = db
        .query_one("SELECT password_hash FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    expect_json(login(&app, &a).await, 200).await;
}

#[tokio::test]
async fn a_flow_whose_process_is_gone_still_expires_on_time() {
    // The first instance starts a flow and stops (its actor goes with it); the
    // second, on the same database, gets no request for the flow, yet its sweep
    // expires it shortly after the deadline, with one audit row and one count.
    let (mut first, fake) = spawn_app_with_twilio().await;
    let second = spawn_on(first.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()))
    })
    .await;
    let (_a, flow, _code) = start_2fa_login(&first, &fake).await;
    first.stop().await;
    assert_eq!(second.state.flows().live(), 0);
    let flow_id = uuid::Uuid::parse_str(&flow).unwrap();
    let db = second.db_client().await;
    let state = || async {
        let row = db
            .query_one(
                "SELECT state->>'state', (state->>'at')::timestamptz, expires_at
                 FROM login_flows WHERE id = $1",
                &[&flow_id],
            )
            .await
            .unwrap();
        let s: String = row.get(0);
        let at: Option<chrono::DateTime<chrono::Utc>> = row.get(1);
        let deadline: chrono::DateTime<chrono::Utc> = row.get(2);
        (s, at, deadline)
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state().await.0, "otp_pending", "not due yet");
    second.clock.advance(Duration::from_secs(15 * 60));
    let mut waited = 0;
    let (s, at, deadline) = loop {
        let got = state().await;
        if got.0 != "otp_pending" || waited >= 100 {
            break got;
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s, "expired");
    let late = at.unwrap() - deadline;
    assert!(late < chrono::Duration::seconds(3), "expired {late} late");
    let audits: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events
             WHERE detail->>'reason' = 'flow_expired' AND detail->>'flowId' = $1",
            &[&flow],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audits, 1);
    let metrics = second
        .http
        .get(second.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("authgate_login_flows_total{event=\"expired\"} 1"),
        "{metrics}"
    );
    assert_eq!(second.state.flows().live(), 0);
    let r = second
        .post_json(VERIFY, &json!({"flowId": flow, "code": "123456"}))
        .await;
    expect_error(r, 410, "flow_expired").await;
}

/// Issue 16: the resend cooldown holds only while the previous code is live.
/// A second login right after a finished one (another device, a re-login) gets
/// its code at once; a login while a code is still live waits.
#[tokio::test]
async fn a_used_code_does_not_delay_the_next_login_but_a_live_one_does() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;

    let before = count_to(&fake, &a.phone);
    let first = expect_json(login(&app, &a).await, 200).await;
    let code = code_for(&fake, &a.phone, before).await;
    let flow = first["flowId"].as_str().unwrap();
    expect_json(
        app.post_json(VERIFY, &json!({"flowId": flow, "code": code}))
            .await,
        200,
    )
    .await;

    // Used: no cooldown for the next login.
    let second = expect_json(login(&app, &a).await, 200).await;
    assert_eq!(second["status"], "otp_required", "{second}");
    // Its code is live: a third login within the cooldown waits.
    let r = login(&app, &a).await;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
}
