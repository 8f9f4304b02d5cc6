//! Topic names (PROTOCOL.md, "MQTT"). The prefix is concatenated as is:
//! `dev` gives `devcyberwave/...`, which is what the backend expects.

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

    pub fn presence(&self, uuid: &str) -> String {
        self.topic(uuid, "presence")
    }
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
    }
}
