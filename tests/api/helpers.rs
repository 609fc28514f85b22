//! Test harness: a real PostgreSQL (`AUTHGATE_TEST_DATABASE_URL` when set, else
//! the one on 127.0.0.1:5432 when it answers, else a private one started from the
//! installed binaries under the system temp folder and left running for the next
//! run),
//! a fresh database per test cloned from a migrated template, and the app on a
//! random port.

use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use authgate::clock::Clock;
use authgate::config::{
    Config, DatabaseSource, ListenSource, SmsConfig, TwilioConfig, TwilioSender,
};
use authgate::startup::Application;
use authgate::store::private_pg::PrivatePostgres;
use authgate::store::{LockMode, Store};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use crate::fake_twilio::{self, FakeTwilio};

/// Connection settings of the server tests create their databases on.
pub fn admin_config() -> tokio_postgres::Config {
    static ADMIN: OnceLock<Result<tokio_postgres::Config, String>> = OnceLock::new();
    match ADMIN.get_or_init(resolve_admin) {
        Ok(c) => c.clone(),
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

fn resolve_admin() -> Result<tokio_postgres::Config, String> {
    if let Ok(url) = std::env::var("AUTHGATE_TEST_DATABASE_URL") {
        return tokio_postgres::Config::from_str(&url).map_err(|e| e.to_string());
    }
    // AUTHGATE_TEST_PG=private skips the shared server, to prove the suite runs
    // where none is listening (CI does this on its second pass).
    let force_private = std::env::var("AUTHGATE_TEST_PG").is_ok_and(|v| v == "private");
    let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if !force_private && TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return tokio_postgres::Config::from_str("postgres://postgres@127.0.0.1:5432/postgres")
            .map_err(|e| e.to_string());
    }
    // No server: run our own from the installed binaries, and leave it running
    // for the next test process (the next run takes it over or reuses it).
    // Under the system temp folder, not the checkout: as root, the server runs as
    // `postgres`, which may not be able to enter the checkout (a 0700 home or
    // mktemp folder). One server per checkout.
    let checkout = Sha256::digest(env!("CARGO_MANIFEST_DIR").as_bytes());
    let dir =
        std::env::temp_dir().join(format!("authgate-test-pg-{}", hex::encode(&checkout[..6])));
    let pg = PrivatePostgres::start(&dir, "postgres").map_err(|e| e.to_string())?;
    let mut cfg = pg.pg_config();
    cfg.dbname("postgres");
    std::mem::forget(pg);
    Ok(cfg)
}

/// A `DATABASE_URL` for connection settings (TCP or Unix socket), with the
/// password when there is one (the private server always has one).
pub fn database_url_for(cfg: &tokio_postgres::Config) -> String {
    let user = cfg.get_user().unwrap_or("postgres");
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("postgres");
    let userinfo = match cfg.get_password() {
        Some(pw) => {
            let pw: String = pw
                .iter()
                .map(|&b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{user}:{pw}")
        }
        None => user.to_owned(),
    };
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => {
            format!("postgres://{userinfo}@{h}:{port}/{db}")
        }
        Some(tokio_postgres::config::Host::Unix(p)) => format!(
            "postgres://{userinfo}@{}:{port}/{db}",
            p.display().to_string().replace('/', "%2F")
        ),
        None => panic!("no host in the database settings"),
    }
}

/// Opens one plain connection (no pool) and drives it on the current runtime.
pub async fn connect(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .expect("connect to test PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The template's name changes whenever a migration file does.
fn template_name() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    format!("authgate_tpl_{}", hex::encode(&h.finalize()[..6]))
}

/// A fresh, migrated database; returns its connection settings.
pub async fn fresh_database() -> (String, tokio_postgres::Config) {
    let admin_cfg = admin_config();
    let admin = connect(&admin_cfg).await;
    let template = template_name();
    // Several test binaries or processes may race to build the template.
    admin
        .execute("SELECT pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .unwrap()
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .await
            .unwrap();
        let mut cfg = admin_cfg.clone();
        cfg.dbname(&template);
        let store = Store::connect(cfg, 1, Duration::from_secs(10)).unwrap();
        store.migrate().await.unwrap();
        store.close();
    }
    admin
        .execute("SELECT pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
    let name = format!("authgate_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .await
        .unwrap();
    let mut cfg = admin_cfg;
    cfg.dbname(&name);
    (name, cfg)
}

/// Drops a test database from a plain thread (usable from `Drop`).
pub fn drop_database(name: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let admin = connect(&admin_config()).await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    })
    .join();
}

/// Whether `AUTHGATE_TEST_FALLBACKS=on`: every test app then runs as on an
/// engine without LISTEN/NOTIFY and advisory locks (`DATABASE_LISTEN_URL=off`,
/// `AUTHGATE_LOCKS=rows`), so the whole suite proves the fallbacks.
pub fn fallbacks_on() -> bool {
    std::env::var("AUTHGATE_TEST_FALLBACKS").is_ok_and(|v| v == "on")
}

/// For tests of what LISTEN/NOTIFY itself does (the revocation cache, who is
/// notified): listen on the database as by default, even with the fallbacks on.
pub fn pin_listening(c: &mut Config) {
    c.listen = ListenSource::Database;
}

/// Configuration for a test app: random port, fast hashing concurrency.
pub fn test_config() -> Config {
    let (listen, locks) = if fallbacks_on() {
        (ListenSource::Off, LockMode::Rows)
    } else {
        (ListenSource::Database, LockMode::Advisory)
    };
    Config {
        listen,
        locks,
        port: 0,
        database: DatabaseSource::Embedded, // unused: the harness passes the db explicitly
        data_dir: std::env::temp_dir().join("authgate-tests"),
        // Fixed, so that two instances on one database share every derived key.
        jwt_secret: Some(SecretString::from(
            "test-secret-test-secret-test-secret-0123".to_owned(),
        )),
        // Fast SMS delivery: a short sweep and small backoffs keep retry tests
        // quick; the console sender unless a test asks for the fake Twilio.
        sms: SmsConfig {
            rate_per_sec: 100,
            sweep_interval: Duration::from_millis(200),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            // Leases run on the app's clock, which tests move by minutes or
            // hours at a step: a 30 s lease lapsed under a message sent just
            // before a jump but not yet recorded, and it went out twice. Tests of
            // lapsing leases set their own.
            lease: Duration::from_secs(30 * 24 * 3600),
            ..SmsConfig::default()
        },
        // Every test client is 127.0.0.1: the local per-IP limits would trip the
        // concurrency and login suites. tests/api/rate_limits.rs turns them on.
        rate_limits: authgate::config::RateLimitConfig {
            enabled: false,
            ..Default::default()
        },
        key_reload: Duration::from_millis(200),
        ..Config::default()
    }
}

/// Twilio settings pointing at a fake Twilio (see `fake_twilio`).
pub fn twilio_config(base_url: &str) -> TwilioConfig {
    TwilioConfig {
        account_sid: fake_twilio::ACCOUNT_SID.to_owned(),
        auth_token: SecretString::from(fake_twilio::AUTH_TOKEN.to_owned()),
        sender: TwilioSender::From(fake_twilio::FROM_NUMBER.to_owned()),
        api_base_url: base_url.to_owned(),
        // Public URL as behind a proxy: signatures cover it, not our address.
        status_callback_url: Some(STATUS_CALLBACK_URL.to_owned()),
    }
}

/// The status callback URL the test apps claim to be reachable at.
pub const STATUS_CALLBACK_URL: &str = "https://authgate.example.com/api/v1/webhooks/twilio/status";

/// Starts the app with SMS sent to a fresh fake Twilio on loopback.
pub async fn spawn_app_with_twilio() -> (TestApp, FakeTwilio) {
    spawn_app_with_twilio_and(|_| {}).await
}

/// As `spawn_app_with_twilio`, with further configuration.
pub async fn spawn_app_with_twilio_and(tweak: impl FnOnce(&mut Config)) -> (TestApp, FakeTwilio) {
    let fake = FakeTwilio::start().await;
    let base = fake.base_url();
    let app = spawn_app_with(move |c| {
        c.sms.twilio = Some(twilio_config(&base));
        tweak(c);
    })
    .await;
    (app, fake)
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The app's clock: `advance` it instead of sleeping.
    pub clock: Clock,
    /// The app's state, for looking inside (live flow actors, counters).
    pub state: authgate::state::AppState,
    pub http: reqwest::Client,
    pub db: tokio_postgres::Config,
    db_name: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn signup(&self, body: &Value) -> reqwest::Response {
        self.post_json("/api/v1/account/signup", body).await
    }

    /// A direct connection to this test's database, for asserting on rows.
    pub async fn db_client(&self) -> tokio_postgres::Client {
        connect(&self.db).await
    }

    /// Stops the server gracefully and waits for it (the database stays).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    /// Stops the app, drops its database, then fails the test if the app gave
    /// an error answer its route's error table lacks (so the OpenAPI document
    /// does not list it): declare it next to the handler, in its route
    /// module's `errors`.
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(name) = self.db_name.take() {
            drop_database(name);
        }
        let undocumented = authgate::routes::errors::undocumented(&self.state);
        // A test already failing keeps its own message (a second panic aborts).
        if !undocumented.is_empty() && !std::thread::panicking() {
            panic!("error answers missing from their route's error table: {undocumented:#?}");
        }
    }
}

/// Starts the app against a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose accounts lock after 3 failed passwords, for 1 minute doubling
/// up to 4: the lockout tests' common settings.
pub async fn spawn_app_with_short_lockout() -> TestApp {
    spawn_app_with(|c| {
        c.quotas.lockout_after = 3;
        c.quotas.lockout_base = Duration::from_secs(60);
        c.quotas.lockout_max = Duration::from_secs(240);
    })
    .await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let (name, db) = fresh_database().await;
    let mut app = spawn_on(db, tweak).await;
    app.db_name = Some(name);
    app
}

/// Starts another app instance on an existing database (it will not drop it).
pub async fn spawn_on(db: tokio_postgres::Config, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    tweak(&mut config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let clock = Clock::system();
    let app = Application::build_with_clock(config, db.clone(), clock.clone(), async {
        let _ = rx.await;
    })
    .await
    .expect("app builds");
    let addr = app.addr();
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        clock,
        state,
        http: reqwest::Client::new(),
        db,
        db_name: None,
        stop: Some(tx),
        server: Some(server),
    }
}

/// A valid sign-up body with an e-mail and phone no other test uses.
pub fn valid_signup() -> Value {
    let n = uuid::Uuid::new_v4().as_u128();
    json!({
        "email": format!("user{}@example.com", n % 1_000_000_000_000),
        "phone": unique_phone(),
        "password": "s3cure-passw0rd",
        "firstName": "Ada",
        "lastName": "Lovelace",
    })
}

/// A random valid US number in E.164 (area code 415, exchange 2xx to 9xx).
pub fn unique_phone() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    let exchange = 200 + (n % 800) as u32;
    let line = ((n >> 20) % 10_000) as u32;
    format!("+1415{exchange:03}{line:04}")
}

/// The JSON body of a response, asserting the status first.
pub async fn expect_json(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asserts the error envelope's shape and returns it.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let path = resp.url().path().to_owned();
    assert!(resp.headers().contains_key("x-request-id"));
    let body = expect_json(resp, status).await;
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["path"], path, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    body
}

/// A loopback port free when asked (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the `authgate` child on `port` answers `/readyz` with 200; fails
/// with its log (`log`) if it exits first or is not ready within `limit`.
pub async fn wait_ready(
    child: &mut std::process::Child,
    port: u16,
    log: &std::path::Path,
    limit: std::time::Duration,
) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + limit;
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "authgate exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "authgate not ready in {limit:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether the tests run as root (they do here and in CI).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// `id -u USER` or `id -g USER`: an account's numeric id.
pub fn id_of(flag: &str, user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .arg(flag)
        .arg(user)
        .output()
        .unwrap();
    assert!(out.status.success(), "no account {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// An empty database (no schema) on the test server, for tests of migrating;
/// its name. The caller drops it (`drop_database`).
pub async fn empty_database() -> String {
    let admin = connect(&admin_config()).await;
    let name = format!("authgate_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    name
}

/// `useradd` of a system account `name` with no home and no login shell:
/// the throwaway "ordinary user" of the tests that run authgate as one.
pub fn add_system_user(name: &str) -> std::process::ExitStatus {
    std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(name)
        .status()
        .unwrap()
}
