//! The OpenAPI document against the code: the route list both ways, the served
//! and committed copies, and real responses validated against its schemas.

use std::collections::BTreeSet;

use authgate::routes::docs::document_json;
use authgate::routes::ROUTES;
use serde_json::{json, Value};

use crate::accounts::{code_for, count_to, post_auth, wrong};
use crate::helpers::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// (lower-case method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_owned(), path.clone()));
            }
        }
    }
    out
}

fn declared() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_ascii_lowercase(), (*p).to_owned()))
        .collect()
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = document_json();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = documented(&doc);
    let declared = declared();
    assert_eq!(declared.len(), ROUTES.len(), "ROUTES has duplicates");
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    assert!(extra.is_empty(), "documented but not in ROUTES: {extra:?}");
}

/// Whether the app answered "no such route" (404 `not_found`) or "not with this
/// method" (405): either means no filter took the request.
async fn unrouted(resp: reqwest::Response) -> Option<String> {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match (status, body["code"].as_str()) {
        (404, Some("not_found")) | (405, Some("method_not_allowed")) => {
            Some(format!("{status} {}", body["code"]))
        }
        _ => None,
    }
}

/// Each operation's error responses are exactly its route's error table (the
/// one the boundary checks answers against): every code under its status,
/// nothing else.
#[test]
fn documented_errors_are_the_route_tables() {
    let doc = document_json();
    for (method, path) in ROUTES {
        let table = authgate::routes::errors::of_route(method, path)
            .unwrap_or_else(|| panic!("{method} {path} has no error table"));
        let expected: BTreeSet<(String, String)> = table
            .iter()
            .map(|e| (e.status().as_str().to_owned(), e.code().to_owned()))
            .collect();
        let op = &doc["paths"][*path][method.to_ascii_lowercase()];
        let mut documented = BTreeSet::new();
        for (status, response) in op["responses"].as_object().expect("responses") {
            let Some(all_of) = response
                .pointer("/content/application~1json/schema/allOf")
                .and_then(Value::as_array)
            else {
                continue; // a success answer
            };
            for code in all_of[1]["properties"]["code"]["enum"]
                .as_array()
                .expect("codes")
            {
                documented.insert((status.clone(), code.as_str().unwrap().to_owned()));
            }
        }
        assert_eq!(documented, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn routes_match_the_running_filters() {
    // With the admin API on: off, its routes answer 404 like unknown ones.
    let app = spawn_app_with(|c| {
        c.admin_token = Some(secrecy::SecretString::from(
            "routes-test-admin-token-0123456789abcdef".to_owned(),
        ))
    })
    .await;
    let send = |method: &str, path: &str| {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        app.http.request(method, app.url(path)).send()
    };
    // Every declared route is served by some filter.
    for (method, path) in ROUTES {
        // A path parameter gets a well-formed value.
        let path = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        let resp = send(method, &path).await.unwrap();
        if let Some(why) = unrouted(resp).await {
            panic!("{method} {path} is in ROUTES but the app answers {why}");
        }
    }
    // Every other method on a declared path, and paths near the declared ones,
    // reach no filter: a route served but not declared would show up here.
    let declared = declared();
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    let mut probes: Vec<(String, String)> = Vec::new();
    for path in &paths {
        for m in METHODS {
            if !declared.contains(&(m.to_owned(), (*path).to_owned())) {
                probes.push((m.to_owned(), (*path).to_owned()));
            }
        }
        probes.push(("get".into(), format!("{path}/x")));
        probes.push(("post".into(), format!("{path}/x")));
    }
    for path in [
        "/",
        "/api",
        "/api/v1",
        "/api/v1/account",
        "/api/v1/auth",
        "/api/v2/account/me",
        "/api/v1/healthz",
        "/openapi.json",
        "/api/v1/account/2fa",
        "/api/v1/webhooks/twilio",
    ] {
        probes.push(("get".into(), path.into()));
        probes.push(("post".into(), path.into()));
    }
    for (method, path) in probes {
        let resp = send(&method, &path).await.unwrap();
        let status = resp.status().as_u16();
        if unrouted(resp).await.is_none() {
            panic!("{method} {path} answered {status}, but it is not in ROUTES: declare it in src/routes/mod.rs");
        }
    }
}

/// The document as the running app serves it.
pub(crate) async fn served_document(app: &TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    expect_json(r, 200).await
}

#[tokio::test]
async fn served_document_equals_generated_and_committed() {
    let app = spawn_app().await;
    let served = served_document(&app).await;
    // The server states its own configuration (the OTP length); the committed
    // copy, the defaults, which the test app runs with.
    let running = app.state.config().otp_length;
    assert_eq!(
        served,
        authgate::routes::docs::document_json_for(running),
        "served document differs from the one generated for its configuration"
    );
    assert_eq!(running, authgate::routes::docs::default_otp_length());
    let generated = document_json();
    assert_eq!(
        served, generated,
        "served document differs from the generated one"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let committed: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    assert!(
        committed == generated,
        "openapi.json is missing or stale: run `cargo run -- openapi` and commit the result"
    );
}

/// Validates instances against schemas inside the document, `$ref`s resolved
/// against the whole document.
pub(crate) struct Contract {
    doc: Value,
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    pub(crate) fn new() -> Contract {
        Contract {
            doc: document_json(),
        }
    }

    /// Validates `instance` against the schema at `pointer` (a JSON pointer into
    /// the document); returns the errors.
    fn errors(&self, pointer: &str, instance: &Value) -> Vec<String> {
        assert!(
            self.doc.pointer(pointer).is_some(),
            "the document has nothing at {pointer}"
        );
        // The document itself is the schema resource, with the pointer as its
        // root: OpenAPI's own keywords are unknown to JSON Schema and ignored.
        let mut schema = self.doc.clone();
        schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        // Percent-encoded for the URI fragment: path templates such as `{id}`
        // have braces.
        let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
        schema["$ref"] = json!(format!("#{fragment}"));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}"));
        validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect()
    }

    fn response_pointer(method: &str, path: &str, status: u16) -> String {
        format!(
            "/paths/{}/{}/responses/{status}/content/application~1json/schema",
            escape(path),
            method
        )
    }

    /// Asserts a real response body matches the document for its route and status.
    pub(crate) fn response(&self, method: &str, path: &str, status: u16, body: &Value) {
        let pointer = Self::response_pointer(method, path, status);
        let errors = self.errors(&pointer, body);
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match the document: {errors:?}\nbody: {body}"
        );
    }

    /// Asserts a request body the tests send matches the documented request.
    fn request(&self, method: &str, path: &str, body: &Value) {
        let pointer = format!(
            "/paths/{}/{}/requestBody/content/application~1json/schema",
            escape(path),
            method
        );
        let errors = self.errors(&pointer, body);
        assert!(
            errors.is_empty(),
            "request to {method} {path} does not match the document: {errors:?}\nbody: {body}"
        );
    }
}

/// Reads a response, asserts its status, validates it, returns the body.
async fn checked(
    c: &Contract,
    method: &str,
    path: &str,
    resp: reqwest::Response,
    status: u16,
) -> Value {
    let body = expect_json(resp, status).await;
    c.response(method, path, status, &body);
    body
}

const SIGNUP: &str = "/api/v1/account/signup";
const LOGIN: &str = "/api/v1/account/login";
const VERIFY: &str = "/api/v1/account/login/verify";
const RESEND: &str = "/api/v1/account/login/resend";
const ME: &str = "/api/v1/account/me";
const AUDIT: &str = "/api/v1/account/audit";
const PHONE_SEND: &str = "/api/v1/account/phone/verify/send";
const PHONE_CONFIRM: &str = "/api/v1/account/phone/verify/confirm";
const ENABLE: &str = "/api/v1/account/2fa/enable";
const ENABLE_CONFIRM: &str = "/api/v1/account/2fa/enable/confirm";
const REFRESH: &str = "/api/v1/auth/refresh";
const LOGOUT: &str = "/api/v1/auth/logout";
const RECOVERY: &str = "/api/v1/account/2fa/recovery-codes";

#[tokio::test]
async fn real_responses_match_the_document() {
    let c = Contract::new();
    // The 409 answers of sign-up exist only with the reveal setting.
    let (app, fake) = spawn_app_with_twilio_and(|c| c.signup_reveal_taken = true).await;

    // Sign-up: 201, 409, 400.
    let body = valid_signup();
    c.request("post", SIGNUP, &body);
    let user = checked(&c, "post", SIGNUP, app.signup(&body).await, 201).await;
    let phone = user["phone"].as_str().unwrap().to_owned();
    let e = expect_error(app.signup(&body).await, 409, "email_taken").await;
    c.response("post", SIGNUP, 409, &e);
    let e = expect_error(
        app.signup(&json!({"email": "nope", "password": "short"}))
            .await,
        400,
        "validation_failed",
    )
    .await;
    c.response("post", SIGNUP, 400, &e);

    // Login: 200 tokens, 401.
    let creds = json!({"email": body["email"], "password": body["password"]});
    c.request("post", LOGIN, &creds);
    let tokens = checked(&c, "post", LOGIN, app.post_json(LOGIN, &creds).await, 200).await;
    assert_eq!(tokens["status"], "authenticated");
    let access = tokens["accessToken"].as_str().unwrap().to_owned();
    let bad = json!({"email": body["email"], "password": "wrong-passw0rd"});
    let e = expect_error(app.post_json(LOGIN, &bad).await, 401, "invalid_credentials").await;
    c.response("post", LOGIN, 401, &e);

    // The current user: 200, 401; the audit trail.
    let me = app
        .http
        .get(app.url(ME))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    checked(&c, "get", ME, me, 200).await;
    let e = expect_error(
        app.http.get(app.url(ME)).send().await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    c.response("get", ME, 401, &e);
    let audit = app
        .http
        .get(app.url(AUDIT))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let trail = checked(&c, "get", AUDIT, audit, 200).await;
    assert!(!trail["events"].as_array().unwrap().is_empty());

    // Refresh: 200 rotated tokens.
    let refresh_body = json!({"refreshToken": tokens["refreshToken"]});
    c.request("post", REFRESH, &refresh_body);
    let rotated = checked(
        &c,
        "post",
        REFRESH,
        app.post_json(REFRESH, &refresh_body).await,
        200,
    )
    .await;
    assert!(rotated["accessToken"].is_string());
    // Past the retry grace window, the rotated token again is reuse.
    app.clock.advance(std::time::Duration::from_secs(11));
    let e = expect_error(
        app.post_json(REFRESH, &refresh_body).await,
        401,
        "refresh_token_reused",
    )
    .await;
    c.response("post", REFRESH, 401, &e);
    // Reuse ended that session, its access tokens included: log in again.
    let fresh = expect_json(app.post_json(LOGIN, &creds).await, 200).await;
    let access = fresh["accessToken"].as_str().unwrap().to_owned();

    // Phone verification: 202, 401 invalid_code with attemptsLeft, 200, 409.
    let before = count_to(&fake, &phone);
    let sent = checked(
        &c,
        "post",
        PHONE_SEND,
        post_auth(&app, PHONE_SEND, &access, None).await,
        202,
    )
    .await;
    assert_eq!(sent["status"], "code_sent");
    let code = code_for(&fake, &phone, before).await;
    let wrong_body = json!({"code": wrong(&code)});
    c.request("post", PHONE_CONFIRM, &wrong_body);
    let e = expect_error(
        post_auth(&app, PHONE_CONFIRM, &access, Some(wrong_body)).await,
        401,
        "invalid_code",
    )
    .await;
    assert!(e["attemptsLeft"].is_u64(), "{e}");
    c.response("post", PHONE_CONFIRM, 401, &e);
    let verified = checked(
        &c,
        "post",
        PHONE_CONFIRM,
        post_auth(&app, PHONE_CONFIRM, &access, Some(json!({"code": code}))).await,
        200,
    )
    .await;
    assert_eq!(verified["isPhoneVerified"], true);
    let e = expect_error(
        post_auth(&app, PHONE_SEND, &access, None).await,
        409,
        "phone_already_verified",
    )
    .await;
    c.response("post", PHONE_SEND, 409, &e);

    // 2FA on: 202, 200.
    let before = count_to(&fake, &phone);
    checked(
        &c,
        "post",
        ENABLE,
        post_auth(&app, ENABLE, &access, None).await,
        202,
    )
    .await;
    let code = code_for(&fake, &phone, before).await;
    let on = checked(
        &c,
        "post",
        ENABLE_CONFIRM,
        post_auth(&app, ENABLE_CONFIRM, &access, Some(json!({"code": code}))).await,
        200,
    )
    .await;
    assert_eq!(on["twoFA"], true);

    // A 2FA login: 200 otp_required, 429 on an early resend, 401, 200 tokens.
    let before = count_to(&fake, &phone);
    let pending = checked(&c, "post", LOGIN, app.post_json(LOGIN, &creds).await, 200).await;
    assert_eq!(pending["status"], "otp_required");
    let code = code_for(&fake, &phone, before).await;
    let flow = json!({"flowId": pending["flowId"]});
    c.request("post", RESEND, &flow);
    let e = expect_error(app.post_json(RESEND, &flow).await, 429, "too_many_requests").await;
    c.response("post", RESEND, 429, &e);
    let wrong_verify = json!({"flowId": pending["flowId"], "code": wrong(&code)});
    c.request("post", VERIFY, &wrong_verify);
    let e = expect_error(
        app.post_json(VERIFY, &wrong_verify).await,
        401,
        "invalid_code",
    )
    .await;
    c.response("post", VERIFY, 401, &e);
    let verify = json!({"flowId": pending["flowId"], "code": code});
    let tokens = checked(
        &c,
        "post",
        VERIFY,
        app.post_json(VERIFY, &verify).await,
        200,
    )
    .await;
    let e = expect_error(app.post_json(VERIFY, &verify).await, 410, "flow_finished").await;
    c.response("post", VERIFY, 410, &e);

    // Recovery codes: shown when 2FA turned on; replaced after an SMS login
    // (200), not with the password-only session (401); one finishes a 2FA
    // login (200 tokens with recoveryCodesLeft).
    assert_eq!(on["recoveryCodes"].as_array().unwrap().len(), 10, "{on}");
    let sms_access = tokens["accessToken"].as_str().unwrap();
    let set = checked(
        &c,
        "post",
        RECOVERY,
        post_auth(&app, RECOVERY, sms_access, None).await,
        200,
    )
    .await;
    let e = expect_error(
        post_auth(&app, RECOVERY, &access, None).await,
        401,
        "step_up_required",
    )
    .await;
    c.response("post", RECOVERY, 401, &e);
    app.clock.advance(std::time::Duration::from_secs(31));
    let pending = expect_json(app.post_json(LOGIN, &creds).await, 200).await;
    let recovered = json!({"flowId": pending["flowId"], "recoveryCode": set["recoveryCodes"][0]});
    c.request("post", VERIFY, &recovered);
    let t = checked(
        &c,
        "post",
        VERIFY,
        app.post_json(VERIFY, &recovered).await,
        200,
    )
    .await;
    assert_eq!(t["recoveryCodesLeft"], 9, "{t}");

    // Logout (204, no body) and the operational endpoints.
    let logout = json!({"refreshToken": tokens["refreshToken"]});
    c.request("post", LOGOUT, &logout);
    let r = app.post_json(LOGOUT, &logout).await;
    assert_eq!(r.status().as_u16(), 204);
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    checked(&c, "get", "/healthz", health, 200).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    checked(&c, "get", "/readyz", ready, 200).await;
}

/// The schemas are strict enough that a renamed, missing or extra field fails,
/// in a response and in a request.
#[test]
fn the_schemas_catch_a_renamed_field() {
    let c = Contract::new();
    let user = json!({"id": "3c931f6d-b04b-41e8-b991-036f086d9090", "email": "ada@example.com",
        "phone": "+14155550100", "firstName": "Ada", "lastName": "Lovelace", "twoFA": false,
        "isPhoneVerified": false, "createdAt": "2026-11-27T10:42:17.628Z",
        "updatedAt": "2026-11-27T10:42:17.628Z"});
    let ok = Contract::response_pointer("get", ME, 200);
    assert!(
        c.errors(&ok, &user).is_empty(),
        "{:?}",
        c.errors(&ok, &user)
    );
    let mut renamed = user.clone();
    let first = renamed
        .as_object_mut()
        .unwrap()
        .remove("firstName")
        .unwrap();
    renamed["first_name"] = first;
    assert!(
        !c.errors(&ok, &renamed).is_empty(),
        "a renamed field passed"
    );
    let mut bad_time = user.clone();
    bad_time["createdAt"] = json!("yesterday");
    assert!(
        !c.errors(&ok, &bad_time).is_empty(),
        "a bad date-time passed"
    );
    let tokens = json!({"status": "otp_required", "accessToken": "a", "refreshToken": "r",
        "tokenType": "Bearer", "expiresIn": 900});
    assert!(!c
        .errors(&Contract::response_pointer("post", REFRESH, 200), &tokens)
        .is_empty());
    let pointer = format!(
        "/paths/{}/post/requestBody/content/application~1json/schema",
        escape(SIGNUP)
    );
    let mut signup = valid_signup();
    let first = signup.as_object_mut().unwrap().remove("firstName").unwrap();
    signup["first_name"] = first;
    assert!(
        !c.errors(&pointer, &signup).is_empty(),
        "a renamed request field passed"
    );
}

/// Every example in the document is valid against its own schema.
#[test]
fn examples_match_their_schemas() {
    let c = Contract::new();
    let mut checked = 0;
    for (path, item) in c.doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let Some(examples) = response.pointer("/content/application~1json/examples") else {
                    continue;
                };
                let pointer = format!(
                    "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
                    escape(path)
                );
                for (name, example) in examples.as_object().unwrap() {
                    let errors = c.errors(&pointer, &example["value"]);
                    assert!(
                        errors.is_empty(),
                        "{method} {path} {status} example {name}: {errors:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} examples");
}
