//! Codes never reach the logs: every log line of this test process (authgate's
//! own, and the database driver's, which logs SQL parameters at debug level) is
//! captured while codes are issued, checked and used.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;

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
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,h2=info,reqwest=info,warp=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
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
