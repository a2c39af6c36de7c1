//! A live progress line on standard error: redrawn in place on a terminal; elsewhere (a log
//! file, CI) a plain line now and then, so nothing fills with carriage returns.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal's line is redrawn.
const REDRAW: Duration = Duration::from_millis(100);
/// How often a plain line is written where there is no terminal.
const PLAIN: Duration = Duration::from_secs(2);

/// One progress line.
pub struct Progress {
    terminal: bool,
    shown: Option<Instant>,
}

impl Progress {
    /// A progress line on standard error, in the manner its destination suits.
    pub fn on_stderr() -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            terminal,
            // A plain line comes only once the work has run a while: a short run writes just
            // its last line.
            shown: (!terminal).then(Instant::now),
        }
    }

    /// Shows `line` if it is time to: redrawn on a terminal, a line of its own elsewhere.
    pub fn show(&mut self, line: impl std::fmt::Display) {
        let every = if self.terminal { REDRAW } else { PLAIN };
        if self.shown.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.shown = Some(Instant::now());
        self.write(line, false);
    }

    /// Shows the last `line`, whenever the one before was shown, and ends it.
    pub fn done(&mut self, line: impl std::fmt::Display) {
        self.write(line, true);
    }

    fn write(&self, line: impl std::fmt::Display, end: bool) {
        let mut err = std::io::stderr().lock();
        // A progress line that cannot be written is not worth failing the command for.
        let _ = match (self.terminal, end) {
            // Cleared to the end of the line, so a shorter line leaves nothing behind.
            (true, false) => write!(err, "\r{line}\x1b[K"),
            (true, true) => writeln!(err, "\r{line}\x1b[K"),
            (false, _) => writeln!(err, "{line}"),
        };
        let _ = err.flush();
    }
}

/// Whether standard error takes colours: a terminal, and `NO_COLOR` unset (no-color.org).
pub fn colours_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
