//! The request side of the served OpenAPI document against the server (issue
//! 18, "a contract a client generator can trust"): for every constrained field
//! of every JSON request body, and every query parameter, a value at each
//! documented bound is accepted and a value just past it is refused with a 400
//! naming the field; single-character changes of a valid value are accepted
//! exactly when they still match the field's schema.
//!
//! The bounds, patterns and enums are read from the served document, so a new
//! constraint there is tested without new code. What a field needs here is a
//! valid base body (`base_body`) and a way to build a valid value of a given
//! length (`sized`); a constrained field without them fails the test.

use std::collections::BTreeSet;

use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::helpers::*;
use crate::openapi::served_document;

const ADMIN_TOKEN: &str = "contract-test-admin-token-0123456789abcdef";

/// Characters the mutations insert or substitute: separators, letters and
/// digits of each class, non-ASCII letters, control characters, Unicode spaces.
const PROBES: [char; 18] = [
    ' ', '\t', '.', '-', '+', '@', '_', '!', '(', 'a', 'Z', 'o', '0', '9', 'é', '\u{7}', '\u{85}',
    '\u{3000}',
];

/// A constrained field of a request: where it is sent and what it must obey.
#[derive(Clone)]
struct Field {
    method: String,
    path: String,
    /// The request body's schema name, or `query` for a query parameter.
    schema: String,
    name: String,
    rules: Value,
    /// `bearer`, `adminToken` or nothing, from the operation's `security`.
    auth: Option<String>,
}

impl Field {
    fn label(&self) -> String {
        format!(
            "{} {} {}.{}",
            self.method, self.path, self.schema, self.name
        )
    }
}

/// What the test sends with: a signed-in account's access token.
struct Fixture {
    access: String,
}

/// The served document's constrained request fields, in document order.
fn constrained_fields(doc: &Value) -> Vec<Field> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let auth = op["security"]
                .as_array()
                .and_then(|s| s.first())
                .and_then(|r| r.as_object())
                .and_then(|r| r.keys().next().cloned());
            let field = |schema: &str, name: &str, rules: &Value| Field {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                schema: schema.to_owned(),
                name: name.to_owned(),
                rules: rules.clone(),
                auth: auth.clone(),
            };
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "query" && constrained(&p["schema"]) {
                    out.push(field("query", p["name"].as_str().unwrap(), &p["schema"]));
                }
            }
            let Some(reference) = op.pointer("/requestBody/content/application~1json/schema/$ref")
            else {
                continue;
            };
            let name = reference
                .as_str()
                .unwrap()
                .trim_start_matches("#/components/schemas/");
            let schema = &doc["components"]["schemas"][name];
            for (prop, rules) in schema["properties"].as_object().expect("properties") {
                if constrained(rules) {
                    out.push(field(name, prop, rules));
                }
            }
        }
    }
    out
}

fn constrained(rules: &Value) -> bool {
    [
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "format",
        "minimum",
        "maximum",
    ]
    .iter()
    .any(|k| rules.get(*k).is_some())
}

/// Whether `value` matches `rules` (one property's schema) by the document's
/// own keywords, formats included.
fn conforms(rules: &Value, value: &str) -> bool {
    // A query parameter is text on the wire; an integer one is read as a number.
    let instance = match value.parse::<i64>() {
        Ok(n) if rules["type"] == "integer" => json!(n),
        _ => json!(value),
    };
    let mut schema = rules.clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {rules} does not compile: {e}"))
        .is_valid(&instance)
}

/// A valid body for `field`'s route with `field` in it, or `None` for a field
/// this test does not know (which fails the test: add it here).
fn base_body(field: &Field, otp_length: usize) -> Option<Map<String, Value>> {
    let code = "1".repeat(otp_length);
    let flow = uuid::Uuid::new_v4().to_string();
    let body = match (field.schema.as_str(), field.name.as_str()) {
        ("SignupRequest", _) => {
            let mut b = valid_signup();
            b["locale"] = json!("en");
            b
        }
        ("LoginRequest", _) => json!({
            "email": "nobody@example.com",
            "password": "s3cure-passw0rd",
            "deviceToken": "d".repeat(43),
        }),
        ("LoginVerifyRequest", "recoveryCode") => {
            json!({"flowId": flow, "recoveryCode": "abcde-fghjk"})
        }
        ("LoginVerifyRequest", _) => json!({"flowId": flow, "code": code}),
        ("FlowRequest", _) => json!({ "flowId": flow }),
        ("CodeRequest", _) => json!({ "code": code }),
        ("RefreshRequest", _) => json!({"refreshToken": "R".repeat(43)}),
        ("PhoneChangeRequest", _) => json!({"phone": unique_phone()}),
        ("PasswordResetRequest", "phone") => json!({"phone": unique_phone()}),
        ("PasswordResetRequest", _) => json!({"email": "nobody@example.com"}),
        ("PasswordResetConfirmRequest", "phone") => {
            json!({"phone": unique_phone(), "code": code, "password": "n3w-passw0rd"})
        }
        ("PasswordResetConfirmRequest", _) => {
            json!({"email": "nobody@example.com", "code": code, "password": "n3w-passw0rd"})
        }
        _ => return None,
    };
    match body {
        Value::Object(map) if map.contains_key(&field.name) => Some(map),
        _ => None,
    }
}

/// A value of `field` with exactly `n` characters that obeys every rule of the
/// field but its length bounds, or `None` for a field this test does not know.
fn sized(field: &Field, n: usize) -> Option<String> {
    let kind = match (field.schema.as_str(), field.name.as_str()) {
        ("LoginRequest", "email") => "any",
        ("LoginRequest", "password") => "any",
        (_, "email") => "email",
        (_, "phone") => "phone",
        (_, "password") => "password",
        (_, "firstName" | "lastName") => "any",
        (_, "code") => "digits",
        (_, "recoveryCode") => "recovery",
        (_, "refreshToken" | "deviceToken") => "any",
        ("query", "query") => "any",
        _ => return None,
    };
    Some(match kind {
        "any" => "a".repeat(n),
        "digits" => "1".repeat(n),
        "password" if n >= 2 => format!("a1{}", "x".repeat(n - 2)),
        "password" => "a".repeat(n),
        // `+1` and a US number, stretched with spaces (separators count).
        "phone" => {
            let digits = unique_phone();
            let spaces = n.checked_sub(digits.len())?;
            format!("+1{}{}", " ".repeat(spaces), &digits[2..])
        }
        // Ten valid characters, then hyphens (ignored, but counted).
        "recovery" if n >= 10 => format!("abcdefghjk{}", "-".repeat(n - 10)),
        "recovery" => "abcdefghjk"[..n].to_owned(),
        "email" => email_of_length(n)?,
        _ => return None,
    })
}

/// A valid address of exactly `n` characters: a local part of up to 64, then
/// a domain of labels of up to 63 ending in `.com`.
fn email_of_length(n: usize) -> Option<String> {
    let local = n.checked_sub(1 + "b.com".len())?.clamp(1, 64);
    let mut rest = n.checked_sub(local + 1 + ".com".len())?;
    if rest == 0 {
        return None;
    }
    let mut domain = String::new();
    while rest > 63 {
        domain.push_str(&"b".repeat(62));
        domain.push('.');
        rest -= 63;
    }
    domain.push_str(&"b".repeat(rest));
    Some(format!("{}@{domain}.com", "a".repeat(local)))
}

/// One request with `field` set to `value` (a body field or a query parameter).
async fn send(
    app: &TestApp,
    fx: &Fixture,
    field: &Field,
    body: Option<&Map<String, Value>>,
    value: &str,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(field.method.as_bytes()).unwrap();
    let mut req = app.http.request(method, app.url(&field.path));
    if field.schema == "query" {
        req = req.query(&[(field.name.as_str(), value)]);
    } else {
        let mut body = body.cloned().unwrap_or_default();
        body.insert(field.name.clone(), json!(value));
        req = req.json(&body);
    }
    req = match field.auth.as_deref() {
        Some("bearer") => req.bearer_auth(&fx.access),
        Some("adminToken") => req.bearer_auth(ADMIN_TOKEN),
        _ => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// What the server did with a value of one field.
#[derive(Debug, PartialEq)]
enum Verdict {
    Accepted,
    Refused,
}

/// Refused: a 400 listing the field (or, for a refresh token, whose malformed
/// and unknown values the server answers alike, 401 `invalid_refresh_token`).
/// Accepted: any answer but a 400 or a 5xx (the base bodies are valid, so a
/// 400 could only be about this value).
fn verdict(field: &Field, status: u16, body: &Value) -> Result<Verdict, String> {
    let named = body["details"]
        .as_array()
        .is_some_and(|d| d.iter().any(|e| e["field"] == field.name.as_str()));
    match status {
        400 if body["code"] == "validation_failed" && named => Ok(Verdict::Refused),
        401 if field.name == "refreshToken" && body["code"] == "invalid_refresh_token" => {
            Ok(Verdict::Refused)
        }
        400 | 500..=u16::MAX => Err(format!("answered {status} {body}")),
        _ => Ok(Verdict::Accepted),
    }
}

/// Whether the server's acceptance of a well-formed value shows: not for a
/// refresh token, whose unknown and malformed values are answered alike.
fn acceptance_observable(field: &Field) -> bool {
    field.name != "refreshToken"
}

/// The document's verdict on a value: whether the server must accept it
/// (`Some(Accepted)`), must refuse it (`Some(Refused)`), or may do either
/// (`None`: the field's rule goes beyond its schema, or the server trims what
/// the schema refuses).
fn expected(field: &Field, value: &str) -> Option<Verdict> {
    if conforms(&field.rules, value) {
        // A malformed and an unknown refresh token are answered alike, and a
        // phone must also exist in its numbering plan: conforming is necessary,
        // not sufficient.
        match field.name.as_str() {
            // A created-time bound must also be a real calendar time.
            "refreshToken" | "phone" | "createdAfter" | "createdBefore" => None,
            _ => Some(Verdict::Accepted),
        }
    } else if value.trim() != value && conforms(&field.rules, value.trim()) {
        None
    } else {
        Some(Verdict::Refused)
    }
}

/// The values to try for `field`: each documented bound and one past it, then
/// single-character changes of the base value when the field has a pattern,
/// an enum or a format. Each with the verdict the document promises.
fn probes(field: &Field, base: &str) -> Result<Vec<(String, Verdict)>, String> {
    let r = &field.rules;
    let mut out: Vec<(String, Verdict)> = Vec::new();
    let mut push = |value: String, want: Verdict, why: &str| -> Result<(), String> {
        // The document must agree with itself about the values it bounds.
        let conforming = conforms(r, &value);
        if conforming != (want == Verdict::Accepted) {
            return Err(format!(
                "{why}: {value:?} {} the field's own schema",
                if conforming {
                    "matches"
                } else {
                    "does not match"
                }
            ));
        }
        if want == Verdict::Refused || acceptance_observable(field) {
            out.push((value, want));
        }
        Ok(())
    };
    let number = |k: &str| r[k].as_u64().map(|n| n as usize);
    let need = |n: usize| sized(field, n).ok_or(format!("no `sized` value of {n} characters"));
    if let Some(min) = number("minLength") {
        push(need(min)?, Verdict::Accepted, "at minLength")?;
        if min > 0 {
            push(need(min - 1)?, Verdict::Refused, "below minLength")?;
        }
    }
    if let Some(max) = number("maxLength") {
        push(need(max)?, Verdict::Accepted, "at maxLength")?;
        push(need(max + 1)?, Verdict::Refused, "above maxLength")?;
    }
    if let Some(min) = r["minimum"].as_i64() {
        push(min.to_string(), Verdict::Accepted, "at minimum")?;
        push((min - 1).to_string(), Verdict::Refused, "below minimum")?;
    }
    if let Some(max) = r["maximum"].as_i64() {
        push(max.to_string(), Verdict::Accepted, "at maximum")?;
        push((max + 1).to_string(), Verdict::Refused, "above maximum")?;
    }
    let shaped = ["pattern", "enum", "format"]
        .iter()
        .any(|k| r.get(*k).is_some());
    if shaped {
        let chars: Vec<char> = base.chars().collect();
        let mut seen = BTreeSet::new();
        for at in [0, chars.len() / 2, chars.len()] {
            let mut variants = Vec::new();
            for p in PROBES {
                let mut v = chars.clone();
                v.insert(at, p);
                variants.push(v);
                if at < chars.len() {
                    let mut v = chars.clone();
                    v[at] = p;
                    variants.push(v);
                }
            }
            if at < chars.len() {
                let mut v = chars.clone();
                v.remove(at);
                variants.push(v);
            }
            for v in variants {
                let value: String = v.into_iter().collect();
                if value == base || !seen.insert(value.clone()) {
                    continue;
                }
                if let Some(want) = expected(field, &value) {
                    out.push((value, want));
                }
            }
        }
    }
    Ok(out)
}

/// Sends every probe of every field `which` selects; returns the failures.
async fn check_fields(
    app: &TestApp,
    fx: &Fixture,
    doc: &Value,
    otp_length: usize,
    which: impl Fn(&Field) -> bool,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let fields: Vec<Field> = constrained_fields(doc).into_iter().filter(which).collect();
    assert!(!fields.is_empty(), "no field selected");
    for field in &fields {
        let body = if field.schema == "query" {
            None
        } else {
            match base_body(field, otp_length) {
                Some(b) => Some(b),
                None => {
                    failures.push(format!("{}: no base body in this test", field.label()));
                    continue;
                }
            }
        };
        let base = match &body {
            Some(b) => b[&field.name].as_str().unwrap().to_owned(),
            None => String::new(),
        };
        if body.is_some() {
            // The base value itself: the document's example of a valid value.
            match expected(field, &base) {
                Some(Verdict::Refused) => failures.push(format!(
                    "{}: base {base:?} breaks the schema",
                    field.label()
                )),
                _ if acceptance_observable(field) => {
                    jobs.push((field.clone(), body.clone(), base.clone(), Verdict::Accepted))
                }
                _ => {}
            }
        }
        match probes(field, &base) {
            Ok(list) => {
                for (value, want) in list {
                    jobs.push((field.clone(), body.clone(), value, want));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", field.label())),
        }
    }
    let sent = jobs.len();
    let results: Vec<Option<String>> = futures::stream::iter(jobs)
        .map(|(field, body, value, want)| async move {
            let (status, answer) = send(app, fx, &field, body.as_ref(), &value).await;
            match verdict(&field, status, &answer) {
                Ok(got) if got == want => None,
                Ok(got) => Some(format!(
                    "{}: {value:?} should be {want:?}, was {got:?} ({status} {answer})",
                    field.label()
                )),
                Err(e) => Some(format!("{}: {value:?} {e}", field.label())),
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    failures.extend(results.into_iter().flatten());
    (sent, failures)
}

/// An account signed in without 2FA: its access token.
async fn signed_in(app: &TestApp) -> Fixture {
    let body = valid_signup();
    expect_json(app.signup(&body).await, 201).await;
    let login = json!({"email": body["email"], "password": body["password"]});
    let tokens = expect_json(app.post_json("/api/v1/account/login", &login).await, 200).await;
    Fixture {
        access: tokens["accessToken"].as_str().unwrap().to_owned(),
    }
}

async fn admin_app(tweak: impl FnOnce(&mut authgate::config::Config)) -> TestApp {
    spawn_app_with(|c| {
        c.admin_token = Some(secrecy::SecretString::from(ADMIN_TOKEN.to_owned()));
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn every_documented_request_bound_is_the_servers() {
    let app = admin_app(|_| {}).await;
    let fx = signed_in(&app).await;
    let doc = served_document(&app).await;
    let otp_length = usize::from(app.state.config().otp_length);
    let fields = constrained_fields(&doc);
    // Every JSON request schema states constraints, and the fields known to be
    // checked are among them (a rule dropped from the document fails here).
    let named: BTreeSet<String> = fields
        .iter()
        .map(|f| format!("{}.{}", f.schema, f.name))
        .collect();
    for want in [
        "SignupRequest.email",
        "SignupRequest.phone",
        "SignupRequest.password",
        "SignupRequest.firstName",
        "SignupRequest.lastName",
        "SignupRequest.locale",
        "LoginRequest.email",
        "LoginRequest.password",
        "LoginRequest.deviceToken",
        "LoginVerifyRequest.flowId",
        "LoginVerifyRequest.code",
        "LoginVerifyRequest.recoveryCode",
        "FlowRequest.flowId",
        "CodeRequest.code",
        "RefreshRequest.refreshToken",
        "PhoneChangeRequest.phone",
        "PasswordResetRequest.email",
        "PasswordResetRequest.phone",
        "PasswordResetConfirmRequest.email",
        "PasswordResetConfirmRequest.phone",
        "PasswordResetConfirmRequest.code",
        "PasswordResetConfirmRequest.password",
        "query.query",
        "query.limit",
        "query.createdAfter",
        "query.createdBefore",
    ] {
        assert!(named.contains(want), "{want} states no constraint");
    }
    let (sent, failures) = check_fields(&app, &fx, &doc, otp_length, |_| true).await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests disagree with the document:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Hundreds of probes, over every field: not a vacuous pass.
    assert!(sent > 500, "only {sent} requests");
}

/// A refresh token the server issues matches the documented shape (the probes
/// cannot show it: the server answers an unknown token like a malformed one).
#[tokio::test]
async fn issued_tokens_match_their_documented_shape() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let body = valid_signup();
    expect_json(app.signup(&body).await, 201).await;
    let login = json!({"email": body["email"], "password": body["password"]});
    let tokens = expect_json(app.post_json("/api/v1/account/login", &login).await, 200).await;
    let props =
        |schema: &str, name: &str| doc["components"]["schemas"][schema]["properties"][name].clone();
    let refresh = tokens["refreshToken"].as_str().unwrap();
    assert!(conforms(&props("RefreshRequest", "refreshToken"), refresh));
    let device = tokens["deviceToken"].as_str().unwrap();
    assert!(conforms(&props("LoginRequest", "deviceToken"), device));
    // And it is accepted: the base of the probes' "accepted" is real.
    let resp = app
        .post_json("/api/v1/auth/refresh", &json!({ "refreshToken": refresh }))
        .await;
    expect_json(resp, 200).await;
}

/// The served document states the running `OTP_LENGTH`, and the server holds
/// codes to it: 8 digits accepted, 7 and 9 refused.
#[tokio::test]
async fn the_served_document_states_the_running_otp_length() {
    let app = admin_app(|c| c.otp_length = 8).await;
    let fx = signed_in(&app).await;
    let doc = served_document(&app).await;
    assert_eq!(doc, authgate::routes::docs::document_json_for(8));
    let codes: Vec<Field> = constrained_fields(&doc)
        .into_iter()
        .filter(|f| f.name == "code")
        .collect();
    assert_eq!(codes.len(), 6, "every route taking a code");
    for f in &codes {
        assert_eq!(f.rules["pattern"], "^[0-9]{8}$", "{}", f.label());
        assert_eq!(f.rules["minLength"], 8, "{}", f.label());
        assert_eq!(f.rules["maxLength"], 8, "{}", f.label());
    }
    let (sent, failures) = check_fields(&app, &fx, &doc, 8, |f| f.name == "code").await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(sent > 6 * 4, "only {sent} requests");
}
