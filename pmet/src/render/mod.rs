//! Output for people (and streams for tools).

pub mod live;
pub mod sink;
#[cfg(test)]
mod snapshots;
pub mod stream;
pub mod style;
pub mod summary;
pub mod term;
pub mod tree;
pub mod units;
