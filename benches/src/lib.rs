//! Report helpers shared by the benchmark binaries (`store-bench`,
//! `engine-bench`, `api-load`): percentiles, number formatting and fresh names.

use std::time::Duration;

/// The nearest-rank percentile (`p` from 0 to 1) of sorted `samples`; zero if there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// A short duration for a table: `41.3 µs` below a millisecond, `6.83 ms` above.
pub fn short(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// A rate rounded to a whole number with thousands separators, e.g. `1,234,567`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A random number, for names (schemas, key prefixes) that no other run uses.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
