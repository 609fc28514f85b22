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
async fn a_duplicate_email_differing_only_in_case_is_409_email_taken() {
    let app = spawn_app().await;
    let first = valid_signup();
    expect_json(app.signup(&first).await, 201).await;

    let mut second = valid_signup();
    second["email"] = json!(first["email"].as_str().unwrap().to_uppercase());
    expect_error(app.signup(&second).await, 409, "email_taken").await;
}

#[tokio::test]
async fn a_duplicate_phone_in_another_format_is_409_phone_taken() {
    let app = spawn_app().await;
    let mut first = valid_signup();
    first["phone"] = json!("+14155550123");
    expect_json(app.signup(&first).await, 201).await;

    let mut second = valid_signup();
    second["phone"] = json!("+1 (415) 555-0123");
    expect_error(app.signup(&second).await, 409, "phone_taken").await;
}

#[tokio::test]
async fn twenty_concurrent_identical_signups_give_one_201_and_nineteen_409() {
    let app = spawn_app().await;
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
    assert!(conflicts
        .iter()
        .all(|(_, b)| b["code"] == "email_taken" || b["code"] == "phone_taken"));
    let db = app.db_client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
