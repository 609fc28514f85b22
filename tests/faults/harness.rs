//! Shared harness of the fault tests: the real `authgate` binary as child
//! processes (so `kill -9` is a real SIGKILL), configured only through its
//! environment; fresh databases on the test PostgreSQL; small HTTP and SQL
//! helpers; and the outbox invariants every test checks at its end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_twilio::{self, FakeTwilio};
use crate::helpers;

pub const BIN: &str = env!("CARGO_BIN_EXE_authgate");
/// Shared by every process of a test (it derives the code and outbox keys too).
pub const JWT_SECRET: &str = "faults-secret-faults-secret-faults-0123456";

/// How long a child gets to become ready.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Polls `check` every `every` until it returns `Some`, or panics after
/// `limit` with `what` and the last value `describe` gives.
pub async fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {limit:?} waiting for {what}; last: {last}"
                );
            }
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------- databases

/// A fresh migrated database on the test PostgreSQL, dropped when dropped.
pub struct TestDb {
    pub name: String,
    pub cfg: tokio_postgres::Config,
    pub url: String,
}

impl TestDb {
    pub async fn fresh() -> TestDb {
        let (name, cfg) = helpers::fresh_database().await;
        let url = url_for(&cfg);
        TestDb { name, cfg, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        helpers::connect(&self.cfg).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        helpers::drop_database(self.name.clone());
    }
}

/// A `DATABASE_URL` for connection settings (TCP or Unix socket).
pub fn url_for(cfg: &tokio_postgres::Config) -> String {
    helpers::database_url_for(cfg)
}

/// One value from a one-row, one-column query.
pub async fn scalar<T>(db: &tokio_postgres::Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

// ------------------------------------------------------------------ servers

/// The environment of one authgate process: the variables of README
/// "Configuration", with fast SMS retries and test-friendly limits. Tests
/// override single variables with `set`.
#[derive(Clone)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn new(database_url: &str, fake: &FakeTwilio) -> Env {
        let mut vars = BTreeMap::new();
        let data = std::env::temp_dir().join("authgate-faults-data");
        for (k, v) in [
            ("HOST", "127.0.0.1".to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("AUTHGATE_DATA_DIR", data.display().to_string()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            ("AUTHGATE_RATE_LIMITS", "off".to_owned()),
            ("AUTHGATE_HASH_CONCURRENCY", "2".to_owned()),
            ("AUTHGATE_DB_POOL_SIZE", "8".to_owned()),
            ("AUTHGATE_OTP_SHARDS", "8".to_owned()),
            ("AUTHGATE_SHUTDOWN_GRACE", "2s".to_owned()),
            ("OTP_RESEND_COOLDOWN", "1s".to_owned()),
            ("TWILIO_ACCOUNT_SID", fake_twilio::ACCOUNT_SID.to_owned()),
            ("TWILIO_AUTH_TOKEN", fake_twilio::AUTH_TOKEN.to_owned()),
            ("TWILIO_PHONE_NUMBER", fake_twilio::FROM_NUMBER.to_owned()),
            ("TWILIO_API_BASE_URL", fake.base_url()),
            ("AUTHGATE_SMS_RATE_PER_SEC", "500".to_owned()),
            ("AUTHGATE_SMS_SWEEP_INTERVAL", "500ms".to_owned()),
            ("AUTHGATE_SMS_TIMEOUT", "2s".to_owned()),
            ("AUTHGATE_SMS_LEASE", "5s".to_owned()),
            ("AUTHGATE_SMS_BACKOFF_BASE", "200ms".to_owned()),
            ("AUTHGATE_SMS_BACKOFF_MAX", "1s".to_owned()),
            // Generous quotas unless a test is about them.
            ("AUTHGATE_SMS_PER_PHONE_HOUR", "1000".to_owned()),
            ("AUTHGATE_SMS_PER_PHONE_DAY", "1000".to_owned()),
            ("AUTHGATE_SMS_PER_ACCOUNT_HOUR", "1000".to_owned()),
            ("AUTHGATE_SMS_GLOBAL_PER_MINUTE", "100000".to_owned()),
            ("AUTHGATE_SMS_PER_REGION_HOUR", "100000".to_owned()),
        ] {
            vars.insert(k.to_owned(), v);
        }
        Env { vars }
    }

    pub fn set(mut self, var: &str, value: impl Into<String>) -> Env {
        self.vars.insert(var.to_owned(), value.into());
        self
    }
}

pub use crate::helpers::free_port;

/// One `authgate serve` child process. Killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub name: String,
    log: PathBuf,
}

impl Server {
    /// Starts `authgate serve` on `port` and waits until `/readyz` says ready.
    pub async fn start(name: &str, env: &Env, port: u16) -> Server {
        let log = std::env::temp_dir().join(format!(
            "authgate-faults-{name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let dir = std::env::temp_dir();
        let child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env.vars)
            .env("PORT", port.to_string())
            // No .env file in the temp folder is read by accident: cwd is a
            // folder of our own.
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn authgate");
        let mut server = Server {
            child,
            port,
            name: name.to_owned(),
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(r) = http
                .get(self.url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited during start-up with {status}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {START_LIMIT:?}:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL (std's `Child::kill` is SIGKILL on Unix): no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL authgate");
        let status = self.child.wait().unwrap();
        assert!(
            !status.success(),
            "{} exited cleanly after SIGKILL?",
            self.name
        );
    }

    /// The last `n` lines of the process's output (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET /metrics`: the value of one sample line (`name{labels}`), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("{} log kept at {}", self.name, self.log.display());
        }
    }
}

// ------------------------------------------------------------ once only

/// After a fault: no code was accepted twice (each accepted once by the
/// driver's record, every accepted code replayed now is refused, and no user,
/// purpose and flow has two used codes) and no login flow issued tokens twice.
pub async fn assert_accepted_once(
    client: &crate::load::Client,
    sql: &tokio_postgres::Client,
    record: &crate::load::Record,
) {
    use crate::load::Answer;
    use serde_json::json;
    let mut seen = std::collections::BTreeSet::new();
    for acc in &record.accepted {
        let key = (
            acc.user.phone.clone(),
            acc.purpose,
            acc.flow_id.clone().unwrap_or_default(),
        );
        assert!(seen.insert(key), "accepted twice: {acc:?}");
    }
    let replays = record
        .accepted
        .iter()
        .filter(|acc| acc.purpose != "enable_2fa");
    for acc in replays {
        let answer = match &acc.flow_id {
            Some(flow) => {
                client
                    .post(
                        "/api/v1/account/login/verify",
                        None,
                        &json!({"flowId": flow, "code": acc.code}),
                    )
                    .await
            }
            None => {
                client
                    .post(
                        "/api/v1/account/phone/verify/confirm",
                        Some(&acc.user.access),
                        &json!({"code": acc.code}),
                    )
                    .await
            }
        };
        match answer {
            Answer::Ok(410, _) => {}
            Answer::Ok(s, v) => panic!("replayed {} code answered {s} {v}", acc.purpose),
            Answer::Transient(k) => panic!("replay failed: {k}"),
        }
    }
    let twice: i64 = scalar(
        sql,
        "SELECT count(*) FROM (SELECT 1 FROM otp_codes WHERE state = 'used'
         GROUP BY user_id, purpose, flow_id HAVING count(*) > 1) t",
    )
    .await;
    assert_eq!(twice, 0, "a user, purpose and flow with two used codes");

    // No flow issued tokens twice.
    let flows_twice: i64 = scalar(
        sql,
        "SELECT count(*) FROM (SELECT 1 FROM audit_events WHERE kind = 'login_succeeded'
         AND detail ? 'flowId' GROUP BY detail->>'flowId' HAVING count(*) > 1) t",
    )
    .await;
    assert_eq!(flows_twice, 0, "a login flow succeeded twice");
    let sms_tokens: i64 = scalar(
        sql,
        "SELECT count(*) FROM refresh_tokens WHERE 'sms' = ANY(amr)",
    )
    .await;
    let authenticated: i64 = scalar(
        sql,
        "SELECT count(*) FROM login_flows WHERE state->>'state' = 'authenticated'",
    )
    .await;
    let verified = record
        .accepted
        .iter()
        .filter(|a| a.purpose == "login_2fa")
        .count() as i64;
    assert!(
        verified <= sms_tokens && sms_tokens <= authenticated,
        "2FA logins answered 200: {verified}, sms refresh tokens: {sms_tokens}, \
         authenticated flows: {authenticated}"
    );
}

// ------------------------------------------------------------------ outbox

/// Outbox rows by state.
pub async fn outbox_states(db: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    db.query("SELECT state, count(*) FROM sms_outbox GROUP BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until no outbox row is pending or being sent.
pub async fn wait_outbox_final(db: &tokio_postgres::Client, limit: Duration) {
    poll(
        "every outbox row to reach a final state",
        limit,
        Duration::from_millis(200),
        async || {
            let states = outbox_states(db).await;
            let open = states.get("pending").copied().unwrap_or(0)
                + states.get("sending").copied().unwrap_or(0);
            if open == 0 {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    )
    .await;
}

/// What the outbox and the fake Twilio say about delivery.
#[derive(Debug)]
pub struct Delivery {
    pub sent_rows: usize,
    pub expired_rows: usize,
    /// Messages the fake accepted more than once (recipient, copies); shown
    /// in the test output.
    #[allow(dead_code)]
    pub duplicates: Vec<(String, usize)>,
}

/// The exactly-once check: every `sent` row's provider SID is a message the
/// fake accepted, and the fake accepted each (recipient, text) once, except
/// as `allow_duplicate` says (a send in flight when a process was killed).
/// No row may be `failed` or still open.
pub async fn check_delivery(
    db: &tokio_postgres::Client,
    fake: &FakeTwilio,
    allow_duplicate: impl Fn(&[Instant]) -> bool,
) -> Delivery {
    let states = outbox_states(db).await;
    for open in ["pending", "sending", "failed"] {
        assert_eq!(
            states.get(open).copied().unwrap_or(0),
            0,
            "outbox rows {open}: {states:?}"
        );
    }
    let rows = db
        .query(
            "SELECT id, provider_sid, recipient FROM sms_outbox WHERE state = 'sent'",
            &[],
        )
        .await
        .unwrap();
    let messages = fake.messages();
    let attempts = fake.attempts();
    assert_eq!(
        messages.len(),
        attempts
            .iter()
            .filter(|a| a.answer == crate::fake_twilio::Fault::Accept)
            .count()
    );
    let by_sid: HashMap<&str, &crate::fake_twilio::Captured> =
        messages.iter().map(|m| (m.sid.as_str(), m)).collect();
    for r in &rows {
        let id: i64 = r.get(0);
        let sid: Option<String> = r.get(1);
        let to: String = r.get(2);
        let sid = sid.unwrap_or_else(|| panic!("sent outbox row {id} has no provider SID"));
        let m = by_sid.get(sid.as_str()).unwrap_or_else(|| {
            panic!("outbox row {id} says sent as {sid}, the fake never accepted it")
        });
        assert_eq!(m.to, to, "outbox row {id}: recipient differs");
    }
    // Attempt times per message, accepted ones only, in arrival order.
    let mut accepted_at: BTreeMap<(String, String), Vec<Instant>> = BTreeMap::new();
    for a in attempts
        .iter()
        .filter(|a| a.answer == crate::fake_twilio::Fault::Accept)
    {
        accepted_at
            .entry((a.to.clone(), a.body.clone()))
            .or_default()
            .push(a.at);
    }
    let mut duplicates = Vec::new();
    for (key, times) in &accepted_at {
        if times.len() > 1 {
            assert!(
                allow_duplicate(times),
                "message to {} delivered {} times at {:?} (not explained by a killed process)",
                key.0,
                times.len(),
                times
            );
            duplicates.push((key.0.clone(), times.len()));
        }
    }
    assert_eq!(
        accepted_at.len(),
        rows.len(),
        "distinct messages the fake accepted vs outbox rows marked sent"
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    Delivery {
        sent_rows: rows.len(),
        expired_rows: states.get("expired").copied().unwrap_or(0) as usize,
        duplicates,
    }
}

/// The JSON body of a response and its status (a non-JSON body is `Null`).
pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
