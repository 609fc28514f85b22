//! A small load driver: concurrent virtual users, each doing sign-up → login →
//! phone verification → 2FA enable → 2FA login with the codes the fake Twilio
//! captured, spread round-robin over one or more authgate processes.
//!
//! Faults make requests fail; a step that fails transiently (no connection,
//! timeout, 503) is retried for a while, anything else abandons the user and
//! the task starts a new one. What the tests assert is in the database and in
//! what the driver records: every code and flow the service accepted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authgate::domain::otp::Purpose;
use authgate::domain::sms_text::{action, Locale};
use serde_json::{json, Value};

use crate::fake_twilio::FakeTwilio;
use crate::harness::status_json;

/// How long one step keeps retrying transient failures.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How long a code may take to reach the fake Twilio.
const CODE_WAIT: Duration = Duration::from_secs(20);

/// Where requests go: the processes' base URLs, taken in turn.
#[derive(Clone)]
pub struct Targets {
    bases: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl Targets {
    pub fn new(bases: Vec<String>) -> Targets {
        Targets {
            bases: Arc::new(bases),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next process, round-robin.
    pub fn pick(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }
}

/// A code the service accepted (HTTP 200 to a confirm or a login verify).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub user: User,
    /// `phone_verify`, `enable_2fa` or `login_2fa`.
    pub purpose: &'static str,
    pub code: String,
    pub flow_id: Option<String>,
}

#[derive(Default)]
pub struct Record {
    pub journeys_done: usize,
    pub abandoned: BTreeMap<String, usize>,
    /// Transient failures seen (and retried), by kind.
    pub transient: BTreeMap<String, usize>,
    pub accepted: Vec<Accepted>,
    /// Login flows started (flow id).
    pub flows_started: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub phone: String,
    pub password: String,
    pub access: String,
}

/// One request's outcome as the driver sees it.
pub enum Answer {
    Ok(u16, Value),
    /// No connection, a timeout, or 503: worth retrying.
    Transient(String),
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub targets: Targets,
    pub record: Arc<Mutex<Record>>,
}

impl Client {
    pub fn new(targets: Targets) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            targets,
            record: Arc::default(),
        }
    }

    fn note_transient(&self, kind: String) {
        *self
            .record
            .lock()
            .unwrap()
            .transient
            .entry(kind)
            .or_default() += 1;
    }

    /// One POST (JSON body, optional bearer) to the next process.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let base = self.targets.pick();
        let mut req = self.http.post(format!("{base}{path}")).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status() == 503 => Answer::Transient("503".to_owned()),
            Ok(r) => {
                let (s, v) = status_json(r).await;
                Answer::Ok(s, v)
            }
            Err(e) if e.is_timeout() => Answer::Transient("timeout".to_owned()),
            Err(e) if e.is_connect() => Answer::Transient("connect".to_owned()),
            Err(_) => Answer::Transient("connection lost".to_owned()),
        }
    }

    /// POSTs until the answer is not transient, for at most `STEP_LIMIT`.
    pub async fn post_retry(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let (s, v, _) = self.post_retried(path, token, body).await?;
        Ok((s, v))
    }

    /// [`Client::post_retry`], also saying whether an earlier try was cut
    /// short (a 503 or a lost connection: it may have committed).
    pub async fn post_retried(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value, bool), String> {
        let deadline = Instant::now() + STEP_LIMIT;
        let mut cut_short = false;
        loop {
            match self.post(path, token, body).await {
                Answer::Ok(s, v) => return Ok((s, v, cut_short)),
                Answer::Transient(kind) => {
                    // A refused connection never reached authgate.
                    cut_short |= kind != "connect";
                    self.note_transient(format!("{path}: {kind}"));
                    if Instant::now() > deadline {
                        return Err(format!("{path}: still {kind} after {STEP_LIMIT:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Expects `status`; anything else is an error naming the step.
    async fn step(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        status: u16,
    ) -> Result<Value, String> {
        let (s, v) = self.post_retry(path, token, body).await?;
        if s == status {
            Ok(v)
        } else {
            Err(format!("{path}: {s} {}", v["code"].as_str().unwrap_or("")))
        }
    }

    /// Signs a new user up and logs in with the password.
    pub async fn new_user(&self) -> Result<User, String> {
        let n = uuid::Uuid::new_v4().as_u128();
        let email = format!("load{}@example.com", n % 1_000_000_000_000_000);
        let phone = crate::helpers::unique_phone();
        let password = "s3cure-passw0rd".to_owned();
        let body = json!({
            "email": email, "phone": phone, "password": password,
            "firstName": "Load", "lastName": "Tester",
        });
        let (s, v) = self
            .post_retry("/api/v1/account/signup", None, &body)
            .await?;
        // 409: an earlier try committed but its answer was lost.
        if s != 201 && !(s == 409 && v["code"] == "email_taken") {
            return Err(format!("signup: {s} {}", v["code"]));
        }
        let t = self
            .step(
                "/api/v1/account/login",
                None,
                &json!({"email": email, "password": password}),
                200,
            )
            .await?;
        let access = t["accessToken"]
            .as_str()
            .ok_or_else(|| format!("login: no token in {t}"))?
            .to_owned();
        Ok(User {
            email,
            phone,
            password,
            access,
        })
    }

    /// Asks for a code (`send_path`) and confirms it (`confirm_path`).
    async fn code_step(
        &self,
        fake: &FakeTwilio,
        user: &User,
        send_path: &str,
        confirm_path: &str,
        purpose: &'static str,
    ) -> Result<(), String> {
        let before = count_to(fake, &user.phone);
        let (s, v, send_cut) = self
            .post_retried(send_path, Some(&user.access), &json!({}))
            .await?;
        if s != 202 {
            return Err(format!(
                "{send_path}: {s} {}",
                v["code"].as_str().unwrap_or("")
            ));
        }
        let mut codes = vec![newest_code_for(fake, &user.phone, before, text_of(purpose)).await?];
        if send_cut {
            // README "Retrying after a 503": the retry of a send whose first
            // try committed sends a new code and supersedes the first, and the
            // two texts may arrive in either order. Like a user holding two,
            // try each, newest first.
            tokio::time::sleep(Duration::from_secs(2)).await;
            codes = codes_since(fake, &user.phone, before, text_of(purpose));
        }
        let mut refused = String::new();
        for code in codes {
            let (s, v, cut_short) = self
                .post_retried(confirm_path, Some(&user.access), &json!({ "code": code }))
                .await?;
            match (s, v["code"].as_str()) {
                (200, _) => {}
                // README "Retrying after a 503": the first try committed; the
                // account shows the change.
                (410, Some("code_used")) if cut_short => {
                    self.shows_change(user, purpose).await?;
                    self.note_transient(format!("{confirm_path}: 410 code_used after a cut try"));
                }
                (401, Some("invalid_code")) if send_cut => {
                    refused = format!("{confirm_path}: 401 invalid_code");
                    continue;
                }
                (s, c) => return Err(format!("{confirm_path}: {s} {}", c.unwrap_or(""))),
            }
            self.accepted(Accepted {
                user: user.clone(),
                purpose,
                code,
                flow_id: None,
            });
            return Ok(());
        }
        Err(refused)
    }

    /// The change a confirm of `purpose` makes is on the account, as
    /// `GET /account/me` shows it (retried while transient).
    async fn shows_change(&self, user: &User, purpose: &str) -> Result<(), String> {
        let field = match purpose {
            "phone_verify" => "isPhoneVerified",
            "enable_2fa" => "twoFA",
            other => return Err(format!("no account field shows {other}")),
        };
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let base = self.targets.pick();
            let r = self
                .http
                .get(format!("{base}/api/v1/account/me"))
                .bearer_auth(&user.access)
                .send()
                .await;
            match r {
                Ok(r) if r.status() != 503 => {
                    let (s, v) = status_json(r).await;
                    return match (s, &v[field]) {
                        (200, Value::Bool(true)) => Ok(()),
                        _ => Err(format!("me after code_used: {s} {field} = {}", v[field])),
                    };
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("me: still failing after {STEP_LIMIT:?}"))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn accepted(&self, a: Accepted) {
        self.record.lock().unwrap().accepted.push(a);
    }

    /// Verifies the phone and turns 2FA on.
    pub async fn enable_2fa(&self, fake: &FakeTwilio, user: &User) -> Result<(), String> {
        self.code_step(
            fake,
            user,
            "/api/v1/account/phone/verify/send",
            "/api/v1/account/phone/verify/confirm",
            "phone_verify",
        )
        .await?;
        self.code_step(
            fake,
            user,
            "/api/v1/account/2fa/enable",
            "/api/v1/account/2fa/enable/confirm",
            "enable_2fa",
        )
        .await
    }

    /// Starts a 2FA login; returns the flow id and the code it sent.
    pub async fn start_2fa_login(
        &self,
        fake: &FakeTwilio,
        user: &User,
    ) -> Result<(String, String), String> {
        let (flow, codes) = self.start_2fa_login_retried(fake, user).await?;
        Ok((flow, codes[0].clone()))
    }

    /// [`Client::start_2fa_login`], with the codes to try, newest first: one,
    /// or, when a try of the login was cut short (it may have started a flow
    /// whose text comes after this flow's), every code received since.
    async fn start_2fa_login_retried(
        &self,
        fake: &FakeTwilio,
        user: &User,
    ) -> Result<(String, Vec<String>), String> {
        let before = count_to(fake, &user.phone);
        let path = "/api/v1/account/login";
        let body = json!({"email": user.email, "password": user.password});
        let (s, v, cut) = self.post_retried(path, None, &body).await?;
        if s != 200 || v["status"] != "otp_required" {
            return Err(format!("{path}: {s} {}", v["code"].as_str().unwrap_or("")));
        }
        let flow = v["flowId"].as_str().unwrap_or_default().to_owned();
        self.record.lock().unwrap().flows_started.push(flow.clone());
        let newest = newest_code_for(fake, &user.phone, before, text_of("login_2fa")).await?;
        if !cut {
            return Ok((flow, vec![newest]));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok((
            flow,
            codes_since(fake, &user.phone, before, text_of("login_2fa")),
        ))
    }

    /// Submits a login flow's code; records it when tokens come back.
    pub async fn finish_2fa_login(
        &self,
        user: &User,
        flow: &str,
        code: &str,
    ) -> Result<(), String> {
        let v = self
            .step(
                "/api/v1/account/login/verify",
                None,
                &json!({"flowId": flow, "code": code}),
                200,
            )
            .await?;
        if v["refreshToken"].as_str().is_none() {
            return Err(format!("login verify without tokens: {v}"));
        }
        self.accepted(Accepted {
            user: user.clone(),
            purpose: "login_2fa",
            code: code.to_owned(),
            flow_id: Some(flow.to_owned()),
        });
        Ok(())
    }

    /// The whole journey of one user.
    pub async fn journey(&self, fake: &FakeTwilio) -> Result<(), String> {
        let user = self.new_user().await?;
        self.enable_2fa(fake, &user).await?;
        let (flow, codes) = self.start_2fa_login_retried(fake, &user).await?;
        let mut last = Err("no code".to_owned());
        for code in &codes {
            last = self.finish_2fa_login(&user, &flow, code).await;
            match &last {
                // A code of a flow a cut try started: the next one.
                Err(e) if codes.len() > 1 && e.ends_with("401 invalid_code") => continue,
                _ => break,
            }
        }
        last
    }
}

pub fn count_to(fake: &FakeTwilio, phone: &str) -> usize {
    fake.messages().iter().filter(|m| m.to == phone).count()
}

/// The code in an SMS body.
fn code_in(body: &str) -> Option<String> {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() >= 4)
        .map(str::to_owned)
}

/// What the shipped English text of a code for `purpose` (`Purpose::as_str`)
/// says it is for: a text of an earlier step sent again after a fault
/// (at-least-once delivery) is not taken for this step's.
fn text_of(purpose: &str) -> &'static str {
    let purpose = Purpose::parse(purpose).unwrap_or_else(|| panic!("no purpose {purpose}"));
    action(Locale::En, purpose)
}

/// The codes for `text_of` a purpose that `phone` received after its first
/// `before` messages, newest first.
fn codes_since(fake: &FakeTwilio, phone: &str, before: usize, text: &str) -> Vec<String> {
    let mut codes: Vec<String> = fake
        .messages()
        .into_iter()
        .filter(|m| m.to == phone)
        .skip(before)
        .filter(|m| m.body.contains(text))
        .filter_map(|m| code_in(&m.body))
        .collect();
    codes.reverse();
    codes
}

/// The code in the newest message to `phone` once more than `before` arrived.
pub async fn newest_code(fake: &FakeTwilio, phone: &str, before: usize) -> Result<String, String> {
    newest_code_for(fake, phone, before, "").await
}

/// The code of the newest message to `phone` after its first `before` that
/// contains `text`, waiting for one up to `CODE_WAIT`.
async fn newest_code_for(
    fake: &FakeTwilio,
    phone: &str,
    before: usize,
    text: &str,
) -> Result<String, String> {
    let deadline = Instant::now() + CODE_WAIT;
    loop {
        let body = fake
            .messages()
            .into_iter()
            .filter(|m| m.to == phone)
            .skip(before)
            .filter(|m| m.body.contains(text))
            .last()
            .map(|m| m.body);
        if let Some(body) = body {
            return code_in(&body).ok_or_else(|| format!("no code in {body:?}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no code reached {phone} within {CODE_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Virtual users running journeys until stopped.
pub struct Load {
    pub client: Client,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(client: Client, fake: Arc<FakeTwilio>, users: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..users)
            .map(|_| {
                let (client, fake, stop) = (client.clone(), fake.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let result = client.journey(&fake).await;
                        let mut r = client.record.lock().unwrap();
                        match result {
                            Ok(()) => r.journeys_done += 1,
                            Err(why) => {
                                // Keep the kind, not the details (ids, timings).
                                let kind: String = why.chars().take(60).collect();
                                *r.abandoned.entry(kind).or_default() += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            client,
            stop,
            tasks,
        }
    }

    /// Stops starting journeys and waits for the running ones to end.
    pub async fn stop(self) -> Arc<Mutex<Record>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task panicked");
        }
        self.client.record
    }
}

/// A one-line summary for the test output.
pub fn summary(r: &Record) -> String {
    format!(
        "journeys done {}, abandoned {:?}, transient failures {:?}, codes accepted {}, flows started {}",
        r.journeys_done,
        r.abandoned,
        r.transient,
        r.accepted.len(),
        r.flows_started.len()
    )
}
