//! Measured numbers as they go on the wire and into logs: rounded where they
//! are made, so no one reads `455.68897499999997`.

/// A duration in milliseconds, to 0.1 ms, or to 3 significant digits below
/// 10 ms (a fast model's `run_ms` of 0.0312 stays non-zero).
pub fn millis(ms: f64) -> f64 {
    if !ms.is_finite() || ms == 0.0 {
        return ms;
    }
    let magnitude = ms.abs().log10().floor() as i32;
    decimals(ms, (2 - magnitude).clamp(1, 9))
}

/// `x` rounded to `places` decimal places.
pub fn decimals(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_three_digits_and_at_most_a_tenth() {
        assert_eq!(millis(455.68897499999997), 455.7);
        assert_eq!(millis(12.345), 12.3);
        assert_eq!(millis(3.4567), 3.46);
        assert_eq!(millis(0.031249), 0.0312);
        assert_eq!(millis(0.0), 0.0);
        assert_eq!(millis(2500.04), 2500.0);
        assert_eq!(
            serde_json::json!(millis(0.30000000000000004)).to_string(),
            "0.3"
        );
        assert_eq!(decimals(0.013345000000000001, 3), 0.013);
    }
}
