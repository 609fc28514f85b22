//! PostgreSQL restarts under load: meanwhile requests fail fast with 503 and
//! the error envelope, then the same authgate process recovers by itself, and
//! nothing committed before the outage is lost.
//!
//! Never the shared server on 5432: a private PostgreSQL of this test only,
//! under the system temp folder (as root it runs as `postgres`, which must be
//! able to enter the folder).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::store::private_pg::PrivatePostgres;
use serde_json::{json, Value};

use crate::fake_twilio::FakeTwilio;
use crate::harness::*;
use crate::load::{summary, Client, Load, Targets};

/// A request during the outage must answer within this.
const FAIL_FAST: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(6);

/// The private server; stopped and its folder removed when dropped.
struct Pg {
    dir: PathBuf,
    server: Option<PrivatePostgres>,
}

impl Pg {
    async fn start(dir: PathBuf) -> Pg {
        let d = dir.clone();
        let server = tokio::task::spawn_blocking(move || PrivatePostgres::start(&d, "postgres"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("private PostgreSQL in {}: {e}", dir.display()));
        Pg {
            dir,
            server: Some(server),
        }
    }

    fn config(&self) -> tokio_postgres::Config {
        self.server.as_ref().expect("running").pg_config()
    }

    /// `pg_ctl stop -m fast`, waiting until it is down.
    async fn stop(&mut self) {
        let server = self.server.take().expect("running");
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap()
            .expect("stop PostgreSQL");
    }

    /// Starts it again on the same folder.
    async fn restart(&mut self) {
        let dir = self.dir.clone();
        let server = tokio::task::spawn_blocking(move || PrivatePostgres::start(&dir, "postgres"))
            .await
            .unwrap()
            .expect("restart PostgreSQL");
        self.server = Some(server);
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request during the outage: its name, status, body and time.
#[derive(Debug)]
struct Probe {
    what: &'static str,
    status: u16,
    body: Value,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_under_load_fails_fast_then_recovers_without_losing_anything() {
    let dir = std::env::temp_dir().join(format!(
        "authgate-faults-pg-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut pg = Pg::start(dir).await;
    let db_cfg = pg.config();
    let fake = Arc::new(FakeTwilio::start().await);
    let env = Env::new(&url_for(&db_cfg), &fake);
    let mut server = Server::start("pg-restart", &env, free_port()).await;
    let pid = server.pid();
    let client = Client::new(Targets::new(vec![server.base()]));
    let probe_user = client.new_user().await.expect("probe user");

    let load = Load::start(client.clone(), fake.clone(), 16);
    tokio::time::sleep(Duration::from_secs(6)).await;

    // What is committed before the outage.
    let (users_before, outbox_before) = {
        let sql = crate::helpers::connect(&db_cfg).await;
        let users: Vec<(uuid::Uuid, bool, bool)> = sql
            .query("SELECT id, phone_verified, two_fa FROM users", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let outbox: Vec<i64> = sql
            .query("SELECT id FROM sms_outbox", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (users, outbox)
    };
    let done_before = client.record.lock().unwrap().journeys_done;

    let down_at = Instant::now();
    pg.stop().await;
    eprintln!("pg-restart: PostgreSQL stopped in {:?}", down_at.elapsed());

    // Meanwhile: every kind of request answers 503 quickly.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut probes = Vec::new();
    while down_at.elapsed() < OUTAGE {
        let signup = json!({
            "email": format!("probe{}@example.com", uuid::Uuid::new_v4().simple()),
            "phone": crate::helpers::unique_phone(),
            "password": "s3cure-passw0rd", "firstName": "Pro", "lastName": "Be",
        });
        let login = json!({"email": probe_user.email, "password": probe_user.password});
        let requests = [
            ("readyz", http.get(server.url("/readyz"))),
            (
                "signup",
                http.post(server.url("/api/v1/account/signup"))
                    .json(&signup),
            ),
            (
                "login",
                http.post(server.url("/api/v1/account/login")).json(&login),
            ),
            (
                "me",
                http.get(server.url("/api/v1/account/me"))
                    .bearer_auth(&probe_user.access),
            ),
            (
                "phone/verify/send",
                http.post(server.url("/api/v1/account/phone/verify/send"))
                    .bearer_auth(&probe_user.access)
                    .json(&json!({})),
            ),
        ];
        for (what, req) in requests {
            let started = Instant::now();
            let r = req
                .send()
                .await
                .expect("authgate answers while PostgreSQL is down");
            let (status, body) = status_json(r).await;
            probes.push(Probe {
                what,
                status,
                body,
                took: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(server.alive(), "authgate died with PostgreSQL");

    let up_at = Instant::now();
    pg.restart().await;
    eprintln!(
        "pg-restart: {} probes during {:?} of downtime; PostgreSQL back in {:?}",
        probes.len(),
        up_at - down_at,
        up_at.elapsed()
    );
    for p in &probes {
        assert_eq!(p.status, 503, "{} during the outage: {p:?}", p.what);
        assert!(p.took < FAIL_FAST, "{} took {:?} to fail", p.what, p.took);
        if p.what == "readyz" {
            assert_eq!(p.body["database"], false, "{p:?}");
        } else {
            assert_eq!(p.body["code"], "unavailable", "{p:?}");
            assert_eq!(p.body["statusCode"], 503, "{p:?}");
            assert_eq!(p.body["error"], "Service Unavailable", "{p:?}");
            assert!(p.body["message"].is_string() && p.body["timestamp"].is_string());
        }
    }

    // The same process recovers by itself: ready again, and a whole journey
    // (sign-up to 2FA login, SMS included) goes through.
    poll(
        "/readyz to answer 200 after PostgreSQL came back",
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || match reqwest::get(server.url("/readyz")).await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    let recovered = up_at.elapsed();
    let fresh = Client::new(Targets::new(vec![server.base()]));
    fresh
        .journey(&fake)
        .await
        .unwrap_or_else(|e| panic!("journey after the restart: {e}"));
    assert!(server.alive() && server.pid() == pid, "authgate restarted");
    eprintln!("pg-restart: ready {recovered:?} after PostgreSQL started; journey ok");

    tokio::time::sleep(Duration::from_secs(4)).await;
    let record = std::mem::take(&mut *load.stop().await.lock().unwrap());
    eprintln!("pg-restart: {}", summary(&record));
    assert!(
        record.journeys_done > done_before,
        "the load made no progress after the restart: {}",
        summary(&record)
    );
    let internal: Vec<_> = record
        .abandoned
        .keys()
        .filter(|k| k.contains(": 500"))
        .collect();
    assert!(internal.is_empty(), "500s instead of 503s: {internal:?}");

    // Nothing committed before the outage is lost.
    let sql = crate::helpers::connect(&db_cfg).await;
    for (id, verified, two_fa) in &users_before {
        let row = sql
            .query_opt(
                "SELECT phone_verified, two_fa FROM users WHERE id = $1",
                &[id],
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("user {id} lost"));
        let (v, t): (bool, bool) = (row.get(0), row.get(1));
        assert!(
            (v || !*verified) && (t || !*two_fa),
            "user {id} lost a committed phone verification or 2FA"
        );
    }
    let ids: Vec<i64> = sql
        .query("SELECT id FROM sms_outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &outbox_before {
        assert!(ids.contains(id), "outbox row {id} lost");
    }
    wait_outbox_final(&sql, Duration::from_secs(30)).await;
    // A send whose outcome could not be recorded while PostgreSQL was down is
    // sent again after its lease: at least once, as documented.
    let delivery = check_delivery(&sql, &fake, |times| {
        let margin = Duration::from_secs(2);
        times.len() == 2 && times[0] + margin > down_at && times[0] < up_at + margin
    })
    .await;
    eprintln!("pg-restart: {delivery:?}");
    drop(server);
}
