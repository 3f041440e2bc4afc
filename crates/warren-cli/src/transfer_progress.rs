//! Progress of image pulls and imports on stderr: redrawn bars when stderr
//! is a terminal, plain lines (pulls) or nothing (imports) otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use warren_client::{PullProgress, PullProgressKind};

/// Least time between two redraws of a bar.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);
/// Width of a bar in characters.
const BAR_WIDTH: usize = 24;

/// "512 B", "3.4 KiB", "12.0 MiB", "1.25 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value < 10.0 && unit == "GiB" {
        format!("{value:.2} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// `[#########---------------]`, `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        ((done.min(total) as f64 / total as f64) * BAR_WIDTH as f64) as usize
    };
    format!(
        "[{}{}]",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH.saturating_sub(filled))
    )
}

/// The first 12 hex digits of a digest.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.get(..12).unwrap_or(hex)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LayerState {
    Downloading { done: u64, total: Option<u64> },
    Exists,
    Unpacking { size: u64 },
}

/// What a pull has done so far, and how to show it.
#[derive(Debug)]
pub struct PullDisplay {
    interactive: bool,
    quiet: bool,
    layers: Vec<(String, LayerState)>,
    expected_layers: Option<u64>,
    lines_drawn: usize,
    last_draw: Option<Instant>,
}

impl PullDisplay {
    /// A display on stderr; `quiet` (for `--json`) shows nothing.
    pub fn new(quiet: bool) -> Self {
        Self {
            interactive: std::io::stderr().is_terminal(),
            quiet,
            layers: Vec::new(),
            expected_layers: None,
            lines_drawn: 0,
            last_draw: None,
        }
    }

    fn layer_mut(&mut self, digest: &str) -> &mut LayerState {
        let index = match self.layers.iter().position(|(d, _)| d == digest) {
            Some(index) => index,
            None => {
                self.layers.push((
                    digest.to_owned(),
                    LayerState::Downloading {
                        done: 0,
                        total: None,
                    },
                ));
                self.layers.len() - 1
            }
        };
        &mut self.layers[index].1
    }

    /// Records one progress event and shows it.
    pub fn update(&mut self, event: &PullProgress) {
        if self.quiet {
            return;
        }
        let mut line = None;
        let mut urgent = true;
        match event.kind {
            PullProgressKind::Resolved => {
                self.expected_layers = event.layers;
                line = Some(format!(
                    "resolved {} ({} layers)",
                    event.digest,
                    event.layers.unwrap_or(0)
                ));
            }
            PullProgressKind::Layer => {
                let done = event.done.unwrap_or(0);
                *self.layer_mut(&event.digest) = LayerState::Downloading {
                    done,
                    total: event.total,
                };
                if event.total == Some(done) {
                    line = Some(format!(
                        "{}: downloaded {}",
                        short_digest(&event.digest),
                        human_bytes(done)
                    ));
                } else {
                    urgent = false;
                }
            }
            PullProgressKind::LayerExists => {
                *self.layer_mut(&event.digest) = LayerState::Exists;
                line = Some(format!("{}: already stored", short_digest(&event.digest)));
            }
            PullProgressKind::Unpacking => {
                let state = self.layer_mut(&event.digest);
                let size = match state {
                    LayerState::Downloading { done, .. } => *done,
                    LayerState::Unpacking { size } => *size,
                    LayerState::Exists => 0,
                };
                *state = LayerState::Unpacking { size };
                line = Some(format!("{}: unpacking", short_digest(&event.digest)));
            }
        }
        if self.interactive {
            self.redraw(urgent);
        } else if let Some(line) = line {
            eprintln!("{line}");
        }
    }

    /// The last redraw, with every layer finished.
    pub fn finish(&mut self) {
        if self.quiet || !self.interactive {
            return;
        }
        for (_, state) in &mut self.layers {
            if let LayerState::Downloading { done, .. } = state {
                *state = LayerState::Unpacking { size: *done };
            }
        }
        self.redraw_with(true, true);
    }

    fn redraw(&mut self, urgent: bool) {
        self.redraw_with(urgent, false);
    }

    fn redraw_with(&mut self, urgent: bool, finished: bool) {
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= REDRAW_INTERVAL);
        if !urgent && !due {
            return;
        }
        self.last_draw = Some(Instant::now());
        let lines = self.render(finished);
        let mut stderr = std::io::stderr().lock();
        if self.lines_drawn > 0 {
            let _ = write!(stderr, "\x1b[{}A", self.lines_drawn);
        }
        for line in &lines {
            let _ = writeln!(stderr, "\r\x1b[2K{line}");
        }
        let _ = stderr.flush();
        self.lines_drawn = lines.len();
    }

    fn render(&self, finished: bool) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.layers.len() + 1);
        let (mut done_sum, mut total_sum) = (0u64, 0u64);
        for (digest, state) in &self.layers {
            let short = short_digest(digest);
            let text = match state {
                LayerState::Downloading { done, total } => {
                    done_sum += done;
                    total_sum += total.unwrap_or(*done);
                    match total {
                        Some(total) => format!(
                            "{short}  downloading {} {} / {}",
                            bar(*done, *total),
                            human_bytes(*done),
                            human_bytes(*total)
                        ),
                        None => format!("{short}  downloading {}", human_bytes(*done)),
                    }
                }
                LayerState::Exists => format!("{short}  already stored"),
                LayerState::Unpacking { size } => {
                    done_sum += size;
                    total_sum += size;
                    if finished {
                        format!("{short}  done ({})", human_bytes(*size))
                    } else {
                        format!("{short}  unpacking")
                    }
                }
            };
            lines.push(text);
        }
        let layers = self
            .expected_layers
            .map_or(String::new(), |n| format!(", {n} layers"));
        lines.push(format!(
            "total {} / {}{layers}",
            human_bytes(done_sum),
            human_bytes(total_sum)
        ));
        lines
    }
}

/// A byte counter shared between a reader and the bar that shows it.
#[derive(Debug, Clone, Default)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    /// Adds `n` bytes.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl ByteCounter {
    /// `reader`, adding what it yields to this counter.
    pub fn counted<R>(&self, reader: R) -> CountingReader<R> {
        CountingReader {
            inner: reader,
            counter: self.clone(),
        }
    }
}

/// Counts the bytes read through it, for a [`ByteBar`].
pub struct CountingReader<R> {
    inner: R,
    counter: ByteCounter,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            this.counter.add((buf.filled().len() - before) as u64);
        }
        polled
    }
}

/// A redrawn `label [####----] done / total` line on stderr, shown only
/// when stderr is a terminal; cleared when finished or dropped. (Like the
/// spinner, it relies on the CLI's current-thread runtime: after `abort`
/// the task cannot write again.)
pub struct ByteBar {
    task: Option<JoinHandle<()>>,
}

impl ByteBar {
    /// Starts the bar unless `quiet` or stderr is not a terminal. After
    /// `total` bytes it says `then` (for example "unpacking").
    pub fn start(
        label: String,
        counter: ByteCounter,
        total: Option<u64>,
        then: &'static str,
        quiet: bool,
    ) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(REDRAW_INTERVAL);
            loop {
                ticker.tick().await;
                let done = counter.get();
                let secs = started.elapsed().as_secs_f64();
                let text = match total {
                    Some(total) if done >= total => {
                        format!(
                            "{label} {} {} {then}… {secs:.0}s",
                            bar(1, 1),
                            human_bytes(total)
                        )
                    }
                    Some(total) => format!(
                        "{label} {} {} / {} {:.0}%  {}/s",
                        bar(done, total),
                        human_bytes(done),
                        human_bytes(total),
                        done as f64 * 100.0 / total.max(1) as f64,
                        human_bytes((done as f64 / secs.max(0.001)) as u64)
                    ),
                    None => format!(
                        "{label} {}  {}/s",
                        human_bytes(done),
                        human_bytes((done as f64 / secs.max(0.001)) as u64)
                    ),
                };
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "\r\x1b[2K{text}");
                let _ = stderr.flush();
            }
        });
        Self { task: Some(task) }
    }

    /// Stops the bar and clears its line.
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

impl Drop for ByteBar {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.50 GiB");
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 10), format!("[{}]", "-".repeat(BAR_WIDTH)));
        assert_eq!(bar(10, 10), format!("[{}]", "#".repeat(BAR_WIDTH)));
        assert_eq!(bar(5, 10).matches('#').count(), BAR_WIDTH / 2);
        assert_eq!(bar(20, 10).matches('#').count(), BAR_WIDTH);
    }

    #[test]
    fn digests_are_shortened_to_twelve_hex() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
    }

    #[test]
    fn render_sums_layers() {
        let mut display = PullDisplay::new(true);
        display.quiet = false;
        display.interactive = false;
        display.layers = vec![
            (
                "sha256:aaaaaaaaaaaaaaaa".into(),
                LayerState::Downloading {
                    done: 1024,
                    total: Some(2048),
                },
            ),
            ("sha256:bbbbbbbbbbbbbbbb".into(), LayerState::Exists),
            (
                "sha256:cccccccccccccccc".into(),
                LayerState::Unpacking { size: 1024 },
            ),
        ];
        let lines = display.render(false);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with("aaaaaaaaaaaa  downloading ["),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("1.0 KiB / 2.0 KiB"), "{}", lines[0]);
        assert_eq!(lines[1], "bbbbbbbbbbbb  already stored");
        assert_eq!(lines[2], "cccccccccccc  unpacking");
        assert_eq!(lines[3], "total 2.0 KiB / 3.0 KiB");
        assert_eq!(display.render(true)[2], "cccccccccccc  done (1.0 KiB)");
    }
}
