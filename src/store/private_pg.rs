//! The embedded default: a private PostgreSQL that authgate runs itself from the
//! installed binaries when no `DATABASE_URL` is given.
//!
//! Layout under the data folder: `pg/data` (the cluster, kept across restarts) and
//! `pg/run` (the Unix socket; the server listens on no TCP port at all). As root,
//! the server runs as an unprivileged OS account, because PostgreSQL refuses root.
//!
//! Everything here is blocking (it runs child processes and waits for them); call
//! it from `spawn_blocking` or before the runtime starts.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The database authgate uses inside its private cluster.
pub const DATABASE: &str = "authgate";
/// The superuser `initdb` creates (trust auth over the private socket only).
pub const SUPERUSER: &str = "authgate";
/// Only names the socket file (`.s.PGSQL.5432`): nothing listens on TCP.
const PORT: u16 = 5432;

/// Why the private PostgreSQL could not be provided; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePgError {
    #[error(
        "no PostgreSQL server binaries found (looked for `initdb` and `postgres` on PATH and in \
         /usr/lib/postgresql/*/bin). Install them (Debian/Ubuntu: `apt-get install postgresql`; \
         Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`) or set \
         DATABASE_URL to an existing server"
    )]
    NoBinaries,
    #[error(
        "authgate runs as root and PostgreSQL refuses to; the unprivileged account `{0}` that \
         would run it does not exist. Create it (`useradd --system --no-create-home {0}`), name \
         another with AUTHGATE_PG_OS_USER, run authgate as a normal user, or set DATABASE_URL"
    )]
    NoUnprivilegedUser(String),
    #[error(
        "the account `{user}` cannot reach {dir}: PostgreSQL runs as that account, so every \
         parent folder needs execute permission for it (e.g. `chmod o+x` on each), or set \
         AUTHGATE_DATA_DIR to a folder it can reach, or set DATABASE_URL"
    )]
    Unreachable { user: String, dir: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("PostgreSQL did not become ready within {0:?}; see {1}")]
    NotReady(Duration, PathBuf),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PrivatePgError + '_ {
    move |source| PrivatePgError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The OS account the server runs as, when authgate runs as root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// A running private PostgreSQL. Stop it with [`PrivatePostgres::stop`]; if authgate
/// dies without stopping it, the next start finds and stops the orphan.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// False when another live authgate process started this server and owns its
    /// lifetime: we use it but leave stopping it to the owner.
    owned: bool,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<RunAs>,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// Initialises the cluster on first use, starts the server, waits until it
    /// accepts connections and makes sure the `authgate` database exists.
    pub fn start(data_dir: &Path, os_user_when_root: &str) -> Result<Self, PrivatePgError> {
        let bin = find_bin_dir().ok_or(PrivatePgError::NoBinaries)?;
        let run_as = if running_as_root() {
            Some(lookup_user(os_user_when_root)?)
        } else {
            None
        };
        fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let base = fs::canonicalize(data_dir)
            .map_err(io_err(data_dir))?
            .join("pg");
        let data = base.join("data");
        let socket_dir = socket_dir_for(&base);
        for dir in [&base, &socket_dir] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // One starter at a time per data folder (several processes, or tests).
        let lock_path = base.join(".start.lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut pg = PrivatePostgres {
            owned: true,
            bin,
            data,
            socket_dir,
            run_as,
            child: None,
        };
        pg.prepare_dirs()?;
        if !pg.data.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        if pg.data.join("postmaster.pid").exists() {
            if owner_alive(&base) && pg.is_ready() {
                tracing::info!("using the private PostgreSQL another authgate process started");
                pg.owned = false;
                return Ok(pg);
            }
            // Left running by an authgate that died: take the cluster over.
            tracing::warn!("stopping a private PostgreSQL left running by an earlier authgate");
            let _ = pg.pg_ctl_stop();
        }
        pg.spawn()?;
        pg.wait_ready(Duration::from_secs(60))?;
        pg.ensure_database()?;
        let owner = base.join("owner.pid");
        fs::write(&owner, std::process::id().to_string()).map_err(io_err(&owner))?;
        Ok(pg)
    }

    /// Connection settings for the private server (Unix socket, trust auth).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(DATABASE)
            .application_name("authgate");
        c
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Fast shutdown (in-flight transactions are rolled back, data is safe), then
    /// wait. A server this process did not start is left to its owner.
    pub fn stop(mut self) -> Result<(), PrivatePgError> {
        if !self.owned {
            return Ok(());
        }
        let result = self.pg_ctl_stop();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        result
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.stdin(Stdio::null());
        // Cargo and the shell may carry PG* variables meant for another server.
        for var in [
            "PGHOST",
            "PGPORT",
            "PGDATA",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
        ] {
            cmd.env_remove(var);
        }
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid).current_dir("/");
        }
        cmd
    }

    fn prepare_dirs(&self) -> Result<(), PrivatePgError> {
        let Some(u) = &self.run_as else {
            return Ok(());
        };
        for dir in [self.data.parent().unwrap_or(&self.data), &self.socket_dir] {
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(io_err(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        // The server's account must be able to walk down to the data folder.
        let probe = self
            .command("pg_ctl")
            .arg("--version")
            .current_dir(self.data.parent().unwrap_or(&self.data))
            .output();
        match probe {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err(PrivatePgError::Unreachable {
                user: u.name.clone(),
                dir: self.data.clone(),
            }),
        }
    }

    fn initdb(&self) -> Result<(), PrivatePgError> {
        tracing::info!(data = %self.data.display(), "initialising private PostgreSQL cluster");
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
            .output()
            .map_err(io_err(&self.bin))?;
        check(out, "initdb")
    }

    /// Beside the cluster, not in it: PostgreSQL owns everything under `data`.
    fn log_file(&self) -> PathBuf {
        self.data
            .parent()
            .unwrap_or(&self.data)
            .join("postgres.log")
    }

    fn spawn(&mut self) -> Result<(), PrivatePgError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .map_err(io_err(&self.log_file()))?;
        if let Some(u) = &self.run_as {
            std::os::unix::fs::chown(self.log_file(), Some(u.uid), Some(u.gid))
                .map_err(io_err(&self.log_file()))?;
        }
        let err_log = log.try_clone().map_err(io_err(&self.log_file()))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string()])
            // Unix socket only: nothing on the network can reach this server.
            .args(["-c", "listen_addresses="])
            .args(["-c", "max_connections=200"])
            .stdout(log)
            .stderr(err_log)
            // Its own process group: a Ctrl-C in authgate's terminal reaches only
            // authgate, which then stops the server in order.
            .process_group(0)
            .spawn()
            .map_err(io_err(&self.bin))?;
        self.child = Some(child);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.command("pg_isready")
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", SUPERUSER, "-d", "postgres"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), PrivatePgError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(PrivatePgError::Command {
                        what: "postgres".to_owned(),
                        detail: format!(
                            "exited with {status} before accepting connections; see {}",
                            self.log_file().display()
                        ),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(PrivatePgError::NotReady(limit, self.log_file()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ensure_database(&self) -> Result<(), PrivatePgError> {
        let psql = |sql: &str| {
            self.command("psql")
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &PORT.to_string(), "-U", SUPERUSER, "-d", "postgres"])
                .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
                .output()
                .map_err(io_err(&self.bin))
        };
        let out = psql(&format!(
            "SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        ))?;
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return Ok(());
        }
        let out = psql(&format!("CREATE DATABASE {DATABASE}"))?;
        // Another authgate starting on the same folder may have won the race.
        if String::from_utf8_lossy(&out.stderr).contains("already exists") {
            return Ok(());
        }
        check(out, "CREATE DATABASE")
    }

    fn pg_ctl_stop(&self) -> Result<(), PrivatePgError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "fast", "-w", "-t", "60"])
            .output()
            .map_err(io_err(&self.bin))?;
        check(out, "pg_ctl stop")
    }
}

fn check(out: Output, what: &str) -> Result<(), PrivatePgError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(PrivatePgError::Command {
            what: what.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The folder holding `initdb` and `postgres`: PATH first, then Debian's layout
/// (newest major version first).
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                // Debian links these into /usr/local/bin at most; follow to the real folder
                // so pg_ctl, pg_isready and psql are found beside them.
                let real = fs::canonicalize(dir.join("postgres"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_owned))
                    .unwrap_or(dir);
                if has_both(&real) {
                    return Some(real);
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether the process recorded in `owner.pid` (the authgate that started the
/// server) still runs.
fn owner_alive(base: &Path) -> bool {
    fs::read_to_string(base.join("owner.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn running_as_root() -> bool {
    // The owner of /proc/self is the effective uid; no unsafe libc call needed.
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn lookup_user(name: &str) -> Result<RunAs, PrivatePgError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(name).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) if uid != 0 => Ok(RunAs {
            name: name.to_owned(),
            uid,
            gid,
        }),
        _ => Err(PrivatePgError::NoUnprivilegedUser(name.to_owned())),
    }
}

/// Unix socket paths are limited to about 107 bytes; a deep data folder falls back
/// to a short private folder under /tmp, named after the data folder.
fn socket_dir_for(base: &Path) -> PathBuf {
    let preferred = base.join("run");
    if preferred.as_os_str().len() + "/.s.PGSQL.5432".len() < 100 {
        return preferred;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(base.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/tmp/authgate-pg-{}", hex::encode(&digest[..8])))
}
