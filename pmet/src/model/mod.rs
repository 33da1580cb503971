//! The process tree, built from everything collected.

pub mod event;
pub mod tree;
