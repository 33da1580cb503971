//! The process tree, built from everything collected.

pub mod event;
pub mod figures;
pub mod snapshot;
pub mod tree;
