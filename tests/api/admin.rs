//! The admin API (issue 18): its token, search and pages, one account's view,
//! ban and unban, the forced 2FA reset and deletion; every answer checked
//! against the OpenAPI document.

use std::collections::HashSet;
use std::time::Duration;

use authgate::config::{Rate, RateLimitConfig};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::accounts::{account, enable_2fa, login_2fa, post_auth, Account};
use crate::helpers::*;
use crate::openapi::Contract;

const TOKEN: &str = "test-admin-token-0123456789abcdef-0123456789";
const USERS: &str = "/api/v1/admin/users";
const USER: &str = "/api/v1/admin/users/{id}";
const LOGIN: &str = "/api/v1/account/login";
const REFRESH: &str = "/api/v1/auth/refresh";

async fn admin_app() -> TestApp {
    spawn_app_with(|c| c.admin_token = Some(SecretString::from(TOKEN.to_owned()))).await
}

async fn admin_get(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn admin_post(app: &TestApp, path: &str) -> reqwest::Response {
    post_auth(app, path, TOKEN, None).await
}

fn user_path(id: &str, tail: &str) -> String {
    format!("{USERS}/{id}{tail}")
}

async fn login(app: &TestApp, a: &Account) -> reqwest::Response {
    app.post_json(LOGIN, &json!({"email": a.email, "password": a.password}))
        .await
}

#[tokio::test]
async fn only_the_admin_token_opens_the_admin_api() {
    let c = Contract::new();
    let app = admin_app().await;
    let a = account(&app).await;
    let no_header = app.http.get(app.url(USERS)).send().await.unwrap();
    let e = expect_error(no_header, 401, "admin_token_required").await;
    c.response("get", USERS, 401, &e);
    let wrong = format!("{TOKEN}x");
    expect_error(
        admin_get(&app, USERS, &wrong).await,
        401,
        "admin_token_required",
    )
    .await;
    // A user's access token is not an admin token.
    expect_error(
        admin_get(&app, USERS, &a.access).await,
        401,
        "admin_token_required",
    )
    .await;
    let r = post_auth(&app, &user_path(&a.id, "/ban"), &a.access, None).await;
    expect_error(r, 401, "admin_token_required").await;
    let page = expect_json(admin_get(&app, USERS, TOKEN).await, 200).await;
    c.response("get", USERS, 200, &page);

    // Unset: the admin API does not exist, whatever the caller sends.
    let off = spawn_app().await;
    let e = expect_error(admin_get(&off, USERS, TOKEN).await, 404, "not_found").await;
    c.response("get", USERS, 404, &e);
    let r = off.http.get(off.url(USERS)).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    let r = post_auth(&off, &user_path(&a.id, "/ban"), TOKEN, None).await;
    expect_error(r, 404, "not_found").await;
}

/// With `AUTHGATE_ADMIN_JWT=on` an admin signs in as themselves: only an
/// account with the admin role, in a session from a login with a second
/// factor, gets in; the role is read on every call, so revoking it locks the
/// same token out at once; actions are audited with the admin's id.
#[tokio::test]
async fn an_admins_own_two_factor_session_opens_the_admin_api() {
    let c = Contract::new();
    let (app, fake) = spawn_app_with_twilio_and(|c| c.admin_jwt = true).await;
    let store = app.state.store().clone();
    let admin = account(&app).await;
    let user = account(&app).await;
    let grant = |email: String, on: bool| {
        let store = store.clone();
        async move {
            authgate::service::admin::set_role(&store, &email, on)
                .await
                .unwrap()
        }
    };
    // The role alone is not enough: this session came from a password only.
    assert!(grant(admin.email.to_uppercase(), true).await);
    let r = admin_get(&app, USERS, &admin.access).await;
    let e = expect_error(r, 401, "admin_token_required").await;
    c.response("get", USERS, 401, &e);

    enable_2fa(&app, &fake, &admin).await;
    let admin_token = login_2fa(&app, &fake, &admin).await;
    let page = expect_json(admin_get(&app, USERS, &admin_token).await, 200).await;
    c.response("get", USERS, 200, &page);
    let roles: Vec<(&str, &str)> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["id"].as_str().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert!(roles.contains(&(admin.id.as_str(), "admin")), "{roles:?}");
    assert!(roles.contains(&(user.id.as_str(), "user")), "{roles:?}");
    let r = post_auth(&app, &user_path(&user.id, "/ban"), &admin_token, None).await;
    expect_json(r, 200).await;
    let by: Value = app
        .db_client()
        .await
        .query_one(
            "SELECT detail FROM audit_events WHERE kind = 'admin_user_banned' AND user_id = $1::text::uuid",
            &[&user.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by["by"], json!(admin.id));

    // A user with 2FA but no role is refused like a wrong token.
    let other = account(&app).await;
    enable_2fa(&app, &fake, &other).await;
    let other_token = login_2fa(&app, &fake, &other).await;
    let r = admin_get(&app, USERS, &other_token).await;
    expect_error(r, 401, "admin_token_required").await;
    // No admin token is configured: a guess at one is just a bad token.
    expect_error(
        admin_get(&app, USERS, TOKEN).await,
        401,
        "admin_token_required",
    )
    .await;

    // Revoked: the very same token is refused at the next call.
    assert!(grant(admin.email.clone(), false).await);
    let r = admin_get(&app, USERS, &admin_token).await;
    expect_error(r, 401, "admin_token_required").await;
    assert!(!grant("nobody@example.com".into(), true).await);
    let kinds: i64 = app
        .db_client()
        .await
        .query_one(
            "SELECT count(*) FROM audit_events WHERE user_id = $1::text::uuid \
             AND kind IN ('admin_role_granted', 'admin_role_revoked')",
            &[&admin.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kinds, 2);
}

#[tokio::test]
async fn admin_routes_are_rate_limited() {
    let app = spawn_app_with(|c| {
        c.admin_token = Some(SecretString::from(TOKEN.to_owned()));
        c.rate_limits = RateLimitConfig {
            enabled: true,
            admin: Rate::new(2, Duration::from_secs(60)),
            ..RateLimitConfig::default()
        };
    })
    .await;
    // Wrong tokens count too: guessing the token is what the limit slows.
    expect_error(
        admin_get(&app, USERS, "guess").await,
        401,
        "admin_token_required",
    )
    .await;
    expect_json(admin_get(&app, USERS, TOKEN).await, 200).await;
    let r = admin_get(&app, USERS, TOKEN).await;
    assert!(r.headers().contains_key("retry-after"));
    let e = expect_error(r, 429, "too_many_requests").await;
    Contract::new().response("get", USERS, 429, &e);
}

#[tokio::test]
async fn accounts_are_found_by_email_and_phone_and_paged_without_gaps() {
    let c = Contract::new();
    let app = admin_app().await;
    let tag = format!("pg{}", uuid::Uuid::new_v4().simple());
    let mut created = Vec::new();
    for i in 0..25 {
        let mut body = valid_signup();
        body["email"] = json!(format!("{tag}-{i}@Example.com"));
        let user = expect_json(app.signup(&body).await, 201).await;
        created.push(user["id"].as_str().unwrap().to_owned());
    }
    // Someone else, who must not match.
    let other = expect_json(app.signup(&valid_signup()).await, 201).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("{USERS}?query={}&limit=10", tag.to_uppercase());
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = expect_json(admin_get(&app, &path, TOKEN).await, 200).await;
        c.response("get", USERS, 200, &page);
        pages += 1;
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 10);
        for u in users {
            assert!(u["email"].as_str().unwrap().starts_with(&tag), "{u}");
            assert_eq!(u["bannedAt"], Value::Null);
            seen.push(u["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25, "no account missed or repeated");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
    // Newest first: the reverse of the creation order.
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // By phone: the digits, however they are written.
    let phone = other["phone"].as_str().unwrap();
    let spaced = format!("{} {}", &phone[..5], &phone[5..]);
    let path = format!("{USERS}?query={}", urlencode(&spaced));
    let page = expect_json(admin_get(&app, &path, TOKEN).await, 200).await;
    let ids: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other["id"].as_str().unwrap()]);
    assert_eq!(page["nextCursor"], Value::Null);
    // Everyone, newest first, with the default page size.
    let all = expect_json(admin_get(&app, USERS, TOKEN).await, 200).await;
    assert_eq!(all["users"].as_array().unwrap().len(), 20);
    assert_eq!(all["users"][0]["id"], other["id"]);

    // Bad parameters: one 400 listing each.
    let r = admin_get(&app, &format!("{USERS}?limit=0&cursor=nope"), TOKEN).await;
    let e = expect_error(r, 400, "validation_failed").await;
    c.response("get", USERS, 400, &e);
    let fields: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "cursor"]);
    let r = admin_get(&app, &format!("{USERS}?limit=101"), TOKEN).await;
    expect_error(r, 400, "validation_failed").await;

    // Searches are audited without what was searched for.
    let db = app.db_client().await;
    let rows = db
        .query(
            "SELECT host(ip), detail::text FROM audit_events WHERE kind = 'admin_users_searched'",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 5);
    for r in rows {
        assert_eq!(r.get::<_, Option<String>>(0).as_deref(), Some("127.0.0.1"));
        let detail: String = r.get(1);
        assert!(!detail.contains(&tag) && !detail.contains(&tag.to_uppercase()));
    }
}

/// `createdAfter` (inclusive) and `createdBefore` (exclusive) bound the list
/// by creation time, with the search and the pages.
#[tokio::test]
async fn accounts_are_filtered_by_creation_time() {
    let c = Contract::new();
    let app = admin_app().await;
    let tag = format!("cr{}", uuid::Uuid::new_v4().simple());
    let mut ids = Vec::new();
    let mut times = Vec::new();
    for i in 0..3 {
        let mut body = valid_signup();
        body["email"] = json!(format!("{tag}-{i}@example.com"));
        let user = expect_json(app.signup(&body).await, 201).await;
        ids.push(user["id"].as_str().unwrap().to_owned());
        times.push(user["createdAt"].as_str().unwrap().to_owned());
        app.clock.advance(Duration::from_secs(3600));
    }
    let (app, c, tag) = (&app, &c, tag.as_str());
    let list = |query: String| async move {
        let path = format!("{USERS}?query={tag}&{query}");
        let page = expect_json(admin_get(app, &path, TOKEN).await, 200).await;
        c.response("get", USERS, 200, &page);
        page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // The middle account: from its own creation (inclusive) to the next one's
    // (exclusive).
    let middle = list(format!(
        "createdAfter={}&createdBefore={}",
        times[1], times[2]
    ))
    .await;
    assert_eq!(middle, [ids[1].clone()]);
    let from_second = list(format!("createdAfter={}", times[1])).await;
    assert_eq!(from_second, [ids[2].clone(), ids[1].clone()]);
    let before_second = list(format!("createdBefore={}", times[1])).await;
    assert_eq!(before_second, [ids[0].clone()]);
    // Paged with a bound: the bound holds on every page.
    let first = list(format!("createdAfter={}&limit=1", times[1])).await;
    assert_eq!(first, [ids[2].clone()]);

    let r = admin_get(
        app,
        &format!("{USERS}?createdAfter=soon&createdBefore=2026-01-01"),
        TOKEN,
    )
    .await;
    let e = expect_error(r, 400, "validation_failed").await;
    c.response("get", USERS, 400, &e);
    assert_eq!(e["details"][0]["field"], "createdAfter");
    let r = admin_get(
        app,
        &format!(
            "{USERS}?createdAfter={}&createdBefore={}",
            times[2], times[0]
        ),
        TOKEN,
    )
    .await;
    let e = expect_error(r, 400, "validation_failed").await;
    assert_eq!(e["details"][0]["field"], "createdBefore");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'.' | b'_' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn one_account_shows_its_sessions_and_events() {
    let c = Contract::new();
    let app = admin_app().await;
    let a = account(&app).await;
    let body = expect_json(admin_get(&app, &user_path(&a.id, ""), TOKEN).await, 200).await;
    c.response("get", USER, 200, &body);
    assert_eq!(body["user"]["id"], a.id.as_str());
    assert_eq!(body["user"]["email"], a.email.as_str());
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{body}");
    assert_eq!(sessions[0]["current"], false);
    let kinds: Vec<&str> = body["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"admin_user_viewed"), "{kinds:?}");
    assert!(kinds.contains(&"login_succeeded"), "{kinds:?}");
    assert!(kinds.contains(&"signup"), "{kinds:?}");

    // The user's own trail leaves out the admin's actions (and address).
    let own = app
        .http
        .get(app.url("/api/v1/account/audit"))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    let own = expect_json(own, 200).await.to_string();
    assert!(!own.contains("admin_"), "{own}");

    let unknown = uuid::Uuid::new_v4().to_string();
    for r in [
        admin_get(&app, &user_path(&unknown, ""), TOKEN).await,
        admin_post(&app, &user_path(&unknown, "/ban")).await,
        admin_post(&app, &user_path(&unknown, "/unban")).await,
        admin_post(&app, &user_path(&unknown, "/2fa/reset")).await,
        app.http
            .delete(app.url(&user_path(&unknown, "")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    ] {
        let e = expect_error(r, 404, "user_not_found").await;
        c.response("get", USER, 404, &e);
    }
    // Not a UUID: no route.
    let r = admin_get(&app, &user_path("not-a-uuid", ""), TOKEN).await;
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn a_banned_account_cannot_log_in_or_refresh_until_unbanned() {
    let c = Contract::new();
    let app = admin_app().await;
    let a = account(&app).await;
    let bystander = account(&app).await;

    let r = admin_post(&app, &user_path(&a.id, "/ban")).await;
    let body = expect_json(r, 200).await;
    c.response("post", "/api/v1/admin/users/{id}/ban", 200, &body);
    assert_eq!(body["sessionsEnded"], 1);
    let banned_at = body["user"]["bannedAt"].as_str().unwrap().to_owned();

    // The access token fails at once, the refresh token too.
    let me = admin_get(&app, "/api/v1/account/me", &a.access).await;
    expect_error(me, 401, "invalid_token").await;
    let r = app
        .post_json(REFRESH, &json!({"refreshToken": a.refresh}))
        .await;
    assert_eq!(r.status().as_u16(), 401);
    // A right password answers as a wrong one.
    expect_error(login(&app, &a).await, 401, "invalid_credentials").await;
    // Others are untouched.
    let me = admin_get(&app, "/api/v1/account/me", &bystander.access).await;
    expect_json(me, 200).await;
    // Banning again keeps the first ban.
    let again = expect_json(admin_post(&app, &user_path(&a.id, "/ban")).await, 200).await;
    assert_eq!(again["user"]["bannedAt"], banned_at.as_str());
    assert_eq!(again["sessionsEnded"], 0);

    let r = admin_post(&app, &user_path(&a.id, "/unban")).await;
    let body = expect_json(r, 200).await;
    c.response("post", "/api/v1/admin/users/{id}/unban", 200, &body);
    assert_eq!(body["user"]["bannedAt"], Value::Null);
    let tokens = expect_json(login(&app, &a).await, 200).await;
    assert_eq!(tokens["status"], "authenticated");

    let db = app.db_client().await;
    let rows = db
        .query(
            "SELECT kind, host(ip) FROM audit_events WHERE user_id = $1::text::uuid
             AND (kind LIKE 'admin%' OR detail->>'reason' = 'banned') ORDER BY id",
            &[&a.id],
        )
        .await
        .unwrap();
    let kinds: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let local = Some("127.0.0.1".to_owned());
    assert_eq!(
        kinds,
        [
            ("admin_user_banned".to_owned(), local.clone()),
            ("login_failed".to_owned(), local.clone()),
            ("admin_user_banned".to_owned(), local.clone()),
            ("admin_user_unbanned".to_owned(), local),
        ]
    );
}

#[tokio::test]
async fn a_forced_2fa_reset_turns_2fa_off_and_ends_every_session() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.admin_token = Some(SecretString::from(TOKEN.to_owned()));
    })
    .await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    let db = app.db_client().await;
    let codes = "SELECT count(*) FROM recovery_codes WHERE user_id = $1::text::uuid";
    let n: i64 = db.query_one(codes, &[&a.id]).await.unwrap().get(0);
    assert_eq!(n, 10);

    let r = admin_post(&app, &user_path(&a.id, "/2fa/reset")).await;
    let body = expect_json(r, 200).await;
    Contract::new().response("post", "/api/v1/admin/users/{id}/2fa/reset", 200, &body);
    assert_eq!(body["user"]["twoFA"], false);
    assert_eq!(body["sessionsEnded"], 1);
    let n: i64 = db.query_one(codes, &[&a.id]).await.unwrap().get(0);
    assert_eq!(n, 0);
    let me = admin_get(&app, "/api/v1/account/me", &a.access).await;
    expect_error(me, 401, "invalid_token").await;
    // The next login is password-only.
    let tokens = expect_json(login(&app, &a).await, 200).await;
    assert_eq!(tokens["status"], "authenticated");
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE user_id = $1::text::uuid
             AND kind = 'admin_two_fa_reset' AND (detail->>'recoveryCodesDeleted')::int = 10",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn a_deleted_account_is_gone_and_its_email_is_free_again() {
    let app = admin_app().await;
    let a = account(&app).await;
    let delete = || async {
        app.http
            .delete(app.url(&user_path(&a.id, "")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    };
    let r = delete().await;
    assert_eq!(r.status().as_u16(), 204);
    assert!(r.text().await.unwrap().is_empty());

    let r = admin_get(&app, &user_path(&a.id, ""), TOKEN).await;
    expect_error(r, 404, "user_not_found").await;
    expect_error(delete().await, 404, "user_not_found").await;
    let me = admin_get(&app, "/api/v1/account/me", &a.access).await;
    expect_error(me, 401, "invalid_token").await;
    expect_error(login(&app, &a).await, 401, "invalid_credentials").await;
    let r = app
        .post_json(REFRESH, &json!({"refreshToken": a.refresh}))
        .await;
    assert_eq!(r.status().as_u16(), 401);

    // Nothing of the account is left but anonymous events and the deletion.
    let db = app.db_client().await;
    for table in [
        "users WHERE id",
        "sessions WHERE user_id",
        "refresh_tokens WHERE user_id",
        "device_tokens WHERE user_id",
    ] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} = $1::text::uuid"),
                &[&a.id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
    let rows = db
        .query(
            "SELECT kind, host(ip), user_agent, detail::text FROM audit_events
             WHERE user_id = $1::text::uuid ORDER BY id",
            &[&a.id],
        )
        .await
        .unwrap();
    let (last, before) = rows.split_last().unwrap();
    assert!(!before.is_empty());
    for r in before {
        assert_eq!(r.get::<_, Option<String>>(1), None);
        assert_eq!(r.get::<_, Option<String>>(2), None);
        assert_eq!(r.get::<_, String>(3), "{}");
    }
    assert_eq!(last.get::<_, String>(0), "admin_user_deleted");
    assert_eq!(
        last.get::<_, Option<String>>(1).as_deref(),
        Some("127.0.0.1")
    );
    let detail: String = last.get(3);
    assert!(!detail.contains(&a.email) && !detail.contains(&a.phone[1..]));

    // The same e-mail and phone sign up again: a new account that logs in.
    let mut body = valid_signup();
    body["email"] = json!(a.email);
    body["phone"] = json!(a.phone);
    body["password"] = json!("an0ther-passw0rd");
    let fresh = expect_json(app.signup(&body).await, 201).await;
    assert_ne!(fresh["id"], a.id.as_str());
    let r = app
        .post_json(
            LOGIN,
            &json!({"email": a.email, "password": "an0ther-passw0rd"}),
        )
        .await;
    assert_eq!(expect_json(r, 200).await["status"], "authenticated");
}
