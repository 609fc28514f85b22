//! `authgate-load`: a load tool for concurrent OTP flows.
//!
//! It serves its own Twilio-compatible capture endpoint on loopback
//! (`POST /2010-04-01/Accounts/{sid}/Messages.json`, answered 201 with a message
//! resource; `To` and `Body` recorded) to read the codes the server sends, can
//! start the server itself (`target/release/authgate` on a fresh database on
//! 127.0.0.1:5432, or on the embedded default, pointed at the capture endpoint,
//! with local rate limits off and SMS quotas raised) or target a running one,
//! creates its users, runs V virtual users for D seconds through each chosen
//! flow, and prints per flow: completed flows per second, p50/p95/p99 latency per
//! step, errors by kind, the server's peak resident memory (VmHWM, when it
//! started the server) and the depth of its SMS outbox (`authgate_sms_outbox_depth`
//! from `GET /metrics`, sampled once per second while the flow runs and once at
//! its end: "outbox depth: max N, at end M").
//!
//! `--json FILE` also writes all of it as one JSON document, for scripts
//! (`scripts/bench/ratios.sh`): `{"tool": "authgate-load", "format": 1,
//! "flows": [...], "error": null}`, one entry per flow run with `flow`, `users`,
//! `seconds`, `completed`, `flows_per_s`, `steps` (per step: `count`, `per_s`,
//! `p50_ms`, `p95_ms`, `p99_ms`), `step_groups` (the same figures over the
//! samples of several steps merged: `send` and `confirm`, see `step_group`),
//! `errors` (by kind) and `errors_total`, `server_memory` (`vmhwm_kib`,
//! `vmrss_kib`, or null) and `outbox_depth` (`samples`, `max`, `end`, or null
//! when `/metrics` had no depth). With `--argon2-bound` it holds `argon2_bound`
//! (`verifies`, `seconds`, `threads`, `per_s`, `params`) instead of `flows`.
//! Latencies are measured at the client, over loopback, HTTP included.
//!
//! While a flow runs, and only when standard error is a terminal, one line
//! there (rewritten in place each second) shows the flows done, the rate over
//! the last second and overall, and the errors so far; piped or redirected
//! output gets none of it.
//!
//! Everything is bounded: at most 1,024 virtual users, at most 600 s per flow,
//! 10 s per request and per awaited SMS, loopback addresses only.
//!
//! ```text
//! cargo build --release --bins
//! target/release/authgate-load --flow code-check --users 64 --duration 10
//! target/release/authgate-load --flow login,2fa-login,refresh --users 16 --duration 5
//! target/release/authgate-load --target http://127.0.0.1:3000 --capture-port 4010 --flow login
//! ```
//!
//! Flows (a "flow" is what one completed iteration counts):
//! - `signup`: `POST /account/signup` with a new e-mail and phone.
//! - `login`: a password login of a user without 2FA (one argon2 verify).
//! - `phone-verify`: sign-up, login, `phone/verify/send`, the SMS, `phone/verify/confirm`.
//! - `2fa-login`: login (`otp_required`), the SMS, `login/verify` (tokens).
//! - `refresh`: `POST /auth/refresh`, rotating the user's refresh token.
//! - `code-check`: 2FA on and off again: `2fa/enable`, SMS, `2fa/enable/confirm`,
//!   `2fa/disable`, SMS, `2fa/disable/confirm`: two code checks per flow, no argon2.
//! - `check`: the code check alone, what pgbench's single-row UPDATE is compared
//!   with: `phone/verify/confirm` with the right code, once per user. Its users,
//!   their live codes and access tokens are seeded straight into the database
//!   (only with a server this tool started: it needs the database and the
//!   server's secret), so nothing but checks is measured.
//!
//! - `login-timing`: not a throughput run but a side-channel benchmark (issue
//!   14, item 9): a wrong password, an unknown e-mail, a locked account's right
//!   password and a malformed e-mail, `--samples` logins each, interleaved in a
//!   random order one at a time; prints each case's p50 and p99 and their ratio
//!   to the slowest case. All four must answer the same 401 after the same work,
//!   so the ratios should be within a few percent of 1. It locks its accounts
//!   after 5 failures for an hour (`AUTHGATE_LOGIN_LOCKOUT_*` of a server this
//!   tool starts; give a `--target` the same settings).
//!
//! `--argon2-bound S` measures, with no server, the argon2 bound of password
//! logins: `domain::password::verify` (the server's own parameters) on as many
//! threads as there are cores, for S seconds.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier};
use warp::http::StatusCode;
use warp::Filter;

const USAGE: &str = "\
authgate-load: concurrent OTP flows against authgate

Usage: authgate-load [OPTIONS]

Options:
  --flow LIST           comma-separated: signup, login, phone-verify, 2fa-login,
                        refresh, code-check, check, all (default code-check),
                        or login-timing (the four refused logins side by side)
  --samples N           logins per case for login-timing, 10 to 100000 (default 300)
  --users V             virtual users, 1 to 1024 (default 16)
  --duration D          seconds per flow, 1 to 600 (default 10)
  --target URL          a running server (loopback only); it must send SMS to
                        this tool's capture endpoint (see --capture-port)
  --capture-port P      port of the Twilio capture endpoint (default: any free)
  --binary PATH         server to start (default target/release/authgate)
  --database-url URL    admin URL; a fresh database is created beside it and
                        dropped afterwards (default postgres://postgres@127.0.0.1:5432/postgres)
  --embedded            start the server with no DATABASE_URL (its private
                        PostgreSQL, data in target/load-data)
  --keep-db             do not drop the fresh database
  --env KEY=VALUE       extra environment for the started server (repeatable)
  --otp-length N        digits per code (default 6)
  --check-users N       seeded users (one code each) per virtual user for the
                        `check` flow (default 1500)
  --argon2-bound S      no server: password verifies per second on every core
                        for S seconds (1 to 60), with the server's parameters
  --json FILE           also write the figures as JSON to FILE (for scripts)
  -h, --help            this help";

const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const PASSWORD: &str = "l0ad-test-passw0rd";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SMS_TIMEOUT: Duration = Duration::from_secs(10);
/// Latency samples kept per step and virtual user: bounds memory on long runs.
const MAX_SAMPLES: usize = 200_000;
/// Tries of one setup request the server answered 503 or 429.
const SETUP_TRIES: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Signup,
    Login,
    PhoneVerify,
    TwoFaLogin,
    Refresh,
    CodeCheck,
    Check,
    /// Not in `ALL`: a latency comparison, not a throughput run.
    LoginTiming,
}

impl Flow {
    const ALL: [Flow; 7] = [
        Flow::Signup,
        Flow::Login,
        Flow::PhoneVerify,
        Flow::TwoFaLogin,
        Flow::Refresh,
        Flow::CodeCheck,
        Flow::Check,
    ];

    fn name(self) -> &'static str {
        match self {
            Flow::Signup => "signup",
            Flow::Login => "login",
            Flow::PhoneVerify => "phone-verify",
            Flow::TwoFaLogin => "2fa-login",
            Flow::Refresh => "refresh",
            Flow::CodeCheck => "code-check",
            Flow::Check => "check",
            Flow::LoginTiming => "login-timing",
        }
    }

    fn parse(s: &str) -> Result<Vec<Flow>, String> {
        if s == "all" {
            return Ok(Flow::ALL.to_vec());
        }
        s.split(',')
            .map(|f| {
                Flow::ALL
                    .into_iter()
                    .chain([Flow::LoginTiming])
                    .find(|x| x.name() == f.trim())
                    .ok_or_else(|| format!("unknown flow `{f}`"))
            })
            .collect()
    }
}

#[derive(Debug)]
struct Args {
    flows: Vec<Flow>,
    users: usize,
    duration: Duration,
    target: Option<String>,
    capture_port: u16,
    binary: PathBuf,
    database_url: String,
    embedded: bool,
    keep_db: bool,
    env: Vec<(String, String)>,
    otp_length: usize,
    check_users: usize,
    argon2_bound: Option<u64>,
    samples: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        flows: vec![Flow::CodeCheck],
        users: 16,
        duration: Duration::from_secs(10),
        target: None,
        capture_port: 0,
        binary: PathBuf::from("target/release/authgate"),
        database_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
        embedded: false,
        keep_db: false,
        env: Vec::new(),
        otp_length: 6,
        check_users: 1500,
        argon2_bound: None,
        samples: 300,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--flow" => a.flows = Flow::parse(&value()?)?,
            "--users" => {
                a.users = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or("--users must be 1 to 1024")?
            }
            "--duration" => {
                let secs: u64 = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=600).contains(n))
                    .ok_or("--duration must be 1 to 600 seconds")?;
                a.duration = Duration::from_secs(secs);
            }
            "--target" => a.target = Some(value()?.trim_end_matches('/').to_owned()),
            "--capture-port" => {
                a.capture_port = value()?.parse().map_err(|_| "--capture-port: a port")?
            }
            "--binary" => a.binary = PathBuf::from(value()?),
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--database-url" => a.database_url = value()?,
            "--embedded" => a.embedded = true,
            "--keep-db" => a.keep_db = true,
            "--env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--env wants KEY=VALUE")?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "--otp-length" => {
                a.otp_length = value()?
                    .parse()
                    .ok()
                    .filter(|n| (4..=10).contains(n))
                    .ok_or("--otp-length must be 4 to 10")?
            }
            "--argon2-bound" => {
                a.argon2_bound = Some(
                    value()?
                        .parse()
                        .ok()
                        .filter(|n| (1..=60).contains(n))
                        .ok_or("--argon2-bound must be 1 to 60 seconds")?,
                )
            }
            "--samples" => {
                a.samples = value()?
                    .parse()
                    .ok()
                    .filter(|n| (10..=100_000).contains(n))
                    .ok_or("--samples must be 10 to 100000")?
            }
            "--check-users" => {
                a.check_users = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or("--check-users must be 1 to 100000")?
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if let Some(t) = &a.target {
        let host = t
            .strip_prefix("http://")
            .ok_or("--target must be an http:// URL")?;
        let host = host.split('/').next().unwrap_or_default();
        let loopback = host.starts_with("127.")
            || host.starts_with("localhost:")
            || host == "localhost"
            || host.starts_with("[::1]");
        if !loopback {
            return Err("--target must be a loopback address (127.x, localhost, [::1])".into());
        }
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------- capture

/// The Twilio capture endpoint: the newest code per phone number, with a
/// sequence number so a virtual user can wait for the *next* one.
#[derive(Default)]
struct Capture {
    /// std Mutex: held only to look up or insert, never across an await.
    phones: Mutex<HashMap<String, watch::Sender<(u64, String)>>>,
    messages: std::sync::atomic::AtomicU64,
}

impl Capture {
    fn sender(&self, phone: &str) -> watch::Sender<(u64, String)> {
        let mut phones = match self.phones.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        phones
            .entry(phone.to_owned())
            .or_insert_with(|| watch::channel((0, String::new())).0)
            .clone()
    }

    /// A receiver that has seen every code so far: `changed()` is the next one.
    fn subscribe(&self, phone: &str) -> watch::Receiver<(u64, String)> {
        let mut rx = self.sender(phone).subscribe();
        rx.borrow_and_update();
        rx
    }

    fn record(&self, to: &str, body: &str, otp_length: usize) {
        self.messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(code) = extract_code(body, otp_length) {
            self.sender(to).send_modify(|(seq, c)| {
                *seq += 1;
                *c = code;
            });
        }
    }
}

/// The first run of exactly `len` ASCII digits in an SMS body.
fn extract_code(body: &str, len: usize) -> Option<String> {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == len)
        .map(str::to_owned)
}

async fn start_capture(
    capture: Arc<Capture>,
    port: u16,
    otp_length: usize,
) -> Result<SocketAddr, String> {
    let route = warp::post()
        .and(warp::path!(
            "2010-04-01" / "Accounts" / String / "Messages.json"
        ))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::form::<Vec<(String, String)>>())
        .map(move |sid: String, form: Vec<(String, String)>| {
            let field = |n: &str| {
                form.iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default()
            };
            let (to, body) = (field("To"), field("Body"));
            capture.record(to, body, otp_length);
            let msid = format!("SM{:032x}", rand::rngs::OsRng.gen::<u128>());
            let resource = json!({
                "account_sid": sid, "sid": msid, "to": to, "from": field("From"),
                "body": body, "status": "queued", "num_segments": "1",
                "direction": "outbound-api", "api_version": "2010-04-01",
                "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{msid}.json"),
            });
            warp::reply::with_status(warp::reply::json(&resource), StatusCode::CREATED)
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("capture endpoint: cannot bind 127.0.0.1:{port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("capture endpoint: {e}"))?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(addr)
}

// ---------------------------------------------------------------- server

/// A server this tool started: killed on drop, its database dropped by `stop`.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    database: Option<(String, String)>,
    log: PathBuf,
    /// The server's `JWT_SECRET` (hex; its master key) and its database's
    /// URL, for seeding with its own keys.
    secret: String,
    database_url: Option<String>,
}

impl Server {
    /// Peak and current resident memory in KiB, from `/proc/<pid>/status`.
    fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    async fn stop(mut self, keep_db: bool) {
        // SIGTERM lets it drain; `kill` is the only portable way without libc.
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if let (Some((admin, db)), false) = (self.database.take(), keep_db) {
            match admin_client(&admin).await {
                Ok(c) => {
                    if let Err(e) = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("could not drop database {db}: {e}");
                    }
                }
                Err(e) => eprintln!("could not drop database {db}: {e}"),
            }
        }
    }
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL at {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

async fn start_server(args: &Args, capture: SocketAddr) -> Result<(Server, String), String> {
    let port = free_port()?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let mut cmd = tokio::process::Command::new(&args.binary);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("JWT_SECRET", &secret)
        .env("OTP_LENGTH", args.otp_length.to_string())
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", "load-tool-auth-token-0123456789ab")
        .env("TWILIO_PHONE_NUMBER", "+15005550006")
        .env("TWILIO_API_BASE_URL", format!("http://{capture}"))
        .env("AUTHGATE_RATE_LIMITS", "off")
        .env("AUTHGATE_SMS_PER_PHONE_HOUR", "1000000")
        .env("AUTHGATE_SMS_PER_PHONE_DAY", "1000000")
        .env("AUTHGATE_SMS_PER_ACCOUNT_HOUR", "1000000")
        .env("AUTHGATE_SMS_GLOBAL_PER_MINUTE", "100000000")
        .env("AUTHGATE_SMS_PER_REGION_HOUR", "100000000")
        .env("AUTHGATE_SMS_RATE_PER_SEC", "10000")
        .env("AUTHGATE_SMS_CONCURRENCY", "64")
        .env("AUTHGATE_LOGIN_LOCKOUT_AFTER", "1000")
        .env("OTP_RESEND_COOLDOWN", "0")
        .kill_on_drop(true)
        .stdin(Stdio::null());
    if args.flows.contains(&Flow::LoginTiming) {
        cmd.env(
            "AUTHGATE_LOGIN_LOCKOUT_AFTER",
            TIMING_LOCKOUT_AFTER.to_string(),
        )
        .env("AUTHGATE_LOGIN_LOCKOUT_BASE", "1h")
        .env("AUTHGATE_LOGIN_LOCKOUT_MAX", "1h");
    }
    let mut database = None;
    let mut database_url = None;
    if args.embedded {
        cmd.env("AUTHGATE_DATA_DIR", "target/load-data");
        if let Ok(home) = std::env::var("HOME") {
            cmd.env("HOME", home);
        }
    } else {
        let admin = admin_client(&args.database_url).await?;
        let db = format!(
            "authgate_load_{}_{:08x}",
            std::process::id(),
            rand::rngs::OsRng.gen::<u32>()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {db}: {e}"))?;
        let url = replace_dbname(&args.database_url, &db)?;
        cmd.env("DATABASE_URL", &url);
        database_url = Some(url);
        database = Some((args.database_url.clone(), db));
    }
    for (k, v) in &args.env {
        cmd.env(k, v);
    }
    std::fs::create_dir_all("target").map_err(|e| format!("target/: {e}"))?;
    let log = PathBuf::from(format!("target/authgate-load-server-{port}.log"));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let file2 = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(file).stderr(file2);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.binary.display()))?;
    let pid = child.id().ok_or("server exited at once")?;
    let server = Server {
        child,
        pid,
        database,
        log,
        secret,
        database_url,
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok((server, base));
            }
        }
        if Instant::now() > deadline {
            let log = server.log.display().to_string();
            server.stop(args.keep_db).await;
            return Err(format!("server not ready within 90 s; see {log}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replace_dbname(url: &str, db: &str) -> Result<String, String> {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).ok_or("malformed URL")?;
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    Ok(match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    })
}

// ---------------------------------------------------------------- virtual users

/// What one virtual user measured: latency samples per step (microseconds),
/// errors by kind, completed flows.
#[derive(Default)]
struct Recorder {
    steps: BTreeMap<&'static str, Vec<u32>>,
    errors: BTreeMap<String, u64>,
    completed: u64,
}

impl Recorder {
    fn merge(&mut self, other: Recorder) {
        for (k, mut v) in other.steps {
            self.steps.entry(k).or_default().append(&mut v);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.completed += other.completed;
    }
}

struct Vu {
    client: reqwest::Client,
    base: String,
    capture: Arc<Capture>,
    rec: Recorder,
    /// Whether latencies and errors count (false during setup).
    measuring: bool,
    email: String,
    phone: String,
    access: String,
    refresh: String,
    /// `check`: seeded (access token, code) pairs not used yet.
    seeded: Vec<(String, String)>,
    /// Live counts for the progress line (the recorder is merged only at the end).
    progress: Arc<Progress>,
}

type Step<T> = Result<T, ()>;

impl Vu {
    fn error(&mut self, kind: String) {
        if self.measuring {
            *self.rec.errors.entry(kind).or_default() += 1;
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("setup: {kind}");
        }
    }

    fn sample(&mut self, step: &'static str, started: Instant) {
        if self.measuring {
            let v = self.rec.steps.entry(step).or_default();
            if v.len() < MAX_SAMPLES {
                v.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
        }
    }

    /// One request; `Err` (recorded by kind) unless the status is `expect`.
    async fn req(
        &mut self,
        step: &'static str,
        path: &str,
        bearer: bool,
        body: Value,
        expect: u16,
    ) -> Step<Value> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let resp = self.send(path, bearer, &body).await;
            // Setup is untimed preparation: a busy server (503 `overloaded`
            // from a full hashing queue while 64 users sign up at once, 429)
            // is waited for, not counted as a failed setup.
            if let Ok(r) = &resp {
                let status = r.status().as_u16();
                if !self.measuring && (status == 503 || status == 429) && attempt < SETUP_TRIES {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .map_or(Duration::from_millis(100 * attempt), |s| {
                            Duration::from_secs_f64(s.clamp(0.0, 2.0))
                        });
                    let jitter = Duration::from_millis(rand::rngs::OsRng.gen_range(0..100));
                    tokio::time::sleep(wait.min(Duration::from_secs(2)) + jitter).await;
                    continue;
                }
            }
            return self.answer(step, started, resp, expect).await;
        }
    }

    async fn send(
        &self,
        path: &str,
        bearer: bool,
        body: &Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut r = self
            .client
            .post(format!("{}/api/v1{path}", self.base))
            .json(body);
        if bearer {
            r = r.bearer_auth(&self.access);
        }
        r.send().await
    }

    /// Records the answer to one request: its latency if it is `expect`,
    /// otherwise an error by kind.
    async fn answer(
        &mut self,
        step: &'static str,
        started: Instant,
        resp: Result<reqwest::Response, reqwest::Error>,
        expect: u16,
    ) -> Step<Value> {
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                self.error(format!("{step}: {kind}"));
                return Err(());
            }
        };
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        if status != expect {
            let code = value["code"].as_str().unwrap_or("-").to_owned();
            self.error(format!("{step}: {status} {code}"));
            return Err(());
        }
        self.sample(step, started);
        Ok(value)
    }

    async fn signup(&mut self) -> Step<()> {
        let body = json!({"email": self.email, "phone": self.phone, "password": PASSWORD,
                          "firstName": "Load", "lastName": "Test"});
        self.req("signup", "/account/signup", false, body, 201)
            .await
            .map(drop)
    }

    /// A password login expecting tokens; keeps them.
    async fn login(&mut self) -> Step<()> {
        let body = json!({"email": self.email, "password": PASSWORD});
        let v = self
            .req("login", "/account/login", false, body, 200)
            .await?;
        self.keep_tokens(&v, "login")
    }

    fn keep_tokens(&mut self, v: &Value, step: &str) -> Step<()> {
        match (v["accessToken"].as_str(), v["refreshToken"].as_str()) {
            (Some(a), Some(r)) => {
                self.access = a.to_owned();
                self.refresh = r.to_owned();
                Ok(())
            }
            _ => {
                self.error(format!("{step}: no tokens in answer"));
                Err(())
            }
        }
    }

    /// Sends a code with `send` (a POST answered 202 or 200) and waits for the
    /// SMS; the wait is the step `sms`.
    async fn code_after(
        &mut self,
        step: &'static str,
        path: &str,
        bearer: bool,
        body: Value,
        expect: u16,
    ) -> Step<(Value, String)> {
        let mut rx = self.capture.subscribe(&self.phone);
        let v = self.req(step, path, bearer, body, expect).await?;
        let started = Instant::now();
        match tokio::time::timeout(SMS_TIMEOUT, rx.changed()).await {
            Ok(Ok(())) => {
                self.sample("sms", started);
                let code = rx.borrow().1.clone();
                Ok((v, code))
            }
            _ => {
                self.error("sms: no code within 10 s".to_owned());
                Err(())
            }
        }
    }

    async fn verify_phone(&mut self) -> Step<()> {
        let (_, code) = self
            .code_after(
                "verify-send",
                "/account/phone/verify/send",
                true,
                json!({}),
                202,
            )
            .await?;
        let body = json!({"code": code});
        self.req(
            "verify-confirm",
            "/account/phone/verify/confirm",
            true,
            body,
            200,
        )
        .await
        .map(drop)
    }

    async fn toggle_2fa(&mut self, on: bool) -> Step<()> {
        let (send, confirm, send_path, confirm_path) = if on {
            (
                "enable",
                "enable-confirm",
                "/account/2fa/enable",
                "/account/2fa/enable/confirm",
            )
        } else {
            (
                "disable",
                "disable-confirm",
                "/account/2fa/disable",
                "/account/2fa/disable/confirm",
            )
        };
        let (_, code) = self
            .code_after(send, send_path, true, json!({}), 202)
            .await?;
        self.req(confirm, confirm_path, true, json!({"code": code}), 200)
            .await
            .map(drop)
    }

    /// Untimed preparation before the measured phase.
    async fn setup(&mut self, flow: Flow) -> Step<()> {
        match flow {
            Flow::Signup | Flow::PhoneVerify | Flow::Check | Flow::LoginTiming => Ok(()),
            Flow::Login | Flow::Refresh => {
                self.signup().await?;
                self.login().await
            }
            Flow::CodeCheck | Flow::TwoFaLogin => {
                self.signup().await?;
                self.login().await?;
                self.verify_phone().await?;
                if flow == Flow::TwoFaLogin {
                    self.toggle_2fa(true).await?;
                }
                Ok(())
            }
        }
    }

    async fn run_once(&mut self, flow: Flow, ids: &mut Ids) -> Step<()> {
        match flow {
            Flow::Signup => {
                (self.email, self.phone) = ids.next();
                self.signup().await
            }
            Flow::Login => self.login().await,
            Flow::PhoneVerify => {
                (self.email, self.phone) = ids.next();
                self.signup().await?;
                self.login().await?;
                self.verify_phone().await
            }
            Flow::TwoFaLogin => {
                let body = json!({"email": self.email, "password": PASSWORD});
                let (v, code) = self
                    .code_after("login", "/account/login", false, body, 200)
                    .await?;
                let Some(flow_id) = v["flowId"].as_str().map(str::to_owned) else {
                    self.error("login: no flowId (2FA off?)".to_owned());
                    return Err(());
                };
                let body = json!({"flowId": flow_id, "code": code});
                let v = self
                    .req("login-verify", "/account/login/verify", false, body, 200)
                    .await?;
                self.keep_tokens(&v, "login-verify")
            }
            Flow::Refresh => {
                let body = json!({"refreshToken": self.refresh});
                match self.req("refresh", "/auth/refresh", false, body, 200).await {
                    Ok(v) => self.keep_tokens(&v, "refresh"),
                    Err(()) => {
                        // A broken family: log in again (not counted as a flow).
                        let measuring = std::mem::replace(&mut self.measuring, false);
                        let _ = self.login().await;
                        self.measuring = measuring;
                        Err(())
                    }
                }
            }
            Flow::Check => {
                let Some((access, code)) = self.seeded.pop() else {
                    self.error("check: seeded users used up (raise --check-users)".to_owned());
                    return Err(());
                };
                self.access = access;
                self.req(
                    "check",
                    "/account/phone/verify/confirm",
                    true,
                    json!({"code": code}),
                    200,
                )
                .await
                .map(drop)
            }
            // Measured by `login_timing`, never by virtual users.
            Flow::LoginTiming => Err(()),
            Flow::CodeCheck => {
                let on = self.toggle_2fa(true).await;
                // Whatever happened, try to leave 2FA off for the next round.
                let off = self.toggle_2fa(false).await;
                on.and(off)
            }
        }
    }
}

/// Unique e-mail addresses and valid US mobile numbers for one virtual user.
struct Ids {
    run: u32,
    vu: usize,
    n: u64,
}

impl Ids {
    fn next(&mut self) -> (String, String) {
        self.n += 1;
        let k = (u64::from(self.run) * 7919 + self.vu as u64 * 1_000_003 + self.n) % 8_000_000;
        let (exchange, line) = (200 + k / 10_000, k % 10_000);
        (
            format!("load-{:08x}-{}-{}@example.com", self.run, self.vu, self.n),
            format!("+1415{exchange:03}{line:04}"),
        )
    }
}

async fn run_flow(
    flow: Flow,
    args: &Args,
    base: &str,
    capture: &Arc<Capture>,
    server: Option<&Server>,
    run: u32,
) -> Result<(Recorder, Duration, OutboxDepth, ServerTimes), String> {
    let mut seeded = if flow == Flow::Check {
        let server = server
            .filter(|s| s.database_url.is_some())
            .ok_or("the `check` flow seeds its users in the database: it needs a server this tool starts on --database-url (not --target or --embedded)")?;
        seed_checks(server, args, run).await?
    } else {
        Vec::new()
    };
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.users)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let barrier = Arc::new(Barrier::new(args.users + 1));
    let progress = Arc::new(Progress::default());
    let mut tasks = Vec::with_capacity(args.users);
    for vu in 0..args.users {
        let mut ids = Ids { run, vu, n: 0 };
        let (email, phone) = ids.next();
        let mut v = Vu {
            client: client.clone(),
            base: base.to_owned(),
            capture: capture.clone(),
            rec: Recorder::default(),
            measuring: false,
            email,
            phone,
            access: String::new(),
            refresh: String::new(),
            seeded: seeded.pop().unwrap_or_default(),
            progress: progress.clone(),
        };
        let barrier = barrier.clone();
        let duration = args.duration;
        tasks.push(tokio::spawn(async move {
            let ready = v.setup(flow).await.is_ok();
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            v.measuring = true;
            if !ready {
                v.error("setup failed".to_owned());
                return v.rec;
            }
            while Instant::now() < deadline {
                if flow == Flow::Check && v.seeded.is_empty() {
                    v.error("check: seeded users used up (raise --check-users)".to_owned());
                    break;
                }
                if v.run_once(flow, &mut ids).await.is_ok() {
                    v.rec.completed += 1;
                    v.progress.completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Do not spin on a persistent failure.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            v.rec
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let (stop, sampler) = sample_outbox(base);
    // The terminal check is here, at the edge; the line itself is pure.
    let ticker = std::io::stderr().is_terminal().then(|| {
        show_progress(
            flow,
            args.duration,
            started,
            progress.clone(),
            stop.subscribe(),
        )
    });
    let mut total = Recorder::default();
    for t in tasks {
        match t.await {
            Ok(rec) => total.merge(rec),
            Err(e) => *total.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    if let Some(ticker) = ticker {
        // It ends its line, so the report starts on a fresh one.
        let _ = ticker.await;
    }
    let mut depth = sampler.await.unwrap_or_default();
    // One more sample once every virtual user has stopped: the depth "at end".
    depth.add(scrape_outbox_depth(&metrics_client(), base).await);
    let times = scrape_server_times(&metrics_client(), base, flow).await;
    Ok((total, elapsed, depth, times))
}

/// What the virtual users have done so far, for the progress line.
#[derive(Debug, Default)]
struct Progress {
    completed: AtomicU64,
    errors: AtomicU64,
}

/// The counts at one moment of a flow's run.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    /// Since the run started.
    at: Duration,
    completed: u64,
    errors: u64,
}

/// The progress line for `now`, with the rate since `before` (a second ago)
/// and overall: `code-check  12/30 s  1234 flows  101.0/s now  98.5/s overall  3 errors`.
fn progress_line(flow: Flow, duration: Duration, before: Tally, now: Tally) -> String {
    let rate = |n: u64, d: Duration| {
        let secs = d.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    };
    let last = rate(
        now.completed.saturating_sub(before.completed),
        now.at.saturating_sub(before.at),
    );
    format!(
        "{}  {}/{} s  {} flows  {last:.1}/s now  {:.1}/s overall  {} error{}",
        flow.name(),
        now.at.as_secs().min(duration.as_secs()),
        duration.as_secs(),
        now.completed,
        rate(now.completed, now.at),
        now.errors,
        if now.errors == 1 { "" } else { "s" }
    )
}

/// Rewrites the progress line on standard error once per second until told
/// to stop, then ends it with a newline.
fn show_progress(
    flow: Flow,
    duration: Duration,
    started: Instant,
    progress: Arc<Progress>,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tally = || Tally {
            at: started.elapsed(),
            completed: progress.completed.load(Ordering::Relaxed),
            errors: progress.errors.load(Ordering::Relaxed),
        };
        let mut before = Tally::default();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shown = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = tally();
                    // \r and "erase to end of line": the line is rewritten in place.
                    eprint!("\r{}\x1b[K", progress_line(flow, duration, before, now));
                    let _ = std::io::stderr().flush();
                    before = now;
                    shown = true;
                }
                _ = stopped.changed() => break,
            }
        }
        if shown {
            eprintln!();
        }
    })
}

/// The server's SMS outbox depth (messages pending or being sent), from
/// `authgate_sms_outbox_depth` in `GET /metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct OutboxDepth {
    /// Scrapes that had a depth.
    samples: u64,
    max: Option<i64>,
    /// The latest depth seen.
    end: Option<i64>,
}

impl OutboxDepth {
    fn add(&mut self, depth: Option<i64>) {
        if let Some(d) = depth {
            self.samples += 1;
            self.max = Some(self.max.map_or(d, |m| m.max(d)));
            self.end = Some(d);
        }
    }
}

/// The server's own mean time for the sends and the confirms of codes: sum
/// over count of `authgate_http_request_duration_seconds`, from receiving a
/// request to its response. Loopback and this tool's own time are not in it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ServerTimes {
    /// (seconds in all, requests) of 202 answers to a code send.
    send: (f64, u64),
    /// (seconds in all, requests) of 200 answers to a code confirm.
    confirm: (f64, u64),
}

impl ServerTimes {
    fn mean_ms((sum, count): (f64, u64)) -> Option<f64> {
        (count > 0).then(|| sum * 1000.0 / count as f64)
    }
}

/// The value of label `name` in a Prometheus label set (`a="x",b="y"`).
fn label_value<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

/// The routes whose times are the flow's sends and confirms: only routes its
/// setup does not use (`code-check` verifies the phone before it measures).
fn timed_routes(flow: Flow) -> (&'static [&'static str], &'static [&'static str]) {
    match flow {
        Flow::CodeCheck => (
            &["/api/v1/account/2fa/enable", "/api/v1/account/2fa/disable"],
            &[
                "/api/v1/account/2fa/enable/confirm",
                "/api/v1/account/2fa/disable/confirm",
            ],
        ),
        Flow::PhoneVerify | Flow::Check => (
            &["/api/v1/account/phone/verify/send"],
            &["/api/v1/account/phone/verify/confirm"],
        ),
        _ => (&[], &[]),
    }
}

fn parse_server_times(metrics: &str, flow: Flow) -> ServerTimes {
    let (sends, confirms) = timed_routes(flow);
    let mut t = ServerTimes::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("authgate_http_request_duration_seconds_") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (Some(route), Some(status)) =
            (label_value(labels, "route"), label_value(labels, "status"))
        else {
            continue;
        };
        let slot = match status {
            "202" if sends.contains(&route) => &mut t.send,
            "200" if confirms.contains(&route) => &mut t.confirm,
            _ => continue,
        };
        match kind {
            "sum" => slot.0 += value,
            "count" => slot.1 += value as u64,
            _ => {}
        }
    }
    t
}

async fn scrape_server_times(client: &reqwest::Client, base: &str, flow: Flow) -> ServerTimes {
    let text = match client.get(format!("{base}/metrics")).send().await {
        Ok(resp) if resp.status().is_success() => resp.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    parse_server_times(&text, flow)
}

fn metrics_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// The value of `authgate_sms_outbox_depth` in a Prometheus text exposition
/// (absent when the server could not read it: then it reports
/// `authgate_sms_outbox_depth_known 0` only).
fn parse_outbox_depth(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("authgate_sms_outbox_depth "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map(|v| v as i64)
}

async fn scrape_outbox_depth(client: &reqwest::Client, base: &str) -> Option<i64> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    parse_outbox_depth(&resp.text().await.ok()?)
}

/// Scrapes the outbox depth once per second until told to stop.
fn sample_outbox(base: &str) -> (watch::Sender<bool>, tokio::task::JoinHandle<OutboxDepth>) {
    let (stop, mut stopped) = watch::channel(false);
    let base = base.to_owned();
    let sampler = tokio::spawn(async move {
        let client = metrics_client();
        let mut depth = OutboxDepth::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => depth.add(scrape_outbox_depth(&client, &base).await),
                _ = stopped.changed() => break,
            }
        }
        depth
    });
    (stop, sampler)
}

/// Seeds `--check-users` users per virtual user, each with an unverified phone,
/// a live phone-verification code and an access token, as the server itself
/// would have made them (same keys, same claims). Returns, per virtual user,
/// the (access token, code) pairs to check.
async fn seed_checks(
    server: &Server,
    args: &Args,
    run: u32,
) -> Result<Vec<Vec<(String, String)>>, String> {
    use authgate::tokens::TokenIssuer;
    let url = server.database_url.as_deref().ok_or("no database")?;
    let db = admin_client(url).await?;
    let defaults = authgate::config::Config::default();
    // The server's own key ring (its JWT_SECRET is the master key).
    let pg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let store = authgate::store::Store::connect(pg, 1, Duration::from_secs(10))
        .map_err(|e| format!("store: {e}"))?;
    let keys = authgate::keyring::Keyring::read(
        store.clone(),
        secrecy::SecretString::from(server.secret.clone()),
    )
    .await?;
    store.close();
    let issuer = TokenIssuer::new(
        &keys,
        &defaults.jwt_issuer,
        &defaults.jwt_audience,
        Duration::from_secs(3600),
    );
    let started = Instant::now();
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::hours(1);
    let max = 10u32.pow(u32::try_from(args.otp_length).unwrap_or(6));
    let mut rng = rand::rngs::OsRng;
    let mut per_vu = Vec::with_capacity(args.users);
    let mut serial = 0u64;
    for vu in 0..args.users {
        let mut pairs = Vec::with_capacity(args.check_users);
        let (mut ids, mut emails, mut phones, mut hashes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.check_users {
            let id = uuid::Uuid::new_v4();
            let code = format!("{:0width$}", rng.gen_range(0..max), width = args.otp_length);
            // +1646 numbers: apart from the +1415 ones the other flows sign up.
            let k = (u64::from(run) + serial) % 8_000_000;
            serial += 1;
            ids.push(id);
            emails.push(format!("check-{run:08x}-{vu}-{i}@example.com"));
            phones.push(format!("+1646{:03}{:04}", 200 + k / 10_000, k % 10_000));
            hashes.push(keys.otp_hash(&id, "phone_verify", &code).to_vec());
            let token = issuer
                .issue(id, &["pwd"], now)
                .map_err(|e| format!("access token: {e}"))?;
            pairs.push((token, code));
        }
        db.execute(
            "INSERT INTO users (id, email, phone, password_hash, first_name, last_name)
             SELECT id, email, phone, 'seeded-by-authgate-load', 'Load', 'Check'
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(id, email, phone)",
            &[&ids, &emails, &phones],
        )
        .await
        .map_err(|e| format!("seeding users: {e}"))?;
        db.execute(
            "INSERT INTO otp_codes (id, user_id, purpose, code_hash, max_attempts, created_at, expires_at)
             SELECT gen_random_uuid(), user_id, 'phone_verify', code_hash, 5, $3, $4
             FROM unnest($1::uuid[], $2::bytea[]) AS t(user_id, code_hash)",
            &[&ids, &hashes, &now, &expires],
        )
        .await
        .map_err(|e| format!("seeding codes: {e}"))?;
        per_vu.push(pairs);
    }
    db.batch_execute("ANALYZE users; ANALYZE otp_codes")
        .await
        .map_err(|e| format!("ANALYZE: {e}"))?;
    println!(
        "seeded {} users with a live code each in {:.1} s",
        serial,
        started.elapsed().as_secs_f64()
    );
    Ok(per_vu)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn report(
    flow: Flow,
    args: &Args,
    rec: &mut Recorder,
    elapsed: Duration,
    server: Option<&Server>,
    depth: &OutboxDepth,
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n== {} | {} virtual users | {:.1} s | {} flows completed | {:.1} flows/s",
        flow.name(),
        args.users,
        secs,
        rec.completed,
        rec.completed as f64 / secs
    );
    println!(
        "   {:<16} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "step", "count", "per s", "p50 ms", "p95 ms", "p99 ms"
    );
    for (step, samples) in rec.steps.iter_mut() {
        samples.sort_unstable();
        println!(
            "   {:<16} {:>8} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
            step,
            samples.len(),
            samples.len() as f64 / secs,
            percentile(samples, 0.50),
            percentile(samples, 0.95),
            percentile(samples, 0.99)
        );
    }
    if rec.errors.is_empty() {
        println!("   errors: none");
    } else {
        println!("   errors:");
        for (kind, n) in &rec.errors {
            println!("     {n:>8}  {kind}");
        }
    }
    match server.and_then(Server::memory_kib) {
        Some((hwm, rss)) => println!(
            "   server memory: peak resident (VmHWM) {:.1} MiB, now {:.1} MiB",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        ),
        None => println!("   server memory: n/a (not started by this tool)"),
    }
    match (depth.max, depth.end) {
        (Some(max), Some(end)) => println!("   outbox depth: max {max}, at end {end}"),
        _ => println!("   outbox depth: n/a (no authgate_sms_outbox_depth in /metrics)"),
    }
}

fn report_server_times(t: &ServerTimes) {
    let part = |name: &str, v: (f64, u64)| {
        ServerTimes::mean_ms(v).map(|ms| format!("{name} {ms:.2} ms ({} requests)", v.1))
    };
    let parts: Vec<String> = [part("send", t.send), part("confirm", t.confirm)]
        .into_iter()
        .flatten()
        .collect();
    if !parts.is_empty() {
        println!(
            "   server-side mean (authgate_http_request_duration_seconds): {}",
            parts.join(", ")
        );
    }
}

/// The steps whose samples are merged into one figure in the JSON summary:
/// the sends of a code (the request that issues it and queues its SMS, not the
/// SMS's delivery, which is the step `sms`) and the confirms (the code check).
fn step_group(flow: Flow, step: &str) -> Option<&'static str> {
    match (flow, step) {
        (Flow::CodeCheck, "enable" | "disable") | (Flow::PhoneVerify, "verify-send") => {
            Some("send")
        }
        (Flow::CodeCheck, "enable-confirm" | "disable-confirm")
        | (Flow::PhoneVerify, "verify-confirm")
        | (Flow::Check, "check") => Some("confirm"),
        _ => None,
    }
}

/// Count, rate and percentiles of sorted latency samples (microseconds).
fn step_json(sorted: &[u32], secs: f64) -> Value {
    json!({
        "count": sorted.len(),
        "per_s": sorted.len() as f64 / secs,
        "p50_ms": percentile(sorted, 0.50),
        "p95_ms": percentile(sorted, 0.95),
        "p99_ms": percentile(sorted, 0.99),
    })
}

/// One flow run for `--json`; `rec`'s samples sorted (by `report`).
fn flow_json(
    flow: Flow,
    args: &Args,
    rec: &Recorder,
    elapsed: Duration,
    server: Option<&Server>,
    depth: &OutboxDepth,
) -> Value {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let steps: serde_json::Map<String, Value> = rec
        .steps
        .iter()
        .map(|(step, samples)| ((*step).to_owned(), step_json(samples, secs)))
        .collect();
    let mut grouped: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (step, samples) in &rec.steps {
        if let Some(group) = step_group(flow, step) {
            grouped.entry(group).or_default().extend_from_slice(samples);
        }
    }
    let groups: serde_json::Map<String, Value> = grouped
        .into_iter()
        .map(|(group, mut samples)| {
            samples.sort_unstable();
            (group.to_owned(), step_json(&samples, secs))
        })
        .collect();
    let memory = server
        .and_then(Server::memory_kib)
        .map(|(hwm, rss)| json!({"vmhwm_kib": hwm, "vmrss_kib": rss}));
    let outbox = depth
        .max
        .map(|max| json!({"samples": depth.samples, "max": max, "end": depth.end}));
    json!({
        "flow": flow.name(),
        "users": args.users,
        "seconds": secs,
        "completed": rec.completed,
        "flows_per_s": rec.completed as f64 / secs,
        "steps": steps,
        "step_groups": groups,
        "errors": rec.errors,
        "errors_total": rec.errors.values().sum::<u64>(),
        "server_memory": memory,
        "outbox_depth": outbox,
    })
}

/// Writes the `--json` document, if asked for.
fn write_json(args: &Args, doc: &Value) -> Result<(), String> {
    let Some(path) = &args.json else {
        return Ok(());
    };
    let text = serde_json::to_string_pretty(doc).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

async fn run(args: Args) -> Result<(), String> {
    let capture = Arc::new(Capture::default());
    let capture_addr = start_capture(capture.clone(), args.capture_port, args.otp_length).await?;
    println!("Twilio capture endpoint: http://{capture_addr} (TWILIO_API_BASE_URL)");
    let (server, base) = match &args.target {
        Some(t) => (None, t.clone()),
        None => {
            let (s, base) = start_server(&args, capture_addr).await?;
            println!(
                "started {} (pid {}) at {base}; log {}",
                args.binary.display(),
                s.pid,
                s.log.display()
            );
            (Some(s), base)
        }
    };
    let mut result = Ok(());
    let mut flows_json = Vec::new();
    for &flow in &args.flows {
        // Fresh users per flow: e-mail addresses and phones never repeat.
        let run_id = rand::rngs::OsRng.gen::<u32>();
        if flow == Flow::LoginTiming {
            if let Err(e) = login_timing(&args, &base, run_id).await {
                result = Err(e);
                break;
            }
            continue;
        }
        match run_flow(flow, &args, &base, &capture, server.as_ref(), run_id).await {
            Ok((mut rec, elapsed, depth, times)) => {
                report(flow, &args, &mut rec, elapsed, server.as_ref(), &depth);
                report_server_times(&times);
                let mut doc = flow_json(flow, &args, &rec, elapsed, server.as_ref(), &depth);
                doc["server_mean_ms"] = json!({
                    "send": ServerTimes::mean_ms(times.send),
                    "confirm": ServerTimes::mean_ms(times.confirm),
                });
                flows_json.push(doc);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let captured = capture.messages.load(std::sync::atomic::Ordering::Relaxed);
    println!("\nSMS captured: {captured}");
    if let Some(s) = server {
        s.stop(args.keep_db).await;
    }
    let doc = json!({
        "tool": "authgate-load",
        "format": 1,
        "target": base,
        "flows": flows_json,
        "sms_captured": captured,
        "error": result.as_ref().err(),
    });
    write_json(&args, &doc)?;
    result
}

// ---------------------------------------------------------------- login timing

/// Failures that lock an account in `login-timing` (set on a server it starts).
const TIMING_LOCKOUT_AFTER: usize = 5;

/// One POST; the status and JSON body.
async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    let r = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// The four logins that must not be told apart, side by side: median and p99
/// latency of each, and their ratio to the slowest case.
async fn login_timing(args: &Args, base: &str, run: u32) -> Result<(), String> {
    use rand::seq::SliceRandom;
    const CASES: [&str; 4] = [
        "wrong password",
        "unknown e-mail",
        "locked account",
        "malformed e-mail",
    ];
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let login = format!("{base}/api/v1/account/login");
    let signup = format!("{base}/api/v1/account/signup");
    let mut ids = Ids { run, vu: 0, n: 0 };
    let mut new_account = || {
        let (email, phone) = ids.next();
        let body = json!({"email": email, "phone": phone, "password": PASSWORD,
                          "firstName": "Load", "lastName": "Timing"});
        (email, body)
    };
    // Wrong passwords rotate over accounts that each stay under the lockout.
    let per_account = TIMING_LOCKOUT_AFTER - 1;
    let warmup = 10;
    let needed = (args.samples + warmup).div_ceil(per_account);
    let mut wrong_accounts = Vec::with_capacity(needed);
    for _ in 0..needed {
        let (email, body) = new_account();
        match post_json(&client, &signup, &body).await? {
            (201, _) => wrong_accounts.push(email),
            (s, v) => return Err(format!("sign-up: {s} {v}")),
        }
    }
    let (locked, body) = new_account();
    match post_json(&client, &signup, &body).await? {
        (201, _) => {}
        (s, v) => return Err(format!("sign-up: {s} {v}")),
    }
    for _ in 0..TIMING_LOCKOUT_AFTER {
        post_json(
            &client,
            &login,
            &json!({"email": locked, "password": "wr0ng-password"}),
        )
        .await?;
    }
    let body_of = |case: usize, i: usize| match case {
        0 => json!({"email": wrong_accounts.get((i / per_account) % wrong_accounts.len().max(1)),
                    "password": "wr0ng-password"}),
        1 => {
            json!({"email": format!("nobody-{run:08x}-{i}@example.com"), "password": "wr0ng-password"})
        }
        2 => json!({"email": locked, "password": PASSWORD}),
        _ => json!({"email": format!("not an e-mail {i}"), "password": "wr0ng-password"}),
    };
    let mut samples: [Vec<u32>; 4] = Default::default();
    let mut unexpected: BTreeMap<String, u64> = BTreeMap::new();
    let mut order = [0usize, 1, 2, 3];
    let mut rng = rand::rngs::OsRng;
    let started = Instant::now();
    for i in 0..warmup + args.samples {
        order.shuffle(&mut rng);
        for &case in &order {
            let body = body_of(case, i);
            let t = Instant::now();
            let (status, v) = post_json(&client, &login, &body).await?;
            let micros = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
            if status != 401 || v["code"] != "invalid_credentials" {
                let code = v["code"].as_str().unwrap_or("-");
                *unexpected
                    .entry(format!("{}: {status} {code}", CASES[case]))
                    .or_default() += 1;
            } else if i >= warmup {
                samples[case].push(micros);
            }
        }
    }
    for s in samples.iter_mut() {
        s.sort_unstable();
    }
    let p50: Vec<f64> = samples.iter().map(|s| percentile(s, 0.50)).collect();
    let p99: Vec<f64> = samples.iter().map(|s| percentile(s, 0.99)).collect();
    let slowest = |v: &[f64]| v.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
    let (max50, max99) = (slowest(&p50), slowest(&p99));
    println!(
        "\n== login-timing | {} logins per case, interleaved, one at a time | {:.1} s",
        args.samples,
        started.elapsed().as_secs_f64()
    );
    println!(
        "   {:<18} {:>7} {:>9} {:>9} {:>12} {:>12}",
        "case", "count", "p50 ms", "p99 ms", "p50/slowest", "p99/slowest"
    );
    for (case, name) in CASES.iter().enumerate() {
        println!(
            "   {:<18} {:>7} {:>9.2} {:>9.2} {:>12.3} {:>12.3}",
            name,
            samples[case].len(),
            p50[case],
            p99[case],
            p50[case] / max50,
            p99[case] / max99
        );
    }
    let spread50 = 1.0 - p50.iter().copied().fold(f64::MAX, f64::min) / max50;
    let spread99 = 1.0 - p99.iter().copied().fold(f64::MAX, f64::min) / max99;
    println!(
        "   spread: p50 {:.1}%, p99 {:.1}% (fastest vs slowest case)",
        spread50 * 100.0,
        spread99 * 100.0
    );
    if unexpected.is_empty() {
        println!("   every answer: 401 invalid_credentials");
    } else {
        println!("   answers other than 401 invalid_credentials:");
        for (kind, n) in &unexpected {
            println!("     {n:>8}  {kind}");
        }
    }
    Ok(())
}

/// Password verifies per second on every core: the most password logins the
/// machine can do, whatever else the server does.
fn argon2_bound(args: &Args, duration: Duration) -> Result<(), String> {
    use authgate::domain::password::{self, Password};
    let pw = Password::parse_new(PASSWORD).map_err(|e| e.message())?;
    let phc = password::hash(&pw).map_err(|e| format!("argon2: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let deadline = started + duration;
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // As the server's hashing threads: one working memory, reused.
                    let mut memory = password::Memory::default();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if password::verify_in(&pw, &phc, &mut memory) {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    let secs = started.elapsed().as_secs_f64();
    let params = phc.split('$').nth(3).unwrap_or("?");
    println!(
        "argon2 bound: {total} verifies in {secs:.1} s on {threads} threads = {:.1} verifies/s \
         (parameters of domain::password: {params})",
        total as f64 / secs,
    );
    write_json(
        args,
        &json!({
            "tool": "authgate-load",
            "format": 1,
            "argon2_bound": {
                "verifies": total,
                "seconds": secs,
                "threads": threads,
                "per_s": total as f64 / secs,
                "params": params,
            },
            "error": null,
        }),
    )
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("authgate-load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(secs) = args.argon2_bound {
        return match argon2_bound(&args, Duration::from_secs(secs)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("authgate-load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authgate-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authgate-load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_times_are_the_flow_routes_sum_over_count() {
        let text = "# TYPE authgate_http_request_duration_seconds histogram\n\
            authgate_http_request_duration_seconds_bucket{route=\"/api/v1/account/2fa/enable\",status=\"202\",le=\"0.001\"} 1\n\
            authgate_http_request_duration_seconds_sum{route=\"/api/v1/account/2fa/enable\",status=\"202\"} 0.003\n\
            authgate_http_request_duration_seconds_count{route=\"/api/v1/account/2fa/enable\",status=\"202\"} 2\n\
            authgate_http_request_duration_seconds_sum{route=\"/api/v1/account/2fa/disable\",status=\"202\"} 0.001\n\
            authgate_http_request_duration_seconds_count{route=\"/api/v1/account/2fa/disable\",status=\"202\"} 2\n\
            authgate_http_request_duration_seconds_sum{route=\"/api/v1/account/2fa/enable/confirm\",status=\"401\"} 9\n\
            authgate_http_request_duration_seconds_count{route=\"/api/v1/account/2fa/enable/confirm\",status=\"401\"} 1\n\
            authgate_http_request_duration_seconds_sum{route=\"/api/v1/account/phone/verify/confirm\",status=\"200\"} 5\n\
            authgate_http_request_duration_seconds_count{route=\"/api/v1/account/phone/verify/confirm\",status=\"200\"} 1\n";
        let t = parse_server_times(text, Flow::CodeCheck);
        assert_eq!(ServerTimes::mean_ms(t.send), Some(1.0));
        // Refused confirms and the setup's phone verification are not counted.
        assert_eq!(ServerTimes::mean_ms(t.confirm), None);
        let t = parse_server_times(text, Flow::Check);
        assert_eq!(ServerTimes::mean_ms(t.confirm), Some(5000.0));
    }

    #[test]
    fn outbox_depth_is_read_from_the_exposition() {
        let text = "# HELP authgate_sms_outbox_depth Messages not yet final.\n\
                    # TYPE authgate_sms_outbox_depth gauge\n\
                    authgate_sms_outbox_depth 17\n\
                    # TYPE authgate_sms_outbox_depth_known gauge\n\
                    authgate_sms_outbox_depth_known 1\n";
        assert_eq!(parse_outbox_depth(text), Some(17));
        // Unknown depth: only the `_known` gauge, which must not be taken for it.
        assert_eq!(
            parse_outbox_depth("authgate_sms_outbox_depth_known 0\n"),
            None
        );
    }

    #[test]
    fn progress_line_has_flows_rates_and_errors() {
        let before = Tally {
            at: Duration::from_secs(11),
            completed: 1000,
            errors: 2,
        };
        let now = Tally {
            at: Duration::from_secs(12),
            completed: 1200,
            errors: 3,
        };
        assert_eq!(
            progress_line(Flow::CodeCheck, Duration::from_secs(30), before, now),
            "code-check  12/30 s  1200 flows  200.0/s now  100.0/s overall  3 errors"
        );
        let one = Tally {
            at: Duration::from_millis(1000),
            completed: 5,
            errors: 1,
        };
        assert_eq!(
            progress_line(Flow::Login, Duration::from_secs(10), Tally::default(), one),
            "login  1/10 s  5 flows  5.0/s now  5.0/s overall  1 error"
        );
        // No time passed (a late tick): rates are 0, never NaN or infinite; the
        // clock shown never passes the run's length.
        let late = Tally {
            at: Duration::from_secs(31),
            ..now
        };
        let line = progress_line(Flow::CodeCheck, Duration::from_secs(30), late, late);
        assert!(
            line.contains("30/30 s") && line.contains(" 0.0/s now"),
            "{line}"
        );
    }

    #[test]
    fn outbox_depth_keeps_max_and_last() {
        let mut d = OutboxDepth::default();
        for v in [Some(3), None, Some(9), Some(2)] {
            d.add(v);
        }
        assert_eq!((d.samples, d.max, d.end), (3, Some(9), Some(2)));
    }

    #[test]
    fn sends_and_confirms_of_code_check_are_grouped() {
        let groups: Vec<_> = [
            "enable",
            "sms",
            "enable-confirm",
            "disable",
            "disable-confirm",
        ]
        .iter()
        .map(|s| step_group(Flow::CodeCheck, s))
        .collect();
        assert_eq!(
            groups,
            [
                Some("send"),
                None,
                Some("confirm"),
                Some("send"),
                Some("confirm")
            ]
        );
        assert_eq!(step_group(Flow::Check, "check"), Some("confirm"));
        assert_eq!(step_group(Flow::Login, "login"), None);
    }
}
