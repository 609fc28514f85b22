//! Whether a valid access token has been revoked: the bearer guard's second
//! question after the signature. Room: between the routes and `store`; it
//! imports only `store` and plain values.
//!
//! Access tokens stay stateless JWTs; what can revoke one is kept per user in
//! PostgreSQL (a "tokens valid after" instant and the recently revoked
//! sessions) and cached here, per process, so the common request costs no
//! database round trip. The cache is kept honest by `NOTIFY
//! authgate_revocation`, sent in every revoking transaction: a listener task per
//! process forgets the user named. While that listener is down (and right after
//! it reconnects, when notifications may have been missed) nothing cached is
//! trusted: every check reads PostgreSQL. The listener also pings itself through
//! the channel every few seconds; a ping not heard back (a silently dead
//! connection, or a pooler in transaction mode that drops notifications) turns
//! the cache off the same way.
//!
//! With `DATABASE_LISTEN_URL=off` (an engine without LISTEN/NOTIFY) `listen`
//! is never called: the cache stays off and every check reads PostgreSQL.
//! With a `DATABASE_LISTEN_URL` of its own, the heartbeat goes out through the
//! pool and must come back on the listen connection, which also proves the two
//! reach the same server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::tokens::{RevocationFacts, RevocationListener, Revoked};
use crate::store::{Store, StoreError};

/// Reconnect delays of the LISTEN connection.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);
/// How often the listener proves, by hearing its own ping, that notifications
/// still arrive; a ping unheard for this long turns the cache off.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A safety net only: notifications keep entries fresh, this bounds the damage
/// of one that never arrived while the connection still looked alive.
const ENTRY_MAX_AGE: Duration = Duration::from_secs(60);

/// The per-process cache. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// std `Mutex`: held only for map operations, never across an await.
    entries: Mutex<HashMap<Uuid, Entry>>,
    capacity: usize,
    /// Bumped by every invalidation: a lookup that raced one does not cache
    /// what it read, since it may predate the revocation.
    generation: AtomicU64,
    /// True while this process hears its own heartbeat on the LISTEN
    /// connection; the cache is used only then.
    listening: AtomicBool,
    /// How long an access token lives: sessions revoked longer ago than that
    /// cannot have live access tokens left.
    access_ttl: chrono::Duration,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone)]
struct Entry {
    facts: Option<Arc<RevocationFacts>>,
    loaded: Instant,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock() {
            if let Some(task) = l.take() {
                task.abort();
            }
        }
    }
}

impl Revocations {
    /// A cache of at most `capacity` users; nothing is cached until `listen`
    /// has connected.
    pub fn new(store: Store, capacity: usize, access_ttl: Duration) -> Revocations {
        Revocations {
            inner: Arc::new(Inner {
                store,
                entries: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                generation: AtomicU64::new(0),
                listening: AtomicBool::new(false),
                access_ttl: chrono::Duration::from_std(access_ttl)
                    .unwrap_or(chrono::Duration::minutes(15)),
                listener: Mutex::new(None),
            }),
        }
    }

    /// Starts the listener task; it ends with the last handle to this cache.
    pub fn listen(&self, pg: tokio_postgres::Config) {
        let task = tokio::spawn(listen(pg, Arc::downgrade(&self.inner)));
        if let Ok(mut l) = self.inner.listener.lock() {
            if let Some(old) = l.replace(task) {
                old.abort();
            }
        }
    }

    /// True when an access token of `user`, in session `sid` (if it says), issued
    /// at `issued`, has been revoked (or its account is gone).
    pub async fn is_revoked(
        &self,
        user: Uuid,
        sid: Option<Uuid>,
        issued: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let facts = self.facts(user, now).await?;
        let Some(facts) = facts else {
            return Ok(true);
        };
        // At or before: a token minted in the very microsecond of a revocation
        // may predate it, so it goes too.
        if facts.tokens_valid_after.is_some_and(|t| issued <= t) {
            return Ok(true);
        }
        Ok(sid.is_some_and(|sid| facts.revoked_sessions.contains(&sid)))
    }

    /// Forgets `user` here at once (the NOTIFY reaches the other processes).
    pub fn forget(&self, user: Uuid) {
        self.inner.forget(user);
    }

    async fn facts(
        &self,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<RevocationFacts>>, StoreError> {
        let inner = &self.inner;
        let listening = inner.listening.load(Ordering::SeqCst);
        if listening {
            if let Ok(entries) = inner.entries.lock() {
                if let Some(e) = entries.get(&user) {
                    if e.loaded.elapsed() < ENTRY_MAX_AGE {
                        return Ok(e.facts.clone());
                    }
                }
            }
        }
        let generation = inner.generation.load(Ordering::SeqCst);
        let facts = inner
            .store
            .revocation_facts(user, now - inner.access_ttl)
            .await?
            .map(Arc::new);
        if listening
            && inner.listening.load(Ordering::SeqCst)
            && inner.generation.load(Ordering::SeqCst) == generation
        {
            if let Ok(mut entries) = inner.entries.lock() {
                // Bounded: when full, start over rather than track recency.
                if entries.len() >= inner.capacity && !entries.contains_key(&user) {
                    entries.clear();
                }
                entries.insert(
                    user,
                    Entry {
                        facts: facts.clone(),
                        loaded: Instant::now(),
                    },
                );
            }
        }
        Ok(facts)
    }

    /// Users cached now (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.inner.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether the LISTEN connection is up (so the cache is in use).
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }
}

impl Inner {
    fn forget(&self, user: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&user);
        }
    }

    /// Stops using the cache until notifications are heard again.
    fn stop_trusting(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.forget_all();
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

/// Keeps the LISTEN connection open, reconnecting with backoff. The cache is in
/// use only while this process hears its own pings; whenever it stops (or
/// starts again) hearing them, the cache is emptied: what it missed is unknown.
async fn listen(pg: tokio_postgres::Config, cache: Weak<Inner>) {
    let mut delay = LISTEN_RETRY_MIN;
    loop {
        let connected = RevocationListener::connect(&pg).await;
        let Some(inner) = cache.upgrade() else {
            return;
        };
        match connected {
            Ok(listener) => {
                delay = LISTEN_RETRY_MIN;
                let store = inner.store.clone();
                // Hold only a weak handle while waiting, so the cache can go.
                drop(inner);
                if !serve(listener, &store, &cache).await {
                    return;
                }
                tracing::warn!("revocation LISTEN connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "revocation LISTEN connection failed");
            }
        }
        if let Some(inner) = cache.upgrade() {
            inner.stop_trusting();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTEN_RETRY_MAX);
    }
}

/// Applies notifications until the connection ends (true) or the cache is
/// gone (false).
async fn serve(mut listener: RevocationListener, store: &Store, cache: &Weak<Inner>) -> bool {
    let nonce = Uuid::new_v4().to_string();
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pings sent since the last one heard back.
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            what = listener.next() => {
                let Some(what) = what else {
                    return true;
                };
                let Some(inner) = cache.upgrade() else {
                    return false;
                };
                match what {
                    Revoked::User(user) => inner.forget(user),
                    Revoked::Ping(n) if n == nonce => {
                        unanswered = 0;
                        if !inner.listening.load(Ordering::SeqCst) {
                            inner.forget_all();
                            inner.listening.store(true, Ordering::SeqCst);
                        }
                    }
                    Revoked::Ping(_) => {}
                    Revoked::Unknown => inner.forget_all(),
                }
            }
            _ = ticks.tick() => {
                if cache.strong_count() == 0 {
                    return false;
                }
                if unanswered > 0 {
                    if let Some(inner) = cache.upgrade() {
                        if inner.listening.load(Ordering::SeqCst) {
                            tracing::warn!("revocation notifications stopped arriving; cache off");
                        }
                        inner.stop_trusting();
                    }
                }
                unanswered = unanswered.saturating_add(1);
                if let Err(e) = store.ping_revocation_listeners(&nonce).await {
                    tracing::debug!(error = %e, "revocation heartbeat failed");
                }
            }
        }
    }
}
