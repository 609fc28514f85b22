//! Code SMS in the account's language: chosen at sign-up by an explicit
//! `locale` or the `Accept-Language` header, English otherwise; operators'
//! override files; the WebOTP last line.

use std::time::Duration;

use serde_json::{json, Value};

use crate::accounts::*;
use crate::fake_twilio::FakeTwilio;
use crate::helpers::*;

/// Signs up with `body` and an optional `Accept-Language`, logs in (password
/// only), asks for a phone-verification code and returns the account and the
/// SMS text.
async fn signup_and_send(
    app: &TestApp,
    fake: &FakeTwilio,
    body: Value,
    accept_language: Option<&str>,
) -> (Account, String) {
    let mut req = app.http.post(app.url("/api/v1/account/signup")).json(&body);
    if let Some(h) = accept_language {
        req = req.header("Accept-Language", h);
    }
    let user = expect_json(req.send().await.unwrap(), 201).await;
    assert!(user.get("locale").is_none(), "the user body is unchanged");
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": body["email"], "password": body["password"]}),
        )
        .await,
        200,
    )
    .await;
    let a = Account {
        email: body["email"].as_str().unwrap().to_owned(),
        phone: user["phone"].as_str().unwrap().to_owned(),
        password: body["password"].as_str().unwrap().to_owned(),
        id: user["id"].as_str().unwrap().to_owned(),
        access: tokens["accessToken"].as_str().unwrap().to_owned(),
        refresh: tokens["refreshToken"].as_str().unwrap().to_owned(),
    };
    let r = post_auth(app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    let msg = fake
        .wait_for_message_to(&a.phone, 0, Duration::from_secs(20))
        .await;
    (a, msg.body)
}

#[tokio::test]
async fn a_spanish_speaking_user_gets_a_spanish_sms_whose_code_confirms() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (a, text) =
        signup_and_send(&app, &fake, valid_signup(), Some("es-MX,es;q=0.9,en;q=0.5")).await;
    assert!(
        text.contains("es tu código de authgate para verificar tu teléfono"),
        "{text}"
    );
    assert!(text.contains("Caduca en 10 minutos"), "{text}");
    let code = code_for(&fake, &a.phone, 0).await;
    assert_eq!(text.matches(code.as_str()).count(), 1, "{text}");
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(expect_json(r, 200).await["isPhoneVerified"], true);
    let stored: String = app
        .db_client()
        .await
        .query_one(
            "SELECT locale FROM users WHERE id = $1::text::uuid",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "es");
}

#[tokio::test]
async fn an_explicit_locale_wins_over_the_header_and_reaches_login_codes() {
    let (app, fake) = spawn_app_with_twilio().await;
    let mut body = valid_signup();
    body["locale"] = json!("de");
    let (a, text) = signup_and_send(&app, &fake, body, Some("es-MX,es;q=0.9")).await;
    assert!(
        text.contains("ist dein authgate-Code, um dein Telefon zu bestätigen"),
        "{text}"
    );
    // Through the 2FA login flow too (the flow actor issues that code).
    let code = code_for(&fake, &a.phone, 0).await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    let r = post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &a.phone, 1).await;
    let r = post_auth(
        &app,
        "/api/v1/account/2fa/enable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    let r = app
        .post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await;
    assert_eq!(expect_json(r, 200).await["status"], "otp_required");
    let msg = fake
        .wait_for_message_to(&a.phone, 2, Duration::from_secs(20))
        .await;
    assert!(msg.body.contains("um dich anzumelden"), "{}", msg.body);
}

#[tokio::test]
async fn an_unknown_language_falls_back_to_english_and_a_bad_locale_is_refused() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (_, text) = signup_and_send(&app, &fake, valid_signup(), Some("ja-JP,zh;q=0.8")).await;
    assert!(
        text.contains("is your authgate code to verify your phone"),
        "{text}"
    );
    let mut body = valid_signup();
    body["locale"] = json!("it");
    let err = expect_error(app.signup(&body).await, 400, "validation_failed").await;
    assert!(err.to_string().contains("locale"), "{err}");
}

#[tokio::test]
async fn an_override_file_changes_the_text_and_webotp_adds_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fr.phone_verify.txt"),
        "{app} : votre code est {code} ({minutes} min).\n",
    )
    .unwrap();
    // Loaded as at start-up, from the variables.
    let path = dir.path().to_str().unwrap().to_owned();
    let loaded = authgate::config::Config::from_lookup(|k| match k {
        "AUTHGATE_SMS_TEMPLATES_DIR" => Some(path.clone()),
        "SMS_WEBOTP_DOMAIN" => Some("auth.example.com".to_owned()),
        _ => None,
    })
    .unwrap();
    let (templates, domain) = (loaded.sms.templates, loaded.sms.webotp_domain);
    let (app, fake) = spawn_app_with_twilio_and(move |c| {
        c.sms.sender_name = "Acme".to_owned();
        c.sms.templates = templates;
        c.sms.webotp_domain = domain;
    })
    .await;
    let mut body = valid_signup();
    body["locale"] = json!("fr");
    let (a, text) = signup_and_send(&app, &fake, body, None).await;
    let code = code_for(&fake, &a.phone, 0).await;
    assert_eq!(
        text,
        format!("Acme : votre code est {code} (10 min).\n\n@auth.example.com #{code}")
    );
    // Other languages keep the shipped text, with the WebOTP line as well.
    let (b, text) = signup_and_send(&app, &fake, valid_signup(), None).await;
    let code = code_for(&fake, &b.phone, 0).await;
    assert!(
        text.starts_with(&format!("{code} is your Acme code")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("\n\n@auth.example.com #{code}")),
        "{text}"
    );
}

/// An account in `locale` with its phone verified (so it is told of things).
async fn verified_in(app: &TestApp, fake: &FakeTwilio, locale: &str) -> (Account, Value) {
    let mut body = valid_signup();
    body["locale"] = json!(locale);
    let (a, _) = signup_and_send(app, fake, body.clone(), None).await;
    let code = code_for(fake, &a.phone, 0).await;
    let r = post_auth(
        app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    (a, body)
}

/// Someone else signs up, in English, with the e-mail of `body`: the SMS its
/// owner `a` gets.
async fn notice_of_copied_signup(
    app: &TestApp,
    fake: &FakeTwilio,
    a: &Account,
    body: &Value,
) -> String {
    let before = count_to(fake, &a.phone);
    let mut copy = valid_signup();
    copy["email"] = body["email"].clone();
    let r = app
        .http
        .post(app.url("/api/v1/account/signup"))
        .header("Accept-Language", "en")
        .json(&copy)
        .send()
        .await
        .unwrap();
    expect_json(r, 201).await;
    fake.wait_for_message_to(&a.phone, before, Duration::from_secs(20))
        .await
        .body
}

/// Notices (no code) are written in the language of the account they are
/// about: a French owner learns in French that someone used its e-mail to sign
/// up, and in French that its number was changed.
#[tokio::test]
async fn notices_reach_the_owner_in_the_accounts_language() {
    let (app, fake) = spawn_app_with_twilio().await;
    let (a, body) = verified_in(&app, &fake, "fr").await;
    // Someone signs up with the owner's e-mail, in English.
    let notice = notice_of_copied_signup(&app, &fake, &a, &body).await;
    assert!(
        notice.starts_with("authgate : quelqu'un a tenté de s'inscrire"),
        "{notice}"
    );

    // The number changes: the old one is told, in French.
    let before = count_to(&fake, &a.phone);
    let new = unique_phone();
    let r = post_auth(
        &app,
        "/api/v1/account/phone/change",
        &a.access,
        Some(json!({"phone": new})),
    )
    .await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &new, 0).await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/change/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    let notice = fake
        .wait_for_message_to(&a.phone, before, Duration::from_secs(20))
        .await;
    assert!(
        notice
            .body
            .starts_with("authgate : le numéro de votre compte a été remplacé"),
        "{}",
        notice.body
    );
}

/// Loads the templates of the folder `dir` as start-up does.
fn templates_of(
    dir: &std::path::Path,
) -> Result<authgate::domain::sms_text::Templates, Vec<authgate::config::ConfigError>> {
    let path = dir.to_str().unwrap().to_owned();
    authgate::config::Config::from_lookup(|k| {
        (k == "AUTHGATE_SMS_TEMPLATES_DIR").then(|| path.clone())
    })
    .map(|c| c.sms.templates)
}

/// An operator's notice file replaces the shipped text, `{app}` filled in;
/// a notice file with a code placeholder is refused at start.
#[tokio::test]
async fn a_notice_override_file_replaces_the_shipped_notice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("es.signup_notice.txt"),
        "{app}: alguien usó tus datos para registrarse.\n",
    )
    .unwrap();
    let templates = templates_of(dir.path()).unwrap();
    let (app, fake) = spawn_app_with_twilio_and(move |c| {
        c.sms.sender_name = "Acme".into();
        c.sms.templates = templates;
    })
    .await;
    let (a, body) = verified_in(&app, &fake, "es").await;
    let notice = notice_of_copied_signup(&app, &fake, &a, &body).await;
    assert_eq!(notice, "Acme: alguien usó tus datos para registrarse.");

    std::fs::write(
        dir.path().join("en.phone_change_notice.txt"),
        "{app}: your code {code}",
    )
    .unwrap();
    let errors = templates_of(dir.path()).unwrap_err();
    let text = format!("{errors:?}");
    assert!(
        text.contains("en.phone_change_notice.txt") && text.contains("only {app}"),
        "{text}"
    );
}
