//! The purge actor (`src/actors/purge.rs`): rows past their retention go, in
//! batches, newer rows stay, and `/metrics` counts what went per table.

use std::time::Duration;

use chrono::Utc;

use crate::helpers::*;

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn rows_past_retention_are_purged_in_several_batches_newer_kept_and_counted() {
    // Batches of two: five old rows per table take three batches.
    let app = spawn_app_with(|c| {
        c.purge.interval = Duration::from_millis(300);
        c.purge.batch_size = 2;
    })
    .await;
    let db = app.db_client().await;
    let now = Utc::now();
    let days = |n: i64| now - chrono::Duration::days(n);
    for i in 0..7 {
        // Five beyond the 90 days of audit retention, two within.
        let at = if i < 5 { days(91 + i) } else { days(89) };
        db.execute(
            "INSERT INTO audit_events (user_id, kind, detail, created_at) VALUES (NULL, 'signup', '{}', $1)",
            &[&at],
        )
        .await
        .unwrap();
        // Five windows that ended days ago, two current ones.
        let end = if i < 5 {
            days(3)
        } else {
            now + chrono::Duration::hours(1)
        };
        db.execute(
            "INSERT INTO quota_counters (key, window_start, count, expires_at) VALUES ($1, $2, 1, $2)",
            &[&format!("k{i}"), &end],
        )
        .await
        .unwrap();
        // Five sent long ago (body erased), one sent yesterday, one still pending.
        let (state, at) = match i {
            0..=4 => ("sent", days(8)),
            5 => ("failed", days(1)),
            _ => ("pending", days(30)),
        };
        db.execute(
            "INSERT INTO sms_outbox (recipient, purpose, state, created_at, updated_at)
             VALUES ('+14155550100', 'phone_verify', $1, $2, $2)",
            &[&state, &at],
        )
        .await
        .unwrap();
        // Five sign-ups unverified for more than 7 days; one verified as old;
        // one unverified but recent.
        let (verified, at) = match i {
            0..=4 => (false, days(8)),
            5 => (true, days(400)),
            _ => (false, days(6)),
        };
        db.execute(
            "INSERT INTO users (id, email, phone, password_hash, first_name, last_name, phone_verified, created_at, updated_at)
             VALUES ($1, $2, $3, 'x', 'A', 'B', $4, $5, $5)",
            &[
                &uuid::Uuid::new_v4(),
                &format!("purge{i}@example.com"),
                &format!("+1415555{:04}", 100 + i),
                &verified,
                &at,
            ],
        )
        .await
        .unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = [
            count(&db, "SELECT count(*) FROM audit_events").await,
            count(&db, "SELECT count(*) FROM quota_counters").await,
            count(&db, "SELECT count(*) FROM sms_outbox").await,
            count(&db, "SELECT count(*) FROM users").await,
        ];
        if left == [2, 2, 2, 2] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rows left (audit, quotas, outbox, users): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What stayed is what is within retention.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_events WHERE created_at > now() - interval '90 days'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sms_outbox WHERE state IN ('failed', 'pending')"
        )
        .await,
        2
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM users WHERE phone_verified OR created_at > now() - interval '7 days'").await,
        2
    );
    for table in [
        "audit_events",
        "quota_counters",
        "sms_outbox",
        "users_unverified",
    ] {
        let series = format!("authgate_purged_rows_total{{table=\"{table}\"}}");
        assert_eq!(metric(&app, &series).await, Some(5.0), "{series}");
    }
}

#[tokio::test]
async fn an_expired_unverified_signup_frees_its_email() {
    let app = spawn_app_with(|c| {
        c.purge.interval = Duration::from_millis(200);
        c.unverified_signup_ttl = Duration::from_secs(3600);
    })
    .await;
    let body = valid_signup();
    expect_json(app.signup(&body).await, 201).await;
    // An hour later (the app's clock), the abandoned sign-up is gone.
    app.clock.advance(Duration::from_secs(3601));
    let db = app.db_client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&db, "SELECT count(*) FROM users").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-up was not purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same e-mail signs up for real again.
    expect_json(app.signup(&body).await, 201).await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn an_unverified_account_that_has_logged_in_is_never_purged() {
    let app = spawn_app_with(|c| {
        c.purge.interval = Duration::from_millis(200);
        c.unverified_signup_ttl = Duration::from_secs(3600);
    })
    .await;
    let used = valid_signup();
    expect_json(app.signup(&used).await, 201).await;
    // Password login works without a verified phone: this account is in use.
    let login = app
        .post_json(
            "/api/v1/account/login",
            &serde_json::json!({"email": used["email"], "password": used["password"]}),
        )
        .await;
    expect_json(login, 200).await;
    let mut abandoned = valid_signup();
    abandoned["email"] = serde_json::json!("abandoned@example.com");
    expect_json(app.signup(&abandoned).await, 201).await;
    app.clock.advance(Duration::from_secs(3601));
    let db = app.db_client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&db, "SELECT count(*) FROM users").await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned sign-up was not purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = db
        .query_one("SELECT email FROM users", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(kept, used["email"].as_str().unwrap().to_lowercase());
}
