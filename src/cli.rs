//! The `authgate` command line: `serve` (the default), `migrate`, `keys`,
//! `admin`, `check-config`, `openapi`; `src/main.rs` only calls [`main`].

use std::process::ExitCode;

use crate::clock::Clock;
use crate::config::{Config, DatabaseSource};
use crate::keyring::{Keyring, Purpose, SigningAlg};
use crate::startup::{keyring_settings, Application};
use crate::store::keyring::Rotation;
use crate::store::private_pg::{self, PrivatePostgres};
use crate::telemetry;

const USAGE: &str = "\
authgate: self-hosted SMS two-factor authentication engine

Usage: authgate [COMMAND]

Commands:
  serve          Run the HTTP server (the default)
  migrate        Apply database migrations and exit
  keys list      Show the key ring: every key's purpose, id, state and dates
                 (never a secret)
  keys rotate PURPOSE [--force]
                 Rotate signing, codes, outbox, refresh, recovery or all:
                 the next key (already known to every process) becomes
                 active; what older keys made stays valid until it expires.
                 --force promotes a next key younger than two reloads
  admin grant EMAIL | admin revoke EMAIL
                 Give or take the admin role of the account with EMAIL
                 (audited): with AUTHGATE_ADMIN_JWT=on its access tokens,
                 from a login with a second factor, open the admin API
  check-config   Print the effective configuration (secrets masked) and exit;
                 exits non-zero naming every problem
  openapi [FILE] Write the OpenAPI 3.1 document to FILE (default openapi.json;
                 `-` for standard output); needs no database or configuration
  help           Print this help

Configuration comes from environment variables and an optional .env file;
see README.md for the full table. With no DATABASE_URL, authgate runs a
private PostgreSQL under AUTHGATE_DATA_DIR (default ./var) and prints SMS to
standard output; with a DATABASE_URL, set the TWILIO_* variables (or
SMS_SENDER=console on purpose).";

pub fn main() -> ExitCode {
    let command = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "serve".to_owned());
    if matches!(command.as_str(), "help" | "-h" | "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if matches!(command.as_str(), "version" | "-V" | "--version") {
        println!("authgate {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if command == "openapi" {
        return write_openapi(std::env::args().nth(2).as_deref().unwrap_or("openapi.json"));
    }
    // A missing .env is normal; a malformed one is a configuration error.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("invalid configuration: .env: {e}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let task = match command.as_str() {
        "serve" => Task::Serve,
        "migrate" => Task::Migrate,
        "keys" => match KeysCommand::parse(std::env::args().skip(2).collect()) {
            Ok(k) => Task::Keys(k),
            Err(e) => return usage_error("authgate keys", &e),
        },
        "admin" => match RoleCommand::parse(std::env::args().skip(2).collect()) {
            Ok(r) => Task::Role(r),
            Err(e) => return usage_error("authgate admin", &e),
        },
        "check-config" => {
            for (name, value) in config.describe() {
                println!("{name:<28} {value}");
            }
            if matches!(config.database, DatabaseSource::Embedded) {
                let cluster = private_pg::cluster_location(&config.data_dir);
                println!("{:<28} {}", "private PostgreSQL cluster", cluster.display());
            }
            for line in config.sms_text_report() {
                println!("{line}");
            }
            return ExitCode::SUCCESS;
        }
        other => return usage_error("authgate", &format!("unknown command `{other}`")),
    };
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(task, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("authgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command line that names no valid command: the problem, then the usage.
fn usage_error(command: &str, problem: &str) -> ExitCode {
    eprintln!("{command}: {problem}\n\n{USAGE}");
    ExitCode::from(2)
}

/// `authgate openapi`: the same document the server serves, built from the code
/// alone (before any configuration is read, so it works anywhere).
fn write_openapi(target: &str) -> ExitCode {
    let doc = match crate::routes::docs::document_pretty() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("authgate: cannot render the OpenAPI document: {e}");
            return ExitCode::FAILURE;
        }
    };
    if target == "-" {
        print!("{doc}");
        return ExitCode::SUCCESS;
    }
    match std::fs::write(target, doc) {
        Ok(()) => {
            println!("wrote {target}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authgate: cannot write {target}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `authgate keys ...`.
#[derive(Debug, Clone)]
enum KeysCommand {
    List,
    Rotate { purposes: Vec<Purpose>, force: bool },
}

impl KeysCommand {
    fn parse(args: Vec<String>) -> Result<KeysCommand, String> {
        let force = args.iter().any(|a| a == "--force");
        let words: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--force")
            .collect();
        match words.as_slice() {
            ["list"] if !force => Ok(KeysCommand::List),
            ["rotate", "all"] => Ok(KeysCommand::Rotate {
                purposes: Purpose::ALL.to_vec(),
                force,
            }),
            ["rotate", p] => match Purpose::parse(p) {
                Some(p) => Ok(KeysCommand::Rotate {
                    purposes: vec![p],
                    force,
                }),
                None => Err(format!(
                    "`{p}` is not signing, codes, outbox, refresh, recovery or all"
                )),
            },
            _ => Err("expected `keys list` or `keys rotate PURPOSE [--force]`".to_owned()),
        }
    }
}

/// `authgate admin grant|revoke EMAIL`.
struct RoleCommand {
    admin: bool,
    email: String,
}

impl RoleCommand {
    fn parse(args: Vec<String>) -> Result<RoleCommand, String> {
        match args.as_slice() {
            [verb, email] if verb == "grant" || verb == "revoke" => Ok(RoleCommand {
                admin: verb == "grant",
                email: email.clone(),
            }),
            _ => Err("expected `admin grant EMAIL` or `admin revoke EMAIL`".to_owned()),
        }
    }
}

enum Task {
    Serve,
    Migrate,
    Keys(KeysCommand),
    Role(RoleCommand),
}

async fn run(task: Task, config: Config) -> Result<(), String> {
    // The private PostgreSQL, if any, lives exactly as long as this function.
    let (db, private_pg) = match &config.database {
        DatabaseSource::Url(c) => ((**c).clone(), None),
        DatabaseSource::Embedded => {
            let dir = config.data_dir.clone();
            let user = config.pg_os_user.clone();
            let state = config.pg_state_dir.clone();
            tracing::info!(data_dir = %dir.display(), "DATABASE_URL not set: authgate runs its own PostgreSQL");
            // It logs where the cluster lives and how long start-up took.
            let pg =
                tokio::task::spawn_blocking(move || PrivatePostgres::start_in(&dir, &user, &state))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("private PostgreSQL: {e}"))?;
            (pg.pg_config(), Some(pg))
        }
    };
    let result = match task {
        Task::Migrate => migrate(&config, db).await,
        Task::Serve => serve(config, db).await,
        Task::Keys(k) => keys(&config, db, k).await,
        Task::Role(r) => role(&config, db, r).await,
    };
    if let Some(pg) = private_pg {
        tracing::info!("stopping the private PostgreSQL");
        match tokio::task::spawn_blocking(move || pg.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("private PostgreSQL did not stop cleanly: {e}"),
            Err(e) => tracing::warn!("private PostgreSQL stop task failed: {e}"),
        }
    }
    result
}

async fn migrate(config: &Config, db: tokio_postgres::Config) -> Result<(), String> {
    let store = crate::startup::store_for(config, db, 1).map_err(|e| e.to_string())?;
    let applied = store
        .migrate()
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    store.close();
    tracing::info!(applied, "migrations up to date");
    println!("migrations up to date ({applied} applied)");
    Ok(())
}

/// `authgate keys list|rotate`: on the same database (and key ring) the
/// servers use; running servers pick a rotation up at their next reload.
async fn keys(
    config: &Config,
    db: tokio_postgres::Config,
    command: KeysCommand,
) -> Result<(), String> {
    let store = crate::startup::store_for(config, db, 2).map_err(|e| e.to_string())?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    let settings = keyring_settings(config).map_err(|e| e.to_string())?;
    let ring = Keyring::open(store.clone(), Clock::system(), settings).await?;
    let result = match command {
        KeysCommand::List => {
            println!(
                "{:<9} {:<26} {:<18} {:<8} {:<20} {:<20}",
                "PURPOSE", "KID", "ALG", "STATE", "ACTIVATED", "ACCEPTED UNTIL"
            );
            let day = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".to_owned())
            };
            for k in ring.list().await? {
                let until = match (k.state, k.verify_until) {
                    ("retired", None) => "for good".to_owned(),
                    (_, t) => day(t),
                };
                println!(
                    "{:<9} {:<26} {:<18} {:<8} {:<20} {:<20}",
                    k.purpose,
                    k.kid,
                    k.alg,
                    k.state,
                    day(k.activated_at),
                    until
                );
            }
            Ok(())
        }
        KeysCommand::Rotate { purposes, force } => {
            let mut failed = vec![];
            for purpose in purposes {
                if purpose == Purpose::Signing && config.jwt_algorithm == SigningAlg::HS256 {
                    println!("signing: skipped (JWT_ALGORITHM=HS256 signs with JWT_SECRET)");
                    continue;
                }
                match ring.rotate(purpose, force).await? {
                    Rotation::Rotated { active } => {
                        println!("{}: rotated, active key {active}", purpose.as_str())
                    }
                    Rotation::TooSoon { next_created } => {
                        println!(
                            "{}: not rotated: the next key was made at {next_created}, too \
                             recently for every process to know it; retry in a minute \
                             (or --force)",
                            purpose.as_str()
                        );
                        failed.push(purpose.as_str());
                    }
                    other => {
                        println!("{}: not rotated ({other:?})", purpose.as_str());
                        failed.push(purpose.as_str());
                    }
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!("not rotated: {}", failed.join(", ")))
            }
        }
    };
    store.close();
    result
}

/// `authgate admin grant|revoke EMAIL`, on the servers' database: they read
/// the role on every admin call, so it counts at once.
async fn role(
    config: &Config,
    db: tokio_postgres::Config,
    command: RoleCommand,
) -> Result<(), String> {
    let store = crate::startup::store_for(config, db, 1).map_err(|e| e.to_string())?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    let result = crate::service::admin::set_role(&store, &command.email, command.admin).await;
    store.close();
    match result {
        Ok(true) if command.admin => {
            println!("{}: admin role granted", command.email);
            if !config.admin_jwt {
                println!("note: AUTHGATE_ADMIN_JWT is off, so the role opens nothing yet");
            }
            Ok(())
        }
        Ok(true) => {
            println!("{}: admin role revoked", command.email);
            Ok(())
        }
        Ok(false) => Err(format!("no account has the e-mail {}", command.email)),
        Err(e) => Err(e.to_string()),
    }
}

async fn serve(config: Config, db: tokio_postgres::Config) -> Result<(), String> {
    let app = Application::build(config, db, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(addr = %app.addr(), "authgate listening");
    app.run_until_stopped().await;
    tracing::info!("authgate stopped");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
