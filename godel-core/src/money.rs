//! Money: amounts in micros (millionths of a currency unit), how they are
//! written for people, and how config files' decimal units become micros.
//!
//! It sits at the bottom of the crate: events carry spend, the store adds it
//! up, and the engine compares it with budgets, all in these terms.

/// Money in millionths of a currency unit (micro-dollars with a USD price
/// table): exact to add, wide enough for any budget.
pub type Micros = u64;

/// Money in currency units with at least two decimals: `20.00`, `0.001234`.
pub fn format_micros(micros: Micros) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    format!("{}.{fraction:0<2}", micros / 1_000_000)
}

/// Currency units (as written in a config file) to micros, exactly: `None`
/// for negative, non-finite or too large values and for values finer than a micro.
pub fn micros_from_units(units: f64) -> Option<Micros> {
    if !units.is_finite() || !(0.0..=1e12).contains(&units) {
        return None;
    }
    let scaled = units * 1e6;
    let rounded = scaled.round();
    // Decimal fractions such as 0.15 are not exact in binary; allow that error, not a finer value.
    ((scaled - rounded).abs() <= 1e-6 * rounded.max(1.0)).then_some(rounded as Micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_exactly() {
        assert_eq!(micros_from_units(20.0), Some(20_000_000));
        assert_eq!(micros_from_units(0.15), Some(150_000));
        assert_eq!(micros_from_units(2.5), Some(2_500_000));
        assert_eq!(micros_from_units(0.000_001), Some(1));
        assert_eq!(micros_from_units(0.000_000_5), None);
        assert_eq!(micros_from_units(-1.0), None);
        assert_eq!(micros_from_units(f64::NAN), None);
        assert_eq!(format_micros(20_000_000), "20.00");
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(500_000), "0.50");
        assert_eq!(format_micros(7), "0.000007");
    }
}
