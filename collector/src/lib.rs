//! # outpost-collector
//!
//! The on-box agent of Outpost: it enrols the appliance with a gateway, collects host data,
//! and forwards it outbound-only over TCP 5723 with mutual TLS.
//!
//! # Background
//!
//! An appliance sits at a customer site behind a firewall that lets one outbound port
//! through. Everything the vendor or VAR wants to know about it, and every command they
//! send, has to ride connections the appliance itself opens. The collector is that
//! agent: it makes its own key, gets a certificate from the Outpost CA through the gateway
//! (after a VAR approves it), and from then on talks mTLS only.
//!
//! # Design
//!
//! The data path reads from the module names:
//!
//! ```text
//! sources::{host,vm} ─► collect ─► health (judge) ─► spool (rid, disk) ─► uplink::Sender ─► gateway
//!                      (plan records)                samples/ changes/    POST /v1/ingest, trim on ack
//! ```
//!
//! * [`config`]: `collector.toml`, validated without I/O ([`config::RawConfig`]), then
//!   resolved ([`config::Config::resolve`]); errors name file, key and problem.
//! * [`identity`]: key (ECDSA P-256, 0600, made on the box), CSR, certificate checks.
//! * [`enroll`]: the enrolment state machine driven by the state directory: `cert.pem` →
//!   done; `enrollment.json` → poll; neither → submit. Restarts never enrol twice.
//! * [`tls`]: TLS 1.3 only, ring provider, the configured CA as the only root.
//! * [`sources`]: host inventory and metrics (sysinfo, `/sys/block`), sorted for stable
//!   hashes; KVM/QEMU guests (`sources::vm`: libvirt status XML, QEMU command lines,
//!   `/proc`, cgroups, QMP; a cheap check first).
//! * [`health`]: the health engine and packs — the `outpost-health` crate, re-exported.
//! * [`collect`]: every interval, host records (inventory only when its hash changed), the
//!   guest list as a delta when it changed and guest metrics, one health round's state
//!   changes and alerts, and a self-metrics record, written to the spool.
//! * [`spool`]: the durable spool (append-only segment logs with a CRC-32C per record, a
//!   size cap that drops metric samples first and counts what it drops, torn tails and
//!   damage skipped and counted, never fatal) and the ledger of batches in flight.
//! * [`uplink`]: batches of up to 500 records formed durably (a resend after a crash
//!   carries the same sequence and records), trimmed on acknowledgement; `409
//!   sequence_gap` renumbers; ordered failover with capped full-jitter backoff
//!   ([`backoff`]), probes of the primary and fail-back ([`failover`]).
//! * [`commands`]: the long-poll command channel (`ping`).
//! * [`config_sync`]: the centre's config (`interval`, health packs) with ETags; new packs
//!   are applied without a restart when valid, refused with the reasons logged otherwise.
//! * [`status`]: what `outpost-collector status` prints.
//! * [`agent`]: `run`, wiring the tasks together with one shutdown signal.
//!
//! Pure decisions (records to send, backoff delays, failover order, enrolment step,
//! command execution) are plain functions with time and randomness as arguments; the
//! edges (disk, HTTPS) sit around them. The ingest transport is a trait so the sender's
//! state machine is tested against a scripted gateway.
//!
//! # Current limitations
//!
//! * The spool caps by whole segments (an eighth of the cap each), so it holds between
//!   7/8 of its cap and the cap (plus the in-flight batch) when full.
//! * Batches left in `outbox/` by the foundation's collector are not imported.
//! * No systemd or certificate source yet: service and certificate monitors judge nothing.
//! * A refused pack set is reported in the log only, not to the gateway.
//! * Certificates are not renewed (`POST /v1/renew` is not used yet); an expired
//!   certificate needs a new enrolment.
//! * Proxies are not supported: the collector connects to its gateways directly.

pub mod agent;
pub mod backoff;
pub mod collect;
pub mod commands;
pub mod config;
pub mod config_sync;
pub mod enroll;
pub mod failover;
pub mod files;
pub use outpost_health as health;
pub mod http;
pub mod identity;
pub mod shutdown;
pub mod sources;
pub mod spool;
pub mod state;
pub mod status;
pub mod tls;
pub mod uplink;
