//! # outpost-tests
//!
//! Support for tests, the demo and tools that drive the real Outpost binaries on loopback.
//!
//! # Design
//!
//! Nothing here fakes a component: a [`Gateway`] is the real `outpost-gateway` process
//! serving TLS on `127.0.0.1:0`, a [`Collector`] the real `outpost-collector`, and an
//! [`ApplianceClient`] speaks the wire protocol over rustls with a key made for it, exactly
//! as an appliance would. The binaries are found next to the test executable
//! ([`bins`]); build them first with `cargo build --workspace --bins`.
//!
//! * [`proc`]: a child process with its log in a file, stopped by SIGTERM and killed and
//!   reaped on drop, so a failing test leaves nothing running.
//! * [`gateway`] and [`collector`]: the two binaries, their config files and CLIs
//!   (`docs/contract.md`).
//! * [`pki`]: keys, CSRs, a throwaway CA, and certificates signed with the gateway's own CA
//!   key (to prove the gateway checks its store and not only the signature).
//! * [`client`]: TLS configurations and the appliance-side HTTP client.
//! * [`wait`]: bounded polling; every wait names what it waited for when it times out.
//! * [`fixtures`]: steps many tests share (an approved appliance, waiting on `appliances show`).
//! * [`pg`] and [`pool`]: a throwaway PostgreSQL database per test (from
//!   `OUTPOST_TEST_POSTGRES`, a printed `SKIP:` without it) and two gateways sharing it.
//! * [`measure`]: process memory and CPU from `/proc`, latency percentiles, a real payload;
//!   [`loadgen`]: the load generator behind `outpost-loadgen` (N simulated appliances).
//! * [`qemu`]: real, bounded `qemu-system-x86_64` guests (with the reason to skip without).
//! * [`faults`]: seeded fault timing, the stored records of an appliance and the
//!   exactly-once check; [`spool`]: a reader of the collector's on-disk spool.
//!
//! # Current limitations
//!
//! Unix only (signals). PostgreSQL is not started here: the pool tests need a server.

pub mod bins;
pub mod client;
pub mod collector;
pub mod faults;
pub mod fixtures;
pub mod gateway;
pub mod loadgen;
pub mod measure;
pub mod pg;
pub mod pki;
pub mod pool;
pub mod proc;
pub mod qemu;
pub mod spool;
pub mod wait;
pub mod workdir;

pub use client::{tls_config, ApplianceClient, HttpReply};
pub use collector::Collector;
pub use gateway::{CliOutput, Gateway};
pub use pg::TestDatabase;
pub use wait::{wait_for, wait_until};
pub use workdir::Workdir;

/// Current time in unix milliseconds.
#[must_use]
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
