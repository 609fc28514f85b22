//! The webhook sender (`SMS_SENDER=webhook`) end to end: codes go through the
//! outbox and the SMS actor to a real HTTP receiver on loopback, signed per the
//! Standard Webhooks specification, with Twilio's retry rules.
//!
//! The receiver checks signatures with its own HMAC here. The `#[ignore]`d
//! `sms_webhook_independent_*` test hands every request to a verifier outside
//! this crate (`scripts/webhooks/run.sh` runs it with the `standardwebhooks`
//! package from PyPI).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authgate::config::WebhookConfig;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::Sha256;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use crate::accounts::{account, post_auth, Account};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);
const SEND: &str = "/api/v1/account/phone/verify/send";
const CONFIRM: &str = "/api/v1/account/phone/verify/confirm";

/// The environment variable naming the independent verifier: a program and
/// its arguments, separated by spaces (`<venv python> scripts/webhooks/verify.py`).
const VERIFIER_VAR: &str = "AUTHGATE_WEBHOOK_VERIFIER";

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200 with `{"id": "rcv-<n>"}`.
    Ok,
    /// This status, with `Retry-After` seconds when given.
    Status(u16, Option<u64>),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Bytes,
    at: Instant,
    answer: Answer,
    /// The independent verifier's verdict, when one is attached.
    verdict: Option<Result<(), String>>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn id(&self) -> &str {
        self.header("webhook-id").unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The code in the message text.
    fn code(&self) -> String {
        let v = self.json();
        let text = v["data"]["body"].as_str().unwrap().to_owned();
        text.split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() >= 4)
            .unwrap_or_else(|| panic!("no code in the message"))
            .to_owned()
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: VecDeque<Answer>,
}

/// A real HTTP receiver on loopback: records every request and answers as
/// scripted (then 200). With a verifier attached, each request is first handed
/// to it and anything it rejects is answered 401.
struct Receiver {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start(verifier: Option<Verifier>) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let verifier = verifier.map(Arc::new);
        let route = {
            let inner = inner.clone();
            warp::post()
                .and(warp::path("hook"))
                .and(warp::path::end())
                .and(warp::header::headers_cloned())
                .and(warp::body::bytes())
                .then(move |headers: HeaderMap, body: Bytes| {
                    let inner = inner.clone();
                    let verifier = verifier.clone();
                    async move {
                        let headers: Vec<(String, String)> = headers
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect();
                        let verdict = match &verifier {
                            Some(v) => Some(v.verify(&headers, &body).await),
                            None => None,
                        };
                        let mut g = inner.lock().unwrap();
                        let answer = match &verdict {
                            Some(Err(_)) => Answer::Status(401, None),
                            _ => g.script.pop_front().unwrap_or(Answer::Ok),
                        };
                        let n = g.received.len();
                        g.received.push(Received {
                            headers,
                            body,
                            at: Instant::now(),
                            answer,
                            verdict,
                        });
                        match answer {
                            Answer::Ok => warp::reply::json(&json!({"id": format!("rcv-{n}")}))
                                .into_response(),
                            Answer::Status(status, retry_after) => {
                                let mut r = warp::reply::with_status(
                                    "",
                                    StatusCode::from_u16(status).unwrap(),
                                )
                                .into_response();
                                if let Some(secs) = retry_after {
                                    r.headers_mut()
                                        .insert("retry-after", secs.to_string().parse().unwrap());
                                }
                                r
                            }
                        }
                    }
                })
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        Receiver {
            addr,
            inner,
            server: tokio::spawn(warp::serve(route).incoming(listener).run()),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived; panics after `WAIT`.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {} of {n} requests after {WAIT:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A fresh `whsec_` secret: base64 of 32 random bytes.
fn fresh_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// An app sending through the webhook to `receiver`.
async fn app_with_webhook(receiver: &Receiver, secret: &str) -> TestApp {
    let url = receiver.url();
    let secret = secret.to_owned();
    spawn_app_with(move |c| {
        c.sms.webhook = Some(WebhookConfig {
            url,
            secret: SecretString::from(secret),
        });
    })
    .await
}

/// The signature check, written here from the specification and nothing in
/// the crate: HMAC-SHA256 keyed with the decoded secret over
/// `{webhook-id}.{webhook-timestamp}.{body}`, base64, after `v1,`.
fn signature_verifies(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(r.id().as_bytes());
    mac.update(b".");
    mac.update(r.header("webhook-timestamp").unwrap().as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = mac.finalize().into_bytes();
    r.header("webhook-signature")
        .unwrap()
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .any(|sig| sig.as_slice() == expected.as_slice())
}

/// The headers and payload the specification and authgate's contract promise.
fn assert_well_formed(r: &Received, phone: &str) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.id().starts_with("msg_"), "{}", r.id());
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 60,
        "webhook-timestamp {ts} is not now"
    );
    let v = r.json();
    assert_eq!(v["type"], "sms.send", "{v}");
    assert_eq!(v["data"]["to"], phone, "{v}");
    assert_eq!(v["data"]["messageId"], r.id(), "{v}");
    let sent = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(v["data"]["expiresAt"].as_str().unwrap()).unwrap();
    assert!(expires > sent, "{v}");
    assert_eq!(sent.timestamp(), ts, "{v}");
}

async fn send_code(app: &TestApp, a: &Account) {
    expect_json(post_auth(app, SEND, &a.access, None).await, 202).await;
}

async fn confirm(app: &TestApp, a: &Account, code: &str) -> reqwest::Response {
    post_auth(app, CONFIRM, &a.access, Some(json!({"code": code}))).await
}

/// The one outbox row's state, attempts, provider id and last error.
async fn outbox(app: &TestApp) -> (String, i32, Option<String>, Option<String>) {
    let db = app.db_client().await;
    let r = db
        .query_one(
            "SELECT state, attempts, provider_sid, last_error FROM sms_outbox",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

async fn wait_for_state(
    app: &TestApp,
    state: &str,
) -> (String, i32, Option<String>, Option<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = outbox(app).await;
        if row.0 == state {
            return row;
        }
        assert!(Instant::now() < deadline, "outbox never {state}: {row:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Gives the actor time for a retry or duplicate that must not happen.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn sms_webhook_delivers_a_signed_code_that_confirms() {
    let receiver = Receiver::start(None).await;
    let secret = fresh_secret();
    let app = app_with_webhook(&receiver, &secret).await;
    let a = account(&app).await;

    send_code(&app, &a).await;
    let got = receiver.wait_for(1).await;
    let r = &got[0];
    assert_well_formed(r, &a.phone);
    assert!(signature_verifies(&secret, r), "signature does not verify");
    // Another key would not verify it: the check above is not vacuous.
    assert!(!signature_verifies(&fresh_secret(), r));

    let user = expect_json(confirm(&app, &a, &r.code()).await, 200).await;
    assert_eq!(user["isPhoneVerified"], true);

    // Recorded as sent once, under our id and the receiver's.
    let (_, attempts, sid, _) = wait_for_state(&app, "sent").await;
    assert_eq!(attempts, 1);
    assert_eq!(sid.as_deref(), Some(format!("{}:rcv-0", r.id()).as_str()));
    settle().await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn sms_webhook_retries_503_and_429_with_the_same_id_and_delivers_once() {
    let receiver = Receiver::start(None).await;
    receiver.script([Answer::Status(503, Some(1)), Answer::Status(429, None)]);
    let secret = fresh_secret();
    let app = app_with_webhook(&receiver, &secret).await;
    let a = account(&app).await;

    send_code(&app, &a).await;
    let got = receiver.wait_for(3).await;
    let answers: Vec<Answer> = got.iter().map(|r| r.answer).collect();
    assert_eq!(
        answers,
        [
            Answer::Status(503, Some(1)),
            Answer::Status(429, None),
            Answer::Ok
        ]
    );
    // One message: one webhook-id on every attempt, each attempt signed.
    for r in &got {
        assert_eq!(r.id(), got[0].id());
        assert_well_formed(r, &a.phone);
        assert!(signature_verifies(&secret, r));
    }
    // Retry-After: 1 was honoured (a little slack for clock granularity).
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );

    let (_, attempts, _, _) = wait_for_state(&app, "sent").await;
    assert_eq!(attempts, 3);
    settle().await;
    let got = receiver.received();
    assert_eq!(got.len(), 3, "delivered more than once");
    let user = expect_json(confirm(&app, &a, &got[2].code()).await, 200).await;
    assert_eq!(user["isPhoneVerified"], true);
}

#[tokio::test]
async fn sms_webhook_400_is_permanent() {
    let receiver = Receiver::start(None).await;
    receiver.script([Answer::Status(400, None)]);
    let app = app_with_webhook(&receiver, &fresh_secret()).await;
    let a = account(&app).await;

    send_code(&app, &a).await;
    let (_, attempts, sid, last_error) = wait_for_state(&app, "failed").await;
    assert_eq!(attempts, 1);
    assert_eq!(sid, None);
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 400")),
        "{last_error:?}"
    );
    settle().await;
    assert_eq!(receiver.received().len(), 1, "a 400 was retried");
}

/// The independent verifier: a child process per request that reads
/// `{"secret", "headers", "body"}` (body base64) as JSON on stdin and prints
/// `ok` or `error: …`.
struct Verifier {
    program: String,
    args: Vec<String>,
    secret: String,
}

impl Verifier {
    /// From `AUTHGATE_WEBHOOK_VERIFIER`; fails the test when it is missing.
    fn from_env(secret: &str) -> Verifier {
        let Some(line) = std::env::var(VERIFIER_VAR)
            .ok()
            .filter(|v| !v.trim().is_empty())
        else {
            panic!(
                "{VERIFIER_VAR} is not set: this test needs an independent Standard Webhooks \
                 verifier. Run `bash scripts/webhooks/run.sh`, which installs the standardwebhooks \
                 package from PyPI into target/webhooks-venv and sets \
                 {VERIFIER_VAR}=\"<venv python> scripts/webhooks/verify.py\""
            )
        };
        let mut parts = line.split_whitespace().map(str::to_owned);
        Verifier {
            program: parts.next().unwrap(),
            args: parts.collect(),
            secret: secret.to_owned(),
        }
    }

    async fn verify(&self, headers: &[(String, String)], body: &[u8]) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let input = json!({
            "secret": self.secret,
            "headers": headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<String, Value>>(),
            "body": base64::engine::general_purpose::STANDARD.encode(body),
        });
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{VERIFIER_VAR}: cannot run {}: {e}", self.program));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("the verifier answers in time")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match stdout.as_str() {
            "ok" if out.status.success() => Ok(()),
            s if s.starts_with("error") => Err(s.to_owned()),
            _ => panic!(
                "the verifier broke its protocol: status {}, stdout {stdout:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

#[tokio::test]
#[ignore = "needs an independent verifier: bash scripts/webhooks/run.sh"]
async fn sms_webhook_independent_verifier_accepts_real_messages_and_rejects_tampering() {
    let secret = fresh_secret();
    let receiver = Receiver::start(Some(Verifier::from_env(&secret))).await;
    // A retry too: the second attempt has its own timestamp and signature.
    receiver.script([Answer::Status(503, None)]);
    let app = app_with_webhook(&receiver, &secret).await;
    let a = account(&app).await;

    send_code(&app, &a).await;
    let got = receiver.wait_for(2).await;
    for r in &got {
        assert_eq!(
            r.verdict,
            Some(Ok(())),
            "standardwebhooks rejected a real message"
        );
    }
    assert_eq!(got[0].id(), got[1].id());
    assert_eq!(got[1].answer, Answer::Ok);
    let user = expect_json(confirm(&app, &a, &got[1].code()).await, 200).await;
    assert_eq!(user["isPhoneVerified"], true);

    // The same verifier refuses what authgate did not sign.
    let verifier = Verifier::from_env(&secret);
    let real = &got[1];
    let tampered_body = String::from_utf8(real.body.to_vec())
        .unwrap()
        .replace(&a.phone, "+14155550199");
    assert_ne!(tampered_body.as_bytes(), &real.body[..]);
    let verdict = verifier
        .verify(&real.headers, tampered_body.as_bytes())
        .await;
    assert!(verdict.is_err(), "a tampered body verified: {verdict:?}");
    let mut other_id = real.headers.clone();
    for (k, v) in &mut other_id {
        if k == "webhook-id" {
            *v = "msg_someone_else".to_owned();
        }
    }
    assert!(verifier.verify(&other_id, &real.body).await.is_err());
    let wrong_key = Verifier::from_env(&fresh_secret());
    assert!(wrong_key.verify(&real.headers, &real.body).await.is_err());
    // And the untouched request still verifies: the refusals are not noise.
    assert_eq!(verifier.verify(&real.headers, &real.body).await, Ok(()));
}
