//! A progress spinner on stderr, shown only when stderr is a terminal.
//!
//! The CLI's client commands run on a current-thread runtime, so after
//! `abort()` the spinner task can never write again; that is what makes
//! clearing the line right after it safe.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const FRAME_INTERVAL: Duration = Duration::from_millis(80);
/// Operations faster than this show no spinner at all.
const SHOW_AFTER: Duration = Duration::from_millis(150);

/// A running spinner; cleared when finished or dropped.
pub struct Spinner {
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Starts a spinner with `message`, unless `quiet` or stderr is not a
    /// terminal, in which case this does nothing.
    pub fn start(message: &str, quiet: bool) -> Spinner {
        if quiet || !std::io::stderr().is_terminal() {
            return Spinner { task: None };
        }
        let message = message.to_owned();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            tokio::time::sleep(SHOW_AFTER).await;
            let mut ticker = tokio::time::interval(FRAME_INTERVAL);
            for frame in FRAMES.iter().cycle() {
                ticker.tick().await;
                let secs = started.elapsed().as_secs_f64();
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "\r\x1b[2K{frame} {message} {secs:.1}s");
                let _ = stderr.flush();
            }
        });
        Spinner { task: Some(task) }
    }

    /// Stops the spinner and clears its line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}
