//! Topic names (docs/protocol.md, "MQTT"). The prefix is concatenated as is:
//! `dev` gives `devcyberwave/...`, which is what the backend expects.
//! [`parse_topic_segment`] checks a name before it becomes part of a topic;
//! settings, the identity file and terminal sessions all use it, so it lives
//! here rather than in any of them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_owned(),
        }
    }

    fn topic(&self, id: &str, leaf: &str) -> String {
        format!("{}cyberwave/cloud-node/{id}/{leaf}", self.prefix)
    }

    /// Commands for the node addressed by uuid or by slug.
    pub fn command(&self, uuid_or_slug: &str) -> String {
        self.topic(uuid_or_slug, "command")
    }

    pub fn response(&self, uuid: &str) -> String {
        self.topic(uuid, "response")
    }

    pub fn logs(&self, uuid: &str) -> String {
        self.topic(uuid, "logs")
    }

    pub fn metrics(&self, uuid: &str) -> String {
        self.topic(uuid, "metrics")
    }

    /// Input for terminal session `session` (`+` to subscribe to all).
    pub fn terminal_in(&self, uuid: &str, session: &str) -> String {
        self.topic(uuid, &format!("terminal/{session}/in"))
    }

    pub fn terminal_out(&self, uuid: &str, session: &str) -> String {
        self.topic(uuid, &format!("terminal/{session}/out"))
    }

    /// The session id of a terminal input topic of node `uuid`.
    pub fn terminal_session<'a>(&self, uuid: &str, topic: &'a str) -> Option<&'a str> {
        let prefix = format!("{}cyberwave/cloud-node/{uuid}/terminal/", self.prefix);
        topic.strip_prefix(&prefix)?.strip_suffix("/in")
    }

    pub fn presence(&self, uuid: &str) -> String {
        self.topic(uuid, "presence")
    }
}

/// Why a name cannot be part of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicSegmentError {
    #[error("must be 1 to 128 characters")]
    Length,
    #[error("may only hold letters, digits, '-', '_' and '.', found {0:?}")]
    Character(char),
    #[error("must not be '.' or '..'")]
    Dots,
}

/// Checks a name that will appear inside MQTT topics and URL paths (slugs,
/// uuids, terminal session ids): no wildcards, no separators, nothing a
/// broker or a web server would read differently. Returns it trimmed.
pub fn parse_topic_segment(text: &str) -> Result<String, TopicSegmentError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.len() > 128 {
        return Err(TopicSegmentError::Length);
    }
    if let Some(bad) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(TopicSegmentError::Character(bad));
    }
    if trimmed == "." || trimmed == ".." {
        return Err(TopicSegmentError::Dots);
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_concatenated_as_is() {
        assert_eq!(
            Topics::new("").command("u1"),
            "cyberwave/cloud-node/u1/command"
        );
        assert_eq!(
            Topics::new("dev").response("u1"),
            "devcyberwave/cloud-node/u1/response"
        );
        assert_eq!(
            Topics::new("dev/").presence("u1"),
            "dev/cyberwave/cloud-node/u1/presence"
        );
        assert_eq!(Topics::new("").logs("u1"), "cyberwave/cloud-node/u1/logs");
        let t = Topics::new("dev");
        assert_eq!(
            t.terminal_session("u1", &t.terminal_in("u1", "s-9")),
            Some("s-9")
        );
        assert_eq!(
            t.terminal_session("u1", "devcyberwave/cloud-node/u1/command"),
            None
        );
    }

    #[test]
    fn topic_segments_refuse_wildcards_and_separators() {
        assert_eq!(parse_topic_segment("gpu-1").unwrap(), "gpu-1");
        assert!(parse_topic_segment("a/b").is_err());
        assert!(parse_topic_segment("a+").is_err());
        assert!(parse_topic_segment("#").is_err());
        assert!(parse_topic_segment("..").is_err());
        assert!(parse_topic_segment("").is_err());
    }
}
