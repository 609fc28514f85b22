//! `AppState`: the handles every route handler can reach. Built once in
//! `startup`, cloned cheaply (an `Arc`) into each request.

use std::sync::Arc;

use ractor::ActorRef;

use crate::actors::flow::FlowRegistry;
use crate::actors::otp::OtpService;
use crate::actors::sms::SmsHandle;
use crate::actors::supervisor::SupervisorMsg;
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::Keys;
use crate::hasher::Hasher;
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::routes::limits::LocalLimits;
use crate::store::Store;
use crate::tokens::TokenIssuer;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Everything `AppState` is made of, built by `startup`.
pub struct AppParts {
    pub config: Config,
    pub store: Store,
    pub keys: Keys,
    /// The key ring `keys` comes from: reloads, rotation, the JWKS.
    pub keyring: Arc<Keyring>,
    pub clock: Clock,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub otp: OtpService,
    pub tokens: TokenIssuer,
    /// Wakes the SMS actor; its delivery counters.
    pub sms: SmsHandle,
    /// The login flows that have an actor in this process.
    pub flows: FlowRegistry,
    /// Local per-IP rate limits (this process only).
    pub limits: LocalLimits,
    /// The Prometheus counters (`GET /metrics`); shared with the OTP actors.
    pub metrics: Arc<Metrics>,
    /// Which access tokens were revoked (cached per process, kept fresh by NOTIFY).
    pub revocations: Revocations,
}

struct Inner {
    parts: AppParts,
    hasher: Hasher,
    /// The address the server listens on, once bound (the configured port
    /// may be 0).
    bound: std::sync::OnceLock<std::net::SocketAddr>,
}

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        let c = &parts.config;
        let hasher = Hasher::bounded(c.hash_concurrency, c.hash_queue, c.hash_queue_timeout)
            .with_metrics(parts.metrics.clone());
        AppState {
            inner: Arc::new(Inner {
                parts,
                hasher,
                bound: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn otp(&self) -> &OtpService {
        &self.inner.parts.otp
    }

    pub fn sms(&self) -> &SmsHandle {
        &self.inner.parts.sms
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.inner.parts.tokens
    }

    /// Local per-IP rate limits.
    pub fn limits(&self) -> &LocalLimits {
        &self.inner.parts.limits
    }

    /// The login flows that have an actor in this process.
    pub fn flows(&self) -> &FlowRegistry {
        &self.inner.parts.flows
    }

    /// The Prometheus counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.parts.metrics
    }

    /// Which access tokens were revoked.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.parts.revocations
    }

    pub fn config(&self) -> &Config {
        &self.inner.parts.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.parts.store
    }

    pub fn hasher(&self) -> &Hasher {
        &self.inner.hasher
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.parts.keys
    }

    /// Records the address the server is bound to (once).
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let _ = self.inner.bound.set(addr);
    }

    /// The base URL clients reach this server at: `AUTHGATE_PUBLIC_URL`, else
    /// the address it listens on.
    pub fn public_url(&self) -> String {
        let config = self.config();
        match (&config.public_url, self.inner.bound.get()) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => crate::config::url_of(addr.ip(), addr.port()),
            (None, None) => config.public_url(),
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.inner.parts.keyring
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.parts.clock
    }

    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.inner.parts.supervisor
    }
}
