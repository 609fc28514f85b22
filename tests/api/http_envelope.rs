//! Every refusal, warp's own included, answers with the JSON error envelope.

use crate::helpers::*;

#[tokio::test]
async fn unknown_route_is_404_with_envelope() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/api/v1/nope")).send().await.unwrap();
    expect_error(resp, 404, "not_found").await;
    let resp = app.http.post(app.url("/")).send().await.unwrap();
    expect_error(resp, 404, "not_found").await;
}

#[tokio::test]
async fn wrong_method_is_405_with_envelope() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url("/api/v1/account/signup"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    expect_error(resp, 405, "method_not_allowed").await;
    let resp = app.http.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET");
    expect_error(resp, 405, "method_not_allowed").await;
    // RFC 9110: the Allow header lists what the target accepts.
    for (method, path, allow) in [
        (
            reqwest::Method::PUT,
            format!("/api/v1/account/sessions/{}", uuid::Uuid::new_v4()),
            "DELETE",
        ),
        (
            reqwest::Method::GET,
            "/api/v1/account/sessions/revoke-others".to_owned(),
            "POST",
        ),
        (
            reqwest::Method::POST,
            "/.well-known/jwks.json".to_owned(),
            "GET",
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/account/me".to_owned(),
            "GET",
        ),
    ] {
        let resp = app
            .http
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn malformed_json_is_400_with_envelope() {
    let app = spawn_app().await;
    for body in ["{\"email\": ", "not json", "", "[1,2]", "\"a string\""] {
        let resp = app
            .http
            .post(app.url("/api/v1/account/signup"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "malformed_json").await;
    }
}

#[tokio::test]
async fn wrong_content_type_is_415_with_envelope() {
    let app = spawn_app().await;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = app
            .http
            .post(app.url("/api/v1/account/signup"))
            .body(valid_signup().to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        expect_error(req.send().await.unwrap(), 415, "unsupported_media_type").await;
    }
    // A charset parameter is fine.
    let resp = app
        .http
        .post(app.url("/api/v1/account/signup"))
        .header("content-type", "application/json; charset=utf-8")
        .body(valid_signup().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn oversize_body_is_413_with_envelope() {
    let app = spawn_app().await;
    let mut body = valid_signup();
    body["padding"] = serde_json::json!("x".repeat(64 * 1024));
    let resp = app.signup(&body).await;
    expect_error(resp, 413, "payload_too_large").await;
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "client-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-abc-123");
    // An id that could forge log lines is replaced, not echoed.
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "evil id\twith spaces")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "evil id\twith spaces");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let body = expect_json(app.http.get(app.url("/healthz")).send().await.unwrap(), 200).await;
    assert_eq!(body["status"], "ok");
    let body = expect_json(app.http.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(body["database"], true);
}

#[tokio::test]
async fn losing_the_database_gives_503_not_500() {
    let (name, db) = fresh_database().await;
    let app = spawn_on(db, |c| c.db_timeout = std::time::Duration::from_secs(1)).await;
    let admin = connect(&admin_config()).await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();

    let body = expect_json(app.http.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    assert_eq!(body["database"], false);
    expect_error(app.signup(&valid_signup()).await, 503, "unavailable").await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    // One hash at a time, so ten sign-ups queue for several hundred milliseconds.
    let mut app = spawn_app_with(|c| c.hash_concurrency = 1).await;
    let url = app.url("/api/v1/account/signup");
    let in_flight: Vec<_> = (0..10)
        .map(|_| tokio::spawn(app.http.post(&url).json(&valid_signup()).send()))
        .collect();
    // Wait until the first sign-up is stored: by then all ten are being served.
    let db = app.db_client().await;
    loop {
        let n: i64 = db
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let healthz = app.url("/healthz");
    app.stop().await;
    for req in in_flight {
        assert_eq!(req.await.unwrap().unwrap().status(), 201);
    }
    assert!(reqwest::Client::new().get(healthz).send().await.is_err());
}
