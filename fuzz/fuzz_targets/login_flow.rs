//! Arbitrary event sequences with arbitrary times through the login state
//! machine: no panic, terminal states stay terminal, tokens at most once and
//! only after a right password (and, with 2FA, a right code).
#![no_main]

use authgate::domain::login_flow::{start, transition, Effect, Event, FlowState, Limits};
use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let limits = Limits {
        max_code_attempts: u32::from(next() % 8),
        max_resends: u32::from(next() % 5),
        resend_cooldown: Duration::seconds(i64::from(next())),
        code_ttl: Duration::seconds(i64::from(next()) * 4),
        flow_ttl: Duration::seconds(i64::from(next()) * 8),
    };
    let mut now: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let mut state = start(now, &limits);
    let mut password_ok = false;
    let mut two_fa = false;
    let mut tokens = 0;
    for chunk in data.chunks(2).skip(3) {
        let (kind, dt) = (chunk[0], chunk.get(1).copied().unwrap_or(0));
        now += Duration::seconds(i64::from(dt as i8));
        let event = match kind % 8 {
            0 => Event::PasswordChecked { ok: false, two_fa: kind & 8 != 0 },
            1 => Event::PasswordChecked { ok: true, two_fa: kind & 8 != 0 },
            2 => Event::CodeSubmitted { correct: false },
            3 => Event::CodeSubmitted { correct: true },
            4 => Event::ResendRequested,
            5 => Event::RecoveryCodeSubmitted { correct: false },
            6 => Event::RecoveryCodeSubmitted { correct: true },
            _ => Event::Tick,
        };
        let was_terminal = state.is_terminal();
        let step = transition(&state, event, now, &limits);
        if was_terminal {
            assert_eq!(step.state, state, "a terminal state changed");
            assert!(step.effects.is_empty(), "a terminal state produced effects");
        }
        if let Event::PasswordChecked { ok: true, two_fa: t } = event {
            if matches!(state, FlowState::PasswordPending { .. }) && step.reply.is_ok() {
                password_ok = true;
                two_fa = t;
            }
        }
        for e in &step.effects {
            if let Effect::IssueTokens(_) = e {
                tokens += 1;
                assert!(password_ok, "tokens without a right password");
                if two_fa {
                    assert!(
                        event == Event::CodeSubmitted { correct: true }
                            || event == Event::RecoveryCodeSubmitted { correct: true },
                        "2FA tokens without a right code"
                    );
                }
            }
        }
        assert!(tokens <= 1, "tokens issued twice");
        state = step.state;
    }
});
