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
//!
//! The queue is bounded too: when `queue` jobs already wait, a new one is refused
//! at once with 503 `overloaded` (a flood costs the server no memory and the
//! client an early answer). A job that waited longer than `wait` is not run (its
//! caller gets `overloaded`: the answer would come too late to matter), and a job
//! whose caller has gone (request cancelled, client disconnected) is skipped: a
//! hash nobody waits for is pure cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::domain::password::{self, Memory, Password};
use crate::error::AppError;
use crate::metrics::Metrics;

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// Jobs that may wait for a thread when none is given (`AUTHGATE_HASH_QUEUE`).
pub const DEFAULT_QUEUE: usize = 256;
/// How long a job may wait for a thread when none is given (`AUTHGATE_HASH_QUEUE_TIMEOUT`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// What an `overloaded` answer asks the client to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the pool did not do, since start.
#[derive(Debug, Default)]
pub struct HashStats {
    /// Hashes and verifies that ran.
    pub ran: AtomicU64,
    /// Refused at once: the queue was full.
    pub shed: AtomicU64,
    /// Not run: waited longer than the queue timeout.
    pub timed_out: AtomicU64,
    /// Not run: the caller had gone.
    pub abandoned: AtomicU64,
}

impl HashStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct Hasher {
    /// Closed when the last `Hasher` is dropped: the threads then finish.
    jobs: mpsc::SyncSender<Job>,
    /// Longest wait for a thread before a job is dropped.
    wait: Duration,
    stats: Arc<HashStats>,
    /// Where queue waits are recorded; None in benches and unit tests.
    metrics: Option<Arc<Metrics>>,
}

impl Hasher {
    /// Starts `concurrency` hashing threads (at least one) with the default queue.
    pub fn new(concurrency: usize) -> Hasher {
        Hasher::bounded(concurrency, DEFAULT_QUEUE, DEFAULT_WAIT)
    }

    /// Starts `concurrency` hashing threads; at most `queue` jobs wait, each at
    /// most `wait`.
    pub fn bounded(concurrency: usize, queue: usize, wait: Duration) -> Hasher {
        let (jobs, receiver) = mpsc::sync_channel::<Job>(queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..concurrency.max(1) {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("authgate-hash-{i}"))
                .spawn(move || {
                    let mut memory = Memory::default();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match receiver.lock() {
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
            wait,
            stats: Arc::new(HashStats::default()),
            metrics: None,
        }
    }

    /// Records each job's wait for a thread in `metrics`: a growing wait says the
    /// pool (`AUTHGATE_HASH_CONCURRENCY`) is the bottleneck of logins.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Hasher {
        self.metrics = Some(metrics);
        self
    }

    /// What the pool ran, shed and skipped.
    pub fn stats(&self) -> &HashStats {
        &self.stats
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let queued = Instant::now();
        let metrics = self.metrics.clone();
        let stats = self.stats.clone();
        let wait = self.wait;
        let (tx, rx) = oneshot::channel::<Result<T, AppError>>();
        let job: Job = Box::new(move |memory| {
            let waited = queued.elapsed();
            if let Some(m) = &metrics {
                m.hash_waited(waited);
            }
            if tx.is_closed() {
                HashStats::bump(&stats.abandoned);
                if let Some(m) = &metrics {
                    m.hash_dropped("abandoned");
                }
                return;
            }
            if waited > wait {
                HashStats::bump(&stats.timed_out);
                if let Some(m) = &metrics {
                    m.hash_dropped("timed_out");
                }
                let _ = tx.send(Err(overloaded()));
                return;
            }
            HashStats::bump(&stats.ran);
            // The caller may have gone meanwhile: nothing to answer.
            let _ = tx.send(Ok(job(memory)));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                HashStats::bump(&self.stats.shed);
                if let Some(m) = &self.metrics {
                    m.hash_dropped("shed");
                }
                return Err(overloaded());
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(AppError::internal("password hashing threads are gone"))
            }
        }
        rx.await
            .map_err(|_| AppError::internal("a password hashing thread failed"))?
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

fn overloaded() -> AppError {
    AppError::Overloaded {
        retry_after: RETRY_AFTER,
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
    /// A job that holds the pool's only thread until told to go.
    async fn occupy(hasher: &Hasher) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let h = hasher.clone();
        let running = tokio::spawn(async move {
            h.run(move |_| {
                let _ = started_tx.send(());
                let _ = go_rx.recv_timeout(Duration::from_secs(10));
            })
            .await
            .unwrap();
        });
        started_rx.await.unwrap();
        (go_tx, running)
    }

    #[tokio::test]
    async fn a_full_queue_answers_overloaded_at_once() {
        let hasher = Hasher::bounded(1, 1, Duration::from_secs(5));
        let (go, running) = occupy(&hasher).await;
        // One job waits in the queue: its only slot.
        let mut queued = Box::pin(hasher.run(|_| 7));
        assert!(futures::poll!(&mut queued).is_pending());
        let refused = hasher.run(|_| 8).await;
        assert!(
            matches!(refused, Err(AppError::Overloaded { .. })),
            "{refused:?}"
        );
        assert_eq!(refused.unwrap_err().code(), "overloaded");
        assert_eq!(HashStats::get(&hasher.stats().shed), 1);
        go.send(()).unwrap();
        running.await.unwrap();
        assert_eq!(queued.await.unwrap(), 7, "the queued job still runs");
    }

    #[tokio::test]
    async fn a_job_whose_caller_went_away_is_skipped_and_counted() {
        let hasher = Hasher::bounded(1, 4, Duration::from_secs(5));
        let (go, running) = occupy(&hasher).await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let mut abandoned = Box::pin(hasher.run(move |_| flag.store(true, Ordering::SeqCst)));
        assert!(futures::poll!(&mut abandoned).is_pending());
        drop(abandoned); // the request was cancelled while queued
        go.send(()).unwrap();
        running.await.unwrap();
        // A later job runs after the skipped one, so the skip has happened.
        assert_eq!(hasher.run(|_| 1).await.unwrap(), 1);
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job ran");
        assert_eq!(HashStats::get(&hasher.stats().abandoned), 1);
        assert_eq!(HashStats::get(&hasher.stats().ran), 2);
    }

    #[tokio::test]
    async fn a_job_that_waited_past_the_timeout_is_dropped_as_overloaded() {
        let hasher = Hasher::bounded(1, 4, Duration::from_millis(50));
        let (go, running) = occupy(&hasher).await;
        let mut late = Box::pin(hasher.run(|_| 3));
        assert!(futures::poll!(&mut late).is_pending());
        tokio::time::sleep(Duration::from_millis(120)).await;
        go.send(()).unwrap();
        running.await.unwrap();
        assert!(matches!(late.await, Err(AppError::Overloaded { .. })));
        assert_eq!(HashStats::get(&hasher.stats().timed_out), 1);
    }
}
