//! `GET /metrics` (`src/metrics.rs`, `src/routes/metrics.rs`): after a known
//! sequence of requests, every counter moved by exactly the expected amount, the
//! route label is the route pattern (never a raw path), and the exposition parses
//! line by line as OpenMetrics 1.0 text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authgate::config::{Rate, RateLimitConfig};
use serde_json::json;

use crate::accounts::*;
use crate::fake_twilio::FakeTwilio;
use crate::helpers::*;

const VERIFY: &str = "/api/v1/account/login/verify";

/// One scrape: the raw text and every sample by `name{labels}` as written.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no sample {series} in\n{}", self.text),
        }
    }

    fn expect(&self, series: &str, want: f64) {
        assert_eq!(self.get(series), want, "{series}");
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks `k="v",k2="v2"` (escapes allowed in values, no label twice) and
/// returns the pairs, values as written.
fn check_labels<'a>(labels: &'a str, line: &str) -> Vec<(&'a str, &'a str)> {
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        assert!(is_name(key), "bad label name {key:?} in {line:?}");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, _) => panic!("bad escape in {line:?}"),
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
        assert!(
            pairs.iter().all(|(k, _)| *k != key),
            "label {key} twice in {line:?}"
        );
        pairs.push((key, &after[..end]));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.is_empty(), "junk after a label in {line:?}");
        }
    }
    pairs
}

/// The sample names a family of this type may have (OpenMetrics 1.0: a
/// counter's samples are `_total` and `_created`, never the bare name).
fn sample_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses the exposition as OpenMetrics 1.0 text, failing where Prometheus's
/// OpenMetrics parser would: no `# EOF` last line, anything after it, a blank
/// line or stray comment, an unknown type, a family declared twice or whose
/// samples are not together, metadata after its samples, a `# UNIT` the name
/// does not end with, a counter sample without `_total`, a bucket without
/// `le`, bad names, labels or values, a duplicate series. It also requires
/// what authgate promises: every family has a `# TYPE` before its samples.
fn parse(text: &str) -> HashMap<String, f64> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .unwrap_or_else(|| panic!("the exposition must end with # EOF"));
    assert!(
        body.is_empty() || body.ends_with('\n'),
        "# EOF must be a line of its own"
    );
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut metadata = std::collections::HashSet::new();
    let mut finished = std::collections::HashSet::new();
    let mut with_samples = std::collections::HashSet::new();
    let mut current: Option<String> = None;
    let mut enter = |family: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(family) {
            assert!(
                !finished.contains(family),
                "family {family} declared twice or split"
            );
            if let Some(done) = current.take() {
                finished.insert(done);
            }
            *current = Some(family.to_owned());
        }
    };
    for line in body.lines() {
        assert!(!line.is_empty(), "blank line");
        if let Some(comment) = line.strip_prefix("# ") {
            let parts: Vec<&str> = comment.splitn(3, ' ').collect();
            let (kind, name, arg) = match parts.as_slice() {
                [kind @ ("HELP" | "TYPE" | "UNIT"), name, arg] => (*kind, *name, *arg),
                _ => panic!("unexpected comment {line:?}"),
            };
            assert!(is_name(name), "{line:?}");
            enter(name, &mut current);
            assert!(
                metadata.insert((kind, name.to_owned())),
                "# {kind} twice for {name}"
            );
            assert!(
                !with_samples.contains(name),
                "metadata after samples: {line:?}"
            );
            match kind {
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "stateset",
                            "info",
                            "summary",
                            "unknown"
                        ]
                        .contains(&arg),
                        "{line:?}"
                    );
                    types.insert(name.to_owned(), arg.to_owned());
                }
                "UNIT" => assert!(name.ends_with(&format!("_{arg}")), "{line:?}"),
                _ => {}
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, check_labels(labels, line))
            }
            None => (series, Vec::new()),
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        let family = current
            .as_deref()
            .filter(|f| {
                types.get(*f).is_some_and(|kind| {
                    sample_suffixes(kind)
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(*f))
                })
            })
            .unwrap_or_else(|| panic!("sample outside its typed family: {line:?}"));
        if name.ends_with("_bucket") && types.get(family).is_some_and(|k| k == "histogram") {
            assert!(
                labels.iter().any(|(k, _)| *k == "le"),
                "bucket without le: {line:?}"
            );
        }
        with_samples.insert(family.to_owned());
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    Scrape { text, samples }
}

fn http(route: &str, status: u16) -> String {
    format!("authgate_http_requests_total{{route=\"{route}\",status=\"{status}\"}}")
}

/// Signs up (201) and logs in with the password (200), then verifies the phone
/// (optionally after one wrong code) and turns 2FA on: two codes issued, two
/// accepted.
async fn two_fa_account(app: &TestApp, fake: &FakeTwilio, wrong_first: bool) -> Account {
    let a = account(app).await;
    let before = count_to(fake, &a.phone);
    let r = post_auth(app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(fake, &a.phone, before).await;
    let confirm = "/api/v1/account/phone/verify/confirm";
    if wrong_first {
        let r = post_auth(app, confirm, &a.access, Some(json!({"code": wrong(&code)}))).await;
        expect_error(r, 401, "invalid_code").await;
    }
    let r = post_auth(app, confirm, &a.access, Some(json!({"code": code}))).await;
    expect_json(r, 200).await;
    let before = count_to(fake, &a.phone);
    let r = post_auth(app, "/api/v1/account/2fa/enable", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(fake, &a.phone, before).await;
    let r = post_auth(
        app,
        "/api/v1/account/2fa/enable/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    a
}

/// Password step of a 2FA login (200 `otp_required`); returns the flow and code.
async fn start_flow(app: &TestApp, fake: &FakeTwilio, a: &Account) -> (String, String) {
    let before = count_to(fake, &a.phone);
    let r = app
        .post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["status"], "otp_required");
    let code = code_for(fake, &a.phone, before).await;
    (body["flowId"].as_str().unwrap().to_owned(), code)
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counters_move_by_exactly_what_the_requests_did() {
    let roomy = Rate::new(1000, Duration::from_secs(60));
    let (app, fake) = spawn_app_with_twilio_and(move |c| {
        c.rate_limits = RateLimitConfig {
            enabled: true,
            // Three sign-ups pass; the fourth is the 429 this test expects.
            signup: Rate::new(3, Duration::from_secs(60)),
            login: roomy,
            code_check: roomy,
            code_send: roomy,
            ..RateLimitConfig::default()
        };
    })
    .await;
    let mut scrapes = 0u32;

    // Nothing counted yet but the fixed series, all zero.
    let s = scrape(&app).await;
    scrapes += 1;
    s.expect("authgate_login_flows_total{event=\"started\"}", 0.0);
    s.expect("authgate_codes_issued_total{purpose=\"login_2fa\"}", 0.0);
    s.expect("authgate_rate_limited_total{class=\"signup\"}", 0.0);
    s.expect("authgate_login_flow_actors", 0.0);
    assert!(
        !s.text.contains("authgate_http_requests_total{"),
        "{}",
        s.text
    );

    // A: sign-up, password login, a failed login, phone verified after one
    // wrong code, 2FA on, then a 2FA login finished with the right code.
    let a = two_fa_account(&app, &fake, true).await;
    let r = app
        .post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": "wrong-passw0rd"}),
        )
        .await;
    expect_error(r, 401, "invalid_credentials").await;
    let (flow_a, code_a) = start_flow(&app, &fake, &a).await;
    assert_eq!(app.state.flows().live(), 1);
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow_a, "code": code_a}))
        .await;
    assert_eq!(expect_json(r, 200).await["status"], "authenticated");

    // B: a 2FA login locked by five wrong codes.
    let b = two_fa_account(&app, &fake, false).await;
    let (flow_b, code_b) = start_flow(&app, &fake, &b).await;
    for n in 1..=5 {
        let r = app
            .post_json(VERIFY, &json!({"flowId": flow_b, "code": wrong(&code_b)}))
            .await;
        let status = if n < 5 { 401 } else { 410 };
        assert_eq!(r.status(), status, "wrong code {n}");
    }

    // C: a 2FA login left pending (one live actor), then expired.
    let c = two_fa_account(&app, &fake, false).await;
    let (flow_c, code_c) = start_flow(&app, &fake, &c).await;
    wait_until("A's and B's flow actors stop", || {
        app.state.flows().live() == 1
    })
    .await;
    let s = scrape(&app).await;
    scrapes += 1;
    s.expect("authgate_login_flow_actors", 1.0);

    // A fourth sign-up trips the limit; an unknown path is one `unmatched` 404.
    let r = app.signup(&valid_signup()).await;
    expect_error(r, 429, "too_many_requests").await;
    let r = app
        .http
        .get(app.url("/api/v1/users/3c931f6d-b04b-41e8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Nine codes went out; wait until the SMS actor counted all of them (it
    // bumps `sent` after the provider answered), before the clock jumps.
    let start = Instant::now();
    loop {
        let s = scrape(&app).await;
        scrapes += 1;
        if s.get("authgate_sms_outcomes_total{outcome=\"sent\"}") == 9.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    let r = app
        .post_json(VERIFY, &json!({"flowId": flow_c, "code": code_c}))
        .await;
    expect_error(r, 410, "flow_expired").await;
    wait_until("C's flow actor stops", || app.state.flows().live() == 0).await;

    let s = scrape(&app).await;

    // Requests, by route pattern and status.
    s.expect(&http("/api/v1/account/signup", 201), 3.0);
    s.expect(&http("/api/v1/account/signup", 429), 1.0);
    // Three password-only logins, three 2FA password steps; one wrong password.
    s.expect(&http("/api/v1/account/login", 200), 6.0);
    s.expect(&http("/api/v1/account/login", 401), 1.0);
    s.expect(&http("/api/v1/account/phone/verify/send", 202), 3.0);
    s.expect(&http("/api/v1/account/phone/verify/confirm", 200), 3.0);
    s.expect(&http("/api/v1/account/phone/verify/confirm", 401), 1.0);
    s.expect(&http("/api/v1/account/2fa/enable", 202), 3.0);
    s.expect(&http("/api/v1/account/2fa/enable/confirm", 200), 3.0);
    s.expect(&http(VERIFY, 200), 1.0);
    s.expect(&http(VERIFY, 401), 4.0);
    s.expect(&http(VERIFY, 410), 2.0);
    s.expect(&http("unmatched", 404), 1.0);
    s.expect(&http("/metrics", 200), f64::from(scrapes));
    assert!(
        !s.text.contains("/api/v1/users"),
        "a raw path became a label"
    );
    let requests: f64 = s
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("authgate_http_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests, 32.0 + f64::from(scrapes), "{}", s.text);
    // The histogram of one cell: count, +Inf and the request counter agree.
    let cell = "route=\"/api/v1/account/signup\",status=\"201\"";
    s.expect(
        &format!("authgate_http_request_duration_seconds_count{{{cell}}}"),
        3.0,
    );
    s.expect(
        &format!("authgate_http_request_duration_seconds_bucket{{le=\"+Inf\",{cell}}}"),
        3.0,
    );
    // A sign-up hashes (tens of ms): it is above the 1 ms bucket.
    assert!(
        s.get(&format!(
            "authgate_http_request_duration_seconds_bucket{{le=\"0.001\",{cell}}}"
        )) < 3.0
    );
    assert!(
        s.get(&format!(
            "authgate_http_request_duration_seconds_sum{{{cell}}}"
        )) > 0.0
    );

    // Login flows.
    s.expect("authgate_login_flows_total{event=\"started\"}", 3.0);
    s.expect("authgate_login_flows_total{event=\"completed\"}", 1.0);
    s.expect("authgate_login_flows_total{event=\"locked\"}", 1.0);
    s.expect("authgate_login_flows_total{event=\"expired\"}", 1.0);
    s.expect("authgate_login_flow_actors", 0.0);

    // Codes by purpose. C's expired flow answers before its code is checked.
    for purpose in ["phone_verify", "enable_2fa", "login_2fa"] {
        s.expect(
            &format!("authgate_codes_issued_total{{purpose=\"{purpose}\"}}"),
            3.0,
        );
    }
    s.expect("authgate_codes_issued_total{purpose=\"disable_2fa\"}", 0.0);
    let check =
        |p: &str, r: &str| format!("authgate_code_checks_total{{purpose=\"{p}\",result=\"{r}\"}}");
    s.expect(&check("phone_verify", "accepted"), 3.0);
    s.expect(&check("phone_verify", "rejected"), 1.0);
    s.expect(&check("enable_2fa", "accepted"), 3.0);
    s.expect(&check("enable_2fa", "rejected"), 0.0);
    s.expect(&check("login_2fa", "accepted"), 1.0);
    s.expect(&check("login_2fa", "rejected"), 5.0);
    s.expect(&check("login_2fa", "unusable"), 0.0);

    // SMS: every message sent once, nothing left in the outbox.
    s.expect("authgate_sms_outcomes_total{outcome=\"sent\"}", 9.0);
    s.expect("authgate_sms_outcomes_total{outcome=\"retried\"}", 0.0);
    s.expect("authgate_sms_outcomes_total{outcome=\"failed\"}", 0.0);
    s.expect("authgate_sms_outcomes_total{outcome=\"expired\"}", 0.0);
    s.expect("authgate_sms_outbox_depth", 0.0);
    s.expect("authgate_sms_outbox_depth_known", 1.0);
    // The 9 outcomes were recorded by 1 to 9 statements (one may serve
    // several); claims also run on wakes that find nothing.
    let record = s.get("authgate_sms_outbox_statements_total{kind=\"record\"}");
    assert!((1.0..=9.0).contains(&record), "record statements: {record}");
    assert!(s.get("authgate_sms_outbox_statements_total{kind=\"claim\"}") >= 1.0);
    s.expect("authgate_sms_quota_refusals_total{quota=\"cooldown\"}", 0.0);

    // argon2: three sign-up hashes, seven verifies (three password-only logins,
    // one wrong password, three 2FA password steps). The refused fourth sign-up
    // never reached the hasher.
    s.expect("authgate_password_hash_queue_wait_seconds_count", 10.0);
    s.expect(
        "authgate_password_hash_queue_wait_seconds_bucket{le=\"+Inf\"}",
        10.0,
    );

    // Rate-limit refusals by class.
    s.expect("authgate_rate_limited_total{class=\"signup\"}", 1.0);
    s.expect("authgate_rate_limited_total{class=\"login\"}", 0.0);
    s.expect("authgate_rate_limited_total{class=\"code_check\"}", 0.0);
    s.expect("authgate_rate_limited_total{class=\"code_send\"}", 0.0);

    // The pool: a configured maximum, some connections open, idle ≤ open.
    let max = s.get("authgate_db_pool_max_size");
    assert_eq!(max, app.state.config().db_pool_size as f64);
    let size = s.get("authgate_db_pool_size");
    assert!(size >= 1.0 && size <= max, "{size}");
    assert!(s.get("authgate_db_pool_available") <= size);
}

#[tokio::test]
async fn a_code_sent_too_soon_counts_as_a_cooldown_refusal() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let send = "/api/v1/account/phone/verify/send";
    expect_json(post_auth(&app, send, &a.access, None).await, 202).await;
    let r = post_auth(&app, send, &a.access, None).await;
    expect_error(r, 429, "too_many_requests").await;
    let s = scrape(&app).await;
    s.expect("authgate_sms_quota_refusals_total{quota=\"cooldown\"}", 1.0);
    s.expect("authgate_codes_issued_total{purpose=\"phone_verify\"}", 1.0);
    // Local limits are off in the harness: the 429 came from PostgreSQL.
    s.expect("authgate_rate_limited_total{class=\"code_send\"}", 0.0);
    s.expect(&http(send, 429), 1.0);
}

#[tokio::test]
async fn a_dead_database_does_not_hang_the_scrape() {
    let app = spawn_app().await;
    let name = app.db.get_dbname().unwrap().to_owned();
    let admin = connect(&admin_config()).await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    let start = Instant::now();
    let s = scrape(&app).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    s.expect("authgate_sms_outbox_depth_known", 0.0);
    assert!(!s.samples.contains_key("authgate_sms_outbox_depth"));
    // Everything else is still there.
    s.expect("authgate_login_flow_actors", 0.0);
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    for bad in [
        "authgate_x 1\n# EOF\n",                                         // no # TYPE
        "# TYPE authgate_x counter\nauthgate_x_total{a=\"b} 1\n# EOF\n", // unterminated value
        "# TYPE authgate_x counter\nauthgate_x_total{a=b} 1\n# EOF\n",   // unquoted value
        "# TYPE authgate_x counter\nauthgate_x_total{a=\"\\q\"} 1\n# EOF\n", // bad escape
        "# TYPE authgate_x gauge\nauthgate_x{a=\"1\",a=\"2\"} 1\n# EOF\n", // label twice
        "# TYPE authgate_x counter\nauthgate_x_total one\n# EOF\n",      // not a number
        "# TYPE authgate_x counter\n# TYPE authgate_x counter\n# EOF\n",
        "# TYPE 9x counter\n# EOF\n",
        "# TYPE authgate_x counter\nauthgate_x_total 1\n", // no # EOF
        "# TYPE authgate_x counter\nauthgate_x_total 1\n# EOF\nauthgate_x_total 2\n",
        "# TYPE authgate_x counter\nauthgate_x 1\n# EOF\n", // counter without _total
        "# TYPE authgate_x untyped\nauthgate_x 1\n# EOF\n", // 0.0.4's type, not OpenMetrics'
        "# TYPE authgate_x gauge\n\nauthgate_x 1\n# EOF\n", // blank line
        "# TYPE authgate_x gauge\n# a comment\nauthgate_x 1\n# EOF\n", // free comment
        "# TYPE authgate_x gauge\nauthgate_x 1\n# HELP authgate_x X.\n# EOF\n",
        "# TYPE a counter\n# TYPE b gauge\nb 1\na_total 1\n# EOF\n", // interleaved
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n", // split family
        "# TYPE a histogram\na_bucket 1\n# EOF\n",                   // bucket without le
        "# TYPE a histogram\n# UNIT a seconds\n# EOF\n",             // unit not in the name
        "# TYPE a gauge\na 1\na 2\n# EOF\n",                         // duplicate series
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad:?}");
    }
    let ok = parse(concat!(
        "# HELP a A.\n# TYPE a counter\na_total{k=\"v\\\"\",l=\"\"} 2\n",
        "# TYPE b_seconds histogram\n# UNIT b_seconds seconds\n",
        "b_seconds_sum 0.5\nb_seconds_count 1\n",
        "b_seconds_bucket{le=\"1.0\"} 1\nb_seconds_bucket{le=\"+Inf\"} 1\n",
        "# EOF\n"
    ));
    assert_eq!(ok["a_total{k=\"v\\\"\",l=\"\"}"], 2.0);
    assert_eq!(ok["b_seconds_bucket{le=\"+Inf\"}"], 1.0);
}
