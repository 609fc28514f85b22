//! POST /api/v1/account/signup

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn signup_returns_201_with_the_user_and_stores_an_argon2id_hash() {
    let app = spawn_app().await;
    let mut body = valid_signup();
    body["email"] = json!("  Grace.Hopper@Example.COM ");
    body["phone"] = json!("+1 (415) 555-0100");
    body["firstName"] = json!("  Grace ");

    let user = expect_json(app.signup(&body).await, 201).await;

    assert_eq!(user["email"], "grace.hopper@example.com");
    assert_eq!(user["phone"], "+14155550100");
    assert_eq!(user["firstName"], "Grace");
    assert_eq!(user["lastName"], "Lovelace");
    assert_eq!(user["twoFA"], false);
    assert_eq!(user["isPhoneVerified"], false);
    for field in ["createdAt", "updatedAt"] {
        assert!(chrono::DateTime::parse_from_rfc3339(user[field].as_str().unwrap()).is_ok());
    }
    let keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.iter()
            .all(|k| !k.to_lowercase().contains("password") && !k.contains("hash")),
        "{keys:?}"
    );

    let db = app.db_client().await;
    let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let row = db
        .query_one(
            "SELECT password_hash, email FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains("s3cure-passw0rd"));
    let pw = authgate::domain::password::Password::for_login("s3cure-passw0rd").unwrap();
    assert!(authgate::domain::password::verify(&pw, &hash));
}

async fn field_codes(resp: reqwest::Response) -> Vec<(String, String)> {
    let body = expect_error(resp, 400, "validation_failed").await;
    body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_owned(),
                d["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_invalid_field_is_named() {
    let app = spawn_app().await;
    let cases: &[(&str, Value, &str)] = &[
        ("email", json!("not-an-email"), "invalid_format"),
        ("email", json!("a@b"), "invalid_format"),
        ("email", json!(""), "invalid_format"),
        ("email", json!(42), "invalid_type"),
        ("phone", json!("4155550100"), "invalid_format"),
        ("phone", json!("+1 011 555 0100"), "invalid_format"),
        ("phone", json!("+1 phone"), "invalid_format"),
        ("password", json!("abc123"), "too_short"),
        ("password", json!("onlyletters"), "too_weak"),
        ("password", json!("1234567890"), "too_weak"),
        (
            "password",
            json!(format!("a1{}", "x".repeat(127))),
            "too_long",
        ),
        ("firstName", json!("   "), "required"),
        ("firstName", json!("x".repeat(101)), "too_long"),
        ("lastName", json!("bad\u{7}name"), "invalid_characters"),
        ("lastName", Value::Null, "required"),
    ];
    for (field, value, code) in cases {
        let mut body = valid_signup();
        body[*field] = value.clone();
        let got = field_codes(app.signup(&body).await).await;
        assert_eq!(
            got,
            [(field.to_string(), code.to_string())],
            "{field} = {value}"
        );
    }
    // A missing field is `required`.
    let mut body = valid_signup();
    body.as_object_mut().unwrap().remove("phone");
    assert_eq!(
        field_codes(app.signup(&body).await).await,
        [("phone".to_owned(), "required".to_owned())]
    );
    // Nothing was stored.
    let db = app.db_client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn every_problem_is_reported_at_once_without_echoing_values() {
    let app = spawn_app().await;
    let body = json!({
        "email": "nope",
        "phone": "12",
        "password": "hunter2",
        "firstName": "",
    });
    let resp = app.signup(&body).await;
    let text_fields = field_codes(resp).await;
    let fields: Vec<&str> = text_fields.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["email", "phone", "password", "firstName", "lastName"]
    );

    let resp = app.signup(&body).await;
    let text = resp.text().await.unwrap();
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn with_the_reveal_setting_a_duplicate_email_differing_only_in_case_is_409_email_taken() {
    let app = spawn_app_with(|c| c.signup_reveal_taken = true).await;
    let first = valid_signup();
    expect_json(app.signup(&first).await, 201).await;

    let mut second = valid_signup();
    second["email"] = json!(first["email"].as_str().unwrap().to_uppercase());
    expect_error(app.signup(&second).await, 409, "email_taken").await;
}

#[tokio::test]
async fn with_the_reveal_setting_a_verified_phone_in_another_format_is_409_phone_taken() {
    let app = spawn_app_with(|c| c.signup_reveal_taken = true).await;
    let mut first = valid_signup();
    first["phone"] = json!("+14155550123");
    expect_json(app.signup(&first).await, 201).await;
    let db = app.db_client().await;
    db.execute(
        "UPDATE users SET phone_verified = true WHERE phone = '+14155550123'",
        &[],
    )
    .await
    .unwrap();

    let mut second = valid_signup();
    second["phone"] = json!("+1 (415) 555-0123");
    expect_error(app.signup(&second).await, 409, "phone_taken").await;
}

#[tokio::test]
async fn with_the_reveal_setting_twenty_concurrent_identical_signups_give_one_201_and_nineteen_409()
{
    let app = spawn_app_with(|c| c.signup_reveal_taken = true).await;
    let body = valid_signup();
    let results = futures::future::join_all((0..20).map(|_| async {
        let resp = app.signup(&body).await;
        let status = resp.status().as_u16();
        let json: Value = resp.json().await.unwrap();
        (status, json)
    }))
    .await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let conflicts: Vec<_> = results.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!(created, 1, "{results:?}");
    assert_eq!(conflicts.len(), 19, "{results:?}");
    assert!(conflicts.iter().all(|(_, b)| b["code"] == "email_taken"));
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn twenty_concurrent_identical_signups_all_answer_201_and_create_one_account() {
    let app = spawn_app().await;
    let body = valid_signup();
    let statuses = futures::future::join_all(
        (0..20).map(|_| async { app.signup(&body).await.status().as_u16() }),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(user_count(&app).await, 1);
}

async fn user_count(app: &TestApp) -> i64 {
    let db = app.db_client().await;
    db.query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0)
}

/// Field names and JSON types of a body, to compare shapes.
fn shape(v: &Value) -> Vec<(String, &'static str)> {
    let mut fields: Vec<(String, &'static str)> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            (k.clone(), t)
        })
        .collect();
    fields.sort();
    fields
}

#[tokio::test]
async fn a_taken_and_a_free_email_get_the_same_status_and_the_same_fields() {
    let app = spawn_app().await;
    let owner = valid_signup();
    let owner_user = expect_json(app.signup(&owner).await, 201).await;

    let mut taken = valid_signup();
    taken["email"] = json!(format!(
        "  {} ",
        owner["email"].as_str().unwrap().to_uppercase()
    ));
    taken["firstName"] = json!(" Mallory ");
    let free = valid_signup();
    let taken_resp = app.signup(&taken).await;
    let free_resp = app.signup(&free).await;
    assert_eq!(taken_resp.status(), free_resp.status());
    let taken_body = expect_json(taken_resp, 201).await;
    let free_body = expect_json(free_resp, 201).await;
    assert_eq!(shape(&taken_body), shape(&free_body));

    // The look-alike echoes what was submitted (normalised), as a new account
    // would, and shows nothing of the owner's.
    assert_ne!(taken_body["id"], owner_user["id"]);
    assert!(uuid::Uuid::parse_str(taken_body["id"].as_str().unwrap()).is_ok());
    assert_eq!(taken_body["email"], owner_user["email"]);
    assert_eq!(taken_body["phone"], taken["phone"]);
    assert_eq!(taken_body["firstName"], "Mallory");
    assert_eq!(taken_body["twoFA"], false);
    assert_eq!(taken_body["isPhoneVerified"], false);
    assert_eq!(taken_body["createdAt"], taken_body["updatedAt"]);
    let created =
        chrono::DateTime::parse_from_rfc3339(taken_body["createdAt"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(created);
    assert!(age.num_seconds().abs() < 60, "{age}");
    assert_eq!(user_count(&app).await, 2);
}

#[tokio::test]
async fn a_duplicate_signup_creates_nothing_and_keeps_the_owners_password() {
    let app = spawn_app().await;
    let owner = valid_signup();
    let owner_user = expect_json(app.signup(&owner).await, 201).await;
    let db = app.db_client().await;
    let before = db
        .query_one(
            "SELECT password_hash, phone, first_name, last_name, updated_at FROM users",
            &[],
        )
        .await
        .unwrap();

    let mut dup = valid_signup();
    dup["email"] = owner["email"].clone();
    dup["password"] = json!("an0ther-passw0rd");
    dup["firstName"] = json!("Mallory");
    expect_json(app.signup(&dup).await, 201).await;

    assert_eq!(user_count(&app).await, 1);
    let after = db
        .query_one(
            "SELECT password_hash, phone, first_name, last_name, updated_at FROM users",
            &[],
        )
        .await
        .unwrap();
    for i in 0..4 {
        assert_eq!(
            before.get::<_, String>(i),
            after.get::<_, String>(i),
            "column {i}"
        );
    }
    assert_eq!(
        before.get::<_, chrono::DateTime<chrono::Utc>>(4),
        after.get::<_, chrono::DateTime<chrono::Utc>>(4)
    );
    // The old password still logs in; the one the duplicate sent does not.
    let login = |password: Value| {
        let app = &app;
        let email = owner["email"].clone();
        async move {
            app.post_json(
                "/api/v1/account/login",
                &json!({"email": email, "password": password}),
            )
            .await
        }
    };
    expect_json(login(owner["password"].clone()).await, 200).await;
    expect_error(
        login(dup["password"].clone()).await,
        401,
        "invalid_credentials",
    )
    .await;
    let me = expect_json(
        app.http
            .get(app.url("/api/v1/account/me"))
            .bearer_auth(
                expect_json(login(owner["password"].clone()).await, 200).await["accessToken"]
                    .as_str()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(me["id"], owner_user["id"]);
    assert_eq!(me["firstName"], owner_user["firstName"]);
}

#[tokio::test]
async fn an_unverified_holder_of_a_phone_does_not_block_its_owners_signup_and_verification() {
    use crate::accounts::*;
    let (app, fake) = spawn_app_with_twilio().await;
    let phone = unique_phone();
    // The squatter signs up first with the owner's phone, and never verifies it.
    let mut squat = valid_signup();
    squat["phone"] = json!(phone);
    let squatter = expect_json(app.signup(&squat).await, 201).await;
    let squatter_token = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": squat["email"], "password": squat["password"]}),
        )
        .await,
        200,
    )
    .await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // The owner signs up with the same phone: a real account.
    let mut mine = valid_signup();
    mine["phone"] = json!(phone);
    let user = expect_json(app.signup(&mine).await, 201).await;
    assert_ne!(user["id"], squatter["id"]);
    assert_eq!(user_count(&app).await, 2);
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": mine["email"], "password": mine["password"]}),
        )
        .await,
        200,
    )
    .await;
    let owner = Account {
        email: mine["email"].as_str().unwrap().to_owned(),
        phone: phone.clone(),
        password: mine["password"].as_str().unwrap().to_owned(),
        id: user["id"].as_str().unwrap().to_owned(),
        access: tokens["accessToken"].as_str().unwrap().to_owned(),
        refresh: tokens["refreshToken"].as_str().unwrap().to_owned(),
    };
    verify_phone(&app, &fake, &owner).await;

    // The squatter can no longer verify it, even with a right code.
    let before = count_to(&fake, &phone);
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/send",
        &squatter_token,
        None,
    )
    .await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &phone, before).await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &squatter_token,
        Some(json!({"code": code})),
    )
    .await;
    expect_error(r, 409, "phone_taken").await;
    let db = app.db_client().await;
    let verified: i64 = db
        .query_one(
            "SELECT count(*) FROM users WHERE phone = $1 AND phone_verified",
            &[&phone],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(verified, 1);
}

#[tokio::test]
async fn the_owner_of_a_taken_email_or_phone_is_told_by_sms_and_nothing_is_created() {
    use crate::accounts::*;
    let (app, fake) = spawn_app_with_twilio().await;
    let owner = account(&app).await;
    verify_phone(&app, &fake, &owner).await;
    let before = count_to(&fake, &owner.phone);

    let mut by_email = valid_signup();
    by_email["email"] = json!(owner.email.to_uppercase());
    expect_json(app.signup(&by_email).await, 201).await;
    let notice = fake
        .wait_for_message_to(&owner.phone, before, std::time::Duration::from_secs(20))
        .await;
    assert!(
        notice.body.contains("tried to sign up"),
        "{:?}",
        notice.body
    );

    // A phone verified by another account is taken too.
    let mut by_phone = valid_signup();
    by_phone["phone"] = json!(owner.phone);
    expect_json(app.signup(&by_phone).await, 201).await;
    fake.wait_for_message_to(&owner.phone, before + 1, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(user_count(&app).await, 1);
    let db = app.db_client().await;
    let attempts: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE user_id = $1 AND kind = 'signup_attempted'",
            &[&uuid::Uuid::parse_str(&owner.id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
}

/// Not an assertion: prints the latency of sign-ups with a taken and a free
/// e-mail, interleaved, for the report. Run with `--ignored`.
#[tokio::test]
#[ignore]
async fn measure_signup_latency_taken_vs_free() {
    let app = spawn_app().await;
    let owner = valid_signup();
    expect_json(app.signup(&owner).await, 201).await;
    let (mut taken, mut free) = (Vec::new(), Vec::new());
    for i in 0..80 {
        let mut body = valid_signup();
        if i % 2 == 0 {
            body["email"] = owner["email"].clone();
        }
        let t = std::time::Instant::now();
        let r = app.signup(&body).await;
        let elapsed = t.elapsed();
        assert_eq!(r.status(), 201);
        // The first rounds warm the pool and the statement cache.
        if i >= 10 {
            if i % 2 == 0 { &mut taken } else { &mut free }.push(elapsed);
        }
    }
    for (name, v) in [("taken", &mut taken), ("free", &mut free)] {
        v.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        println!(
            "signup {name}: n={} median={:.1} ms p90={:.1} ms min={:.1} ms max={:.1} ms",
            v.len(),
            ms(v[v.len() / 2]),
            ms(v[v.len() * 9 / 10]),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
}

/// A notice is an SMS like any code: it waits for room under the global
/// ceiling (sign-ups with taken details must not pump SMS past it).
#[tokio::test]
async fn a_notice_counts_against_the_global_sms_ceiling() {
    use crate::accounts::*;
    let (app, fake) = spawn_app_with_twilio_and(|c| c.quotas.sms_global_per_minute = 1).await;
    let owner = account(&app).await;
    verify_phone(&app, &fake, &owner).await; // the minute's one SMS
    let before = count_to(&fake, &owner.phone);

    let mut by_email = valid_signup();
    by_email["email"] = json!(owner.email);
    expect_json(app.signup(&by_email).await, 201).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        count_to(&fake, &owner.phone),
        before,
        "a notice passed the ceiling"
    );
    let queued: i64 = app
        .db_client()
        .await
        .query_one(
            "SELECT count(*) FROM sms_outbox WHERE purpose = 'signup_notice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);

    // Two minutes on, the ceiling has room again and the owner is told.
    app.clock.advance(std::time::Duration::from_secs(120));
    expect_json(app.signup(&by_email).await, 201).await;
    fake.wait_for_message_to(&owner.phone, before, std::time::Duration::from_secs(20))
        .await;
}
