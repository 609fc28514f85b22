//! Test phone numbers (`AUTHGATE_TEST_PHONES`) at the sending end: a sender
//! that wraps the real one and keeps every message to a test number from the
//! provider, answering as if it had been accepted, and counts it apart
//! (`authgate_sms_test_numbers_total`). Their codes are fixed where codes are
//! made (`actors::otp`); the configuration refuses them in production.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{OutgoingSms, SendOutcome, SmsSender};
use crate::domain::phone::TestPhones;
use crate::metrics::Metrics;

pub struct TestPhoneSender {
    inner: Arc<dyn SmsSender>,
    phones: Arc<TestPhones>,
    metrics: Arc<Metrics>,
}

impl TestPhoneSender {
    /// `inner` unchanged when there are no test numbers.
    pub fn wrap(
        inner: Arc<dyn SmsSender>,
        phones: Arc<TestPhones>,
        metrics: Arc<Metrics>,
    ) -> Arc<dyn SmsSender> {
        if phones.is_empty() {
            return inner;
        }
        Arc::new(TestPhoneSender {
            inner,
            phones,
            metrics,
        })
    }
}

impl SmsSender for TestPhoneSender {
    fn send<'a>(&'a self, sms: OutgoingSms<'a>) -> BoxFuture<'a, SendOutcome> {
        if self.phones.contains(sms.to) {
            self.metrics.sms_to_test_number();
            tracing::info!("SMS to a test number kept from the provider");
            return Box::pin(async {
                SendOutcome::Accepted {
                    sid: None,
                    status: None,
                }
            });
        }
        self.inner.send(sms)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}
