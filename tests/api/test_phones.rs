//! Test phone numbers (`AUTHGATE_TEST_PHONES`): fixed codes, no SMS to any
//! provider, their own metric; refused in production (tests/api/cli.rs).

use serde_json::json;

use crate::accounts::*;
use crate::helpers::*;

const TEST_PHONE: &str = "+15005550006";

#[tokio::test]
async fn a_test_number_gets_its_fixed_code_and_no_sms_while_real_numbers_still_do() {
    let (app, fake) = spawn_app_with_twilio_and(|c| {
        c.test_phones =
            authgate::domain::phone::TestPhones::parse(&format!("{TEST_PHONE}=123456"), 6).unwrap()
    })
    .await;
    let mut body = valid_signup();
    body["phone"] = json!("+1 500 555 0006");
    let user = expect_json(app.signup(&body).await, 201).await;
    assert_eq!(user["phone"], TEST_PHONE);
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": body["email"], "password": body["password"]}),
        )
        .await,
        200,
    )
    .await;
    let access = tokens["accessToken"].as_str().unwrap();
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", access, None).await;
    expect_json(r, 202).await;
    // Only the fixed code: a random one would be right one time in a million.
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        access,
        Some(json!({"code": "654321"})),
    )
    .await;
    expect_error(r, 401, "invalid_code").await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        access,
        Some(json!({"code": "123456"})),
    )
    .await;
    let user = expect_json(r, 200).await;
    assert_eq!(user["isPhoneVerified"], true);

    // An ordinary account next to it: a random code, sent through Twilio.
    let a = account(&app).await;
    verify_phone(&app, &fake, &a).await;
    assert!(fake.attempts().iter().all(|m| m.to != TEST_PHONE));
    assert!(fake.messages().iter().all(|m| m.to != TEST_PHONE));
    // The SMS actor handles the test number's message on its own time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("authgate_sms_test_numbers_total 1\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            metrics
                .lines()
                .filter(|l| l.contains("test_numbers"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
