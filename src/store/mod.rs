//! Persistence: the only module that speaks SQL. It stores and queries; business
//! rules live in `domain/` and the actors. Every statement uses `$n` parameters.
//!
//! Rules that must hold across several authgate processes (uniqueness, attempt
//! counts, single use) are expressed here as single atomic statements or
//! constraints, never as read-then-write in Rust.

pub mod admin;
pub mod audit;
pub mod flows;
pub mod keyring;
pub mod lifecycle;
pub mod logins;
pub mod otp;
pub mod outbox;
pub mod private_pg;
pub mod purge;
pub mod quotas;
pub mod recovery;
pub mod reserved;
mod retry;
pub mod tokens;
pub mod users;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::error::{AppError, BoxError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary but fixed: serialises migrations when several processes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x6175_7468_6761_7465; // "authgate"

/// Why a store call failed, in terms the layers above can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique index refused the row; the index name says which.
    #[error("unique violation on {0}")]
    Unique(String),
    /// No connection could be had in time, or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or a schema mismatch.
    #[error("database error: {0}")]
    Database(#[source] BoxError),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            if *db.code() == SqlState::UNIQUE_VIOLATION {
                return StoreError::Unique(db.constraint().unwrap_or_default().to_owned());
            }
            // Server shutting down, too many connections, and similar: retryable.
            let class = &db.code().code()[..2];
            if matches!(class, "08" | "53" | "57") {
                return StoreError::Unavailable(Box::new(e));
            }
            return StoreError::Database(Box::new(e));
        }
        // No server error: the connection itself failed or closed.
        StoreError::Unavailable(Box::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            // Two accounts verifying one phone at once: the loser's statement
            // hits the verified-phone index; the guard would have said the same.
            StoreError::Unique(index) if index == "users_phone_verified_key" => {
                AppError::PhoneTaken
            }
            StoreError::Unique(index) => {
                AppError::internal(format!("unexpected unique violation on {index}"))
            }
            StoreError::Unavailable(e) => AppError::Unavailable(e),
            StoreError::Database(e) => AppError::Internal(e),
        }
    }
}

tokio::task_local! {
    /// Pool checkouts made by the task running [`count_checkouts`].
    static CHECKOUTS: std::sync::Arc<std::sync::atomic::AtomicUsize>;
}

/// Runs `work` and counts the connections it took from the pool, in any store
/// module (each store call takes one): how tests prove that two requests did
/// the same database work, without timing them. Other tasks are not counted.
pub async fn count_checkouts<F: std::future::Future>(work: F) -> (F::Output, usize) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = CHECKOUTS.scope(n.clone(), work).await;
    (out, n.load(std::sync::atomic::Ordering::Relaxed))
}

/// Handle to the database: a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Quota blocks and outbox ids this process took ahead of use.
    reserved: std::sync::Arc<reserved::Reserved>,
}

impl Store {
    /// Builds the pool. No connection is opened until first use.
    pub fn connect(
        pg: tokio_postgres::Config,
        size: usize,
        timeout: Duration,
    ) -> Result<Store, BoxError> {
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        Ok(Store {
            pool,
            reserved: Default::default(),
        })
    }

    /// A pooled connection (store modules; tests that drive store calls directly).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let _ = CHECKOUTS.try_with(|n| n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Ok(self.pool.get().await?)
    }

    /// Applies pending migrations, holding an advisory lock so that processes
    /// starting together do not race each other.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = embedded::migrations::runner()
            .run_async(&mut **client)
            .await
            .map(|report| report.applied_migrations().len())
            .map_err(|e| StoreError::Database(Box::new(e)));
        // Unlock even when the migration failed; a broken connection drops the lock anyway.
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await;
        result
    }

    /// True when a trivial query succeeds within the pool's timeout.
    pub async fn ping(&self) -> bool {
        match self.client().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Pool figures for readiness and metrics: (size, available).
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

impl Store {
    /// Housekeeping: deletes codes, login flows and refresh tokens that ended
    /// before `cutoff`. Returns the rows deleted.
    pub async fn purge(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let codes = self.purge_codes(cutoff).await?;
        let tokens = self.purge_refresh(cutoff).await?;
        let client = self.client().await?;
        let flows = client
            .execute("DELETE FROM login_flows WHERE purge_after < $1", &[&cutoff])
            .await?;
        Ok(codes + tokens + flows)
    }
}
