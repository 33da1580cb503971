//! Output for people.

pub mod summary;
pub mod units;
