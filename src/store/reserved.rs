//! What this process reserves from PostgreSQL ahead of use, so the issue path
//! does not touch a row every other sender touches too:
//!
//! - **Blocks of shared quotas.** The global per-minute SMS ceiling and the
//!   per-region hourly ones are counted by every send in the cluster. Counted
//!   inline, their one counter row would be locked from each send's upsert to
//!   its commit, and every sender in every process would queue on it. Instead a
//!   process takes a block of units with one short statement of its own (never
//!   past the ceiling: the grant is computed against the row's latest count
//!   under its lock) and hands units out locally. A send uses a unit only if it
//!   commits; units it could not use go back to the local block, and blocks
//!   nobody used for [`HOLD`] are returned to the row, so other processes can
//!   have them. A unit never outlives its window: a block taken in one window
//!   is dropped when the next begins (what it did not use stays counted there,
//!   which can only refuse, never admit, a send too many).
//! - **Outbox ids.** A message's seal authenticates its row id, so the id must
//!   be known before the row is written; ids come from the sequence in blocks.
//!
//! So the sum over processes of units taken is the counter, and units used are
//! at most units taken: the ceiling holds exactly across processes, and a
//! crash can only waste units, never admit more.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::quotas::{self, Quota};
use super::{Store, StoreError};

/// Unused units of a block go back to the counter after this long unused.
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(500);
/// The most units one block statement takes.
const MAX_BLOCK: i32 = 64;
/// Outbox ids drawn per statement.
const ID_BLOCK: i64 = 32;

/// The largest block for a ceiling: small ceilings go one unit at a time (so
/// a process never sits on a share others could use), large ones in blocks.
pub fn block_size(limit: i32) -> i32 {
    (limit / 64).clamp(1, MAX_BLOCK)
}

/// How many units to take when `room` units are left under the ceiling: at
/// most a block, and at most a quarter of the room (at least one), so a few
/// processes near the ceiling do not strand it in their blocks. None: no room.
pub fn grant_for(room: f64, block: i32) -> Option<i32> {
    let whole = room.floor();
    if whole < 1.0 {
        return None;
    }
    let quarter = (room / 4.0).floor().max(1.0);
    Some(whole.min(quarter).min(f64::from(block)) as i32)
}

struct Block {
    window: chrono::Duration,
    window_start: DateTime<Utc>,
    /// The previous window's final count, read once per window.
    previous: i32,
    units: i32,
    used_at: Instant,
}

/// A unit of a shared quota taken for one send: [`Store::release_unit`] it
/// if the send does not commit.
#[derive(Debug)]
pub struct Unit {
    quota: Quota,
    window_start: DateTime<Utc>,
}

/// Why a shared quota refused: which, and when a unit may be free again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRefusal {
    pub key: String,
    pub retry_after: DateTime<Utc>,
}

/// This process's reservations (one per `Store`, shared by its clones).
#[derive(Default)]
pub struct Reserved {
    blocks: Mutex<HashMap<String, Block>>,
    ids: Mutex<VecDeque<i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reserved {
    /// A unit from this process's block for `q`'s current window, if any.
    fn take_local(&self, key: &str, window_start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut blocks = lock(&self.blocks);
        let b = blocks.get_mut(key)?;
        if b.window_start != window_start || b.units == 0 {
            return None;
        }
        b.units -= 1;
        b.used_at = Instant::now();
        Some(window_start)
    }

    /// The previous window's count, if this process already read it.
    fn previous(&self, key: &str, window_start: DateTime<Utc>) -> Option<i32> {
        lock(&self.blocks)
            .get(key)
            .filter(|b| b.window_start == window_start)
            .map(|b| b.previous)
    }

    /// Adds units taken from the database to the local block. A unit of a
    /// window that has passed is dropped.
    fn add(&self, q: &Quota, window_start: DateTime<Utc>, previous: Option<i32>, units: i32) {
        let mut blocks = lock(&self.blocks);
        let fresh = |previous: Option<i32>| Block {
            window: q.window,
            window_start,
            previous: previous.unwrap_or(0),
            units: 0,
            used_at: Instant::now(),
        };
        let b = blocks
            .entry(q.key.clone())
            .or_insert_with(|| fresh(previous));
        if b.window_start > window_start {
            return;
        }
        if b.window_start < window_start {
            // A new window: what the old block kept stays counted there.
            *b = fresh(previous);
        }
        b.units += units;
        b.used_at = Instant::now();
    }

    /// Units held locally per key (tests, metrics).
    pub fn held(&self, key: &str) -> i32 {
        lock(&self.blocks).get(key).map_or(0, |b| b.units)
    }

    /// Blocks to give back: unused for `HOLD`, still in their window.
    fn idle(&self, now: DateTime<Utc>) -> Vec<Returned> {
        let mut blocks = lock(&self.blocks);
        let mut out = Vec::new();
        blocks.retain(|key, b| {
            if b.window_start != quotas::window_start(now, b.window) {
                // Past its window: nothing to return, nothing to keep.
                return false;
            }
            if b.units > 0 && b.used_at.elapsed() >= HOLD {
                out.push(Returned {
                    key: key.clone(),
                    window_start: b.window_start,
                    units: std::mem::take(&mut b.units),
                });
            }
            true
        });
        out
    }
}

/// Units to return to one counter row.
struct Returned {
    key: String,
    window_start: DateTime<Utc>,
    units: i32,
}

/// A counter row's count (0 when there is none).
async fn counted<C: GenericClient>(
    client: &C,
    key: &str,
    window_start: DateTime<Utc>,
) -> Result<i32, StoreError> {
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT count FROM quota_counters WHERE key = $1 AND window_start = $2",
                )
                .await?,
            &[&key, &window_start],
        )
        .await?;
    Ok(row
        .map(|r| r.try_get::<_, i32>(0))
        .transpose()?
        .unwrap_or(0))
}

impl Store {
    /// Takes one unit of the shared quota `q` for a send at `now`: from this
    /// process's block, or a new block from the counter row (one statement,
    /// committed on its own so the row is locked for that statement only).
    pub async fn take_unit<C: GenericClient>(
        &self,
        client: &C,
        q: &Quota,
        now: DateTime<Utc>,
    ) -> Result<Result<Unit, SharedRefusal>, StoreError> {
        let quotas::Windows {
            start,
            previous_start,
            expires_at,
        } = q.windows(now);
        if self.reserved.take_local(&q.key, start).is_some() {
            return Ok(Ok(Unit {
                quota: q.clone(),
                window_start: start,
            }));
        }
        let previous = match self.reserved.previous(&q.key, start) {
            Some(p) => p,
            // The previous window is closed: its count no longer changes.
            None => counted(client, &q.key, previous_start).await?,
        };
        let fraction = quotas::elapsed_fraction(now, start, q.window);
        // The sliding estimate's room before this window's own count.
        let room = f64::from(q.limit) - f64::from(previous) * (1.0 - fraction);
        let block = block_size(q.limit);
        // The grant is `grant_for` evaluated in SQL against the row's latest
        // count, under the row lock the upsert takes. The statement commits
        // without waiting for its WAL flush (`synchronous_commit` off for this
        // transaction only): a send that uses the unit commits after it and
        // flushes the WAL up to its own record, this one included, so a unit
        // can only be lost in a crash together with the sends it was for,
        // which can never admit one too many.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH relaxed AS (
                             SELECT set_config('synchronous_commit', 'off', true)
                         ), g AS (
                             SELECT LEAST($5::int, GREATEST(1, floor($4::float8 / 4)), floor($4::float8))::int AS n
                         )
                         INSERT INTO quota_counters AS c (key, window_start, count, expires_at, last_grant)
                         SELECT $1, $2, g.n, $3, g.n FROM g, relaxed WHERE g.n >= 1
                         ON CONFLICT (key, window_start) DO UPDATE
                         SET count = c.count + LEAST($5::int, GREATEST(1, floor(($4::float8 - c.count) / 4)),
                                                     floor($4::float8 - c.count))::int,
                             last_grant = LEAST($5::int, GREATEST(1, floor(($4::float8 - c.count) / 4)),
                                                floor($4::float8 - c.count))::int
                         WHERE floor($4::float8 - c.count) >= 1
                         RETURNING c.last_grant",
                    )
                    .await?,
                &[&q.key, &start, &expires_at, &room, &block],
            )
            .await?;
        match row {
            Some(row) => {
                let granted: i32 = row.try_get(0)?;
                // One for this send, the rest for the next ones here.
                self.reserved.add(q, start, Some(previous), granted - 1);
                Ok(Ok(Unit {
                    quota: q.clone(),
                    window_start: start,
                }))
            }
            None => {
                self.reserved.add(q, start, Some(previous), 0);
                let current = counted(client, &q.key, start).await?;
                // As if this send had been counted and refused.
                let retry =
                    quotas::sliding_retry_at(previous, current + 1, q.limit, start, q.window);
                Ok(Err(SharedRefusal {
                    key: q.key.clone(),
                    retry_after: retry.max(now),
                }))
            }
        }
    }

    /// A unit whose send did not commit goes back to this process's block
    /// (while its window lasts).
    pub fn release_unit(&self, unit: Unit) {
        self.reserved.add(&unit.quota, unit.window_start, None, 1);
    }

    /// Returns blocks nobody here used for [`HOLD`] to their counter rows, so
    /// other processes can take them. Returns the units given back.
    pub async fn return_idle_units(&self, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let idle = self.reserved.idle(now);
        if idle.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let mut total = 0;
        for u in idle {
            client
                .execute(
                    &client
                        .prepare_cached(
                            "UPDATE quota_counters SET count = GREATEST(count - $3, 0)
                             WHERE key = $1 AND window_start = $2",
                        )
                        .await?,
                    &[&u.key, &u.window_start, &u.units],
                )
                .await?;
            total += i64::from(u.units);
        }
        Ok(total)
    }

    /// This process's unused units of `key` (tests).
    pub fn units_held(&self, key: &str) -> i32 {
        self.reserved.held(key)
    }

    /// The next outbox row id: from this process's block of the sequence.
    pub(super) async fn outbox_id<C: GenericClient>(&self, client: &C) -> Result<i64, StoreError> {
        if let Some(id) = lock(&self.reserved.ids).pop_front() {
            return Ok(id);
        }
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT nextval(pg_get_serial_sequence('sms_outbox', 'id'))
                         FROM generate_series(1, $1::bigint)",
                    )
                    .await?,
                &[&ID_BLOCK],
            )
            .await?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        let first = ids.remove(0);
        lock(&self.reserved.ids).extend(ids);
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ceilings_go_one_unit_at_a_time() {
        assert_eq!(block_size(30), 1);
        assert_eq!(block_size(60), 1);
        assert_eq!(block_size(1000), 15);
        assert_eq!(block_size(100_000_000), MAX_BLOCK);
    }

    #[test]
    fn a_grant_never_passes_the_room_and_leaves_some_for_others() {
        assert_eq!(grant_for(0.99, 64), None);
        assert_eq!(grant_for(-3.0, 64), None);
        assert_eq!(grant_for(1.0, 64), Some(1));
        assert_eq!(grant_for(3.5, 64), Some(1));
        assert_eq!(grant_for(10.0, 64), Some(2));
        assert_eq!(grant_for(1000.0, 64), Some(64));
        assert_eq!(grant_for(1000.0, 1), Some(1));
        for room in 0..500 {
            let r = f64::from(room) / 3.0;
            if let Some(g) = grant_for(r, 64) {
                assert!(f64::from(g) <= r && g >= 1, "room {r} grant {g}");
            }
        }
    }
}
