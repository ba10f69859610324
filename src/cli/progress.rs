//! What the client shows while it waits: indicatif bars (rows, rate, ETA; then bytes) in a
//! terminal, plain lines (at most one a second, and at each change of status) otherwise.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Plain lines come at most this often (besides changes of status).
const LINE_EVERY: Duration = Duration::from_secs(1);

/// The display of one command.
pub struct Progress {
    interactive: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rows: Option<ProgressBar>,
    bytes: Option<ProgressBar>,
    last_line: Option<(Instant, String)>,
}

impl Progress {
    /// Bars when `interactive`, lines otherwise.
    pub fn new(interactive: bool) -> Self {
        Self { interactive, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message above the bars (or a line).
    pub fn line(&self, message: &str) {
        let state = self.state();
        match state.bytes.as_ref().or(state.rows.as_ref()) {
            Some(bar) if self.interactive && !bar.is_finished() => bar.println(message),
            _ => eprintln!("{message}"),
        }
    }

    /// An export's status as it runs.
    pub fn rows(&self, s: &Value) {
        let status = s["status"].as_str().unwrap_or("?").to_owned();
        let rows = s["rowsWritten"].as_u64().unwrap_or_default();
        let total = s["totalRows"].as_u64();
        let mut state = self.state();
        if self.interactive {
            let bar = state.rows.get_or_insert_with(|| {
                let style = style("{msg:9} [{bar:30.cyan/blue}] {human_pos}/{human_len} rows  {rate:>14}  ETA {eta}")
                    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", state.per_sec());
                    });
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style);
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(rows);
            bar.set_message(status);
            return;
        }
        let changed = state.last_line.as_ref().is_none_or(|(at, last)| *last != status || at.elapsed() >= LINE_EVERY);
        if !changed {
            return;
        }
        let id = s["jobId"].as_str().unwrap_or("?");
        let mut line = format!("export {id}: {status} {rows}");
        if let Some(t) = total.filter(|t| *t > 0) {
            line.push_str(&format!("/{t} rows ({}%)", rows * 100 / t));
        } else {
            line.push_str(" rows");
        }
        if let Some(rate) = s["rowsPerSecond"].as_f64() {
            line.push_str(&format!(", {rate:.0} rows/s"));
        }
        if let Some(eta) = s["etaSeconds"].as_f64() {
            line.push_str(&format!(", ETA {eta:.0}s"));
        }
        eprintln!("{line}");
        state.last_line = Some((Instant::now(), status));
    }

    /// The export ended (its final status).
    pub fn finish_rows(&self, end: &Value) {
        let state = self.state();
        if let Some(bar) = &state.rows {
            bar.set_position(end["rowsWritten"].as_u64().unwrap_or_default());
            bar.set_message(end["status"].as_str().unwrap_or("?").to_owned());
            bar.abandon();
        } else if !self.interactive {
            drop(state);
            self.rows(end);
        }
    }

    /// Download progress.
    pub fn bytes(&self, have: u64, total: Option<u64>) {
        let mut state = self.state();
        if self.interactive {
            let bar = state.bytes.get_or_insert_with(|| {
                let style =
                    style("download  [{bar:30.green/blue}] {bytes}/{total_bytes}  {bytes_per_sec:>14}  ETA {eta}");
                ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style)
            });
            bar.set_position(have);
            return;
        }
        if state.last_line.as_ref().is_none_or(|(at, _)| at.elapsed() >= LINE_EVERY) {
            match total {
                Some(t) => eprintln!("downloading: {have}/{t} bytes"),
                None => eprintln!("downloading: {have} bytes"),
            }
            state.last_line = Some((Instant::now(), "download".into()));
        }
    }

    /// The download ended.
    pub fn finish_bytes(&self) {
        if let Some(bar) = &self.state().bytes {
            bar.finish();
        }
    }

    /// Asks a yes/no question on the terminal (bars suspended); true for y/yes.
    pub async fn ask(&self, question: &str) -> bool {
        let rows = self.state().rows.clone();
        if let Some(bar) = &rows {
            bar.disable_steady_tick();
        }
        let question = question.to_owned();
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            // Below the bar, on a line of its own.
            eprint!("\n{question}");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await;
        matches!(answer, Ok(Ok(a)) if matches!(a.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
    }
}

/// A bar style from a template of ours (known valid), drawn with `=>`.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
}
