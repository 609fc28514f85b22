//! Persistence: the only module that speaks SQL. It stores and queries; business
//! rules live in `domain/` and the actors. Every statement uses `$n` parameters.
//!
//! Rules that must hold across several authgate processes (uniqueness, attempt
//! counts, single use) are expressed here as single atomic statements or
//! constraints, never as read-then-write in Rust.
//!
//! Two PostgreSQL features a PostgreSQL-compatible distributed SQL engine may
//! lack are used only through this module's switches: advisory locks
//! ([`LockMode`]: `AUTHGATE_LOCKS=rows` takes a row lock in `lock_rows`
//! instead) and `NOTIFY` ([`Store::with_coordination`]'s `notify`: off with
//! `DATABASE_LISTEN_URL=off`, when nobody listens).

pub mod admin;
pub mod audit;
pub mod flows;
pub mod keyring;
pub mod lifecycle;
pub mod logins;
mod migrations;
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
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use crate::error::{AppError, BoxError};

/// Arbitrary but fixed: serialises migrations when several processes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x6175_7468_6761_7465; // "authgate"

/// The lock table of `AUTHGATE_LOCKS=rows`, exactly as `V21__lock_rows.sql`
/// creates it (a unit test holds the two together). In rows mode it is
/// created before migrating too: the migration lock is one of its rows.
const LOCK_ROWS_DDL: &str = "CREATE TABLE IF NOT EXISTS lock_rows (
    key bigint PRIMARY KEY,
    touched_at timestamptz NOT NULL DEFAULT now()
)";

/// How the store serialises work that must not run twice at once across
/// processes (`AUTHGATE_LOCKS`): key ring changes, issuing a code for one
/// (user, purpose), migrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LockMode {
    /// PostgreSQL advisory locks (`pg_advisory_xact_lock`, and the session
    /// lock `pg_advisory_lock` around migrations): no table, no writes.
    #[default]
    Advisory,
    /// A row lock on `lock_rows` (one upsert; held until the transaction
    /// ends), for engines without advisory locks. Costs a write per lock.
    Rows,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Advisory => "advisory",
            LockMode::Rows => "rows",
        }
    }

    /// The one statement that takes a transaction lock on `key` (`$1`).
    fn xact_sql(self, key: &LockKey<'_>) -> &'static str {
        match (self, key) {
            (LockMode::Advisory, LockKey::Id(_)) => "SELECT pg_advisory_xact_lock($1)",
            (LockMode::Advisory, LockKey::Hashed(_)) => {
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
            }
            // ON CONFLICT DO UPDATE locks the existing row (waiting for a
            // holder to commit or roll back) or inserts it (a concurrent
            // inserter waits on the new row): either way the row stays
            // locked until this transaction ends, like the advisory lock.
            (LockMode::Rows, LockKey::Id(_)) => {
                "INSERT INTO lock_rows (key) VALUES ($1)
                 ON CONFLICT (key) DO UPDATE SET touched_at = now()"
            }
            (LockMode::Rows, LockKey::Hashed(_)) => {
                "INSERT INTO lock_rows (key) VALUES (hashtextextended($1, 0))
                 ON CONFLICT (key) DO UPDATE SET touched_at = now()"
            }
        }
    }
}

impl std::str::FromStr for LockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "advisory" => Ok(LockMode::Advisory),
            "rows" => Ok(LockMode::Rows),
            _ => Err(format!("`{s}` is not one of: advisory, rows")),
        }
    }
}

/// What a transaction lock is taken on: a fixed number, or a text hashed by
/// PostgreSQL (`hashtextextended`) in the locking statement itself.
pub(crate) enum LockKey<'a> {
    Id(i64),
    Hashed(&'a str),
}

impl LockKey<'_> {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            LockKey::Id(id) => id,
            LockKey::Hashed(text) => text,
        }
    }
}

/// A prepared transaction lock: [`XactLock::take`] sends it. Separate from
/// preparing so a caller can pipeline it with the statement it guards (both
/// sent at once, run in order) without a round trip between them.
pub(crate) struct XactLock<'a> {
    statement: tokio_postgres::Statement,
    key: LockKey<'a>,
}

impl XactLock<'_> {
    pub async fn take(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        tx.execute(&self.statement, &[self.key.param()]).await?;
        Ok(())
    }
}

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

/// How a server error's SQLSTATE is answered (see `From<tokio_postgres::Error>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Unique,
    Unavailable,
    Database,
}

fn class_of(code: &SqlState) -> ErrorClass {
    if *code == SqlState::UNIQUE_VIOLATION {
        return ErrorClass::Unique;
    }
    // Retryable, and not the request's fault: 25006 is a write reaching a
    // read-only server (a demoted leader or a replica, during a failover or
    // through a pooler that still points at the old leader); 40001 and 40P01
    // are a distributed SQL engine's (or SERIALIZABLE PostgreSQL's) way of
    // refusing one of two conflicting transactions, which a retry passes.
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        return ErrorClass::Unavailable;
    }
    // Server shutting down, too many connections, and similar: retryable.
    match &code.code()[..2] {
        "08" | "53" | "57" => ErrorClass::Unavailable,
        _ => ErrorClass::Database,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return match class_of(db.code()) {
                ErrorClass::Unique => {
                    StoreError::Unique(db.constraint().unwrap_or_default().to_owned())
                }
                ErrorClass::Unavailable => StoreError::Unavailable(Box::new(e)),
                ErrorClass::Database => StoreError::Database(Box::new(e)),
            };
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
    /// The pool's settings: rows-mode migrations hold their lock on a
    /// connection of their own.
    pg: std::sync::Arc<tokio_postgres::Config>,
    locks: LockMode,
    /// Whether statements send `NOTIFY` (off when no process listens).
    notify: bool,
}

impl Store {
    /// Builds the pool. No connection is opened until first use.
    pub fn connect(
        pg: tokio_postgres::Config,
        size: usize,
        timeout: Duration,
    ) -> Result<Store, BoxError> {
        let manager = Manager::from_config(
            pg.clone(),
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
            pg: std::sync::Arc::new(pg),
            locks: LockMode::Advisory,
            notify: true,
        })
    }

    /// How this store locks (`AUTHGATE_LOCKS`) and whether it sends `NOTIFY`
    /// (false with `DATABASE_LISTEN_URL=off`). `connect` gives advisory locks
    /// and notifications, as before either switch existed.
    pub fn with_coordination(mut self, locks: LockMode, notify: bool) -> Store {
        self.locks = locks;
        self.notify = notify;
        self
    }

    pub fn lock_mode(&self) -> LockMode {
        self.locks
    }

    /// `channel` when this store sends notifications, else None: bound as a
    /// statement's channel parameter, NULL makes the statement skip its
    /// `pg_notify` (guarded by `WHERE $n::text IS NOT NULL`).
    pub(crate) fn notify_channel(&self, channel: &'static str) -> Option<&'static str> {
        self.notify.then_some(channel)
    }

    /// Prepares the transaction lock on `key` in this store's [`LockMode`].
    pub(crate) async fn prepare_lock<'k>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: LockKey<'k>,
    ) -> Result<XactLock<'k>, StoreError> {
        let statement = tx.prepare_cached(self.locks.xact_sql(&key)).await?;
        Ok(XactLock { statement, key })
    }

    /// Takes the transaction lock on `key`: held until `tx` ends.
    pub(crate) async fn lock_xact(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: LockKey<'_>,
    ) -> Result<(), StoreError> {
        self.prepare_lock(tx, key).await?.take(tx).await
    }

    /// A pooled connection (store modules; tests that drive store calls directly).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let _ = CHECKOUTS.try_with(|n| n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Ok(self.pool.get().await?)
    }

    /// Applies pending migrations, holding a lock so that processes starting
    /// together do not race each other.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        match self.locks {
            LockMode::Advisory => self.migrate_advisory().await,
            LockMode::Rows => self.migrate_rows().await,
        }
    }

    /// Migrates under a session advisory lock on the migrating connection.
    async fn migrate_advisory(&self) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = run_migrations(&mut client).await;
        // Unlock even when the migration failed; a broken connection drops the lock anyway.
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await;
        result
    }

    /// Migrates while a transaction on a second connection holds the
    /// migration key's row in `lock_rows`. Migrations run their own
    /// transactions, so the lock cannot live on the migrating connection; the
    /// table is created first, outside the migrations, since V21 has not run
    /// on a fresh database. If the holding connection breaks mid-migration the
    /// lock is gone; refinery's history table still refuses to apply one
    /// version twice, so the worst case is a failed start, not a double apply.
    async fn migrate_rows(&self) -> Result<usize, StoreError> {
        let mut holder = self.dedicated().await?;
        create_lock_table(&holder).await?;
        let lock = holder.transaction().await?;
        lock.execute(
            LockMode::Rows.xact_sql(&LockKey::Id(MIGRATION_LOCK_KEY)),
            &[&MIGRATION_LOCK_KEY],
        )
        .await?;
        let mut client = self.client().await?;
        let result = run_migrations(&mut client).await;
        // Ends the transaction, releasing the row; a broken connection does too.
        let _ = lock.rollback().await;
        result
    }

    /// A connection outside the pool, driven on this runtime until dropped.
    async fn dedicated(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self.pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
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
        if self.locks == LockMode::Rows {
            // Lock rows only exist to be locked: one not held can always go
            // (the next lock inserts it again), and one held is skipped, not
            // waited for. Not counted: they are no finished codes or tokens.
            client
                .execute(
                    "DELETE FROM lock_rows WHERE key IN (
                         SELECT key FROM lock_rows WHERE touched_at < $1
                         FOR UPDATE SKIP LOCKED)",
                    &[&cutoff],
                )
                .await?;
        }
        Ok(codes + tokens + flows)
    }
}

async fn run_migrations(client: &mut deadpool_postgres::Object) -> Result<usize, StoreError> {
    migrations::runner()
        .map_err(|e| StoreError::Database(Box::new(e)))?
        .run_async(&mut ***client)
        .await
        .map(|report| report.applied_migrations().len())
        .map_err(|e| StoreError::Database(Box::new(e)))
}

/// `CREATE TABLE IF NOT EXISTS` is not safe against itself: two processes
/// creating the table at once can both pass the check, and the loser fails on
/// the catalog's unique index (23505), as a duplicate table (42P07), or on
/// the table's row type, which is created first (42710, "type already
/// exists"). Each means the table now exists.
async fn create_lock_table(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    match client.batch_execute(LOCK_ROWS_DDL).await {
        Ok(()) => Ok(()),
        Err(e) if e.code().is_some_and(lost_a_creation_race) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The errors of a `CREATE … IF NOT EXISTS` that another session's identical
/// statement beat to the catalog.
fn lost_a_creation_race(code: &SqlState) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
    ]
    .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_a_create_if_not_exists_race_counts_as_created() {
        for code in ["23505", "42P07", "42710"] {
            assert!(lost_a_creation_race(&SqlState::from_code(code)), "{code}");
        }
        for code in ["42P01", "40001", "53300"] {
            assert!(!lost_a_creation_race(&SqlState::from_code(code)), "{code}");
        }
    }

    #[test]
    fn failover_and_conflict_errors_are_unavailable() {
        for code in [
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert_eq!(class_of(&code), ErrorClass::Unavailable, "{}", code.code());
        }
        assert_eq!(class_of(&SqlState::UNIQUE_VIOLATION), ErrorClass::Unique);
        for code in [
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::from_code("25001"), // active_sql_transaction: a bug, not a failover
        ] {
            assert_eq!(class_of(&code), ErrorClass::Database, "{}", code.code());
        }
    }

    #[test]
    fn lock_modes_parse_and_name_their_statements() {
        assert_eq!("rows".parse::<LockMode>(), Ok(LockMode::Rows));
        assert_eq!("Advisory".parse::<LockMode>(), Ok(LockMode::Advisory));
        assert!("row".parse::<LockMode>().is_err());
        let hashed = LockKey::Hashed("otp:x");
        assert!(LockMode::Advisory
            .xact_sql(&hashed)
            .contains("pg_advisory_xact_lock(hashtextextended($1, 0))"));
        let rows = LockMode::Rows.xact_sql(&hashed);
        assert!(rows.contains("hashtextextended($1, 0)") && rows.contains("lock_rows"));
        assert!(!LockMode::Rows
            .xact_sql(&LockKey::Id(1))
            .contains("advisory"));
    }

    #[test]
    fn the_pre_migration_lock_table_is_the_one_v21_creates() {
        let v21 = include_str!("../../migrations/V21__lock_rows.sql");
        assert!(
            v21.contains(LOCK_ROWS_DDL),
            "V21 and LOCK_ROWS_DDL must create the same table"
        );
    }
}
