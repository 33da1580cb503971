//! Empty on purpose: this library target lets `pmet` list the eBPF crate as a
//! build-dependency, so cargo rebuilds pmet when the kernel side changes. The
//! programs themselves are the `pmet` binary of this crate (src/main.rs).
#![no_std]
