//! Reconnect backoff for a network service (MySQL, Redis). After a connection-level failure the
//! service is treated as down and requests fail at once with "unavailable" instead of each one
//! waiting for a connect timeout on a worker; after the backoff delay one request is let through
//! to try again, and its success closes the breaker. Delays double from 100 ms up to 5 s (MySQL)
//! or 1 s (Redis: a probe costs nothing, and the cluster's live pushes wait for presence).

use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

pub struct Backoff {
    service: &'static str,
    max: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    pub fn new(service: &'static str) -> Backoff {
        Backoff::with_max(service, MAX_DELAY)
    }

    /// Delays capped at `max` instead of 5 s.
    pub fn with_max(service: &'static str, max: Duration) -> Backoff {
        Backoff {
            service,
            max,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Ok when a request may try the service now; otherwise the message to fail it with. The
    /// caller that is let through after the delay moves `retry_at` on, so only one probes.
    pub fn check(&self) -> Result<(), String> {
        let mut s = self.state();
        match s.retry_at {
            Some(at) if Instant::now() < at => Err(format!(
                "{} is unreachable; reconnecting (next try in {} ms)",
                self.service,
                at.saturating_duration_since(Instant::now()).as_millis()
            )),
            Some(_) => {
                // Half-open: this caller probes; the others keep failing fast meanwhile.
                s.retry_at = Some(Instant::now() + delay_max(s.failures, self.max));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a connection-level failure.
    pub fn failed(&self, why: &str) {
        let mut s = self.state();
        if s.failures == 0 {
            log::warn!("{} connection lost: {why}", self.service);
        }
        s.failures = s.failures.saturating_add(1);
        s.retry_at = Some(Instant::now() + delay_max(s.failures, self.max));
    }

    /// Records a success: the service is up.
    pub fn succeeded(&self) {
        let mut s = self.state();
        if s.failures > 0 {
            log::info!(
                "{} is reachable again after {} failed attempts",
                self.service,
                s.failures
            );
        }
        s.failures = 0;
        s.retry_at = None;
    }

    pub fn is_down(&self) -> bool {
        self.state().failures > 0
    }
}

fn delay_max(failures: u32, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (FIRST_DELAY * (1u32 << shift)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_fast_while_down_and_lets_one_probe_after_the_delay() {
        let b = Backoff::new("svc");
        assert!(b.check().is_ok());
        b.failed("refused");
        assert!(b.is_down());
        let e = b.check().unwrap_err();
        assert!(e.contains("svc is unreachable"), "{e}");
        std::thread::sleep(FIRST_DELAY + Duration::from_millis(20));
        assert!(b.check().is_ok(), "one probe after the delay");
        assert!(b.check().is_err(), "only one");
        b.succeeded();
        assert!(!b.is_down());
        assert!(b.check().is_ok());
    }

    #[test]
    fn delays_double_and_are_capped() {
        let delay = |n| delay_max(n, MAX_DELAY);
        assert_eq!(delay(1), FIRST_DELAY);
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(4), FIRST_DELAY * 8);
        assert_eq!(delay(30), MAX_DELAY);
        assert_eq!(
            delay_max(30, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(delay_max(2, Duration::from_secs(1)), FIRST_DELAY * 2);
    }
}
