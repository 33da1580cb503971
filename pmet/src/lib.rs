//! pmet: follows a program and its whole process tree and tells the truth
//! about what it used.
//!
//! Data flows one way through the modules:
//! - [`collect`]: kernel events (eBPF), exit records (taskstats) and /proc
//!   samples come in;
//! - [`model`]: they are merged into one model of the process tree;
//! - [`report`] and [`render`]: the JSON report and the human summary go out.
//!
//! [`trace`] runs a session; [`export`] serves its figures to Prometheus
//! while it runs; [`launch`] starts the traced command so that
//! nothing it does is missed. [`userfile`] writes every file pmet makes for
//! a user with that user's credentials ([`privileges::as_user`]).

pub mod cli;
pub mod collect;
pub mod commands;
pub mod error;
pub mod export;
pub mod history;
pub mod launch;
pub mod lifecycle;
pub mod model;
pub mod out;
pub mod privileges;
pub mod render;
pub mod report;
pub mod session;
pub mod signals;
pub mod trace;
pub mod units;
pub mod userfile;

pub use error::Error;
