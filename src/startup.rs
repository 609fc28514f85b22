//! Start-up and shutdown: connect the pool, migrate, build the state, bind the
//! listener, serve until told to stop, then drain.
//!
//! `Application::build` binds before it returns, so callers (main and the tests)
//! learn the real port, then `run_until_stopped` serves.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use rand::RngCore;
use secrecy::SecretString;

use crate::actors::flow::FlowRegistry;
use crate::actors::otp::{OtpService, OtpSettings};
use crate::actors::sms::{self, SmsDeps, SmsHandle};
use crate::actors::supervisor::Supervisor;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::BoxError;
use crate::keyring::{Keyring, KeyringSettings, SigningAlg};
use crate::routes;
use crate::state::{AppParts, AppState};
use crate::store::Store;
use crate::tokens::TokenIssuer;

/// Users whose revocation facts each process caches (a few hundred bytes each).
const REVOCATION_CACHE_USERS: usize = 100_000;

pub struct Application {
    addr: SocketAddr,
    state: AppState,
    server: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Application {
    /// Connects to the database, applies migrations and binds the HTTP listener.
    /// The server stops accepting when `shutdown` completes, then lets in-flight
    /// requests finish (up to `shutdown_grace`).
    pub async fn build(
        config: Config,
        db: tokio_postgres::Config,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Application, BoxError> {
        Self::build_with_clock(config, db, Clock::system(), shutdown).await
    }

    /// As `build`, with a clock tests can move forward.
    pub async fn build_with_clock(
        config: Config,
        db: tokio_postgres::Config,
        clock: Clock,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Application, BoxError> {
        let key_settings = keyring_settings(&config)?;
        tokio::task::spawn_blocking(crate::hasher::warm_up).await?;
        let store = store_for(&config, db.clone(), config.db_pool_size)?;
        // The LISTEN connections (SMS wake-ups, revocation cache) live outside
        // the pool, on DATABASE_LISTEN_URL's settings; None: no LISTEN at all.
        let listen = config.listen.settings(&db);
        tracing::info!(
            listen = %config.listen.describe(),
            locks = config.locks.as_str(),
            "database coordination"
        );
        let applied = store
            .migrate()
            .await
            .map_err(|e| format!("could not migrate the database: {e}"))?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        let keyring = Arc::new(
            Keyring::open(store.clone(), clock.clone(), key_settings)
                .await
                .map_err(|e| format!("could not open the key ring: {e}"))?,
        );
        let keys = keyring.keys().clone();
        if config.jwt_algorithm == SigningAlg::HS256 {
            tracing::warn!(
                "JWT_ALGORITHM=HS256: access tokens are signed with the shared JWT_SECRET, \
                 so every service that verifies them can also mint them, and rotating it \
                 signs everyone out; prefer EdDSA (the default) and /.well-known/jwks.json"
            );
        }
        let addr = SocketAddr::new(config.host, config.port);
        let grace = config.shutdown_grace;
        let supervisor = Supervisor::start()
            .await
            .map_err(|e| format!("could not start the actor tree: {e}"))?;
        let revocations = crate::revocation::Revocations::new(
            store.clone(),
            REVOCATION_CACHE_USERS,
            config.jwt_expiration,
        );
        if let Some(pg) = &listen {
            revocations.listen(pg.clone());
        }
        let sms = SmsHandle::new(&config.sms, store.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let test_phones = Arc::new(config.test_phones.clone());
        if !test_phones.is_empty() {
            tracing::warn!(
                numbers = test_phones.len(),
                env = config.env.as_str(),
                "AUTHGATE_TEST_PHONES: these numbers get fixed codes and no SMS; \
                 never use them where real users sign up"
            );
        }
        sms::start(
            &supervisor,
            &sms,
            SmsDeps {
                store: store.clone(),
                keys: keys.clone(),
                clock: clock.clone(),
                config: config.sms.clone(),
                sender: crate::sms::test_phones::TestPhoneSender::wrap(
                    sms::sender_for(&config.sms)?,
                    test_phones.clone(),
                    metrics.clone(),
                ),
                listen,
            },
        )
        .await?;
        let otp = OtpService::start(
            &supervisor,
            OtpSettings {
                store: store.clone(),
                keys: keys.clone(),
                clock: clock.clone(),
                code_length: config.otp_length,
                ttl: config.otp_expiration,
                max_attempts: config.otp_max_attempts,
                cooldown: config.otp_resend_cooldown,
                sender_name: config.sms.sender_name.clone(),
                templates: Arc::new(config.sms.templates.clone()),
                webotp_domain: config.sms.webotp_domain.clone(),
                quotas: config.quotas.clone(),
                metrics: metrics.clone(),
                test_phones,
                on_enqueued: {
                    let sms = sms.clone();
                    Arc::new(move || sms.nudge())
                },
            },
            config.otp_shards,
        )
        .await?;
        // Deletes what outlived its retention (audit, quotas, outbox, stale sign-ups).
        crate::actors::purge::start(
            &supervisor,
            crate::actors::purge::PurgeDeps {
                store: store.clone(),
                clock: clock.clone(),
                config: config.purge.clone(),
                unverified_signup_ttl: config.unverified_signup_ttl,
                metrics: metrics.clone(),
            },
        )
        .await?;
        // Reloads the key ring and rotates keys on their schedule.
        crate::actors::keys::start(&supervisor, keyring.clone()).await?;
        let tokens = TokenIssuer::new(
            &keys,
            &config.jwt_issuer,
            &config.jwt_audience,
            config.jwt_expiration,
        );
        let limits = routes::limits::LocalLimits::new(&config.rate_limits);
        if limits.enabled() {
            limits.spawn_housekeeping(routes::limits::HOUSEKEEPING_EVERY);
        } else {
            tracing::warn!(
                "AUTHGATE_RATE_LIMITS=off: local per-IP rate limits are disabled \
                 (the PostgreSQL quotas still apply); use this for load tests only"
            );
        }
        if config.quotas.sms_destinations.regions.is_none() {
            tracing::warn!(
                "AUTHGATE_SMS_ALLOWED_REGIONS=*: codes may be sent to every region, \
                 including those SMS pumping targets; list the regions you serve"
            );
        }
        let state = AppState::new(AppParts {
            limits,
            config,
            store,
            keys,
            keyring,
            clock,
            supervisor,
            otp,
            tokens,
            sms,
            flows: FlowRegistry::default(),
            metrics,
            revocations,
        });
        // Expires due login flows (any process's) and stops idle flow actors.
        crate::actors::flow::start_sweeper(&state).await?;

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("could not listen on {addr}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("could not read the bound address of {addr}: {e}"))?;
        let serve = warp::serve(routes::app(state.clone()))
            .incoming(listener)
            .graceful({
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
            })
            .run();
        state.set_bound(addr);
        let server = async move {
            let serve = tokio::spawn(serve);
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            let _ = stop_tx.send(true);
            if tokio::time::timeout(grace, serve).await.is_err() {
                tracing::warn!(
                    ?grace,
                    "in-flight requests did not finish within the grace period"
                );
            }
        };
        Ok(Application {
            addr,
            state,
            server: Box::pin(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown future completes and in-flight requests drain,
    /// then stops the actor tree (the SMS actor returns unsent work to the outbox)
    /// and closes the pool.
    pub async fn run_until_stopped(self) {
        self.server.await;
        let _ = self
            .state
            .supervisor()
            .stop_children_and_wait(None, Some(Duration::from_secs(30)))
            .await;
        let _ = self
            .state
            .supervisor()
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        self.state.store().close();
    }
}

/// A pool on `db` that locks and notifies as the configuration says
/// (`AUTHGATE_LOCKS`, `DATABASE_LISTEN_URL`): for the server and for every
/// command that touches the database, so a command run beside the servers
/// takes the same locks they do.
pub fn store_for(
    config: &Config,
    db: tokio_postgres::Config,
    size: usize,
) -> Result<Store, BoxError> {
    Ok(Store::connect(db, size, config.db_timeout)?
        .with_coordination(config.locks, config.listen.notifies()))
}

/// The key ring's settings from the configuration: the master key is
/// `AUTHGATE_MASTER_KEY`; else, from earlier versions, `JWT_SECRET` (unless
/// it is the shared HS256 key); else a random key generated once and kept in
/// `<data dir>/master_key` (mode 0600). Earlier versions derived every key
/// from `JWT_SECRET` or `<data dir>/jwt_secret`: that secret is handed on so
/// the ring can keep accepting what those keys made.
pub fn keyring_settings(config: &Config) -> Result<KeyringSettings, BoxError> {
    let hs256 = config.jwt_algorithm == SigningAlg::HS256;
    let master = match (&config.master_key, &config.jwt_secret) {
        (Some(m), _) => m.clone(),
        (None, Some(j)) if !hs256 => j.clone(),
        _ => {
            let path = config.data_dir.join("master_key");
            let secret = read_or_create_secret(&path).map_err(|e| {
                format!("AUTHGATE_MASTER_KEY is unset and the generated key failed: {e}")
            })?;
            tracing::warn!(
                path = %path.display(),
                "AUTHGATE_MASTER_KEY is not set: using a generated key kept in the data \
                 folder; set AUTHGATE_MASTER_KEY (32+ bytes) when running several processes"
            );
            secret
        }
    };
    let legacy = match &config.jwt_secret {
        Some(j) => Some(j.clone()),
        None => {
            let old = config.data_dir.join("jwt_secret");
            match std::fs::read_to_string(&old) {
                Ok(s) if s.trim().len() >= crate::config::MIN_JWT_SECRET_BYTES => {
                    Some(SecretString::from(s.trim().to_owned()))
                }
                _ => None,
            }
        }
    };
    Ok(KeyringSettings {
        alg: config.jwt_algorithm,
        hs256_secret: config.jwt_secret.clone().filter(|_| hs256),
        master,
        master_previous: config.master_key_previous.clone(),
        legacy_secret: legacy,
        rotation: config.key_rotation,
        reload_every: config.key_reload,
        access_ttl: config.jwt_expiration,
        code_ttl: config.otp_expiration,
        outbox_retention: config.purge.outbox_retention,
        refresh_grace: config.refresh_grace,
    })
}

fn read_or_create_secret(path: &Path) -> Result<SecretString, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= crate::config::MIN_JWT_SECRET_BYTES => {
            return Ok(SecretString::from(s.trim().to_owned()))
        }
        Ok(_) => return Err(format!("{} is shorter than 32 bytes", path.display()).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    // create_new: two processes starting at once must not overwrite each other's key.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            Ok(SecretString::from(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_or_create_secret(path),
        Err(e) => Err(format!("cannot write {}: {e}", path.display()).into()),
    }
}
