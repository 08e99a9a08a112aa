//! Progress on a terminal: an indicatif bar when stderr is a terminal and
//! the caller wants one, nothing otherwise. The only user of indicatif.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte counter that may be drawn as a bar.
#[derive(Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `total` bytes, drawn only if `wanted` and stderr is a terminal.
    pub fn bytes(message: &'static str, total: u64, wanted: bool) -> Progress {
        if !wanted || !std::io::stderr().is_terminal() || total == 0 {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(message);
        Progress(Some(bar))
    }

    /// Adds `n` bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
