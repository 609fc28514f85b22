//! The development sender, used when Twilio is not configured: it prints each
//! message to standard output. This is the one place in authgate where a code
//! may be shown, on purpose, so a developer can log in without an SMS account.
//! It goes to stdout, not to the log, so log shipping never picks codes up.

use std::io::Write;

use futures::future::BoxFuture;

use super::{OutgoingSms, SendOutcome, SmsSender};

#[derive(Debug, Default, Clone, Copy)]
pub struct ConsoleSender;

impl SmsSender for ConsoleSender {
    fn send<'a>(&'a self, msg: OutgoingSms<'a>) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            let line = format!("[authgate sms] to {}: {}\n", msg.to, msg.body);
            // One write per message so concurrent messages do not interleave.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
            SendOutcome::Accepted {
                sid: None,
                status: None,
            }
        })
    }

    fn name(&self) -> &'static str {
        "console"
    }
}
