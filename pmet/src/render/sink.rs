//! Where each sample goes while tracing: the live panel, a line of text or
//! JSON, or nowhere.

use std::io::{self, Write};

use super::{
    live::live_lines,
    stream::{json_line, simple_line},
    style::Style,
    term::Panel,
};
use crate::model::snapshot::Snapshot;

/// What is shown per sample while tracing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleFormat {
    /// A live view redrawn in place (terminals only).
    Live,
    /// One plain line per sample.
    Simple,
    /// One JSON object per sample (JSON Lines).
    Jsonl,
    /// Nothing until the final summary.
    Summary,
    /// `pmet top` as JSON Lines: the top N processes by a figure.
    Top(super::top::TopSort, usize),
    /// `pmet top` full-screen, ranked by a figure at first.
    TopView(super::top::TopSort),
}

/// The per-sample output of a session.
pub enum Sink {
    /// Live panel on the terminal.
    Live {
        /// The panel.
        panel: Panel,
        /// What is traced, for the header.
        what: String,
        /// Spinner frame.
        frame: usize,
        /// Colors.
        style: Style,
        /// The last snapshot, redrawn on resize.
        last: Option<Box<Snapshot>>,
    },
    /// One line per sample.
    Lines {
        /// Destination.
        out: Box<dyn Write + Send>,
        /// JSON Lines rather than plain text.
        json: bool,
    },
    /// `pmet top`: one JSON line per sample with the top processes.
    Top {
        /// Destination.
        out: Box<dyn Write + Send>,
        /// What to rank by.
        sort: super::top::TopSort,
        /// How many.
        limit: usize,
        /// A sample has been taken (the first has no rates, and is not
        /// printed).
        primed: bool,
    },
    /// `pmet top` full-screen.
    TopView(Box<super::top_view::TopView>),
    /// Each sample handed to the program embedding pmet (the Python
    /// package), until it stops listening; while its queue is full, new
    /// samples are dropped rather than waited for.
    Channel(std::sync::mpsc::SyncSender<Snapshot>),
    /// Nothing per sample.
    Nothing,
}

impl Sink {
    /// A sink for `format`, writing lines to `out`.
    pub fn new(
        format: SampleFormat,
        what: String,
        style: Style,
        out: Box<dyn Write + Send>,
    ) -> Self {
        match format {
            SampleFormat::Live => match Panel::start() {
                Ok(panel) => Sink::Live {
                    panel,
                    what,
                    frame: 0,
                    style,
                    last: None,
                },
                Err(e) => {
                    log::warn!("cannot draw the live view ({e}); printing the summary only");
                    Sink::Nothing
                }
            },
            SampleFormat::Simple => Sink::Lines { out, json: false },
            SampleFormat::Jsonl => Sink::Lines { out, json: true },
            SampleFormat::Summary => Sink::Nothing,
            SampleFormat::TopView(sort) => match super::top_view::TopView::start(sort) {
                Ok(view) => Sink::TopView(Box::new(view)),
                Err(e) => {
                    log::error!("cannot take over the terminal ({e}); use --format jsonl");
                    Sink::Nothing
                }
            },
            SampleFormat::Top(sort, limit) => Sink::Top {
                out,
                sort,
                limit,
                primed: false,
            },
        }
    }

    /// Shows one sample.
    pub fn sample(&mut self, s: &Snapshot) {
        let r = match self {
            Sink::Live {
                panel,
                what,
                frame,
                style,
                last,
            } => {
                *frame += 1;
                let lines = live_lines(s, what, *frame, panel.width(), panel.height(), *style);
                *last = Some(Box::new(s.clone()));
                panel.draw(&lines)
            }
            Sink::Lines { out, json } => {
                let line = if *json { json_line(s) } else { simple_line(s) };
                writeln!(out, "{line}").and_then(|()| out.flush())
            }
            Sink::Top {
                out,
                sort,
                limit,
                primed,
            } => {
                if !std::mem::replace(primed, true) {
                    return;
                }
                let line = super::top::top_line(s, *sort, *limit);
                writeln!(out, "{line}").and_then(|()| out.flush())
            }
            Sink::TopView(view) => view.draw(s),
            Sink::Channel(tx) => match tx.try_send(s.clone()) {
                Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)) => Ok(()),
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    Err(io::Error::from(io::ErrorKind::BrokenPipe))
                }
            },
            Sink::Nothing => Ok(()),
        };
        if let Err(e) = r {
            if e.kind() == io::ErrorKind::BrokenPipe {
                // The reader went away: nothing to say, and nobody to say it to.
                log::debug!("sample output: {e}");
            } else {
                // A full disk, say: said once; the trace and the report go on.
                log::warn!(
                    "writing the samples failed ({e}); no more are written, the report still is"
                );
            }
            *self = Sink::Nothing;
        }
    }

    /// Whether this sink shows the processes that ended between samples
    /// (`pmet top`): only then are they put in the samples.
    pub fn wants_ended(&self) -> bool {
        matches!(self, Sink::Top { .. } | Sink::TopView(_))
    }

    /// Whether this sink reads keys (the full-screen view).
    pub fn takes_keys(&self) -> bool {
        matches!(self, Sink::TopView(_))
    }

    /// The next key pressed (never, for a sink that reads none).
    pub async fn next_key(&mut self) -> Option<super::top_view::Key> {
        match self {
            Sink::TopView(view) => view.next_key().await,
            _ => std::future::pending().await,
        }
    }

    /// Takes a key; `true` when it asks to quit.
    pub fn key(&mut self, k: super::top_view::Key) -> bool {
        match self {
            Sink::TopView(view) => view.key(k),
            _ => false,
        }
    }

    /// Follows a terminal resize.
    pub fn resize(&mut self) {
        if let Sink::TopView(view) = self {
            let _ = view.resize();
            return;
        }
        if let Sink::Live {
            panel,
            what,
            frame,
            style,
            last,
        } = self
        {
            let _ = panel.resize();
            if let Some(s) = last {
                let lines = live_lines(s, what, *frame, panel.width(), panel.height(), *style);
                let _ = panel.draw(&lines);
            }
        }
    }

    /// Leaves the screen as it was, before the summary is printed.
    pub fn finish(&mut self) {
        match self {
            Sink::Live { panel, .. } => {
                let _ = panel.finish();
            }
            Sink::Lines { out, .. } | Sink::Top { out, .. } => {
                let _ = out.flush();
            }
            Sink::TopView(_) | Sink::Channel(_) | Sink::Nothing => {}
        }
    }
}
