//! Rate limits (governor): requests per credential, and failed
//! authentications per source address. A source that used up its failures is
//! refused outright until its window frees up, so that guessing keys costs
//! the guesser time and the store nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::AuthConfig;
use crate::error::RateLimit;

/// The server's two limiters.
#[derive(Debug)]
pub(crate) struct Limits {
    per_credential: DefaultKeyedRateLimiter<String>,
    credential_limit: u64,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    failure_limit: u64,
    /// Sources that ran out of failures, and until when they are refused.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Limits {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        let per_second = NonZeroU32::new(config.per_credential).unwrap_or(NonZeroU32::MIN);
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("two is not zero"));
        let failures = NonZeroU32::new(config.failed_per_source).unwrap_or(NonZeroU32::MIN);
        Self {
            per_credential: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            credential_limit: u64::from(per_second.get()),
            failures: RateLimiter::keyed(Quota::per_minute(failures)),
            failure_limit: u64::from(failures.get()),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request made with `credential`; `Err` when it is over its rate.
    pub(crate) fn request(&self, credential: &str) -> Result<(), RateLimit> {
        // A borrowed key would need an owned one on first sight anyway.
        match self.per_credential.check_key(&credential.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(RateLimit { limit: self.credential_limit, reset_secs: whole_seconds(wait) })
            }
        }
    }

    /// `Err` while `source` is refused for having failed too often.
    pub(crate) fn check_source(&self, source: IpAddr) -> Result<(), RateLimit> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(&source) {
            Some(until) if *until > Instant::now() => Err(RateLimit {
                limit: self.failure_limit,
                reset_secs: whole_seconds(until.saturating_duration_since(Instant::now())),
            }),
            Some(_) => {
                blocked.remove(&source);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `source`; `Err` when that used up
    /// its allowance (this request and the next ones are then refused).
    pub(crate) fn failed(&self, source: IpAddr) -> Result<(), RateLimit> {
        match self.failures.check_key(&source) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
                blocked.insert(source, Instant::now() + wait);
                Err(RateLimit { limit: self.failure_limit, reset_secs: whole_seconds(wait) })
            }
        }
    }

    /// Forgets keys whose state is back to full, so that the maps stay small.
    pub(crate) fn prune(&self) {
        self.per_credential.retain_recent();
        self.failures.retain_recent();
        let now = Instant::now();
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, until| *until > now);
    }
}

/// Rounds up: `Retry-After: 0` would invite an immediate retry.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_a_source_and_credentials_have_a_burst() {
        let config = AuthConfig { per_credential: 2, failed_per_source: 3, ..AuthConfig::default() };
        let limits = Limits::new(&config);
        let source: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..3 {
            assert!(limits.failed(source).is_ok());
            assert!(limits.check_source(source).is_ok());
        }
        let limit = limits.failed(source).unwrap_err();
        assert_eq!(limit.limit, 3);
        assert!(limit.reset_secs >= 1);
        assert!(limits.check_source(source).is_err());
        assert!(limits.check_source([192, 0, 2, 2].into()).is_ok());

        for _ in 0..4 {
            assert!(limits.request("k").is_ok());
        }
        assert_eq!(limits.request("k").unwrap_err().limit, 2);
        assert!(limits.request("other").is_ok());
    }
}
