//! Fixed-window quota counters in PostgreSQL. `take` increments every counter a
//! send is subject to, inside the caller's transaction: if any goes over its
//! limit the caller rolls back, undoing the increments, so a refused send costs
//! nothing and concurrent senders in any process see exact counts (the upsert
//! takes the counter's row lock).

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::GenericClient;

use super::StoreError;

/// One limit: at most `limit` per `window`, counted under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub key: String,
    pub window: chrono::Duration,
    pub limit: i32,
}

/// The start of the fixed window holding `now` (windows are aligned to the epoch).
pub fn window_start(now: DateTime<Utc>, window: chrono::Duration) -> DateTime<Utc> {
    let w = window.num_seconds().max(1);
    let start = now.timestamp().div_euclid(w) * w;
    Utc.timestamp_opt(start, 0).single().unwrap_or(now)
}

/// Counts one use against every quota. Returns the first quota exceeded and
/// when its window ends; the caller must then roll back.
pub async fn take<C: GenericClient>(
    client: &C,
    quotas: &[Quota],
    now: DateTime<Utc>,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    for q in quotas {
        let start = window_start(now, q.window);
        let end = start + q.window;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "INSERT INTO quota_counters (key, window_start, count, expires_at)
                 VALUES ($1, $2, 1, $3)
                 ON CONFLICT (key, window_start) DO UPDATE SET count = quota_counters.count + 1
                 RETURNING count",
                    )
                    .await?,
                &[&q.key, &start, &end],
            )
            .await?;
        let count: i32 = row.try_get(0)?;
        if count > q.limit {
            return Ok(Some((q.key.clone(), end)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_epoch() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 10, 42, 17).unwrap();
        let hour = chrono::Duration::hours(1);
        assert_eq!(
            window_start(t, hour),
            Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
        );
        assert_eq!(
            window_start(t, chrono::Duration::days(1)),
            Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap()
        );
        assert_eq!(
            window_start(t, chrono::Duration::minutes(1)).timestamp() % 60,
            0
        );
    }
}
