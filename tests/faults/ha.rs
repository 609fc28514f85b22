//! authgate on PostgreSQL's own high-availability stack (`scripts/ha/`): etcd,
//! three Patroni nodes in synchronous mode, HAProxy following the leader, and
//! PgBouncer (session pooling) in front. Three authgate processes reach the
//! database through the pooler and listen for notifications directly on the
//! leader (`DATABASE_LISTEN_URL`, a multi-host URL). Under load, in turn: the
//! leader's PostgreSQL is killed (`kill -9`), a planned switchover, a pooler
//! restart. Meanwhile requests answer 503 `unavailable` (never 500); after
//! each, authgate has found the new leader by itself; at the end no SMS was
//! lost, no code or login flow was accepted twice, and the limits hold. The
//! error windows are printed.
//!
//! Ignored by default: it needs Debian's patroni, etcd, haproxy and pgbouncer
//! and takes minutes. `scripts/ha/test.sh` installs them and runs it (CI does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use crate::fake_twilio::FakeTwilio;
use crate::harness::*;
use crate::load::{newest_code, summary, Answer, Client, Load, Record, Targets, User};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ha");
/// The cluster's ports start here (see `scripts/ha/up.sh`); another base with
/// `AUTHGATE_HA_PORT_BASE`.
const PORT_BASE: u16 = 17400;
/// What the README promises for a failover with Patroni's default timings is
/// 30 s; the test allows a slow machine twice that.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// A request while the pooler is down must fail within this.
const FAIL_FAST: Duration = Duration::from_secs(5);
const PER_PHONE_HOUR: usize = 6;
const MAX_CODE_TRIES: usize = 5;
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe slower than this counts in the error window as a failure would.
const SLOW: Duration = Duration::from_secs(2);

/// The cluster of `scripts/ha/up.sh` in a folder of this test; stopped and
/// removed (`down.sh --purge`) when dropped.
struct Cluster {
    dir: PathBuf,
    base: u16,
    vars: BTreeMap<String, String>,
}

impl Cluster {
    fn run(
        dir: &std::path::Path,
        base: u16,
        script: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let out = Command::new("bash")
            .arg(format!("{SCRIPTS}/{script}"))
            .args(args)
            .env("HA_DIR", dir)
            .env("HA_PORT_BASE", base.to_string())
            .output()
            .map_err(|e| format!("{script}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{script} {args:?} exited with {}:\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    async fn up() -> Cluster {
        let base = std::env::var("AUTHGATE_HA_PORT_BASE")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(PORT_BASE);
        let dir =
            std::env::temp_dir().join(format!("authgate-ha-{}", uuid::Uuid::new_v4().simple()));
        let d = dir.clone();
        let started = Instant::now();
        let up = tokio::task::spawn_blocking(move || Cluster::run(&d, base, "up.sh", &[]))
            .await
            .unwrap();
        let mut cluster = Cluster {
            dir,
            base,
            vars: BTreeMap::new(),
        };
        if let Err(e) = up {
            panic!("scripts/ha/up.sh: {e}");
        }
        let env = std::fs::read_to_string(cluster.dir.join("env")).expect("HA_DIR/env");
        cluster.vars = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('\'').to_owned()))
            .collect();
        eprintln!("ha: cluster up in {:?}", started.elapsed());
        cluster
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from HA_DIR/env: {:?}", self.vars.keys()))
    }

    /// `scripts/ha/ctl.sh ARGS`: its output, or a panic with it.
    async fn ctl(&self, args: &[&str]) -> String {
        let (dir, base) = (self.dir.clone(), self.base);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Cluster::run(&dir, base, "ctl.sh", &args)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = Cluster::run(&self.dir, self.base, "down.sh", &["--purge"]) {
            eprintln!("ha: {e}");
        }
    }
}

/// One probe request: when, which kind, and its status and error code
/// (status 0: no HTTP answer).
#[derive(Debug, Clone)]
struct Probe {
    at: Instant,
    what: &'static str,
    status: u16,
    code: String,
    took: Duration,
}

/// A read (`/me`) and a write (a sign-up) every `PROBE_EVERY`, spread over
/// the processes, recorded with their times: how the error windows are
/// measured.
struct Probes {
    log: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Probes {
    fn start(targets: Targets, user: User) -> Probes {
        let log: Arc<Mutex<Vec<Probe>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let signup = json!({
                    "email": format!("probe{}@example.com", uuid::Uuid::new_v4().simple()),
                    "phone": crate::helpers::unique_phone(),
                    "password": "s3cure-passw0rd", "firstName": "Pro", "lastName": "Be",
                });
                let requests = [
                    (
                        "read",
                        http.get(format!("{}/api/v1/account/me", targets.pick()))
                            .bearer_auth(&user.access),
                    ),
                    (
                        "write",
                        http.post(format!("{}/api/v1/account/signup", targets.pick()))
                            .json(&signup),
                    ),
                ];
                for (what, req) in requests {
                    let started = Instant::now();
                    let (status, body) = match req.send().await {
                        Ok(r) => status_json(r).await,
                        Err(e) => (0, json!({ "code": e.to_string() })),
                    };
                    l.lock().unwrap().push(Probe {
                        at: started,
                        what,
                        status,
                        code: body["code"].as_str().unwrap_or_default().to_owned(),
                        took: started.elapsed(),
                    });
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        Probes { log, stop, task }
    }

    fn since(&self, from: Instant) -> Vec<Probe> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|p| p.at >= from).cloned().collect()
    }

    /// Waits until the last few probes of each kind since `from` succeeded.
    async fn wait_recovered(&self, from: Instant, what: &str, limit: Duration) {
        poll(
            &format!("requests to succeed again after the {what}"),
            limit,
            Duration::from_millis(250),
            async || {
                let probes = self.since(from);
                let ok = ["read", "write"].iter().all(|kind| {
                    let last: Vec<&Probe> = probes
                        .iter()
                        .rev()
                        .filter(|p| p.what == *kind)
                        .take(3)
                        .collect();
                    last.len() == 3 && last.iter().all(|p| p.status < 300 && p.took <= SLOW)
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!("{:?}", probes.last()))
                }
            },
        )
        .await;
    }

    async fn stop(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The failed or slow probes among `probes` (failures checked to be what a
/// failover may answer: 503 `unavailable`), and the error window: from the
/// first such probe to the first prompt success after the last one.
fn error_window(phase: &str, probes: &[Probe]) -> (usize, Duration) {
    let bad = |p: &Probe| p.status >= 300 || p.took > SLOW;
    let failed: Vec<&Probe> = probes.iter().filter(|p| bad(p)).collect();
    for p in failed.iter().filter(|p| p.status >= 300) {
        assert!(
            p.status == 503 && p.code == "unavailable",
            "{phase}: a {} answered {} {:?} (only 503 unavailable may)",
            p.what,
            p.status,
            p.code
        );
    }
    let (Some(first), Some(last)) = (failed.first(), failed.last()) else {
        return (0, Duration::ZERO);
    };
    let end = probes
        .iter()
        .find(|p| p.at > last.at && !bad(p))
        .map_or(last.at + last.took, |p| p.at);
    (failed.len(), end - first.at)
}

/// Stops `load` and checks the run: progress, and no failure beyond the
/// client's documented retry of 503 (a journey abandoned for any reason).
async fn finish_load(phase: &str, load: Load, strict: bool) -> Record {
    let record = std::mem::take(&mut *load.stop().await.lock().unwrap());
    eprintln!("ha {phase}: {}", summary(&record));
    assert!(record.journeys_done > 0, "{phase}: no journey completed");
    let internal: Vec<_> = record
        .abandoned
        .keys()
        .filter(|k| k.contains(": 500"))
        .collect();
    assert!(internal.is_empty(), "{phase}: 500s: {internal:?}");
    if strict {
        // README "Retrying after a 503": a login/verify whose code check
        // committed but whose answer was a 503 answers `410 flow_finished` on
        // the retry, and the client logs in again. Anything else is a failure.
        let cut_short = record
            .transient
            .contains_key("/api/v1/account/login/verify: 503");
        let beyond: Vec<_> = record
            .abandoned
            .iter()
            .filter(|(k, _)| {
                !(cut_short && k.as_str() == "/api/v1/account/login/verify: 410 flow_finished")
            })
            .collect();
        assert!(
            beyond.is_empty(),
            "{phase}: journeys failed beyond the documented retry: {beyond:?}"
        );
    }
    record
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Patroni, etcd, HAProxy and PgBouncer: run by scripts/ha/test.sh"]
async fn failover_switchover_and_pooler_restart_under_load() {
    let cluster = Cluster::up().await;
    let fake = Arc::new(FakeTwilio::start().await);
    let env = Env::new(cluster.var("HA_POOLER_URL"), &fake)
        .set("DATABASE_LISTEN_URL", cluster.var("HA_DIRECT_URL"))
        .set("AUTHGATE_DB_POOL_SIZE", "6")
        .set("AUTHGATE_DB_TIMEOUT", "3s")
        .set("AUTHGATE_SMS_PER_PHONE_HOUR", PER_PHONE_HOUR.to_string())
        .set("OTP_MAX_ATTEMPTS", MAX_CODE_TRIES.to_string())
        .set("OTP_RESEND_COOLDOWN", "0s");
    let servers =
        join_all(["ha-a", "ha-b", "ha-c"].map(|n| Server::start(n, &env, free_port()))).await;
    let targets = || Targets::new(servers.iter().map(Server::base).collect());
    let client = Client::new(targets());
    let probe_user = client.new_user().await.expect("probe user");
    let probes = Probes::start(targets(), probe_user);
    let mut records = Vec::new();
    let mut faults = Vec::new();

    // 1. The leader's PostgreSQL dies under load.
    let load = Load::start(Client::new(targets()), fake.clone(), 9);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let old = cluster.ctl(&["leader"]).await;
    let killed = Instant::now();
    faults.push(killed);
    cluster.ctl(&["kill-leader"]).await;
    let new = cluster
        .ctl(&[
            "wait-leader-change",
            &old,
            &FAILOVER_LIMIT.as_secs().to_string(),
        ])
        .await;
    let promoted = killed.elapsed();
    probes
        .wait_recovered(killed, "failover", FAILOVER_LIMIT)
        .await;
    let (failed, window) = error_window("failover", &probes.since(killed));
    eprintln!(
        "ha failover: {old} killed; {new} leads after {promoted:?}; {failed} probes failed \
         (503 unavailable) or slow over an error window of {window:?}"
    );
    assert!(window < FAILOVER_LIMIT, "failover error window {window:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    records.push(finish_load("failover", load, false).await);
    cluster.ctl(&["wait-healthy", "120"]).await;
    eprintln!(
        "ha: {old} rejoined as a replica\n{}",
        cluster.ctl(&["members"]).await
    );

    // 2. A planned switchover under load: nothing fails beyond the retry.
    let load = Load::start(Client::new(targets()), fake.clone(), 9);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let switched = Instant::now();
    faults.push(switched);
    let leader = cluster.ctl(&["switchover"]).await;
    probes
        .wait_recovered(switched, "switchover", FAILOVER_LIMIT)
        .await;
    let (failed, window) = error_window("switchover", &probes.since(switched));
    eprintln!(
        "ha switchover: {new} → {leader} in {:?}; {failed} probes answered 503 over {window:?}",
        switched.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    records.push(finish_load("switchover", load, true).await);

    // 3. The pooler restarts: 503 meanwhile, fast; then service again.
    let load = Load::start(Client::new(targets()), fake.clone(), 6);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pooler_down = Instant::now();
    faults.push(pooler_down);
    cluster.ctl(&["restart-pooler", "3"]).await;
    probes
        .wait_recovered(pooler_down, "pooler restart", Duration::from_secs(30))
        .await;
    let during = probes.since(pooler_down);
    let (failed, window) = error_window("pooler restart", &during);
    assert!(
        failed > 0,
        "no request noticed the pooler was down: {during:?}"
    );
    for p in during.iter().filter(|p| p.status == 503) {
        assert!(p.took < FAIL_FAST, "a 503 took {:?}", p.took);
    }
    eprintln!("ha pooler restart: {failed} probes answered 503 over {window:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    records.push(finish_load("pooler restart", load, true).await);
    probes.stop().await;

    // The limits still hold across the three processes.
    let limits = client.new_user().await.expect("limits user");
    let send = "/api/v1/account/phone/verify/send";
    let empty = json!({});
    let answers =
        join_all((0..2 * PER_PHONE_HOUR).map(|_| client.post(send, Some(&limits.access), &empty)))
            .await;
    let passed = answers
        .iter()
        .filter(|a| matches!(a, Answer::Ok(202, _)))
        .count();
    assert_eq!(passed, PER_PHONE_HOUR, "per-phone quota after the faults");
    // One code of its own, so the newest SMS is the live code.
    let limits = client.new_user().await.expect("attempts user");
    let r = client.post(send, Some(&limits.access), &empty).await;
    assert!(
        matches!(r, Answer::Ok(202, _)),
        "send for the attempts check"
    );
    let code = newest_code(&fake, &limits.phone, 0).await.unwrap();
    let wrong: String = code
        .chars()
        .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
        .collect();
    let confirm = "/api/v1/account/phone/verify/confirm";
    let wrong = json!({ "code": wrong });
    let tries = join_all(
        (0..MAX_CODE_TRIES + 2).map(|_| client.post(confirm, Some(&limits.access), &wrong)),
    )
    .await;
    let refused = tries
        .iter()
        .filter(|a| matches!(a, Answer::Ok(401, _)))
        .count();
    assert_eq!(refused, MAX_CODE_TRIES, "wrong codes counted once each");
    let right = client
        .post(confirm, Some(&limits.access), &json!({ "code": code }))
        .await;
    assert!(
        matches!(right, Answer::Ok(410, _)),
        "the right code after {MAX_CODE_TRIES} wrong ones must be dead"
    );

    // Nothing lost, nothing twice: every queued SMS sent (or expired), each
    // once but a send whose outcome could not be recorded across a fault;
    // no code or login flow accepted twice.
    let sql = {
        let cfg: tokio_postgres::Config = cluster.var("HA_PROXY_URL").parse().unwrap();
        crate::helpers::connect(&cfg).await
    };
    wait_outbox_final(&sql, Duration::from_secs(60)).await;
    let delivery = check_delivery(&sql, &fake, |times| {
        times.len() == 2
            && faults
                .iter()
                .any(|f| times[0] <= *f + FAILOVER_LIMIT && times[1] > *f)
    })
    .await;
    eprintln!("ha: {delivery:?}");
    for record in &records {
        assert_accepted_once(&client, &sql, record).await;
    }
    for mut s in servers {
        assert!(s.alive(), "{} died", s.name);
    }
}
