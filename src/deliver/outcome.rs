//! What an attempt's answer means, decided here and nowhere else: delivered, retried, the
//! webhook gone, or refused by the receiver. docs/receivers.md lists the same table for
//! receivers' owners.

use std::time::Duration;

use super::backoff::{Backoff, Next};
use super::http::AttemptResult;
use crate::config::ClientErrors;

/// The class of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx.
    Delivered,
    /// No answer (connection, TLS, timeout, abandoned at shutdown), 408, 425, 429, 5xx, and
    /// anything else not listed here (1xx, an unfollowed 3xx): retried on the schedule.
    Retry,
    /// 410 Gone: the receiver says the endpoint is gone for good (the Standard Webhooks
    /// convention). The webhook is paused until an operator resumes it; the delivery keeps its
    /// place and is retried after the resume.
    Gone,
    /// Any other 4xx: the receiver refuses this request, and will likely refuse it again.
    /// Retried per [`ClientErrors`].
    Refused,
}

/// Classifies an attempt by its HTTP status (None: no answer).
pub fn classify(status: Option<u16>) -> Class {
    match status {
        Some(200..=299) => Class::Delivered,
        Some(410) => Class::Gone,
        Some(408 | 425 | 429) => Class::Retry,
        Some(400..=499) => Class::Refused,
        _ => Class::Retry,
    }
}

/// The retry policies a failed attempt may follow.
#[derive(Debug, Clone)]
pub struct Policies {
    /// The schedule (retry_schedule, retry_jitter, max_retry_after).
    pub schedule: Backoff,
    /// The short schedule of refused requests (client_error_schedule, same jitter).
    pub refused: Backoff,
}

impl Policies {
    /// When to try again after this attempt (None: delivered, or dead), with `unit` a uniform
    /// draw in [0, 1) and `client_errors` the webhook's choice for refused requests.
    pub fn retry_in(
        &self,
        result: &AttemptResult,
        attempt: u32,
        client_errors: ClientErrors,
        unit: f64,
    ) -> Option<Duration> {
        let backoff = match classify(result.status) {
            Class::Delivered => return None,
            Class::Retry | Class::Gone => &self.schedule,
            Class::Refused => match client_errors {
                ClientErrors::Schedule => &self.schedule,
                ClientErrors::Short => &self.refused,
            },
        };
        match backoff.next(attempt.max(1), result.retry_after, unit) {
            Next::RetryIn(wait) => Some(wait),
            Next::GiveUp => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_one_class() {
        assert_eq!(classify(Some(200)), Class::Delivered);
        assert_eq!(classify(Some(204)), Class::Delivered);
        assert_eq!(classify(None), Class::Retry);
        for status in [408, 425, 429, 500, 502, 503, 504, 599, 101, 302] {
            assert_eq!(classify(Some(status)), Class::Retry, "{status}");
        }
        assert_eq!(classify(Some(410)), Class::Gone);
        for status in [400, 401, 403, 404, 409, 413, 422, 451, 499] {
            assert_eq!(classify(Some(status)), Class::Refused, "{status}");
        }
    }
}
