//! Progress of the CLI's runs on stderr, with `indicatif` (never on stdout: the tables go there).
//!
//! On a terminal it is one live bar over the runs (policy × rate, or seed × policy), with the
//! last finished run beside it. Off a terminal (a pipe, a file, a CI log) indicatif hides the bar,
//! so no carriage returns or escape codes land in the log; then each finished run is one plain
//! line instead (runs take seconds each, so a log gets a few dozen lines). The wall clock is
//! indicatif's: the simulation itself never reads one (`clippy.toml`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` runs.
#[derive(Debug)]
pub struct Runs {
    bar: ProgressBar,
}

impl Runs {
    /// A bar for `total` runs on stderr, drawn only when stderr is a terminal.
    pub fn new(total: usize) -> Runs {
        Runs::with_target(total, ProgressDrawTarget::stderr())
    }

    /// As [`Runs::new`], drawing to `target` (tests pass a hidden one).
    pub fn with_target(total: usize, target: ProgressDrawTarget) -> Runs {
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        let style = ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} runs, eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Runs { bar }
    }

    /// A spinner for work that reports no steps (`validate`, `ladder`): `msg` and the elapsed time.
    pub fn spinner(msg: &str) -> Runs {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Runs { bar }
    }

    /// Whether the live bar is hidden (stderr is not a terminal): plain lines are printed then.
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Run number `done` finished; `msg` describes it (beside the bar, or in the plain line).
    /// Callable from the runner's threads.
    pub fn finished(&self, done: usize, msg: &str) {
        self.bar.set_position(done as u64);
        self.bar.set_message(msg.to_string());
        if let Some(line) = self.plain_line(done, msg) {
            eprintln!("{line}");
        }
    }

    /// The plain line for a finished run when the bar is hidden.
    fn plain_line(&self, done: usize, msg: &str) -> Option<String> {
        if !self.is_hidden() {
            return None;
        }
        Some(format!(
            "{done}/{} {:>7.1}s  {msg}",
            self.bar.length().unwrap_or(0),
            self.bar.elapsed().as_secs_f64()
        ))
    }

    /// Removes the bar from the terminal (the tables follow on stdout).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_every_finished_run_is_a_plain_line() {
        let p = Runs::with_target(4, ProgressDrawTarget::hidden());
        assert!(p.is_hidden());
        let line = p.plain_line(1, "round-robin @ 3 QPS").expect("hidden: plain lines");
        assert!(
            line.starts_with("1/4 ") && line.ends_with("round-robin @ 3 QPS"),
            "{line}"
        );
        p.finished(4, "last");
        assert_eq!(p.bar.position(), 4);
        p.finish();
    }
}
