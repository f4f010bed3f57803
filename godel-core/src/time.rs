//! Wall-clock instants as plain milliseconds since the Unix epoch.
//!
//! The store never reads the clock: every time-dependent store call takes a
//! [`Timestamp`] argument, so tests move time by passing a later value. Only
//! the engine calls [`Timestamp::now`].

use std::fmt;
use std::ops::Add;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC). Millisecond precision is what every
/// backend stores exactly, so a value survives a round trip unchanged.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The last instant RFC 3339 can write, `9999-12-31T23:59:59.999Z`:
    /// the latest a task may be scheduled for.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// Reads the system clock. Only clocks in the engine should call this.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// Builds a timestamp from milliseconds since the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 time such as `2026-11-21T04:24:40Z` or
    /// `2026-11-21T05:24:40.5+01:00` (sub-millisecond digits are dropped).
    pub fn parse_rfc3339(field: &'static str, s: &str) -> Result<Self, crate::InvalidInput> {
        chrono::DateTime::parse_from_rfc3339(s).map(|t| Self(t.timestamp_millis())).map_err(|e| {
            crate::InvalidInput::new(
                field,
                format!("expected an RFC 3339 time like 2026-11-21T04:24:40Z, got {s:?} ({e})"),
            )
        })
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        let millis = i64::try_from(rhs.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with millisecond precision, e.g. `2026-11-21T04:24:40.123Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl std::str::FromStr for Timestamp {
    type Err = crate::InvalidInput;

    /// Parses RFC 3339, as [`Timestamp::parse_rfc3339`].
    fn from_str(s: &str) -> Result<Self, crate::InvalidInput> {
        Self::parse_rfc3339("time", s)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!((t + Duration::from_millis(500)).as_millis(), 1_500);
        assert_eq!(t.saturating_since(Timestamp::from_millis(1_500)), Duration::ZERO);
        assert_eq!(Timestamp::from_millis(i64::MAX) + Duration::from_secs(1), Timestamp::from_millis(i64::MAX));
    }

    #[test]
    fn displays_and_parses_rfc3339() {
        assert_eq!(Timestamp::from_millis(1_500).to_string(), "1970-01-01T00:00:01.500Z");
        assert_eq!(
            Timestamp::parse_rfc3339("at", "1970-01-01T01:00:01.5+01:00").unwrap(),
            Timestamp::from_millis(1_500)
        );
        assert_eq!(Timestamp::parse_rfc3339("run_at", "tomorrow").unwrap_err().field, "run_at");
    }
}
