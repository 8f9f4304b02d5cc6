//! ssh's escapes on the typed bytes: `~` at the start of a line (after
//! Enter, or as the first key) begins an escape; `~.` ends the session,
//! `~?` lists the escapes, `~~` sends one `~`. Any other key after `~`
//! sends both, so a `~` that starts a path still reaches the shell.

/// Escapes as ssh lists them for `~?`.
pub const HELP: &str = "Supported escape sequences:\r\n ~.  - end the session\r\n ~?  - this message\r\n ~~  - send the escape character by typing it twice\r\n(Note that escapes are only recognized immediately after newline.)\r\n";

/// Where the typed bytes stand.
#[derive(Debug)]
pub struct Escapes {
    enabled: bool,
    line_start: bool,
    /// A `~` at the start of a line was typed; the next key decides.
    tilde: bool,
}

/// What a read of typed bytes comes to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Typed {
    /// Bytes for the remote shell.
    pub bytes: Vec<u8>,
    /// `~.`: the session ends (the bytes before it still go).
    pub disconnect: bool,
    /// `~?`: show [`HELP`].
    pub help: bool,
}

impl Escapes {
    /// `enabled` is false when stdin is not a terminal: piped bytes pass
    /// untouched, as with ssh.
    pub fn new(enabled: bool) -> Escapes {
        Escapes {
            enabled,
            line_start: true,
            tilde: false,
        }
    }

    pub fn feed(&mut self, input: &[u8]) -> Typed {
        let mut typed = Typed::default();
        for &byte in input {
            if !self.enabled {
                typed.bytes.push(byte);
                continue;
            }
            if self.tilde {
                self.tilde = false;
                match byte {
                    b'.' => {
                        typed.disconnect = true;
                        return typed;
                    }
                    b'?' => {
                        typed.help = true;
                        continue;
                    }
                    b'~' => {
                        typed.bytes.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => typed.bytes.push(b'~'),
                }
            } else if self.line_start && byte == b'~' {
                self.tilde = true;
                continue;
            }
            typed.bytes.push(byte);
            self.line_start = byte == b'\r' || byte == b'\n';
        }
        typed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(escapes: &mut Escapes, parts: &[&[u8]]) -> Typed {
        let mut all = Typed::default();
        for part in parts {
            let typed = escapes.feed(part);
            all.bytes.extend(typed.bytes);
            all.help |= typed.help;
            if typed.disconnect {
                all.disconnect = true;
                break;
            }
        }
        all
    }

    #[test]
    fn tilde_dot_at_line_start_disconnects() {
        let typed = feed_all(&mut Escapes::new(true), &[b"ls\r~", b".rest"]);
        assert_eq!(typed.bytes, b"ls\r");
        assert!(typed.disconnect);
        assert!(Escapes::new(true).feed(b"~.").disconnect, "first key");
    }

    #[test]
    fn tilde_elsewhere_passes() {
        let typed = Escapes::new(true).feed(b"cd ~/x\r~~\r~/y\r");
        assert_eq!(typed.bytes, b"cd ~/x\r~\r~/y\r");
        assert!(!typed.disconnect);
        let typed = Escapes::new(true).feed(b"echo a~.\r");
        assert_eq!(typed.bytes, b"echo a~.\r");
    }

    #[test]
    fn help_and_pipes() {
        let typed = Escapes::new(true).feed(b"~?ls");
        assert!(typed.help);
        assert_eq!(typed.bytes, b"ls");
        let typed = Escapes::new(false).feed(b"~.\n~.");
        assert_eq!(typed.bytes, b"~.\n~.");
        assert!(!typed.disconnect);
    }
}
