//! The one source of "now" for rules that depend on time (code expiry, cooldowns,
//! flow expiry). Production reads the system clock; tests move it forward instead
//! of sleeping. Times are passed into SQL as parameters, so the database applies
//! the same clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest span added to a time: far beyond any configured duration (at
/// most ten years, `config::MAX_DURATION`), far inside chrono's calendar.
const MAX_SPAN: chrono::Duration = chrono::Duration::days(1000 * 365);

/// A configured `Duration` as a span to add to a time, capped so `now + span`
/// can never overflow (and panic) whatever a caller passes in.
pub fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).map_or(MAX_SPAN, |s| s.min(MAX_SPAN))
}

/// `t + d`, saturating at the end of chrono's calendar instead of panicking.
pub fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(span(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock; only tests change it.
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_huge_duration_to_now_saturates_instead_of_panicking() {
        let now = Utc::now();
        for huge in [
            Duration::MAX,
            Duration::from_millis(u64::MAX),
            Duration::from_secs(1 << 50),
        ] {
            // `now + chrono::Duration::from_std(huge).unwrap_or(MAX)` panicked here.
            assert!(after(now, huge) > now + chrono::Duration::days(365 * 900));
            assert!(now.checked_add_signed(span(huge)).is_some());
        }
        assert_eq!(
            after(now, Duration::from_secs(60)),
            now + chrono::Duration::seconds(60)
        );
        assert_eq!(
            after(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
