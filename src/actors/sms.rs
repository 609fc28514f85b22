//! The SMS actor: drains the durable outbox (`store::outbox`) through an
//! [`SmsSender`], and the [`SmsHandle`] the rest of the process uses to wake it
//! and read its counters.
//!
//! It wakes on an in-process nudge (right after a transaction that queued a
//! message commits), on PostgreSQL `NOTIFY authgate_outbox` (messages queued by
//! any process), at the time the next retry or expired lease falls due, and on a
//! periodic sweep as a safety net. Each wake claims a batch in one statement
//! (`FOR UPDATE SKIP LOCKED`, so processes sharing the outbox never claim the same
//! message), sends it with bounded concurrency under an outbound rate limit, and
//! records every outcome while it still holds the claim.
//!
//! The batch runs in a task the actor owns, so the actor stays responsive:
//! - stopped (shutdown): it stops starting sends, lets the ones in flight
//!   finish, returns the rest to `pending`, and claims nothing more;
//! - killed or crashed: the task is aborted with the actor's state; its claims
//!   lapse after the lease and the restarted actor (or another process) takes
//!   the messages again. Nothing is lost; a message whose request was in flight
//!   may be sent twice (at-least-once, as the Twilio contract recommends for codes).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::supervisor::{start_child, ChildSpec, Slot, SupervisorMsg};
use crate::clock::Clock;
use crate::config::SmsConfig;
use crate::crypto::Keys;
use crate::error::BoxError;
use crate::sms::console::ConsoleSender;
use crate::sms::retry::{self, Decision, FailReason, RetryPolicy};
use crate::sms::twilio::TwilioSender;
use crate::sms::{delivery_rank, OutgoingSms, SendOutcome, SmsMetrics, SmsSender};
use crate::store::outbox::{ClaimedSms, OutboxListener};
use crate::store::{Store, StoreError};

/// A send is started only if the claim outlives the request by this much more,
/// so a slow send never overlaps another process's reclaim.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// How long a stopping actor waits for its in-flight sends.
const STOP_GRACE_EXTRA: Duration = Duration::from_secs(2);
/// Reconnect delays of the LISTEN connection.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);
/// Shortest wait for a due time already in the past (rows another process holds
/// locked for a moment): avoids a hot loop.
const MIN_ALARM: Duration = Duration::from_millis(50);

pub enum SmsMsg {
    /// There may be work: claim a batch (or another one after the current).
    Wake,
    /// The batch task ended; `full` when it claimed all it could (more may wait).
    BatchDone { full: bool },
}

/// State shared by every incarnation of the actor and by the handle.
struct Shared {
    metrics: SmsMetrics,
    /// A `Wake` is queued and not yet handled: further nudges are redundant.
    wake_pending: AtomicBool,
    /// Set once the actor was stopped on purpose (shutdown): an incarnation the
    /// supervisor restarts afterwards must not claim anything.
    stopping: AtomicBool,
    /// Outbound messages per second, across restarts (a crash must not reset it).
    limiter: DefaultDirectRateLimiter,
}

/// Cheap to clone; reachable from `AppState::sms()`.
#[derive(Clone)]
pub struct SmsHandle {
    shared: Arc<Shared>,
    slot: Slot<SmsMsg>,
    store: Store,
}

impl SmsHandle {
    pub fn new(config: &SmsConfig, store: Store) -> SmsHandle {
        let rate = NonZeroU32::new(config.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        // A burst of one spaces messages evenly: the provider sees at most
        // `rate` per second over any window, as Twilio throttles a sender.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        SmsHandle {
            shared: Arc::new(Shared {
                metrics: SmsMetrics::default(),
                wake_pending: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                limiter: RateLimiter::direct(quota),
            }),
            slot: Slot::default(),
            store,
        }
    }

    /// Wakes the SMS actor now. Never blocks and never fails: if the actor is
    /// down, the restarted one (or the sweep) finds the message anyway.
    pub fn nudge(&self) {
        if let Some(actor) = self.slot.get() {
            wake(&self.shared, &actor);
        }
    }

    pub fn metrics(&self) -> &SmsMetrics {
        &self.shared.metrics
    }

    /// Messages not yet in a final state, across all processes.
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.store.outbox_depth().await
    }

    /// The current incarnation of the actor (readiness, tests).
    pub fn actor(&self) -> Option<ActorRef<SmsMsg>> {
        self.slot.get()
    }
}

/// Queues one `Wake` unless one is already waiting.
fn wake(shared: &Shared, actor: &ActorRef<SmsMsg>) {
    if !shared.wake_pending.swap(true, Ordering::AcqRel) && actor.cast(SmsMsg::Wake).is_err() {
        shared.wake_pending.store(false, Ordering::Release);
    }
}

/// What the actor needs besides the handle. Built once; shared by incarnations.
pub struct SmsDeps {
    pub store: Store,
    pub keys: Keys,
    pub clock: Clock,
    pub config: SmsConfig,
    pub sender: Arc<dyn SmsSender>,
    /// The database settings, for the LISTEN connection (outside the pool).
    pub pg: tokio_postgres::Config,
}

/// Twilio when configured, else the console.
pub fn sender_for(config: &SmsConfig) -> Result<Arc<dyn SmsSender>, BoxError> {
    match &config.twilio {
        Some(twilio) => {
            tracing::info!(api = %twilio.api_base_url, "SMS are sent through Twilio");
            Ok(Arc::new(TwilioSender::new(twilio, config.request_timeout)?))
        }
        None => {
            // Loud on purpose: in this mode every code is readable by whoever
            // reads this process's output.
            tracing::warn!(
                "SMS ARE NOT SENT: the console sender prints every SMS, with its one-time code, \
                 to standard output. For development only: set TWILIO_ACCOUNT_SID, \
                 TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER before real use"
            );
            Ok(Arc::new(ConsoleSender))
        }
    }
}

/// Starts the SMS actor as a restartable child of the supervisor.
pub async fn start(
    supervisor: &ActorRef<SupervisorMsg>,
    handle: &SmsHandle,
    deps: SmsDeps,
) -> Result<(), String> {
    if deps.config.lease < deps.config.request_timeout + LEASE_MARGIN {
        tracing::warn!(
            lease = ?deps.config.lease,
            timeout = ?deps.config.request_timeout,
            "AUTHGATE_SMS_LEASE should exceed AUTHGATE_SMS_TIMEOUT; messages will be released unsent"
        );
    }
    let deps = Arc::new(deps);
    let handle = handle.clone();
    let spec = ChildSpec::new("sms", move |sup: ActorCell| {
        let handle = handle.clone();
        let deps = deps.clone();
        async move {
            let args = SmsArgs {
                handle: handle.clone(),
                deps,
            };
            let (actor, _) = Actor::spawn_linked(None, SmsActor, args, sup).await?;
            handle.slot.set(actor.clone());
            Ok(actor.get_cell())
        }
    });
    start_child(supervisor, spec).await
}

pub struct SmsActor;

pub struct SmsArgs {
    handle: SmsHandle,
    deps: Arc<SmsDeps>,
}

/// Aborts its task when dropped: tasks die with the actor state that owns them.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one batch (and the actor) works with.
struct BatchCtx {
    /// Identifies this incarnation's claims in `claimed_by`.
    claimer: String,
    deps: Arc<SmsDeps>,
    shared: Arc<Shared>,
    policy: RetryPolicy,
    claim_limit: i64,
}

struct Running {
    cancel: watch::Sender<bool>,
    task: AbortOnDrop,
}

pub struct SmsState {
    ctx: Arc<BatchCtx>,
    batch: Option<Running>,
    /// A wake arrived during the batch: run another one after it.
    again: bool,
    /// The LISTEN connection and the sweep ticker.
    background: Vec<AbortOnDrop>,
    /// Wakes the actor when the next retry or lease falls due.
    alarm: Option<AbortOnDrop>,
}

impl BatchCtx {
    fn new(deps: Arc<SmsDeps>, shared: Arc<Shared>) -> BatchCtx {
        let c = &deps.config;
        // Claim no more than can be sent well within the lease at the outbound
        // rate; the rest stays pending for the next batch or another process.
        let usable = c.lease.saturating_sub(c.request_timeout + LEASE_MARGIN);
        let by_rate = (f64::from(c.rate_per_sec) * usable.as_secs_f64() / 2.0) as i64;
        let claim_limit = c
            .batch_size
            .min(by_rate.max(i64::try_from(c.concurrency).unwrap_or(1)))
            .max(1);
        BatchCtx {
            claimer: format!("sms-{}", uuid::Uuid::new_v4().simple()),
            policy: RetryPolicy {
                base: c.backoff_base,
                max: c.backoff_max,
                max_attempts: u32::try_from(c.max_attempts).unwrap_or(1).max(1),
            },
            claim_limit,
            deps,
            shared,
        }
    }
}

impl Actor for SmsActor {
    type Msg = SmsMsg;
    type State = SmsState;
    type Arguments = SmsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SmsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let shared = args.handle.shared.clone();
        let ctx = Arc::new(BatchCtx::new(args.deps, shared.clone()));
        let mut background = Vec::new();
        if !shared.stopping.load(Ordering::Acquire) {
            background.push(AbortOnDrop(tokio::spawn(listen(
                ctx.deps.pg.clone(),
                myself.clone(),
                shared.clone(),
            ))));
            background.push(AbortOnDrop(tokio::spawn(sweep(
                ctx.deps.config.sweep_interval,
                myself.clone(),
            ))));
        }
        Ok(SmsState {
            ctx,
            batch: None,
            again: false,
            background,
            alarm: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A fresh incarnation may inherit a lost wake; start with a batch.
        state
            .ctx
            .shared
            .wake_pending
            .store(false, Ordering::Release);
        kick(&myself, state);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SmsMsg::Wake => {
                state
                    .ctx
                    .shared
                    .wake_pending
                    .store(false, Ordering::Release);
                kick(&myself, state);
            }
            SmsMsg::BatchDone { full } => {
                state.batch = None;
                if std::mem::take(&mut state.again) || full {
                    kick(&myself, state);
                } else {
                    set_alarm(&myself, state);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = state.ctx.clone();
        ctx.shared.stopping.store(true, Ordering::Release);
        state.background.clear();
        state.alarm = None;
        if let Some(mut running) = state.batch.take() {
            let _ = running.cancel.send(true);
            let grace = ctx.deps.config.request_timeout + STOP_GRACE_EXTRA;
            if tokio::time::timeout(grace, &mut running.task.0)
                .await
                .is_err()
            {
                tracing::warn!("SMS sends did not finish in time; returning them to the outbox");
            }
        }
        match ctx
            .deps
            .store
            .release_sms(&ctx.claimer, None, ctx.deps.clock.now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "unsent SMS returned to the outbox"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release claimed SMS; they return after the lease")
            }
        }
        Ok(())
    }
}

/// Starts a batch, or asks for one more after the running one.
fn kick(myself: &ActorRef<SmsMsg>, state: &mut SmsState) {
    if state.ctx.shared.stopping.load(Ordering::Acquire) {
        return;
    }
    if state.batch.is_some() {
        state.again = true;
        return;
    }
    state.alarm = None;
    let (cancel, cancelled) = watch::channel(false);
    let ctx = state.ctx.clone();
    let me = myself.clone();
    let task = tokio::spawn(async move {
        let full = run_batch(&ctx, cancelled).await;
        let _ = me.cast(SmsMsg::BatchDone { full });
    });
    state.batch = Some(Running {
        cancel,
        task: AbortOnDrop(task),
    });
}

/// Sleeps until the outbox's next due time, when it comes before the sweep.
fn set_alarm(myself: &ActorRef<SmsMsg>, state: &mut SmsState) {
    if state.ctx.shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let ctx = state.ctx.clone();
    let me = myself.clone();
    state.alarm = Some(AbortOnDrop(tokio::spawn(async move {
        let due = match ctx.deps.store.next_sms_due().await {
            Ok(Some(due)) => due,
            // Nothing waiting, or no database: the sweep and the notifications cover it.
            Ok(None) | Err(_) => return,
        };
        let wait = (due - ctx.deps.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(MIN_ALARM);
        if wait >= ctx.deps.config.sweep_interval {
            return;
        }
        tokio::time::sleep(wait).await;
        wake(&ctx.shared, &me);
    })));
}

/// The periodic safety net: catches anything no notification announced.
async fn sweep(every: Duration, actor: ActorRef<SmsMsg>) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        // Direct, not coalesced: progress even if a wake was lost.
        if actor.cast(SmsMsg::Wake).is_err() {
            return;
        }
    }
}

/// Keeps a LISTEN connection open, reconnecting with backoff, and wakes the actor
/// on each notification (and after each reconnect, for what it may have missed).
async fn listen(pg: tokio_postgres::Config, actor: ActorRef<SmsMsg>, shared: Arc<Shared>) {
    let mut delay = LISTEN_RETRY_MIN;
    loop {
        match OutboxListener::connect(&pg).await {
            Ok(mut listener) => {
                delay = LISTEN_RETRY_MIN;
                wake(&shared, &actor);
                while listener.next().await.is_some() {
                    wake(&shared, &actor);
                }
                tracing::warn!("SMS outbox LISTEN connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "SMS outbox LISTEN connection failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTEN_RETRY_MAX);
    }
}

/// Claims one batch and processes it; true when the batch was full.
async fn run_batch(ctx: &BatchCtx, cancelled: watch::Receiver<bool>) -> bool {
    let now = ctx.deps.clock.now();
    let lease_until = now + chrono_duration(ctx.deps.config.lease);
    let claimed = match ctx
        .deps
        .store
        .claim_sms(&ctx.claimer, now, lease_until, ctx.claim_limit)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim SMS from the outbox");
            return false;
        }
    };
    let n = claimed.len();
    if n > 0 {
        tracing::debug!(claimed = n, "SMS batch claimed");
    }
    futures::stream::iter(claimed)
        .for_each_concurrent(ctx.deps.config.concurrency.max(1), |msg| {
            process(ctx, msg, cancelled.clone())
        })
        .await;
    i64::try_from(n).unwrap_or(i64::MAX) >= ctx.claim_limit
}

/// One claimed message: drop, fail, release or send it, and record the result.
async fn process(ctx: &BatchCtx, msg: ClaimedSms, mut cancelled: watch::Receiver<bool>) {
    let deps = &ctx.deps;
    let now = deps.clock.now();
    if retry::is_expired(now, msg.expires_at) {
        return expire(ctx, &msg, now).await;
    }
    let attempts = u32::try_from(msg.attempts).unwrap_or(0);
    if attempts > ctx.policy.max_attempts {
        // Claimed again after its sender died mid-attempt, too many times.
        return fail(ctx, &msg, None, "out of attempts", now).await;
    }
    let row = crate::crypto::OutboxRow {
        id: msg.id,
        recipient: &msg.recipient,
    };
    let Some(body) = msg
        .body_sealed
        .as_deref()
        .and_then(|b| deps.keys.open(b, row))
    else {
        // Sealed with another key (a changed JWT_SECRET) or damaged: unsendable.
        return fail(ctx, &msg, None, "message body could not be opened", now).await;
    };
    let stopped = tokio::select! {
        biased;
        // The watch guard is dropped here, before any await (it is not Send).
        _ = cancelled.wait_for(|stop| *stop) => true,
        _ = ctx.shared.limiter.until_ready() => false,
    };
    if stopped || *cancelled.borrow() {
        return release(ctx, &msg).await;
    }
    let now = deps.clock.now();
    if retry::is_expired(now, msg.expires_at) {
        return expire(ctx, &msg, now).await;
    }
    if now + chrono_duration(deps.config.request_timeout + LEASE_MARGIN) > msg.claimed_until {
        // Too little of the claim is left to finish the request inside it.
        return release(ctx, &msg).await;
    }
    let outcome = deps
        .sender
        .send(OutgoingSms {
            to: &msg.recipient,
            body: &body,
            expires_at: msg.expires_at,
            now,
        })
        .await;
    drop(body);
    record(ctx, &msg, attempts, outcome).await;
}

async fn record(ctx: &BatchCtx, msg: &ClaimedSms, attempts: u32, outcome: SendOutcome) {
    let deps = &ctx.deps;
    let now = deps.clock.now();
    let result = match &outcome {
        SendOutcome::Accepted { sid, status } => {
            SmsMetrics::bump(&ctx.shared.metrics.sent);
            tracing::info!(
                outbox_id = msg.id,
                purpose = %msg.purpose,
                provider_sid = sid.as_deref().unwrap_or("-"),
                attempts,
                "SMS accepted by the provider"
            );
            let rank = status.as_deref().and_then(delivery_rank);
            deps.store
                .record_sms_sent(
                    msg.id,
                    &ctx.claimer,
                    sid.as_deref(),
                    status.as_deref().filter(|_| rank.is_some()),
                    rank,
                    now,
                )
                .await
        }
        failure => {
            let code = match failure {
                SendOutcome::Rejected { code, .. } => *code,
                _ => None,
            };
            let why = failure.describe();
            let class = retry::classify(failure);
            let jitter: f64 = rand::random();
            match retry::decide(&ctx.policy, class, attempts, now, msg.expires_at, jitter) {
                Decision::Retry { at } => {
                    SmsMetrics::bump(&ctx.shared.metrics.retried);
                    tracing::warn!(outbox_id = msg.id, attempts, error = %why, retry_at = %at, "SMS attempt failed; will retry");
                    deps.store
                        .record_sms_retry(msg.id, &ctx.claimer, at, &why, code, now)
                        .await
                }
                Decision::Fail { code: c, reason } => {
                    let why = match reason {
                        FailReason::Permanent => why,
                        FailReason::OutOfAttempts => {
                            format!("gave up after {attempts} attempts: {why}")
                        }
                    };
                    if matches!(
                        failure,
                        SendOutcome::Rejected {
                            http_status: 401 | 403,
                            ..
                        }
                    ) || c == Some(retry::TWILIO_AUTH_FAILED)
                    {
                        tracing::error!(outbox_id = msg.id, error = %why, "Twilio refused authgate's credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN");
                    }
                    fail(ctx, msg, c.or(code), &why, now).await;
                    return;
                }
                Decision::Expire => return expire(ctx, msg, now).await,
            }
        }
    };
    log_record_result(msg.id, result);
}

async fn fail(ctx: &BatchCtx, msg: &ClaimedSms, code: Option<i32>, why: &str, now: DateTime<Utc>) {
    SmsMetrics::bump(&ctx.shared.metrics.failed);
    tracing::warn!(outbox_id = msg.id, purpose = %msg.purpose, error_code = ?code, error = %why, "SMS failed");
    let result = ctx
        .deps
        .store
        .record_sms_failed(msg.id, &ctx.claimer, code, why, now)
        .await;
    log_record_result(msg.id, result);
}

async fn expire(ctx: &BatchCtx, msg: &ClaimedSms, now: DateTime<Utc>) {
    SmsMetrics::bump(&ctx.shared.metrics.expired);
    tracing::info!(outbox_id = msg.id, purpose = %msg.purpose, "SMS content expired before sending; dropped");
    let result = ctx
        .deps
        .store
        .record_sms_expired(msg.id, &ctx.claimer, now)
        .await;
    log_record_result(msg.id, result);
}

async fn release(ctx: &BatchCtx, msg: &ClaimedSms) {
    let ids = [msg.id];
    if let Err(e) = ctx
        .deps
        .store
        .release_sms(&ctx.claimer, Some(&ids), ctx.deps.clock.now())
        .await
    {
        tracing::warn!(outbox_id = msg.id, error = %e, "could not release an SMS; it returns after the lease");
    }
}

fn log_record_result(id: i64, result: Result<bool, StoreError>) {
    match result {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                outbox_id = id,
                "SMS claim was lost before its outcome was recorded"
            )
        }
        Err(e) => {
            tracing::warn!(outbox_id = id, error = %e, "could not record an SMS outcome; it returns after the lease")
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    crate::clock::span(d)
}
