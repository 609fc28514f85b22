//! Typed configuration, read once from the environment (and an optional `.env`)
//! in `main` and passed down. Nothing else in the crate reads the environment.
//!
//! Every problem names its variable in one line, so a bad deployment fails at
//! start-up with a message an operator can act on, never a backtrace.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use warp::http::header::HeaderName;

use crate::domain::phone::{is_known_region, NumberType, SmsDestinations, TestPhones};
pub use crate::keyring::SigningAlg;

/// The SMS sweep's default with `DATABASE_LISTEN_URL=off` (see `from_lookup`).
pub const LISTEN_OFF_SWEEP: Duration = Duration::from_secs(1);

/// The smallest accepted `JWT_SECRET`, in bytes: HS256 wants at least the hash size.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the database comes from.
#[derive(Clone)]
pub enum DatabaseSource {
    /// `DATABASE_URL` was given: an external PostgreSQL.
    Url(Box<tokio_postgres::Config>),
    /// No `DATABASE_URL`: authgate runs a private PostgreSQL under the data folder.
    Embedded,
}

impl fmt::Debug for DatabaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // tokio_postgres::Config's Debug already redacts the password.
            DatabaseSource::Url(c) => f
                .debug_struct("Url")
                .field("host", &c.get_hosts())
                .field("port", &c.get_ports())
                .field("user", &c.get_user())
                .field("dbname", &c.get_dbname())
                .finish(),
            DatabaseSource::Embedded => f.write_str("Embedded"),
        }
    }
}

/// Where the LISTEN connections (SMS wake-ups, the revocation cache) go:
/// `DATABASE_LISTEN_URL`.
#[derive(Clone)]
pub enum ListenSource {
    /// Unset: the pool's own settings (`DATABASE_URL`, or the private PostgreSQL).
    Database,
    /// A PostgreSQL URL of its own, e.g. the leader directly (multi-host with
    /// `target_session_attrs=read-write`) while `DATABASE_URL` goes through a
    /// pooler.
    Url(Box<tokio_postgres::Config>),
    /// `off`: no LISTEN connection and no NOTIFY sent. The SMS actor finds
    /// other processes' messages by polling the outbox, and the revocation
    /// cache stays off (every check reads PostgreSQL).
    Off,
}

impl ListenSource {
    /// Whether statements send `NOTIFY` (someone may be listening).
    pub fn notifies(&self) -> bool {
        !matches!(self, ListenSource::Off)
    }

    /// The settings the LISTEN connections use, given the pool's; None when off.
    pub fn settings(&self, db: &tokio_postgres::Config) -> Option<tokio_postgres::Config> {
        match self {
            ListenSource::Database => Some(db.clone()),
            ListenSource::Url(c) => Some((**c).clone()),
            ListenSource::Off => None,
        }
    }

    /// For `check-config` and the start-up log: never the password.
    pub fn describe(&self) -> String {
        match self {
            ListenSource::Database => "unset: LISTEN on the DATABASE_URL settings".to_owned(),
            ListenSource::Url(c) => format!("LISTEN on {}", describe_pg(c)),
            ListenSource::Off => {
                "off: no LISTEN/NOTIFY; SMS by polling, revocation cache off".to_owned()
            }
        }
    }
}

impl fmt::Debug for ListenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Connection settings for display: hosts, ports, user, database, and only
/// whether a password is set.
fn describe_pg(c: &tokio_postgres::Config) -> String {
    format!(
        "host {:?}, port {:?}, user {:?}, dbname {:?}, password {}",
        c.get_hosts(),
        c.get_ports(),
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or(""),
        if c.get_password().is_some() {
            "set"
        } else {
            "unset"
        }
    )
}

/// The effective configuration of one authgate process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST`: address the HTTP server binds (default loopback: expose it on purpose).
    pub host: IpAddr,
    /// `PORT`: HTTP port (default 3000; 0 picks a free one, as the tests do).
    pub port: u16,
    /// `DATABASE_URL`, or the embedded default.
    pub database: DatabaseSource,
    /// `DATABASE_LISTEN_URL`: unset (LISTEN on the `DATABASE_URL` settings), a
    /// PostgreSQL URL of its own (the leader directly, when `DATABASE_URL`
    /// goes through a pooler), or `off` (no LISTEN/NOTIFY: the SMS actor polls
    /// the outbox, its sweep then 1 s by default, and the revocation cache is
    /// off), for engines without LISTEN/NOTIFY.
    pub listen: ListenSource,
    /// `AUTHGATE_LOCKS`: `advisory` (default, PostgreSQL advisory locks) or
    /// `rows` (a row lock in `lock_rows`, for engines without advisory locks).
    /// Every process (and command) on one database must use the same mode:
    /// an advisory lock and a row lock on one key do not exclude each other.
    pub locks: crate::store::LockMode,
    /// `AUTHGATE_DATA_DIR`: private PostgreSQL data and generated secrets (default `./var`).
    pub data_dir: PathBuf,
    /// `AUTHGATE_DB_POOL_SIZE`: connections in the pool (default 16).
    pub db_pool_size: usize,
    /// `AUTHGATE_DB_TIMEOUT`: how long a request waits for a connection before 503.
    pub db_timeout: Duration,
    /// `JWT_SECRET`: the shared HS256 key (at least 32 bytes), used only with
    /// `JWT_ALGORITHM=HS256`. Otherwise, from earlier versions: read as the
    /// master key when `AUTHGATE_MASTER_KEY` is unset.
    pub jwt_secret: Option<SecretString>,
    /// `JWT_ALGORITHM`: `EdDSA` (default), `ES256`, or `HS256` (shared secret).
    pub jwt_algorithm: SigningAlg,
    /// `AUTHGATE_MASTER_KEY`: at least 32 bytes; the key ring's key-encryption
    /// key is derived from it (HKDF). None: `JWT_SECRET` (unless HS256), else
    /// generated once into the data folder.
    pub master_key: Option<SecretString>,
    /// `AUTHGATE_MASTER_KEY_PREVIOUS`: the master key before a change; keys
    /// sealed under it are resealed under the new one at start.
    pub master_key_previous: Option<SecretString>,
    /// `AUTHGATE_ADMIN_TOKEN`: the bearer token of the admin API (at least 32
    /// bytes). Unset: the admin API is off and its routes answer 404.
    pub admin_token: Option<SecretString>,
    /// `AUTHGATE_ADMIN_JWT` (`on`/`off`, default off): the admin API also
    /// accepts the access token of an account with the admin role (granted by
    /// `authgate admin grant EMAIL`) whose session passed a second factor.
    pub admin_jwt: bool,
    /// `AUTHGATE_KEY_ROTATION`: how often signing, code, outbox and refresh keys
    /// rotate (default 30 days; `off`: only by `authgate keys rotate`).
    pub key_rotation: Option<Duration>,
    /// `AUTHGATE_KEY_RELOAD`: how often each process reloads the key ring
    /// (default 30 s); a rotation waits two of these before promoting again.
    pub key_reload: Duration,
    /// `AUTHGATE_ENV`: `development` (default), `staging` or `production`.
    /// Production refuses test phone numbers.
    pub env: DeployEnv,
    /// `AUTHGATE_TEST_PHONES`: `+15005550006=123456,...`: numbers with a
    /// fixed code whose SMS never reach a provider (not in production).
    pub test_phones: TestPhones,
    /// `AUTHGATE_PUBLIC_URL`: the base URL clients reach authgate at, for the
    /// `jwks_uri` of `/.well-known/openid-configuration` (default: the
    /// listening address, `http://127.0.0.1:PORT` for an unspecified one).
    pub public_url: Option<String>,
    /// `JWT_EXPIRATION_TIME`: access token lifetime (default 15 minutes).
    pub jwt_expiration: Duration,
    /// `OTP_EXPIRATION_MINUTES`: code validity (default 10).
    pub otp_expiration: Duration,
    /// `OTP_LENGTH`: digits per code (default 6, 4 to 10).
    pub otp_length: u8,
    /// `AUTHGATE_HASH_CONCURRENCY`: password hashes run at once (default: CPU count).
    /// Each argon2 hash holds 19 MiB, so this also bounds hashing memory.
    pub hash_concurrency: usize,
    /// `AUTHGATE_HASH_QUEUE`: hashes that may wait for a thread (default 256);
    /// beyond it a login or sign-up answers 503 `overloaded` at once.
    pub hash_queue: usize,
    /// `AUTHGATE_HASH_QUEUE_TIMEOUT`: longest wait for a hashing thread (default
    /// 5 s, at most 30 s); a hash that waited longer is dropped as `overloaded`.
    pub hash_queue_timeout: Duration,
    /// `AUTHGATE_PG_OS_USER`: the unprivileged account the private PostgreSQL runs as
    /// when authgate itself runs as root (default `postgres`).
    pub pg_os_user: String,
    /// `AUTHGATE_PG_STATE_DIR`: where a root authgate keeps the private cluster
    /// when `pg_os_user` cannot enter the data folder (default `/var/lib/authgate`;
    /// one folder per data folder, named in its `pg-location`).
    pub pg_state_dir: PathBuf,
    /// `AUTHGATE_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `AUTHGATE_SHUTDOWN_GRACE`: how long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// `OTP_MAX_ATTEMPTS`: wrong tries per code before it is dead (default 5).
    pub otp_max_attempts: u32,
    /// `OTP_RESEND_COOLDOWN`: minimum time between two codes for one user and purpose.
    pub otp_resend_cooldown: Duration,
    /// `AUTHGATE_OTP_SHARDS`: OTP actors; a user's codes always go to the same one.
    pub otp_shards: usize,
    /// `LOGIN_MAX_RESENDS`: code resends allowed in one login flow (default 3).
    pub login_max_resends: u32,
    /// `LOGIN_FLOW_TTL`: how long a login flow may wait for its code (default 15 minutes).
    pub login_flow_ttl: Duration,
    /// `JWT_ISSUER`: the `iss` of access tokens.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE`: the `aud` of access tokens, comma-separated when several
    /// services accept them (a string for one, an array for several).
    pub jwt_audience: Vec<String>,
    /// `AUTHGATE_SESSION_MAX_LIFETIME` (older name `REFRESH_TOKEN_TTL`): a
    /// session's absolute lifetime from its login; refreshing never extends it
    /// (default 30 days).
    pub refresh_ttl: Duration,
    /// `AUTHGATE_SESSION_IDLE_TIMEOUT`: a session not refreshed for this long
    /// ends (default 7 days).
    pub session_idle_timeout: Duration,
    /// `AUTHGATE_REFRESH_GRACE`: how long a just-rotated refresh token may be
    /// presented again (a client retrying a lost answer) and get the same new
    /// token, instead of counting as reuse (default 10 s; 0 turns it off).
    pub refresh_grace: Duration,
    /// `AUTHGATE_STEP_UP_WINDOW`: how recent a login with a second factor (an
    /// SMS code or a recovery code) must be for the actions that need one on an
    /// account with 2FA (changing the phone, new recovery codes); default 10 min.
    pub step_up_window: Duration,
    /// SMS delivery: Twilio (when configured) or the console, and the outbox tuning.
    pub sms: SmsConfig,
    /// Local per-IP rate limits (governor), per process.
    pub rate_limits: RateLimitConfig,
    /// Quotas and lockouts enforced in PostgreSQL, across every process.
    pub quotas: QuotaConfig,
    /// `AUTHGATE_SIGNUP_REVEAL_TAKEN`: answer a sign-up with a registered e-mail or
    /// verified phone with 409 `email_taken`/`phone_taken` (the tutorial's answer,
    /// which lets anyone enumerate accounts). Default false: such a sign-up answers
    /// 201 like a fresh one, creates nothing, and the owner is told by SMS.
    pub signup_reveal_taken: bool,
    /// `AUTHGATE_UNVERIFIED_SIGNUP_TTL`: an account whose phone is still unverified
    /// this long after sign-up is deleted by the purge actor (default 7 days), so
    /// an abandoned or squatting sign-up does not hold an e-mail forever.
    pub unverified_signup_ttl: Duration,
    /// Retention of the tables that would otherwise grow forever.
    pub purge: PurgeConfig,
}

/// The purge actor: what it deletes, how often, in what batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeConfig {
    /// `AUTHGATE_PURGE_INTERVAL`: time between two purge runs (default 10 minutes).
    pub interval: Duration,
    /// `AUTHGATE_PURGE_BATCH`: rows deleted per statement (default 1000), so no
    /// run holds many row locks or one long transaction.
    pub batch_size: i64,
    /// `AUTHGATE_AUDIT_RETENTION`: how long audit events are kept (default 90 days).
    pub audit_retention: Duration,
    /// `AUTHGATE_OUTBOX_RETENTION`: how long an outbox row in a final state (its
    /// body already erased) is kept for delivery callbacks and support (default 7 days).
    pub outbox_retention: Duration,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig {
            interval: Duration::from_secs(600),
            batch_size: 1000,
            audit_retention: Duration::from_secs(90 * 86_400),
            outbox_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Limits that must hold across processes, so they live in PostgreSQL. Each has
/// its own variable so a load test can raise it; none can be switched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// `AUTHGATE_SMS_PER_PHONE_HOUR` / `_DAY`: codes sent to one number.
    pub sms_per_phone_hour: i32,
    pub sms_per_phone_day: i32,
    /// `AUTHGATE_SMS_PER_ACCOUNT_HOUR`: codes sent for one account.
    pub sms_per_account_hour: i32,
    /// `AUTHGATE_SMS_GLOBAL_PER_MINUTE`: every code of every account: the circuit
    /// breaker against SMS pumping.
    pub sms_global_per_minute: i32,
    /// `AUTHGATE_SMS_PER_REGION_HOUR`: codes sent to one ISO region per hour
    /// (`300`), with per-region overrides (`300,US=3000,GB=500`).
    pub sms_per_region_hour: i32,
    pub sms_per_region_hour_overrides: Vec<(String, i32)>,
    /// `AUTHGATE_SMS_ALLOWED_REGIONS` (ISO regions, `US,CA,GB`, or `*`) and
    /// `AUTHGATE_SMS_ALLOWED_NUMBER_TYPES` (`mobile,fixed_line_or_mobile`).
    pub sms_destinations: SmsDestinations,
    /// `AUTHGATE_CODE_FAILURES_MAX`: wrong codes in a row, over every purpose
    /// and flow of an account, before code entry and sending lock (at most 100,
    /// NIST SP 800-63B's ceiling).
    pub code_failures_max: i32,
    /// `AUTHGATE_CODE_LOCK_BASE`: the first such lock; each further one without a
    /// right code in between lasts twice as long, up to `AUTHGATE_CODE_LOCK_MAX`.
    pub code_lock_base: Duration,
    pub code_lock_max: Duration,
    /// `AUTHGATE_LOGIN_LOCKOUT_AFTER`: failed passwords in a row before a lockout.
    pub lockout_after: i32,
    /// `AUTHGATE_LOGIN_LOCKOUT_BASE` doubling per further failure, capped at
    /// `AUTHGATE_LOGIN_LOCKOUT_MAX`.
    pub lockout_base: Duration,
    pub lockout_max: Duration,
    /// `AUTHGATE_LOGIN_FAILURE_WINDOW`: failed passwords older than this stop
    /// counting toward a lockout (default 15 minutes).
    pub lockout_window: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            sms_per_phone_hour: 10,
            sms_per_phone_day: 30,
            sms_per_account_hour: 10,
            // One code a second: what one Twilio long code delivers, and a
            // bounded bill when every other limit is evaded (README).
            sms_global_per_minute: 60,
            sms_per_region_hour: 1000,
            sms_per_region_hour_overrides: Vec::new(),
            sms_destinations: SmsDestinations::default(),
            code_failures_max: 20,
            code_lock_base: Duration::from_secs(3600),
            code_lock_max: Duration::from_secs(24 * 3600),
            lockout_after: 10,
            lockout_base: Duration::from_secs(60),
            lockout_max: Duration::from_secs(15 * 60),
            lockout_window: Duration::from_secs(15 * 60),
        }
    }
}

impl QuotaConfig {
    /// The hourly ceiling of codes sent to `region`.
    pub fn sms_region_limit(&self, region: &str) -> i32 {
        self.sms_per_region_hour_overrides
            .iter()
            .find(|(r, _)| r == region)
            .map_or(self.sms_per_region_hour, |(_, n)| *n)
    }
}

/// One local rate limit: `count` requests per `period` per client, in bursts of up
/// to `count` (one request comes back every `period / count`). Written `10/1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    /// `count` per `period`; a zero count reads as one.
    pub const fn new(count: u32, period: Duration) -> Rate {
        let count = match NonZeroU32::new(count) {
            Some(c) => c,
            None => NonZeroU32::MIN,
        };
        Rate { count, period }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `10/1m`, `10/m`, `30/90s`: 1 to 1,000,000 requests per 1 s to 1 d, which keeps
    /// `period / count` at a microsecond or more.
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("`{s}` is not a rate like 10/1m (requests per period, 1s to 1d)");
        let (count, period) = s.split_once('/').ok_or_else(bad)?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(bad)?;
        let period = period.trim();
        if period.is_empty() {
            return Err(bad());
        }
        // `10/m` reads as `10/1m`.
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(period)
        } else {
            parse_duration(&format!("1{period}"))
        }
        .map_err(|_| bad())?;
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&period) {
            return Err(bad());
        }
        Ok(Rate::new(count, period))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, ms) = (self.period.as_secs(), self.period.subsec_millis());
        match (s, ms) {
            (s, 0) if s % 86_400 == 0 => write!(f, "{}/{}d", self.count, s / 86_400),
            (s, 0) if s % 3600 == 0 => write!(f, "{}/{}h", self.count, s / 3600),
            (s, 0) if s % 60 == 0 => write!(f, "{}/{}m", self.count, s / 60),
            (s, 0) => write!(f, "{}/{s}s", self.count),
            _ => write!(f, "{}/{}ms", self.count, self.period.as_millis()),
        }
    }
}

/// The local per-IP limits of `routes::limits`. They hold per process only; what
/// must hold across processes are the PostgreSQL quotas.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `AUTHGATE_RATE_LIMITS`: `on` (default) or `off`, for load tests from one client.
    pub enabled: bool,
    /// `AUTHGATE_TRUSTED_PROXY_HEADER` (e.g. `X-Forwarded-For`): take the client IP
    /// from the right-most address of this header, which our proxy appends. Unset
    /// (default): the socket peer, since any client can send such a header.
    pub trusted_proxy_header: Option<HeaderName>,
    /// `AUTHGATE_TRUSTED_PROXIES`: how many proxies of ours append to that header
    /// (default 1). The client is exactly the address this many hops from the
    /// right; a missing or unparsable hop means the socket peer, never an
    /// address further left (which the client wrote itself).
    pub trusted_proxies: usize,
    /// `AUTHGATE_LIMIT_MAX_KEYS`: clients tracked per route class; beyond it, new
    /// clients share one bucket (bounds memory under a many-IP flood).
    pub max_keys: usize,
    /// `AUTHGATE_LIMIT_SIGNUP`, `AUTHGATE_LIMIT_LOGIN`, `AUTHGATE_LIMIT_CODE_CHECK`,
    /// `AUTHGATE_LIMIT_CODE_SEND`, `AUTHGATE_LIMIT_ADMIN`: per client IP.
    pub signup: Rate,
    pub login: Rate,
    pub code_check: Rate,
    pub code_send: Rate,
    pub admin: Rate,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        RateLimitConfig {
            enabled: true,
            trusted_proxy_header: None,
            trusted_proxies: 1,
            max_keys: 100_000,
            signup: Rate::new(10, MINUTE),
            login: Rate::new(20, MINUTE),
            code_check: Rate::new(30, MINUTE),
            code_send: Rate::new(5, MINUTE),
            admin: Rate::new(60, MINUTE),
        }
    }
}

/// Twilio credentials and sender. All of SID, token and a sender, or none.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// `TWILIO_ACCOUNT_SID`: `AC` + 32 hex (or an API key SID `SK…` with the account in
    /// `TWILIO_API_ACCOUNT_SID`; the plain account form is what is validated here).
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`: basic-auth password and the key of webhook signatures.
    pub auth_token: SecretString,
    /// `TWILIO_PHONE_NUMBER` (E.164) or `TWILIO_MESSAGING_SERVICE_SID` (`MG` + 32 hex).
    pub sender: TwilioSender,
    /// `TWILIO_API_BASE_URL`: `https://api.twilio.com`, or a test double.
    pub api_base_url: String,
    /// `TWILIO_STATUS_CALLBACK_URL`: the public URL of our status webhook, exactly as
    /// Twilio will call it (the signature covers it). Unset: no callbacks asked.
    pub status_callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    From(String),
    MessagingService(String),
}

/// `SMS_SENDER=webhook`: every message is POSTed as JSON to an operator's
/// endpoint, signed per the Standard Webhooks specification, so any provider
/// can deliver it.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `SMS_WEBHOOK_URL`: an absolute http(s) URL.
    pub url: String,
    /// `SMS_WEBHOOK_SECRET`: `whsec_` + base64 of 24 to 64 random bytes (the
    /// Standard Webhooks form); the HMAC key is the decoded bytes.
    pub secret: SecretString,
}

impl WebhookConfig {
    /// The HMAC-SHA256 key: the secret's decoded bytes (validated at start-up).
    pub fn key(&self) -> Result<Vec<u8>, String> {
        decode_webhook_secret(self.secret.expose_secret())
    }
}

/// `check-config`'s line for one SMS text named `name` (`es.login_2fa`), and
/// a warning when it needs more than one segment.
fn segment_lines(name: &str, text: &str, source: &str) -> Vec<String> {
    use crate::domain::sms_text::{segments, Encoding};
    let s = segments(text);
    let mut lines = vec![format!(
        "{:<28} {} {}, {}, {} segment{} ({source})",
        format!("sms {name}"),
        s.units,
        match s.encoding {
            Encoding::Gsm7 => "septets",
            Encoding::Ucs2 => "UTF-16 units",
        },
        s.encoding,
        s.segments,
        if s.segments == 1 { "" } else { "s" }
    )];
    if s.segments > 1 {
        lines.push(format!(
            "warning: {name} needs {} {} segments: each is billed as one SMS",
            s.segments, s.encoding
        ));
    }
    lines
}

/// Reads `<locale>.<purpose>.txt` overrides of code texts and
/// `<locale>.<notice>.txt` overrides of notices (one trailing line break
/// dropped); any other visible file, an unknown locale or purpose, a code text
/// without exactly one `{code}` or a notice with a placeholder other than
/// `{app}` is refused naming the file.
fn load_templates(dir: &std::path::Path) -> Result<crate::domain::sms_text::Templates, String> {
    use crate::domain::otp::Purpose;
    use crate::domain::sms_text::{
        check_notice_template, check_template, Locale, NoticeKind, Templates,
    };
    /// What a file replaces.
    enum Target {
        Code(Purpose),
        Notice(NoticeKind),
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push((name, entry.path()));
        }
    }
    names.sort();
    let mut templates = Templates::default();
    let mut problems = Vec::new();
    for (name, path) in names {
        let parsed = name.strip_suffix(".txt").and_then(|stem| {
            let (l, p) = stem.split_once('.')?;
            let target = Purpose::parse(p)
                .map(Target::Code)
                .or_else(|| NoticeKind::parse(p).map(Target::Notice))?;
            Some((Locale::parse(l)?, l, target))
        });
        let Some((locale, tag, target)) = parsed else {
            problems.push(format!(
                "{name}: not <locale>.<purpose>.txt (locales en, es, fr, de, pt; purposes {}, {})",
                Purpose::ALL.map(Purpose::as_str).join(", "),
                NoticeKind::ALL.map(NoticeKind::as_str).join(", ")
            ));
            continue;
        };
        if tag != locale.as_str() {
            problems.push(format!("{name}: the locale must be written {locale}"));
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        let checked = match target {
            Target::Code(purpose) => check_template(text)
                .map(|()| templates.set_override(locale, purpose, text.to_owned())),
            Target::Notice(kind) => check_notice_template(text)
                .map(|()| templates.set_notice_override(locale, kind, text.to_owned())),
        };
        if let Err(e) = checked {
            problems.push(format!("{name}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(templates)
    } else {
        Err(problems.join("; "))
    }
}

/// A host name for the WebOTP line: lower-case labels of letters, digits and
/// hyphens, no scheme, port or path.
fn parse_webotp_domain(s: &str) -> Result<String, String> {
    let ok = s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(
            "must be a lower-case host name such as auth.example.com (no scheme, port or path)"
                .into(),
        )
    }
}

/// The SMS outbox and its actor.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// Twilio, when `TWILIO_*` is set. At most one of `twilio` and `webhook`;
    /// neither: messages are printed to the console: the embedded development
    /// default, or `SMS_SENDER=console` (required with a `DATABASE_URL`).
    pub twilio: Option<TwilioConfig>,
    /// `SMS_SENDER=webhook` with `SMS_WEBHOOK_URL` and `SMS_WEBHOOK_SECRET`.
    pub webhook: Option<WebhookConfig>,
    /// `SMS_SENDER_NAME`: the name in the message text (default `authgate`).
    pub sender_name: String,
    /// `AUTHGATE_SMS_TEMPLATES_DIR`: a folder of `<locale>.<purpose>.txt`
    /// files replacing shipped code texts (read and checked at start).
    pub templates_dir: Option<PathBuf>,
    /// The code texts: shipped, with the folder's overrides.
    pub templates: crate::domain::sms_text::Templates,
    /// `SMS_WEBOTP_DOMAIN`: when set, every code SMS ends with `@<domain> #<code>`.
    pub webotp_domain: Option<String>,
    /// `AUTHGATE_SMS_RATE_PER_SEC`: outbound messages per second (default 10).
    pub rate_per_sec: u32,
    /// `AUTHGATE_SMS_CONCURRENCY`: provider calls in flight at once (default 8).
    pub concurrency: usize,
    /// `AUTHGATE_SMS_BATCH_SIZE`: messages claimed per batch (default 50).
    pub batch_size: i64,
    /// `AUTHGATE_SMS_MAX_ATTEMPTS`: tries per message before it fails (default 8).
    pub max_attempts: i32,
    /// `AUTHGATE_SMS_LEASE`: how long a claim holds before another process may
    /// reclaim the message (default 60 s).
    pub lease: Duration,
    /// `AUTHGATE_SMS_SWEEP_INTERVAL`: safety-net poll of the outbox (default 5 s).
    pub sweep_interval: Duration,
    /// `AUTHGATE_SMS_TIMEOUT`: one provider request, connect to answer (default 10 s).
    pub request_timeout: Duration,
    /// `AUTHGATE_SMS_BACKOFF_BASE` and `AUTHGATE_SMS_BACKOFF_MAX`: retry backoff
    /// (default 1 s doubling, capped at 5 minutes).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            twilio: None,
            webhook: None,
            sender_name: "authgate".to_owned(),
            templates_dir: None,
            templates: Default::default(),
            webotp_domain: None,
            rate_per_sec: 10,
            concurrency: 8,
            batch_size: 50,
            max_attempts: 8,
            lease: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3000,
            database: DatabaseSource::Embedded,
            listen: ListenSource::Database,
            locks: crate::store::LockMode::Advisory,
            data_dir: PathBuf::from("./var"),
            db_pool_size: 16,
            db_timeout: Duration::from_secs(5),
            jwt_secret: None,
            jwt_algorithm: SigningAlg::EdDSA,
            master_key: None,
            master_key_previous: None,
            admin_token: None,
            admin_jwt: false,
            key_rotation: Some(Duration::from_secs(30 * 86_400)),
            key_reload: Duration::from_secs(30),
            public_url: None,
            env: DeployEnv::Development,
            test_phones: TestPhones::default(),
            jwt_expiration: Duration::from_secs(15 * 60),
            otp_expiration: Duration::from_secs(10 * 60),
            otp_length: 6,
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            hash_queue: crate::hasher::DEFAULT_QUEUE,
            hash_queue_timeout: crate::hasher::DEFAULT_WAIT,
            pg_os_user: "postgres".to_owned(),
            pg_state_dir: PathBuf::from("/var/lib/authgate"),
            log_format: LogFormat::Text,
            shutdown_grace: Duration::from_secs(10),
            otp_max_attempts: 5,
            otp_resend_cooldown: Duration::from_secs(30),
            otp_shards: 64,
            login_max_resends: 3,
            login_flow_ttl: Duration::from_secs(15 * 60),
            jwt_issuer: "authgate".to_owned(),
            jwt_audience: vec!["authgate".to_owned()],
            refresh_ttl: Duration::from_secs(30 * 86_400),
            session_idle_timeout: Duration::from_secs(7 * 86_400),
            refresh_grace: Duration::from_secs(10),
            step_up_window: Duration::from_secs(10 * 60),
            sms: SmsConfig::default(),
            rate_limits: RateLimitConfig::default(),
            quotas: QuotaConfig::default(),
            signup_reveal_taken: false,
            unverified_signup_ttl: Duration::from_secs(7 * 86_400),
            purge: PurgeConfig::default(),
        }
    }
}

/// One configuration problem: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            var,
            problem: problem.into(),
        }
    }
}

impl Config {
    /// `AUTHGATE_PUBLIC_URL`, or the configured listening address.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.clone(),
            None => url_of(self.host, self.port),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, Vec<ConfigError>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds a configuration from any variable source, collecting every problem
    /// rather than stopping at the first, so an operator fixes them in one go.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut cfg = Config::default();
        // Empty values count as unset: `FOO=` in a .env file means "no value".
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());

        macro_rules! set {
            ($field:expr, $name:literal, $parse:expr) => {
                if let Some(raw) = var($name) {
                    match $parse(raw.trim()) {
                        Ok(v) => $field = v,
                        Err(problem) => errors.push(ConfigError::new($name, problem)),
                    }
                }
            };
        }

        set!(cfg.host, "HOST", |s: &str| s
            .parse::<IpAddr>()
            .map_err(|_| format!("`{s}` is not an IP address")));
        set!(cfg.port, "PORT", |s: &str| s.parse::<u16>().map_err(
            |_| format!("`{s}` is not a port number (0 to 65535)")
        ));
        set!(cfg.database, "DATABASE_URL", parse_database_url);
        set!(cfg.listen, "DATABASE_LISTEN_URL", parse_listen_url);
        set!(cfg.locks, "AUTHGATE_LOCKS", |s: &str| {
            s.parse::<crate::store::LockMode>()
        });
        set!(
            cfg.data_dir,
            "AUTHGATE_DATA_DIR",
            |s: &str| Ok::<_, String>(PathBuf::from(s))
        );
        set!(cfg.db_pool_size, "AUTHGATE_DB_POOL_SIZE", |s| parse_range(
            s, 1, 1000
        ));
        set!(cfg.db_timeout, "AUTHGATE_DB_TIMEOUT", parse_duration);
        set!(cfg.jwt_secret, "JWT_SECRET", |s: &str| parse_secret(s)
            .map(Some));
        set!(cfg.jwt_expiration, "JWT_EXPIRATION_TIME", parse_duration);
        set!(cfg.otp_expiration, "OTP_EXPIRATION_MINUTES", |s| {
            parse_range(s, 1, 24 * 60).map(|m: u64| Duration::from_secs(m * 60))
        });
        set!(cfg.otp_length, "OTP_LENGTH", |s| parse_range(s, 4, 10));
        set!(cfg.hash_concurrency, "AUTHGATE_HASH_CONCURRENCY", |s| {
            parse_range(s, 1, 256)
        });
        set!(cfg.hash_queue, "AUTHGATE_HASH_QUEUE", |s| parse_range(
            s, 1, 100_000
        ));
        set!(cfg.hash_queue_timeout, "AUTHGATE_HASH_QUEUE_TIMEOUT", |s| {
            parse_duration(s).and_then(|d| {
                if d.is_zero() || d > Duration::from_secs(30) {
                    Err(format!("`{s}` must be more than 0 and at most 30s"))
                } else {
                    Ok(d)
                }
            })
        });
        set!(cfg.pg_os_user, "AUTHGATE_PG_OS_USER", |s: &str| {
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                Ok(s.to_owned())
            } else {
                Err(format!("`{s}` is not a user name"))
            }
        });
        set!(cfg.pg_state_dir, "AUTHGATE_PG_STATE_DIR", |s: &str| {
            Ok::<PathBuf, String>(s.into())
        });
        set!(cfg.log_format, "AUTHGATE_LOG_FORMAT", |s: &str| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not one of: text, json")),
        });
        set!(
            cfg.shutdown_grace,
            "AUTHGATE_SHUTDOWN_GRACE",
            parse_duration
        );

        set!(cfg.otp_max_attempts, "OTP_MAX_ATTEMPTS", |s| parse_range(
            s, 1, 100
        ));
        set!(
            cfg.otp_resend_cooldown,
            "OTP_RESEND_COOLDOWN",
            parse_duration
        );
        set!(cfg.otp_shards, "AUTHGATE_OTP_SHARDS", |s| parse_range(
            s, 1, 4096
        ));
        set!(cfg.login_max_resends, "LOGIN_MAX_RESENDS", |s| parse_range(
            s, 0, 100
        ));
        set!(cfg.login_flow_ttl, "LOGIN_FLOW_TTL", parse_duration);
        set!(cfg.jwt_issuer, "JWT_ISSUER", |s: &str| Ok::<_, String>(
            s.to_owned()
        ));
        set!(cfg.jwt_audience, "JWT_AUDIENCE", |s: &str| {
            let auds: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            if auds.is_empty() {
                Err("must name at least one audience".to_owned())
            } else {
                Ok(auds)
            }
        });
        set!(cfg.jwt_algorithm, "JWT_ALGORITHM", |s: &str| {
            SigningAlg::parse(s).ok_or_else(|| format!("`{s}` is not EdDSA, ES256 or HS256"))
        });
        set!(cfg.master_key, "AUTHGATE_MASTER_KEY", |s: &str| {
            parse_secret(s).map(Some)
        });
        set!(
            cfg.master_key_previous,
            "AUTHGATE_MASTER_KEY_PREVIOUS",
            |s: &str| parse_secret(s).map(Some)
        );
        set!(cfg.admin_token, "AUTHGATE_ADMIN_TOKEN", |s: &str| {
            parse_secret(s).map(Some)
        });
        set!(cfg.admin_jwt, "AUTHGATE_ADMIN_JWT", parse_bool);
        set!(cfg.key_rotation, "AUTHGATE_KEY_ROTATION", |s: &str| {
            if s == "off" {
                return Ok(None);
            }
            parse_duration(s).and_then(|d| {
                if d >= Duration::from_secs(3600) {
                    Ok(Some(d))
                } else {
                    Err("must be at least 1h (or `off`)".to_owned())
                }
            })
        });
        set!(cfg.key_reload, "AUTHGATE_KEY_RELOAD", |s: &str| {
            parse_duration(s).and_then(|d| {
                if d >= Duration::from_millis(100) && d <= Duration::from_secs(600) {
                    Ok(d)
                } else {
                    Err("must be between 100ms and 10m".to_owned())
                }
            })
        });
        set!(cfg.env, "AUTHGATE_ENV", |s: &str| DeployEnv::parse(s)
            .ok_or_else(|| format!(
                "`{s}` is not development, staging or production"
            )));
        set!(cfg.public_url, "AUTHGATE_PUBLIC_URL", |s: &str| {
            let s = s.trim_end_matches('/');
            if (s.starts_with("https://") || s.starts_with("http://"))
                && !s.contains(char::is_whitespace)
            {
                Ok(Some(s.to_owned()))
            } else {
                Err(format!("`{s}` is not an http(s) URL"))
            }
        });
        set!(cfg.refresh_ttl, "REFRESH_TOKEN_TTL", parse_duration);
        // The newer name wins when both are set.
        set!(
            cfg.refresh_ttl,
            "AUTHGATE_SESSION_MAX_LIFETIME",
            parse_duration
        );
        set!(
            cfg.session_idle_timeout,
            "AUTHGATE_SESSION_IDLE_TIMEOUT",
            parse_duration
        );
        set!(
            cfg.step_up_window,
            "AUTHGATE_STEP_UP_WINDOW",
            parse_duration
        );
        set!(cfg.refresh_grace, "AUTHGATE_REFRESH_GRACE", |s| {
            parse_duration(s).and_then(|d| {
                if d <= Duration::from_secs(60) {
                    Ok(d)
                } else {
                    Err(
                        "must be at most 60s: a longer window lets a stolen token ride along"
                            .into(),
                    )
                }
            })
        });
        set!(cfg.sms.sender_name, "SMS_SENDER_NAME", |s: &str| {
            if s.chars().count() <= 30 && !s.chars().any(char::is_control) {
                Ok(s.to_owned())
            } else {
                Err("must be at most 30 printable characters".to_owned())
            }
        });
        if let Some(raw) = var("AUTHGATE_SMS_TEMPLATES_DIR") {
            let dir = PathBuf::from(raw.trim());
            match load_templates(&dir) {
                Ok(t) => {
                    cfg.sms.templates = t;
                    cfg.sms.templates_dir = Some(dir);
                }
                Err(problem) => {
                    errors.push(ConfigError::new("AUTHGATE_SMS_TEMPLATES_DIR", problem))
                }
            }
        }
        set!(cfg.sms.webotp_domain, "SMS_WEBOTP_DOMAIN", |s: &str| {
            parse_webotp_domain(s).map(Some)
        });
        set!(cfg.sms.rate_per_sec, "AUTHGATE_SMS_RATE_PER_SEC", |s| {
            parse_range(s, 1, 10_000)
        });
        set!(cfg.sms.concurrency, "AUTHGATE_SMS_CONCURRENCY", |s| {
            parse_range(s, 1, 1000)
        });
        set!(cfg.sms.batch_size, "AUTHGATE_SMS_BATCH_SIZE", |s| {
            parse_range(s, 1, 10_000)
        });
        set!(cfg.sms.max_attempts, "AUTHGATE_SMS_MAX_ATTEMPTS", |s| {
            parse_range(s, 1, 100)
        });
        set!(cfg.sms.lease, "AUTHGATE_SMS_LEASE", parse_duration);
        set!(
            cfg.sms.sweep_interval,
            "AUTHGATE_SMS_SWEEP_INTERVAL",
            parse_duration
        );
        // With no NOTIFY, the sweep is how one process learns of messages
        // another queued but cannot send itself (its actor busy, or the process
        // gone between commit and send): one indexed claim query a second per
        // process bounds that delay to about a second, at no real cost.
        if !cfg.listen.notifies() && var("AUTHGATE_SMS_SWEEP_INTERVAL").is_none() {
            cfg.sms.sweep_interval = LISTEN_OFF_SWEEP;
        }
        set!(
            cfg.sms.request_timeout,
            "AUTHGATE_SMS_TIMEOUT",
            parse_duration
        );
        set!(
            cfg.sms.backoff_base,
            "AUTHGATE_SMS_BACKOFF_BASE",
            parse_duration
        );
        set!(
            cfg.sms.backoff_max,
            "AUTHGATE_SMS_BACKOFF_MAX",
            parse_duration
        );
        set!(
            cfg.quotas.sms_per_phone_hour,
            "AUTHGATE_SMS_PER_PHONE_HOUR",
            |s| parse_range(s, 1, 1_000_000)
        );
        set!(
            cfg.quotas.sms_per_phone_day,
            "AUTHGATE_SMS_PER_PHONE_DAY",
            |s| parse_range(s, 1, 1_000_000)
        );
        set!(
            cfg.quotas.sms_per_account_hour,
            "AUTHGATE_SMS_PER_ACCOUNT_HOUR",
            |s| parse_range(s, 1, 1_000_000)
        );
        set!(
            cfg.quotas.sms_global_per_minute,
            "AUTHGATE_SMS_GLOBAL_PER_MINUTE",
            |s| parse_range(s, 1, 100_000_000)
        );
        if var("AUTHGATE_SMS_ALLOWED_COUNTRIES").is_some() {
            // Calling codes admit every region that shares them (+1: twenty
            // Caribbean countries); guessing the regions meant would be unsafe.
            errors.push(ConfigError::new(
                "AUTHGATE_SMS_ALLOWED_COUNTRIES",
                "replaced by AUTHGATE_SMS_ALLOWED_REGIONS, ISO regions like US,CA,GB \
                 (a calling code such as 1 also covers Jamaica and other premium destinations)",
            ));
        }
        set!(
            cfg.quotas.sms_destinations.regions,
            "AUTHGATE_SMS_ALLOWED_REGIONS",
            parse_regions
        );
        set!(
            cfg.quotas.sms_destinations.number_types,
            "AUTHGATE_SMS_ALLOWED_NUMBER_TYPES",
            parse_number_types
        );
        if let Some(raw) = var("AUTHGATE_SMS_PER_REGION_HOUR") {
            match parse_region_ceilings(raw.trim()) {
                Ok((default, overrides)) => {
                    if let Some(n) = default {
                        cfg.quotas.sms_per_region_hour = n;
                    }
                    cfg.quotas.sms_per_region_hour_overrides = overrides;
                }
                Err(problem) => {
                    errors.push(ConfigError::new("AUTHGATE_SMS_PER_REGION_HOUR", problem))
                }
            }
        }
        set!(
            cfg.quotas.code_failures_max,
            "AUTHGATE_CODE_FAILURES_MAX",
            |s| parse_range(s, 1, 100)
        );
        set!(
            cfg.quotas.code_lock_base,
            "AUTHGATE_CODE_LOCK_BASE",
            parse_duration
        );
        set!(
            cfg.quotas.code_lock_max,
            "AUTHGATE_CODE_LOCK_MAX",
            parse_duration
        );
        set!(
            cfg.quotas.lockout_after,
            "AUTHGATE_LOGIN_LOCKOUT_AFTER",
            |s| parse_range(s, 1, 1000)
        );
        set!(
            cfg.quotas.lockout_base,
            "AUTHGATE_LOGIN_LOCKOUT_BASE",
            parse_duration
        );
        set!(
            cfg.quotas.lockout_max,
            "AUTHGATE_LOGIN_LOCKOUT_MAX",
            parse_duration
        );
        set!(
            cfg.quotas.lockout_window,
            "AUTHGATE_LOGIN_FAILURE_WINDOW",
            |s| parse_duration(s).and_then(|d| {
                if d.is_zero() {
                    Err("must be positive".to_owned())
                } else {
                    Ok(d)
                }
            })
        );
        set!(
            cfg.rate_limits.enabled,
            "AUTHGATE_RATE_LIMITS",
            |s: &str| match s.to_ascii_lowercase().as_str() {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(format!("`{s}` is not one of: on, off")),
            }
        );
        set!(
            cfg.rate_limits.trusted_proxy_header,
            "AUTHGATE_TRUSTED_PROXY_HEADER",
            |s: &str| match s.to_ascii_lowercase().as_str() {
                "off" | "none" => Ok(None),
                _ => s
                    .parse::<HeaderName>()
                    .map(Some)
                    .map_err(|_| format!("`{s}` is not an HTTP header name")),
            }
        );
        set!(
            cfg.rate_limits.trusted_proxies,
            "AUTHGATE_TRUSTED_PROXIES",
            |s| parse_range(s, 1, 16)
        );
        set!(cfg.rate_limits.max_keys, "AUTHGATE_LIMIT_MAX_KEYS", |s| {
            parse_range(s, 1, 100_000_000)
        });
        set!(
            cfg.rate_limits.signup,
            "AUTHGATE_LIMIT_SIGNUP",
            |s: &str| s.parse::<Rate>()
        );
        set!(cfg.rate_limits.login, "AUTHGATE_LIMIT_LOGIN", |s: &str| {
            s.parse::<Rate>()
        });
        set!(
            cfg.rate_limits.code_check,
            "AUTHGATE_LIMIT_CODE_CHECK",
            |s: &str| s.parse::<Rate>()
        );
        set!(
            cfg.rate_limits.code_send,
            "AUTHGATE_LIMIT_CODE_SEND",
            |s: &str| s.parse::<Rate>()
        );
        set!(cfg.rate_limits.admin, "AUTHGATE_LIMIT_ADMIN", |s: &str| {
            s.parse::<Rate>()
        });
        set!(
            cfg.signup_reveal_taken,
            "AUTHGATE_SIGNUP_REVEAL_TAKEN",
            parse_bool
        );
        set!(
            cfg.unverified_signup_ttl,
            "AUTHGATE_UNVERIFIED_SIGNUP_TTL",
            parse_duration
        );
        set!(
            cfg.purge.interval,
            "AUTHGATE_PURGE_INTERVAL",
            parse_duration
        );
        set!(cfg.purge.batch_size, "AUTHGATE_PURGE_BATCH", |s| {
            parse_range(s, 1, 100_000)
        });
        set!(
            cfg.purge.audit_retention,
            "AUTHGATE_AUDIT_RETENTION",
            parse_duration
        );
        set!(
            cfg.purge.outbox_retention,
            "AUTHGATE_OUTBOX_RETENTION",
            parse_duration
        );
        match twilio_from(&var) {
            Ok(t) => {
                cfg.sms.twilio = t;
                let webhook_set =
                    var("SMS_WEBHOOK_URL").is_some() || var("SMS_WEBHOOK_SECRET").is_some();
                match check_sms_sender(var("SMS_SENDER"), &cfg, webhook_set) {
                    Ok(SenderChoice::Webhook) => match webhook_from(&var) {
                        Ok(w) => cfg.sms.webhook = Some(w),
                        Err(es) => errors.extend(es),
                    },
                    Ok(SenderChoice::TwilioOrConsole) => {}
                    Err(e) => errors.push(e),
                }
            }
            Err(e) => errors.push(e),
        }

        if cfg.quotas.code_lock_base.is_zero() {
            errors.push(ConfigError::new(
                "AUTHGATE_CODE_LOCK_BASE",
                "must be positive",
            ));
        }
        if cfg.quotas.code_lock_max < cfg.quotas.code_lock_base {
            errors.push(ConfigError::new(
                "AUTHGATE_CODE_LOCK_MAX",
                "must be at least AUTHGATE_CODE_LOCK_BASE",
            ));
        }
        // After OTP_LENGTH: each fixed code must have the configured length.
        if let Some(raw) = var("AUTHGATE_TEST_PHONES") {
            match TestPhones::parse(&raw, cfg.otp_length) {
                Ok(t) if !t.is_empty() && cfg.env == DeployEnv::Production => {
                    errors.push(ConfigError::new(
                        "AUTHGATE_TEST_PHONES",
                        "test numbers are refused with AUTHGATE_ENV=production: their codes are fixed",
                    ))
                }
                Ok(t) => cfg.test_phones = t,
                Err(e) => errors.push(ConfigError::new("AUTHGATE_TEST_PHONES", e)),
            }
        }
        if cfg.jwt_algorithm == SigningAlg::HS256 && cfg.jwt_secret.is_none() {
            errors.push(ConfigError::new(
                "JWT_SECRET",
                "JWT_ALGORITHM=HS256 signs with JWT_SECRET: set it (32+ bytes)",
            ));
        }
        if cfg.jwt_algorithm == SigningAlg::HS256
            && cfg.master_key.is_some()
            && cfg
                .master_key
                .as_ref()
                .zip(cfg.jwt_secret.as_ref())
                .is_some_and(|(m, j)| m.expose_secret() == j.expose_secret())
        {
            errors.push(ConfigError::new(
                "AUTHGATE_MASTER_KEY",
                "must differ from JWT_SECRET: every HS256 verifier holds JWT_SECRET",
            ));
        }
        if cfg.jwt_expiration.is_zero() {
            errors.push(ConfigError::new("JWT_EXPIRATION_TIME", "must be positive"));
        }
        if cfg.refresh_ttl.is_zero() {
            errors.push(ConfigError::new(
                "AUTHGATE_SESSION_MAX_LIFETIME",
                "must be positive",
            ));
        }
        if cfg.session_idle_timeout.is_zero() {
            errors.push(ConfigError::new(
                "AUTHGATE_SESSION_IDLE_TIMEOUT",
                "must be positive",
            ));
        }
        if cfg.step_up_window.is_zero() {
            errors.push(ConfigError::new(
                "AUTHGATE_STEP_UP_WINDOW",
                "must be positive",
            ));
        }
        if cfg.purge.interval < Duration::from_secs(1) {
            errors.push(ConfigError::new(
                "AUTHGATE_PURGE_INTERVAL",
                "must be at least 1s",
            ));
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    /// The configuration as `check-config` prints it: secrets masked.
    /// Per language, each code SMS as sent (a sample code of the configured
    /// length, the configured validity) and each notice: its length, encoding
    /// and segments, with a `warning:` line for each text that needs more than
    /// one segment (each segment is billed).
    pub fn sms_text_report(&self) -> Vec<String> {
        use crate::domain::otp::Purpose;
        use crate::domain::sms_text::{Locale, NoticeKind};
        let code: String = "0123456789"
            .chars()
            .cycle()
            .take(usize::from(self.otp_length))
            .collect();
        let minutes = self.otp_expiration.as_secs().div_ceil(60);
        let templates = &self.sms.templates;
        let source = |overridden: bool| if overridden { "override" } else { "shipped" };
        let mut lines = Vec::new();
        for locale in Locale::ALL {
            for purpose in Purpose::ALL {
                let text = templates.render(
                    locale,
                    purpose,
                    &self.sms.sender_name,
                    &code,
                    minutes,
                    self.sms.webotp_domain.as_deref(),
                );
                lines.extend(segment_lines(
                    &format!("{locale}.{}", purpose.as_str()),
                    &text,
                    source(templates.is_overridden(locale, purpose)),
                ));
            }
            for kind in NoticeKind::ALL {
                let text = templates.render_notice(locale, kind, &self.sms.sender_name);
                lines.extend(segment_lines(
                    &format!("{locale}.{}", kind.as_str()),
                    &text,
                    source(templates.is_notice_overridden(locale, kind)),
                ));
            }
        }
        lines
    }

    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let db = match &self.database {
            DatabaseSource::Url(c) => format!("external ({})", describe_pg(c)),
            DatabaseSource::Embedded => "embedded private PostgreSQL".to_owned(),
        };
        vec![
            ("HOST", self.host.to_string()),
            ("PORT", self.port.to_string()),
            ("DATABASE_URL", db),
            ("DATABASE_LISTEN_URL", self.listen.describe()),
            ("AUTHGATE_LOCKS", self.locks.as_str().to_owned()),
            ("AUTHGATE_DATA_DIR", self.data_dir.display().to_string()),
            ("AUTHGATE_DB_POOL_SIZE", self.db_pool_size.to_string()),
            ("AUTHGATE_DB_TIMEOUT", format!("{:?}", self.db_timeout)),
            (
                "JWT_SECRET",
                match &self.jwt_secret {
                    Some(s) => format!("set ({} bytes, masked)", s.expose_secret().len()),
                    None => "unset".to_owned(),
                },
            ),
            ("JWT_ALGORITHM", self.jwt_algorithm.as_str().to_owned()),
            (
                "AUTHGATE_MASTER_KEY",
                match (&self.master_key, &self.jwt_secret, self.jwt_algorithm) {
                    (Some(s), _, _) => format!("set ({} bytes, masked)", s.expose_secret().len()),
                    (None, Some(_), a) if a != SigningAlg::HS256 => {
                        "unset (JWT_SECRET is the master key)".to_owned()
                    }
                    _ => "unset (generated into the data folder)".to_owned(),
                },
            ),
            (
                "AUTHGATE_MASTER_KEY_PREVIOUS",
                match &self.master_key_previous {
                    Some(_) => "set (masked)".to_owned(),
                    None => "unset".to_owned(),
                },
            ),
            (
                "AUTHGATE_ADMIN_TOKEN",
                match &self.admin_token {
                    Some(_) => "set (masked; admin API on)".to_owned(),
                    None => "unset".to_owned(),
                },
            ),
            (
                "AUTHGATE_ADMIN_JWT",
                match (self.admin_jwt, self.admin_token.is_some()) {
                    (true, _) => "on (admins' access tokens open the admin API)".to_owned(),
                    (false, true) => "off".to_owned(),
                    (false, false) => "off (admin API off)".to_owned(),
                },
            ),
            (
                "AUTHGATE_KEY_ROTATION",
                match self.key_rotation {
                    Some(d) => format!("{d:?}"),
                    None => "off".to_owned(),
                },
            ),
            ("AUTHGATE_KEY_RELOAD", format!("{:?}", self.key_reload)),
            ("JWT_ISSUER", self.jwt_issuer.clone()),
            ("JWT_AUDIENCE", self.jwt_audience.join(",")),
            ("AUTHGATE_PUBLIC_URL", self.public_url()),
            ("AUTHGATE_ENV", self.env.as_str().to_owned()),
            (
                "AUTHGATE_TEST_PHONES",
                if self.test_phones.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{} numbers (codes masked)", self.test_phones.len())
                },
            ),
            ("JWT_EXPIRATION_TIME", format!("{:?}", self.jwt_expiration)),
            (
                "AUTHGATE_SESSION_MAX_LIFETIME",
                format!("{:?}", self.refresh_ttl),
            ),
            (
                "AUTHGATE_SESSION_IDLE_TIMEOUT",
                format!("{:?}", self.session_idle_timeout),
            ),
            (
                "AUTHGATE_REFRESH_GRACE",
                format!("{:?}", self.refresh_grace),
            ),
            (
                "AUTHGATE_STEP_UP_WINDOW",
                format!("{:?}", self.step_up_window),
            ),
            (
                "OTP_EXPIRATION_MINUTES",
                (self.otp_expiration.as_secs() / 60).to_string(),
            ),
            ("OTP_LENGTH", self.otp_length.to_string()),
            (
                "AUTHGATE_HASH_CONCURRENCY",
                self.hash_concurrency.to_string(),
            ),
            ("AUTHGATE_HASH_QUEUE", self.hash_queue.to_string()),
            (
                "AUTHGATE_HASH_QUEUE_TIMEOUT",
                format!("{:?}", self.hash_queue_timeout),
            ),
            (
                "AUTHGATE_LOGIN_FAILURE_WINDOW",
                format!("{:?}", self.quotas.lockout_window),
            ),
            ("AUTHGATE_PG_OS_USER", self.pg_os_user.clone()),
            (
                "AUTHGATE_PG_STATE_DIR",
                self.pg_state_dir.display().to_string(),
            ),
            ("AUTHGATE_LOG_FORMAT", format!("{:?}", self.log_format)),
            (
                "AUTHGATE_SHUTDOWN_GRACE",
                format!("{:?}", self.shutdown_grace),
            ),
            (
                "AUTHGATE_RATE_LIMITS",
                if self.rate_limits.enabled {
                    "on".to_owned()
                } else {
                    "off (local per-IP limits disabled)".to_owned()
                },
            ),
            (
                "AUTHGATE_TRUSTED_PROXY_HEADER",
                match &self.rate_limits.trusted_proxy_header {
                    Some(h) => h.to_string(),
                    None => "unset (client IP is the socket peer)".to_owned(),
                },
            ),
            ("AUTHGATE_LIMIT_SIGNUP", self.rate_limits.signup.to_string()),
            ("AUTHGATE_LIMIT_LOGIN", self.rate_limits.login.to_string()),
            (
                "AUTHGATE_LIMIT_CODE_CHECK",
                self.rate_limits.code_check.to_string(),
            ),
            (
                "AUTHGATE_LIMIT_CODE_SEND",
                self.rate_limits.code_send.to_string(),
            ),
            ("AUTHGATE_LIMIT_ADMIN", self.rate_limits.admin.to_string()),
            (
                "AUTHGATE_LIMIT_MAX_KEYS",
                self.rate_limits.max_keys.to_string(),
            ),
            (
                "SMS_SENDER",
                match (&self.sms.twilio, &self.sms.webhook) {
                    (Some(_), _) => "twilio".to_owned(),
                    (None, Some(w)) => format!(
                        "webhook (POST to {}, Standard Webhooks signature, secret masked)",
                        masked_url(&w.url)
                    ),
                    (None, None) => "console (codes printed to standard output)".to_owned(),
                },
            ),
            ("SMS_SENDER_NAME", self.sms.sender_name.clone()),
            (
                "AUTHGATE_SMS_TEMPLATES_DIR",
                match &self.sms.templates_dir {
                    Some(d) => format!("{} (overrides listed below)", d.display()),
                    None => "unset (shipped texts)".to_owned(),
                },
            ),
            (
                "SMS_WEBOTP_DOMAIN",
                match &self.sms.webotp_domain {
                    Some(d) => format!("{d} (last line `@{d} #<code>`)"),
                    None => "unset (no WebOTP line)".to_owned(),
                },
            ),
            (
                "AUTHGATE_TRUSTED_PROXIES",
                self.rate_limits.trusted_proxies.to_string(),
            ),
            (
                "AUTHGATE_SIGNUP_REVEAL_TAKEN",
                if self.signup_reveal_taken {
                    "true (409 email_taken/phone_taken: registered accounts are enumerable)"
                        .to_owned()
                } else {
                    "false (a taken e-mail or phone answers like a fresh sign-up)".to_owned()
                },
            ),
            (
                "AUTHGATE_UNVERIFIED_SIGNUP_TTL",
                format!("{:?}", self.unverified_signup_ttl),
            ),
            (
                "AUTHGATE_PURGE_INTERVAL",
                format!("{:?}", self.purge.interval),
            ),
            ("AUTHGATE_PURGE_BATCH", self.purge.batch_size.to_string()),
            (
                "AUTHGATE_AUDIT_RETENTION",
                format!("{:?}", self.purge.audit_retention),
            ),
            (
                "AUTHGATE_OUTBOX_RETENTION",
                format!("{:?}", self.purge.outbox_retention),
            ),
            (
                "AUTHGATE_SMS_GLOBAL_PER_MINUTE",
                self.quotas.sms_global_per_minute.to_string(),
            ),
            (
                "AUTHGATE_SMS_PER_REGION_HOUR",
                std::iter::once(self.quotas.sms_per_region_hour.to_string())
                    .chain(
                        self.quotas
                            .sms_per_region_hour_overrides
                            .iter()
                            .map(|(r, n)| format!("{r}={n}")),
                    )
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "AUTHGATE_SMS_ALLOWED_REGIONS",
                match &self.quotas.sms_destinations.regions {
                    Some(r) => r.join(","),
                    None => "* (every region: SMS pumping exposure)".to_owned(),
                },
            ),
            (
                "AUTHGATE_SMS_ALLOWED_NUMBER_TYPES",
                self.quotas
                    .sms_destinations
                    .number_types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "AUTHGATE_CODE_FAILURES_MAX",
                self.quotas.code_failures_max.to_string(),
            ),
            (
                "AUTHGATE_CODE_LOCK_BASE",
                format!("{:?}", self.quotas.code_lock_base),
            ),
            (
                "AUTHGATE_CODE_LOCK_MAX",
                format!("{:?}", self.quotas.code_lock_max),
            ),
        ]
    }
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// What `SMS_SENDER` settled on; Twilio or the console follow from `TWILIO_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderChoice {
    TwilioOrConsole,
    Webhook,
}

/// `SMS_SENDER` (`twilio`, `console` or `webhook`): the console prints codes to
/// standard output, so it is the silent default only of the embedded
/// development mode; a deployment with a `DATABASE_URL` must name its sender,
/// or a forgotten Twilio setting would ship every code into its log stream.
/// The webhook is never implied: `SMS_WEBHOOK_*` without `SMS_SENDER=webhook`
/// (or with Twilio) is a contradiction worth stopping for.
fn check_sms_sender(
    choice: Option<String>,
    cfg: &Config,
    webhook_set: bool,
) -> Result<SenderChoice, ConfigError> {
    let twilio = cfg.sms.twilio.is_some();
    let problem = match choice.map(|c| c.trim().to_ascii_lowercase()).as_deref() {
        None if webhook_set => "SMS_WEBHOOK_URL or SMS_WEBHOOK_SECRET is set: set \
                                SMS_SENDER=webhook to send through the webhook, or unset them"
            .to_owned(),
        None if !twilio && matches!(cfg.database, DatabaseSource::Url(_)) => {
            "DATABASE_URL is set but no SMS sender is: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN \
             and TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID), or SMS_SENDER=webhook \
             with SMS_WEBHOOK_URL and SMS_WEBHOOK_SECRET, or SMS_SENDER=console to print codes \
             to standard output on purpose"
                .to_owned()
        }
        None => return Ok(SenderChoice::TwilioOrConsole),
        Some(c @ ("twilio" | "console")) if webhook_set => format!(
            "`{c}` while SMS_WEBHOOK_URL or SMS_WEBHOOK_SECRET is set: unset them or set \
             SMS_SENDER=webhook"
        ),
        Some("twilio") if twilio => return Ok(SenderChoice::TwilioOrConsole),
        Some("twilio") => "`twilio` needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and \
                           TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID)"
            .to_owned(),
        Some("console") if !twilio => return Ok(SenderChoice::TwilioOrConsole),
        Some("console") => "`console` while TWILIO_* is set: unset the TWILIO_* variables or \
                            set SMS_SENDER=twilio"
            .to_owned(),
        Some("webhook") if !twilio => return Ok(SenderChoice::Webhook),
        Some("webhook") => "`webhook` while TWILIO_* is set: unset the TWILIO_* variables or \
                            set SMS_SENDER=twilio"
            .to_owned(),
        Some(other) => format!("`{other}` is not one of: twilio, console, webhook"),
    };
    Err(ConfigError::new("SMS_SENDER", problem))
}

/// `SMS_WEBHOOK_URL` and `SMS_WEBHOOK_SECRET`, both required once
/// `SMS_SENDER=webhook`; every problem is named.
fn webhook_from(var: &impl Fn(&str) -> Option<String>) -> Result<WebhookConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let url = match var("SMS_WEBHOOK_URL").map(|u| u.trim().to_owned()) {
        None => {
            errors.push(ConfigError::new(
                "SMS_WEBHOOK_URL",
                "required with SMS_SENDER=webhook: the http(s) URL messages are POSTed to",
            ));
            None
        }
        Some(u) => match parse_webhook_url(&u) {
            Ok(()) => Some(u),
            Err(problem) => {
                errors.push(ConfigError::new("SMS_WEBHOOK_URL", problem));
                None
            }
        },
    };
    let secret = match var("SMS_WEBHOOK_SECRET").map(|s| s.trim().to_owned()) {
        None => {
            errors.push(ConfigError::new(
                "SMS_WEBHOOK_SECRET",
                "required with SMS_SENDER=webhook: whsec_ followed by base64 of 24 to 64 \
                 random bytes (e.g. `echo whsec_$(openssl rand -base64 32)`)",
            ));
            None
        }
        Some(s) => match decode_webhook_secret(&s) {
            Ok(_) => Some(SecretString::from(s)),
            Err(problem) => {
                errors.push(ConfigError::new("SMS_WEBHOOK_SECRET", problem));
                None
            }
        },
    };
    match (url, secret) {
        (Some(url), Some(secret)) if errors.is_empty() => Ok(WebhookConfig { url, secret }),
        _ => Err(errors),
    }
}

/// An absolute http(s) URL with a host.
fn parse_webhook_url(u: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(u).map_err(|_| "must be an absolute http(s) URL".to_owned())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an absolute http(s) URL".to_owned());
    }
    Ok(())
}

/// The bounds Standard Webhooks sets on a secret's decoded length, in bytes.
pub const WEBHOOK_SECRET_MIN_BYTES: usize = 24;
pub const WEBHOOK_SECRET_MAX_BYTES: usize = 64;

/// The key bytes of a `whsec_<base64>` secret. The message never quotes the
/// secret.
pub fn decode_webhook_secret(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Some(b64) = s.strip_prefix("whsec_") else {
        return Err(
            "must start with whsec_ (the Standard Webhooks form: whsec_ followed by \
                    base64 of 24 to 64 random bytes)"
                .to_owned(),
        );
    };
    let key = LENIENT
        .decode(b64)
        .map_err(|_| "the part after whsec_ is not valid base64".to_owned())?;
    if !(WEBHOOK_SECRET_MIN_BYTES..=WEBHOOK_SECRET_MAX_BYTES).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; must be {WEBHOOK_SECRET_MIN_BYTES} to \
             {WEBHOOK_SECRET_MAX_BYTES} random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// A URL for display and logs: any password in it masked.
pub fn masked_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("masked"));
            parsed.to_string()
        }
        _ => u.to_owned(),
    }
}

/// Twilio is all or nothing: credentials without a sender (or the reverse) is a
/// mistake worth stopping for, not a silent fall-back to the console.
fn twilio_from(var: &impl Fn(&str) -> Option<String>) -> Result<Option<TwilioConfig>, ConfigError> {
    let sid = var("TWILIO_ACCOUNT_SID");
    let token = var("TWILIO_AUTH_TOKEN");
    let from = var("TWILIO_PHONE_NUMBER");
    let service = var("TWILIO_MESSAGING_SERVICE_SID");
    let base = var("TWILIO_API_BASE_URL");
    let callback = var("TWILIO_STATUS_CALLBACK_URL");
    let (sid, token) = match (sid, token) {
        (None, None) => {
            if from.is_some() || service.is_some() {
                return Err(ConfigError::new(
                    "TWILIO_ACCOUNT_SID",
                    "a Twilio sender is set but no credentials; set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "TWILIO_AUTH_TOKEN",
                "required with TWILIO_ACCOUNT_SID",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "TWILIO_ACCOUNT_SID",
                "required with TWILIO_AUTH_TOKEN",
            ))
        }
        (Some(sid), Some(token)) => (sid.trim().to_owned(), token.trim().to_owned()),
    };
    if !is_sid(&sid, "AC") {
        return Err(ConfigError::new(
            "TWILIO_ACCOUNT_SID",
            "must be AC followed by 32 hex digits",
        ));
    }
    let sender = match (from, service) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "TWILIO_PHONE_NUMBER",
                "set either TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                "TWILIO_PHONE_NUMBER",
                "required with Twilio credentials (or set TWILIO_MESSAGING_SERVICE_SID)",
            ))
        }
        (Some(from), None) => {
            let from = from.trim();
            match crate::domain::phone::PhoneE164::parse(from) {
                Ok(p) => TwilioSender::From(p.as_str().to_owned()),
                Err(_) => {
                    return Err(ConfigError::new(
                        "TWILIO_PHONE_NUMBER",
                        format!("`{from}` is not a phone number in E.164 form"),
                    ))
                }
            }
        }
        (None, Some(mg)) => {
            let mg = mg.trim().to_owned();
            if !is_sid(&mg, "MG") {
                return Err(ConfigError::new(
                    "TWILIO_MESSAGING_SERVICE_SID",
                    "must be MG followed by 32 hex digits",
                ));
            }
            TwilioSender::MessagingService(mg)
        }
    };
    let api_base_url = match base {
        Some(b) => {
            let b = b.trim().trim_end_matches('/').to_owned();
            if !(b.starts_with("https://") || b.starts_with("http://")) {
                return Err(ConfigError::new(
                    "TWILIO_API_BASE_URL",
                    "must be an http(s) URL",
                ));
            }
            b
        }
        None => "https://api.twilio.com".to_owned(),
    };
    let status_callback_url = match callback {
        Some(c) => {
            let c = c.trim().to_owned();
            if !(c.starts_with("https://") || c.starts_with("http://")) {
                return Err(ConfigError::new(
                    "TWILIO_STATUS_CALLBACK_URL",
                    "must be an absolute http(s) URL",
                ));
            }
            Some(c)
        }
        None => None,
    };
    Ok(Some(TwilioConfig {
        account_sid: sid,
        auth_token: SecretString::from(token),
        sender,
        api_base_url,
        status_callback_url,
    }))
}

fn parse_database_url(s: &str) -> Result<DatabaseSource, String> {
    parse_pg_url(s).map(|cfg| DatabaseSource::Url(Box::new(cfg)))
}

/// `off`, or a PostgreSQL URL as for `DATABASE_URL`.
fn parse_listen_url(s: &str) -> Result<ListenSource, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ListenSource::Off);
    }
    parse_pg_url(s)
        .map(|cfg| ListenSource::Url(Box::new(cfg)))
        .map_err(|problem| format!("{problem} (or `off`)"))
}

fn parse_pg_url(s: &str) -> Result<tokio_postgres::Config, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("must be a postgres:// or postgresql:// URL".to_owned());
    }
    // The parser's message never includes the password, but it may quote other parts
    // of the URL; say only that it is malformed.
    let cfg = tokio_postgres::Config::from_str(s)
        .map_err(|e| format!("malformed PostgreSQL URL ({e})"))?;
    if cfg.get_hosts().is_empty() {
        return Err("the URL names no host".to_owned());
    }
    Ok(cfg)
}

/// `US,CA,GB` (ISO regions of the numbering plan) or `*` (every region).
fn parse_regions(s: &str) -> Result<Option<Vec<String>>, String> {
    if s == "*" {
        return Ok(None);
    }
    let mut regions = Vec::new();
    for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let r = r.to_ascii_uppercase();
        if r.len() != 2 || !is_known_region(&r) {
            return Err(format!(
                "`{r}` is not an ISO region of the numbering plan (like US, GB, JE; or * for all)"
            ));
        }
        if !regions.contains(&r) {
            regions.push(r);
        }
    }
    if regions.is_empty() {
        return Err("name at least one region (like US,CA), or * for all".to_owned());
    }
    Ok(Some(regions))
}

/// `mobile,fixed_line_or_mobile`: line types of the numbering plan.
fn parse_number_types(s: &str) -> Result<Vec<NumberType>, String> {
    let mut types = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some(t) = NumberType::parse(t) else {
            let known: Vec<&str> = NumberType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(format!("`{t}` is not one of: {}", known.join(", ")));
        };
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err("name at least one line type (like mobile)".to_owned());
    }
    Ok(types)
}

/// `1000` (every region), `US=3000,GB=500` (those regions), or both mixed:
/// `1000,US=3000`. Returns the default, if given, and the overrides.
type RegionCeilings = (Option<i32>, Vec<(String, i32)>);
fn parse_region_ceilings(s: &str) -> Result<RegionCeilings, String> {
    let mut default = None;
    let mut overrides: Vec<(String, i32)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            None => default = Some(parse_range(item, 1, 100_000_000)?),
            Some((r, n)) => {
                let r = r.trim().to_ascii_uppercase();
                if r.len() != 2 || !is_known_region(&r) {
                    return Err(format!("`{r}` is not an ISO region (like US=1000)"));
                }
                let n = parse_range(n.trim(), 1, 100_000_000)?;
                overrides.retain(|(o, _)| *o != r);
                overrides.push((r, n));
            }
        }
    }
    Ok((default, overrides))
}

fn parse_range<T>(s: &str, min: T, max: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    match s.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("`{s}` is not a whole number from {min} to {max}")),
    }
}

/// The longest duration any variable accepts. Every unit is held to it (a
/// huge value in milliseconds is as absurd as one in days), and it keeps
/// `now + duration` far inside the calendar's range.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `900`, `900s`, `15m`, `1h`, `1d` or `250ms`, at most ten years; a bare
/// number is seconds, as in the tutorial's `JWT_EXPIRATION_TIME`.
/// Where the server runs (`AUTHGATE_ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployEnv {
    Development,
    Staging,
    Production,
}

impl DeployEnv {
    pub fn parse(s: &str) -> Option<DeployEnv> {
        match s {
            "development" | "dev" => Some(DeployEnv::Development),
            "staging" => Some(DeployEnv::Staging),
            "production" | "prod" => Some(DeployEnv::Production),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeployEnv::Development => "development",
            DeployEnv::Staging => "staging",
            DeployEnv::Production => "production",
        }
    }
}

/// `http://host:port` for a listening address (loopback for an unspecified one).
pub fn url_of(host: IpAddr, port: u16) -> String {
    if host.is_unspecified() {
        format!("http://127.0.0.1:{port}")
    } else if host.is_ipv6() {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// A secret of at least `MIN_JWT_SECRET_BYTES` bytes.
fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.len() < MIN_JWT_SECRET_BYTES {
        Err(format!(
            "must be at least {MIN_JWT_SECRET_BYTES} bytes, got {}",
            s.len()
        ))
    } else {
        Ok(SecretString::from(s.to_owned()))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not a duration of at most 10 years (examples: 900, 900s, 15m, 1h, 1d, 250ms)"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let duration = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => return Err(bad()),
    };
    duration.filter(|d| *d <= MAX_DURATION).ok_or_else(bad)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not one of: true, false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn vars_of(r: Result<Config, Vec<ConfigError>>) -> Vec<&'static str> {
        match r {
            Ok(_) => vec![],
            Err(es) => es.into_iter().map(|e| e.var).collect(),
        }
    }

    #[test]
    fn sms_templates_dir_overrides_and_names_bad_files() {
        use crate::domain::otp::Purpose;
        use crate::domain::sms_text::Locale;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        std::fs::write(dir.path().join("es.login_2fa.txt"), "{app}: {code}\n").unwrap();
        std::fs::write(dir.path().join(".keep"), "").unwrap();
        let c = cfg(&[("AUTHGATE_SMS_TEMPLATES_DIR", &path)]).unwrap();
        assert!(c.sms.templates.is_overridden(Locale::Es, Purpose::Login2fa));
        assert_eq!(
            c.sms
                .templates
                .render(Locale::Es, Purpose::Login2fa, "app", "1234", 5, None),
            "app: 1234"
        );
        let report = c.sms_text_report().join("\n");
        assert!(report.contains("sms es.login_2fa"), "{report}");
        assert!(report.contains("(override)"), "{report}");
        for (name, text) in [
            ("fr.phone_verify.txt", "no code here"),
            ("it.login_2fa.txt", "{code}"),
            ("de.login.txt", "{code}"),
            ("ES.login_2fa.txt", "{code}"),
        ] {
            let bad = tempfile::tempdir().unwrap();
            std::fs::write(bad.path().join(name), text).unwrap();
            let errs =
                cfg(&[("AUTHGATE_SMS_TEMPLATES_DIR", bad.path().to_str().unwrap())]).unwrap_err();
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].var, "AUTHGATE_SMS_TEMPLATES_DIR");
            assert!(errs[0].problem.contains(name), "{}", errs[0].problem);
        }
        assert_eq!(
            vars_of(cfg(&[("AUTHGATE_SMS_TEMPLATES_DIR", "/no/such/folder")])),
            ["AUTHGATE_SMS_TEMPLATES_DIR"]
        );
    }

    #[test]
    fn sms_webotp_domain_is_a_host_name() {
        let c = cfg(&[("SMS_WEBOTP_DOMAIN", "auth.example.com")]).unwrap();
        assert_eq!(c.sms.webotp_domain.as_deref(), Some("auth.example.com"));
        for bad in [
            "https://auth.example.com",
            "auth.example.com:443",
            "Auth.Example.com",
            "auth..example.com",
            "-a.example.com",
            "a.example.com/x",
        ] {
            assert_eq!(
                vars_of(cfg(&[("SMS_WEBOTP_DOMAIN", bad)])),
                ["SMS_WEBOTP_DOMAIN"],
                "{bad}"
            );
        }
        // The shipped texts at the defaults: English fits one GSM-7 segment;
        // accented Spanish needs UCS-2, and the report warns about it.
        let report = cfg(&[]).unwrap().sms_text_report();
        let en = report
            .iter()
            .find(|l| l.starts_with("sms en.login_2fa"))
            .unwrap();
        assert!(en.contains("GSM-7, 1 segment "), "{en}");
        assert!(
            report.iter().any(|l| l.starts_with("warning: es.")),
            "{report:?}"
        );
    }

    #[test]
    fn defaults_need_no_variables() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 3000);
        assert!(matches!(c.database, DatabaseSource::Embedded));
        assert_eq!(c.jwt_expiration, Duration::from_secs(900));
        assert_eq!(c.otp_expiration, Duration::from_secs(600));
        assert_eq!(c.otp_length, 6);
    }

    #[test]
    fn session_lifetimes_parse_and_name_bad_values() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.refresh_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.session_idle_timeout, Duration::from_secs(7 * 86_400));
        assert_eq!(c.refresh_grace, Duration::from_secs(10));
        let c = cfg(&[
            ("REFRESH_TOKEN_TTL", "20d"),
            ("AUTHGATE_SESSION_IDLE_TIMEOUT", "1d"),
            ("AUTHGATE_REFRESH_GRACE", "0"),
        ])
        .unwrap();
        assert_eq!(c.refresh_ttl, Duration::from_secs(20 * 86_400));
        assert_eq!(c.session_idle_timeout, Duration::from_secs(86_400));
        assert!(c.refresh_grace.is_zero());
        let c = cfg(&[
            ("REFRESH_TOKEN_TTL", "20d"),
            ("AUTHGATE_SESSION_MAX_LIFETIME", "2d"),
        ])
        .unwrap();
        assert_eq!(c.refresh_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(
            vars_of(cfg(&[
                ("AUTHGATE_SESSION_MAX_LIFETIME", "0"),
                ("AUTHGATE_SESSION_IDLE_TIMEOUT", "0"),
                ("AUTHGATE_REFRESH_GRACE", "1h"),
            ])),
            [
                "AUTHGATE_REFRESH_GRACE",
                "AUTHGATE_SESSION_MAX_LIFETIME",
                "AUTHGATE_SESSION_IDLE_TIMEOUT"
            ]
        );
    }

    #[test]
    fn short_jwt_secret_is_rejected_by_name() {
        assert_eq!(vars_of(cfg(&[("JWT_SECRET", "short")])), ["JWT_SECRET"]);
        let ok = cfg(&[("JWT_SECRET", &"x".repeat(32))]).unwrap();
        assert!(ok.jwt_secret.is_some());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let r = cfg(&[
            ("PORT", "http"),
            ("DATABASE_URL", "mysql://x"),
            ("JWT_EXPIRATION_TIME", "soon"),
            ("OTP_LENGTH", "3"),
        ]);
        assert_eq!(
            vars_of(r),
            ["PORT", "DATABASE_URL", "JWT_EXPIRATION_TIME", "OTP_LENGTH"]
        );
    }

    #[test]
    fn malformed_database_url_is_named() {
        assert_eq!(
            vars_of(cfg(&[("DATABASE_URL", "postgres://u@h:notaport/db")])),
            ["DATABASE_URL"]
        );
        let c = cfg(&[
            ("DATABASE_URL", "postgres://u:pw@localhost:5433/db"),
            ("SMS_SENDER", "console"),
        ])
        .unwrap();
        assert!(matches!(c.database, DatabaseSource::Url(_)));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn every_duration_unit_is_capped_at_ten_years() {
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        assert!(parse_duration("3651d").is_err());
        assert_eq!(
            parse_duration(&format!("{}ms", MAX_DURATION.as_millis())),
            Ok(MAX_DURATION)
        );
        // Before the cap applied to milliseconds, these were accepted: 584 million
        // years, which panics (or wraps) when added to now.
        for huge in ["18446744073709551615ms", "315360000001ms", "315360000001"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(
            vars_of(cfg(&[("JWT_EXPIRATION_TIME", "18446744073709551615ms")])),
            ["JWT_EXPIRATION_TIME"]
        );
        assert_eq!(
            vars_of(cfg(&[("REFRESH_TOKEN_TTL", "99999999999999ms")])),
            ["REFRESH_TOKEN_TTL"]
        );
    }

    #[test]
    fn signup_privacy_purge_and_proxy_settings_parse_and_name_bad_values() {
        let c = cfg(&[]).unwrap();
        assert!(!c.signup_reveal_taken);
        assert_eq!(c.unverified_signup_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.purge, PurgeConfig::default());
        assert_eq!(c.rate_limits.trusted_proxies, 1);
        let c = cfg(&[
            ("AUTHGATE_SIGNUP_REVEAL_TAKEN", "true"),
            ("AUTHGATE_UNVERIFIED_SIGNUP_TTL", "2d"),
            ("AUTHGATE_PURGE_INTERVAL", "1m"),
            ("AUTHGATE_PURGE_BATCH", "50"),
            ("AUTHGATE_AUDIT_RETENTION", "30d"),
            ("AUTHGATE_OUTBOX_RETENTION", "1d"),
            ("AUTHGATE_TRUSTED_PROXIES", "2"),
        ])
        .unwrap();
        assert!(c.signup_reveal_taken);
        assert_eq!(c.unverified_signup_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(c.purge.interval, Duration::from_secs(60));
        assert_eq!(c.purge.batch_size, 50);
        assert_eq!(c.purge.audit_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.purge.outbox_retention, Duration::from_secs(86_400));
        assert_eq!(c.rate_limits.trusted_proxies, 2);
        assert_eq!(
            vars_of(cfg(&[
                ("AUTHGATE_SIGNUP_REVEAL_TAKEN", "maybe"),
                ("AUTHGATE_UNVERIFIED_SIGNUP_TTL", "soon"),
                ("AUTHGATE_PURGE_BATCH", "0"),
                ("AUTHGATE_TRUSTED_PROXIES", "0"),
                ("AUTHGATE_PURGE_INTERVAL", "10ms"),
            ])),
            [
                "AUTHGATE_TRUSTED_PROXIES",
                "AUTHGATE_SIGNUP_REVEAL_TAKEN",
                "AUTHGATE_UNVERIFIED_SIGNUP_TTL",
                "AUTHGATE_PURGE_BATCH",
                "AUTHGATE_PURGE_INTERVAL",
            ]
        );
        let described: Vec<&str> = c.describe().iter().map(|(k, _)| *k).collect();
        for var in [
            "AUTHGATE_SIGNUP_REVEAL_TAKEN",
            "AUTHGATE_UNVERIFIED_SIGNUP_TTL",
            "AUTHGATE_PURGE_INTERVAL",
            "AUTHGATE_PURGE_BATCH",
            "AUTHGATE_AUDIT_RETENTION",
            "AUTHGATE_OUTBOX_RETENTION",
            "AUTHGATE_TRUSTED_PROXIES",
        ] {
            assert!(described.contains(&var), "{var}");
        }
    }

    #[test]
    fn quotas_parse_and_name_bad_values() {
        let c = cfg(&[
            ("AUTHGATE_SMS_ALLOWED_REGIONS", "us, CA,"),
            ("AUTHGATE_SMS_ALLOWED_NUMBER_TYPES", "mobile, voip"),
            ("AUTHGATE_SMS_PER_REGION_HOUR", "50, us=500,GB=20"),
            ("AUTHGATE_CODE_FAILURES_MAX", "100"),
            ("AUTHGATE_CODE_LOCK_BASE", "10m"),
        ])
        .unwrap();
        let q = &c.quotas;
        assert_eq!(
            q.sms_destinations.regions,
            Some(vec!["US".to_owned(), "CA".to_owned()])
        );
        assert_eq!(
            q.sms_destinations.number_types,
            [NumberType::Mobile, NumberType::Voip]
        );
        assert_eq!(
            (
                q.sms_region_limit("US"),
                q.sms_region_limit("GB"),
                q.sms_region_limit("CA")
            ),
            (500, 20, 50)
        );
        assert_eq!(q.code_failures_max, 100);
        assert_eq!(q.code_lock_base, Duration::from_secs(600));
        let all = cfg(&[("AUTHGATE_SMS_ALLOWED_REGIONS", "*")]).unwrap();
        assert_eq!(all.quotas.sms_destinations.regions, None);
        // The calling-code list is refused by name, not silently reinterpreted.
        assert_eq!(
            vars_of(cfg(&[("AUTHGATE_SMS_ALLOWED_COUNTRIES", "1,44")])),
            ["AUTHGATE_SMS_ALLOWED_COUNTRIES"]
        );
        for (var, bad) in [
            ("AUTHGATE_SMS_ALLOWED_REGIONS", "US,UK"),
            ("AUTHGATE_SMS_ALLOWED_REGIONS", ","),
            ("AUTHGATE_SMS_ALLOWED_NUMBER_TYPES", "mobile,landline"),
            ("AUTHGATE_SMS_PER_REGION_HOUR", "US=0"),
            ("AUTHGATE_SMS_PER_REGION_HOUR", "XX=10"),
            // NIST SP 800-63B: at most 100 failed attempts in a row.
            ("AUTHGATE_CODE_FAILURES_MAX", "101"),
            ("AUTHGATE_CODE_FAILURES_MAX", "0"),
            ("AUTHGATE_CODE_LOCK_MAX", "1s"),
        ] {
            assert_eq!(vars_of(cfg(&[(var, bad)])), [var], "{var}={bad}");
        }
        assert_eq!(
            vars_of(cfg(&[("AUTHGATE_SMS_PER_PHONE_HOUR", "0")])),
            ["AUTHGATE_SMS_PER_PHONE_HOUR"]
        );
    }

    #[test]
    fn hash_queue_and_failure_window_parse_and_name_bad_values() {
        let c = cfg(&[
            ("AUTHGATE_HASH_QUEUE", "64"),
            ("AUTHGATE_HASH_QUEUE_TIMEOUT", "2s"),
            ("AUTHGATE_LOGIN_FAILURE_WINDOW", "5m"),
        ])
        .unwrap();
        assert_eq!(c.hash_queue, 64);
        assert_eq!(c.hash_queue_timeout, Duration::from_secs(2));
        assert_eq!(c.quotas.lockout_window, Duration::from_secs(300));
        assert_eq!(
            vars_of(cfg(&[
                ("AUTHGATE_HASH_QUEUE", "0"),
                ("AUTHGATE_HASH_QUEUE_TIMEOUT", "1h"),
                ("AUTHGATE_LOGIN_FAILURE_WINDOW", "0"),
            ])),
            [
                "AUTHGATE_HASH_QUEUE",
                "AUTHGATE_HASH_QUEUE_TIMEOUT",
                "AUTHGATE_LOGIN_FAILURE_WINDOW"
            ]
        );
        let described = Config::default().describe();
        assert!(described.contains(&("AUTHGATE_HASH_QUEUE", "256".to_owned())));
    }

    #[test]
    fn rate_limits_default_on_and_parse() {
        let c = cfg(&[]).unwrap();
        assert!(c.rate_limits.enabled);
        assert!(c.rate_limits.trusted_proxy_header.is_none());
        assert_eq!(c.rate_limits.max_keys, 100_000);
        assert_eq!(c.rate_limits.signup.to_string(), "10/1m");
        assert_eq!(c.rate_limits.code_send.to_string(), "5/1m");
        let c = cfg(&[
            ("AUTHGATE_RATE_LIMITS", "OFF"),
            ("AUTHGATE_TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
            ("AUTHGATE_LIMIT_SIGNUP", "3/1s"),
            ("AUTHGATE_LIMIT_LOGIN", " 40 / 2m "),
            ("AUTHGATE_LIMIT_CODE_CHECK", "60/h"),
            ("AUTHGATE_LIMIT_CODE_SEND", "100/1d"),
            ("AUTHGATE_LIMIT_MAX_KEYS", "5000"),
        ])
        .unwrap();
        let r = &c.rate_limits;
        assert!(!r.enabled);
        assert_eq!(
            r.trusted_proxy_header.as_ref().map(|h| h.as_str()),
            Some("x-forwarded-for")
        );
        assert_eq!(r.signup, Rate::new(3, Duration::from_secs(1)));
        assert_eq!(r.login, Rate::new(40, Duration::from_secs(120)));
        assert_eq!(r.code_check, Rate::new(60, Duration::from_secs(3600)));
        assert_eq!(r.code_send.to_string(), "100/1d");
        assert_eq!(r.max_keys, 5000);
        let described = c.describe();
        assert!(described.contains(&("AUTHGATE_LIMIT_LOGIN", "40/2m".to_owned())));
    }

    #[test]
    fn bad_rate_limits_are_named() {
        for bad in [
            "10",
            "0/1m",
            "-1/1m",
            "ten/1m",
            "10/",
            "10/soon",
            "10/500ms",
            "10/2d",
            "10/1m/1",
            "2000000/1d",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
            assert_eq!(
                vars_of(cfg(&[("AUTHGATE_LIMIT_CODE_SEND", bad)])),
                ["AUTHGATE_LIMIT_CODE_SEND"],
                "{bad}"
            );
        }
        let r = cfg(&[
            ("AUTHGATE_RATE_LIMITS", "maybe"),
            ("AUTHGATE_TRUSTED_PROXY_HEADER", "X Forwarded For"),
            ("AUTHGATE_LIMIT_MAX_KEYS", "0"),
            ("AUTHGATE_LIMIT_SIGNUP", "1/0s"),
            ("AUTHGATE_LIMIT_LOGIN", "many"),
            ("AUTHGATE_LIMIT_CODE_CHECK", "30/1y"),
        ]);
        assert_eq!(
            vars_of(r),
            [
                "AUTHGATE_RATE_LIMITS",
                "AUTHGATE_TRUSTED_PROXY_HEADER",
                "AUTHGATE_LIMIT_MAX_KEYS",
                "AUTHGATE_LIMIT_SIGNUP",
                "AUTHGATE_LIMIT_LOGIN",
                "AUTHGATE_LIMIT_CODE_CHECK",
            ]
        );
    }

    #[test]
    fn twilio_is_all_or_nothing() {
        let sid = "AC0123456789abcdef0123456789abcdef";
        assert!(cfg(&[]).unwrap().sms.twilio.is_none());
        assert_eq!(
            vars_of(cfg(&[("TWILIO_ACCOUNT_SID", sid)])),
            ["TWILIO_AUTH_TOKEN"]
        );
        assert_eq!(
            vars_of(cfg(&[
                ("TWILIO_ACCOUNT_SID", sid),
                ("TWILIO_AUTH_TOKEN", "t")
            ])),
            ["TWILIO_PHONE_NUMBER"]
        );
        assert_eq!(
            vars_of(cfg(&[
                ("TWILIO_ACCOUNT_SID", "AC123"),
                ("TWILIO_AUTH_TOKEN", "t"),
                ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ])),
            ["TWILIO_ACCOUNT_SID"]
        );
        let c = cfg(&[
            ("TWILIO_ACCOUNT_SID", sid),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_PHONE_NUMBER", "+1 415 555 0100"),
            ("TWILIO_API_BASE_URL", "http://127.0.0.1:9999/"),
        ])
        .unwrap();
        let t = c.sms.twilio.unwrap();
        assert_eq!(t.sender, TwilioSender::From("+14155550100".into()));
        assert_eq!(t.api_base_url, "http://127.0.0.1:9999");
    }

    #[test]
    fn a_database_url_without_a_named_sms_sender_is_refused_naming_sms_sender() {
        let url = ("DATABASE_URL", "postgres://u@localhost/db");
        let sid = ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef");
        let token = ("TWILIO_AUTH_TOKEN", "t");
        let from = ("TWILIO_PHONE_NUMBER", "+15005550006");
        let r = cfg(&[url]);
        let Err(errors) = r else {
            panic!("a DATABASE_URL with no SMS sender must be refused")
        };
        assert_eq!(errors.len(), 1);
        let line = errors[0].to_string();
        assert_eq!(errors[0].var, "SMS_SENDER");
        assert!(line.contains("TWILIO_ACCOUNT_SID") && line.contains("SMS_SENDER=console"));
        // Named on purpose, or Twilio configured: fine.
        let c = cfg(&[url, ("SMS_SENDER", "console")]).unwrap();
        assert!(c.sms.twilio.is_none());
        assert!(c
            .describe()
            .iter()
            .any(|(k, v)| *k == "SMS_SENDER" && v.starts_with("console")));
        assert!(cfg(&[url, sid, token, from]).unwrap().sms.twilio.is_some());
        assert!(cfg(&[url, ("SMS_SENDER", " Twilio "), sid, token, from])
            .unwrap()
            .sms
            .twilio
            .is_some());
        // The embedded development mode keeps the console as its default.
        assert!(cfg(&[]).unwrap().sms.twilio.is_none());
        // Contradictions and unknown values are named.
        for bad in [
            vec![("SMS_SENDER", "pigeon")],
            vec![("SMS_SENDER", "twilio")],
            vec![url, ("SMS_SENDER", "twilio")],
            vec![("SMS_SENDER", "console"), sid, token, from],
        ] {
            assert_eq!(vars_of(cfg(&bad)), ["SMS_SENDER"], "{bad:?}");
        }
    }

    /// The Standard Webhooks specification's example secret (24 bytes).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhook_sender_parses_and_masks_its_secret() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://u@localhost/db"),
            ("SMS_SENDER", " Webhook "),
            ("SMS_WEBHOOK_URL", " https://hooks.example/sms "),
            ("SMS_WEBHOOK_SECRET", SPEC_SECRET),
        ])
        .unwrap();
        assert!(c.sms.twilio.is_none());
        let w = c.sms.webhook.as_ref().unwrap();
        assert_eq!(w.url, "https://hooks.example/sms");
        assert_eq!(w.key().unwrap().len(), 24);
        let row = c
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "SMS_SENDER")
            .map(|(_, v)| v)
            .unwrap();
        assert!(row.starts_with("webhook") && row.contains("https://hooks.example/sms"));
        let text = format!("{:?} {:?}", c.describe(), c);
        assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{text}");
        // A password in the URL is masked too.
        let c = cfg(&[
            ("SMS_SENDER", "webhook"),
            ("SMS_WEBHOOK_URL", "http://user:hunter4@127.0.0.1:9/hook"),
            ("SMS_WEBHOOK_SECRET", SPEC_SECRET),
        ])
        .unwrap();
        assert!(!format!("{:?}", c.describe()).contains("hunter4"));
    }

    #[test]
    fn webhook_secret_is_the_standard_webhooks_form() {
        let b64 = |n: usize| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
        };
        assert_eq!(decode_webhook_secret(SPEC_SECRET).map(|k| k.len()), Ok(24));
        assert_eq!(
            decode_webhook_secret(&format!("whsec_{}", b64(64))).map(|k| k.len()),
            Ok(64)
        );
        // Unpadded base64 is accepted (the reference libraries decode it).
        let unpadded = format!("whsec_{}", b64(32).trim_end_matches('='));
        assert_eq!(decode_webhook_secret(&unpadded).map(|k| k.len()), Ok(32));
        for bad in [
            b64(32),                        // no prefix
            format!("whsec {}", b64(32)),   // wrong prefix
            "whsec_not*base64!".to_owned(), // not base64
            format!("whsec_{}", b64(23)),   // too short
            format!("whsec_{}", b64(65)),   // too long
            "whsec_".to_owned(),            // empty
        ] {
            let problem = decode_webhook_secret(&bad).unwrap_err();
            // The message never quotes the secret.
            assert!(bad.len() <= 8 || !problem.contains(&bad[6..]), "{problem}");
            assert_eq!(
                vars_of(cfg(&[
                    ("SMS_SENDER", "webhook"),
                    ("SMS_WEBHOOK_URL", "https://hooks.example/sms"),
                    ("SMS_WEBHOOK_SECRET", &bad),
                ])),
                ["SMS_WEBHOOK_SECRET"],
                "{bad}"
            );
        }
    }

    #[test]
    fn webhook_sender_names_each_missing_or_contradicting_variable() {
        let url = ("SMS_WEBHOOK_URL", "https://hooks.example/sms");
        let secret = ("SMS_WEBHOOK_SECRET", SPEC_SECRET);
        let webhook = ("SMS_SENDER", "webhook");
        let sid = ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef");
        let token = ("TWILIO_AUTH_TOKEN", "t");
        let from = ("TWILIO_PHONE_NUMBER", "+15005550006");
        // Neither variable: both named, one line each.
        assert_eq!(
            vars_of(cfg(&[webhook])),
            ["SMS_WEBHOOK_URL", "SMS_WEBHOOK_SECRET"]
        );
        assert_eq!(vars_of(cfg(&[webhook, url])), ["SMS_WEBHOOK_SECRET"]);
        assert_eq!(vars_of(cfg(&[webhook, secret])), ["SMS_WEBHOOK_URL"]);
        for bad_url in ["ftp://hooks.example/sms", "hooks.example/sms", "http://"] {
            assert_eq!(
                vars_of(cfg(&[webhook, ("SMS_WEBHOOK_URL", bad_url), secret])),
                ["SMS_WEBHOOK_URL"],
                "{bad_url}"
            );
        }
        // Never implied, never beside Twilio or the console.
        for bad in [
            vec![url, secret],
            vec![("SMS_SENDER", "console"), url, secret],
            vec![("SMS_SENDER", "twilio"), sid, token, from, url, secret],
            vec![webhook, sid, token, from, url, secret],
            vec![sid, token, from, url, secret],
        ] {
            let r = cfg(&bad);
            assert_eq!(vars_of(cfg(&bad)), ["SMS_SENDER"], "{bad:?}");
            let Err(errors) = r else { unreachable!() };
            assert!(
                errors[0].to_string().contains("SMS_SENDER="),
                "{}",
                errors[0]
            );
        }
        let line = match cfg(&[("DATABASE_URL", "postgres://u@localhost/db")]) {
            Err(errors) => errors[0].to_string(),
            Ok(_) => unreachable!(),
        };
        assert!(line.contains("SMS_SENDER=webhook"), "{line}");
        let line = match cfg(&[("SMS_SENDER", "pigeon")]) {
            Err(errors) => errors[0].to_string(),
            Ok(_) => unreachable!(),
        };
        assert!(line.contains("twilio, console, webhook"), "{line}");
    }

    #[test]
    fn describe_masks_secrets() {
        let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
        let c = cfg(&[
            ("JWT_SECRET", secret),
            ("DATABASE_URL", "postgres://u:hunter2@localhost/db"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "tw-token-hunter3"),
            (
                "TWILIO_MESSAGING_SERVICE_SID",
                "MG0123456789abcdef0123456789abcdef",
            ),
            (
                "AUTHGATE_ADMIN_TOKEN",
                "admin-token-hunter4-admin-token-hunter4",
            ),
        ])
        .unwrap();
        let text = format!("{:?} {:?}", c.describe(), c);
        assert!(!text.contains(secret));
        assert!(!text.contains("hunter4"));
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("hunter3"));
    }

    #[test]
    fn listen_url_is_unset_a_url_or_off_and_never_echoes_a_password() {
        use crate::store::LockMode;
        let c = cfg(&[]).unwrap();
        assert!(matches!(c.listen, ListenSource::Database));
        assert!(c.listen.notifies());
        assert_eq!(c.locks, LockMode::Advisory);
        assert_eq!(c.sms.sweep_interval, Duration::from_secs(5));
        let db: tokio_postgres::Config = "postgres://u@pooler:6432/auth".parse().unwrap();
        assert_eq!(c.listen.settings(&db).unwrap().get_ports(), [6432]);

        let url = "postgres://u:hunter5@h1:5432,h2:5433/auth?target_session_attrs=read-write";
        let c = cfg(&[
            ("DATABASE_URL", "postgres://u:hunter5@pooler:6432/auth"),
            ("SMS_SENDER", "console"),
            ("DATABASE_LISTEN_URL", url),
        ])
        .unwrap();
        let ListenSource::Url(l) = &c.listen else {
            panic!("{:?}", c.listen)
        };
        assert_eq!(l.get_hosts().len(), 2);
        assert_eq!(l.get_ports(), [5432, 5433]);
        assert_eq!(
            c.listen.settings(&db).unwrap().get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert!(c.listen.notifies());
        let shown = format!("{:?} {:?}", c.describe(), c);
        assert!(!shown.contains("hunter5"), "{shown}");
        let row = c
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "DATABASE_LISTEN_URL")
            .map(|(_, v)| v)
            .unwrap();
        assert!(row.contains("h1") && row.contains("password set"), "{row}");

        let c = cfg(&[("DATABASE_LISTEN_URL", " OFF ")]).unwrap();
        assert!(matches!(c.listen, ListenSource::Off));
        assert!(!c.listen.notifies());
        assert!(c.listen.settings(&db).is_none());
        // No NOTIFY: the sweep is the cross-process wake, so it runs every second...
        assert_eq!(c.sms.sweep_interval, LISTEN_OFF_SWEEP);
        // ...unless the operator chose.
        let c = cfg(&[
            ("DATABASE_LISTEN_URL", "off"),
            ("AUTHGATE_SMS_SWEEP_INTERVAL", "3s"),
        ])
        .unwrap();
        assert_eq!(c.sms.sweep_interval, Duration::from_secs(3));

        for bad in [
            "on",
            "mysql://u:hunter6@h/db",
            "postgres://u:hunter6@h:notaport/db",
            "postgres://u:hunter6@h/db?target_session_attrs=sometimes",
        ] {
            let errs = cfg(&[("DATABASE_LISTEN_URL", bad)]).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(errs[0].var, "DATABASE_LISTEN_URL");
            let line = errs[0].to_string();
            assert!(!line.contains("hunter6"), "{line}");
            assert!(line.contains("off"), "{line}");
        }
    }

    #[test]
    fn locks_are_advisory_or_rows() {
        use crate::store::LockMode;
        assert_eq!(cfg(&[]).unwrap().locks, LockMode::Advisory);
        let c = cfg(&[("AUTHGATE_LOCKS", "rows")]).unwrap();
        assert_eq!(c.locks, LockMode::Rows);
        assert!(c
            .describe()
            .contains(&("AUTHGATE_LOCKS", "rows".to_owned())));
        assert_eq!(
            cfg(&[("AUTHGATE_LOCKS", " Advisory ")]).unwrap().locks,
            LockMode::Advisory
        );
        let errs = cfg(&[("AUTHGATE_LOCKS", "table")]).unwrap_err();
        assert_eq!(vars_of(Err(errs.clone())), ["AUTHGATE_LOCKS"]);
        assert!(errs[0].problem.contains("advisory, rows"), "{}", errs[0]);
    }
}
