//! A Redis store's options, parsed from its URL.

use std::time::Duration;

use crate::InvalidInput;

/// Default key namespace.
pub const DEFAULT_PREFIX: &str = "godel";
/// Default number of pooled connections (each one multiplexed).
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default time limit for getting a connection and for one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of a Redis store, parsed from its URL.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RedisOptions {
    /// The URL handed to the Redis client, without Godel's own query parameters.
    pub url: String,
    /// The key namespace: keys are `<prefix>:<tenant>:…`.
    pub prefix: String,
    /// Pooled connections.
    pub pool_size: usize,
    /// Time limit for getting a connection and for each call.
    pub timeout: Duration,
}

impl RedisOptions {
    /// Parses `redis://[user:password@]host[:port][/db][?prefix=…&pool_size=…&timeout=…]`.
    /// Godel's parameters are removed from the URL; any other parameter is an error.
    pub fn parse(url: &str) -> Result<Self, InvalidInput> {
        let (scheme, _) = url
            .split_once("://")
            .ok_or_else(|| InvalidInput::new("store url", format!("expected redis://host:port, got {url:?}")))?;
        match scheme {
            // rediss:// is TLS (rustls), the server checked against the system's roots.
            "redis" | "rediss" => {}
            other => return Err(InvalidInput::new("store url", format!("expected redis://, got {other}://"))),
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut options = RedisOptions {
            url: base.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "prefix" => {
                    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
                    if value.is_empty() || value.len() > 64 || !value.chars().all(ok) {
                        return Err(InvalidInput::new(
                            "prefix",
                            format!("expected 1 to 64 characters from A-Z a-z 0-9 _ - . :, got {value:?}"),
                        ));
                    }
                    options.prefix = value.to_owned();
                }
                "pool_size" => {
                    options.pool_size = value.parse().ok().filter(|n| (1..=1_024).contains(n)).ok_or_else(|| {
                        InvalidInput::new("pool_size", format!("expected a number from 1 to 1024, got {value:?}"))
                    })?;
                }
                "timeout" => {
                    options.timeout = parse_duration(value).filter(|d| !d.is_zero()).ok_or_else(|| {
                        InvalidInput::new(
                            "timeout",
                            format!("expected a positive duration like 5s or 500ms, got {value:?}"),
                        )
                    })?;
                }
                other => {
                    return Err(InvalidInput::new(
                        "store url",
                        format!("unknown redis option {other:?} (expected prefix, pool_size or timeout)"),
                    ));
                }
            }
        }
        Ok(options)
    }

    /// The URL without credentials, for error messages.
    pub(super) fn location(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

/// `250ms`, `5s` or `2m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    match &s[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}
