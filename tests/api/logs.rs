//! Codes never reach the logs: every log line of this test process (authgate's
//! own, and the database driver's, which logs SQL parameters at debug level) is
//! captured while codes are issued, checked and used.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use tracing_subscriber::prelude::*;

use crate::accounts::*;
use crate::helpers::*;

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a subscriber writing every debug line to memory.
pub(crate) fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let (filter, _) =
            authgate::telemetry::filter(Some("debug,hyper=info,h2=info,reqwest=info,warp=info"));
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .with(filter)
            .try_init()
            .expect("the logs test installs the only subscriber");
        buf
    })
    .clone()
}

#[tokio::test]
async fn codes_are_absent_from_logs() {
    let logs = captured_logs();
    // Ten-digit codes cannot turn up in logs by chance.
    let (app, fake) = spawn_app_with_twilio_and(|c| c.otp_length = 10).await;
    let a = account(&app).await;
    let mut codes = Vec::new();

    expect_json(
        post_auth(&app, "/api/v1/account/phone/verify/send", &a.access, None).await,
        202,
    )
    .await;
    let code = code_for(&fake, &a.phone, 0).await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": wrong(&code)})),
    )
    .await;
    expect_error(r, 401, "invalid_code").await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    codes.push(code);

    expect_json(
        post_auth(&app, "/api/v1/account/2fa/enable", &a.access, None).await,
        202,
    )
    .await;
    let code = code_for(&fake, &a.phone, 1).await;
    let r = post_auth(
        &app,
        "/api/v1/account/2fa/enable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    codes.push(code);

    let flow = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await,
        200,
    )
    .await;
    let code = code_for(&fake, &a.phone, 2).await;
    let t = expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "code": code}),
        )
        .await,
        200,
    )
    .await;
    codes.push(code);

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("/api/v1/account/login/verify"),
        "logs were not captured"
    );
    for code in &codes {
        assert_eq!(code.len(), 10);
        assert!(!text.contains(code.as_str()), "a code appears in the logs");
    }
    for secret in [
        &a.password,
        t["accessToken"].as_str().unwrap(),
        t["refreshToken"].as_str().unwrap(),
    ] {
        assert!(!text.contains(secret), "a secret appears in the logs");
    }
}

/// The log entries at info level and above: an entry starts with its timestamp
/// and may span lines. Debug entries are left out: the database driver logs
/// statement parameters there, which is a deployment's choice to switch on.
fn info_and_above(text: &str) -> Vec<String> {
    let mut entries: Vec<(bool, String)> = Vec::new();
    for line in text.lines() {
        let starts_entry = line.len() > 10
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[10] == b'T';
        if starts_entry || entries.is_empty() {
            let level = line.split_whitespace().nth(1).unwrap_or("");
            let keep = !matches!(level, "DEBUG" | "TRACE");
            entries.push((keep, line.to_owned()));
        } else if let Some(last) = entries.last_mut() {
            last.1.push('\n');
            last.1.push_str(line);
        }
    }
    entries
        .into_iter()
        .filter_map(|(keep, e)| keep.then_some(e))
        .collect()
}

#[tokio::test]
async fn login_flow_ids_never_appear_in_info_logs() {
    let logs = captured_logs();
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    enable_2fa(&app, &fake, &a).await;
    let before = count_to(&fake, &a.phone);
    let flow = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await,
        200,
    )
    .await;
    let flow_id = flow["flowId"].as_str().unwrap().to_owned();
    let code = code_for(&fake, &a.phone, before).await;
    let r = app
        .post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow_id, "code": wrong(&code)}),
        )
        .await;
    expect_error(r, 401, "invalid_code").await;
    expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow_id, "code": code}),
        )
        .await,
        200,
    )
    .await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let entries = info_and_above(&text);
    assert!(
        entries
            .iter()
            .any(|e| e.contains("login needs an SMS code")),
        "info logs were not captured"
    );
    let leaked: Vec<&String> = entries.iter().filter(|e| e.contains(&flow_id)).collect();
    assert!(
        leaked.is_empty(),
        "a flow id appears in the logs: {leaked:?}"
    );
}

#[tokio::test]
async fn hs256_is_announced_with_a_warning_and_no_secret_reaches_the_logs() {
    let logs = captured_logs();
    let secret = "hs256-shared-secret-never-logged-0123456789";
    let master = "the-master-key-never-logged-0123456789abc";
    let app = spawn_app_with(|c| {
        c.jwt_algorithm = authgate::keyring::SigningAlg::HS256;
        c.jwt_secret = Some(secrecy::SecretString::from(secret.to_owned()));
        c.master_key = Some(secrecy::SecretString::from(master.to_owned()));
    })
    .await;
    let a = account(&app).await;
    app.state
        .keyring()
        .rotate(authgate::keyring::Purpose::Codes, true)
        .await
        .unwrap();
    assert_eq!(me_status(&app, &a.access).await, 200);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("JWT_ALGORITHM=HS256: access tokens are signed with the shared JWT_SECRET"),
        "no start-up warning"
    );
    assert!(text.contains("key rotated"), "rotations are logged");
    assert!(!text.contains(secret) && !text.contains(master));
}
