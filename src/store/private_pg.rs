//! The embedded default: a private PostgreSQL that authgate runs itself from the
//! installed binaries when no `DATABASE_URL` is given.
//!
//! Layout under the data folder: `pg/data` (the cluster, kept across restarts),
//! `pg/run` (the Unix socket; the server listens on no TCP port at all) and
//! `pg/superuser.password`. As root, the server runs as an unprivileged OS account,
//! because PostgreSQL refuses root.
//!
//! As root, that account may be unable to enter the data folder (a checkout
//! under `/root`, mode 0700, is the usual case). Then the cluster folder (what
//! `pg` holds otherwise) goes under the system state folder instead:
//! `/var/lib/authgate/<checkout>-<data folder>-<8 hex of its path's hash>`
//! (`AUTHGATE_PG_STATE_DIR` moves the root), owned by the server's account,
//! 0700. The data folder keeps a root-owned `pg-location` naming it, which
//! later starts follow, so the cluster stays where it was first made; the
//! generated secrets (master key) stay in the data folder, which root reads.
//! An initialised cluster already in `pg` stays there.
//!
//! Private means private to one OS account: `pg`, `pg/data` and the socket folder
//! are 0700 and belong to the account the server runs as (a folder owned by anyone
//! else, or open to group or others, stops start-up), the socket itself is 0700,
//! and even that account needs the generated password (scram-sha-256, no trust
//! line in `pg_hba.conf`). A cluster made by an older authgate with trust
//! authentication is upgraded on start.
//!
//! Everything here is blocking (it runs child processes and waits for them); call
//! it from `spawn_blocking` or before the runtime starts.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The database authgate uses inside its private cluster.
pub const DATABASE: &str = "authgate";
/// The superuser `initdb` creates (password auth over the private socket only).
pub const SUPERUSER: &str = "authgate";
/// Only names the socket file (`.s.PGSQL.5432`): nothing listens on TCP.
const PORT: u16 = 5432;
/// Where a root authgate keeps clusters its server's account cannot reach in
/// the data folder (`AUTHGATE_PG_STATE_DIR` overrides it).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/authgate";
/// In the data folder: the path of a cluster folder kept elsewhere.
pub const LOCATION_FILE: &str = "pg-location";
/// Beside the cluster in `pg/`, never inside `pg/data`, which PostgreSQL owns.
const PASSWORD_FILE: &str = "superuser.password";
/// What replaces a trust `pg_hba.conf` from an older authgate; the same rules
/// `initdb --auth=scram-sha-256` writes for a new cluster.
const HBA_SCRAM: &str = "\
# Written by authgate: the private cluster accepts only the superuser password
# kept in ../superuser.password (scram-sha-256). Nothing listens on TCP.
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     scram-sha-256
";

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
    #[error("the folder {dir} {problem}; {fix}")]
    UnsafeFolder {
        dir: PathBuf,
        problem: String,
        fix: String,
    },
    #[error(
        "{path} is missing but the cluster in {data} already requires a password: restore \
         the file from a backup, or remove {data} to start an empty cluster"
    )]
    PasswordLost { path: PathBuf, data: PathBuf },
    #[error(
        "{0} does not hold a password authgate wrote (16 to 128 letters or digits): remove it \
         only if the cluster still uses trust authentication, or restore it from a backup"
    )]
    BadPasswordFile(PathBuf),
    #[error(
        "{0} does not hold the absolute path of a cluster folder in a file of root's that \
         no other account can write: fix or remove it (removing it makes authgate choose the \
         folder again, empty if it is a new one)"
    )]
    BadLocationFile(PathBuf),
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
    /// The socket folder is a fresh one under the temp folder (the data folder's
    /// path is too long for a socket): removed when the server stops.
    temp_socket_dir: bool,
    password: SecretString,
    run_as: Option<RunAs>,
    /// Who may own our folders: the server's account, and authgate's own (root,
    /// which hands them over to the server's account).
    owners: Vec<u32>,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// Initialises the cluster on first use, starts the server, waits until it
    /// accepts connections and makes sure the `authgate` database exists. As
    /// root, a cluster the server's account could not reach in the data folder
    /// goes under [`DEFAULT_STATE_DIR`].
    pub fn start(data_dir: &Path, os_user_when_root: &str) -> Result<Self, PrivatePgError> {
        Self::start_in(data_dir, os_user_when_root, Path::new(DEFAULT_STATE_DIR))
    }

    /// [`PrivatePostgres::start`] with another state folder (tests, or
    /// `AUTHGATE_PG_STATE_DIR`).
    pub fn start_in(
        data_dir: &Path,
        os_user_when_root: &str,
        state_dir: &Path,
    ) -> Result<Self, PrivatePgError> {
        let began = Instant::now();
        let bin = find_bin_dir().ok_or(PrivatePgError::NoBinaries)?;
        let me = effective_uid();
        let run_as = if me == 0 {
            Some(lookup_user(os_user_when_root)?)
        } else {
            None
        };
        // As root the server's account must pass through the data folder (0711);
        // otherwise nobody else needs to enter it at all.
        let mode = if run_as.is_some() { 0o711 } else { 0o700 };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(data_dir)
            .map_err(io_err(data_dir))?;
        let data_dir = fs::canonicalize(data_dir).map_err(io_err(data_dir))?;
        let base = match &run_as {
            Some(u) => place_cluster(&bin, u, &data_dir, state_dir)?,
            None => data_dir.join("pg"),
        };
        let owners = match &run_as {
            Some(u) => vec![u.uid, me],
            None => vec![me],
        };
        ensure_private_dir(&base, &owners, run_as.as_ref())?;
        let data = base.join("data");
        if data.exists() {
            check_private_dir(&data, &owners)?;
        }
        // One starter at a time per data folder (several processes, or tests).
        let lock_path = base.join(".start.lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let initialised = data.join("PG_VERSION").exists();
        let password_path = base.join(PASSWORD_FILE);
        let password = match read_password(&password_path, &owners)? {
            Some(p) => p,
            // A cluster of an older authgate (trust) gets its password on start.
            None if !initialised || hba_has_trust(&data)? => {
                write_new_password(&password_path, run_as.as_ref())?
            }
            None => {
                return Err(PrivatePgError::PasswordLost {
                    path: password_path,
                    data,
                })
            }
        };
        let mut pg = PrivatePostgres {
            owned: true,
            bin,
            data,
            socket_dir: base.join("run"),
            temp_socket_dir: false,
            password,
            run_as,
            owners,
            child: None,
        };
        pg.check_reachable()?;
        if !initialised {
            tracing::info!(
                "initialising the private PostgreSQL in {} (first start; takes a few seconds)",
                base.display()
            );
            pg.initdb(&password_path)?;
        }
        if pg.data.join("postmaster.pid").exists() {
            let recorded = recorded_socket_dir(&pg.data);
            if let Some(dir) = recorded.as_ref().filter(|_| owner_alive(&base)) {
                // Never talk to a server whose socket another account could replace.
                check_private_dir(dir, &pg.owners)?;
                pg.socket_dir = dir.clone();
                if pg.is_ready() {
                    tracing::info!("using the private PostgreSQL another authgate process started");
                    pg.owned = false;
                    return Ok(pg);
                }
            }
            // Left running by an authgate that died: take the cluster over.
            tracing::warn!("stopping a private PostgreSQL left running by an earlier authgate");
            let _ = pg.pg_ctl_stop();
            if let Some(dir) = recorded.filter(|d| is_temp_socket_dir(d)) {
                // Empty once its server stopped; a folder with anything in it stays.
                let _ = fs::remove_dir(dir);
            }
        }
        let preferred = base.join("run");
        if fits_socket(&preferred) {
            ensure_private_dir(&preferred, &pg.owners, pg.run_as.as_ref())?;
            pg.socket_dir = preferred;
        } else {
            pg.socket_dir = fresh_socket_dir(pg.run_as.as_ref())?;
            pg.temp_socket_dir = true;
        }
        if initialised {
            tracing::info!("starting the private PostgreSQL in {}", base.display());
        }
        pg.spawn()?;
        pg.wait_ready(Duration::from_secs(60))?;
        pg.upgrade_trust_auth()?;
        pg.ensure_database()?;
        let owner = base.join("owner.pid");
        fs::write(&owner, std::process::id().to_string()).map_err(io_err(&owner))?;
        tracing::info!(
            socket = %pg.socket_dir.display(),
            "private PostgreSQL ready in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        Ok(pg)
    }

    /// Connection settings for the private server (Unix socket, the superuser's
    /// password).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .password(self.password.expose_secret())
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
        if self.temp_socket_dir {
            let _ = fs::remove_dir(&self.socket_dir);
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
            "PGPASSFILE",
            "PGSERVICE",
            "PGSERVICEFILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid).current_dir("/");
        }
        cmd
    }

    /// psql as the superuser with the password, never prompting (a terminal
    /// prompt would hang start-up).
    fn psql(&self, sql_on_stdin: bool) -> Command {
        let mut cmd = self.command("psql");
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", SUPERUSER, "-d", "postgres"])
            .args(["-w", "-X", "-v", "ON_ERROR_STOP=1"])
            // The environment of a child is readable only by its own account and
            // root; the command line is readable by everyone.
            .env("PGPASSWORD", self.password.expose_secret());
        if sql_on_stdin {
            cmd.args(["-q", "-f", "-"]).stdin(Stdio::piped());
        }
        cmd
    }

    /// The server's account must be able to walk down to the data folder.
    fn check_reachable(&self) -> Result<(), PrivatePgError> {
        let Some(u) = &self.run_as else {
            return Ok(());
        };
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

    fn initdb(&self, password_file: &Path) -> Result<(), PrivatePgError> {
        let mut pwfile = OsString::from("--pwfile=");
        pwfile.push(password_file);
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256"])
            .arg(pwfile)
            .args(["-E", "UTF8", "--no-locale"])
            .output()
            .map_err(io_err(&self.bin))?;
        check(out, "initdb")
    }

    /// A cluster initialised by an older authgate trusts every local connection:
    /// give the superuser the password, then replace `pg_hba.conf` and reload.
    /// Safe while it runs, because the socket folder is already private.
    fn upgrade_trust_auth(&self) -> Result<(), PrivatePgError> {
        if !hba_has_trust(&self.data)? {
            return Ok(());
        }
        tracing::warn!(
            data = %self.data.display(),
            "the private PostgreSQL used trust authentication: switching it to a password"
        );
        let password = self.password.expose_secret();
        // Checked to be letters and digits only, so the literal needs no quoting;
        // logging of this statement is off even if it fails.
        let sql = format!(
            "SET log_statement = 'none';\n\
             SET log_min_error_statement = 'panic';\n\
             SET password_encryption = 'scram-sha-256';\n\
             ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n"
        );
        let mut child = self
            .psql(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(&self.bin))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes()).map_err(io_err(&self.bin))?;
        }
        let out = child.wait_with_output().map_err(io_err(&self.bin))?;
        if !out.status.success() {
            return Err(PrivatePgError::Command {
                what: "setting the superuser password".to_owned(),
                detail: String::from_utf8_lossy(&out.stderr)
                    .replace(password, "***")
                    .trim()
                    .to_owned(),
            });
        }
        let hba = self.data.join("pg_hba.conf");
        let tmp = self.data.join("pg_hba.conf.authgate");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(HBA_SCRAM.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        if let Some(u) = &self.run_as {
            std::os::unix::fs::chown(&tmp, Some(u.uid), Some(u.gid)).map_err(io_err(&tmp))?;
        }
        // Atomic: a crash leaves either the old rules or the new, never half a file.
        fs::rename(&tmp, &hba).map_err(io_err(&hba))?;
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["reload", "-s"])
            .output()
            .map_err(io_err(&self.bin))?;
        check(out, "pg_ctl reload")
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
            .mode(0o600)
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
            // Unix socket only: nothing on the network can reach this server,
            // and on this machine only the server's own account (and root).
            .args(["-c", "listen_addresses="])
            .args(["-c", "unix_socket_permissions=0700"])
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
            self.psql(false)
                .args(["-tAc", sql])
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

/// The effective uid: the owner of /proc/self (no unsafe libc call needed).
fn effective_uid() -> u32 {
    // Unknown counts as root: the checks that follow are then the strictest.
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// `name (uid N)` for messages, from /etc/passwd when the uid is listed there.
fn account_name(uid: u32) -> String {
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|text| {
        text.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_owned())
        })
    });
    match name {
        Some(n) => format!("`{n}` (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Refuses a folder another account could read, enter or replace things in.
fn check_private_dir(dir: &Path, owners: &[u32]) -> Result<(), PrivatePgError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let unsafe_folder = |problem: String, fix: String| PrivatePgError::UnsafeFolder {
        dir: dir.to_owned(),
        problem,
        fix,
    };
    if !meta.is_dir() {
        return Err(unsafe_folder(
            "is not a folder".to_owned(),
            "remove it or set AUTHGATE_DATA_DIR to another folder".to_owned(),
        ));
    }
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    let expected = owners
        .first()
        .copied()
        .map(account_name)
        .unwrap_or_default();
    if !owners.contains(&uid) {
        return Err(unsafe_folder(
            format!(
                "belongs to {} (mode {mode:04o}), not to {expected} that runs the private \
                 PostgreSQL",
                account_name(uid)
            ),
            "that account could read or replace the database: remove the folder after \
             checking what it holds, or set AUTHGATE_DATA_DIR to a folder of your own"
                .to_owned(),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(unsafe_folder(
            format!(
                "is open to other accounts (owner {}, mode {mode:04o}); the private PostgreSQL \
                 needs it 0700",
                account_name(uid)
            ),
            format!(
                "if no one else could have written to it, run `chmod -R go-rwx {}` and start \
                 again; otherwise remove it or set AUTHGATE_DATA_DIR to another folder",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates `dir` 0700 for the server's account, or checks the one already there.
fn ensure_private_dir(
    dir: &Path,
    owners: &[u32],
    run_as: Option<&RunAs>,
) -> Result<(), PrivatePgError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may only have removed bits; say it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private_dir(dir, owners)?,
        Err(e) => return Err(io_err(dir)(e)),
    }
    if let Some(u) = run_as {
        // Root made it (now or in an earlier run): hand it to the server's account.
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Where the cluster folder of `data_dir` (canonical) lives when a root
/// authgate runs the server as `u`: where `pg-location` says; else `pg` in the
/// data folder when a cluster is there already or `u` can enter the data
/// folder; else a folder of its own under `state_dir`, recorded in
/// `pg-location` so that the next start finds it.
fn place_cluster(
    bin: &Path,
    u: &RunAs,
    data_dir: &Path,
    state_dir: &Path,
) -> Result<PathBuf, PrivatePgError> {
    let in_place = data_dir.join("pg");
    let pointer = data_dir.join(LOCATION_FILE);
    if let Some(recorded) = read_location(&pointer)? {
        if in_place.join("data").join("PG_VERSION").exists() {
            tracing::warn!(
                "{} holds a cluster too; it is not used: {} names the cluster in use",
                in_place.display(),
                pointer.display()
            );
        }
        if let Some(parent) = recorded.parent() {
            check_state_dir(parent)?;
        }
        tracing::info!(
            "the private PostgreSQL lives in {} (named in {})",
            recorded.display(),
            pointer.display()
        );
        return Ok(recorded);
    }
    if in_place.join("data").join("PG_VERSION").exists() || can_enter(bin, u, data_dir) {
        return Ok(in_place);
    }
    let blocked = data_dir
        .ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| !can_enter(bin, u, dir))
        .unwrap_or(data_dir)
        .to_owned();
    let state_dir = ensure_state_dir(state_dir)?;
    if !can_enter(bin, u, &state_dir) {
        return Err(PrivatePgError::Unreachable {
            user: u.name.clone(),
            dir: state_dir,
        });
    }
    let base = state_dir.join(cluster_folder_name(data_dir));
    write_location(&pointer, &base)?;
    tracing::info!(
        "the {} account cannot enter {}; the private PostgreSQL lives in {} (named in {})",
        u.name,
        blocked.display(),
        base.display(),
        pointer.display()
    );
    Ok(base)
}

/// Where the private PostgreSQL of `data_dir` keeps (or will keep) its
/// cluster, as far as the files say: `pg-location`, else `pg` (for
/// `authgate check-config`; start-up decides for good).
pub fn cluster_location(data_dir: &Path) -> PathBuf {
    let pointer = data_dir.join(LOCATION_FILE);
    match read_location(&pointer) {
        Ok(Some(p)) => p,
        _ => data_dir.join("pg"),
    }
}

/// `<checkout>-<data folder>-<8 hex>`: readable, and one per data folder (the
/// hash is of its canonical path, so two checkouts never share a cluster and
/// one always finds its own).
fn cluster_folder_name(data_dir: &Path) -> String {
    let clean = |p: Option<&Path>| -> String {
        let name = p
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        name.trim_matches('_').to_owned()
    };
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let mut parts: Vec<String> = [clean(data_dir.parent()), clean(Some(data_dir))]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        parts.push("authgate".to_owned());
    }
    parts.push(hex::encode(&digest[..4]));
    parts.join("-")
}

/// Whether the account `u` can enter `dir` (every parent folder included), as
/// the server will run: its uid and gid, no supplementary groups.
fn can_enter(bin: &Path, u: &RunAs, dir: &Path) -> bool {
    Command::new(bin.join("pg_ctl"))
        .arg("--version")
        .uid(u.uid)
        .gid(u.gid)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates the state folder (root's, 0755) or checks the one there.
fn ensure_state_dir(dir: &Path) -> Result<PathBuf, PrivatePgError> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err(dir))?
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Its parent is missing too (a bare system): make the chain.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
    check_state_dir(&dir)?;
    Ok(dir)
}

/// The folder holding relocated clusters: root's, and no one else may create,
/// rename or remove anything in it (they could swap a cluster folder).
fn check_state_dir(dir: &Path) -> Result<(), PrivatePgError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    let problem = if !meta.is_dir() {
        Some("is not a folder".to_owned())
    } else if uid != 0 {
        Some(format!(
            "belongs to {} (mode {mode:04o}), not to root",
            account_name(uid)
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "can be written by other accounts (mode {mode:04o})"
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(PrivatePgError::UnsafeFolder {
            dir: dir.to_owned(),
            problem,
            fix: format!(
                "it holds private PostgreSQL clusters the server's account cannot keep in \
                 AUTHGATE_DATA_DIR: make it root's and 0755 (`chown root: {0} && chmod 0755 \
                 {0}`) after checking what it holds, or set AUTHGATE_PG_STATE_DIR to another \
                 folder",
                dir.display()
            ),
        }),
    }
}

/// The cluster folder named in `pg-location`, if the file is there. Only a file
/// of root's that no other account can write counts: it says where the
/// database is.
fn read_location(path: &Path) -> Result<Option<PathBuf>, PrivatePgError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(PrivatePgError::BadLocationFile(path.to_owned()));
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let target = PathBuf::from(text.lines().next().unwrap_or("").trim());
    if !target.is_absolute() || target.parent().is_none() {
        return Err(PrivatePgError::BadLocationFile(path.to_owned()));
    }
    Ok(Some(target))
}

/// Writes `pg-location` (root's, 0644: it names a folder, no secret) whole or
/// not at all.
fn write_location(path: &Path, target: &Path) -> Result<(), PrivatePgError> {
    // Two authgates starting at once write the same text: each its own file.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    writeln!(file, "{}", target.display())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The superuser's password, when a file of ours holds one.
fn read_password(path: &Path, owners: &[u32]) -> Result<Option<SecretString>, PrivatePgError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.is_file() || !owners.contains(&meta.uid()) {
        return Err(PrivatePgError::BadPasswordFile(path.to_owned()));
    }
    if meta.mode() & 0o077 != 0 {
        // Inside a folder only we can enter, so tightening is enough.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let password = text.trim();
    if !(16..=128).contains(&password.len()) || !password.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(PrivatePgError::BadPasswordFile(path.to_owned()));
    }
    Ok(Some(SecretString::from(password.to_owned())))
}

/// 256 random bits, hex, in a new 0600 file the server's account owns (initdb
/// reads it as that account; authgate reads it as that account or as root).
fn write_new_password(path: &Path, run_as: Option<&RunAs>) -> Result<SecretString, PrivatePgError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let password = hex::encode(bytes);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(password.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))?;
    if let Some(u) = run_as {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(io_err(path))?;
    }
    Ok(SecretString::from(password))
}

/// Whether any rule of the cluster's `pg_hba.conf` lets a connection in without
/// a password (what older authgate versions wrote).
fn hba_has_trust(data: &Path) -> Result<bool, PrivatePgError> {
    let path = data.join("pg_hba.conf");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&path)(e)),
    };
    Ok(text.lines().any(|line| {
        let rule = line.split('#').next().unwrap_or("");
        rule.split_whitespace().any(|word| word == "trust")
    }))
}

/// The socket folder a running server was started with: line 5 of
/// `postmaster.pid`.
fn recorded_socket_dir(data: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let line = text.lines().nth(4)?.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

const TEMP_SOCKET_PREFIX: &str = "authgate-pg-";

fn is_temp_socket_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_SOCKET_PREFIX))
}

/// Unix socket paths are limited to about 107 bytes.
fn fits_socket(dir: &Path) -> bool {
    dir.as_os_str().len() + "/.s.PGSQL.5432".len() < 100
}

/// A deep data folder's socket goes to a new folder under the temp folder: a
/// random name, created 0700 by mkdtemp semantics (an existing path is never
/// taken, so no one can prepare it in advance), handed to the server's account.
fn fresh_socket_dir(run_as: Option<&RunAs>) -> Result<PathBuf, PrivatePgError> {
    let mut tmp = std::env::temp_dir();
    if !fits_socket(&tmp.join(format!("{TEMP_SOCKET_PREFIX}0123456789abcdef"))) {
        tmp = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix(TEMP_SOCKET_PREFIX)
        .rand_bytes(16)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&tmp)
        .map_err(io_err(&tmp))?
        .keep();
    if let Some(u) = run_as {
        std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).map_err(io_err(&dir))?;
    }
    Ok(dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_folder_names_the_checkout_and_differs_per_data_folder() {
        let a = cluster_folder_name(Path::new("/root/authgate/var"));
        assert!(a.starts_with("authgate-var-"), "{a}");
        assert_eq!(a.len(), "authgate-var-".len() + 8, "{a}");
        assert!(a["authgate-var-".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit()));
        // Stable: the same data folder always gets the same name.
        assert_eq!(a, cluster_folder_name(Path::new("/root/authgate/var")));
        // Two checkouts of the same name never share one.
        let b = cluster_folder_name(Path::new("/home/x/authgate/var"));
        assert!(b.starts_with("authgate-var-") && a != b, "{a} {b}");
        // Odd characters cannot climb out or hide the folder.
        let odd = cluster_folder_name(Path::new("/srv/../my app/.data"));
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{odd}"
        );
        assert!(odd.starts_with("my_app-data-"), "{odd}");
        assert!(cluster_folder_name(Path::new("/")).starts_with("authgate-"));
    }
}
