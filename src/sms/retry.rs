//! The SMS retry policy, as pure functions: no clock, randomness or IO comes in
//! except as arguments, so the rules are tested directly (and by proptest).
//!
//! - [`classify`]: what a failed attempt means: permanent (give up, keep the
//!   provider's code) or transient (try again, perhaps not before `Retry-After`).
//! - [`backoff`]: exponential growth from a base, capped, with full jitter
//!   (a uniform draw between zero and the exponential ceiling), never sooner than
//!   `Retry-After`.
//! - [`decide`]: the next step for a message after an attempt: retry at a time,
//!   fail, or drop it because its content will have expired before the retry.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{NetworkFailure, SendOutcome};

/// Twilio's "too many requests" code: transient even when the HTTP status says otherwise.
pub const TWILIO_TOO_MANY_REQUESTS: i32 = 20429;
/// Twilio's "authentication failed": a misconfiguration, never fixed by retrying.
pub const TWILIO_AUTH_FAILED: i32 = 20003;

/// A `Retry-After` longer than this is treated as this: a confused or hostile
/// answer must not park a message for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What a failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retrying cannot help (invalid or unreachable number, unsubscribed
    /// recipient, bad credentials): give up with the provider's code.
    Permanent { code: Option<i32> },
    /// Worth trying again, not before `retry_after` when the provider said so.
    Transient { retry_after: Option<Duration> },
}

/// The tuning, from `SmsConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
}

/// The next step for a message whose attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry {
        at: DateTime<Utc>,
    },
    Fail {
        code: Option<i32>,
        reason: FailReason,
    },
    /// The content expires before the retry could go: drop it unsent.
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Permanent,
    OutOfAttempts,
}

/// Classifies an attempt that did not succeed. `Accepted` is not a failure; it is
/// classified transient only to keep the function total (callers never ask).
pub fn classify(outcome: &SendOutcome) -> Class {
    match outcome {
        SendOutcome::Accepted { .. } => Class::Transient { retry_after: None },
        SendOutcome::Rejected {
            http_status,
            code,
            retry_after,
        } => {
            let transient = *http_status == 429
                || *http_status == 408
                || *http_status >= 500
                || *code == Some(TWILIO_TOO_MANY_REQUESTS);
            if transient {
                Class::Transient {
                    retry_after: *retry_after,
                }
            } else {
                // Every other 4xx (21211 invalid number, 21408 region, 21610
                // unsubscribed, 21614 not mobile, 20003 credentials, 20404 wrong
                // account) will fail the same way next time.
                Class::Permanent { code: *code }
            }
        }
        SendOutcome::Network(
            NetworkFailure::Connect | NetworkFailure::Timeout | NetworkFailure::Other,
        ) => Class::Transient { retry_after: None },
    }
}

/// The wait before retry number `attempt` (1 = the wait after the first attempt).
/// `jitter` is a uniform draw from [0, 1).
pub fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let ceiling = ceiling(policy, attempt);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let drawn = ceiling.mul_f64(jitter);
    match retry_after {
        Some(ra) => drawn.max(ra.min(MAX_RETRY_AFTER)),
        None => drawn,
    }
}

/// The exponential ceiling: `base * 2^(attempt-1)`, capped at `max`.
pub fn ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    policy
        .base
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(policy.max)
        .min(policy.max)
}

/// What to do after a failed attempt. `attempts` counts the attempts made so far,
/// this one included.
pub fn decide(
    policy: &RetryPolicy,
    class: Class,
    attempts: u32,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    jitter: f64,
) -> Decision {
    let retry_after = match class {
        Class::Permanent { code } => {
            return Decision::Fail {
                code,
                reason: FailReason::Permanent,
            }
        }
        Class::Transient { retry_after } => retry_after,
    };
    if attempts >= policy.max_attempts {
        return Decision::Fail {
            code: None,
            reason: FailReason::OutOfAttempts,
        };
    }
    let wait = backoff(policy, attempts, retry_after, jitter);
    let at = crate::clock::after(now, wait);
    match expires_at {
        Some(exp) if at >= exp => Decision::Expire,
        _ => Decision::Retry { at },
    }
}

/// Whether content valid until `expires_at` is useless at `now`.
pub fn is_expired(now: DateTime<Utc>, expires_at: Option<DateTime<Utc>>) -> bool {
    expires_at.is_some_and(|exp| exp <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts: 8,
        }
    }

    fn rejected(http_status: u16, code: Option<i32>) -> SendOutcome {
        SendOutcome::Rejected {
            http_status,
            code,
            retry_after: None,
        }
    }

    #[test]
    fn contract_table_is_honoured() {
        for code in [21211, 21408, 21610, 21614] {
            assert_eq!(
                classify(&rejected(400, Some(code))),
                Class::Permanent { code: Some(code) }
            );
        }
        assert_eq!(
            classify(&rejected(401, Some(20003))),
            Class::Permanent { code: Some(20003) }
        );
        let ra = SendOutcome::Rejected {
            http_status: 429,
            code: Some(20429),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            classify(&ra),
            Class::Transient {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for status in [500, 502, 503, 504] {
            assert!(matches!(
                classify(&rejected(status, None)),
                Class::Transient { .. }
            ));
        }
        for f in [
            NetworkFailure::Connect,
            NetworkFailure::Timeout,
            NetworkFailure::Other,
        ] {
            assert!(matches!(
                classify(&SendOutcome::Network(f)),
                Class::Transient { .. }
            ));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(ceiling(&p, 1), Duration::from_secs(1));
        assert_eq!(ceiling(&p, 2), Duration::from_secs(2));
        assert_eq!(ceiling(&p, 5), Duration::from_secs(16));
        assert_eq!(ceiling(&p, 20), Duration::from_secs(300));
        assert_eq!(ceiling(&p, u32::MAX), Duration::from_secs(300));
        // Full jitter: the draw scales the ceiling.
        assert_eq!(backoff(&p, 3, None, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(&p, 3, None, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        let ra = Some(Duration::from_secs(30));
        assert_eq!(backoff(&p, 1, ra, 0.9), Duration::from_secs(30));
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(999_999)), 0.1),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn permanent_fails_at_once_and_attempts_run_out() {
        let now = Utc::now();
        let p = policy();
        assert_eq!(
            decide(
                &p,
                Class::Permanent { code: Some(21211) },
                1,
                now,
                None,
                0.3
            ),
            Decision::Fail {
                code: Some(21211),
                reason: FailReason::Permanent
            }
        );
        let t = Class::Transient { retry_after: None };
        assert!(matches!(
            decide(&p, t, 7, now, None, 0.3),
            Decision::Retry { .. }
        ));
        assert_eq!(
            decide(&p, t, 8, now, None, 0.3),
            Decision::Fail {
                code: None,
                reason: FailReason::OutOfAttempts
            }
        );
    }

    #[test]
    fn a_retry_past_expiry_drops_the_message() {
        let now = Utc::now();
        let p = policy();
        let t = Class::Transient {
            retry_after: Some(Duration::from_secs(60)),
        };
        let soon = Some(now + chrono::Duration::seconds(30));
        assert_eq!(decide(&p, t, 1, now, soon, 0.0), Decision::Expire);
        let later = Some(now + chrono::Duration::seconds(600));
        assert!(matches!(
            decide(&p, t, 1, now, later, 0.0),
            Decision::Retry { .. }
        ));
        assert!(is_expired(now, Some(now)));
        assert!(!is_expired(now, None));
    }

    fn any_policy() -> impl Strategy<Value = RetryPolicy> {
        (1u64..5_000, 1u64..600_000, 1u32..50).prop_map(|(base, max, n)| RetryPolicy {
            base: Duration::from_millis(base),
            max: Duration::from_millis(max.max(base)),
            max_attempts: n,
        })
    }

    fn any_outcome() -> impl Strategy<Value = SendOutcome> {
        prop_oneof![
            (
                400u16..600,
                proptest::option::of(20000i32..40000),
                proptest::option::of(0u64..10_000)
            )
                .prop_map(|(s, c, ra)| SendOutcome::Rejected {
                    http_status: s,
                    code: c,
                    retry_after: ra.map(Duration::from_secs),
                }),
            prop_oneof![
                Just(NetworkFailure::Connect),
                Just(NetworkFailure::Timeout),
                Just(NetworkFailure::Other)
            ]
            .prop_map(SendOutcome::Network),
        ]
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(
            p in any_policy(),
            attempt in 0u32..200,
            ra in proptest::option::of(0u64..100_000),
            jitter in 0.0f64..1.0,
        ) {
            let ra = ra.map(Duration::from_secs);
            let wait = backoff(&p, attempt, ra, jitter);
            let floor = ra.map(|r| r.min(MAX_RETRY_AFTER)).unwrap_or(Duration::ZERO);
            prop_assert!(wait >= floor);
            prop_assert!(wait <= p.max.max(floor));
            prop_assert!(wait <= ceiling(&p, attempt).max(floor));
        }

        #[test]
        fn ceiling_never_shrinks(p in any_policy(), attempt in 0u32..200) {
            prop_assert!(ceiling(&p, attempt) <= ceiling(&p, attempt + 1));
            prop_assert!(ceiling(&p, attempt) >= p.base.min(p.max));
        }

        #[test]
        fn decisions_obey_the_rules(
            p in any_policy(),
            outcome in any_outcome(),
            attempts in 1u32..60,
            exp_in in proptest::option::of(-100i64..100_000),
            jitter in 0.0f64..1.0,
        ) {
            let now = Utc::now();
            let expires_at = exp_in.map(|s| now + chrono::Duration::seconds(s));
            let class = classify(&outcome);
            match decide(&p, class, attempts, now, expires_at, jitter) {
                Decision::Retry { at } => {
                    let transient = matches!(class, Class::Transient { .. });
                    prop_assert!(transient);
                    prop_assert!(attempts < p.max_attempts);
                    prop_assert!(at >= now);
                    if let Some(exp) = expires_at { prop_assert!(at < exp); }
                    if let Class::Transient { retry_after: Some(ra) } = class {
                        let ra = chrono::Duration::from_std(ra.min(MAX_RETRY_AFTER)).unwrap();
                        prop_assert!(at >= now + ra);
                    }
                }
                Decision::Fail { reason: FailReason::Permanent, code } => {
                    prop_assert_eq!(class, Class::Permanent { code });
                }
                Decision::Fail { reason: FailReason::OutOfAttempts, .. } => {
                    prop_assert!(attempts >= p.max_attempts);
                }
                Decision::Expire => prop_assert!(expires_at.is_some()),
            }
            // 4xx other than 408/429/20429 never retries.
            if let SendOutcome::Rejected { http_status, code, .. } = outcome {
                if (400..500).contains(&http_status)
                    && http_status != 408 && http_status != 429
                    && code != Some(TWILIO_TOO_MANY_REQUESTS)
                {
                    let permanent = matches!(class, Class::Permanent { .. });
                    prop_assert!(permanent, "{}", http_status);
                }
            }
        }
    }
}
