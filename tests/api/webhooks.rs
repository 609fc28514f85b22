//! POST /api/v1/webhooks/twilio/status: Twilio's delivery status callback.
//! Signed requests update the message; unsigned or forged ones get 403; updates
//! only move forward, so repeats and late callbacks change nothing.

use std::time::Duration;

use authgate::domain::phone::PhoneE164;
use authgate::sms::signature;
use authgate::store::outbox::NewSms;

use crate::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN};
use crate::helpers::*;

const PATH: &str = "/api/v1/webhooks/twilio/status";

fn callback_form(sid: &str, status: &str, error_code: Option<&str>) -> Vec<(String, String)> {
    let mut form = vec![
        ("MessageSid".to_owned(), sid.to_owned()),
        ("SmsSid".to_owned(), sid.to_owned()),
        ("MessageStatus".to_owned(), status.to_owned()),
        ("SmsStatus".to_owned(), status.to_owned()),
        ("AccountSid".to_owned(), ACCOUNT_SID.to_owned()),
        ("From".to_owned(), "+15005550006".to_owned()),
        ("To".to_owned(), "+14155550100".to_owned()),
        ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
    ];
    if let Some(code) = error_code {
        form.push(("ErrorCode".to_owned(), code.to_owned()));
    }
    form
}

async fn post_callback(
    app: &TestApp,
    form: &[(String, String)],
    signature: Option<&str>,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(PATH)).form(form);
    if let Some(sig) = signature {
        req = req.header("X-Twilio-Signature", sig);
    }
    req.send().await.unwrap()
}

/// Signs as Twilio would: over the configured public URL, not our address.
async fn post_signed(app: &TestApp, form: &[(String, String)]) -> reqwest::Response {
    let sig = signature::compute(AUTH_TOKEN, STATUS_CALLBACK_URL, form);
    post_callback(app, form, Some(&sig)).await
}

async fn delivery(app: &TestApp, sid: &str) -> (Option<String>, Option<i32>) {
    let db = app.db_client().await;
    let row = db
        .query_one(
            "SELECT delivery_status, error_code FROM sms_outbox WHERE provider_sid = $1",
            &[&sid],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Sends one message through the fake Twilio and returns its Twilio sid once
/// the outbox has recorded it.
async fn sent_message(app: &TestApp, fake: &crate::fake_twilio::FakeTwilio) -> String {
    let to = unique_phone();
    let phone = PhoneE164::parse(&to).unwrap();
    app.state
        .store()
        .enqueue_sms(
            app.state.keys(),
            app.clock.now(),
            NewSms {
                to: &phone,
                body: "callback test",
                purpose: "test",
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let sid = fake
        .wait_for_message_to(&to, 0, Duration::from_secs(30))
        .await
        .sid;
    for _ in 0..600 {
        let db = app.db_client().await;
        if db
            .query_opt("SELECT 1 FROM sms_outbox WHERE provider_sid = $1", &[&sid])
            .await
            .unwrap()
            .is_some()
        {
            return sid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox never recorded {sid}");
}

#[tokio::test]
async fn missing_or_wrong_signatures_are_refused_with_403() {
    let (app, _fake) = spawn_app_with_twilio().await;
    let form = callback_form("SM0123456789abcdef0123456789abcdef", "delivered", None);

    expect_error(
        post_callback(&app, &form, None).await,
        403,
        "invalid_signature",
    )
    .await;
    expect_error(
        post_callback(&app, &form, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")).await,
        403,
        "invalid_signature",
    )
    .await;
    // Signed for our own address instead of the configured public URL.
    let wrong_url = signature::compute(AUTH_TOKEN, &app.url(PATH), &form);
    expect_error(
        post_callback(&app, &form, Some(&wrong_url)).await,
        403,
        "invalid_signature",
    )
    .await;
    // A genuine signature over different parameters (tampered status).
    let sig = signature::compute(AUTH_TOKEN, STATUS_CALLBACK_URL, &form);
    let tampered = callback_form("SM0123456789abcdef0123456789abcdef", "failed", None);
    expect_error(
        post_callback(&app, &tampered, Some(&sig)).await,
        403,
        "invalid_signature",
    )
    .await;
    // The genuine one passes (unknown sid: acknowledged, nothing to update).
    assert_eq!(post_callback(&app, &form, Some(&sig)).await.status(), 204);
}

#[tokio::test]
async fn status_callbacks_move_forward_only_and_repeat_harmlessly() {
    let (app, fake) = spawn_app_with_twilio().await;
    let sid = sent_message(&app, &fake).await;
    assert_eq!(delivery(&app, &sid).await.0.as_deref(), Some("queued"));

    for (status, expected) in [
        ("sent", "sent"),
        ("delivered", "delivered"),
        // Late and repeated callbacks: acknowledged, final state kept.
        ("sent", "delivered"),
        ("queued", "delivered"),
        ("delivered", "delivered"),
        ("failed", "delivered"),
    ] {
        let resp = post_signed(&app, &callback_form(&sid, status, None)).await;
        assert_eq!(resp.status(), 204, "{status}");
        assert_eq!(
            delivery(&app, &sid).await.0.as_deref(),
            Some(expected),
            "after {status}"
        );
    }

    // A failure carries Twilio's error code.
    let other = sent_message(&app, &fake).await;
    let resp = post_signed(&app, &callback_form(&other, "undelivered", Some("30003"))).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        delivery(&app, &other).await,
        (Some("undelivered".to_owned()), Some(30003))
    );
    // An earlier status arriving after it changes nothing.
    post_signed(&app, &callback_form(&other, "sent", None)).await;
    assert_eq!(
        delivery(&app, &other).await,
        (Some("undelivered".to_owned()), Some(30003))
    );
}

#[tokio::test]
async fn a_signed_callback_without_a_status_is_a_validation_error() {
    let (app, _fake) = spawn_app_with_twilio().await;
    let form = vec![("MessageSid".to_owned(), "SMx".to_owned())];
    let body = expect_error(post_signed(&app, &form).await, 400, "validation_failed").await;
    assert_eq!(body["details"][0]["field"], "MessageStatus");
}

#[tokio::test]
async fn without_twilio_every_callback_is_refused() {
    let app = spawn_app().await;
    let form = callback_form("SM0123456789abcdef0123456789abcdef", "delivered", None);
    let sig = signature::compute(AUTH_TOKEN, STATUS_CALLBACK_URL, &form);
    expect_error(
        post_callback(&app, &form, Some(&sig)).await,
        403,
        "invalid_signature",
    )
    .await;
}
