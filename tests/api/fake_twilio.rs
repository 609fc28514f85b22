//! A fake Twilio: a real HTTP server on loopback that speaks the Messages API as
//! `shared/twilio/CONTRACT.md` describes, checks every request against it, and
//! answers as scripted: 201, 400 with a Twilio error code, 429 with `Retry-After`,
//! 500, or never (a hang the client has to time out).
//!
//! Accepted messages are recorded (`messages`), every request is recorded with
//! its arrival time and answer (`attempts`), and contract violations are kept
//! (`violations`) so tests can assert there were none.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use warp::http::StatusCode;
use warp::Filter;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "fake-twilio-auth-token-0123456789";
pub const FROM_NUMBER: &str = "+15005550006";

/// How the fake answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 201 with a Message resource: the message is recorded as delivered.
    Accept,
    /// An error answer with a Twilio code, e.g. `Error { status: 400, code: 21211 }`.
    Error { status: u16, code: i32 },
    /// 429 / 20429, with `Retry-After` seconds when given.
    TooMany { retry_after: Option<u64> },
    /// 500 (Twilio side failure).
    ServerError,
    /// No answer (for an hour): the client must time out or give up.
    Hang,
}

/// A message Twilio accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub to: String,
    pub body: String,
    pub sid: String,
}

/// One request, whatever its answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub to: String,
    pub body: String,
    pub at: Instant,
    pub answer: Fault,
    pub form: Vec<(String, String)>,
}

impl Attempt {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    messages: Vec<Captured>,
    attempts: Vec<Attempt>,
    /// Answers for the next requests, in arrival order; then `default`.
    script: VecDeque<Fault>,
    default: Option<Fault>,
    /// Answers for every request to one number (before the script).
    per_to: HashMap<String, Fault>,
    latency: Duration,
    violations: Vec<String>,
    /// Until then every request is answered 503 / 20503 (an outage).
    outage_until: Option<Instant>,
    in_flight: usize,
    max_in_flight: usize,
}

pub struct FakeTwilio {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Counts a request in flight for as long as its handler runs, even if the
/// client goes away and the handler is dropped.
struct InFlight(Arc<Mutex<Inner>>);

impl InFlight {
    fn enter(inner: &Arc<Mutex<Inner>>) -> InFlight {
        let mut g = inner.lock().unwrap();
        g.in_flight += 1;
        g.max_in_flight = g.max_in_flight.max(g.in_flight);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut g) = self.0.lock() {
            g.in_flight -= 1;
        }
    }
}

fn twilio_error(status: u16, code: i32, message: &str) -> warp::reply::Response {
    let status = StatusCode::from_u16(status).unwrap();
    warp::reply::with_status(
        warp::reply::json(&json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
        status,
    )
    .into_response()
}

use warp::Reply;

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let inner = Arc::new(Mutex::new(Inner {
            default: Some(Fault::Accept),
            ..Inner::default()
        }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let route = {
            let inner = inner.clone();
            let changed = changed.clone();
            warp::post()
                .and(warp::path!(
                    "2010-04-01" / "Accounts" / String / "Messages.json"
                ))
                .and(warp::header::optional::<String>("authorization"))
                .and(warp::header::optional::<String>("content-type"))
                .and(warp::body::form::<Vec<(String, String)>>())
                .then(move |sid, auth, ctype, form| {
                    let inner = inner.clone();
                    let changed = changed.clone();
                    async move { handle(inner, changed, sid, auth, ctype, form).await }
                })
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        FakeTwilio {
            addr,
            inner,
            changed,
            server,
        }
    }

    /// What `TWILIO_API_BASE_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepted messages, in order.
    pub fn messages(&self) -> Vec<Captured> {
        self.inner.lock().unwrap().messages.clone()
    }

    /// Every request, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.lock().unwrap().attempts.clone()
    }

    /// Requests that broke the contract (wrong path, auth, content type, fields).
    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }

    /// The next requests get these answers, in order; later ones the default.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().script.extend(faults);
    }

    /// The answer once the script is used up (initially `Accept`).
    pub fn set_default(&self, fault: Fault) {
        self.inner.lock().unwrap().default = Some(fault);
    }

    /// Every request to `to` gets this answer (e.g. 400 / 21211).
    pub fn fail_to(&self, to: &str, fault: Fault) {
        self.inner
            .lock()
            .unwrap()
            .per_to
            .insert(to.to_owned(), fault);
    }

    /// An outage: every request in the next `length` is answered 503 (Twilio
    /// error 20503), whatever the script says; then answers resume as before.
    #[allow(dead_code)] // used by tests/faults
    pub fn outage_for(&self, length: Duration) {
        self.inner.lock().unwrap().outage_until = Some(Instant::now() + length);
    }

    /// Delay before every answer, so concurrency becomes observable.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    /// Waits until `check` holds on the fake's records; panics after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Captured], &[Attempt]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let g = self.inner.lock().unwrap();
                if check(&g.messages, &g.attempts) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let g = self.inner.lock().unwrap();
                panic!(
                    "fake Twilio: timed out waiting for {what}: {} messages, {} attempts, violations {:?}",
                    g.messages.len(),
                    g.attempts.len(),
                    g.violations
                );
            }
        }
    }

    /// The first message to `to` beyond the first `after` such messages.
    pub async fn wait_for_message_to(&self, to: &str, after: usize, timeout: Duration) -> Captured {
        self.wait_until(
            &format!("message {} to {to}", after + 1),
            timeout,
            |m, _| m.iter().filter(|c| c.to == to).count() > after,
        )
        .await;
        self.messages()
            .into_iter()
            .filter(|c| c.to == to)
            .nth(after)
            .unwrap()
    }

    /// Waits until at least `n` messages were accepted; returns them all.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Captured> {
        self.wait_until(&format!("{n} messages"), timeout, |m, _| m.len() >= n)
            .await;
        self.messages()
    }

    /// Waits until at least `n` requests arrived, whatever their answer.
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        self.wait_until(&format!("{n} attempts"), timeout, |_, a| a.len() >= n)
            .await;
        self.attempts()
    }
}

async fn handle(
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    sid: String,
    auth: Option<String>,
    ctype: Option<String>,
    form: Vec<(String, String)>,
) -> warp::reply::Response {
    let _in_flight = InFlight::enter(&inner);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let to = field("To").unwrap_or_default();
    let body = field("Body").unwrap_or_default();

    // The contract: each breach is answered as Twilio would, and remembered.
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    let breach = if sid != ACCOUNT_SID {
        Some((404, 20404, format!("path names account {sid}")))
    } else if auth.as_deref() != Some(expected_auth.as_str()) {
        Some((401, 20003, "missing or wrong basic auth".to_owned()))
    } else if !ctype
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        Some((400, 20001, format!("content type {ctype:?}")))
    } else if to.is_empty() {
        Some((400, 21604, "To is required".to_owned()))
    } else if body.is_empty() || body.chars().count() > 1600 {
        Some((
            400,
            21602,
            "Body missing or over 1600 characters".to_owned(),
        ))
    } else if field("From").is_some() == field("MessagingServiceSid").is_some() {
        Some((
            400,
            21603,
            "exactly one of From and MessagingServiceSid".to_owned(),
        ))
    } else if field("ValidityPeriod")
        .is_some_and(|v| !v.parse::<u32>().is_ok_and(|s| (1..=36_000).contains(&s)))
    {
        Some((400, 21623, "ValidityPeriod out of 1..=36000".to_owned()))
    } else if field("StatusCallback")
        .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        Some((
            400,
            21609,
            "StatusCallback is not an absolute URL".to_owned(),
        ))
    } else {
        None
    };
    let (answer, latency) = {
        let mut g = inner.lock().unwrap();
        let answer = if let Some((status, code, why)) = &breach {
            g.violations.push(why.clone());
            Fault::Error {
                status: *status,
                code: *code,
            }
        } else if g.outage_until.is_some_and(|until| Instant::now() < until) {
            Fault::Error {
                status: 503,
                code: 20503,
            }
        } else if let Some(f) = g.per_to.get(&to) {
            f.clone()
        } else if let Some(f) = g.script.pop_front() {
            f
        } else {
            g.default.clone().unwrap_or(Fault::Accept)
        };
        g.attempts.push(Attempt {
            to: to.clone(),
            body: body.clone(),
            at: Instant::now(),
            answer: answer.clone(),
            form: form.clone(),
        });
        (answer, g.latency)
    };
    changed.notify_waiters();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match answer {
        Fault::Accept => {
            let msg_sid = format!("SM{}", uuid::Uuid::new_v4().simple());
            {
                let mut g = inner.lock().unwrap();
                g.messages.push(Captured {
                    to: to.clone(),
                    body,
                    sid: msg_sid.clone(),
                });
            }
            warp::reply::with_status(
                warp::reply::json(&json!({
                    "sid": msg_sid,
                    "status": "queued",
                    "to": to,
                    "from": field("From"),
                    "messaging_service_sid": field("MessagingServiceSid"),
                    "error_code": null,
                    "date_created": "Thu, 27 Nov 2026 10:42:17 +0000",
                })),
                StatusCode::CREATED,
            )
            .into_response()
        }
        Fault::Error { status, code } => twilio_error(status, code, "scripted error"),
        Fault::TooMany { retry_after } => {
            let mut r = twilio_error(429, 20429, "Too Many Requests");
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            r
        }
        Fault::ServerError => twilio_error(500, 20500, "Internal Server Error"),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            twilio_error(503, 20503, "gave up hanging")
        }
    };
    changed.notify_waiters();
    response
}
