//! Text to typed values, shared by every source so that `mqtt_port: abc` in
//! cyberwave.yml and `CYBERWAVE_MQTT_PORT=abc` in the environment fail with
//! the same words.

use std::path::PathBuf;
use std::time::Duration;

use crate::mqtt::topics::TopicSegmentError;

/// The smallest `mqtt_max_packet_bytes`: a cut event (request_id up to
/// 1 KiB, the names of what was cut) must still fit.
pub const MIN_PACKET_BYTES: usize = 16 * 1024;
/// MQTT's own maximum (the largest "remaining length" plus its header).
pub const MAX_PACKET_BYTES: usize = 268_435_460;

/// The most one MQTT message can carry (the protocol's 256 MiB - 1): no
/// result bigger than that could ever be delivered.
pub const MAX_MQTT_PAYLOAD: u64 = 268_435_455;

/// What is wrong with a setting's text; [`super::ConfigError::Invalid`] names
/// the setting, the text and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a port must be between 1 and 65535")]
    PortRange,
    #[error("not a number; a port is a whole number between 1 and 65535")]
    PortNotNumber,
    #[error("must be {}", packet_range())]
    PacketRange,
    #[error("not a number; expected {}", packet_range())]
    PacketNotNumber,
    #[error("expected true or false (also accepted: 1/0, yes/no, on/off)")]
    NotBoolean,
    #[error("must be at least 1 second")]
    IntervalZero,
    #[error("must be at most 86400 seconds (one day)")]
    IntervalTooLong,
    #[error("not a whole number of seconds")]
    NotSeconds,
    #[error("must be at most 86400 seconds (0 turns metrics off)")]
    MetricsTooLong,
    #[error("not a whole number of seconds (0 turns metrics off)")]
    MetricsNotSeconds,
    #[error("must be at least 1 day")]
    DaysZero,
    #[error("must be at most 3650 days")]
    DaysTooMany,
    #[error("not a whole number of days")]
    NotDays,
    #[error("must be at least 1 byte")]
    BytesZero,
    #[error("must be at most {MAX_MQTT_PAYLOAD} bytes, the most one MQTT message can carry")]
    BytesTooMany,
    #[error("not a whole number of bytes")]
    NotBytes,
    #[error("must be at least 1")]
    CountZero,
    #[error("not a whole number")]
    NotWholeNumber,
    #[error(
        "must be at most {MAX_QUEUE_LENGTH} (0 refuses workloads beyond max_concurrent_workloads)"
    )]
    QueueTooLong,
    #[error("not a whole number (0 refuses workloads beyond max_concurrent_workloads)")]
    QueueNotNumber,
    #[error("must not be empty")]
    Empty,
    #[error("expected one or more directories separated by ':'")]
    NoDirectories,
    #[error("expected an http:// or https:// URL, e.g. https://api.cyberwave.com")]
    NotHttpUrl,
    #[error(transparent)]
    TopicSegment(#[from] TopicSegmentError),
    #[error("not a UUID (like 7f6c2a9e-1b2d-4c3e-8f00-0123456789ab)")]
    NotUuid,
    #[error("must not contain the MQTT wildcards '+' or '#'")]
    PrefixWildcard,
}

/// What `mqtt_max_packet_bytes` may be, for its errors.
fn packet_range() -> String {
    format!(
        "a whole number of bytes from {MIN_PACKET_BYTES} to {MAX_PACKET_BYTES} (MQTT's maximum)"
    )
}

pub fn port(text: &str) -> Result<u16, ValueError> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(ValueError::PortRange),
        Err(_) => Err(ValueError::PortNotNumber),
    }
}

/// A packet size in bytes, between [`MIN_PACKET_BYTES`] and MQTT's maximum.
pub fn packet_bytes(text: &str) -> Result<usize, ValueError> {
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&n) => Ok(n),
        Ok(_) => Err(ValueError::PacketRange),
        Err(_) => Err(ValueError::PacketNotNumber),
    }
}

pub fn boolean(text: &str) -> Result<bool, ValueError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ValueError::NotBoolean),
    }
}

/// A positive number of seconds; 0 would mean "heartbeat all the time".
pub fn interval(text: &str) -> Result<Duration, ValueError> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(ValueError::IntervalZero),
        Ok(n) if n > 86_400 => Err(ValueError::IntervalTooLong),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err(ValueError::NotSeconds),
    }
}

/// Seconds between metrics samples; 0 turns them off.
pub fn metrics_interval(text: &str) -> Result<Duration, ValueError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 86_400 => Err(ValueError::MetricsTooLong),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err(ValueError::MetricsNotSeconds),
    }
}

/// A whole number of days, at least 1, as a duration.
pub fn days(text: &str) -> Result<Duration, ValueError> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(ValueError::DaysZero),
        Ok(n) if n > 3650 => Err(ValueError::DaysTooMany),
        Ok(n) => Ok(Duration::from_secs(n * 86_400)),
        Err(_) => Err(ValueError::NotDays),
    }
}

/// A number of bytes, at least 1, at most [`MAX_MQTT_PAYLOAD`].
pub fn result_bytes(text: &str) -> Result<u64, ValueError> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(ValueError::BytesZero),
        Ok(n) if n > MAX_MQTT_PAYLOAD => Err(ValueError::BytesTooMany),
        Ok(n) => Ok(n),
        Err(_) => Err(ValueError::NotBytes),
    }
}

pub fn positive_count(text: &str) -> Result<u32, ValueError> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err(ValueError::CountZero),
        Ok(n) => Ok(n),
        Err(_) => Err(ValueError::NotWholeNumber),
    }
}

/// The longest `max_queued_workloads`: each waiting command is a file and
/// an entry in memory, and a longer wait is better sent to another node.
pub const MAX_QUEUE_LENGTH: u32 = 10_000;

/// `max_queued_workloads`: 0 (no queue) to [`MAX_QUEUE_LENGTH`].
pub fn queue_length(text: &str) -> Result<u32, ValueError> {
    match text.trim().parse::<u32>() {
        Ok(n) if n > MAX_QUEUE_LENGTH => Err(ValueError::QueueTooLong),
        Ok(n) => Ok(n),
        Err(_) => Err(ValueError::QueueNotNumber),
    }
}

pub fn nonempty(text: &str) -> Result<String, ValueError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Err(ValueError::Empty)
    } else {
        Ok(trimmed.to_owned())
    }
}

/// A `:`-separated list of paths (as `PATH`), empty parts dropped.
pub fn path_list(text: &str) -> Result<Vec<PathBuf>, ValueError> {
    let paths: Vec<PathBuf> = text
        .split(':')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        return Err(ValueError::NoDirectories);
    }
    Ok(paths)
}

/// Text as given (templates and scripts keep their inner whitespace).
pub fn verbatim(text: &str) -> Result<String, ValueError> {
    if text.trim().is_empty() {
        Err(ValueError::Empty)
    } else {
        Ok(text.to_owned())
    }
}

pub fn http_url(text: &str) -> Result<String, ValueError> {
    let trimmed = text.trim().trim_end_matches('/');
    if (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
        && trimmed.len() > "https://".len()
    {
        Ok(trimmed.to_owned())
    } else {
        Err(ValueError::NotHttpUrl)
    }
}

/// A name that will appear inside MQTT topics and URL paths.
pub fn topic_segment(text: &str) -> Result<String, ValueError> {
    Ok(crate::mqtt::topics::parse_topic_segment(text)?)
}

pub fn instance_uuid(text: &str) -> Result<String, ValueError> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.to_string())
        .map_err(|_| ValueError::NotUuid)
}

/// The MQTT topic prefix: used as is, so it must not contain wildcards.
/// `production` is the name of the unprefixed environment.
pub fn topic_prefix(text: &str) -> Result<String, ValueError> {
    let trimmed = text.trim();
    if trimmed.contains(['+', '#', '\0']) {
        return Err(ValueError::PrefixWildcard);
    }
    if trimmed == "production" {
        return Ok(String::new());
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(port("1883"), Ok(1883));
        assert_eq!(port(" 8883 "), Ok(8883));
        assert!(port("abc")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(port("0").is_err());
        assert!(port("70000").is_err());
    }

    #[test]
    fn heartbeat_interval_zero_is_rejected() {
        assert!(interval("0")
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        assert_eq!(interval("5"), Ok(Duration::from_secs(5)));
        assert!(interval("x").is_err());
    }

    #[test]
    fn queue_lengths() {
        assert_eq!(queue_length("0"), Ok(0));
        assert_eq!(queue_length(" 25 "), Ok(25));
        assert_eq!(queue_length("10001"), Err(ValueError::QueueTooLong));
        assert_eq!(queue_length("-1"), Err(ValueError::QueueNotNumber));
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean("TRUE"), Ok(true));
        assert_eq!(boolean("0"), Ok(false));
        assert!(boolean("maybe").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(topic_prefix("production").unwrap(), "");
        assert_eq!(topic_prefix("dev").unwrap(), "dev");
        assert!(topic_prefix("a/#").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(http_url("https://x.io/").unwrap(), "https://x.io");
        assert!(http_url("x.io").is_err());
    }
}
