//! Sessions and their refresh tokens (`sessions`, `refresh_tokens`), and the
//! revocation facts the bearer guard needs.
//!
//! A session is one login; its refresh tokens form a family. Creating a session
//! is one statement that re-reads the account's 2FA state under a row lock, so a
//! password-only login cannot finish once 2FA is on. Rotation is one
//! conditional UPDATE plus the successor's INSERT: of several concurrent uses of
//! one token exactly one rotates it. A rotated token presented again within the
//! grace window gets the same successor back (a client retrying a lost answer);
//! later, or once the successor moved on, it is reuse and ends the session.
//!
//! Every revocation notifies `authgate_revocation` (payload: the user id) in
//! its own transaction, so every process drops its cached view of that user
//! (unless `DATABASE_LISTEN_URL=off`: then no process caches, and nothing is
//! sent).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::audit::ClientInfo;

/// The channel revocations are announced on, to this and every other process.
pub const REVOCATION_CHANNEL: &str = "authgate_revocation";

/// A new session (login) and its first refresh token (its hash; the token
/// itself goes to the client).
pub struct NewSession<'a> {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub token_hash: &'a [u8],
    pub amr: &'a [&'a str],
    pub now: DateTime<Utc>,
    /// The session's absolute end; rotation never moves it.
    pub expires_at: DateTime<Utc>,
    /// When this token ends if unused: the idle limit, capped by `expires_at`.
    pub token_expires_at: DateTime<Utc>,
    /// The client that logged in, shown in the list of sessions.
    pub client: &'a ClientInfo,
}

/// A session's login: when, and by which methods (RFC 8176 `amr`).
#[derive(Debug, Clone)]
pub struct SessionLogin {
    pub created_at: DateTime<Utc>,
    pub amr: Vec<String>,
}

/// One live session, as the user's list of sessions shows it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub amr: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A refresh token presented to `/auth/refresh`.
pub struct Presented<'a> {
    pub token_hash: &'a [u8],
    /// The hash of the token's deterministic successor (under the active key).
    pub successor_hash: &'a [u8],
    /// The hashes of its successors under every accepted key (the active
    /// first): a retry may come after a rotation of the refresh key.
    pub retry_hashes: &'a [Vec<u8>],
    pub now: DateTime<Utc>,
    /// `now` plus the idle limit (capped by the session's end in SQL).
    pub idle_until: DateTime<Utc>,
    /// A token rotated after this instant may be presented again (grace).
    pub grace_since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token is now rotated; its successor is stored.
    Rotated {
        session_id: Uuid,
        user_id: Uuid,
        amr: Vec<String>,
        /// The login that started the session.
        auth_time: DateTime<Utc>,
    },
    /// The token was rotated moments ago and its successor is still current:
    /// a retry; answer with the same successor (`successor_hash` says which,
    /// one of `Presented::retry_hashes`).
    Retried {
        session_id: Uuid,
        user_id: Uuid,
        amr: Vec<String>,
        auth_time: DateTime<Utc>,
        successor_hash: Vec<u8>,
    },
    /// The token was already rotated or revoked: reuse. The session is now revoked.
    Reused { user_id: Uuid },
    /// Unknown or expired (idle or absolute).
    Invalid,
}

/// What the bearer guard compares an access token with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationFacts {
    /// Access tokens issued at or before this instant are refused.
    pub tokens_valid_after: Option<DateTime<Utc>>,
    /// Sessions revoked recently enough that access tokens may still carry them.
    pub revoked_sessions: Vec<Uuid>,
}

impl Store {
    /// Creates a session and its first refresh token, unless the account now has
    /// 2FA on and `amr` lacks `sms` (or the account is banned or gone): then nothing is
    /// stored and the answer is false. `FOR SHARE` makes the check wait for a
    /// concurrent change of `two_fa` and re-read it, and makes that change wait
    /// for this insert, so the revocation that follows it sees this session.
    pub async fn create_session(&self, s: NewSession<'_>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let created = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH u AS (
                             SELECT id FROM users
                             WHERE id = $2 AND NOT (two_fa AND NOT ($5::text[] && ARRAY['sms', 'otp']))
                               AND banned_at IS NULL
                             FOR SHARE
                         ), s AS (
                             INSERT INTO sessions (id, user_id, amr, created_at, expires_at, last_used_at, ip, user_agent)
                             SELECT $1, u.id, $5, $6, $7, $6, $9, $10 FROM u
                             RETURNING id
                         )
                         INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, amr, created_at, expires_at)
                         SELECT $3, s.id, $2, $4, $5, $6, least($8, $7) FROM s
                         RETURNING family_id",
                    )
                    .await?,
                &[
                    &s.session_id,
                    &s.user_id,
                    &Uuid::new_v4(),
                    &s.token_hash,
                    &s.amr,
                    &s.now,
                    &s.expires_at,
                    &s.token_expires_at,
                    &s.client.ip,
                    &s.client.user_agent,
                ],
            )
            .await?;
        Ok(created.is_some())
    }

    /// When a live session of `user` began and how it was authenticated (the
    /// step-up check); None when it is unknown, another user's or ended.
    pub async fn session_login(
        &self,
        user: Uuid,
        session: Uuid,
    ) -> Result<Option<SessionLogin>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT created_at, amr FROM sessions
                         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    )
                    .await?,
                &[&session, &user],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(SessionLogin {
                created_at: r.try_get("created_at")?,
                amr: r.try_get("amr")?,
            }),
            None => None,
        })
    }

    /// Rotates a current token (storing its successor), recognises a retry
    /// within the grace window, and detects reuse.
    pub async fn rotate_refresh(&self, p: Presented<'_>) -> Result<RotateOutcome, StoreError> {
        let client = self.client().await?;
        let rotated = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH cur AS (
                             UPDATE refresh_tokens t SET rotated_at = $3
                             FROM sessions s
                             WHERE t.token_hash = $1 AND t.rotated_at IS NULL
                               AND t.revoked_at IS NULL AND t.expires_at > $3
                               AND s.id = t.family_id AND s.revoked_at IS NULL AND s.expires_at > $3
                             RETURNING t.family_id, t.user_id, s.amr, s.expires_at AS ends, s.created_at AS login
                         ), touched AS (
                             UPDATE sessions SET last_used_at = $3
                             WHERE id IN (SELECT family_id FROM cur)
                         ), next AS (
                             INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, amr, created_at, expires_at)
                             SELECT $5, family_id, user_id, $2, amr, $3, least($4, ends) FROM cur
                         )
                         SELECT family_id, user_id, amr, login FROM cur",
                    )
                    .await?,
                &[
                    &p.token_hash,
                    &p.successor_hash,
                    &p.now,
                    &p.idle_until,
                    &Uuid::new_v4(),
                ],
            )
            .await?;
        if let Some(r) = rotated {
            return Ok(RotateOutcome::Rotated {
                session_id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                amr: r.try_get(2)?,
                auth_time: r.try_get(3)?,
            });
        }
        let known = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT t.family_id, t.user_id, s.amr,
                                t.rotated_at IS NOT NULL OR t.revoked_at IS NOT NULL
                                    OR s.revoked_at IS NOT NULL AS spent,
                                t.revoked_at IS NULL AND s.revoked_at IS NULL AND s.expires_at > $3
                                    AND t.rotated_at > $4
                                    AND n.rotated_at IS NULL AND n.revoked_at IS NULL
                                    AND n.expires_at > $3 AS retry,
                                s.created_at, n.token_hash
                         FROM refresh_tokens t
                         JOIN sessions s ON s.id = t.family_id
                         LEFT JOIN refresh_tokens n ON n.token_hash = ANY($2) AND n.family_id = t.family_id
                         WHERE t.token_hash = $1",
                    )
                    .await?,
                &[&p.token_hash, &p.retry_hashes, &p.now, &p.grace_since],
            )
            .await?;
        let Some(r) = known else {
            return Ok(RotateOutcome::Invalid);
        };
        let session_id: Uuid = r.try_get(0)?;
        let user_id: Uuid = r.try_get(1)?;
        if r.try_get::<_, Option<bool>>(4)?.unwrap_or(false) {
            return Ok(RotateOutcome::Retried {
                session_id,
                user_id,
                amr: r.try_get(2)?,
                auth_time: r.try_get(5)?,
                successor_hash: r.try_get(6)?,
            });
        }
        if r.try_get::<_, bool>(3)? {
            drop(client);
            self.revoke_session(session_id, p.now).await?;
            return Ok(RotateOutcome::Reused { user_id });
        }
        Ok(RotateOutcome::Invalid)
    }

    /// Ends one session: its refresh tokens are refused and its access tokens
    /// fail the bearer guard. Returns the session's user, if it exists.
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "UPDATE sessions SET revoked_at = coalesce(revoked_at, $2)
                     WHERE id = $1 RETURNING user_id",
                )
                .await?,
                &[&session_id, &now],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user_id: Uuid = row.try_get(0)?;
        tx.execute(
            &tx.prepare_cached(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            )
            .await?,
            &[&session_id, &now],
        )
        .await?;
        notify(self, &tx, user_id).await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }

    /// Ends one session of `user` (none of another user's): its refresh
    /// tokens are refused and its access tokens fail the bearer guard, in every
    /// process. One statement; false when no live session of `user` has that id.
    pub async fn end_session_of(
        &self,
        user: Uuid,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "WITH ended AS (
                             UPDATE sessions SET revoked_at = $3
                             WHERE id = $2 AND user_id = $1 AND revoked_at IS NULL
                             RETURNING id
                         ), tokens AS (
                             UPDATE refresh_tokens SET revoked_at = $3
                             WHERE family_id IN (SELECT id FROM ended) AND revoked_at IS NULL
                             RETURNING id
                         ), told AS (
                             SELECT pg_notify($4, $1::text)
                             WHERE EXISTS (SELECT 1 FROM ended) AND $4::text IS NOT NULL
                         )
                         SELECT (SELECT count(*) FROM ended), (SELECT count(*) FROM tokens),
                                (SELECT count(*) FROM told)",
                    )
                    .await?,
                &[
                    &user,
                    &session_id,
                    &now,
                    &self.notify_channel(REVOCATION_CHANNEL),
                ],
            )
            .await?;
        let ended: i64 = row.try_get(0)?;
        Ok(ended > 0)
    }

    /// The live sessions of `user`, most recently used first: not ended, not
    /// past their absolute lifetime, and holding a refresh token that is
    /// neither used, revoked nor idle past its end.
    pub async fn sessions_of(
        &self,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        super::retry::read(|| async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT s.id, s.amr, s.created_at, s.last_used_at, s.expires_at,
                                    host(s.ip) AS ip, s.user_agent
                             FROM sessions s
                             WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2
                               AND EXISTS (SELECT 1 FROM refresh_tokens r
                                           WHERE r.family_id = s.id AND r.revoked_at IS NULL
                                             AND r.rotated_at IS NULL AND r.expires_at > $2)
                             ORDER BY s.last_used_at DESC, s.created_at DESC
                             LIMIT 100",
                        )
                        .await?,
                    &[&user, &now],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(SessionRow {
                        id: r.try_get("id")?,
                        amr: r.try_get("amr")?,
                        created_at: r.try_get("created_at")?,
                        last_used_at: r.try_get("last_used_at")?,
                        expires_at: r.try_get("expires_at")?,
                        ip: r.try_get("ip")?,
                        user_agent: r.try_get("user_agent")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Ends every session of `user` but `keep` (the caller's own, from its
    /// access token's `sid`). With no session to keep, access tokens issued up
    /// to `now` are refused too, which also covers tokens that carry no `sid`.
    /// Called when 2FA is turned on or off, and for any change of credentials.
    pub async fn revoke_other_sessions(
        &self,
        user: Uuid,
        keep_session: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // One statement. Other processes are told (NOTIFY, at commit) only when
        // something changed: PostgreSQL commits notifying transactions one at a
        // time, and a 2FA change of a user with no other session, the common
        // case, changes nothing another process caches.
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "WITH ended AS (
                             UPDATE sessions SET revoked_at = $3
                             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2
                             RETURNING id
                         ), tokens AS (
                             UPDATE refresh_tokens SET revoked_at = $3
                             WHERE user_id = $1 AND revoked_at IS NULL
                               AND family_id IS DISTINCT FROM $2
                             RETURNING id
                         ), fenced AS (
                             UPDATE users SET tokens_valid_after = greatest(tokens_valid_after, $3)
                             WHERE id = $1 AND $2::uuid IS NULL
                               AND tokens_valid_after IS DISTINCT FROM greatest(tokens_valid_after, $3)
                             RETURNING id
                         ), told AS (
                             SELECT pg_notify($4, $1::text)
                             WHERE (EXISTS (SELECT 1 FROM ended) OR EXISTS (SELECT 1 FROM tokens)
                                    OR EXISTS (SELECT 1 FROM fenced))
                               AND $4::text IS NOT NULL
                         )
                         SELECT (SELECT count(*) FROM ended), (SELECT count(*) FROM told)",
                    )
                    .await?,
                &[
                    &user,
                    &keep_session,
                    &now,
                    &self.notify_channel(REVOCATION_CHANNEL),
                ],
            )
            .await?;
        let ended: i64 = row.try_get(0)?;
        Ok(u64::try_from(ended).unwrap_or(0))
    }

    /// The session a refresh token belongs to, and its user, if the token is known.
    pub async fn refresh_family(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1",
                    )
                    .await?,
                &[&token_hash],
            )
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// What the bearer guard needs about `user`: None if the account is gone.
    /// Only sessions revoked after `since` are listed (older ones can no longer
    /// have unexpired access tokens).
    pub async fn revocation_facts(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Option<RevocationFacts>, StoreError> {
        super::retry::read(|| async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &client
                        .prepare_cached(
                            "SELECT u.tokens_valid_after,
                                    ARRAY(SELECT s.id FROM sessions s
                                          WHERE s.user_id = u.id AND s.revoked_at > $2)
                             FROM users u WHERE u.id = $1",
                        )
                        .await?,
                    &[&user, &since],
                )
                .await?;
            Ok(match row {
                Some(r) => Some(RevocationFacts {
                    tokens_valid_after: r.try_get(0)?,
                    revoked_sessions: r.try_get(1)?,
                }),
                None => None,
            })
        })
        .await
    }

    /// Deletes refresh tokens and sessions that ended before `cutoff`.
    pub async fn purge_refresh(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let tokens = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM refresh_tokens WHERE expires_at < $1")
                    .await?,
                &[&cutoff],
            )
            .await?;
        // Cascades to any token still attached.
        let sessions = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM sessions WHERE expires_at < $1")
                    .await?,
                &[&cutoff],
            )
            .await?;
        Ok(tokens + sessions)
    }
}

/// Announces, at commit, that `user`'s revocation facts changed; nothing when
/// the store sends no notifications (no process listens).
pub(super) async fn notify(
    store: &Store,
    tx: &deadpool_postgres::Transaction<'_>,
    user: Uuid,
) -> Result<(), StoreError> {
    if !store.notify {
        return Ok(());
    }
    tx.execute(
        &tx.prepare_cached("SELECT pg_notify($1, $2)").await?,
        &[&REVOCATION_CHANNEL, &user.to_string()],
    )
    .await?;
    Ok(())
}

/// What the revocation LISTEN connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// This user's facts changed.
    User(Uuid),
    /// A listener's heartbeat (`ping:<nonce>`), proving notifications arrive.
    Ping(String),
    /// A notification whose payload is neither: forget everything.
    Unknown,
}

impl Revoked {
    fn parse(payload: &str) -> Revoked {
        if let Some(nonce) = payload.strip_prefix("ping:") {
            return Revoked::Ping(nonce.to_owned());
        }
        Uuid::parse_str(payload).map_or(Revoked::Unknown, Revoked::User)
    }
}

impl Store {
    /// Sends a listener heartbeat on the revocation channel.
    pub async fn ping_revocation_listeners(&self, nonce: &str) -> Result<(), StoreError> {
        if !self.notify {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("SELECT pg_notify($1, $2)").await?,
                &[&REVOCATION_CHANNEL, &format!("ping:{nonce}")],
            )
            .await?;
        Ok(())
    }
}

/// Listens for `NOTIFY authgate_revocation` on a dedicated connection (a pooled
/// one would be recycled, silently dropping the LISTEN).
pub struct RevocationListener {
    /// Kept so the connection stays open; dropping it ends the session.
    _client: tokio_postgres::Client,
    notifications: tokio::sync::mpsc::UnboundedReceiver<Revoked>,
    driver: tokio::task::JoinHandle<()>,
}

impl RevocationListener {
    /// Connects and subscribes; once this returns, no notification is missed
    /// until `next` answers None.
    pub async fn connect(pg: &tokio_postgres::Config) -> Result<RevocationListener, StoreError> {
        use futures::StreamExt;
        let (client, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
        let (tx, notifications) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let what = Revoked::parse(n.payload());
                    if tx.send(what).is_err() {
                        break;
                    }
                }
            }
        });
        // The channel name is a constant identifier; LISTEN takes no parameters.
        client
            .batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))
            .await?;
        Ok(RevocationListener {
            _client: client,
            notifications,
            driver,
        })
    }

    /// The next notification; None once the connection is gone.
    pub async fn next(&mut self) -> Option<Revoked> {
        self.notifications.recv().await
    }
}

impl Drop for RevocationListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
