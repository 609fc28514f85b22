//! The first ten minutes, with the real binaries: `authgate serve` with no
//! configuration works as root from a folder the `postgres` account cannot
//! enter (the cluster goes under the state folder, said in the log, kept across
//! restarts) and as an ordinary account (the cluster in `./var/pg` as always);
//! `authgate-load` prints no progress lines when its output is not a terminal.
//!
//! Acting as root and as another account needs root (CI runs as root); without
//! it those tests say they are skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_authgate");
const LOAD_BIN: &str = env!("CARGO_BIN_EXE_authgate-load");
/// A throwaway account for the ordinary-user start, removed at the end.
const ORDINARY_USER: &str = "authgate-fr";

fn has_pg_binaries() -> bool {
    authgate::store::private_pg::find_bin_dir().is_some()
}

/// A path under the temp folder, not created.
fn temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("authgate-{what}-{}", uuid::Uuid::new_v4().simple()))
}

/// Everything a test made, undone even when an assertion fails: servers get
/// SIGTERM (they stop their PostgreSQL), then folders and the account go.
#[derive(Default)]
struct Cleanup {
    servers: Vec<Child>,
    folders: Vec<PathBuf>,
    user: Option<&'static str>,
}

impl Cleanup {
    fn stop_servers(&mut self) {
        for mut child in self.servers.drain(..) {
            stop(&mut child);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_servers();
        for dir in &self.folders {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(user) = self.user {
            let _ = Command::new("userdel")
                .arg(user)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// SIGTERM, then up to 60 s for authgate to stop its PostgreSQL and exit;
/// SIGKILL after that. True when it exited by itself with success.
fn stop(child: &mut Child) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `authgate serve` with a clean environment (no DATABASE_URL, no
/// AUTHGATE_DATA_DIR), info logs into `log`, optionally as another account.
fn serve(cwd: &Path, port: u16, state_dir: &Path, log: &Path, as_user: Option<&str>) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = match as_user {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", id_of("-u", user)))
                .arg(format!("--regid={}", id_of("-g", user)))
                .arg("--clear-groups")
                .arg("--")
                .arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("PORT", port.to_string())
        .env("AUTHGATE_PG_STATE_DIR", state_dir)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

fn ada() -> Value {
    json!({
        "email": "ada@example.com",
        "phone": "+1 (415) 555-0100",
        "password": "s3cure-passw0rd",
        "firstName": "Ada",
        "lastName": "Lovelace",
    })
}

async fn post(port: u16, path: &str, body: &Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

#[tokio::test]
async fn as_root_from_a_folder_postgres_cannot_enter_the_cluster_goes_to_the_state_folder_and_stays(
) {
    if !is_root() || !has_pg_binaries() {
        eprintln!("skipped: needs root and the PostgreSQL server binaries");
        return;
    }
    let mut cleanup = Cleanup::default();
    // Like a checkout under /root: a 0700 folder of root's around it.
    let home = temp_path("fr-home");
    std::fs::create_dir(&home).unwrap();
    cleanup.folders.push(home.clone());
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = std::fs::canonicalize(home).unwrap();
    let checkout = home.join("authgate");
    std::fs::create_dir(&checkout).unwrap();
    let state = temp_path("fr-state");
    cleanup.folders.push(state.clone());
    let log = home.join("first.log");

    let port = free_port();
    cleanup
        .servers
        .push(serve(&checkout, port, &state, &log, None));
    wait_ready(&mut cleanup.servers[0], port, &log, Duration::from_secs(90)).await;
    let (status, body) = post(port, "/account/signup", &ada()).await;
    assert_eq!(status, 201, "{body}");

    // The data folder names the cluster's folder; the log says where and why.
    let var = checkout.join("var");
    let pointer = std::fs::read_to_string(var.join("pg-location")).unwrap();
    let cluster = PathBuf::from(pointer.trim());
    assert_eq!(cluster.parent(), Some(state.as_path()), "{pointer}");
    let name = cluster.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("authgate-var-"), "{name}");
    assert_eq!(name.len(), "authgate-var-".len() + 8, "{name}");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |needle: &str| {
        assert!(text.contains(needle), "no `{needle}` in the log:\n{text}");
    };
    line(&format!(
        "the postgres account cannot enter {}; the private PostgreSQL lives in {}",
        home.display(),
        cluster.display()
    ));
    line(&format!(
        "initialising the private PostgreSQL in {} (first start; takes a few seconds)",
        cluster.display()
    ));
    line("private PostgreSQL ready in ");
    assert!(
        !var.join("pg").exists(),
        "a cluster folder in the data folder"
    );
    // The cluster: postgres's alone; its root: root's, open to enter.
    let meta = std::fs::metadata(&cluster).unwrap();
    assert_eq!(meta.uid(), id_of("-u", "postgres"));
    assert_eq!(mode_of(&cluster), 0o700);
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 0);
    assert_eq!(mode_of(&state), 0o755);
    assert!(cluster.join("data/PG_VERSION").exists());
    // The generated secrets stay in the data folder; the pointer is root's.
    assert!(var.join("master_key").exists());
    let pointer_meta = std::fs::metadata(var.join("pg-location")).unwrap();
    assert_eq!(pointer_meta.uid(), 0);
    assert_eq!(pointer_meta.mode() & 0o022, 0);
    cleanup.stop_servers();
    assert!(
        !cluster.join("data/postmaster.pid").exists(),
        "PostgreSQL outlived authgate"
    );

    // A second start finds the same cluster, Ada included.
    let log2 = home.join("second.log");
    let port = free_port();
    cleanup
        .servers
        .push(serve(&checkout, port, &state, &log2, None));
    wait_ready(
        &mut cleanup.servers[0],
        port,
        &log2,
        Duration::from_secs(90),
    )
    .await;
    let (status, body) = post(
        port,
        "/account/login",
        &json!({"email": "ada@example.com", "password": "s3cure-passw0rd"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("accessToken"), "{body}");
    let text = std::fs::read_to_string(&log2).unwrap();
    for needle in [
        format!(
            "the private PostgreSQL lives in {} (named in {})",
            cluster.display(),
            var.join("pg-location").display()
        ),
        format!("starting the private PostgreSQL in {}", cluster.display()),
    ] {
        assert!(text.contains(&needle), "no `{needle}` in:\n{text}");
    }
    assert!(!text.contains("initialising"), "{text}");
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        1,
        "a second cluster folder"
    );
    // `check-config` names it too.
    let out = Command::new(BIN)
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(&checkout)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("private PostgreSQL cluster")
                && l.ends_with(&cluster.display().to_string())),
        "{stdout}"
    );
}

/// Creates the throwaway account (removed by [`Cleanup`]).
fn create_ordinary_user() -> bool {
    // Left over from an interrupted run.
    let _ = Command::new("userdel")
        .arg(ORDINARY_USER)
        .stderr(Stdio::null())
        .status();
    add_system_user(ORDINARY_USER).success()
}

#[tokio::test]
async fn as_an_ordinary_account_the_cluster_stays_in_var_pg() {
    if !is_root() || !has_pg_binaries() {
        eprintln!(
            "skipped: running authgate as a throwaway account needs root (useradd, setpriv) \
             and the PostgreSQL server binaries"
        );
        return;
    }
    let mut cleanup = Cleanup::default();
    if !create_ordinary_user() {
        eprintln!("skipped: useradd {ORDINARY_USER} failed");
        return;
    }
    cleanup.user = Some(ORDINARY_USER);
    let checkout = temp_path("fr-ordinary");
    std::fs::create_dir(&checkout).unwrap();
    cleanup.folders.push(checkout.clone());
    std::os::unix::fs::chown(
        &checkout,
        Some(id_of("-u", ORDINARY_USER)),
        Some(id_of("-g", ORDINARY_USER)),
    )
    .unwrap();
    let state = temp_path("fr-state-unused");
    cleanup.folders.push(state.clone());
    let log = temp_path("fr-ordinary-log");
    cleanup.folders.push(log.clone());
    std::fs::create_dir(&log).unwrap();
    let log = log.join("authgate.log");

    let port = free_port();
    cleanup
        .servers
        .push(serve(&checkout, port, &state, &log, Some(ORDINARY_USER)));
    wait_ready(&mut cleanup.servers[0], port, &log, Duration::from_secs(90)).await;
    let (status, body) = post(port, "/account/signup", &ada()).await;
    assert_eq!(status, 201, "{body}");

    let pg = std::fs::canonicalize(checkout.join("var/pg")).unwrap();
    assert!(pg.join("data/PG_VERSION").exists());
    assert_eq!(
        std::fs::metadata(&pg).unwrap().uid(),
        id_of("-u", ORDINARY_USER)
    );
    assert_eq!(mode_of(&pg), 0o700);
    assert!(!checkout.join("var/pg-location").exists());
    assert!(!state.exists(), "the state folder was used");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "initialising the private PostgreSQL in {}",
            pg.display()
        )) && text.contains("private PostgreSQL ready in "),
        "{text}"
    );
    assert!(!text.contains("cannot enter"), "{text}");
    let mut server = cleanup.servers.pop().unwrap();
    assert!(stop(&mut server), "authgate did not stop cleanly");
}

#[tokio::test]
async fn load_tool_prints_no_progress_lines_when_stderr_is_not_a_terminal() {
    let app = spawn_app().await;
    let target = format!("http://{}", app.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(LOAD_BIN)
            .args(["--target", &target, "--flow", "login"])
            .args(["--users", "2", "--duration", "3"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The report is there; the per-second line is not (3 s would show 3).
    assert!(stdout.contains("== login | 2 virtual users"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains('\r') && !text.contains("/s now") && !text.contains("\x1b["),
            "progress output on a pipe: {text:?}"
        );
    }
}

#[tokio::test]
async fn an_explicit_data_folder_postgres_cannot_enter_is_handled_the_same_way() {
    if !is_root() || !has_pg_binaries() {
        eprintln!("skipped: needs root and the PostgreSQL server binaries");
        return;
    }
    let mut cleanup = Cleanup::default();
    let home = temp_path("fr-explicit");
    std::fs::create_dir(&home).unwrap();
    cleanup.folders.push(home.clone());
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = temp_path("fr-explicit-state");
    cleanup.folders.push(state.clone());
    // What AUTHGATE_DATA_DIR=<home>/data hands over.
    let data_dir = home.join("data");
    let (d, s) = (data_dir.clone(), state.clone());
    let pg = tokio::task::spawn_blocking(move || {
        authgate::store::private_pg::PrivatePostgres::start_in(&d, "postgres", &s)
    })
    .await
    .unwrap()
    .unwrap();
    let cluster = pg.data_dir().parent().unwrap().to_owned();
    // Stopped before any assertion, so a failing one leaves no server behind.
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cluster.parent(), Some(state.as_path()));
    // `<home>-data-<8 hex>`, the home folder's name cut to 32 characters.
    let name = cluster.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("authgate-fr-explicit-") && name.contains("-data-"),
        "{name}"
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("pg-location"))
            .unwrap()
            .trim(),
        cluster.display().to_string()
    );
    assert!(!data_dir.join("pg").exists());
}
