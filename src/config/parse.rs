//! Text to typed values, shared by every source so that `mqtt_port: abc` in
//! cyberwave.yml and `CYBERWAVE_MQTT_PORT=abc` in the environment fail with
//! the same words.

use std::time::Duration;

pub fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err("a port must be between 1 and 65535".into()),
        Err(_) => Err("not a number; a port is a whole number between 1 and 65535".into()),
    }
}

/// The smallest `mqtt_max_packet_bytes`: a cut event (request_id up to
/// 1 KiB, the names of what was cut) must still fit.
pub const MIN_PACKET_BYTES: usize = 16 * 1024;
/// MQTT's own maximum (the largest "remaining length" plus its header).
pub const MAX_PACKET_BYTES: usize = 268_435_460;

/// A packet size in bytes, between [`MIN_PACKET_BYTES`] and MQTT's maximum.
pub fn packet_bytes(text: &str) -> Result<usize, String> {
    let range = format!(
        "a whole number of bytes from {MIN_PACKET_BYTES} to {MAX_PACKET_BYTES} (MQTT's maximum)"
    );
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be {range}")),
        Err(_) => Err(format!("not a number; expected {range}")),
    }
}

pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false (also accepted: 1/0, yes/no, on/off)".into()),
    }
}

/// A positive number of seconds; 0 would mean "heartbeat all the time".
pub fn interval(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) if n > 86_400 => Err("must be at most 86400 seconds (one day)".into()),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err("not a whole number of seconds".into()),
    }
}

/// Seconds between metrics samples; 0 turns them off.
pub fn metrics_interval(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 86_400 => Err("must be at most 86400 seconds (0 turns metrics off)".into()),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err("not a whole number of seconds (0 turns metrics off)".into()),
    }
}

/// A whole number of days, at least 1, as a duration.
pub fn days(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 day".into()),
        Ok(n) if n > 3650 => Err("must be at most 3650 days".into()),
        Ok(n) => Ok(Duration::from_secs(n * 86_400)),
        Err(_) => Err("not a whole number of days".into()),
    }
}

/// The most one MQTT message can carry (the protocol's 256 MiB - 1): no
/// result bigger than that could ever be delivered.
pub const MAX_MQTT_PAYLOAD: u64 = 268_435_455;

/// A number of bytes, at least 1, at most [`MAX_MQTT_PAYLOAD`].
pub fn result_bytes(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 byte".into()),
        Ok(n) if n > MAX_MQTT_PAYLOAD => Err(format!(
            "must be at most {MAX_MQTT_PAYLOAD} bytes, the most one MQTT message can carry"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number of bytes".into()),
    }
}

pub fn positive_count(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number".into()),
    }
}

pub fn nonempty(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(trimmed.to_owned())
    }
}

/// Text as given (templates and scripts keep their inner whitespace).
/// A `:`-separated list of paths (as `PATH`), empty parts dropped.
pub fn path_list(text: &str) -> Result<Vec<std::path::PathBuf>, String> {
    let paths: Vec<std::path::PathBuf> = text
        .split(':')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .collect();
    if paths.is_empty() {
        return Err("expected one or more directories separated by ':'".into());
    }
    Ok(paths)
}

pub fn verbatim(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

pub fn http_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    if (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
        && trimmed.len() > "https://".len()
    {
        Ok(trimmed.to_owned())
    } else {
        Err("expected an http:// or https:// URL, e.g. https://api.cyberwave.com".into())
    }
}

/// A name that will appear inside MQTT topics and URL paths.
pub use crate::mqtt::topics::parse_topic_segment as topic_segment;

pub fn instance_uuid(text: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.to_string())
        .map_err(|_| "not a UUID (like 7f6c2a9e-1b2d-4c3e-8f00-0123456789ab)".into())
}

/// The MQTT topic prefix: used as is, so it must not contain wildcards.
/// `production` is the name of the unprefixed environment.
pub fn topic_prefix(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.contains(['+', '#', '\0']) {
        return Err("must not contain the MQTT wildcards '+' or '#'".into());
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
        assert!(port("abc").unwrap_err().contains("not a number"));
        assert!(port("0").is_err());
        assert!(port("70000").is_err());
    }

    #[test]
    fn heartbeat_interval_zero_is_rejected() {
        assert!(interval("0").unwrap_err().contains("at least 1"));
        assert_eq!(interval("5"), Ok(Duration::from_secs(5)));
        assert!(interval("x").is_err());
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
