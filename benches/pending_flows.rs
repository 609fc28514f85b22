//! Pending 2FA login flows at scale: memory, and expiry on time.
//!
//! ```sh
//! cargo bench --bench pending_flows -- [--flows N] [--concurrency C] [--ttl SECS]
//! ```
//!
//! Starts the application in-process (`Application::build`) on a fresh database
//! on postgres://postgres@127.0.0.1:5432 (`--database-url` for another server; the
//! database is dropped afterwards), with its Twilio client pointed at a capture
//! endpoint served here (answers 201, prints nothing). Seeds N users with 2FA on
//! and a verified phone with plain SQL (one shared argon2 hash: the password step
//! is not what is measured), then puts N flows into "password done, waiting for
//! the code" through `FlowRegistry::start`, the login route's own path after the
//! password check (code issued into the outbox, flow row, actor, audit), with
//! bounded concurrency.
//!
//! It prints the creation time, VmRSS/VmHWM of this process before seeding, after
//! seeding and with all N pending (and the growth per flow), live flow actors and
//! tokio tasks; then waits for the flows to expire (LOGIN_FLOW_TTL is chosen so all
//! N are pending at once and expire a little after the last was created) and
//! prints how late they expired (from the database: the expired state's time
//! minus the flow's deadline), that every row is expired with one audit row and
//! one metric count each, the live actor count and RSS after.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::audit::ClientInfo;
use authgate::config::{Config, DatabaseSource, QuotaConfig, RateLimitConfig, SmsConfig};
use authgate::config::{TwilioConfig, TwilioSender};
use authgate::domain::login_flow::{self, Event};
use authgate::startup::Application;
use futures::StreamExt;
use secrecy::SecretString;
use tokio_postgres::NoTls;
use warp::Filter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    flows: usize,
    concurrency: usize,
    ttl: Option<u64>,
    database_url: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        flows: 100_000,
        concurrency: 64,
        ttl: None,
        database_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--flows" => a.flows = value()?.parse().map_err(|_| "--flows: a number")?,
            "--concurrency" => {
                a.concurrency = value()?.parse().map_err(|_| "--concurrency: a number")?
            }
            "--ttl" => a.ttl = Some(value()?.parse().map_err(|_| "--ttl: seconds")?),
            "--database-url" => a.database_url = value()?,
            // cargo bench passes --bench; ignore it and anything else unknown.
            _ => {}
        }
    }
    if a.flows == 0 || a.concurrency == 0 {
        return Err("--flows and --concurrency must be positive".into());
    }
    Ok(a)
}

/// VmRSS and VmHWM of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_memory(label: &str) -> (u64, u64) {
    let (rss, hwm) = memory();
    println!(
        "  memory {label:<28} VmRSS {:>8.1} MiB   VmHWM {:>8.1} MiB",
        mib(rss),
        mib(hwm)
    );
    (rss, hwm)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A Twilio-compatible endpoint that answers 201 and only counts.
async fn start_capture(count: Arc<AtomicU64>) -> Result<SocketAddr, BoxError> {
    let route = warp::post()
        .and(warp::path!(
            "2010-04-01" / "Accounts" / String / "Messages.json"
        ))
        .map(move |sid: String| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            let msid = format!("SM{n:032x}");
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({
                    "account_sid": sid, "sid": msid, "status": "queued",
                })),
                warp::http::StatusCode::CREATED,
            )
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(addr)
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, BoxError> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn config(capture: SocketAddr, ttl: Duration) -> Config {
    Config {
        port: 0,
        database: DatabaseSource::Embedded, // unused: the database is passed explicitly
        data_dir: std::env::temp_dir().join("authgate-bench"),
        jwt_secret: Some(SecretString::from(
            "bench-secret-bench-secret-bench-secret-01".to_owned(),
        )),
        login_flow_ttl: ttl,
        sms: SmsConfig {
            twilio: Some(TwilioConfig {
                account_sid: format!("AC{}", "0".repeat(32)),
                auth_token: SecretString::from("bench-token".to_owned()),
                sender: TwilioSender::From("+15005550006".to_owned()),
                api_base_url: format!("http://{capture}"),
                status_callback_url: None,
            }),
            ..SmsConfig::default()
        },
        // N codes in a few minutes: the SMS quotas and local limits would refuse them.
        quotas: QuotaConfig {
            sms_per_phone_hour: 1_000,
            sms_per_phone_day: 1_000,
            sms_per_account_hour: 1_000,
            sms_global_per_minute: i32::MAX,
            sms_per_region_hour: i32::MAX,
            ..QuotaConfig::default()
        },
        rate_limits: RateLimitConfig {
            enabled: false,
            ..Default::default()
        },
        ..Config::default()
    }
}

/// Seeds `n` users with 2FA on and a verified phone; returns (id, phone) pairs.
async fn seed_users(
    db: &tokio_postgres::Client,
    n: usize,
) -> Result<Vec<(uuid::Uuid, String)>, BoxError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(b"s3cure-passw0rd", &salt)
        .map_err(|e| e.to_string())?
        .to_string();
    let n = i64::try_from(n)?;
    let rows = db
        .query(
            "INSERT INTO users (id, email, phone, password_hash, first_name, last_name,
                                two_fa, phone_verified)
             SELECT gen_random_uuid(), 'bench' || i || '@example.com',
                    '+1415' || (2000000 + i)::text, $1, 'Ada', 'Lovelace', true, true
             FROM generate_series(0::bigint, $2::bigint - 1) AS i
             RETURNING id, phone",
            &[&hash, &n],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn metric(http: &reqwest::Client, addr: SocketAddr, line: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn run(args: Args) -> Result<(), BoxError> {
    let admin_cfg = tokio_postgres::Config::from_str(&args.database_url)?;
    let admin = connect(&admin_cfg).await?;
    let name = format!("authgate_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut db_cfg = admin_cfg.clone();
    db_cfg.dbname(&name);
    let result = bench(&args, db_cfg).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    println!("database {name} dropped");
    result
}

async fn bench(args: &Args, db_cfg: tokio_postgres::Config) -> Result<(), BoxError> {
    let n = args.flows;
    // All N must be pending at once: the TTL must outlast their creation. The
    // default assumes at least ~700 flows/s; --ttl overrides it.
    let ttl = Duration::from_secs(args.ttl.unwrap_or(30 + (n as u64) / 700));
    println!(
        "pending_flows: {n} flows, concurrency {}, LOGIN_FLOW_TTL {}s",
        args.concurrency,
        ttl.as_secs()
    );
    let sent = Arc::new(AtomicU64::new(0));
    let capture = start_capture(sent.clone()).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = Application::build(config(capture, ttl), db_cfg.clone(), async {
        let _ = stop_rx.await;
    })
    .await?;
    let addr = app.addr();
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    let db = connect(&db_cfg).await?;
    let http = reqwest::Client::new();

    println!("\n[1] baseline");
    let (rss_base, _) = print_memory("app started");
    println!("  tokio tasks alive {}", alive_tasks());

    println!("\n[2] seeding {n} users (2FA on, phone verified) with SQL");
    let t = Instant::now();
    let users = seed_users(&db, n).await?;
    println!("  seeded in {:.1}s", t.elapsed().as_secs_f64());
    let (rss_seeded, _) = print_memory("after seeding");

    println!("\n[3] starting {n} flows through FlowRegistry::start");
    let limits = authgate::actors::flow::limits(state.config());
    let client = ClientInfo {
        ip: Some([127, 0, 0, 1].into()),
        user_agent: Some("pending_flows bench".to_owned()),
    };
    let t = Instant::now();
    let errors = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let progress_every = (n / 10).max(1) as u64;
    futures::stream::iter(users)
        .for_each_concurrent(args.concurrency, |(user_id, phone)| {
            let (state, client, errors, done) = (&state, &client, &errors, &done);
            async move {
                let now = state.clock().now();
                let flow = login_flow::start(now, &limits);
                let step = login_flow::transition(
                    &flow,
                    Event::PasswordChecked {
                        ok: true,
                        two_fa: true,
                    },
                    now,
                    &limits,
                );
                let r = state
                    .flows()
                    .start(state, user_id, phone, step.state, now, client)
                    .await;
                if let Err(e) = r {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("  flow start failed: {e}");
                    }
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % progress_every == 0 {
                    println!(
                        "  {d:>7} started at {:>5.1}s, {} live actors",
                        t.elapsed().as_secs_f64(),
                        state.flows().live()
                    );
                }
            }
        })
        .await;
    let create = t.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "  created {} flows in {:.1}s ({:.0} flows/s), {errors} errors",
        n as u64 - errors,
        create.as_secs_f64(),
        n as f64 / create.as_secs_f64()
    );
    let (rss_pending, hwm_pending) = print_memory("all pending");
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM login_flows WHERE state->>'state' = 'otp_pending'",
            &[],
        )
        .await?
        .get(0);
    println!("  pending rows {pending} of {n}");
    println!(
        "  growth per pending flow {:.0} bytes (RSS after seeding to all pending)",
        (rss_pending.saturating_sub(rss_seeded) * 1024) as f64 / n as f64
    );
    println!(
        "  live flow actors {}, tokio tasks alive {}",
        state.flows().live(),
        alive_tasks()
    );
    println!(
        "  SMS delivered to the capture endpoint so far {}",
        sent.load(Ordering::Relaxed)
    );
    println!(
        "  target: {n} pending in < 256 MiB resident: {} (VmRSS {:.1} MiB, VmHWM {:.1} MiB)",
        if mib(hwm_pending) < 256.0 {
            "met"
        } else {
            "MISSED"
        },
        mib(rss_pending),
        mib(hwm_pending)
    );

    println!("\n[4] waiting for expiry");
    let last_deadline: Option<chrono::DateTime<chrono::Utc>> = db
        .query_one("SELECT max(created_at) FROM login_flows", &[])
        .await?
        .get(0);
    let ttl_chrono = chrono::Duration::from_std(ttl)?;
    let wait_until =
        last_deadline.unwrap_or_else(chrono::Utc::now) + ttl_chrono + chrono::Duration::seconds(60);
    let t_wait = Instant::now();
    loop {
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM login_flows
                 WHERE state->>'state' IN ('password_pending', 'otp_pending')",
                &[],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if chrono::Utc::now() > wait_until {
            println!("  {left} flows still pending 60 s after the last deadline: giving up");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("  waited {:.1}s", t_wait.elapsed().as_secs_f64());
    // Actors stop after their flows end; give them a moment.
    for _ in 0..50 {
        if state.flows().live() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl_secs = ttl.as_secs_f64();
    let row = db
        .query_one(
            "WITH e AS (
                 SELECT extract(epoch FROM (state->>'at')::timestamptz
                          - (created_at + make_interval(secs => $1))) * 1000 AS late_ms
                 FROM login_flows WHERE state->>'state' = 'expired')
             SELECT count(*),
                    coalesce(min(late_ms), 0)::float8,
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY late_ms), 0)::float8,
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY late_ms), 0)::float8,
                    coalesce(max(late_ms), 0)::float8
             FROM e",
            &[&ttl_secs],
        )
        .await?;
    let (expired, min, p50, p99, max): (i64, f64, f64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    println!(
        "  expired rows {expired} of {n}: lateness (expired at - deadline) min {min:.0} ms, \
         p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
    );
    let by_state = db
        .query(
            "SELECT state->>'state', count(*) FROM login_flows GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    for r in by_state {
        let (s, c): (String, i64) = (r.get(0), r.get(1));
        println!("  state {s:<16} {c}");
    }
    let audits: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE detail->>'reason' = 'flow_expired'",
            &[],
        )
        .await?
        .get(0);
    let counted = metric(&http, addr, "authgate_login_flows_total{event=\"expired\"}").await;
    println!(
        "  audit rows flow_expired {audits}; metric authgate_login_flows_total{{event=\"expired\"}} {}",
        counted.map_or("?".to_owned(), |v| format!("{v}"))
    );
    println!(
        "  every row expired: {}",
        if expired as usize == n { "yes" } else { "NO" }
    );
    println!(
        "  live flow actors {} (must be 0), tokio tasks alive {}",
        state.flows().live(),
        alive_tasks()
    );
    let (rss_after, _) = print_memory("after expiry");
    println!(
        "\nsummary: create {:.1}s; VmRSS base {:.1} / seeded {:.1} / pending {:.1} / after {:.1} MiB; \
         VmHWM {:.1} MiB; {:.0} B per flow; lateness p99 {p99:.0} ms max {max:.0} ms",
        create.as_secs_f64(),
        mib(rss_base),
        mib(rss_seeded),
        mib(rss_pending),
        mib(rss_after),
        mib(hwm_pending),
        (rss_pending.saturating_sub(rss_seeded) * 1024) as f64 / n as f64,
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pending_flows: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pending_flows: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("pending_flows: {e}");
        std::process::exit(1);
    }
}
