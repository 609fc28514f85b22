//! Quota counters in PostgreSQL, one row per key and fixed window, read as a
//! sliding window: a send is admitted while the previous window's count,
//! weighted by the part of it still inside a sliding window ending now, plus the
//! current window's count stays within the limit (the estimate Cloudflare
//! describes). Plain fixed windows let twice the limit through around a window
//! boundary (a burst at the end of one and again at the start of the next).
//!
//! `take` increments every counter a send is subject to, inside the caller's
//! transaction: if any goes over its limit the caller rolls back, undoing the
//! increments, so a refused send costs nothing and concurrent senders in any
//! process see exact counts (the upsert takes the counter's row lock; the
//! previous window is closed, so reading it needs no lock).

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

/// The fixed window of a quota holding one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub start: DateTime<Utc>,
    /// The window before, read (closed) by the sliding estimate.
    pub previous_start: DateTime<Utc>,
    /// When the counter row may go: kept through the next window, where it is
    /// the previous one.
    pub expires_at: DateTime<Utc>,
}

impl Quota {
    /// The window holding `now`.
    pub fn windows(&self, now: DateTime<Utc>) -> Windows {
        let start = window_start(now, self.window);
        Windows {
            start,
            previous_start: start - self.window,
            expires_at: start + self.window + self.window,
        }
    }
}

/// The start of the fixed window holding `now` (windows are aligned to the epoch).
pub fn window_start(now: DateTime<Utc>, window: chrono::Duration) -> DateTime<Utc> {
    let w = window.num_seconds().max(1);
    let start = now.timestamp().div_euclid(w) * w;
    Utc.timestamp_opt(start, 0).single().unwrap_or(now)
}

/// How far into its window `now` is, from 0 to just under 1.
pub(super) fn elapsed_fraction(
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    window: chrono::Duration,
) -> f64 {
    let w = window.num_milliseconds().max(1) as f64;
    ((now - start).num_milliseconds() as f64 / w).clamp(0.0, 1.0)
}

/// Whether a send is within the limit: `previous` sends in the last window
/// weighted by the share of it the sliding window still covers, plus `current`
/// (this send included).
pub fn sliding_admits(previous: i32, current: i32, fraction: f64, limit: i32) -> bool {
    f64::from(previous) * (1.0 - fraction) + f64::from(current) <= f64::from(limit)
}

/// When a refused send would be admitted, if nothing else is sent meanwhile.
/// `current` counts the refused send (which is rolled back).
pub fn sliding_retry_at(
    previous: i32,
    current: i32,
    limit: i32,
    start: DateTime<Utc>,
    window: chrono::Duration,
) -> DateTime<Utc> {
    let w = window.num_milliseconds().max(1) as f64;
    // A millisecond late rather than early, whatever the float rounding.
    let at = |fraction: f64| {
        let ms = (fraction.clamp(0.0, 1.0) * w).ceil() as i64 + 1;
        start + chrono::Duration::milliseconds(ms)
    };
    let (previous, current, limit) = (f64::from(previous), f64::from(current), f64::from(limit));
    if current <= limit && previous > 0.0 {
        // Room in this window once enough of the previous one has slid out.
        at(1.0 - (limit - current) / previous)
    } else {
        // This window is full: in the next, what was sent here is the previous
        // window, and a send needs its weighted count to leave room for one.
        let sent = (current - 1.0).max(1.0);
        at(1.0 - (limit - 1.0) / sent) + window
    }
}

/// Counts one use against every quota. Returns the first quota exceeded and
/// when a send would be admitted again; the caller must then roll back.
pub async fn take<C: GenericClient>(
    client: &C,
    quotas: &[Quota],
    now: DateTime<Utc>,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    for q in quotas {
        let Windows {
            start,
            previous_start,
            expires_at,
        } = q.windows(now);
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "WITH previous AS (
                             SELECT count FROM quota_counters WHERE key = $1 AND window_start = $4
                         )
                         INSERT INTO quota_counters (key, window_start, count, expires_at)
                         VALUES ($1, $2, 1, $3)
                         ON CONFLICT (key, window_start) DO UPDATE SET count = quota_counters.count + 1
                         RETURNING count, (SELECT previous.count FROM previous) AS previous",
                    )
                    .await?,
                &[&q.key, &start, &expires_at, &previous_start],
            )
            .await?;
        let current: i32 = row.try_get(0)?;
        let previous: Option<i32> = row.try_get(1)?;
        let previous = previous.unwrap_or(0);
        let fraction = elapsed_fraction(now, start, q.window);
        if !sliding_admits(previous, current, fraction, q.limit) {
            let retry = sliding_retry_at(previous, current, q.limit, start, q.window);
            return Ok(Some((q.key.clone(), retry.max(now))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// A fixed window admitted 10 at 10:59:59 and 10 more at 11:00:01; the
    /// estimate still counts nearly all of the first 10 a second later.
    #[test]
    fn a_burst_across_a_boundary_is_not_admitted_twice() {
        let limit = 10;
        let just_after = 1.0 / 3600.0;
        let admitted_after = (1..=limit)
            .take_while(|n| sliding_admits(limit, *n, just_after, limit))
            .count();
        assert_eq!(admitted_after, 0);
        // Half-way through the next window, half of the previous one has slid out.
        let admitted_half = (1..=limit)
            .take_while(|n| sliding_admits(limit, *n, 0.5, limit))
            .count();
        assert_eq!(admitted_half, 5);
        // With nothing before, the whole limit at once.
        assert!(sliding_admits(0, limit, 0.0, limit));
        assert!(!sliding_admits(0, limit + 1, 0.99, limit));
    }

    #[test]
    fn retry_at_is_when_the_estimate_leaves_room() {
        let start = Utc.with_ymd_and_hms(2026, 11, 27, 11, 0, 0).unwrap();
        let hour = chrono::Duration::hours(1);
        // 10 last hour, 1 now: room for the 2nd once 2 of the 10 slid out.
        let at = sliding_retry_at(10, 2, 10, start, hour);
        let ms = chrono::Duration::milliseconds(1);
        assert_eq!(at, start + chrono::Duration::minutes(12) + ms);
        // This hour is full (10 sent, the 11th refused): in the next hour, once
        // a tenth of these 10 slid out.
        let at = sliding_retry_at(0, 11, 10, start, hour);
        assert_eq!(at, start + hour + chrono::Duration::minutes(6) + ms);
    }

    proptest! {
        /// Over any stretch of one window, at most the limit (plus rounding of
        /// the estimate) passes: with sends admitted as the rule says, at every
        /// refusal the retry time really admits one.
        #[test]
        fn retry_at_admits(previous in 0i32..50, current in 1i32..60, limit in 1i32..40) {
            let start = Utc.with_ymd_and_hms(2026, 11, 27, 11, 0, 0).unwrap();
            let w = chrono::Duration::minutes(1);
            prop_assume!(!sliding_admits(previous, current, 0.0, limit));
            let at = sliding_retry_at(previous, current, limit, start, w);
            prop_assert!(at >= start);
            if at < start + w {
                let f = elapsed_fraction(at, start, w);
                prop_assert!(sliding_admits(previous, current, f, limit));
            } else {
                let next = start + w;
                let f = elapsed_fraction(at, next, w);
                prop_assert!(sliding_admits(current - 1, 1, f, limit));
            }
        }
    }
}
