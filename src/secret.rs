//! [`Secret`]: a string that shows a mask instead of itself. A leaf module,
//! so that both the settings and the MQTT link can hold one without either
//! importing the other.

use std::fmt;

/// A secret that refuses to be printed: `{:?}` and `{}` show a mask, so a
/// stray `tracing::debug!(?settings)` cannot leak a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the few places that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Enough to tell two tokens apart, not enough to use one.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() >= 12 {
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("****{tail} ({} chars)", chars.len())
        } else {
            format!("**** ({} chars)", chars.len())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}
