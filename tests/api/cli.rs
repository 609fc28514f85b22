//! The `authgate` binary: configuration errors, `migrate`, and the embedded
//! default (private PostgreSQL) surviving a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_authgate");

/// The binary with a clean environment, run in an empty folder (no `.env`).
fn authgate(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("authgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn configuration_errors_name_the_variable_in_one_line_without_a_backtrace() {
    let dir = temp_dir();
    let cases = [
        (
            "JWT_SECRET",
            "too-short",
            "JWT_SECRET: must be at least 32 bytes",
        ),
        ("PORT", "eighty", "PORT: `eighty` is not a port number"),
        (
            "JWT_EXPIRATION_TIME",
            "soon",
            "JWT_EXPIRATION_TIME: `soon` is not a duration",
        ),
        (
            "DATABASE_URL",
            "mysql://root@localhost/db",
            "DATABASE_URL: must be a postgres://",
        ),
        (
            "DATABASE_URL",
            "postgres://u@h:port/db",
            "DATABASE_URL: malformed",
        ),
        (
            "OTP_LENGTH",
            "3",
            "OTP_LENGTH: `3` is not a whole number from 4 to 10",
        ),
        (
            "JWT_ALGORITHM",
            "RS256",
            "JWT_ALGORITHM: `RS256` is not EdDSA, ES256 or HS256",
        ),
        (
            "JWT_ALGORITHM",
            "HS256",
            "JWT_SECRET: JWT_ALGORITHM=HS256 signs with JWT_SECRET",
        ),
        (
            "AUTHGATE_KEY_ROTATION",
            "5m",
            "AUTHGATE_KEY_ROTATION: must be at least 1h",
        ),
        (
            "AUTHGATE_MASTER_KEY",
            "short",
            "AUTHGATE_MASTER_KEY: must be at least 32 bytes",
        ),
        (
            "AUTHGATE_TEST_PHONES",
            "+15005550006=12345",
            "AUTHGATE_TEST_PHONES: the code of +15005550006 must be 6 digits",
        ),
        (
            "AUTHGATE_ENV",
            "prod-eu",
            "AUTHGATE_ENV: `prod-eu` is not development, staging or production",
        ),
    ];
    for (var, value, expected) in cases {
        for command in ["serve", "check-config", "migrate"] {
            let out = authgate(&dir)
                .arg(command)
                .env(var, value)
                .output()
                .unwrap();
            let err = stderr_of(&out);
            assert_eq!(out.status.code(), Some(2), "{var}={value} {command}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(expected), "{var}={value}: {err}");
            assert!(
                !err.contains("panicked") && !err.contains("backtrace"),
                "{err}"
            );
        }
    }
    // Test numbers have fixed codes: never in production.
    let out = authgate(&dir)
        .arg("check-config")
        .env("AUTHGATE_ENV", "production")
        .env("AUTHGATE_TEST_PHONES", "+15005550006=123456")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains(
            "AUTHGATE_TEST_PHONES: test numbers are refused with AUTHGATE_ENV=production"
        ),
        "{}",
        stderr_of(&out)
    );
    let out = authgate(&dir)
        .arg("check-config")
        .env("AUTHGATE_ENV", "staging")
        .env("AUTHGATE_TEST_PHONES", "+15005550006=123456")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("1 numbers (codes masked)") && !text.contains("123456"),
        "{text}"
    );
    // Several problems: one line each.
    let out = authgate(&dir)
        .env("PORT", "x")
        .env("JWT_SECRET", "y")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 2, "{err}");
    // A malformed .env file is named too.
    std::fs::write(dir.join(".env"), "NOT A VALID LINE\n").unwrap();
    let out = authgate(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains(".env"), "{}", stderr_of(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_shows_sms_segments_and_names_a_bad_template() {
    let dir = temp_dir();
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    // Over 160 septets: two GSM-7 segments.
    let long = format!("{{code}} {}", "x".repeat(160));
    std::fs::write(templates.join("de.login_2fa.txt"), &long).unwrap();
    let out = authgate(&dir)
        .arg("check-config")
        .env("AUTHGATE_SMS_TEMPLATES_DIR", &templates)
        .env("SMS_WEBOTP_DOMAIN", "auth.example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start}: {text}"))
            .to_owned()
    };
    assert!(
        line("sms en.login_2fa").contains("GSM-7, 1 segment (shipped)"),
        "{text}"
    );
    assert!(
        line("sms de.login_2fa").contains("GSM-7, 2 segments (override)"),
        "{text}"
    );
    line("warning: de.login_2fa needs 2 GSM-7 segments");
    assert!(line("sms es.login_2fa").contains("UCS-2"), "{text}");
    assert!(
        line("SMS_WEBOTP_DOMAIN").contains("auth.example.com"),
        "{text}"
    );

    std::fs::write(templates.join("es.phone_verify.txt"), "{app}: sin código").unwrap();
    let out = authgate(&dir)
        .arg("check-config")
        .env("AUTHGATE_SMS_TEMPLATES_DIR", &templates)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("AUTHGATE_SMS_TEMPLATES_DIR") && err.contains("es.phone_verify.txt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_masks_secrets() {
    let dir = temp_dir();
    let secret = "a-very-secret-jwt-key-of-40-bytes-000000";
    let master = "the-master-key-of-the-key-ring-00000000";
    let out = authgate(&dir)
        .arg("check-config")
        .env("JWT_SECRET", secret)
        .env("AUTHGATE_MASTER_KEY", master)
        .env("SMS_SENDER", "console")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter22@db.internal:5433/auth",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("JWT_SECRET") && text.contains("masked"),
        "{text}"
    );
    assert!(
        !text.contains(secret) && !text.contains("hunter22") && !text.contains(master),
        "{text}"
    );
    assert!(
        text.contains("JWT_ALGORITHM") && text.contains("EdDSA"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn keys_subcommand_lists_the_ring_and_rotates_only_a_next_key_every_process_knows() {
    let (name, cfg) = fresh_database().await;
    let url = database_url_for(&cfg);
    let dir = temp_dir();
    let keys = |args: &[&str]| {
        authgate(&dir)
            .arg("keys")
            .args(args)
            .env("DATABASE_URL", &url)
            .env("SMS_SENDER", "console")
            .env("JWT_SECRET", "the-servers-secret-the-servers-secret-01")
            .output()
            .unwrap()
    };
    let out = keys(&["list"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    // The first use makes an active and a next key for each of five purposes.
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 10, "{list}");
    for purpose in ["signing", "codes", "outbox", "refresh", "recovery"] {
        for state in ["active", "next"] {
            assert!(
                rows.iter()
                    .any(|r| r.starts_with(purpose) && r.contains(&format!(" {state} "))),
                "no {state} {purpose} key: {list}"
            );
        }
    }
    assert!(list.contains("EdDSA"), "{list}");
    // The next key was made a moment ago: some process may not know it yet.
    let out = keys(&["rotate", "signing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("too recently"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = keys(&["rotate", "signing", "--force"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("signing: rotated, active key ed25519-"),
        "{text}"
    );
    let list = String::from_utf8_lossy(&keys(&["list"]).stdout).into_owned();
    assert_eq!(
        list.lines()
            .filter(|l| l.starts_with("signing") && l.contains(" retired "))
            .count(),
        1,
        "{list}"
    );
    // Nothing secret is printed, ever.
    let db = connect(&cfg).await;
    let kids: Vec<String> = db
        .query("SELECT kid FROM keyring", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kids.len(), 11);
    assert!(kids.iter().all(|k| list.contains(k.as_str())), "{list}");
    drop(db);
    for bad in [&["rotate", "everything"][..], &["delete"], &[]] {
        let out = keys(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr_of(&out));
    }
    drop_database(name);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `authgate admin grant|revoke EMAIL` sets the role the admin API reads
/// (with `AUTHGATE_ADMIN_JWT=on`), audited; a missing account or a bad
/// command line says so and fails.
#[tokio::test]
async fn admin_subcommand_grants_and_revokes_the_role() {
    let (name, cfg) = fresh_database().await;
    let url = database_url_for(&cfg);
    let dir = temp_dir();
    let admin = |args: &[&str]| {
        authgate(&dir)
            .arg("admin")
            .args(args)
            .env("DATABASE_URL", &url)
            .env("SMS_SENDER", "console")
            .output()
            .unwrap()
    };
    // The schema first, then an account to promote.
    let out = authgate(&dir)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("SMS_SENDER", "console")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let db = connect(&cfg).await;
    db.execute(
        "INSERT INTO users (id, email, phone, password_hash, first_name, last_name, created_at, updated_at)
         VALUES (gen_random_uuid(), 'ada@example.com', '+14155550100', 'x', 'Ada', 'L', now(), now())",
        &[],
    )
    .await
    .unwrap();
    let role = || async {
        let r: String = db
            .query_one("SELECT role FROM users", &[])
            .await
            .unwrap()
            .get(0);
        r
    };
    let out = admin(&["grant", "ADA@example.com"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("admin role granted"), "{text}");
    assert!(text.contains("AUTHGATE_ADMIN_JWT is off"), "{text}");
    assert_eq!(role().await, "admin");
    let out = admin(&["revoke", "ada@example.com"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(role().await, "user");
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE kind IN ('admin_role_granted', 'admin_role_revoked')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 2);
    let out = admin(&["grant", "nobody@example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no account has the e-mail"),
        "{}",
        stderr_of(&out)
    );
    for bad in [&["promote", "ada@example.com"][..], &["grant"], &[]] {
        let out = admin(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr_of(&out));
    }
    drop(db);
    drop_database(name);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn migrate_subcommand_applies_the_schema() {
    let name = empty_database().await;
    let url = database_url(&name);
    let dir = temp_dir();
    let out = authgate(&dir)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("SMS_SENDER", "console")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mut cfg = admin_config();
    cfg.dbname(&name);
    let db = connect(&cfg).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(db);
    // Running it again is a no-op.
    let out = authgate(&dir)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("SMS_SENDER", "console")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    connect(&admin_config())
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A URL for a database on the test server (socket or TCP).
fn database_url(name: &str) -> String {
    let mut cfg = admin_config();
    cfg.dbname(name);
    database_url_for(&cfg)
}

struct Server {
    child: Child,
    port: u16,
    /// Its standard output and error.
    log: PathBuf,
}

impl Server {
    /// The embedded default: no DATABASE_URL, no Twilio.
    fn start(dir: &Path, data: &Path, port: u16) -> Server {
        let mut cmd = authgate(dir);
        cmd.env("AUTHGATE_DATA_DIR", data);
        Server::spawn(cmd, dir, port)
    }

    fn spawn(mut cmd: Command, dir: &Path, port: u16) -> Server {
        let log = dir.join(format!("authgate-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("PORT", port.to_string())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Server { child, port, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        crate::helpers::wait_ready(
            &mut self.child,
            self.port,
            &self.log,
            Duration::from_secs(60),
        )
        .await;
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "authgate exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "authgate did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn embedded_default_keeps_users_across_restarts_and_stops_its_postgres() {
    let dir = temp_dir();
    let data = dir.join("var");
    let port = free_port();
    let body = json!({
        "email": "persist@example.com",
        "phone": "+14155550142",
        "password": "s3cure-passw0rd",
        "firstName": "Per",
        "lastName": "Sist",
    });
    let url = format!("http://127.0.0.1:{port}/api/v1/account/signup");
    let http = reqwest::Client::new();

    let mut server = Server::start(&dir, &data, port);
    server.wait_ready().await;
    let resp = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    server.terminate();
    assert!(
        !data.join("pg/data/postmaster.pid").exists(),
        "private PostgreSQL still running after authgate stopped"
    );
    assert!(data.join("master_key").exists());

    let mut server = Server::start(&dir, &data, port);
    server.wait_ready().await;
    // The account survived the restart: its password logs in.
    let login = format!("http://127.0.0.1:{port}/api/v1/account/login");
    let resp = http
        .post(&login)
        .json(&serde_json::json!({"email": body["email"], "password": body["password"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.terminate();
    assert!(!data.join("pg/data/postmaster.pid").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The warning the console sender logs at start-up.
const CONSOLE_WARNING: &str = "SMS ARE NOT SENT";

/// Waits for the command to exit, killing it after `limit` (code `None` then).
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn a_database_url_without_twilio_or_sms_sender_exits_2_naming_sms_sender() {
    let dir = temp_dir();
    for command in ["serve", "migrate", "check-config"] {
        let out = output_within(
            authgate(&dir)
                .arg(command)
                // Nothing listens there: start-up must stop before connecting.
                .env("DATABASE_URL", "postgres://authgate@127.0.0.1:1/authgate"),
            Duration::from_secs(30),
        );
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert_eq!(err.lines().count(), 1, "{command}: {err}");
        assert!(
            err.contains("SMS_SENDER")
                && err.contains("TWILIO_ACCOUNT_SID")
                && err.contains("SMS_SENDER=console"),
            "{command}: {err}"
        );
    }
    // An unknown sender is named too.
    let out = authgate(&dir)
        .arg("check-config")
        .env("SMS_SENDER", "carrier-pigeon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("SMS_SENDER: `carrier-pigeon` is not one of: twilio, console"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_database_url_with_sms_sender_console_starts_and_warns_codes_go_to_stdout() {
    let (name, cfg) = fresh_database().await;
    let dir = temp_dir();
    let mut cmd = authgate(&dir);
    cmd.env("DATABASE_URL", database_url_for(&cfg))
        .env("SMS_SENDER", "console")
        .env("AUTHGATE_DATA_DIR", dir.join("var"));
    let mut server = Server::spawn(cmd, &dir, free_port());
    server.wait_ready().await;
    let log = server.output();
    server.terminate();
    assert!(log.contains(CONSOLE_WARNING), "{log}");
    drop_database(name);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn embedded_mode_without_sms_settings_starts_with_the_console_sender_and_warns() {
    let dir = temp_dir();
    let mut server = Server::start(&dir, &dir.join("var"), free_port());
    server.wait_ready().await;
    let log = server.output();
    server.terminate();
    assert!(log.contains(CONSOLE_WARNING), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
