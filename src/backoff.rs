//! Capped exponential backoff, shared by every retry loop in the node.

use std::time::Duration;

/// `base`, `2·base`, `4·base`, … never more than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// The time unit every backoff is expressed in: one second in production.
///
/// `CYBERWAVE_RETRY_BASE_MS` shrinks it so integration tests can exercise
/// "five rejected heartbeats then exit" in well under a minute; operators have
/// no reason to touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryUnit(pub Duration);

impl Default for RetryUnit {
    fn default() -> Self {
        RetryUnit(Duration::from_secs(1))
    }
}

impl RetryUnit {
    pub fn from_env(value: Option<&str>) -> RetryUnit {
        value
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| RetryUnit(Duration::from_millis(ms)))
            .unwrap_or_default()
    }

    /// Registration and rejected heartbeats: 1 s doubling to 60 s.
    pub fn backend(self) -> Backoff {
        Backoff {
            base: self.0,
            cap: self.0 * 60,
        }
    }

    /// Broker reconnects: 0.5 s doubling to 30 s, so a restarted broker on
    /// the same host is back in well under a second.
    pub fn broker(self) -> Backoff {
        Backoff {
            base: self.0 / 2,
            cap: self.0 * 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = RetryUnit::default().backend();
        let secs: Vec<u64> = (1..=8).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(1000), Duration::from_secs(60));
    }

    #[test]
    fn unit_from_env() {
        assert_eq!(RetryUnit::from_env(Some("50")).0, Duration::from_millis(50));
        assert_eq!(RetryUnit::from_env(Some("x")), RetryUnit::default());
        assert_eq!(RetryUnit::from_env(Some("0")), RetryUnit::default());
    }
}
