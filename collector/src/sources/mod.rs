//! Where the data comes from. Each source owns whatever state it needs between samples and
//! returns wire types from `outpost-proto` (or the health engine's inputs); none of them does
//! network I/O.
//!
//! * [`host`]: OS, kernel, CPUs, memory, disks, file systems, NICs, uptime, load, processes.
//! * [`vm`]: KVM/QEMU guests, from libvirt's run directory and `/proc`.
//! * [`service`]: the systemd units the packs list (`systemctl show`).
//! * [`cert`]: the certificate files the packs list, and the collector's own.

pub mod cert;
pub mod host;
pub mod service;
pub mod vm;

pub use host::HostSource;
