//! The SMS actor: drains the durable outbox (`store::outbox`) through an
//! [`SmsSender`], and the [`SmsHandle`] the rest of the process uses to wake it
//! and read its counters.
//!
//! It wakes on an in-process nudge (right after a transaction that queued a
//! message commits), on PostgreSQL `NOTIFY authgate_outbox` from another
//! process, at the time the next retry or expired lease falls due, and on a
//! periodic sweep as a safety net.
//!
//! Wake-ups. Queueing a message notifies no one: a NOTIFY inside the send
//! transaction would serialise the commits of every code issued in the
//! cluster (see `store::outbox`). The process that queued it nudges its own
//! actor after commit. Other processes only need waking when there is more
//! work than this one takes at once, so the actor sends one NOTIFY, in a
//! transaction of its own, when a claim comes back full (a backlog), at most
//! every [`BACKLOG_NOTIFY_GAP`]; idle processes' actors then claim alongside
//! it. Its own notifications it ignores (the payload names the claimer). The
//! sweep catches whatever no wake announced, such as a process that died
//! after committing and before nudging.
//!
//! Work. A wake starts a drain task that the actor owns. It claims up to a
//! batch in one statement (`FOR UPDATE SKIP LOCKED`, so processes sharing the
//! outbox never claim the same message) and keeps up to `concurrency` sends in
//! flight under the outbound rate limit. It claims the next batch as soon as
//! every claimed message has been started and the last claim was full (or a
//! wake came since, then no sooner than [`CLAIM_GAP`] after the last claim, so
//! a stream of nudges does not become a stream of one-row claims): sends are
//! never held back by the slowest request of the previous batch, and claimed
//! messages never wait longer than one batch for a slot. It ends when a claim
//! came back short and everything is sent and recorded.
//!
//! Outcomes go to a recorder running beside the sends, which writes them in
//! one statement per chunk: a chunk closes when it holds a batch's worth of
//! outcomes or [`FLUSH_AFTER`] after its first one, so one slow provider call
//! delays no other message's recording, and a burst costs one commit per
//! batch instead of one per message. Every outcome is recorded only while the
//! claim still holds, so a lost claim is never overwritten.
//!
//! The actor stays responsive while a drain runs:
//! - stopped (shutdown): the drain stops claiming and starting sends, lets the
//!   ones in flight finish, returns the rest to `pending`, records everything
//!   and ends;
//! - killed or crashed: the task is aborted with the actor's state; its claims
//!   lapse after the lease and the restarted actor (or another process) takes
//!   the messages again. Nothing is lost; a message whose request was in flight
//!   or whose outcome was not yet recorded may be sent twice (at-least-once, as
//!   the Twilio contract recommends for codes).

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::supervisor::{start_child, ChildSpec, Slot, SupervisorMsg};
use crate::clock::Clock;
use crate::config::SmsConfig;
use crate::crypto::Keys;
use crate::error::BoxError;
use crate::sms::console::ConsoleSender;
use crate::sms::retry::{self, Decision, FailReason, RetryPolicy};
use crate::sms::twilio::TwilioSender;
use crate::sms::webhook::WebhookSender;
use crate::sms::{delivery_rank, OutgoingSms, SendOutcome, SmsMetrics, SmsSender};
use crate::store::outbox::{ClaimedSms, OutboxListener, SmsOutcome};
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
/// A claim prompted by a wake (not by a full claim) waits this long after the
/// previous one: at hundreds of codes a second, a claim per nudge would cost
/// as many statements as issuing the codes. Bounds a message's added latency.
const CLAIM_GAP: Duration = Duration::from_millis(10);
/// Outcomes wait at most this long for others to share their statement.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Under a sustained backlog every claim is full; one NOTIFY per this period
/// is enough to keep other processes' actors claiming.
const BACKLOG_NOTIFY_GAP: Duration = Duration::from_millis(100);

pub enum SmsMsg {
    /// There may be work: start a drain, or claim again in the running one.
    Wake,
    /// The drain task ended: its last claim was short and all is recorded.
    BatchDone,
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
    /// The settings of the LISTEN connection (outside the pool); None with
    /// `DATABASE_LISTEN_URL=off`: other processes' messages are then found by
    /// the sweep and the due-time alarm alone.
    pub listen: Option<tokio_postgres::Config>,
}

/// Twilio or the webhook when configured, else the console.
pub fn sender_for(config: &SmsConfig) -> Result<Arc<dyn SmsSender>, BoxError> {
    match (&config.twilio, &config.webhook) {
        (Some(_), Some(_)) => Err("both Twilio and the SMS webhook are configured; set one".into()),
        (Some(twilio), None) => {
            tracing::info!(api = %twilio.api_base_url, "SMS are sent through Twilio");
            Ok(Arc::new(TwilioSender::new(twilio, config.request_timeout)?))
        }
        (None, Some(webhook)) => {
            let sender = WebhookSender::new(webhook, config.request_timeout)?;
            tracing::info!(
                url = %crate::config::masked_url(&webhook.url),
                "SMS are sent through the webhook (Standard Webhooks signatures)"
            );
            Ok(Arc::new(sender))
        }
        (None, None) => {
            // Loud on purpose: in this mode every code is readable by whoever
            // reads this process's output.
            tracing::warn!(
                "SMS ARE NOT SENT: the console sender prints every SMS, with its one-time code, \
                 to standard output. For development only: set TWILIO_ACCOUNT_SID, \
                 TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER (or SMS_SENDER=webhook with \
                 SMS_WEBHOOK_URL and SMS_WEBHOOK_SECRET) before real use"
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
    /// Tells the running drain to claim again.
    more: Arc<Notify>,
    task: AbortOnDrop,
}

pub struct SmsState {
    ctx: Arc<BatchCtx>,
    batch: Option<Running>,
    /// A wake arrived during the drain: start another after it, in case the
    /// drain was already ending when it heard of the wake.
    again: bool,
    /// The LISTEN connection and the sweep ticker.
    background: Vec<AbortOnDrop>,
    /// Wakes the actor when the next retry or lease falls due.
    alarm: Option<AbortOnDrop>,
}

impl BatchCtx {
    fn new(deps: Arc<SmsDeps>, shared: Arc<Shared>) -> BatchCtx {
        let c = &deps.config;
        BatchCtx {
            claimer: format!("sms-{}", uuid::Uuid::new_v4().simple()),
            policy: RetryPolicy {
                base: c.backoff_base,
                max: c.backoff_max,
                max_attempts: u32::try_from(c.max_attempts).unwrap_or(1).max(1),
            },
            claim_limit: claim_limit(c),
            deps,
            shared,
        }
    }
}

/// Messages one claim takes: the batch size, but no more than can be sent well
/// within the lease at the outbound rate (the rest stays pending for the next
/// claim or another process), and at least one. A drain holds at most one
/// claim's worth of messages waiting besides the `concurrency` in flight, so
/// a batch smaller than the concurrency does not cap the sends in flight.
fn claim_limit(c: &SmsConfig) -> i64 {
    let usable = c.lease.saturating_sub(c.request_timeout + LEASE_MARGIN);
    let by_rate = (f64::from(c.rate_per_sec) * usable.as_secs_f64() / 2.0) as i64;
    c.batch_size
        .min(by_rate.max(i64::try_from(c.concurrency).unwrap_or(1)))
        .max(1)
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
            if let Some(pg) = &ctx.deps.listen {
                background.push(AbortOnDrop(tokio::spawn(listen(
                    pg.clone(),
                    ctx.claimer.clone(),
                    myself.clone(),
                    shared.clone(),
                ))));
            } else {
                // No LISTEN, so no wake after a (re)start: look at once.
                wake(&shared, &myself);
            }
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
            SmsMsg::BatchDone => {
                state.batch = None;
                if std::mem::take(&mut state.again) {
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

/// Starts a drain, or asks the running one to claim again.
fn kick(myself: &ActorRef<SmsMsg>, state: &mut SmsState) {
    if state.ctx.shared.stopping.load(Ordering::Acquire) {
        return;
    }
    if let Some(running) = &state.batch {
        running.more.notify_one();
        state.again = true;
        return;
    }
    state.alarm = None;
    let (cancel, cancelled) = watch::channel(false);
    let more = Arc::new(Notify::new());
    let ctx = state.ctx.clone();
    let me = myself.clone();
    let wanted = more.clone();
    let task = tokio::spawn(async move {
        drain(&ctx, cancelled, &wanted).await;
        let _ = me.cast(SmsMsg::BatchDone);
    });
    state.batch = Some(Running {
        cancel,
        more,
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
/// on each notification but its own (and after each reconnect, for what it may
/// have missed).
async fn listen(
    pg: tokio_postgres::Config,
    claimer: String,
    actor: ActorRef<SmsMsg>,
    shared: Arc<Shared>,
) {
    let mut delay = LISTEN_RETRY_MIN;
    loop {
        match OutboxListener::connect(&pg).await {
            Ok(mut listener) => {
                delay = LISTEN_RETRY_MIN;
                wake(&shared, &actor);
                while let Some(from) = listener.next().await {
                    if from != claimer {
                        wake(&shared, &actor);
                    }
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

/// One claimed message's outcome, on its way to the recorder.
type Done = (i64, SmsOutcome);

/// Claims, sends and records until a claim comes back short and everything
/// claimed is recorded, or until stopped. Sending and recording run side by
/// side in this one task (so aborting it stops both).
async fn drain(ctx: &BatchCtx, cancelled: watch::Receiver<bool>, more: &Notify) {
    let (done, outcomes) = mpsc::unbounded_channel();
    tokio::join!(
        send_all(ctx, cancelled, more, done),
        record_all(ctx, outcomes)
    );
}

/// The sending half of a drain; see the module doc for when it claims.
async fn send_all(
    ctx: &BatchCtx,
    mut cancelled: watch::Receiver<bool>,
    more: &Notify,
    done: mpsc::UnboundedSender<Done>,
) {
    let concurrency = ctx.deps.config.concurrency.max(1);
    let mut queue: VecDeque<ClaimedSms> = VecDeque::new();
    let mut inflight = FuturesUnordered::new();
    // Claim (again) once every claimed message has been started.
    let mut claim = true;
    let mut last_full = false;
    let mut last_claim: Option<Instant> = None;
    let mut last_notify: Option<Instant> = None;
    let mut stopped = false;
    loop {
        stopped |= *cancelled.borrow();
        if stopped {
            claim = false;
            for msg in queue.drain(..) {
                let _ = done.send((msg.id, SmsOutcome::Released));
            }
        }
        while inflight.len() < concurrency {
            let Some(msg) = queue.pop_front() else { break };
            inflight.push(process(ctx, msg, cancelled.clone()));
        }
        if claim && queue.is_empty() {
            claim = false;
            let not_before = match last_claim {
                Some(at) if !last_full => at + CLAIM_GAP,
                _ => Instant::now(),
            };
            let claiming = async {
                tokio::time::sleep_until(not_before).await;
                claim_batch(ctx).await
            };
            tokio::pin!(claiming);
            // Sends in flight keep finishing while the claim runs.
            let claimed = loop {
                tokio::select! {
                    claimed = &mut claiming => break claimed,
                    Some(d) = inflight.next(), if !inflight.is_empty() => {
                        let _ = done.send(d);
                    }
                }
            };
            last_claim = Some(Instant::now());
            let Some(claimed) = claimed else {
                last_full = false;
                continue;
            };
            last_full = i64::try_from(claimed.len()).unwrap_or(i64::MAX) >= ctx.claim_limit;
            if last_full {
                claim = true;
                if last_notify.is_none_or(|at| at.elapsed() >= BACKLOG_NOTIFY_GAP) {
                    last_notify = Some(Instant::now());
                    notify_backlog(ctx);
                }
            }
            queue.extend(claimed);
            continue;
        }
        // Nothing waits to be started (else sends would be in flight) and
        // nothing is to be claimed: done once the last sends are in.
        if inflight.is_empty() {
            break;
        }
        tokio::select! {
            Some(d) = inflight.next() => {
                let _ = done.send(d);
            }
            _ = more.notified(), if !claim && !stopped => claim = true,
            changed = cancelled.changed(), if !stopped => {
                if changed.is_err() {
                    // The actor's state is gone: stop as if told to.
                    stopped = true;
                }
            }
            else => break,
        }
    }
}

/// Claims one batch; None (logged) when the database failed.
async fn claim_batch(ctx: &BatchCtx) -> Option<Vec<ClaimedSms>> {
    let now = ctx.deps.clock.now();
    let lease_until = now + chrono_duration(ctx.deps.config.lease);
    SmsMetrics::bump(&ctx.shared.metrics.claim_statements);
    match ctx
        .deps
        .store
        .claim_sms(&ctx.claimer, now, lease_until, ctx.claim_limit)
        .await
    {
        Ok(claimed) => {
            if !claimed.is_empty() {
                tracing::debug!(claimed = claimed.len(), "SMS batch claimed");
            }
            Some(claimed)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not claim SMS from the outbox");
            None
        }
    }
}

/// A full claim: wakes the other processes' actors, off the sending path.
fn notify_backlog(ctx: &BatchCtx) {
    let store = ctx.deps.store.clone();
    let from = ctx.claimer.clone();
    tokio::spawn(async move {
        if let Err(e) = store.notify_sms_backlog(&from).await {
            tracing::debug!(error = %e, "could not notify other processes of the SMS backlog");
        }
    });
}

/// The recording half of a drain: gathers outcomes into chunks (a batch's
/// worth, or whatever came within `FLUSH_AFTER` of a chunk's first) and
/// records each chunk with one statement, until the sending half is done.
async fn record_all(ctx: &BatchCtx, mut outcomes: mpsc::UnboundedReceiver<Done>) {
    let max = usize::try_from(ctx.claim_limit).unwrap_or(1).max(1);
    let mut chunk = Vec::with_capacity(max);
    while let Some(first) = outcomes.recv().await {
        chunk.push(first);
        let deadline = Instant::now() + FLUSH_AFTER;
        let mut open = true;
        while open && chunk.len() < max {
            tokio::select! {
                next = outcomes.recv() => match next {
                    Some(d) => chunk.push(d),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        flush(ctx, std::mem::take(&mut chunk)).await;
    }
}

/// Records a chunk of outcomes in one statement. Should the statement fail on
/// one bad row (a provider sid seen before, say), records them one by one, so
/// that row fails alone.
async fn flush(ctx: &BatchCtx, chunk: Vec<Done>) {
    let store = &ctx.deps.store;
    let now = ctx.deps.clock.now();
    SmsMetrics::bump(&ctx.shared.metrics.record_statements);
    match store.record_sms_outcomes(&ctx.claimer, &chunk, now).await {
        Ok(recorded) => log_recorded(&chunk, &recorded),
        Err(StoreError::Database(e)) if chunk.len() > 1 => {
            tracing::warn!(error = %e, outcomes = chunk.len(), "recording SMS outcomes together failed; recording them one by one");
            for one in chunk.chunks(1) {
                SmsMetrics::bump(&ctx.shared.metrics.record_statements);
                match store.record_sms_outcomes(&ctx.claimer, one, now).await {
                    Ok(recorded) => log_recorded(one, &recorded),
                    Err(e) => log_not_recorded(one, &e),
                }
            }
        }
        Err(e) => log_not_recorded(&chunk, &e),
    }
}

fn log_recorded(chunk: &[Done], recorded: &[i64]) {
    if recorded.len() == chunk.len() {
        return;
    }
    let recorded: HashSet<i64> = recorded.iter().copied().collect();
    for (id, outcome) in chunk {
        // A release that finds the claim gone has nothing to give back.
        if !recorded.contains(id) && *outcome != SmsOutcome::Released {
            tracing::warn!(
                outbox_id = id,
                "SMS claim was lost before its outcome was recorded"
            );
        }
    }
}

fn log_not_recorded(chunk: &[Done], e: &StoreError) {
    for (id, outcome) in chunk {
        if *outcome == SmsOutcome::Released {
            tracing::warn!(outbox_id = id, error = %e, "could not release an SMS; it returns after the lease");
        } else {
            tracing::warn!(outbox_id = id, error = %e, "could not record an SMS outcome; it returns after the lease");
        }
    }
}

/// One claimed message: drop, fail, release or send it; what became of it.
async fn process(ctx: &BatchCtx, msg: ClaimedSms, mut cancelled: watch::Receiver<bool>) -> Done {
    let deps = &ctx.deps;
    let now = deps.clock.now();
    if retry::is_expired(now, msg.expires_at) {
        return (msg.id, expire(ctx, &msg));
    }
    let attempts = u32::try_from(msg.attempts).unwrap_or(0);
    if attempts > ctx.policy.max_attempts {
        // Claimed again after its sender died mid-attempt, too many times.
        return (msg.id, fail(ctx, &msg, None, "out of attempts".to_owned()));
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
        return (
            msg.id,
            fail(
                ctx,
                &msg,
                None,
                "message body could not be opened".to_owned(),
            ),
        );
    };
    let stopped = tokio::select! {
        biased;
        // The watch guard is dropped here, before any await (it is not Send).
        _ = cancelled.wait_for(|stop| *stop) => true,
        _ = ctx.shared.limiter.until_ready() => false,
    };
    if stopped || *cancelled.borrow() {
        return (msg.id, SmsOutcome::Released);
    }
    let now = deps.clock.now();
    if retry::is_expired(now, msg.expires_at) {
        return (msg.id, expire(ctx, &msg));
    }
    if now + chrono_duration(deps.config.request_timeout + LEASE_MARGIN) > msg.claimed_until {
        // Too little of the claim is left to finish the request inside it.
        return (msg.id, SmsOutcome::Released);
    }
    let outcome = deps
        .sender
        .send(OutgoingSms {
            outbox_id: msg.id,
            to: &msg.recipient,
            body: &body,
            expires_at: msg.expires_at,
            now,
        })
        .await;
    drop(body);
    (msg.id, judge(ctx, &msg, attempts, outcome))
}

/// What an attempt's outcome means for the message: counted and logged here,
/// recorded by the drain's recorder.
fn judge(ctx: &BatchCtx, msg: &ClaimedSms, attempts: u32, outcome: SendOutcome) -> SmsOutcome {
    let now = ctx.deps.clock.now();
    let failure = match outcome {
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
            return SmsOutcome::Sent {
                provider_sid: sid,
                delivery_status: status.filter(|_| rank.is_some()),
                delivery_rank: rank,
            };
        }
        failure => failure,
    };
    let code = match &failure {
        SendOutcome::Rejected { code, .. } => *code,
        _ => None,
    };
    let why = failure.describe();
    let class = retry::classify(&failure);
    let jitter: f64 = rand::rngs::OsRng.gen();
    match retry::decide(&ctx.policy, class, attempts, now, msg.expires_at, jitter) {
        Decision::Retry { at } => {
            SmsMetrics::bump(&ctx.shared.metrics.retried);
            tracing::warn!(outbox_id = msg.id, attempts, error = %why, retry_at = %at, "SMS attempt failed; will retry");
            SmsOutcome::Retry {
                next_attempt_at: at,
                last_error: why,
                error_code: code,
            }
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
                if ctx.deps.sender.name() == "webhook" {
                    tracing::error!(outbox_id = msg.id, error = %why, "the SMS webhook refused authgate's request: check that its receiver verifies with SMS_WEBHOOK_SECRET");
                } else {
                    tracing::error!(outbox_id = msg.id, error = %why, "Twilio refused authgate's credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN");
                }
            }
            fail(ctx, msg, c.or(code), why)
        }
        Decision::Expire => expire(ctx, msg),
    }
}

fn fail(ctx: &BatchCtx, msg: &ClaimedSms, code: Option<i32>, why: String) -> SmsOutcome {
    SmsMetrics::bump(&ctx.shared.metrics.failed);
    tracing::warn!(outbox_id = msg.id, purpose = %msg.purpose, error_code = ?code, error = %why, "SMS failed");
    SmsOutcome::Failed {
        error_code: code,
        last_error: why,
    }
}

fn expire(ctx: &BatchCtx, msg: &ClaimedSms) -> SmsOutcome {
    SmsMetrics::bump(&ctx.shared.metrics.expired);
    tracing::info!(outbox_id = msg.id, purpose = %msg.purpose, "SMS content expired before sending; dropped");
    SmsOutcome::Expired
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    crate::clock::span(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_tools_settings_claim_a_whole_batch() {
        // AUTHGATE_SMS_RATE_PER_SEC=10000, AUTHGATE_SMS_CONCURRENCY=64, defaults
        // otherwise: the rate allows far more than a batch within the lease.
        let c = SmsConfig {
            rate_per_sec: 10_000,
            concurrency: 64,
            ..SmsConfig::default()
        };
        assert_eq!(claim_limit(&c), 50);
        assert_eq!(claim_limit(&SmsConfig::default()), 50);
    }

    #[test]
    fn a_slow_rate_claims_only_what_the_lease_can_send() {
        // One a second, 60 s lease less 11 s for the last request: 24 fit twice over.
        let c = SmsConfig {
            rate_per_sec: 1,
            concurrency: 8,
            ..SmsConfig::default()
        };
        assert_eq!(claim_limit(&c), 24);
        // Never below the concurrency, nor below one.
        let c = SmsConfig {
            rate_per_sec: 1,
            concurrency: 40,
            lease: Duration::from_secs(12),
            ..SmsConfig::default()
        };
        assert_eq!(claim_limit(&c), 40);
        let c = SmsConfig {
            batch_size: 0,
            ..SmsConfig::default()
        };
        assert_eq!(claim_limit(&c), 1);
    }
}
