//! The hashing pool: a few threads of its own that run every password hash.
//!
//! argon2 takes tens of milliseconds and 19 MiB per call. Running it on an async
//! worker would stall every request on that worker; running it on tokio's
//! blocking pool would let a burst of logins spread over many threads, each
//! keeping its own 19 MiB (the allocator caches per thread), and pay a fresh
//! allocation and its page faults per hash. Here `concurrency` threads take jobs
//! from one queue, each with one argon2 working memory it reuses, so the memory
//! is bounded by `concurrency` × 19 MiB and a hash costs only its computation.
//! Waiting callers queue without holding a thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::domain::password::{self, Memory, Password};
use crate::error::AppError;
use crate::metrics::Metrics;

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

#[derive(Clone)]
pub struct Hasher {
    /// Closed when the last `Hasher` is dropped: the threads then finish.
    jobs: mpsc::Sender<Job>,
    /// Where queue waits are recorded; None in benches and unit tests.
    metrics: Option<Arc<Metrics>>,
}

impl Hasher {
    /// Starts `concurrency` hashing threads (at least one).
    pub fn new(concurrency: usize) -> Hasher {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrency.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("authgate-hash-{i}"))
                .spawn(move || {
                    let mut memory = Memory::default();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => break,
                        }
                    }
                });
            if let Err(e) = spawned {
                // Fewer threads than asked still hash; none at all is reported
                // by every call below.
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Hasher {
            jobs,
            metrics: None,
        }
    }

    /// Records each job's wait for a thread in `metrics`: a growing wait says the
    /// pool (`AUTHGATE_HASH_CONCURRENCY`) is the bottleneck of logins.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Hasher {
        self.metrics = Some(metrics);
        self
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let queued = Instant::now();
        let metrics = self.metrics.clone();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            if let Some(m) = &metrics {
                m.hash_waited(queued.elapsed());
            }
            // The caller may have gone (request cancelled): nothing to answer.
            let _ = tx.send(job(memory));
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal("password hashing threads are gone"))?;
        rx.await
            .map_err(|_| AppError::internal("a password hashing thread failed"))
    }

    /// Hashes a new password; returns the PHC string.
    pub async fn hash(&self, password: Password) -> Result<String, AppError> {
        self.run(move |memory| password::hash_in(&password, memory))
            .await?
            .map_err(AppError::internal)
    }

    /// Verifies a password against a stored hash. With no stored hash (unknown
    /// account) it verifies against a dummy hash, so both cost the same.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<bool, AppError> {
        self.run(move |memory| match phc {
            Some(phc) => password::verify_in(&password, &phc, memory),
            None => {
                let _ = password::verify_in(&password, dummy_hash(), memory);
                false
            }
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_and_verifies_on_its_threads() {
        let hasher = Hasher::new(2);
        let pw = Password::parse_new("s3cretpassword").unwrap();
        let phc = hasher.hash(pw.clone()).await.unwrap();
        // Several at once: more jobs than threads queue and all answer.
        let checks = (0..5).map(|i| {
            let hasher = hasher.clone();
            let (pw, phc) = (pw.clone(), phc.clone());
            async move {
                let offered = if i % 2 == 0 {
                    pw
                } else {
                    Password::for_login("wrong-password-1").unwrap()
                };
                hasher.verify(offered, Some(phc)).await.unwrap()
            }
        });
        let answers = futures::future::join_all(checks).await;
        assert_eq!(answers, [true, false, true, false, true]);
        assert!(!hasher.verify(pw, None).await.unwrap());
    }
}
