//! The purge actor: on a schedule, deletes what has outlived its retention
//! (`store::purge`): audit events, expired quota windows, final outbox rows and
//! sign-ups whose phone was never verified, and counts the rows per table in
//! `authgate_purged_rows_total`. Finished codes, flows and refresh tokens are
//! purged by the OTP actors already (`actors::otp`, `Store::purge`).
//!
//! One per process, supervised (restarted if it fails). It is off the request
//! path; every batch is its own short statement that skips locked rows, so
//! processes purging side by side share the work.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::supervisor::{start_child, ChildSpec, SupervisorMsg};
use crate::clock::Clock;
use crate::config::PurgeConfig;
use crate::metrics::Metrics;
use crate::store::purge::Purgeable;
use crate::store::{Store, StoreError};

/// Batches per table and run: a large backlog is worked off over several runs,
/// so a run (and a shutdown waiting for it) stays short.
const MAX_BATCHES_PER_RUN: usize = 200;

/// How long a quota window is kept after it ended: a sliding-window estimate
/// reads the previous window, and the longest window is a day.
const QUOTA_KEEP: Duration = Duration::from_secs(2 * 86_400);

/// What the purge needs.
pub struct PurgeDeps {
    pub store: Store,
    pub clock: Clock,
    pub config: PurgeConfig,
    /// `Config::unverified_signup_ttl`.
    pub unverified_signup_ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl PurgeDeps {
    fn retention(&self, what: Purgeable) -> Duration {
        match what {
            Purgeable::AuditEvents => self.config.audit_retention,
            Purgeable::QuotaCounters => QUOTA_KEEP,
            Purgeable::SmsOutbox => self.config.outbox_retention,
            Purgeable::UnverifiedUsers => self.unverified_signup_ttl,
        }
    }
}

pub enum PurgeMsg {
    /// Purge every table once.
    Run,
}

pub struct PurgeActor;

impl Actor for PurgeActor {
    type Msg = PurgeMsg;
    type State = Arc<PurgeDeps>;
    type Arguments = Arc<PurgeDeps>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        deps: Arc<PurgeDeps>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Once at start too: a process restarted more often than the interval
        // would otherwise never purge.
        let _ = myself.cast(PurgeMsg::Run);
        myself.send_interval(deps.config.interval, || PurgeMsg::Run);
        Ok(deps)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        deps: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PurgeMsg::Run => {
                for what in Purgeable::ALL {
                    match purge_table(deps, what).await {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(table = what.label(), rows, "purged old rows"),
                        Err(e) => {
                            tracing::warn!(table = what.label(), error = %e, "purge failed; will retry")
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Deletes `what` past its retention, batch by batch, counting as it goes.
async fn purge_table(deps: &PurgeDeps, what: Purgeable) -> Result<u64, StoreError> {
    let cutoff = deps.clock.now() - crate::clock::span(deps.retention(what));
    let batch = deps.config.batch_size.max(1);
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_RUN {
        let rows = deps.store.purge_batch(what, cutoff, batch).await?;
        deps.metrics.purged(what.label(), rows);
        total += rows;
        if rows < u64::try_from(batch).unwrap_or(u64::MAX) {
            break;
        }
        // Let requests have the pool and the runtime between batches.
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// Starts the purge actor under the supervisor.
pub async fn start(supervisor: &ActorRef<SupervisorMsg>, deps: PurgeDeps) -> Result<(), String> {
    let deps = Arc::new(deps);
    let spec = ChildSpec::new("purge", move |sup: ActorCell| {
        let deps = deps.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, PurgeActor, deps, sup).await?;
            Ok(actor.get_cell())
        }
    });
    start_child(supervisor, spec).await
}
