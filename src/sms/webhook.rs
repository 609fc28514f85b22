//! The webhook sender (`SMS_SENDER=webhook`): one signed JSON `POST` to the
//! operator's `SMS_WEBHOOK_URL` per attempt, so any provider can deliver
//! authgate's messages. The request follows the Standard Webhooks
//! specification (<https://www.standardwebhooks.com>), so the receiver can
//! verify it with any of that project's libraries:
//!
//! ```text
//! POST {SMS_WEBHOOK_URL}
//! content-type: application/json
//! webhook-id: msg_…            the same on every retry of one message
//! webhook-timestamp: 1764564534 unix seconds of this attempt
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>
//!
//! {"type":"sms.send","timestamp":"2026-12-01T04:48:54Z",
//!  "data":{"to":"+14155550100","body":"…","expiresAt":"2026-12-01T04:58:54Z","messageId":"msg_…"}}
//! ```
//!
//! The key is the decoded `whsec_…` secret. The answer is read exactly as the
//! Twilio sender reads Twilio's: any 2xx is accepted (the message id the
//! receiver gives in a JSON `id` field is kept), any other status is reported
//! with its `Retry-After`, and `retry::classify` decides: 408, 429 and 5xx are
//! retried, every other 4xx is permanent; timeouts and connection failures are
//! retried. Nothing here logs, and nothing here prints the body.

use std::time::Duration;

use base64::Engine;
use chrono::SecondsFormat;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::twilio::parse_retry_after;
use super::{NetworkFailure, OutgoingSms, SendOutcome, SmsSender};
use crate::config::{masked_url, WebhookConfig};
use crate::error::BoxError;

/// The event type in every payload.
pub const EVENT_TYPE: &str = "sms.send";

/// Never wait longer than this for a TCP/TLS connection, whatever the overall timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The most of an answer read for its `id`: a receiver's answer is small, and
/// a huge one must not be buffered.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest receiver message id kept (the rest is cut off).
const MAX_RECEIVER_ID_CHARS: usize = 128;

type HmacSha256 = Hmac<Sha256>;

pub struct WebhookSender {
    http: reqwest::Client,
    url: String,
    /// HMAC-SHA256 keyed with the secret, cloned for each use.
    mac: HmacSha256,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &masked_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// The JSON body. Field order is the serialisation order.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: PayloadData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PayloadData<'a> {
    to: &'a str,
    body: &'a str,
    expires_at: Option<String>,
    message_id: &'a str,
}

/// The part of a receiver's answer authgate reads.
#[derive(Deserialize)]
struct Answer {
    id: Option<serde_json::Value>,
}

impl WebhookSender {
    pub fn new(
        config: &WebhookConfig,
        request_timeout: Duration,
    ) -> Result<WebhookSender, BoxError> {
        let key = config
            .key()
            .map_err(|e| format!("SMS_WEBHOOK_SECRET: {e}"))?;
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|_| "SMS_WEBHOOK_SECRET: unusable key")?;
        // One client for every send, sharing its keep-alive pool (as Twilio's).
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .connect_timeout(request_timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(request_timeout)
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookSender {
            http,
            url: config.url.clone(),
            mac,
        })
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    /// The message's `webhook-id`: the same for every attempt at one outbox
    /// message (so the receiver can drop a retry it already delivered), and
    /// different for every message. It is derived with the key from the
    /// outbox id, the expiry and the text rather than being the outbox id
    /// itself, so it neither tells the receiver how many messages authgate
    /// sends nor repeats an id it saw before a database was recreated.
    pub fn message_id(&self, msg: &OutgoingSms<'_>) -> String {
        let mut mac = self.mac();
        mac.update(b"authgate.sms.webhook-id\0");
        mac.update(&msg.outbox_id.to_be_bytes());
        let expiry = msg.expires_at.map_or(i64::MIN, |t| t.timestamp_micros());
        mac.update(&expiry.to_be_bytes());
        mac.update(msg.body.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!(
            "msg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..18])
        )
    }

    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    /// The exact bytes sent (and signed).
    fn body(msg: &OutgoingSms<'_>, id: &str) -> Result<Vec<u8>, serde_json::Error> {
        let rfc3339 =
            |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        serde_json::to_vec(&Payload {
            kind: EVENT_TYPE,
            timestamp: rfc3339(msg.now),
            data: PayloadData {
                to: msg.to,
                body: msg.body,
                expires_at: msg.expires_at.map(rfc3339),
                message_id: id,
            },
        })
    }

    async fn attempt(&self, msg: OutgoingSms<'_>) -> SendOutcome {
        let id = self.message_id(&msg);
        let Ok(body) = Self::body(&msg, &id) else {
            // Serialising strings cannot fail; were it to, nothing was sent.
            return SendOutcome::Network(NetworkFailure::Other);
        };
        let timestamp = msg.now.timestamp();
        let signature = self.signature(&id, timestamp, &body);
        let response = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return SendOutcome::Network(network_failure(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if !status.is_success() {
            return SendOutcome::Rejected {
                http_status: status.as_u16(),
                // Receivers have no shared error codes: the status decides.
                code: None,
                retry_after,
            };
        }
        // A success whose answer cannot be read is still a success: the
        // message was taken, and retrying would send it twice.
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            answer.extend_from_slice(&chunk);
            if answer.len() > MAX_ANSWER_BYTES {
                answer.clear();
                break;
            }
        }
        SendOutcome::Accepted {
            sid: Some(provider_sid(&id, receiver_id(&answer).as_deref())),
            status: None,
        }
    }
}

impl SmsSender for WebhookSender {
    fn send<'a>(&'a self, msg: OutgoingSms<'a>) -> BoxFuture<'a, SendOutcome> {
        Box::pin(self.attempt(msg))
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

/// The `id` of a JSON answer (a string or a number), printable and bounded.
fn receiver_id(answer: &[u8]) -> Option<String> {
    let id = match serde_json::from_slice::<Answer>(answer).ok()?.id? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let id: String = id
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_RECEIVER_ID_CHARS)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// What the outbox records as the provider's id. The outbox keeps these unique
/// and a receiver's ids need not be (a stub answering `{"id": "ok"}`), so the
/// receiver's id follows ours: `msg_…` alone, or `msg_…:<receiver id>`.
fn provider_sid(webhook_id: &str, receiver_id: Option<&str>) -> String {
    match receiver_id {
        Some(r) => format!("{webhook_id}:{r}"),
        None => webhook_id.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::retry::{classify, Class};
    use chrono::{TimeZone, Utc};
    use secrecy::SecretString;

    /// The example of the Standard Webhooks specification (and of its
    /// reference libraries' tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sender(url: &str) -> WebhookSender {
        WebhookSender::new(
            &WebhookConfig {
                url: url.to_owned(),
                secret: SecretString::from(SPEC_SECRET.to_owned()),
            },
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn msg<'a>(outbox_id: i64, body: &'a str) -> OutgoingSms<'a> {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 4, 48, 54).unwrap();
        OutgoingSms {
            outbox_id,
            to: "+14155550100",
            body,
            expires_at: Some(now + chrono::Duration::seconds(600)),
            now,
        }
    }

    #[test]
    fn signature_matches_the_specifications_example() {
        let s = sender("http://127.0.0.1:1/");
        assert_eq!(
            s.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        // Any change to the id, the timestamp or the body changes it.
        assert_ne!(
            s.signature("msg_other", SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_ne!(
            s.signature(SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_ne!(
            s.signature(SPEC_ID, SPEC_TIMESTAMP, br#"{"test": 2432232315}"#),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn payload_has_the_documented_fields() {
        let m = msg(7, "Your authgate code is 123456");
        let body = WebhookSender::body(&m, "msg_x").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "sms.send",
                "timestamp": "2026-12-01T04:48:54Z",
                "data": {
                    "to": "+14155550100",
                    "body": "Your authgate code is 123456",
                    "expiresAt": "2026-12-01T04:58:54Z",
                    "messageId": "msg_x",
                }
            })
        );
        let m = OutgoingSms {
            expires_at: None,
            ..m
        };
        let v: serde_json::Value =
            serde_json::from_slice(&WebhookSender::body(&m, "msg_x").unwrap()).unwrap();
        assert_eq!(v["data"]["expiresAt"], serde_json::Value::Null);
    }

    #[test]
    fn message_ids_are_stable_per_message_and_distinct_between_messages() {
        let s = sender("http://127.0.0.1:1/");
        let a = s.message_id(&msg(1, "code 111111"));
        assert!(a.starts_with("msg_") && a.len() == 4 + 24, "{a}");
        // A retry, later: the same message, the same id.
        let later = OutgoingSms {
            now: msg(1, "code 111111").now + chrono::Duration::seconds(30),
            ..msg(1, "code 111111")
        };
        assert_eq!(s.message_id(&later), a);
        assert_ne!(s.message_id(&msg(2, "code 111111")), a);
        assert_ne!(s.message_id(&msg(1, "code 222222")), a);
        // Neither the outbox id nor the text shows in it.
        assert!(!a.contains("111111"));
    }

    #[test]
    fn debug_shows_neither_the_key_nor_a_body() {
        let s = sender("http://127.0.0.1:1/hook");
        let text = format!("{s:?} {:?}", msg(1, "code 987654"));
        assert!(text.contains("127.0.0.1:1/hook"));
        assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!text.contains("987654"));
    }

    #[test]
    fn receiver_ids_are_kept_bounded_and_behind_ours() {
        assert_eq!(receiver_id(br#"{"id":"abc-1"}"#).as_deref(), Some("abc-1"));
        assert_eq!(receiver_id(br#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(receiver_id(br#"{"id":null}"#), None);
        assert_eq!(receiver_id(br#"{"id":""}"#), None);
        assert_eq!(receiver_id(b"OK"), None);
        assert_eq!(receiver_id(b""), None);
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(1000));
        assert_eq!(
            receiver_id(long.as_bytes()).map(|s| s.len()),
            Some(MAX_RECEIVER_ID_CHARS)
        );
        assert_eq!(provider_sid("msg_a", Some("ok")), "msg_a:ok");
        assert_eq!(provider_sid("msg_a", None), "msg_a");
    }

    /// A loopback server answering every request with one canned HTTP answer.
    async fn answering(answer: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Read the request head and body (small, in one go or two).
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(head_end) = find(&seen, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..head_end]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if seen.len() >= head_end + 4 + len {
                                break;
                            }
                        }
                    }
                    let _ = sock.write_all(answer.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        format!("http://{addr}/hook")
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    async fn outcome_of(answer: &'static str) -> SendOutcome {
        let s = sender(&answering(answer).await);
        s.send(msg(1, "code 123456")).await
    }

    #[tokio::test]
    async fn statuses_map_like_twilios() {
        let accepted = outcome_of(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 14\r\nconnection: close\r\n\r\n{\"id\":\"rcv-1\"}",
        )
        .await;
        let SendOutcome::Accepted {
            sid: Some(sid),
            status: None,
        } = accepted
        else {
            panic!("{accepted:?}")
        };
        assert!(sid.starts_with("msg_") && sid.ends_with(":rcv-1"), "{sid}");
        let bare = outcome_of("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
        assert!(
            matches!(&bare, SendOutcome::Accepted { sid: Some(s), .. } if !s.contains(':')),
            "{bare:?}"
        );

        let cases: [(&str, u16, Option<u64>, bool); 6] = [
            (
                "503 Service Unavailable\r\nretry-after: 7",
                503,
                Some(7),
                true,
            ),
            ("500 Internal Server Error", 500, None, true),
            (
                "429 Too Many Requests\r\nretry-after: 2",
                429,
                Some(2),
                true,
            ),
            ("408 Request Timeout", 408, None, true),
            ("400 Bad Request", 400, None, false),
            ("401 Unauthorized", 401, None, false),
        ];
        for (head, status, retry_after, transient) in cases {
            let answer: &'static str = Box::leak(
                format!("HTTP/1.1 {head}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .into_boxed_str(),
            );
            let outcome = outcome_of(answer).await;
            assert_eq!(
                outcome,
                SendOutcome::Rejected {
                    http_status: status,
                    code: None,
                    retry_after: retry_after.map(Duration::from_secs),
                },
                "{head}"
            );
            assert_eq!(
                matches!(classify(&outcome), Class::Transient { .. }),
                transient,
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn refused_connections_and_silence_are_retryable_network_failures() {
        // A port nothing listens on: bind one, note it, close it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let refused = sender(&format!("http://{addr}/hook"))
            .send(msg(1, "code"))
            .await;
        assert_eq!(refused, SendOutcome::Network(NetworkFailure::Connect));

        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let silent = WebhookSender::new(
            &WebhookConfig {
                url: format!("http://{addr}/hook"),
                secret: SecretString::from(SPEC_SECRET.to_owned()),
            },
            Duration::from_millis(300),
        )
        .unwrap()
        .send(msg(1, "code"))
        .await;
        hold.abort();
        assert_eq!(silent, SendOutcome::Network(NetworkFailure::Timeout));
        for failure in [refused, silent] {
            assert_eq!(classify(&failure), Class::Transient { retry_after: None });
        }
    }
}
