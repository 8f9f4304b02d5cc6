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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    #[error(
        "{0:?} is neither a GPU index (0, 1, ...) nor a GPU UUID (GPU-... or MIG-...); \
         expected a comma list of them, all, or none"
    )]
    GpuEntry(String),
    #[error("names GPU {0} twice")]
    GpuTwice(String),
    #[error("expected all or a whole number of GPUs from 0 to {MAX_GPUS_PER_WORKLOAD}")]
    GpusPerWorkload,
}

/// The most GPUs `gpus_per_workload` may ask for.
pub const MAX_GPUS_PER_WORKLOAD: u32 = 64;

/// The `gpus` setting: which GPUs the node may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Unset (or `all`): every GPU NVML reports.
    Detected,
    /// `none`: no GPU, whatever NVML reports.
    Off,
    /// A list: these GPUs of NVML's; where NVML reports none, the list
    /// declares them (how tests and GPU-less machines describe a node).
    Only(Vec<GpuRef>),
}

/// One entry of a `gpus` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRef {
    /// NVML's index (`nvidia-smi`'s GPU number).
    Index(u32),
    /// `GPU-...` or `MIG-...`, as `nvidia-smi -L` prints them.
    Uuid(String),
}

impl std::fmt::Display for GpuRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuRef::Index(index) => write!(f, "{index}"),
            GpuRef::Uuid(uuid) => f.write_str(uuid),
        }
    }
}

impl std::fmt::Display for GpuSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSelection::Detected => f.write_str("all"),
            GpuSelection::Off => f.write_str("none"),
            GpuSelection::Only(list) => {
                let entries: Vec<String> = list.iter().map(GpuRef::to_string).collect();
                f.write_str(&entries.join(","))
            }
        }
    }
}

/// `gpus_per_workload`: how many GPUs a workload gets unless it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpusPerWorkload {
    /// Every workload sees all the node's GPUs, none exclusively.
    All,
    /// This many, held by the workload alone (0: no GPU).
    Count(u32),
}

impl std::fmt::Display for GpusPerWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpusPerWorkload::All => f.write_str("all"),
            GpusPerWorkload::Count(n) => write!(f, "{n}"),
        }
    }
}

/// `all`, `none`, or a comma list of indexes and UUIDs, each at most once.
pub fn gpu_selection(text: &str) -> Result<GpuSelection, ValueError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("all") {
        return Ok(GpuSelection::Detected);
    }
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(GpuSelection::Off);
    }
    let mut list: Vec<GpuRef> = Vec::new();
    for entry in trimmed.split(',').map(str::trim) {
        let parsed = if let Ok(index) = entry.parse::<u32>() {
            GpuRef::Index(index)
        } else if is_gpu_uuid(entry) {
            GpuRef::Uuid(entry.to_owned())
        } else {
            return Err(ValueError::GpuEntry(entry.to_owned()));
        };
        if list.contains(&parsed) {
            return Err(ValueError::GpuTwice(entry.to_owned()));
        }
        list.push(parsed);
    }
    Ok(GpuSelection::Only(list))
}

/// `GPU-<hex and dashes>` or `MIG-<...>`, as NVML writes UUIDs.
fn is_gpu_uuid(entry: &str) -> bool {
    let rest = ["GPU-", "MIG-"]
        .iter()
        .find_map(|prefix| entry.strip_prefix(prefix));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/')
    })
}

pub fn gpus_per_workload(text: &str) -> Result<GpusPerWorkload, ValueError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("all") {
        return Ok(GpusPerWorkload::All);
    }
    match trimmed.parse::<u32>() {
        Ok(n) if n <= MAX_GPUS_PER_WORKLOAD => Ok(GpusPerWorkload::Count(n)),
        _ => Err(ValueError::GpusPerWorkload),
    }
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
    fn gpu_lists() {
        assert_eq!(gpu_selection(" all "), Ok(GpuSelection::Detected));
        assert_eq!(gpu_selection("NONE"), Ok(GpuSelection::Off));
        assert_eq!(
            gpu_selection("0, 2,GPU-8f3e-11aa,MIG-1c2d"),
            Ok(GpuSelection::Only(vec![
                GpuRef::Index(0),
                GpuRef::Index(2),
                GpuRef::Uuid("GPU-8f3e-11aa".into()),
                GpuRef::Uuid("MIG-1c2d".into()),
            ]))
        );
        let bad = gpu_selection("0,gpu1").unwrap_err().to_string();
        assert!(bad.contains("\"gpu1\" is neither"), "{bad}");
        assert!(gpu_selection("0,,1").is_err());
        assert!(gpu_selection("GPU-").is_err());
        assert!(gpu_selection("-1").is_err());
        assert_eq!(
            gpu_selection("1,0,1").unwrap_err().to_string(),
            "names GPU 1 twice"
        );
        assert_eq!(
            gpu_selection("0,2").unwrap().to_string(),
            "0,2",
            "shown as written"
        );
    }

    #[test]
    fn gpus_per_workload_is_all_or_a_count() {
        assert_eq!(gpus_per_workload("All"), Ok(GpusPerWorkload::All));
        assert_eq!(gpus_per_workload("0"), Ok(GpusPerWorkload::Count(0)));
        assert_eq!(gpus_per_workload("64"), Ok(GpusPerWorkload::Count(64)));
        let bad = gpus_per_workload("65").unwrap_err().to_string();
        assert!(bad.contains("all or a whole number"), "{bad}");
        assert!(gpus_per_workload("two").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(http_url("https://x.io/").unwrap(), "https://x.io");
        assert!(http_url("x.io").is_err());
    }
}
