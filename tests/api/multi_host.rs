//! `DATABASE_URL` may list several hosts (libpq's syntax, with
//! `target_session_attrs=read-write`): authgate's pool connects to the first
//! that answers and accepts writes, which is how it finds a new leader after a
//! failover without a proxy in between (README "High availability").

use tokio_postgres::config::{Host, TargetSessionAttrs};

use crate::helpers::*;

/// `db`'s settings behind `dead` hosts that refuse connections.
fn behind_dead_hosts(db: &tokio_postgres::Config, dead: usize) -> tokio_postgres::Config {
    let mut multi = tokio_postgres::Config::new();
    for _ in 0..dead {
        // Bound, then released: nothing listens there.
        multi.host("127.0.0.1").port(free_port());
    }
    for (host, port) in db.get_hosts().iter().zip(db.get_ports()) {
        match host {
            Host::Tcp(h) => multi.host(h),
            Host::Unix(p) => multi.host_path(p),
        };
        multi.port(*port);
    }
    multi
        .user(db.get_user().unwrap())
        .dbname(db.get_dbname().unwrap())
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .connect_timeout(std::time::Duration::from_secs(2));
    if let Some(pw) = db.get_password() {
        multi.password(pw);
    }
    multi
}

#[tokio::test]
async fn the_pool_passes_over_hosts_that_do_not_answer() {
    let (name, db) = fresh_database().await;
    let mut app = spawn_on(behind_dead_hosts(&db, 2), |_| {}).await;

    let body = expect_json(app.http.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(body["database"], true);
    let signup = valid_signup();
    expect_json(app.signup(&signup).await, 201).await;
    let login = serde_json::json!({"email": signup["email"], "password": signup["password"]});
    let tokens = expect_json(app.post_json("/api/v1/account/login", &login).await, 200).await;
    assert!(tokens["accessToken"].is_string(), "{tokens}");
    app.stop().await;
    drop_database(name);
}
