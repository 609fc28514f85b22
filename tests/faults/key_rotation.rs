//! `authgate keys rotate all` run again and again while three processes on
//! one database serve a load: nothing still within its lifetime fails. Every
//! access token is checked on a process other than the one that signed it,
//! codes are sent on one process and checked on another, refresh tokens are
//! spent on a third, and tokens signed by keys retired one, two, ... rotations
//! ago keep being checked; right after each rotation, while the processes
//! pick it up one by one, a burst of codes is made on one process and checked
//! on another (a process that had not loaded the next key in advance would
//! refuse them or fail to open their SMS). Asserted: no 401 for a live
//! token, no right code refused, no SMS lost or sent twice, no request
//! failing at all (nothing restarts here), and every rotation took effect
//! (its new signing key signs tokens the other processes accept).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::join_all;
use rand::Rng;
use serde_json::{json, Value};

use crate::fake_twilio::{self, FakeTwilio};
use crate::harness::*;
use crate::load::{count_to, newest_code};

const PROCESSES: usize = 3;
/// Each process reloads the ring this often; a rotation needs its next key
/// to be 2 × this + 1 s old, so rotations can follow each other quickly.
const RELOAD: &str = "200ms";
const ROTATIONS: usize = 5;
/// Between the end of one `keys rotate` and the start of the next: more than
/// the next key's minimum age (1.4 s), so none is refused as too soon.
const ROTATE_EVERY: Duration = Duration::from_millis(1800);
/// Load before the first rotation and after the last one (tokens of the
/// last key reach the other processes, old tokens are checked once more).
const SETTLE: Duration = Duration::from_millis(1500);
/// Tasks walking users through sign-up, logins, refreshes and code checks.
const JOURNEY_TASKS: usize = 6;
/// Tasks re-checking tokens already issued, each on a process that did not
/// sign it.
const CHECK_TASKS: usize = 3;
/// Users asking for a code at once right after each rotation.
const BURST: usize = 9;
/// The whole test, start-up to the last assertion.
const HARD_LIMIT: Duration = Duration::from_secs(120);

/// What the servers' environment (`Env::new`) and `keys rotate` share: the
/// same database, master key (`JWT_SECRET`), SMS sender (a configuration
/// with a database needs one) and reload period (the minimum age of a next
/// key depends on it), so the command opens the servers' ring with their
/// settings.
fn cli_env(db_url: &str, fake: &FakeTwilio) -> Vec<(&'static str, String)> {
    vec![
        ("TWILIO_ACCOUNT_SID", fake_twilio::ACCOUNT_SID.to_owned()),
        ("TWILIO_AUTH_TOKEN", fake_twilio::AUTH_TOKEN.to_owned()),
        ("TWILIO_PHONE_NUMBER", fake_twilio::FROM_NUMBER.to_owned()),
        ("TWILIO_API_BASE_URL", fake.base_url()),
        ("DATABASE_URL", db_url.to_owned()),
        ("JWT_SECRET", JWT_SECRET.to_owned()),
        ("AUTHGATE_KEY_RELOAD", RELOAD.to_owned()),
        ("HOST", "127.0.0.1".to_owned()),
        (
            "AUTHGATE_DATA_DIR",
            std::env::temp_dir()
                .join("authgate-faults-data")
                .display()
                .to_string(),
        ),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

/// Counts and failures the load records.
#[derive(Default)]
struct Stats {
    requests: usize,
    /// `GET /account/me` answers: each a token checked by another process.
    token_checks: usize,
    refreshes: usize,
    codes_sent: usize,
    codes_accepted: usize,
    journeys: usize,
    /// Tokens seen, by the signing key their header names.
    kids: BTreeMap<String, usize>,
    /// 401 for a token before its `exp`.
    live_token_refused: usize,
    /// A code refused though it was the one the SMS carried.
    right_code_refused: usize,
    /// No connection, timeout, 5xx: nothing restarts here, so none is expected.
    transport: usize,
    /// A code whose SMS never reached the fake Twilio.
    lost_sms: usize,
    /// Every unexpected answer, for the failure message.
    errors: Vec<String>,
}

/// A token to check again later.
#[derive(Clone)]
struct Held {
    token: String,
    issuer: usize,
}

struct Shared {
    bases: Vec<String>,
    http: reqwest::Client,
    fake: Arc<FakeTwilio>,
    stop: AtomicBool,
    stats: Mutex<Stats>,
    pool: Mutex<Vec<Held>>,
    next_user: AtomicUsize,
}

fn claims_of(jwt: &str) -> (Value, Value) {
    let mut parts = jwt.split('.').map(|p| {
        URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null)
    });
    let header = parts.next().unwrap_or(Value::Null);
    let claims = parts.next().unwrap_or(Value::Null);
    (header, claims)
}

impl Shared {
    fn error(&self, what: String) {
        let mut s = self.stats.lock().unwrap();
        s.errors.push(what);
    }

    /// One request to process `at`; transport failures and 5xx are recorded
    /// and returned as `Err`.
    async fn call(
        &self,
        at: usize,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ()> {
        let url = format!("{}{path}", self.bases[at % PROCESSES]);
        let mut req = match body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let failed = match req.send().await {
            Ok(r) => {
                let (status, v) = status_json(r).await;
                if status < 500 {
                    self.stats.lock().unwrap().requests += 1;
                    return Ok((status, v));
                }
                format!("{status} {v}")
            }
            Err(e) => e.to_string(),
        };
        let mut s = self.stats.lock().unwrap();
        s.requests += 1;
        s.transport += 1;
        s.errors
            .push(format!("{path} on process {}: {failed}", at % PROCESSES));
        Err(())
    }

    /// Expects `status`; anything else is recorded as an error.
    async fn expect(
        &self,
        at: usize,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        status: u16,
    ) -> Result<Value, ()> {
        let (s, v) = self.call(at, path, token, body).await?;
        if s == status {
            Ok(v)
        } else {
            self.error(format!(
                "{path} on process {}: {s} {v} (expected {status})",
                at % PROCESSES
            ));
            Err(())
        }
    }

    /// Notes a token signed by process `issuer`: its key, and for later checks.
    fn issued(&self, token: &str, issuer: usize) {
        let kid = claims_of(token).0["kid"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned();
        *self.stats.lock().unwrap().kids.entry(kid).or_default() += 1;
        self.pool.lock().unwrap().push(Held {
            token: token.to_owned(),
            issuer: issuer % PROCESSES,
        });
    }

    /// `GET /account/me` with `token` on process `at` (not its signer): 200
    /// while the token is within its lifetime.
    async fn check(&self, token: &str, at: usize) -> Result<(), ()> {
        let (s, v) = self
            .call(at, "/api/v1/account/me", Some(token), None)
            .await?;
        let mut st = self.stats.lock().unwrap();
        st.token_checks += 1;
        if s == 200 {
            return Ok(());
        }
        let (header, claims) = claims_of(token);
        let live = claims["exp"]
            .as_i64()
            .is_some_and(|exp| chrono::Utc::now().timestamp() < exp);
        if s == 401 && live {
            st.live_token_refused += 1;
        }
        st.errors.push(format!(
            "GET /account/me on process {}: {s} {v} for a token of key {} (live: {live})",
            at % PROCESSES,
            header["kid"]
        ));
        Err(())
    }

    /// Asks for a code on process `send_at` and confirms it on `check_at`.
    async fn code(
        &self,
        token: &str,
        phone: &str,
        send: (&str, usize),
        confirm: (&str, usize),
    ) -> Result<(), ()> {
        let before = count_to(&self.fake, phone);
        self.expect(send.1, send.0, Some(token), Some(&json!({})), 202)
            .await?;
        self.stats.lock().unwrap().codes_sent += 1;
        let code = self.sms_code(phone, before).await?;
        self.confirm(confirm.0, confirm.1, Some(token), json!({ "code": code }))
            .await
            .map(|_| ())
    }

    /// The code the newest SMS to `phone` carries.
    async fn sms_code(&self, phone: &str, before: usize) -> Result<String, ()> {
        match newest_code(&self.fake, phone, before).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let mut s = self.stats.lock().unwrap();
                s.lost_sms += 1;
                s.errors.push(e);
                Err(())
            }
        }
    }

    /// Submits a right code: anything but 200 is a right code refused.
    async fn confirm(
        &self,
        path: &str,
        at: usize,
        token: Option<&str>,
        body: Value,
    ) -> Result<Value, ()> {
        let (s, v) = self.call(at, path, token, Some(&body)).await?;
        let mut st = self.stats.lock().unwrap();
        if s == 200 {
            st.codes_accepted += 1;
            return Ok(v);
        }
        st.right_code_refused += 1;
        st.errors.push(format!(
            "{path} on process {}: {s} {v} for the right code",
            at % PROCESSES
        ));
        Err(())
    }

    /// Spends `refresh` on process `at`; checks the new access token on the
    /// next process. Returns the new refresh token and access token.
    async fn refresh(&self, refresh: &str, at: usize) -> Result<(String, String), ()> {
        let v = self
            .expect(
                at,
                "/api/v1/auth/refresh",
                None,
                Some(&json!({ "refreshToken": refresh })),
                200,
            )
            .await?;
        self.stats.lock().unwrap().refreshes += 1;
        let access = v["accessToken"].as_str().unwrap_or_default().to_owned();
        self.issued(&access, at);
        self.check(&access, at + 1).await?;
        Ok((
            v["refreshToken"].as_str().unwrap_or_default().to_owned(),
            access,
        ))
    }

    /// One user: sign-up, password login, refresh, phone verification, 2FA
    /// on, a 2FA login and a refresh, each step on another process than the
    /// one before. Returns at the first failure (recorded).
    async fn journey(&self, p: usize) -> Result<(), ()> {
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        let email = format!("rot{n}-{}@example.com", uuid::Uuid::new_v4().simple());
        let phone = crate::helpers::unique_phone();
        let password = "s3cure-passw0rd";
        self.expect(
            p,
            "/api/v1/account/signup",
            None,
            Some(&json!({
                "email": email, "phone": phone, "password": password,
                "firstName": "Key", "lastName": "Rotation",
            })),
            201,
        )
        .await?;
        let login = json!({"email": email, "password": password});
        let v = self
            .expect(p + 1, "/api/v1/account/login", None, Some(&login), 200)
            .await?;
        let access = v["accessToken"].as_str().unwrap_or_default().to_owned();
        self.issued(&access, p + 1);
        self.check(&access, p + 2).await?;
        let (refresh, access) = self
            .refresh(v["refreshToken"].as_str().unwrap_or_default(), p + 2)
            .await?;

        // Codes: made (and their SMS sealed) on one process, checked on the next.
        self.code(
            &access,
            &phone,
            ("/api/v1/account/phone/verify/send", p + 1),
            ("/api/v1/account/phone/verify/confirm", p + 2),
        )
        .await?;
        // Ends the user's other sessions; this one (the only one) stays.
        self.code(
            &access,
            &phone,
            ("/api/v1/account/2fa/enable", p),
            ("/api/v1/account/2fa/enable/confirm", p + 1),
        )
        .await?;
        let (_, access) = self.refresh(&refresh, p).await?;
        self.check(&access, p + 2).await?;

        // A 2FA login begun on one process, its code checked on the next.
        let before = count_to(&self.fake, &phone);
        let v = self
            .expect(p + 2, "/api/v1/account/login", None, Some(&login), 200)
            .await?;
        if v["status"] != "otp_required" {
            self.error(format!("2FA login answered {v}"));
            return Err(());
        }
        self.stats.lock().unwrap().codes_sent += 1;
        let code = self.sms_code(&phone, before).await?;
        let v = self
            .confirm(
                "/api/v1/account/login/verify",
                p,
                None,
                json!({"flowId": v["flowId"], "code": code}),
            )
            .await?;
        let access = v["accessToken"].as_str().unwrap_or_default().to_owned();
        self.issued(&access, p);
        self.check(&access, p + 1).await?;
        self.refresh(v["refreshToken"].as_str().unwrap_or_default(), p + 2)
            .await?;
        self.stats.lock().unwrap().journeys += 1;
        Ok(())
    }

    /// A signed-up, logged-in user whose phone is not verified yet, on process `p`.
    async fn burst_user(&self, p: usize) -> Result<(String, String), ()> {
        let email = format!("burst-{}@example.com", uuid::Uuid::new_v4().simple());
        let phone = crate::helpers::unique_phone();
        let body = json!({
            "email": email, "phone": phone, "password": "s3cure-passw0rd",
            "firstName": "Key", "lastName": "Burst",
        });
        self.expect(p, "/api/v1/account/signup", None, Some(&body), 201)
            .await?;
        let login = json!({"email": email, "password": "s3cure-passw0rd"});
        let v = self
            .expect(p + 1, "/api/v1/account/login", None, Some(&login), 200)
            .await?;
        let access = v["accessToken"].as_str().unwrap_or_default().to_owned();
        self.issued(&access, p + 1);
        Ok((access, phone))
    }

    /// Re-checks a random token issued earlier (the oldest one every fourth
    /// time), on a process that did not sign it.
    async fn recheck(&self, round: usize) {
        let held = {
            let pool = self.pool.lock().unwrap();
            if pool.is_empty() {
                None
            } else if round.is_multiple_of(4) {
                Some(pool[0].clone())
            } else {
                Some(pool[rand::thread_rng().gen_range(0..pool.len())].clone())
            }
        };
        match held {
            Some(h) => {
                let other = h.issuer + 1 + rand::thread_rng().gen_range(0..PROCESSES - 1);
                let _ = self.check(&h.token, other).await;
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One `authgate keys rotate all` (no --force); panics unless it exits 0 and
/// rotated every purpose. Returns the new active signing key.
fn rotate_all(env: &[(&'static str, String)]) -> String {
    let out = Command::new(BIN)
        .args(["keys", "rotate", "all"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run authgate keys rotate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keys rotate all exited {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for purpose in ["signing", "codes", "outbox", "refresh", "recovery"] {
        assert!(
            stdout.contains(&format!("{purpose}: rotated, active key ")),
            "{purpose} not rotated:\n{stdout}"
        );
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("signing: rotated, active key "))
        .map(|k| k.trim().to_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_every_key_under_load_fails_nothing_still_within_its_lifetime() {
    tokio::time::timeout(HARD_LIMIT, rotate_under_load())
        .await
        .unwrap_or_else(|_| panic!("key rotation fault test still running after {HARD_LIMIT:?}"));
}

async fn rotate_under_load() {
    let started = Instant::now();
    let db = TestDb::fresh().await;
    let fake = Arc::new(FakeTwilio::start().await);
    let mut env = Env::new(&db.url, &fake);
    let rotate_env = cli_env(&db.url, &fake);
    for (k, v) in &rotate_env {
        env = env.set(k, v);
    }
    let names = ["rot-a", "rot-b", "rot-c"];
    let servers = join_all(names.map(|n| Server::start(n, &env, free_port()))).await;
    let shared = Arc::new(Shared {
        bases: servers.iter().map(Server::base).collect(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        fake: fake.clone(),
        stop: AtomicBool::new(false),
        stats: Mutex::default(),
        pool: Mutex::default(),
        next_user: AtomicUsize::new(0),
    });

    let mut tasks = Vec::new();
    for t in 0..JOURNEY_TASKS {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut p = t;
            while !s.stop.load(Ordering::Relaxed) {
                let _ = s.journey(p).await;
                p += 1;
            }
        }));
    }
    for _ in 0..CHECK_TASKS {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0;
            while !s.stop.load(Ordering::Relaxed) {
                s.recheck(round).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Rotations by the operator's command, as a separate process, while the
    // load runs. The servers made their next keys at start-up, so the first
    // one is old enough after SETTLE.
    let load_started = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let mut rotated_to = Vec::new();
    let mut bursts = Vec::new();
    for n in 0..ROTATIONS {
        let next_rotation = tokio::time::Instant::now() + ROTATE_EVERY;
        // Users for a burst of codes right after the rotation, made first.
        let users: Vec<_> = join_all((0..BURST).map(|i| shared.burst_user(i)))
            .await
            .into_iter()
            .flatten()
            .collect();
        if n > 0 {
            tokio::time::sleep_until(next_rotation).await;
        }
        let env = rotate_env.clone();
        let kid = tokio::task::spawn_blocking(move || rotate_all(&env))
            .await
            .unwrap();
        rotated_to.push(kid);
        // While the processes pick the rotation up (each within RELOAD, not
        // all at once): codes made and sealed on one, checked on another.
        let s = shared.clone();
        bursts.push(tokio::spawn(async move {
            join_all(users.iter().enumerate().map(|(i, (access, phone))| {
                s.code(
                    access,
                    phone,
                    ("/api/v1/account/phone/verify/send", i),
                    ("/api/v1/account/phone/verify/confirm", i + 1),
                )
            }))
            .await;
        }));
    }
    tokio::time::sleep(SETTLE).await;
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks.into_iter().chain(bursts) {
        t.await.expect("load task panicked");
    }
    let load_time = load_started.elapsed();

    // Every SMS the load asked for reached the fake once.
    let sql = db.client().await;
    wait_outbox_final(&sql, Duration::from_secs(20)).await;
    let outbox = outbox_states(&sql).await;

    let stats = std::mem::take(&mut *shared.stats.lock().unwrap());
    let kids: BTreeSet<&String> = stats.kids.keys().collect();
    eprintln!(
        "key rotation: {} requests ({} token checks on another process, {} refreshes, \
         {} journeys), {ROTATIONS} rotations, {} distinct signing kids {:?}, codes sent {} \
         accepted {}, outbox {outbox:?}, errors {} (live tokens refused {}, right codes refused {}, \
         transport {}, lost SMS {}), load {load_time:?}, test {:?}",
        stats.requests,
        stats.token_checks,
        stats.refreshes,
        stats.journeys,
        kids.len(),
        stats.kids,
        stats.codes_sent,
        stats.codes_accepted,
        stats.errors.len(),
        stats.live_token_refused,
        stats.right_code_refused,
        stats.transport,
        stats.lost_sms,
        started.elapsed(),
    );
    let first: Vec<&String> = stats.errors.iter().take(20).collect();
    assert_eq!(
        stats.live_token_refused, 0,
        "tokens within their lifetime refused: {first:#?}"
    );
    assert_eq!(
        stats.right_code_refused, 0,
        "right codes refused: {first:#?}"
    );
    assert_eq!(stats.lost_sms, 0, "codes never delivered: {first:#?}");
    assert_eq!(stats.transport, 0, "failed requests: {first:#?}");
    assert!(stats.errors.is_empty(), "unexpected answers: {first:#?}");

    // Every rotation took effect: its signing key signed tokens (which other
    // processes accepted, or an error above would say so).
    for kid in &rotated_to {
        assert!(
            stats.kids.contains_key(kid),
            "no token signed by {kid}, the signing key of a rotation: {:?}",
            stats.kids
        );
    }
    // The first key and one per rotation, nothing else.
    assert_eq!(kids.len(), ROTATIONS + 1, "signing kids seen: {kids:?}");
    let retired: Vec<(String, i64)> = sql
        .query(
            "SELECT purpose, count(*) FROM keyring WHERE retired_at IS NOT NULL GROUP BY purpose",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(retired.len(), 5, "retired keys by purpose: {retired:?}");
    assert!(
        retired.iter().all(|(_, n)| *n == ROTATIONS as i64),
        "retired keys by purpose: {retired:?}"
    );

    // Enough happened around the rotations to mean something.
    assert!(
        stats.journeys >= 2 * ROTATIONS,
        "journeys: {}",
        stats.journeys
    );
    assert!(
        stats.token_checks >= 200,
        "token checks: {}",
        stats.token_checks
    );
    assert_eq!(
        stats.codes_sent, stats.codes_accepted,
        "codes sent vs accepted"
    );
    let delivery = check_delivery(&sql, &fake, |_| false).await;
    assert_eq!(
        delivery.sent_rows, stats.codes_sent,
        "outbox rows sent vs codes asked for"
    );
    assert_eq!(fake.messages().len(), stats.codes_sent);
    drop(servers);
}
