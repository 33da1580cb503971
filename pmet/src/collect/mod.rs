//! Where figures come from: the kernel side's events and maps, taskstats exit
//! records, and /proc.

pub mod btf;
pub mod cgroup;
pub mod decode;
pub mod ebpf;
pub mod gpu;
pub mod hooks;
pub mod procfs;
pub mod source;
pub mod taskstats;
pub mod tracefs;
