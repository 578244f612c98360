//! Progress of long runs (the demo, bench-e2e) on stderr, with `indicatif`.
//!
//! On a terminal it is one live bar. Off a terminal (a pipe, a file, a CI log) indicatif hides
//! the bar entirely, so that no carriage returns or escape codes land in the log; then a plain
//! line is printed every [`LOG_EVERY`] instead, so that a log still shows that the run is alive
//! and how far it got.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One run's progress: requests finished out of an expected total.
pub struct Progress {
    bar: ProgressBar,
    name: String,
    started: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    /// A bar for `total` requests; the bar is drawn only when stderr is a terminal.
    pub fn new(name: &str, total: u64) -> Progress {
        Progress::with_target(name, total, ProgressDrawTarget::stderr())
    }

    /// As [`Progress::new`], drawing to `target` (tests pass a hidden one).
    pub fn with_target(name: &str, total: u64, target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style =
            ProgressStyle::with_template("  {prefix:<12} [{elapsed_precise}] {wide_bar} {pos:>6}/{len:6} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(name.to_string());
        Progress {
            bar,
            name: name.to_string(),
            started: Instant::now(),
            last_line: None,
        }
    }

    /// Whether the live bar is hidden (stderr is not a terminal): plain lines are printed then.
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// `done` requests finished; `msg` is shown beside the bar (and in the plain line).
    pub fn update(&mut self, done: u64, msg: &str) {
        self.bar.set_position(done);
        self.bar.set_message(msg.to_string());
        if let Some(line) = self.plain_line(done, msg, false) {
            eprintln!("{line}");
        }
    }

    /// The plain line to print now, if stderr is not a terminal and one is due (`force`: always).
    fn plain_line(&mut self, done: u64, msg: &str, force: bool) -> Option<String> {
        if !self.is_hidden() {
            return None;
        }
        let now = Instant::now();
        let due = match self.last_line {
            None => true,
            Some(t) => now.duration_since(t) >= LOG_EVERY,
        };
        if !(due || force) {
            return None;
        }
        self.last_line = Some(now);
        let total = self.bar.length().unwrap_or(0);
        Some(format!(
            "  {:<12} {:>5.0} s  {done:>6}/{total}  {msg}",
            self.name,
            self.started.elapsed().as_secs_f64()
        ))
    }

    /// Ends the bar, leaving its last state on screen (or printing a last plain line).
    pub fn finish(mut self, done: u64, msg: &str) {
        self.bar.set_position(done);
        self.bar.set_message(msg.to_string());
        if let Some(line) = self.plain_line(done, msg, true) {
            eprintln!("{line}");
        }
        self.bar.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_the_bar_is_hidden_and_plain_lines_are_rate_limited() {
        let mut p = Progress::with_target("arm", 100, ProgressDrawTarget::hidden());
        assert!(p.is_hidden());
        let first = p.plain_line(1, "m", false).expect("the first update prints a line");
        assert!(first.contains("arm") && first.contains("1/100"), "{first}");
        assert_eq!(p.plain_line(2, "m", false), None, "the next one waits {LOG_EVERY:?}");
        assert!(p.plain_line(3, "done", true).is_some(), "finish always prints");
    }
}
