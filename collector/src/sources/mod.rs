//! Where the data comes from. Each source owns whatever state it needs between samples and
//! returns wire types from `outpost-proto`; none of them does network I/O.
//!
//! * [`host`]: OS, kernel, CPUs, memory, disks, file systems, NICs, uptime, load, processes.

pub mod host;
pub mod vm;

pub use host::HostSource;
