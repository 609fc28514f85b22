//! The Twilio sender: one `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`
//! per attempt, as `shared/twilio/CONTRACT.md` describes. It reports what Twilio
//! answered and nothing more: retries, backoff and recording are elsewhere.
//!
//! Connect timeouts are short (a refused connection is safe to retry at once: Twilio
//! never saw the request); the overall timeout is the configured one, since a
//! request that timed out after being sent may have been accepted.

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{NetworkFailure, OutgoingSms, SendOutcome, SmsSender};
use crate::config::{TwilioConfig, TwilioSender as Sender};
use crate::error::BoxError;

/// Twilio's bounds on `ValidityPeriod`, in seconds.
const MIN_VALIDITY_SECS: i64 = 1;
const MAX_VALIDITY_SECS: i64 = 36_000;

/// Never wait longer than this for a TCP/TLS connection, whatever the overall timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct TwilioSender {
    http: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: SecretString,
    sender: Sender,
    status_callback: Option<String>,
}

/// The parts of the Message resource authgate uses.
#[derive(Deserialize)]
struct MessageResource {
    sid: Option<String>,
    status: Option<String>,
}

/// Twilio's error body: `{"code": 21211, "message": "...", "status": 400}`.
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<i32>,
}

impl TwilioSender {
    pub fn new(config: &TwilioConfig, request_timeout: Duration) -> Result<TwilioSender, BoxError> {
        // One client for every send: the SMS actor's concurrent requests share
        // its HTTP/1.1 keep-alive pool. The pool keeps every idle connection
        // (reqwest's default, spelled out: a cap below AUTHGATE_SMS_CONCURRENCY
        // would close connections between batches and pay a TLS handshake
        // for each message again).
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .connect_timeout(request_timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(request_timeout)
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TwilioSender {
            http,
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                config.api_base_url.trim_end_matches('/'),
                config.account_sid
            ),
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            sender: config.sender.clone(),
            status_callback: config.status_callback_url.clone(),
        })
    }

    /// The form fields of one message, in the order Twilio documents them.
    fn form<'a>(&'a self, msg: &OutgoingSms<'a>) -> Vec<(&'static str, String)> {
        let mut form = vec![("To", msg.to.to_owned())];
        match &self.sender {
            Sender::From(from) => form.push(("From", from.clone())),
            Sender::MessagingService(mg) => form.push(("MessagingServiceSid", mg.clone())),
        }
        form.push(("Body", msg.body.to_owned()));
        if let Some(cb) = &self.status_callback {
            form.push(("StatusCallback", cb.clone()));
        }
        if let Some(secs) = validity_period(msg) {
            form.push(("ValidityPeriod", secs.to_string()));
        }
        form
    }

    async fn attempt(&self, msg: OutgoingSms<'_>) -> SendOutcome {
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&self.form(&msg))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return SendOutcome::Network(network_failure(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // A body that cannot be read after a success is still a success: the
        // message was accepted, and retrying would send it twice.
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let resource = serde_json::from_slice::<MessageResource>(&body).ok();
            return SendOutcome::Accepted {
                sid: resource.as_ref().and_then(|r| r.sid.clone()),
                status: resource.and_then(|r| r.status),
            };
        }
        let code = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.code);
        SendOutcome::Rejected {
            http_status: status.as_u16(),
            code,
            retry_after,
        }
    }
}

impl SmsSender for TwilioSender {
    fn send<'a>(&'a self, msg: OutgoingSms<'a>) -> BoxFuture<'a, SendOutcome> {
        Box::pin(self.attempt(msg))
    }

    fn name(&self) -> &'static str {
        "twilio"
    }
}

/// Seconds until the content expires, within Twilio's accepted range; None when
/// the message has no expiry.
fn validity_period(msg: &OutgoingSms<'_>) -> Option<i64> {
    let expires_at = msg.expires_at?;
    let secs = (expires_at - msg.now).num_seconds();
    Some(secs.clamp(MIN_VALIDITY_SECS, MAX_VALIDITY_SECS))
}

fn network_failure(e: &reqwest::Error) -> NetworkFailure {
    if e.is_connect() {
        NetworkFailure::Connect
    } else if e.is_timeout() {
        NetworkFailure::Timeout
    } else {
        NetworkFailure::Other
    }
}

/// `Retry-After` in delta-seconds (what Twilio sends). An HTTP date is ignored:
/// the backoff then applies on its own.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn config(sender: Sender, callback: Option<&str>) -> TwilioConfig {
        TwilioConfig {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: SecretString::from("token".to_owned()),
            sender,
            api_base_url: "http://127.0.0.1:1/".into(),
            status_callback_url: callback.map(str::to_owned),
        }
    }

    #[test]
    fn form_has_the_contract_fields() {
        let s = TwilioSender::new(
            &config(
                Sender::From("+15005550006".into()),
                Some("https://x.example/cb"),
            ),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            s.messages_url,
            "http://127.0.0.1:1/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        );
        let now = Utc::now();
        let msg = OutgoingSms {
            outbox_id: 1,
            to: "+14155550100",
            body: "hi",
            expires_at: Some(now + chrono::Duration::seconds(600)),
            now,
        };
        let form = s.form(&msg);
        let get = |k: &str| form.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("To"), Some("+14155550100"));
        assert_eq!(get("From"), Some("+15005550006"));
        assert_eq!(get("MessagingServiceSid"), None);
        assert_eq!(get("Body"), Some("hi"));
        assert_eq!(get("StatusCallback"), Some("https://x.example/cb"));
        assert_eq!(get("ValidityPeriod"), Some("600"));

        let s = TwilioSender::new(
            &config(
                Sender::MessagingService("MG0123456789abcdef0123456789abcdef".into()),
                None,
            ),
            Duration::from_secs(5),
        )
        .unwrap();
        let form = s.form(&OutgoingSms {
            expires_at: None,
            ..msg
        });
        assert!(form.iter().any(|(n, _)| *n == "MessagingServiceSid"));
        assert!(!form
            .iter()
            .any(|(n, _)| matches!(*n, "From" | "StatusCallback" | "ValidityPeriod")));
    }

    #[test]
    fn validity_is_clamped_to_twilios_range() {
        let now = Utc::now();
        let msg = |secs: i64| OutgoingSms {
            outbox_id: 1,
            to: "+14155550100",
            body: "",
            expires_at: Some(now + chrono::Duration::seconds(secs)),
            now,
        };
        assert_eq!(validity_period(&msg(0)), Some(1));
        assert_eq!(validity_period(&msg(90)), Some(90));
        assert_eq!(validity_period(&msg(100_000)), Some(36_000));
    }

    #[test]
    fn retry_after_takes_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
