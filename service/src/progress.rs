//! Progress bars on a terminal for long work (backups, restores), shared by
//! both programs. Nothing is drawn when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar redrawn from counters until dropped.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// Shows `done` bytes out of `total` (a spinner while `total` is zero),
    /// with throughput and, given a total, the ETA.
    pub fn bytes(label: &str, done: Arc<AtomicU64>, total: Option<Arc<AtomicU64>>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::new(0);
        let template = if total.is_some() {
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{prefix} {spinner} {bytes} {bytes_per_sec} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                if let Some(total) = &total {
                    shown.set_length(total.load(Ordering::Relaxed));
                }
                shown.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
