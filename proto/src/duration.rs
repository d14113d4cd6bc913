//! The duration syntax of every Outpost config file and flag: `"500ms"`, `"10s"`, `"5m"`,
//! `"2h"`, `"90d"`, or combinations such as `"1h30m"` (humantime's grammar).

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"10s\", \"5m\", \"90d\")")]
pub struct DurationError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

/// Parses a duration such as `"10s"` or `"90d"`. Zero is refused: no Outpost setting means
/// "never" or "always" by zero.
///
/// # Errors
/// [`DurationError`] naming the input when it does not parse or is zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(input.trim()).map_err(|e| DurationError {
        input: input.to_string(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(DurationError {
            input: input.to_string(),
            reason: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

/// Formats a duration in the same syntax (`"1h 30m"`).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration(" 5m ").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn refuses_zero_and_garbage_naming_the_input() {
        let e = parse_duration("0s").unwrap_err();
        assert!(e.to_string().contains("\"0s\""), "{e}");
        let e = parse_duration("ten seconds").unwrap_err();
        assert!(e.to_string().contains("ten seconds"), "{e}");
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn format_round_trips() {
        let d = Duration::from_secs(5400);
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
}
