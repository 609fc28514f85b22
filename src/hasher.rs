//! The bounded blocking pool password hashing runs on.
//!
//! argon2 takes tens of milliseconds and 19 MiB per call. Running it on an async
//! worker would stall every request on that worker; running unboundedly on
//! `spawn_blocking` would let a burst of logins allocate gigabytes. A semaphore caps
//! concurrent hashes; waiting callers queue without holding a thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::metrics::Metrics;

use crate::domain::password::{self, Password};
use crate::error::AppError;

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Where queue waits are recorded; None in benches and unit tests.
    metrics: Option<Arc<Metrics>>,
}

impl Hasher {
    pub fn new(concurrency: usize) -> Hasher {
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            metrics: None,
        }
    }

    /// Records each job's wait for a slot in `metrics`: a growing wait says the
    /// pool (`AUTHGATE_HASH_CONCURRENCY`) is the bottleneck of logins.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Hasher {
        self.metrics = Some(metrics);
        self
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(T, Duration), AppError> {
        let queued = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(AppError::internal)?;
        let waited = queued.elapsed();
        if let Some(m) = &self.metrics {
            m.hash_waited(waited);
        }
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(AppError::internal)?;
        Ok((out, waited))
    }

    /// Hashes a new password; returns the PHC string.
    pub async fn hash(&self, password: Password) -> Result<String, AppError> {
        let (result, _waited) = self.run(move || password::hash(&password)).await?;
        result.map_err(AppError::internal)
    }

    /// Verifies a password against a stored hash. With no stored hash (unknown
    /// account) it verifies against a dummy hash, so both cost the same.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<bool, AppError> {
        let (ok, _waited) = self
            .run(move || match phc {
                Some(phc) => password::verify(&password, &phc),
                None => {
                    let _ = password::verify(&password, dummy_hash());
                    false
                }
            })
            .await?;
        Ok(ok)
    }
}

/// Computes the dummy hash ahead of the first login (blocking: call it off the
/// runtime), so the first unknown e-mail does not pay an extra hash and stand out.
pub fn warm_up() {
    let _ = dummy_hash();
}

/// A valid hash of a random password in today's parameters, computed once, so an
/// unknown e-mail costs one full argon2 verify like a known one.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        // Whatever this password is, a match is thrown away by `verify`.
        Password::for_login("unused-dummy-password-0")
            .and_then(|p| password::hash(&p).ok())
            .unwrap_or_default()
    })
}
