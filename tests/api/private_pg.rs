//! The private PostgreSQL (no `DATABASE_URL`) as an attacker on the same machine
//! meets it: another OS account cannot connect, not even the cluster's own
//! account without the password; folders prepared in advance by someone else,
//! or left open to others, stop start-up with a message saying what to do; the
//! socket folder under the temp folder is always a fresh one; and a cluster made
//! by an older authgate (trust authentication) is switched to a password.
//!
//! Acting as other accounts needs root (CI runs as root); without it those
//! checks are skipped with a message.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use authgate::store::private_pg::{find_bin_dir, PrivatePostgres, DATABASE, SUPERUSER};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use crate::helpers::{add_system_user, free_port, id_of, is_root, wait_ready};

const BIN: &str = env!("CARGO_BIN_EXE_authgate");
/// A throwaway account that plays "authgate started by an ordinary user".
const ORDINARY_USER: &str = "authgate-it";

/// Creates the throwaway account once (several tests or runs may race).
fn ensure_ordinary_user() {
    if Command::new("id")
        .arg(ORDINARY_USER)
        .output()
        .unwrap()
        .status
        .success()
    {
        return;
    }
    let status = add_system_user(ORDINARY_USER);
    // 9: created meanwhile by someone else.
    assert!(
        status.success() || status.code() == Some(9),
        "useradd {ORDINARY_USER}: {status}"
    );
}

/// A new folder under the system temp folder, mode 0755 like a usual checkout.
fn open_temp_dir(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("authgate-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

fn chown(path: &Path, user: &str) {
    std::os::unix::fs::chown(path, Some(id_of("-u", user)), Some(id_of("-g", user))).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// `psql … -c 'SELECT 1'` on the socket folder as the OS account `user`, with
/// `password` or none; never prompting.
fn psql_as(user: &str, socket_dir: &Path, password: Option<&str>) -> Output {
    let psql = find_bin_dir().unwrap().join("psql");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", id_of("-u", user)))
        .arg(format!("--regid={}", id_of("-g", user)))
        .arg("--clear-groups")
        .arg("--")
        .arg(psql)
        .arg("-h")
        .arg(socket_dir)
        .args(["-p", "5432", "-U", SUPERUSER, "-d", DATABASE])
        .args(["-w", "-X", "-tAc", "SELECT 1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir("/")
        .stdin(Stdio::null());
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output().unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "{} stdout={:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn can_connect(cfg: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.simple_query("SELECT 1").await.map(|_| ())
}

/// Line 5 of postmaster.pid: the socket folder the server listens in.
fn socket_dir_of(data: &Path) -> PathBuf {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    PathBuf::from(pid.lines().nth(4).unwrap().trim())
}

#[tokio::test]
async fn private_postgres_of_an_ordinary_account_refuses_other_accounts_and_connections_without_its_password(
) {
    if !is_root() {
        eprintln!("skipped: acting as other OS accounts needs root");
        return;
    }
    ensure_ordinary_user();
    // The checkout and its ./var sit in world-readable folders, as usual.
    let dir = open_temp_dir("pgsec-ordinary");
    let var = dir.join("var");
    std::fs::create_dir(&var).unwrap();
    std::fs::set_permissions(&var, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(&dir, ORDINARY_USER);
    chown(&var, ORDINARY_USER);
    let log = dir.join("authgate.log");
    let file = std::fs::File::create(&log).unwrap();
    let port = free_port();
    // authgate itself, started by the ordinary account with no configuration.
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", id_of("-u", ORDINARY_USER)))
        .arg(format!("--regid={}", id_of("-g", ORDINARY_USER)))
        .arg("--clear-groups")
        .arg("--")
        .args([BIN, "serve"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("PORT", port.to_string())
        .env("AUTHGATE_DATA_DIR", &var)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    wait_ready(&mut child, port, &log, Duration::from_secs(90)).await;
    // authgate itself connected (it is ready: migrations ran, the pool answers).
    let pg = var.join("pg");
    let socket_dir = socket_dir_of(&pg.join("data"));

    let attempts = [
        ("nobody", None),
        ("postgres", None),
        // The cluster's own account, without the password: no trust either.
        (ORDINARY_USER, None),
    ];
    for (user, pw) in attempts {
        let out = psql_as(user, &socket_dir, pw);
        assert!(
            !out.status.success(),
            "{user} connected to the private PostgreSQL: {}",
            describe(&out)
        );
    }
    // The same command with the password works: the refusals above are real.
    let password = std::fs::read_to_string(pg.join("superuser.password")).unwrap();
    let out = psql_as(ORDINARY_USER, &socket_dir, Some(password.trim()));
    assert!(out.status.success(), "{}", describe(&out));

    for folder in [&pg, &pg.join("data"), &socket_dir] {
        assert_eq!(mode_of(folder), 0o700, "{}", folder.display());
    }
    assert_eq!(mode_of(&socket_dir.join(".s.PGSQL.5432")) & 0o777, 0o700);
    assert_eq!(mode_of(&pg.join("superuser.password")), 0o600);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(password.trim()), "password in the log");

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "authgate exited with {status}");
    assert!(!pg.join("data/postmaster.pid").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The one-line error `start` gives for a data folder.
fn start_error(data_dir: &Path) -> String {
    match PrivatePostgres::start(data_dir, "postgres") {
        Ok(pg) => {
            let socket = pg.socket_dir().to_owned();
            let _ = pg.stop();
            panic!(
                "started on an unsafe folder (socket in {})",
                socket.display()
            )
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_premade_data_folder_open_to_others_or_owned_by_another_account_is_refused_with_a_clear_message(
) {
    if find_bin_dir().is_none() {
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    }
    // `pg` made in advance with mode 0755.
    let dir = open_temp_dir("pgsec-premade");
    let pg = dir.join("pg");
    std::fs::create_dir(&pg).unwrap();
    std::fs::set_permissions(&pg, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = start_error(&dir);
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.contains(&pg.display().to_string())
            && err.contains("mode 0755")
            && err.contains("is open to other accounts")
            && err.contains(&format!("chmod -R go-rwx {}", pg.display())),
        "{err}"
    );
    assert!(!pg.join("data").exists(), "a cluster was made in it");

    // `pg/data` made in advance, open to others, inside a private `pg`.
    std::fs::set_permissions(&pg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = pg.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = start_error(&dir);
    assert!(
        err.contains(&data.display().to_string()) && err.contains("mode 0755"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    if !is_root() {
        eprintln!("skipped the foreign-owner case: making a folder of another account needs root");
        return;
    }
    // `pg` made in advance by another account, even with mode 0700.
    let dir = open_temp_dir("pgsec-foreign");
    let pg = dir.join("pg");
    std::fs::create_dir(&pg).unwrap();
    std::fs::set_permissions(&pg, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&pg, "nobody");
    let err = start_error(&dir);
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.contains(&pg.display().to_string())
            && err.contains("belongs to `nobody`")
            && err.contains("mode 0700")
            && err.contains("AUTHGATE_DATA_DIR"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&pg).unwrap().uid(),
        id_of("-u", "nobody"),
        "the foreign folder was taken over"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn fallback_socket_folder_is_new_and_private_never_one_made_in_advance() {
    if find_bin_dir().is_none() {
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    }
    // A data folder too deep for a socket path in it.
    let dir = open_temp_dir("pgsec-deep");
    let data_dir = dir.join("d".repeat(90));
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An attacker prepares the folder where the socket used to go: its name
    // came from the data folder's path alone.
    let base = data_dir.join("pg");
    let digest = Sha256::digest(base.as_os_str().as_encoded_bytes());
    let planted = PathBuf::from(format!("/tmp/authgate-pg-{}", hex::encode(&digest[..8])));
    let _ = std::fs::remove_dir_all(&planted);
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    if is_root() {
        chown(&planted, "nobody");
    }

    let d = data_dir.clone();
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&d, "postgres"))
        .await
        .unwrap()
        .unwrap();
    let socket = pg.socket_dir().to_owned();
    assert_ne!(socket, planted, "the planted folder was used");
    assert!(
        std::fs::read_dir(&planted).unwrap().next().is_none(),
        "something was created in the planted folder"
    );
    let name = socket.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("authgate-pg-"), "{}", socket.display());
    assert!(
        socket.starts_with(std::env::temp_dir()) || socket.starts_with("/tmp"),
        "{}",
        socket.display()
    );
    assert_eq!(mode_of(&socket), 0o700);
    let server_uid = if is_root() {
        id_of("-u", "postgres")
    } else {
        std::fs::metadata("/proc/self").unwrap().uid()
    };
    assert_eq!(std::fs::metadata(&socket).unwrap().uid(), server_uid);
    can_connect(&pg.pg_config()).await.unwrap();
    if is_root() {
        let out = psql_as("nobody", &socket, None);
        assert!(!out.status.success(), "{}", describe(&out));
    }
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !socket.exists(),
        "the fresh socket folder outlived its server"
    );
    std::fs::remove_dir_all(&planted).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_trust_cluster_made_by_an_older_authgate_is_switched_to_a_password_on_start() {
    let Some(bin) = find_bin_dir() else {
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    };
    // The layout an older authgate left: a cluster with trust authentication.
    let dir = open_temp_dir("pgsec-old");
    let pg_dir = dir.join("pg");
    std::fs::create_dir(&pg_dir).unwrap();
    std::fs::set_permissions(&pg_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(pg_dir.join("data"))
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
        .env_remove("PGDATA")
        .stdout(Stdio::null());
    if is_root() {
        chown(&pg_dir, "postgres");
        use std::os::unix::process::CommandExt;
        initdb
            .uid(id_of("-u", "postgres"))
            .gid(id_of("-g", "postgres"))
            .current_dir("/");
    }
    let out = initdb.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let d = dir.clone();
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&d, "postgres"))
        .await
        .unwrap()
        .unwrap();
    let hba = std::fs::read_to_string(pg_dir.join("data/pg_hba.conf")).unwrap();
    assert!(
        !hba.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("trust")),
        "{hba}"
    );
    assert_eq!(mode_of(&pg_dir.join("superuser.password")), 0o600);
    let with_password = pg.pg_config();
    can_connect(&with_password).await.unwrap();
    // The same settings without the password are refused.
    let mut without = tokio_postgres::Config::new();
    without
        .host_path(pg.socket_dir())
        .port(5432)
        .user(SUPERUSER)
        .dbname(DATABASE);
    let err = can_connect(&without).await.unwrap_err();
    // tokio-postgres refuses on its side once the server asks for a password.
    assert!(format!("{err:?}").contains("password"), "{err:?}");
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();

    // And it starts again as it is now.
    let d = dir.clone();
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&d, "postgres"))
        .await
        .unwrap()
        .unwrap();
    can_connect(&pg.pg_config()).await.unwrap();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
