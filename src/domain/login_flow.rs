//! The login flow as a pure state machine: password, then (with 2FA) an SMS code
//! or one of the account's recovery codes, then tokens.
//!
//! [`transition`] maps `(state, event, now, limits)` to the next state, the effects
//! the caller must carry out (send a code, issue tokens, write an audit record) and
//! the answer for the client. It owns the rules of a login (flow and code expiry,
//! wrong-code attempts, resend cooldown and cap, which step may follow which) and
//! nothing else: it does no IO, reads no clock (the caller passes `now`), draws no
//! randomness and never panics, so the `FlowActor` can run it, persist the state it
//! returns, and proptest can drive it directly.
//!
//! Illegal steps are values, not panics: a refused event returns the state
//! unchanged, no effects and a [`FlowError`]. Terminal states never change again.
//!
//! `now` may go backwards between calls (a flow may be continued on another
//! process whose clock lags): the machine never lets that extend a deadline, and
//! all time arithmetic saturates instead of overflowing, so absurd [`Limits`] are
//! harmless too.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The per-flow limits, taken from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wrong codes allowed per issued code; the last one locks the flow.
    pub max_code_attempts: u32,
    /// Codes that may be sent after the first one, so at most `1 + max_resends`
    /// SMS per flow: the cap on what one login can cost us in SMS.
    pub max_resends: u32,
    /// Minimum time between two codes of one flow, counted from the newest code.
    pub resend_cooldown: Duration,
    /// Validity of one code; always capped by the flow's own expiry.
    pub code_ttl: Duration,
    /// Validity of the whole flow from its start; resends never extend it.
    pub flow_ttl: Duration,
}

/// Where a login flow stands. Serialised (tagged by `state`) to persist a flow so
/// any authgate process can continue it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FlowState {
    /// Waiting for the caller to report the password check.
    PasswordPending {
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// Password was right and 2FA is on: waiting for the SMS code.
    OtpPending {
        created_at: DateTime<Utc>,
        /// Flow expiry, unchanged since [`start`].
        expires_at: DateTime<Utc>,
        /// When the newest code was sent; the resend cooldown counts from here.
        code_issued_at: DateTime<Utc>,
        /// Expiry of the newest code, never after `expires_at`.
        code_expires_at: DateTime<Utc>,
        /// Wrong tries left for the newest code; reset when a new code is sent.
        attempts_left: u32,
        /// Codes sent after the first one.
        resends: u32,
    },
    /// Tokens were issued. Terminal.
    Authenticated { at: DateTime<Utc> },
    /// Too many wrong codes. Terminal: a new login is needed.
    Locked { at: DateTime<Utc> },
    /// The flow outlived `flow_ttl`. Terminal.
    Expired { at: DateTime<Utc> },
    /// Wrong credentials. Terminal: a flow never gets a second password try, so
    /// password guessing costs one flow (and one argon2 verify) per guess.
    Rejected { at: DateTime<Utc> },
}

impl FlowState {
    /// True once the flow can never change again.
    pub fn is_terminal(&self) -> bool {
        match self {
            FlowState::PasswordPending { .. } | FlowState::OtpPending { .. } => false,
            FlowState::Authenticated { .. }
            | FlowState::Locked { .. }
            | FlowState::Expired { .. }
            | FlowState::Rejected { .. } => true,
        }
    }

    /// When a live flow expires; `None` for a terminal one (nothing left to expire,
    /// and the actor may stop).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            FlowState::PasswordPending { expires_at, .. }
            | FlowState::OtpPending { expires_at, .. } => Some(*expires_at),
            FlowState::Authenticated { .. }
            | FlowState::Locked { .. }
            | FlowState::Expired { .. }
            | FlowState::Rejected { .. } => None,
        }
    }
}

/// What happened to a flow, as reported by its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The caller verified the password (argon2, off the runtime) and looked up
    /// whether the user has 2FA on.
    PasswordChecked { ok: bool, two_fa: bool },
    /// The caller compared a submitted code with the newest issued one.
    CodeSubmitted { correct: bool },
    /// The caller tried to consume a recovery code of the account instead of
    /// the SMS code (`correct`: it was unused and is now used). A wrong one
    /// costs one of the flow's tries like a wrong SMS code; the SMS code's own
    /// expiry does not apply (a user without their phone never sees it).
    RecoveryCodeSubmitted { correct: bool },
    /// The client asked for a new code.
    ResendRequested,
    /// Time passed; lets the actor notice expiry without client input.
    Tick,
}

/// Authentication methods of a login, for the JWT `amr` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amr {
    /// Password only.
    Pwd,
    /// Password, then an SMS code.
    PwdSms,
    /// Password, then a recovery code: RFC 8176's `otp`, a one-time password
    /// (it proves the user holds something only they were shown, not the phone).
    PwdOtp,
}

impl Amr {
    /// The RFC 8176 method values, in the order they were used.
    pub fn as_strs(self) -> &'static [&'static str] {
        match self {
            Amr::Pwd => &["pwd"],
            Amr::PwdSms => &["pwd", "sms"],
            Amr::PwdOtp => &["pwd", "otp"],
        }
    }
}

/// Kinds of audit record a transition asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    LoginSucceeded,
    PasswordRejected,
    CodeSent,
    CodeRejected,
    FlowLocked,
    FlowExpired,
}

/// Work the caller must do after a transition, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Issue a new code (superseding any older one) and queue its SMS.
    SendCode,
    /// Issue access and refresh tokens with this `amr`.
    IssueTokens(Amr),
    /// Record an audit event.
    Audit(AuditKind),
}

/// The successful answer to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Logged in: hand out the tokens issued by [`Effect::IssueTokens`].
    Tokens(Amr),
    /// Password accepted, a code was sent.
    OtpRequired {
        code_expires_at: DateTime<Utc>,
        resend_after: DateTime<Utc>,
    },
    /// A new code was sent.
    CodeResent {
        code_expires_at: DateTime<Utc>,
        resend_after: DateTime<Utc>,
    },
    /// Nothing happened (a [`Event::Tick`] on a live flow).
    Unchanged,
}

/// Why an event was refused or ended the flow. Messages are safe to show clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid code, {attempts_left} attempt(s) left")]
    InvalidCode { attempts_left: u32 },
    #[error("the code has expired; ask for a new one")]
    CodeExpired,
    #[error("too many wrong codes; this login is locked, start a new one")]
    Locked,
    #[error("this login has expired; start a new one")]
    Expired,
    #[error("this login is already complete")]
    Finished,
    #[error("this login was rejected; start a new one")]
    Rejected,
    #[error("a new code can be requested after {retry_after}")]
    ResendTooSoon { retry_after: DateTime<Utc> },
    #[error("no more codes can be sent for this login")]
    ResendLimit,
    #[error("this step does not apply to the login in its current state")]
    OutOfOrder,
}

/// The outcome of one [`transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub state: FlowState,
    pub effects: Vec<Effect>,
    pub reply: Result<Reply, FlowError>,
}

impl Step {
    /// A refused or idle event: same state, nothing to do.
    fn unchanged(state: &FlowState, reply: Result<Reply, FlowError>) -> Step {
        Step {
            state: state.clone(),
            effects: Vec::new(),
            reply,
        }
    }
}

/// A new flow, waiting for the password check, expiring `flow_ttl` after `now`.
pub fn start(now: DateTime<Utc>, limits: &Limits) -> FlowState {
    FlowState::PasswordPending {
        created_at: now,
        expires_at: add_saturating(now, limits.flow_ttl),
    }
}

/// Applies one event at time `now`. Total: every (state, event) pair has an
/// answer, and none panics.
pub fn transition(state: &FlowState, event: Event, now: DateTime<Utc>, limits: &Limits) -> Step {
    match *state {
        // Terminal states answer first: a finished flow must not turn into an
        // expired one (or anything else) later.
        FlowState::Authenticated { .. } => Step::unchanged(state, Err(FlowError::Finished)),
        FlowState::Locked { .. } => Step::unchanged(state, Err(FlowError::Locked)),
        FlowState::Expired { .. } => Step::unchanged(state, Err(FlowError::Expired)),
        FlowState::Rejected { .. } => Step::unchanged(state, Err(FlowError::Rejected)),
        // Expiry wins over every event, a right code included.
        FlowState::PasswordPending { expires_at, .. }
        | FlowState::OtpPending { expires_at, .. }
            if now >= expires_at =>
        {
            Step {
                state: FlowState::Expired { at: now },
                effects: vec![Effect::Audit(AuditKind::FlowExpired)],
                reply: Err(FlowError::Expired),
            }
        }
        FlowState::PasswordPending {
            created_at,
            expires_at,
        } => password_pending(state, created_at, expires_at, event, now, limits),
        FlowState::OtpPending {
            created_at,
            expires_at,
            code_issued_at,
            code_expires_at,
            attempts_left,
            resends,
        } => {
            let otp = Otp {
                created_at,
                expires_at,
                code_issued_at,
                code_expires_at,
                attempts_left,
                resends,
            };
            otp_pending(state, otp, event, now, limits)
        }
    }
}

/// The fields of [`FlowState::OtpPending`], to pass them around as one value.
#[derive(Clone, Copy)]
struct Otp {
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    code_issued_at: DateTime<Utc>,
    code_expires_at: DateTime<Utc>,
    attempts_left: u32,
    resends: u32,
}

impl Otp {
    fn into_state(self) -> FlowState {
        FlowState::OtpPending {
            created_at: self.created_at,
            expires_at: self.expires_at,
            code_issued_at: self.code_issued_at,
            code_expires_at: self.code_expires_at,
            attempts_left: self.attempts_left,
            resends: self.resends,
        }
    }
}

fn password_pending(
    state: &FlowState,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    event: Event,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Step {
    match event {
        Event::PasswordChecked { ok: false, .. } => Step {
            state: FlowState::Rejected { at: now },
            effects: vec![Effect::Audit(AuditKind::PasswordRejected)],
            reply: Err(FlowError::InvalidCredentials),
        },
        Event::PasswordChecked {
            ok: true,
            two_fa: false,
        } => authenticated(now, Amr::Pwd),
        Event::PasswordChecked {
            ok: true,
            two_fa: true,
        } => {
            let otp = Otp {
                created_at,
                expires_at,
                code_issued_at: now,
                code_expires_at: code_expiry(now, expires_at, limits),
                attempts_left: limits.max_code_attempts,
                resends: 0,
            };
            Step {
                state: otp.into_state(),
                effects: vec![Effect::SendCode, Effect::Audit(AuditKind::CodeSent)],
                reply: Ok(Reply::OtpRequired {
                    code_expires_at: otp.code_expires_at,
                    resend_after: add_saturating(now, limits.resend_cooldown),
                }),
            }
        }
        Event::CodeSubmitted { .. }
        | Event::RecoveryCodeSubmitted { .. }
        | Event::ResendRequested => Step::unchanged(state, Err(FlowError::OutOfOrder)),
        Event::Tick => Step::unchanged(state, Ok(Reply::Unchanged)),
    }
}

fn otp_pending(
    state: &FlowState,
    otp: Otp,
    event: Event,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Step {
    match event {
        // The password step is over; a second report means a confused caller.
        Event::PasswordChecked { .. } => Step::unchanged(state, Err(FlowError::OutOfOrder)),
        Event::Tick => Step::unchanged(state, Ok(Reply::Unchanged)),
        // An expired code is not a wrong try: the flow stays, the user may resend.
        Event::CodeSubmitted { .. } if now >= otp.code_expires_at => {
            Step::unchanged(state, Err(FlowError::CodeExpired))
        }
        // No tries left (only with `max_code_attempts == 0`): the code is not even
        // looked at, so a right guess cannot slip through a zero limit.
        Event::CodeSubmitted { .. } if otp.attempts_left == 0 => Step {
            state: FlowState::Locked { at: now },
            effects: vec![Effect::Audit(AuditKind::FlowLocked)],
            reply: Err(FlowError::Locked),
        },
        Event::CodeSubmitted { correct: true } => authenticated(now, Amr::PwdSms),
        Event::CodeSubmitted { correct: false } => wrong_try(otp, now),
        // The same tries as an SMS code (so the flow's lock bounds guessing
        // whichever kind is sent), but no SMS code expiry: the flow's own
        // expiry, checked above, is the bound.
        Event::RecoveryCodeSubmitted { .. } if otp.attempts_left == 0 => Step {
            state: FlowState::Locked { at: now },
            effects: vec![Effect::Audit(AuditKind::FlowLocked)],
            reply: Err(FlowError::Locked),
        },
        Event::RecoveryCodeSubmitted { correct: true } => authenticated(now, Amr::PwdOtp),
        Event::RecoveryCodeSubmitted { correct: false } => wrong_try(otp, now),
        Event::ResendRequested => resend(state, otp, now, limits),
    }
}

/// A wrong code (SMS or recovery) costs one try; the last one locks the flow.
fn wrong_try(otp: Otp, now: DateTime<Utc>) -> Step {
    let attempts_left = otp.attempts_left.saturating_sub(1);
    if attempts_left == 0 {
        Step {
            state: FlowState::Locked { at: now },
            effects: vec![
                Effect::Audit(AuditKind::CodeRejected),
                Effect::Audit(AuditKind::FlowLocked),
            ],
            reply: Err(FlowError::Locked),
        }
    } else {
        Step {
            state: Otp {
                attempts_left,
                ..otp
            }
            .into_state(),
            effects: vec![Effect::Audit(AuditKind::CodeRejected)],
            reply: Err(FlowError::InvalidCode { attempts_left }),
        }
    }
}

fn resend(state: &FlowState, otp: Otp, now: DateTime<Utc>, limits: &Limits) -> Step {
    if otp.resends >= limits.max_resends {
        return Step::unchanged(state, Err(FlowError::ResendLimit));
    }
    // Counted from the newest code as stored: a lagging clock (`now` before
    // `code_issued_at`) just waits longer, it never skips the cooldown.
    let retry_after = add_saturating(otp.code_issued_at, limits.resend_cooldown);
    if now < retry_after {
        return Step::unchanged(state, Err(FlowError::ResendTooSoon { retry_after }));
    }
    let next = Otp {
        code_issued_at: now,
        code_expires_at: code_expiry(now, otp.expires_at, limits),
        // The attempt limit is per code; the resend cap bounds the total.
        attempts_left: limits.max_code_attempts,
        resends: otp.resends.saturating_add(1),
        ..otp
    };
    Step {
        state: next.into_state(),
        effects: vec![Effect::SendCode, Effect::Audit(AuditKind::CodeSent)],
        reply: Ok(Reply::CodeResent {
            code_expires_at: next.code_expires_at,
            resend_after: add_saturating(now, limits.resend_cooldown),
        }),
    }
}

fn authenticated(now: DateTime<Utc>, amr: Amr) -> Step {
    Step {
        state: FlowState::Authenticated { at: now },
        effects: vec![
            Effect::IssueTokens(amr),
            Effect::Audit(AuditKind::LoginSucceeded),
        ],
        reply: Ok(Reply::Tokens(amr)),
    }
}

/// A code sent at `now` lives `code_ttl`, but never past its flow.
fn code_expiry(
    now: DateTime<Utc>,
    flow_expires_at: DateTime<Utc>,
    limits: &Limits,
) -> DateTime<Utc> {
    add_saturating(now, limits.code_ttl).min(flow_expires_at)
}

/// `t + d`, clamped to chrono's representable range instead of panicking on a
/// huge `Duration` from configuration.
fn add_saturating(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    match t.checked_add_signed(d) {
        Some(sum) => sum,
        None if d < Duration::zero() => DateTime::<Utc>::MIN_UTC,
        None => DateTime::<Utc>::MAX_UTC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn secs(s: i64) -> Duration {
        Duration::seconds(s)
    }

    fn limits() -> Limits {
        Limits {
            max_code_attempts: 5,
            max_resends: 3,
            resend_cooldown: secs(30),
            code_ttl: secs(600),
            flow_ttl: secs(900),
        }
    }

    const ALL_EVENTS: [Event; 10] = [
        Event::PasswordChecked {
            ok: false,
            two_fa: false,
        },
        Event::PasswordChecked {
            ok: false,
            two_fa: true,
        },
        Event::PasswordChecked {
            ok: true,
            two_fa: false,
        },
        Event::PasswordChecked {
            ok: true,
            two_fa: true,
        },
        Event::CodeSubmitted { correct: true },
        Event::CodeSubmitted { correct: false },
        Event::RecoveryCodeSubmitted { correct: true },
        Event::RecoveryCodeSubmitted { correct: false },
        Event::ResendRequested,
        Event::Tick,
    ];

    const PW_2FA: Event = Event::PasswordChecked {
        ok: true,
        two_fa: true,
    };
    const WRONG: Event = Event::CodeSubmitted { correct: false };
    const RIGHT: Event = Event::CodeSubmitted { correct: true };
    const RECOVERY_WRONG: Event = Event::RecoveryCodeSubmitted { correct: false };
    const RECOVERY_RIGHT: Event = Event::RecoveryCodeSubmitted { correct: true };

    /// A flow in OtpPending, code sent at t0.
    fn otp_state(l: &Limits) -> FlowState {
        transition(&start(t0(), l), PW_2FA, t0(), l).state
    }

    fn terminal_states() -> [FlowState; 4] {
        [
            FlowState::Authenticated { at: t0() },
            FlowState::Locked { at: t0() },
            FlowState::Expired { at: t0() },
            FlowState::Rejected { at: t0() },
        ]
    }

    // ----- unit tests, one per rule -----

    #[test]
    fn start_waits_for_password_until_flow_ttl() {
        let s = start(t0(), &limits());
        assert_eq!(
            s,
            FlowState::PasswordPending {
                created_at: t0(),
                expires_at: t0() + secs(900)
            }
        );
        assert!(!s.is_terminal());
        assert_eq!(s.expires_at(), Some(t0() + secs(900)));
    }

    #[test]
    fn terminal_states_are_terminal_and_have_no_expiry() {
        for s in terminal_states() {
            assert!(s.is_terminal());
            assert_eq!(s.expires_at(), None);
        }
        assert_eq!(otp_state(&limits()).expires_at(), Some(t0() + secs(900)));
    }

    #[test]
    fn amr_values_follow_rfc_8176() {
        assert_eq!(Amr::Pwd.as_strs(), &["pwd"]);
        assert_eq!(Amr::PwdSms.as_strs(), &["pwd", "sms"]);
        assert_eq!(Amr::PwdOtp.as_strs(), &["pwd", "otp"]);
    }

    #[test]
    fn wrong_password_rejects_the_flow() {
        for two_fa in [false, true] {
            let step = transition(
                &start(t0(), &limits()),
                Event::PasswordChecked { ok: false, two_fa },
                t0() + secs(1),
                &limits(),
            );
            assert_eq!(step.state, FlowState::Rejected { at: t0() + secs(1) });
            assert_eq!(
                step.effects,
                vec![Effect::Audit(AuditKind::PasswordRejected)]
            );
            assert_eq!(step.reply, Err(FlowError::InvalidCredentials));
        }
    }

    #[test]
    fn right_password_without_2fa_issues_pwd_tokens() {
        let step = transition(
            &start(t0(), &limits()),
            Event::PasswordChecked {
                ok: true,
                two_fa: false,
            },
            t0() + secs(1),
            &limits(),
        );
        assert_eq!(step.state, FlowState::Authenticated { at: t0() + secs(1) });
        assert_eq!(
            step.effects,
            vec![
                Effect::IssueTokens(Amr::Pwd),
                Effect::Audit(AuditKind::LoginSucceeded)
            ]
        );
        assert_eq!(step.reply, Ok(Reply::Tokens(Amr::Pwd)));
    }

    #[test]
    fn right_password_with_2fa_sends_a_code() {
        let now = t0() + secs(5);
        let step = transition(&start(t0(), &limits()), PW_2FA, now, &limits());
        assert_eq!(
            step.state,
            FlowState::OtpPending {
                created_at: t0(),
                expires_at: t0() + secs(900),
                code_issued_at: now,
                code_expires_at: now + secs(600),
                attempts_left: 5,
                resends: 0,
            }
        );
        assert_eq!(
            step.effects,
            vec![Effect::SendCode, Effect::Audit(AuditKind::CodeSent)]
        );
        assert_eq!(
            step.reply,
            Ok(Reply::OtpRequired {
                code_expires_at: now + secs(600),
                resend_after: now + secs(30),
            })
        );
    }

    #[test]
    fn code_expiry_is_capped_by_flow_expiry() {
        let l = limits();
        let now = t0() + secs(800); // flow ends at 900, code would end at 1400
        let step = transition(&start(t0(), &l), PW_2FA, now, &l);
        assert_eq!(
            step.reply,
            Ok(Reply::OtpRequired {
                code_expires_at: t0() + secs(900),
                resend_after: now + secs(30),
            })
        );
    }

    #[test]
    fn right_code_issues_pwd_sms_tokens() {
        let l = limits();
        let now = t0() + secs(599);
        let step = transition(&otp_state(&l), RIGHT, now, &l);
        assert_eq!(step.state, FlowState::Authenticated { at: now });
        assert_eq!(
            step.effects,
            vec![
                Effect::IssueTokens(Amr::PwdSms),
                Effect::Audit(AuditKind::LoginSucceeded)
            ]
        );
        assert_eq!(step.reply, Ok(Reply::Tokens(Amr::PwdSms)));
    }

    #[test]
    fn wrong_code_costs_one_attempt() {
        let l = limits();
        let s = otp_state(&l);
        let step = transition(&s, WRONG, t0() + secs(1), &l);
        let FlowState::OtpPending { attempts_left, .. } = step.state else {
            panic!("expected OtpPending, got {:?}", step.state)
        };
        assert_eq!(attempts_left, 4);
        assert_eq!(step.effects, vec![Effect::Audit(AuditKind::CodeRejected)]);
        assert_eq!(step.reply, Err(FlowError::InvalidCode { attempts_left: 4 }));
    }

    #[test]
    fn last_wrong_code_locks_the_flow() {
        let l = limits();
        let mut s = otp_state(&l);
        for left in (1..5).rev() {
            let step = transition(&s, WRONG, t0() + secs(1), &l);
            assert_eq!(
                step.reply,
                Err(FlowError::InvalidCode {
                    attempts_left: left
                })
            );
            s = step.state;
        }
        let step = transition(&s, WRONG, t0() + secs(2), &l);
        assert_eq!(step.state, FlowState::Locked { at: t0() + secs(2) });
        assert_eq!(
            step.effects,
            vec![
                Effect::Audit(AuditKind::CodeRejected),
                Effect::Audit(AuditKind::FlowLocked)
            ]
        );
        assert_eq!(step.reply, Err(FlowError::Locked));
        // and a right code afterwards gets nothing
        let after = transition(&step.state, RIGHT, t0() + secs(3), &l);
        assert_eq!(after.reply, Err(FlowError::Locked));
        assert!(after.effects.is_empty());
    }

    #[test]
    fn zero_attempts_lock_without_evaluating_the_code() {
        let l = Limits {
            max_code_attempts: 0,
            ..limits()
        };
        let s = otp_state(&l);
        for event in [RIGHT, WRONG] {
            let step = transition(&s, event, t0() + secs(1), &l);
            assert_eq!(step.state, FlowState::Locked { at: t0() + secs(1) });
            assert_eq!(step.effects, vec![Effect::Audit(AuditKind::FlowLocked)]);
            assert_eq!(step.reply, Err(FlowError::Locked));
        }
    }

    #[test]
    fn code_at_or_after_its_expiry_is_refused_and_the_flow_stays() {
        let l = Limits {
            code_ttl: secs(60),
            ..limits()
        };
        let s = otp_state(&l);
        for now in [t0() + secs(60), t0() + secs(61)] {
            for event in [RIGHT, WRONG] {
                let step = transition(&s, event, now, &l);
                assert_eq!(step, Step::unchanged(&s, Err(FlowError::CodeExpired)));
            }
        }
        // the user may then ask a new code and use it
        let resent = transition(&s, Event::ResendRequested, t0() + secs(61), &l);
        assert!(matches!(resent.reply, Ok(Reply::CodeResent { .. })));
        let done = transition(&resent.state, RIGHT, t0() + secs(62), &l);
        assert_eq!(done.reply, Ok(Reply::Tokens(Amr::PwdSms)));
    }

    #[test]
    fn resend_before_cooldown_is_refused_with_retry_time() {
        let l = limits();
        let s = otp_state(&l);
        let step = transition(&s, Event::ResendRequested, t0() + secs(29), &l);
        assert_eq!(
            step,
            Step::unchanged(
                &s,
                Err(FlowError::ResendTooSoon {
                    retry_after: t0() + secs(30)
                })
            )
        );
    }

    #[test]
    fn resend_sends_a_new_code_and_resets_attempts() {
        let l = limits();
        let s = transition(&otp_state(&l), WRONG, t0() + secs(1), &l).state;
        let now = t0() + secs(30);
        let step = transition(&s, Event::ResendRequested, now, &l);
        assert_eq!(
            step.state,
            FlowState::OtpPending {
                created_at: t0(),
                expires_at: t0() + secs(900),
                code_issued_at: now,
                code_expires_at: now + secs(600),
                attempts_left: 5,
                resends: 1,
            }
        );
        assert_eq!(
            step.effects,
            vec![Effect::SendCode, Effect::Audit(AuditKind::CodeSent)]
        );
        assert_eq!(
            step.reply,
            Ok(Reply::CodeResent {
                code_expires_at: now + secs(600),
                resend_after: now + secs(30),
            })
        );
        // the cooldown now counts from the new code
        let again = transition(&step.state, Event::ResendRequested, now + secs(29), &l);
        assert_eq!(
            again.reply,
            Err(FlowError::ResendTooSoon {
                retry_after: now + secs(30)
            })
        );
    }

    #[test]
    fn resend_cap_is_checked_before_the_cooldown() {
        let l = limits();
        let mut s = otp_state(&l);
        let mut now = t0();
        for _ in 0..3 {
            now += secs(30);
            let step = transition(&s, Event::ResendRequested, now, &l);
            assert!(matches!(step.reply, Ok(Reply::CodeResent { .. })));
            s = step.state;
        }
        for later in [now + secs(1), now + secs(30)] {
            let step = transition(&s, Event::ResendRequested, later, &l);
            assert_eq!(step, Step::unchanged(&s, Err(FlowError::ResendLimit)));
        }
    }

    #[test]
    fn tick_on_a_live_flow_changes_nothing() {
        let l = limits();
        for s in [start(t0(), &l), otp_state(&l)] {
            let step = transition(&s, Event::Tick, t0() + secs(899), &l);
            assert_eq!(step, Step::unchanged(&s, Ok(Reply::Unchanged)));
        }
    }

    #[test]
    fn expiry_wins_over_every_event() {
        let l = limits();
        for s in [start(t0(), &l), otp_state(&l)] {
            for now in [t0() + secs(900), t0() + secs(10_000)] {
                for event in ALL_EVENTS {
                    let step = transition(&s, event, now, &l);
                    assert_eq!(step.state, FlowState::Expired { at: now });
                    assert_eq!(step.effects, vec![Effect::Audit(AuditKind::FlowExpired)]);
                    assert_eq!(step.reply, Err(FlowError::Expired));
                }
            }
        }
    }

    #[test]
    fn right_recovery_code_issues_pwd_otp_tokens() {
        let l = limits();
        let now = t0() + secs(3);
        let step = transition(&otp_state(&l), RECOVERY_RIGHT, now, &l);
        assert_eq!(step.state, FlowState::Authenticated { at: now });
        assert_eq!(
            step.effects,
            vec![
                Effect::IssueTokens(Amr::PwdOtp),
                Effect::Audit(AuditKind::LoginSucceeded)
            ]
        );
        assert_eq!(step.reply, Ok(Reply::Tokens(Amr::PwdOtp)));
    }

    #[test]
    fn a_recovery_code_works_after_the_sms_code_expired_but_not_after_the_flow() {
        let l = limits();
        let s = otp_state(&l);
        // The SMS code ended at 600 s; the flow lives until 900 s.
        let late = t0() + secs(700);
        assert_eq!(
            transition(&s, RIGHT, late, &l).reply,
            Err(FlowError::CodeExpired)
        );
        assert_eq!(
            transition(&s, RECOVERY_RIGHT, late, &l).reply,
            Ok(Reply::Tokens(Amr::PwdOtp))
        );
        let wrong = transition(&s, RECOVERY_WRONG, late, &l);
        assert_eq!(
            wrong.reply,
            Err(FlowError::InvalidCode { attempts_left: 4 })
        );
        let expired = transition(&s, RECOVERY_RIGHT, t0() + secs(900), &l);
        assert_eq!(expired.reply, Err(FlowError::Expired));
        assert!(!expired
            .effects
            .iter()
            .any(|e| matches!(e, Effect::IssueTokens(_))));
    }

    #[test]
    fn wrong_recovery_and_sms_codes_share_the_flow_tries() {
        let l = limits();
        let mut s = otp_state(&l);
        for (i, event) in [RECOVERY_WRONG, WRONG, RECOVERY_WRONG, WRONG]
            .into_iter()
            .enumerate()
        {
            let step = transition(&s, event, t0() + secs(1), &l);
            let left = 4 - u32::try_from(i).unwrap();
            assert_eq!(
                step.reply,
                Err(FlowError::InvalidCode {
                    attempts_left: left
                })
            );
            assert_eq!(step.effects, vec![Effect::Audit(AuditKind::CodeRejected)]);
            s = step.state;
        }
        let step = transition(&s, RECOVERY_WRONG, t0() + secs(2), &l);
        assert_eq!(step.state, FlowState::Locked { at: t0() + secs(2) });
        assert_eq!(step.reply, Err(FlowError::Locked));
        // Locked: a right recovery code gets nothing either.
        let after = transition(&step.state, RECOVERY_RIGHT, t0() + secs(3), &l);
        assert_eq!(after.reply, Err(FlowError::Locked));
        assert!(after.effects.is_empty());
        // Zero tries: a recovery code is not even looked at.
        let zero = Limits {
            max_code_attempts: 0,
            ..l
        };
        let step = transition(&otp_state(&zero), RECOVERY_RIGHT, t0() + secs(1), &zero);
        assert_eq!(step.reply, Err(FlowError::Locked));
        assert_eq!(step.effects, vec![Effect::Audit(AuditKind::FlowLocked)]);
    }

    #[test]
    fn out_of_order_events_are_refused() {
        let l = limits();
        let pending = start(t0(), &l);
        for event in [
            RIGHT,
            WRONG,
            RECOVERY_RIGHT,
            RECOVERY_WRONG,
            Event::ResendRequested,
        ] {
            let step = transition(&pending, event, t0() + secs(1), &l);
            assert_eq!(step, Step::unchanged(&pending, Err(FlowError::OutOfOrder)));
        }
        let otp = otp_state(&l);
        for ok in [false, true] {
            for two_fa in [false, true] {
                let step = transition(
                    &otp,
                    Event::PasswordChecked { ok, two_fa },
                    t0() + secs(1),
                    &l,
                );
                assert_eq!(step, Step::unchanged(&otp, Err(FlowError::OutOfOrder)));
            }
        }
    }

    #[test]
    fn terminal_states_never_change() {
        let l = limits();
        for s in terminal_states() {
            let expected = match s {
                FlowState::Authenticated { .. } => FlowError::Finished,
                FlowState::Locked { .. } => FlowError::Locked,
                FlowState::Expired { .. } => FlowError::Expired,
                _ => FlowError::Rejected,
            };
            for event in ALL_EVENTS {
                for now in [t0() - secs(1000), t0(), t0() + secs(100_000)] {
                    let step = transition(&s, event, now, &l);
                    assert_eq!(step, Step::unchanged(&s, Err(expected)));
                }
            }
        }
    }

    #[test]
    fn a_lagging_clock_never_extends_validity() {
        let l = limits();
        // code sent at t0 + 100 by a process whose clock runs ahead
        let s = transition(&start(t0(), &l), PW_2FA, t0() + secs(100), &l).state;
        let back = t0() + secs(50);
        // the code is still valid (we cannot know better) ...
        assert_eq!(
            transition(&s, WRONG, back, &l).reply,
            Err(FlowError::InvalidCode { attempts_left: 4 })
        );
        // ... but the cooldown counts from the stored issue time, not from `back`
        assert_eq!(
            transition(&s, Event::ResendRequested, back, &l).reply,
            Err(FlowError::ResendTooSoon {
                retry_after: t0() + secs(130)
            })
        );
        // and the flow deadline never moves
        let expired = transition(&s, Event::Tick, t0() + secs(900), &l);
        assert_eq!(expired.reply, Err(FlowError::Expired));
    }

    #[test]
    fn huge_limits_and_extreme_times_do_not_panic() {
        let extremes = [Duration::MAX, Duration::MIN, Duration::zero()];
        let times = [DateTime::<Utc>::MIN_UTC, t0(), DateTime::<Utc>::MAX_UTC];
        for d in extremes {
            let l = Limits {
                max_code_attempts: u32::MAX,
                max_resends: u32::MAX,
                resend_cooldown: d,
                code_ttl: d,
                flow_ttl: d,
            };
            for now in times {
                let s = start(now, &l);
                for event in ALL_EVENTS {
                    for later in times {
                        let step = transition(&s, event, later, &l);
                        for event2 in ALL_EVENTS {
                            let _ = transition(&step.state, event2, later, &l);
                        }
                    }
                }
            }
        }
        let huge = Limits {
            flow_ttl: Duration::MAX,
            code_ttl: Duration::MAX,
            resend_cooldown: Duration::MAX,
            ..limits()
        };
        assert_eq!(
            start(t0(), &huge).expires_at(),
            Some(DateTime::<Utc>::MAX_UTC)
        );
        let negative = Limits {
            flow_ttl: Duration::MIN,
            ..limits()
        };
        assert_eq!(
            start(t0(), &negative).expires_at(),
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }

    #[test]
    fn every_state_round_trips_through_json() {
        let l = limits();
        let mut states = vec![start(t0(), &l), otp_state(&l)];
        states.extend(terminal_states());
        for s in states {
            let json = serde_json::to_string(&s).unwrap();
            let back: FlowState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "{json}");
        }
        let json = serde_json::to_value(otp_state(&l)).unwrap();
        assert_eq!(json["state"], "otp_pending");
        assert_eq!(json["attempts_left"], 5);
        let json = serde_json::to_value(FlowState::Authenticated { at: t0() }).unwrap();
        assert_eq!(json["state"], "authenticated");
    }

    #[test]
    fn error_messages_are_client_safe_text() {
        let errors = [
            FlowError::InvalidCredentials,
            FlowError::InvalidCode { attempts_left: 2 },
            FlowError::CodeExpired,
            FlowError::Locked,
            FlowError::Expired,
            FlowError::Finished,
            FlowError::Rejected,
            FlowError::ResendTooSoon { retry_after: t0() },
            FlowError::ResendLimit,
            FlowError::OutOfOrder,
        ];
        for e in errors {
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            FlowError::InvalidCode { attempts_left: 2 }.to_string(),
            "invalid code, 2 attempt(s) left"
        );
    }

    // ----- property tests -----

    /// Test-side time addition, kept separate from the code under test.
    fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
        t.checked_add_signed(d).unwrap_or(if d < Duration::zero() {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        Tokens(Amr),
        Locked,
        Expired,
        Rejected,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Phase {
        NeedPassword,
        NeedCode,
        Done(Outcome, DateTime<Utc>),
    }

    /// An independent model of a login: counts sent codes and wrong tries upward
    /// where the implementation counts down, and decides in its own order.
    #[derive(Debug, Clone)]
    struct Model {
        limits: Limits,
        started: DateTime<Utc>,
        phase: Phase,
        deadline: DateTime<Utc>,
        codes_sent: u32,
        last_sent_at: DateTime<Utc>,
        code_deadline: DateTime<Utc>,
        wrong_tries: u32,
    }

    impl Model {
        fn new(now: DateTime<Utc>, limits: Limits) -> Model {
            Model {
                limits,
                started: now,
                phase: Phase::NeedPassword,
                deadline: plus(now, limits.flow_ttl),
                codes_sent: 0,
                last_sent_at: now,
                code_deadline: now,
                wrong_tries: 0,
            }
        }

        fn send(&mut self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
            self.phase = Phase::NeedCode;
            self.codes_sent += 1;
            self.last_sent_at = now;
            let c = plus(now, self.limits.code_ttl);
            self.code_deadline = if c < self.deadline { c } else { self.deadline };
            self.wrong_tries = 0;
            (self.code_deadline, plus(now, self.limits.resend_cooldown))
        }

        fn finish(&mut self, o: Outcome, now: DateTime<Utc>) {
            self.phase = Phase::Done(o, now);
        }

        /// Expected effects and reply; updates the model.
        fn apply(
            &mut self,
            ev: Event,
            now: DateTime<Utc>,
        ) -> (Vec<Effect>, Result<Reply, FlowError>) {
            use AuditKind as A;
            use Effect::Audit;
            if let Phase::Done(o, _) = self.phase {
                let e = match o {
                    Outcome::Tokens(_) => FlowError::Finished,
                    Outcome::Locked => FlowError::Locked,
                    Outcome::Expired => FlowError::Expired,
                    Outcome::Rejected => FlowError::Rejected,
                };
                return (vec![], Err(e));
            }
            if now >= self.deadline {
                self.finish(Outcome::Expired, now);
                return (vec![Audit(A::FlowExpired)], Err(FlowError::Expired));
            }
            if ev == Event::Tick {
                return (vec![], Ok(Reply::Unchanged));
            }
            match (self.phase, ev) {
                (Phase::NeedPassword, Event::PasswordChecked { ok, two_fa }) => {
                    if !ok {
                        self.finish(Outcome::Rejected, now);
                        (
                            vec![Audit(A::PasswordRejected)],
                            Err(FlowError::InvalidCredentials),
                        )
                    } else if two_fa {
                        let (code_expires_at, resend_after) = self.send(now);
                        (
                            vec![Effect::SendCode, Audit(A::CodeSent)],
                            Ok(Reply::OtpRequired {
                                code_expires_at,
                                resend_after,
                            }),
                        )
                    } else {
                        self.finish(Outcome::Tokens(Amr::Pwd), now);
                        (
                            vec![Effect::IssueTokens(Amr::Pwd), Audit(A::LoginSucceeded)],
                            Ok(Reply::Tokens(Amr::Pwd)),
                        )
                    }
                }
                (Phase::NeedCode, Event::CodeSubmitted { correct }) => {
                    if now >= self.code_deadline {
                        (vec![], Err(FlowError::CodeExpired))
                    } else if self.wrong_tries >= self.limits.max_code_attempts {
                        self.finish(Outcome::Locked, now);
                        (vec![Audit(A::FlowLocked)], Err(FlowError::Locked))
                    } else if correct {
                        self.finish(Outcome::Tokens(Amr::PwdSms), now);
                        (
                            vec![Effect::IssueTokens(Amr::PwdSms), Audit(A::LoginSucceeded)],
                            Ok(Reply::Tokens(Amr::PwdSms)),
                        )
                    } else {
                        self.wrong_tries += 1;
                        if self.wrong_tries == self.limits.max_code_attempts {
                            self.finish(Outcome::Locked, now);
                            (
                                vec![Audit(A::CodeRejected), Audit(A::FlowLocked)],
                                Err(FlowError::Locked),
                            )
                        } else {
                            let attempts_left = self.limits.max_code_attempts - self.wrong_tries;
                            (
                                vec![Audit(A::CodeRejected)],
                                Err(FlowError::InvalidCode { attempts_left }),
                            )
                        }
                    }
                }
                (Phase::NeedCode, Event::RecoveryCodeSubmitted { correct }) => {
                    // No SMS code deadline: only the flow's, checked above.
                    if self.wrong_tries >= self.limits.max_code_attempts {
                        self.finish(Outcome::Locked, now);
                        (vec![Audit(A::FlowLocked)], Err(FlowError::Locked))
                    } else if correct {
                        self.finish(Outcome::Tokens(Amr::PwdOtp), now);
                        (
                            vec![Effect::IssueTokens(Amr::PwdOtp), Audit(A::LoginSucceeded)],
                            Ok(Reply::Tokens(Amr::PwdOtp)),
                        )
                    } else {
                        self.wrong_tries += 1;
                        if self.wrong_tries == self.limits.max_code_attempts {
                            self.finish(Outcome::Locked, now);
                            (
                                vec![Audit(A::CodeRejected), Audit(A::FlowLocked)],
                                Err(FlowError::Locked),
                            )
                        } else {
                            let attempts_left = self.limits.max_code_attempts - self.wrong_tries;
                            (
                                vec![Audit(A::CodeRejected)],
                                Err(FlowError::InvalidCode { attempts_left }),
                            )
                        }
                    }
                }
                (Phase::NeedCode, Event::ResendRequested) => {
                    let ready = plus(self.last_sent_at, self.limits.resend_cooldown);
                    if self.codes_sent > self.limits.max_resends {
                        (vec![], Err(FlowError::ResendLimit))
                    } else if now < ready {
                        (vec![], Err(FlowError::ResendTooSoon { retry_after: ready }))
                    } else {
                        let (code_expires_at, resend_after) = self.send(now);
                        (
                            vec![Effect::SendCode, Audit(A::CodeSent)],
                            Ok(Reply::CodeResent {
                                code_expires_at,
                                resend_after,
                            }),
                        )
                    }
                }
                _ => (vec![], Err(FlowError::OutOfOrder)),
            }
        }

        /// Whether the implementation's state says what the model knows.
        fn agrees_with(&self, s: &FlowState) -> bool {
            match (self.phase, s) {
                (
                    Phase::NeedPassword,
                    FlowState::PasswordPending {
                        created_at,
                        expires_at,
                    },
                ) => *created_at == self.started && *expires_at == self.deadline,
                (
                    Phase::NeedCode,
                    FlowState::OtpPending {
                        created_at,
                        expires_at,
                        code_issued_at,
                        code_expires_at,
                        attempts_left,
                        resends,
                    },
                ) => {
                    *created_at == self.started
                        && *expires_at == self.deadline
                        && *code_issued_at == self.last_sent_at
                        && *code_expires_at == self.code_deadline
                        && *attempts_left == self.limits.max_code_attempts - self.wrong_tries
                        && *resends + 1 == self.codes_sent
                }
                (Phase::Done(Outcome::Tokens(_), t), FlowState::Authenticated { at })
                | (Phase::Done(Outcome::Locked, t), FlowState::Locked { at })
                | (Phase::Done(Outcome::Expired, t), FlowState::Expired { at })
                | (Phase::Done(Outcome::Rejected, t), FlowState::Rejected { at }) => *at == t,
                _ => false,
            }
        }
    }

    fn duration_strategy(small_min: i64, small_max: i64) -> impl Strategy<Value = Duration> {
        prop_oneof![
            20 => (small_min..=small_max).prop_map(Duration::seconds),
            1 => Just(Duration::MAX),
            1 => Just(Duration::MIN),
            1 => Just(Duration::zero()),
        ]
    }

    fn limits_strategy() -> impl Strategy<Value = Limits> {
        (
            prop_oneof![1 => Just(0u32), 10 => 1u32..=6, 1 => Just(u32::MAX)],
            prop_oneof![10 => 0u32..=4, 1 => Just(u32::MAX)],
            duration_strategy(-5, 90),
            duration_strategy(-10, 900),
            duration_strategy(-10, 3600),
        )
            .prop_map(
                |(max_code_attempts, max_resends, resend_cooldown, code_ttl, flow_ttl)| Limits {
                    max_code_attempts,
                    max_resends,
                    resend_cooldown,
                    code_ttl,
                    flow_ttl,
                },
            )
    }

    fn event_strategy() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => (prop::bool::weighted(0.85), prop::bool::weighted(0.75))
                .prop_map(|(ok, two_fa)| Event::PasswordChecked { ok, two_fa }),
            6 => prop::bool::weighted(0.2).prop_map(|correct| Event::CodeSubmitted { correct }),
            2 => prop::bool::weighted(0.2)
                .prop_map(|correct| Event::RecoveryCodeSubmitted { correct }),
            2 => Just(Event::ResendRequested),
            1 => Just(Event::Tick),
        ]
    }

    fn step_strategy() -> impl Strategy<Value = i64> {
        prop_oneof![2 => Just(0i64), 2 => -30i64..0, 8 => 1i64..=240]
    }

    fn start_strategy() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            20 => (0i64..4_000_000_000).prop_map(|s| t0() + Duration::seconds(s - 2_000_000_000)),
            1 => (0i64..100).prop_map(|s| plus(DateTime::<Utc>::MAX_UTC, Duration::seconds(-s))),
            1 => (0i64..100).prop_map(|s| plus(DateTime::<Utc>::MIN_UTC, Duration::seconds(s))),
        ]
    }

    struct Trace {
        limits: Limits,
        start: DateTime<Utc>,
        /// (event, now, state before, step)
        steps: Vec<(Event, DateTime<Utc>, FlowState, Step)>,
    }

    fn run(limits: Limits, start_at: DateTime<Utc>, script: &[(Event, i64)]) -> Trace {
        let mut state = start(start_at, &limits);
        let mut now = start_at;
        let mut steps = Vec::new();
        for &(event, dt) in script {
            now = plus(now, Duration::seconds(dt));
            let step = transition(&state, event, now, &limits);
            steps.push((event, now, state.clone(), step.clone()));
            state = step.state;
        }
        Trace {
            limits,
            start: start_at,
            steps,
        }
    }

    fn count(effects: &[Effect], f: impl Fn(&Effect) -> bool) -> usize {
        effects.iter().filter(|e| f(e)).count()
    }

    /// The safety properties, checked on the trace alone (no model): deadlines are
    /// recomputed here from the limits and the times of the steps.
    fn check_safety(trace: &Trace) -> Result<(), TestCaseError> {
        let l = trace.limits;
        let flow_deadline = plus(trace.start, l.flow_ttl);
        let mut password: Option<(bool, bool)> = None;
        let mut tokens = 0usize;
        let mut sends = 0u32;
        let mut last_send: Option<DateTime<Utc>> = None;
        let mut code_deadline: Option<DateTime<Utc>> = None;
        let mut wrong_since_send = 0u32;
        let mut terminal: Option<FlowState> = None;

        for (i, (event, now, pre, step)) in trace.steps.iter().enumerate() {
            let (event, now) = (*event, *now);
            let ctx = format!("step {i}: {event:?} at {now} from {pre:?} -> {step:?}");

            // Once terminal, nothing changes and nothing happens.
            if let Some(t) = &terminal {
                prop_assert_eq!(&step.state, t, "{}", ctx);
                prop_assert!(step.effects.is_empty(), "{}", ctx);
                prop_assert!(step.reply.is_err(), "{}", ctx);
                continue;
            }
            prop_assert!(!pre.is_terminal(), "{}", ctx);
            let live = now < flow_deadline;

            // Expiry is always checked, and before anything else.
            if !live {
                prop_assert_eq!(&step.state, &FlowState::Expired { at: now }, "{}", ctx);
                prop_assert_eq!(&step.reply, &Err(FlowError::Expired), "{}", ctx);
            }
            // The flow deadline never moves.
            if let Some(d) = step.state.expires_at() {
                prop_assert_eq!(d, flow_deadline, "{}", ctx);
            }
            if let FlowState::OtpPending {
                code_expires_at, ..
            } = step.state
            {
                prop_assert!(code_expires_at <= flow_deadline, "{}", ctx);
            }

            if live {
                if let (Event::PasswordChecked { ok, two_fa }, FlowState::PasswordPending { .. }) =
                    (event, pre)
                {
                    password = Some((ok, two_fa));
                }
            }

            // Tokens: at most once, only after a right password and, with 2FA, only
            // for a right code for the newest code within its validity.
            let issued: Vec<Amr> = step
                .effects
                .iter()
                .filter_map(|e| match e {
                    Effect::IssueTokens(a) => Some(*a),
                    _ => None,
                })
                .collect();
            tokens += issued.len();
            prop_assert!(tokens <= 1, "{}", ctx);
            if let Some(&amr) = issued.first() {
                prop_assert_eq!(&step.reply, &Ok(Reply::Tokens(amr)), "{}", ctx);
                prop_assert_eq!(
                    &step.state,
                    &FlowState::Authenticated { at: now },
                    "{}",
                    ctx
                );
                prop_assert!(live, "{}", ctx);
                match password {
                    Some((true, false)) => {
                        prop_assert_eq!(amr, Amr::Pwd, "{}", ctx);
                        prop_assert!(matches!(event, Event::PasswordChecked { .. }), "{}", ctx);
                    }
                    Some((true, true)) if event == RECOVERY_RIGHT => {
                        // A recovery code: no SMS code deadline, the same tries.
                        prop_assert_eq!(amr, Amr::PwdOtp, "{}", ctx);
                        prop_assert!(sends >= 1, "{}", ctx);
                        prop_assert!(wrong_since_send < l.max_code_attempts, "{}", ctx);
                    }
                    Some((true, true)) => {
                        prop_assert_eq!(amr, Amr::PwdSms, "{}", ctx);
                        prop_assert_eq!(event, RIGHT, "{}", ctx);
                        prop_assert!(sends >= 1, "{}", ctx);
                        let cd = code_deadline.unwrap_or(DateTime::<Utc>::MIN_UTC);
                        prop_assert!(now < cd, "code expired at {}: {}", cd, ctx);
                        prop_assert!(wrong_since_send < l.max_code_attempts, "{}", ctx);
                    }
                    other => prop_assert!(false, "tokens after password {:?}: {}", other, ctx),
                }
            } else {
                prop_assert!(!matches!(step.reply, Ok(Reply::Tokens(_))), "{}", ctx);
            }

            // Wrong codes: at most max_code_attempts counted per issued code; the
            // last one locks, earlier ones report the attempts left.
            let code_live = code_deadline.is_some_and(|cd| now < cd);
            // A wrong recovery code counts the same, whatever the SMS code's expiry.
            if live
                && ((event == WRONG && code_live) || event == RECOVERY_WRONG)
                && matches!(pre, FlowState::OtpPending { .. })
            {
                wrong_since_send += 1;
                match step.reply {
                    Err(FlowError::InvalidCode { attempts_left }) => {
                        prop_assert!(wrong_since_send < l.max_code_attempts, "{}", ctx);
                        prop_assert_eq!(
                            attempts_left,
                            l.max_code_attempts - wrong_since_send,
                            "{}",
                            ctx
                        );
                    }
                    Err(FlowError::Locked) => {
                        prop_assert!(wrong_since_send >= l.max_code_attempts, "{}", ctx);
                    }
                    other => prop_assert!(false, "wrong code answered {:?}: {}", other, ctx),
                }
            }
            let rejected = count(&step.effects, |e| {
                *e == Effect::Audit(AuditKind::CodeRejected)
            });
            prop_assert!(rejected <= 1, "{}", ctx);
            if rejected == 1 {
                prop_assert!(wrong_since_send <= l.max_code_attempts, "{}", ctx);
            }
            // A code past its expiry is refused and changes nothing.
            if live
                && matches!(event, Event::CodeSubmitted { .. })
                && matches!(pre, FlowState::OtpPending { .. })
                && !code_live
            {
                prop_assert_eq!(&step.reply, &Err(FlowError::CodeExpired), "{}", ctx);
                prop_assert_eq!(&step.state, pre, "{}", ctx);
            }

            // Codes: at most 1 + max_resends, never inside the cooldown, and the
            // reply describes the code just sent.
            let sent = count(&step.effects, |e| *e == Effect::SendCode);
            prop_assert!(sent <= 1, "{}", ctx);
            if sent == 1 {
                prop_assert!(u64::from(sends) <= u64::from(l.max_resends), "{}", ctx);
                match (event, last_send) {
                    (
                        Event::PasswordChecked {
                            ok: true,
                            two_fa: true,
                        },
                        None,
                    ) => {}
                    (Event::ResendRequested, Some(prev)) => {
                        prop_assert!(now >= plus(prev, l.resend_cooldown), "{}", ctx);
                    }
                    _ => prop_assert!(false, "unexpected SendCode: {}", ctx),
                }
                sends += 1;
                last_send = Some(now);
                let cd = std::cmp::min(plus(now, l.code_ttl), flow_deadline);
                code_deadline = Some(cd);
                wrong_since_send = 0;
                let resend_after = plus(now, l.resend_cooldown);
                let expected = if event == Event::ResendRequested {
                    Reply::CodeResent {
                        code_expires_at: cd,
                        resend_after,
                    }
                } else {
                    Reply::OtpRequired {
                        code_expires_at: cd,
                        resend_after,
                    }
                };
                prop_assert_eq!(&step.reply, &Ok(expected), "{}", ctx);
            } else {
                prop_assert!(
                    !matches!(
                        step.reply,
                        Ok(Reply::OtpRequired { .. } | Reply::CodeResent { .. })
                    ),
                    "{}",
                    ctx
                );
            }

            // Replies that refuse, or a tick, change nothing and do nothing.
            match step.reply {
                Ok(Reply::Unchanged)
                | Err(FlowError::CodeExpired)
                | Err(FlowError::ResendTooSoon { .. })
                | Err(FlowError::ResendLimit)
                | Err(FlowError::OutOfOrder) => {
                    prop_assert_eq!(&step.state, pre, "{}", ctx);
                    prop_assert!(step.effects.is_empty(), "{}", ctx);
                }
                _ => {}
            }
            if live && event == Event::Tick {
                prop_assert_eq!(&step.reply, &Ok(Reply::Unchanged), "{}", ctx);
            }
            if step.reply == Ok(Reply::Unchanged) {
                prop_assert_eq!(event, Event::Tick, "{}", ctx);
            }

            if step.state.is_terminal() {
                terminal = Some(step.state.clone());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every step (state, effects, reply) equals what the model predicts.
        #[test]
        fn prop_implementation_matches_model(
            limits in limits_strategy(),
            start_at in start_strategy(),
            script in prop::collection::vec((event_strategy(), step_strategy()), 1..40),
        ) {
            let trace = run(limits, start_at, &script);
            let mut model = Model::new(start_at, limits);
            prop_assert!(model.agrees_with(&start(start_at, &limits)));
            for (i, (event, now, _pre, step)) in trace.steps.iter().enumerate() {
                let (effects, reply) = model.apply(*event, *now);
                prop_assert_eq!(&step.effects, &effects, "step {}: {:?} at {}", i, event, now);
                prop_assert_eq!(&step.reply, &reply, "step {}: {:?} at {}", i, event, now);
                prop_assert!(model.agrees_with(&step.state), "step {}: model {:?} vs {:?}", i, model, step.state);
            }
        }

        /// Tokens at most once and only when earned, wrong codes bounded per code,
        /// SMS bounded per flow, terminal states frozen, replies as documented.
        #[test]
        fn prop_safety_holds_on_any_sequence(
            limits in limits_strategy(),
            start_at in start_strategy(),
            script in prop::collection::vec((event_strategy(), step_strategy()), 1..40),
        ) {
            check_safety(&run(limits, start_at, &script))?;
        }

        /// Any state at all (even inconsistent or at chrono's limits), any event and
        /// any time: no panic, terminal states frozen, deadlines never pushed out.
        #[test]
        fn prop_any_state_any_event_is_total(
            limits in limits_strategy(),
            times in prop::array::uniform4(prop_oneof![
                4 => start_strategy(),
                1 => Just(DateTime::<Utc>::MAX_UTC),
                1 => Just(DateTime::<Utc>::MIN_UTC),
            ]),
            attempts_left in prop_oneof![0u32..=6, Just(u32::MAX)],
            resends in prop_oneof![0u32..=6, Just(u32::MAX)],
            kind in 0usize..6,
            event in event_strategy(),
            now in start_strategy(),
        ) {
            let [a, b, c, d] = times;
            let state = match kind {
                0 => FlowState::PasswordPending { created_at: a, expires_at: b },
                1 => FlowState::OtpPending {
                    created_at: a, expires_at: b, code_issued_at: c, code_expires_at: d,
                    attempts_left, resends,
                },
                2 => FlowState::Authenticated { at: a },
                3 => FlowState::Locked { at: a },
                4 => FlowState::Expired { at: a },
                _ => FlowState::Rejected { at: a },
            };
            let step = transition(&state, event, now, &limits);
            if state.is_terminal() {
                prop_assert_eq!(&step.state, &state);
                prop_assert!(step.effects.is_empty());
                prop_assert!(step.reply.is_err());
            }
            if let (Some(before), Some(after)) = (state.expires_at(), step.state.expires_at()) {
                prop_assert!(after <= before);
            }
            if let (
                FlowState::OtpPending { code_expires_at: before, .. },
                FlowState::OtpPending { code_expires_at: after, expires_at, .. },
            ) = (&state, &step.state) {
                prop_assert!(after == before || after <= expires_at);
            }
        }
    }
}
