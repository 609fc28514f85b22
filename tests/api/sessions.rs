//! Sessions (issue 14, items 5 and 8): what ends a session, how long one lives,
//! and that ending one refuses its access tokens at once, in every process.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

const LOGIN: &str = "/api/v1/account/login";
const REFRESH: &str = "/api/v1/auth/refresh";
const LOGOUT: &str = "/api/v1/auth/logout";
const DAY: Duration = Duration::from_secs(86_400);

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

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

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json(REFRESH, &json!({"refreshToken": token}))
        .await
}

async fn refreshed(app: &TestApp, token: &str) -> (String, String) {
    let t = expect_json(refresh(app, token).await, 200).await;
    (
        t["accessToken"].as_str().unwrap().to_owned(),
        t["refreshToken"].as_str().unwrap().to_owned(),
    )
}

async fn logout_session(app: &TestApp, refresh: &str) {
    let r = app
        .http
        .post(app.url(LOGOUT))
        .json(&json!({"refreshToken": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

async fn logout_all(app: &TestApp, access: &str) {
    let r = app
        .http
        .post(app.url(LOGOUT))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

// ---- item 5: 2FA changes end the other sessions; lifetimes ----

#[tokio::test]
async fn a_password_only_refresh_token_from_before_2fa_is_refused_after_enabling_it() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    // The attacker's session: a password-only login taken before 2FA is on.
    let (old_access, old_refresh) = login(&app, &a).await;
    enable_2fa(&app, &fake, &a).await;
    expect_error(
        refresh(&app, &old_refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(me_status(&app, &old_access).await, 401);
    // The session that turned 2FA on (it proved the SMS code) goes on.
    assert_eq!(me_status(&app, &a.access).await, 200);
    refreshed(&app, &a.refresh).await;
    sessions_ended_by_the_change(&app, &a.id).await;
}

#[tokio::test]
async fn disabling_2fa_ends_the_other_sessions_too() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    // A second, 2FA login elsewhere.
    let n = count_to(&fake, &a.phone);
    let r = app
        .post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await;
    let flow = expect_json(r, 200).await;
    let code = code_for(&fake, &a.phone, n).await;
    let other = expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "code": code}),
        )
        .await,
        200,
    )
    .await;
    let before = count_to(&fake, &a.phone);
    let r = post_auth(&app, "/api/v1/account/2fa/disable", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &a.phone, before).await;
    let r = post_auth(
        &app,
        "/api/v1/account/2fa/disable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(expect_json(r, 200).await["twoFA"], false);
    let other_refresh = other["refreshToken"].as_str().unwrap();
    expect_error(
        refresh(&app, other_refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(
        me_status(&app, other["accessToken"].as_str().unwrap()).await,
        401
    );
    assert_eq!(me_status(&app, &a.access).await, 200);
}

/// The login reads `two_fa = false`, checks the password, and only then tries to
/// store its session; 2FA is turned on in between (here: held open in a
/// transaction until the login is stuck behind it, then committed). The login
/// must not come out with password-only tokens.
#[tokio::test]
async fn a_login_racing_2fa_enable_cannot_yield_password_only_tokens() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let enabler = app.db_client().await;
    let watcher = app.db_client().await;
    enabler.batch_execute("BEGIN").await.unwrap();
    let user_id = uuid::Uuid::parse_str(&a.id).unwrap();
    // What `/2fa/enable/confirm` does to the row, not yet committed.
    enabler
        .execute(
            "UPDATE users SET phone_verified = true, two_fa = true WHERE id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    let login = {
        let http = app.http.clone();
        let url = app.url(LOGIN);
        let body = json!({"email": a.email, "password": a.password});
        tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap() })
    };
    // Wait until the login is blocked behind the change (or, on code that does
    // not re-check, has already answered).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 || login.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    enabler.batch_execute("COMMIT").await.unwrap();
    let r = login.await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(
        body.get("accessToken").is_none() && body.get("refreshToken").is_none(),
        "a password-only login finished after 2FA was turned on: {body}"
    );
    match status {
        401 => assert_eq!(body["code"], "invalid_credentials", "{body}"),
        200 => assert_eq!(body["status"], "otp_required", "{body}"),
        other => panic!("unexpected answer {other}: {body}"),
    }
    // Only the session from before the change exists.
    let db = app.db_client().await;
    let sessions: i64 = db
        .query_one(
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 1);
}

#[tokio::test]
async fn refreshing_never_extends_a_session_past_its_absolute_lifetime() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let mut token = a.refresh.clone();
    // Refreshed every 6 days (within the 7-day idle limit) up to day 24...
    for _ in 0..4 {
        app.clock.advance(6 * DAY);
        token = refreshed(&app, &token).await.1;
    }
    // ...day 30 after the login is the end, however fresh the token.
    app.clock.advance(6 * DAY);
    expect_error(refresh(&app, &token).await, 401, "invalid_refresh_token").await;
}

#[tokio::test]
async fn a_session_unused_for_the_idle_timeout_ends() {
    let app = spawn_app_with(|c| c.session_idle_timeout = 2 * DAY).await;
    let a = account(&app).await;
    app.clock.advance(DAY);
    let (_, token) = refreshed(&app, &a.refresh).await;
    // Idle time counts from the last refresh, not from the login.
    app.clock.advance(2 * DAY - Duration::from_secs(60));
    let (_, token) = refreshed(&app, &token).await;
    app.clock.advance(2 * DAY + Duration::from_secs(1));
    expect_error(refresh(&app, &token).await, 401, "invalid_refresh_token").await;
}

#[tokio::test]
async fn the_default_idle_timeout_is_seven_days() {
    let app = spawn_app().await;
    let a = account(&app).await;
    app.clock.advance(7 * DAY + Duration::from_secs(1));
    expect_error(
        refresh(&app, &a.refresh).await,
        401,
        "invalid_refresh_token",
    )
    .await;
}

// ---- item 8: access tokens after logout ----

#[tokio::test]
async fn logout_of_one_session_refuses_its_access_tokens_at_once_but_not_the_others() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (other_access, _) = login(&app, &a).await;
    // A second access token of the same session, from a refresh.
    let (refreshed_access, refreshed_refresh) = refreshed(&app, &a.refresh).await;
    assert_eq!(me_status(&app, &a.access).await, 200);
    logout_session(&app, &refreshed_refresh).await;
    assert_eq!(me_status(&app, &a.access).await, 401);
    assert_eq!(me_status(&app, &refreshed_access).await, 401);
    assert_eq!(me_status(&app, &other_access).await, 200);
}

#[tokio::test]
async fn logout_all_refuses_every_access_token_of_the_user_at_once() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (second, _) = login(&app, &a).await;
    let (third, third_refresh) = login(&app, &a).await;
    for t in [&a.access, &second, &third] {
        assert_eq!(me_status(&app, t).await, 200);
    }
    logout_all(&app, &second).await;
    for t in [&a.access, &second, &third] {
        assert_eq!(me_status(&app, t).await, 401);
    }
    expect_error(
        refresh(&app, &third_refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
    // Someone else's tokens are untouched.
    let b = account(&app).await;
    assert_eq!(me_status(&app, &b.access).await, 200);
}

/// `iat` has whole seconds: a token issued in the same second as a logout-all,
/// just before it, must go; one issued just after it must work.
#[tokio::test]
async fn tokens_in_the_same_second_as_a_logout_all_are_judged_by_order() {
    let app = spawn_app().await;
    let a = account(&app).await;
    for _ in 0..20 {
        let (before, _) = login(&app, &a).await;
        logout_all(&app, &before).await;
        let (after, _) = login(&app, &a).await;
        assert_eq!(me_status(&app, &before).await, 401);
        assert_eq!(me_status(&app, &after).await, 200);
        if claims(&before)["iat"] == claims(&after)["iat"] {
            return;
        }
    }
    panic!("never managed a logout-all and two logins within one second");
}

#[tokio::test]
async fn refresh_token_reuse_refuses_the_family_access_tokens() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (access1, _) = refreshed(&app, &a.refresh).await;
    let (other, _) = login(&app, &a).await;
    app.clock.advance(Duration::from_secs(11));
    // The rotated token again, past the grace window: reuse.
    expect_error(refresh(&app, &a.refresh).await, 401, "refresh_token_reused").await;
    assert_eq!(me_status(&app, &access1).await, 401);
    assert_eq!(me_status(&app, &other).await, 200);
}

#[tokio::test]
async fn a_second_process_sees_a_logout_within_two_seconds() {
    let app = spawn_app_with(pin_listening).await;
    let second = spawn_on(app.db.clone(), pin_listening).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.state.revocations().is_listening() {
        assert!(
            Instant::now() < deadline,
            "the revocation listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = account(&app).await;
    // The second process has the user cached as "nothing revoked".
    assert_eq!(me_status(&second, &a.access).await, 200);
    assert_eq!(second.state.revocations().cached(), 1);
    logout_session(&app, &a.refresh).await;
    let start = Instant::now();
    while me_status(&second, &a.access).await != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the second process still accepts a logged-out session's token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A revocation whose notification was missed (the LISTEN connection dropped)
/// must not hide behind the cache.
#[tokio::test]
async fn a_lost_listener_connection_empties_the_cache() {
    let app = spawn_app_with(pin_listening).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.state.revocations().is_listening() {
        assert!(
            Instant::now() < deadline,
            "the revocation listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = account(&app).await;
    assert_eq!(me_status(&app, &a.access).await, 200);
    assert_eq!(app.state.revocations().cached(), 1);
    let db = app.db_client().await;
    let killed = db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN authgate_revocation%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Revoked behind the cache's back: no NOTIFY.
    db.execute(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1::text::uuid",
        &[&a.id],
    )
    .await
    .unwrap();
    let start = Instant::now();
    while me_status(&app, &a.access).await != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a stale cache entry outlived the LISTEN connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_refresh_retried_within_the_grace_window_gets_the_same_new_token() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let first = expect_json(refresh(&app, &a.refresh).await, 200).await;
    // The answer was lost; the client tries again a few seconds later.
    app.clock.advance(Duration::from_secs(5));
    let retry = expect_json(refresh(&app, &a.refresh).await, 200).await;
    assert_eq!(retry["refreshToken"], first["refreshToken"]);
    let (a1, a2) = (
        retry["accessToken"].as_str().unwrap(),
        first["accessToken"].as_str().unwrap(),
    );
    assert_eq!(claims(a1)["sid"], claims(a2)["sid"]);
    assert_eq!(me_status(&app, a1).await, 200);
    // The family is alive: the new token rotates normally.
    let next = refreshed(&app, first["refreshToken"].as_str().unwrap()).await;
    assert_eq!(me_status(&app, &next.0).await, 200);
}

#[tokio::test]
async fn a_refresh_retried_after_the_grace_window_is_reuse() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (_, next) = refreshed(&app, &a.refresh).await;
    app.clock.advance(Duration::from_secs(11));
    expect_error(refresh(&app, &a.refresh).await, 401, "refresh_token_reused").await;
    expect_error(refresh(&app, &next).await, 401, "refresh_token_reused").await;
}

#[tokio::test]
async fn a_retry_after_the_new_token_was_used_is_reuse() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (_, next) = refreshed(&app, &a.refresh).await;
    let (_, after) = refreshed(&app, &next).await;
    // Within the window, but the successor has moved on: not a lost answer.
    expect_error(refresh(&app, &a.refresh).await, 401, "refresh_token_reused").await;
    expect_error(refresh(&app, &after).await, 401, "refresh_token_reused").await;
}

/// Collects the payloads of `NOTIFY authgate_revocation` until none came for
/// 1.5 s.
async fn revocations_heard(db: &tokio_postgres::Config) -> tokio::task::JoinHandle<Vec<String>> {
    use futures::StreamExt;
    let (client, mut connection) = db.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute("LISTEN authgate_revocation")
        .await
        .unwrap();
    tokio::spawn(async move {
        let _client = client;
        let mut heard = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
            heard.push(p);
        }
        heard
    })
}

/// Turning 2FA on ends the other sessions and tells every process; with no
/// other session nothing changes, and no process is told (a NOTIFY makes
/// PostgreSQL commit the transaction in line with every other notifying one).
#[tokio::test]
async fn a_2fa_change_notifies_other_processes_only_when_it_ended_a_session() {
    let (app, fake) = spawn_app_with_twilio_and(pin_listening).await;
    let alone = account(&app).await;
    let busy = account(&app).await;
    let _second = relogin(&app, &busy).await;
    let heard = revocations_heard(&app.db).await;
    enable_2fa(&app, &fake, &alone).await;
    enable_2fa(&app, &fake, &busy).await;
    let heard: Vec<String> = heard
        .await
        .unwrap()
        .into_iter()
        .filter(|p| !p.starts_with("ping:"))
        .collect();
    assert_eq!(heard, vec![busy.id.clone()], "alone {}", alone.id);
}

// --- The user's own view of their sessions (issue 16) ---

const SESSIONS: &str = "/api/v1/account/sessions";
const REVOKE_OTHERS: &str = "/api/v1/account/sessions/revoke-others";

/// A password login from a client that names itself `agent`.
async fn login_as(app: &TestApp, a: &Account, agent: &str) -> (String, String) {
    let t = expect_json(
        app.http
            .post(app.url(LOGIN))
            .header("user-agent", agent)
            .json(&json!({"email": a.email, "password": a.password}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    (
        t["accessToken"].as_str().unwrap().to_owned(),
        t["refreshToken"].as_str().unwrap().to_owned(),
    )
}

async fn sessions_of(app: &TestApp, access: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url(SESSIONS))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    expect_json(r, 200).await["sessions"]
        .as_array()
        .unwrap()
        .clone()
}

async fn end_session(app: &TestApp, access: &str, id: &str) -> reqwest::Response {
    app.http
        .delete(app.url(&format!("{SESSIONS}/{id}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

fn sid(access: &str) -> String {
    claims(access)["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_sessions_list_shows_each_login_with_its_client_and_marks_the_current_one() {
    let app = spawn_app().await;
    let a = account(&app).await;
    // The account's sign-up login is a session too; end it to count exactly.
    logout_session(&app, &a.refresh).await;
    let (laptop, _) = login_as(&app, &a, "laptop-browser/1.0").await;
    app.clock.advance(Duration::from_secs(60));
    let (phone_before, phone_refresh) = login_as(&app, &a, "phone-app/2.0").await;
    app.clock.advance(Duration::from_secs(60));
    // A refresh keeps the session and moves it to the top by last use.
    let (phone, _) = refreshed(&app, &phone_refresh).await;
    assert_eq!(sid(&phone), sid(&phone_before));

    let list = sessions_of(&app, &laptop).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["id"], sid(&phone));
    assert_eq!(list[0]["userAgent"], "phone-app/2.0");
    assert_eq!(list[0]["current"], false);
    assert_ne!(list[0]["lastUsedAt"], list[0]["createdAt"]);
    assert_eq!(list[1]["id"], sid(&laptop));
    assert_eq!(list[1]["userAgent"], "laptop-browser/1.0");
    assert_eq!(list[1]["current"], true);
    assert_eq!(list[1]["lastUsedAt"], list[1]["createdAt"]);
    for s in &list {
        assert_eq!(s["ip"], "127.0.0.1");
        assert_eq!(s["amr"], json!(["pwd"]));
        assert!(s["expiresAt"].is_string());
    }
    // Another user sees only their own.
    let b = account(&app).await;
    let theirs = sessions_of(&app, &b.access).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["id"], sid(&b.access));
}

#[tokio::test]
async fn ending_one_session_refuses_its_tokens_at_once_and_leaves_the_others() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (other, other_refresh) = login(&app, &a).await;
    let r = end_session(&app, &a.access, &sid(&other)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(me_status(&app, &other).await, 401);
    assert_eq!(refresh(&app, &other_refresh).await.status(), 401);
    assert_eq!(me_status(&app, &a.access).await, 200);
    let list = sessions_of(&app, &a.access).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], sid(&a.access));

    // Twice, or a made-up id: nothing to end.
    expect_error(
        end_session(&app, &a.access, &sid(&other)).await,
        404,
        "session_not_found",
    )
    .await;
    let made_up = uuid::Uuid::new_v4().to_string();
    expect_error(
        end_session(&app, &a.access, &made_up).await,
        404,
        "session_not_found",
    )
    .await;
    expect_error(
        end_session(&app, &a.access, "not-a-uuid").await,
        404,
        "not_found",
    )
    .await;

    // Another user's session can be neither ended nor told apart from none.
    let b = account(&app).await;
    let body = expect_error(
        end_session(&app, &a.access, &sid(&b.access)).await,
        404,
        "session_not_found",
    )
    .await;
    assert_eq!(body["message"], "no live session of yours has this id");
    assert_eq!(me_status(&app, &b.access).await, 200);

    // Ending one's own session is a logout.
    assert_eq!(
        end_session(&app, &a.access, &sid(&a.access)).await.status(),
        204
    );
    assert_eq!(me_status(&app, &a.access).await, 401);
}

#[tokio::test]
async fn revoke_others_keeps_only_the_callers_session_across_processes() {
    let app = spawn_app().await;
    let second = spawn_on(app.db.clone(), |_| {}).await;
    let a = account(&app).await;
    let (two, two_refresh) = login(&app, &a).await;
    let (three, _) = login(&second, &a).await;
    // The second process has seen both tokens work (and may cache that).
    assert_eq!(me_status(&second, &two).await, 200);
    assert_eq!(me_status(&second, &three).await, 200);

    let r = app
        .http
        .post(app.url(REVOKE_OTHERS))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(r, 200).await, json!({"ended": 2}));
    assert_eq!(me_status(&app, &two).await, 401);
    assert_eq!(refresh(&app, &two_refresh).await.status(), 401);
    let deadline = Instant::now() + Duration::from_secs(2);
    while me_status(&second, &three).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the second process still accepts an ended session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(me_status(&app, &a.access).await, 200);
    let list = sessions_of(&app, &a.access).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["current"], true);
}
