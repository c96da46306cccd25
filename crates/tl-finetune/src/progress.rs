//! The progress bar of a training run (shown on a terminal only; periodic log lines
//! otherwise come from the per-epoch `tracing` records).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` steps, starting at `done`; hidden when `show` is false or stderr
/// is not a terminal.
pub fn bar(show: bool, total: u64, done: u64) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} fine-tuning [{bar:30}] {pos}/{len} steps, ETA {eta}, {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}
