//! The process tree, built from everything collected.

pub mod conn;
pub mod container;
pub mod env;
pub mod event;
pub mod figures;
#[cfg(test)]
pub mod fixture;
pub mod gpu;
pub mod input;
pub mod net;
pub mod series;
pub mod snapshot;
pub mod tree;
