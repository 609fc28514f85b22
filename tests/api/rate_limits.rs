//! Local per-IP rate limits (`src/routes/limits.rs`): each route class trips with
//! a 429 envelope and a sane `Retry-After`, recovers after its window, counts
//! clients apart only through a trusted proxy header, and can be switched off.
//!
//! The harness turns the limits off by default (every test client is 127.0.0.1);
//! these tests turn them on with short or small budgets. Bodies are `{}`: the limit
//! runs before body parsing and authentication, so a 400 or 401 still counts.

use std::time::{Duration, Instant};

use authgate::config::{Rate, RateLimitConfig};
use serde_json::json;

use crate::helpers::{expect_error, spawn_app_with, valid_signup, TestApp};

const SIGNUP: &[&str] = &["/api/v1/account/signup"];
const LOGIN: &[&str] = &["/api/v1/account/login"];
const CODE_CHECK: &[&str] = &[
    "/api/v1/account/login/verify",
    "/api/v1/account/phone/verify/confirm",
    "/api/v1/account/2fa/enable/confirm",
    "/api/v1/account/2fa/disable/confirm",
    "/api/v1/auth/refresh",
];
const CODE_SEND: &[&str] = &[
    "/api/v1/account/login/resend",
    "/api/v1/account/phone/verify/send",
    "/api/v1/account/2fa/enable",
    "/api/v1/account/2fa/disable",
];
const CLASSES: [(&str, &[&str]); 4] = [
    ("signup", SIGNUP),
    ("login", LOGIN),
    ("code check", CODE_CHECK),
    ("code send", CODE_SEND),
];

fn limits_on(rate: Rate) -> RateLimitConfig {
    RateLimitConfig {
        enabled: true,
        signup: rate,
        login: rate,
        code_check: rate,
        code_send: rate,
        ..RateLimitConfig::default()
    }
}

async fn post(app: &TestApp, path: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).json(&json!({}));
    if let Some(v) = forwarded_for {
        req = req.header("x-forwarded-for", v);
    }
    req.send().await.unwrap()
}

/// Posts to `paths` in turn until one answers 429; returns how many passed before
/// it, the 429 response and the time taken.
async fn until_limited(
    app: &TestApp,
    paths: &[&str],
    forwarded_for: Option<&str>,
) -> (usize, reqwest::Response, Duration) {
    let started = Instant::now();
    for (i, path) in paths.iter().cycle().take(100).enumerate() {
        let resp = post(app, path, forwarded_for).await;
        if resp.status() == 429 {
            return (i, resp, started.elapsed());
        }
    }
    panic!("no 429 after 100 requests to {paths:?}");
}

/// Asserts a 429 envelope and returns its `Retry-After` in seconds.
async fn expect_limited(resp: reqwest::Response) -> u64 {
    let retry_after = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .expect("Retry-After in whole seconds");
    let body = expect_error(resp, 429, "too_many_requests").await;
    assert!(
        body["message"].as_str().unwrap().contains("retry after"),
        "{body}"
    );
    retry_after
}

#[tokio::test]
async fn every_endpoint_of_each_class_shares_one_budget_per_client() {
    // 4 per minute: one request back every 15 s, far beyond this test's run time.
    let app =
        spawn_app_with(|c| c.rate_limits = limits_on(Rate::new(4, Duration::from_secs(60)))).await;
    for (name, paths) in CLASSES {
        // Classes are independent: the earlier classes' spent budgets do not count.
        let first = if name == "signup" {
            // A real sign-up under the limit goes through untouched.
            app.signup(&valid_signup()).await
        } else {
            post(&app, paths[0], None).await
        };
        assert_ne!(first.status(), 429, "{name}: first request refused");
        assert!(first.status().is_success() || first.status().is_client_error());
        // Cycling the class's endpoints: they draw from one budget of 4.
        let (passed, resp, _) = until_limited(&app, &paths[1 % paths.len()..], None).await;
        assert_eq!(passed + 1, 4, "{name}: budget is 4 per client");
        let retry_after = expect_limited(resp).await;
        assert!((1..=15).contains(&retry_after), "{name}: {retry_after}");
        // Every endpoint of the class is now refused.
        for path in paths {
            let resp = post(&app, path, None).await;
            assert_eq!(resp.status(), 429, "{name}: {path} not limited");
            expect_limited(resp).await;
        }
    }
    // The limits sit after path and method matching: other answers are unchanged.
    let resp = app
        .http
        .get(app.url("/api/v1/account/nope"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "not_found").await;
    let resp = app
        .http
        .get(app.url("/api/v1/account/signup"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 405, "method_not_allowed").await;
    let resp = app
        .http
        .get(app.url("/api/v1/account/me"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_token").await;
    let resp = post(&app, "/api/v1/auth/logout", None).await;
    assert_ne!(resp.status(), 429, "logout is not limited");
}

#[tokio::test]
async fn each_class_trips_and_recovers_after_its_window() {
    // 3 per second: a burst of 3, then one request back every 333 ms.
    let window = Duration::from_secs(1);
    let app = spawn_app_with(|c| c.rate_limits = limits_on(Rate::new(3, window))).await;
    for (name, paths) in CLASSES {
        let (passed, resp, elapsed) = until_limited(&app, paths, None).await;
        // At least the burst; more only as far as the time taken refilled it.
        let refilled = (elapsed.as_millis() / 333) as usize;
        assert!(
            (3..=3 + refilled + 1).contains(&passed),
            "{name}: {passed} passed in {elapsed:?}"
        );
        assert_eq!(expect_limited(resp).await, 1, "{name}");
    }
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    for (name, paths) in CLASSES {
        // A full burst again.
        for i in 0..3 {
            let resp = post(&app, paths[i % paths.len()], None).await;
            assert_ne!(resp.status(), 429, "{name}: request {i} after the window");
        }
    }
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_counted_apart() {
    let app = spawn_app_with(|c| {
        c.rate_limits = limits_on(Rate::new(2, Duration::from_secs(60)));
        c.rate_limits.trusted_proxy_header = Some("x-forwarded-for".parse().unwrap());
    })
    .await;
    let login = LOGIN[0];
    let status = |xff: Option<&'static str>| {
        let app = &app;
        async move { post(app, login, xff).await.status().as_u16() }
    };
    // Client A spends its budget.
    assert_ne!(status(Some("198.51.100.1")).await, 429);
    assert_ne!(status(Some("198.51.100.1")).await, 429);
    let resp = post(&app, login, Some("198.51.100.1")).await;
    let retry_after = expect_limited(resp).await;
    // 2 per minute: one back every 30 s.
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    // Only the right-most address (the one our proxy appended) counts: what the
    // client claims to its left changes nothing.
    assert_eq!(status(Some("203.0.113.99, 198.51.100.1")).await, 429);
    // Client B and C are their own.
    assert_ne!(status(Some("198.51.100.2")).await, 429);
    assert_ne!(status(Some("198.51.100.1, 198.51.100.3")).await, 429);
    // IPv6: one /64 is one client.
    assert_ne!(status(Some("2001:db8::1")).await, 429);
    assert_ne!(status(Some("2001:db8::2")).await, 429);
    assert_eq!(status(Some("2001:db8::ffff:1")).await, 429);
    assert_ne!(status(Some("2001:db8:0:1::1")).await, 429);
    // A missing or unusable header falls back to the peer (127.0.0.1), one client.
    assert_ne!(status(None).await, 429);
    assert_ne!(status(Some("garbage")).await, 429);
    assert_eq!(status(None).await, 429);
    assert_eq!(status(Some("unknown, ")).await, 429);
}

#[tokio::test]
async fn a_spoofed_leftmost_or_junk_rightmost_forwarded_entry_does_not_change_the_bucket() {
    let app = spawn_app_with(|c| {
        c.rate_limits = limits_on(Rate::new(2, Duration::from_secs(60)));
        c.rate_limits.trusted_proxy_header = Some("x-forwarded-for".parse().unwrap());
    })
    .await;
    let login = LOGIN[0];
    let status = |xff: Option<&'static str>| {
        let app = &app;
        async move { post(app, login, xff).await.status().as_u16() }
    };
    // A client behind our proxy: whatever it writes on the left, the proxy's
    // entry (right-most) is the bucket.
    assert_ne!(status(Some("203.0.113.1, 198.51.100.9")).await, 429);
    assert_ne!(status(Some("203.0.113.2, 198.51.100.9")).await, 429);
    assert_eq!(status(Some("203.0.113.3, 198.51.100.9")).await, 429);
    // The peer (127.0.0.1) spends its budget.
    assert_ne!(status(None).await, 429);
    assert_ne!(status(None).await, 429);
    assert_eq!(status(None).await, 429);
    // An unparsable entry where the proxy's should be means the peer, not the
    // next parsable address to its left (which the client chose).
    for spoof in [
        "203.0.113.50, unknown",
        "203.0.113.51, for=unknown",
        "203.0.113.52, junk",
        "203.0.113.53, ",
        "203.0.113.54,_obfuscated",
    ] {
        assert_eq!(status(Some(spoof)).await, 429, "{spoof}");
    }
}

#[tokio::test]
async fn an_untrusted_forwarded_header_is_ignored() {
    // No trusted header configured (the default): any client can write one.
    let app =
        spawn_app_with(|c| c.rate_limits = limits_on(Rate::new(2, Duration::from_secs(60)))).await;
    let login = LOGIN[0];
    assert_ne!(post(&app, login, Some("198.51.100.1")).await.status(), 429);
    assert_ne!(post(&app, login, Some("198.51.100.2")).await.status(), 429);
    let resp = post(&app, login, Some("198.51.100.3")).await;
    expect_limited(resp).await;
    let resp = app
        .http
        .post(app.url(login))
        .header("x-real-ip", "198.51.100.4")
        .header("forwarded", "for=198.51.100.4")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
}

#[tokio::test]
async fn switched_off_lets_everything_through() {
    let app = spawn_app_with(|c| {
        c.rate_limits = limits_on(Rate::new(1, Duration::from_secs(60)));
        c.rate_limits.enabled = false;
    })
    .await;
    for (name, paths) in CLASSES {
        for i in 0..10 {
            let resp = post(&app, paths[i % paths.len()], None).await;
            assert_ne!(resp.status(), 429, "{name}: request {i}");
        }
    }
}
