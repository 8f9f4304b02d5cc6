//! The local terminal: raw mode, put back on every way out, and the window
//! size. The settings to restore live in a static as well as in the guard,
//! so a panic hook can restore them too (release builds abort on panic:
//! no Drop runs then). SIGTERM, SIGHUP and SIGINT end the session loop,
//! which drops the guard.

use std::sync::{Mutex, Once};

use nix::sys::termios::{self, SetArg, Termios};

/// The terminal's settings before raw mode; `None` once restored.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Raw mode on stdin while alive.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Every key now reaches the program as typed: no echo, no line
    /// editing, no signals from Ctrl-C or Ctrl-Z, no CR/LF translation.
    pub fn enter() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        *saved() = Some(original.into());
        restore_on_panic();
        termios::tcsetattr(&stdin, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

fn saved() -> std::sync::MutexGuard<'static, Option<libc::termios>> {
    SAVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts the terminal back as it was; a no-op when not in raw mode.
pub fn restore() {
    let Some(original) = saved().take() else {
        return;
    };
    if let Err(error) = termios::tcsetattr(
        std::io::stdin(),
        SetArg::TCSADRAIN,
        &Termios::from(original),
    ) {
        eprintln!("cannot restore the terminal's settings ({error}); type `stty sane` to fix it");
    }
}

fn restore_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The window's `(cols, rows)` from stdout, else stdin, else 80x24; within
/// the 1 to 1000 the node accepts.
pub fn window_size() -> (u16, u16) {
    use terminal_size::{terminal_size_of, Height, Width};
    terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size_of(std::io::stdin()))
        .map(|(Width(cols), Height(rows))| (cols.clamp(1, 1000), rows.clamp(1, 1000)))
        .unwrap_or((80, 24))
}
