//! Output for people (and streams for tools).

pub mod diff_table;
pub mod html;
pub mod live;
pub mod openmetrics;
pub mod otlp;
pub mod report_text;
pub mod sink;
#[cfg(test)]
mod snapshots;
pub mod stream;
pub mod style;
pub mod summary;
pub mod svg;
pub mod term;
pub mod top;
pub mod top_view;
pub mod trace_events;
pub mod tree;
/// The formatting helpers (a base module: reports use them too).
pub use crate::units;
