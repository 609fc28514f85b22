//! What a login costs the server (issue 14, items 9 and 11): every refused
//! login does the same database and hash work, and a flood beyond the hashing
//! queue is shed with 503 `overloaded`, never a 500.

use std::time::Duration;

use authgate::audit::ClientInfo;
use authgate::domain::password::Password;
use authgate::hasher::HashStats;
use authgate::service::login::{check_password, Attempt};
use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

const LOGIN: &str = "/api/v1/account/login";

/// The four refusals that must be indistinguishable: (name, e-mail, password).
fn cases<'a>(a: &'a Account, locked: &'a Account) -> [(&'static str, &'a str, &'a str); 4] {
    [
        ("wrong password", a.email.as_str(), "wrong-passw0rd"),
        (
            "unknown e-mail",
            "nobody-here@example.com",
            "wrong-passw0rd",
        ),
        // The right password of a locked account.
        (
            "locked account",
            locked.email.as_str(),
            locked.password.as_str(),
        ),
        ("malformed e-mail", "not an e-mail", "wrong-passw0rd"),
    ]
}

#[tokio::test]
async fn every_refused_login_does_the_same_database_and_hash_work() {
    let app = spawn_app_with(|c| c.quotas.lockout_after = 3).await;
    let a = account(&app).await;
    let locked = account(&app).await;
    for _ in 0..3 {
        let r = app
            .post_json(
                LOGIN,
                &json!({"email": locked.email, "password": "wrong-passw0rd"}),
            )
            .await;
        expect_error(r, 401, "invalid_credentials").await;
    }
    let stats = app.state.hasher().stats();
    let mut work = Vec::new();
    for (name, email, password) in cases(&a, &locked) {
        let hashes_before = HashStats::get(&stats.ran);
        let attempt = Attempt {
            email: email.to_owned(),
            password: Password::for_login(password).unwrap(),
            device_token: None,
        };
        let (verdict, checkouts) = authgate::store::count_checkouts(check_password(
            &app.state,
            &ClientInfo::default(),
            attempt,
        ))
        .await;
        assert!(verdict.unwrap().is_none(), "{name} was accepted");
        let hashes = HashStats::get(&stats.ran) - hashes_before;
        work.push((name, checkouts, hashes));
    }
    let (_, checkouts, hashes) = work[0];
    assert_eq!(hashes, 1, "{work:?}");
    assert!(checkouts >= 3, "admission, settlement and audit: {work:?}");
    for w in &work {
        assert_eq!((w.1, w.2), (checkouts, hashes), "{work:?}");
    }
    // And over HTTP the four answers are the same, but for the timestamp.
    let mut bodies = Vec::new();
    for (_, email, password) in cases(&a, &locked) {
        let r = app
            .post_json(LOGIN, &json!({"email": email, "password": password}))
            .await;
        let mut body = expect_error(r, 401, "invalid_credentials").await;
        body.as_object_mut().unwrap().remove("timestamp");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
}

#[tokio::test]
async fn a_flood_beyond_the_hash_queue_answers_503_overloaded_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.hash_concurrency = 1;
        c.hash_queue = 2;
    })
    .await;
    let answers = futures::future::join_all((0..40).map(|i| {
        let app = &app;
        async move {
            let r = app
                .post_json(
                    LOGIN,
                    &json!({"email": format!("flood{i}@example.com"), "password": "wrong-passw0rd"}),
                )
                .await;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            (status, retry, body)
        }
    }))
    .await;
    let mut shed = 0;
    for (status, retry, body) in &answers {
        match status {
            401 => assert_eq!(body["code"], "invalid_credentials", "{body}"),
            503 => {
                shed += 1;
                assert_eq!(body["code"], "overloaded", "{body}");
                assert_eq!(body["statusCode"], 503, "{body}");
                let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
                assert!(secs >= 1, "{secs}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(shed > 0, "nothing was shed: {answers:?}");
    assert!(HashStats::get(&app.state.hasher().stats().shed) >= shed);
    // The pool recovers once the flood is over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = account(&app).await;
    relogin(&app, &a).await;
}
