//! Exponential backoff with jitter, capped, and reset after a healthy period, so that neither
//! the watcher nor the pusher ever retries in a tight loop and many kube-event instances do
//! not retry in step.

use std::time::{Duration, Instant};

pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    attempt: u32,
    last_failure: Option<Instant>,
    rng: u64,
}

/// The longest `Retry-After` kube-event honours; longer hints are capped to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl Backoff {
    /// API server: 800 ms doubling to 30 s, reset after 2 minutes without failure
    /// (client-go reflector and kube-rs `DefaultBackoff`, protocols.md 1.6 and 1.7).
    pub fn apiserver() -> Self {
        Self::new(
            Duration::from_millis(800),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
    }

    /// Loki: 1 s doubling to 30 s (vector's Loki sink uses the same bounds).
    pub fn loki() -> Self {
        Self::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
    }

    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ ((std::process::id() as u64) << 32)
            ^ (&initial as *const _ as u64);
        Backoff {
            initial,
            max,
            reset_after,
            attempt: 0,
            last_failure: None,
            rng: seed | 1,
        }
    }

    /// How long to wait after a failure. `retry_after` (a server's `Retry-After`) wins when
    /// given. The delay is the capped exponential value times a random factor in [0.75, 1.25).
    pub fn failure(&mut self, retry_after: Option<Duration>) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= self.reset_after)
        {
            self.attempt = 0;
        }
        self.last_failure = Some(now);
        let base = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if let Some(hint) = retry_after {
            return hint.min(MAX_RETRY_AFTER);
        }
        let factor = 0.75 + 0.5 * self.random_unit();
        base.mul_f64(factor)
    }

    /// Forget past failures (after a success that proves the peer is healthy again).
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.last_failure = None;
    }

    /// xorshift64*: good enough to spread retries, and no dependency.
    fn random_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Parses `Retry-After` given in seconds. (The HTTP-date form is ignored: neither the API
/// server nor Loki sends it.)
pub fn parse_retry_after(v: Option<&str>) -> Option<Duration> {
    v.and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::apiserver();
        let mut nominal = 0.8f64;
        for _ in 0..10 {
            let d = b.failure(None).as_secs_f64();
            assert!(
                d >= nominal * 0.75 && d < nominal * 1.25,
                "{d} vs {nominal}"
            );
            nominal = (nominal * 2.0).min(30.0);
        }
        b.reset();
        assert!(b.failure(None) < Duration::from_secs(1));
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let mut b = Backoff::loki();
        assert_eq!(
            b.failure(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(b.failure(Some(Duration::from_secs(9999))), MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some(" 1 ")), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn resets_after_a_healthy_period() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::ZERO,
        );
        for _ in 0..5 {
            assert!(b.failure(None) < Duration::from_millis(1250));
        }
    }
}
