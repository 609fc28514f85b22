//! What a code check's outcome means to the client: the error for each way a
//! code can fail, shared by the account routes and the login flows.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::otp::Unusable;
use crate::error::{AppError, GoneReason};
use crate::store::otp::CheckOutcome;

/// Maps a failed check to the error the client sees.
pub fn check_failure(outcome: CheckOutcome, now: DateTime<Utc>) -> AppError {
    match outcome {
        CheckOutcome::Accepted => AppError::internal("accepted code mapped to a failure"),
        CheckOutcome::Rejected { attempts_left } => AppError::InvalidCode { attempts_left },
        CheckOutcome::NoCode => AppError::NoActiveCode,
        CheckOutcome::Locked { until, .. } => AppError::CodeEntryLocked {
            retry_after: (until - now)
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(1)),
        },
        CheckOutcome::Unusable(facts) => match crate::domain::otp::usable(&facts, now) {
            Err(Unusable::Expired) => AppError::Gone(GoneReason::CodeExpired),
            Err(Unusable::Used) => AppError::Gone(GoneReason::CodeUsed),
            Err(Unusable::Exhausted) => AppError::Gone(GoneReason::CodeAttemptsExhausted),
            Err(Unusable::Superseded) => AppError::Gone(GoneReason::CodeSuperseded),
            // Changed under us to a usable state: ask the client to retry.
            Ok(()) => AppError::Unavailable("code changed concurrently; retry".into()),
        },
    }
}

/// Logs the wrong code that locked code entry for the account (its
/// `locked_out` event was written by the check's own statement).
pub fn code_lock_started(user_id: Uuid, outcome: CheckOutcome) {
    if let CheckOutcome::Locked {
        until,
        by_this_try: true,
    } = outcome
    {
        tracing::warn!(%user_id, %until, "code entry locked after too many wrong codes");
    }
}
