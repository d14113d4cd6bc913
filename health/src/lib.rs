//! # outpost-health
//!
//! Health packs: the collector judges the box's health itself, the way a management pack
//! does, so health stays right while the gateway is unreachable and only changes travel.
//!
//! A crate of its own, pure (no I/O beyond [`load_pack`] reading a file), because both
//! sides need it: the collector runs the [`HealthEngine`] (re-exported there as
//! `outpost_collector::health`), and the gateway's `packs import` refuses a bad pack with the
//! same file, line and reason a collector would give — without the gateway depending on the
//! collector.
//!
//! # Background
//!
//! Collectors such as collectd or node_exporter ship numbers and leave judgement to the
//! centre. Outpost's boxes sit behind firewalls and lose their uplink; a box that knows
//! "file system `/srv` is critical because it has been below 5 % free for two samples"
//! can raise, hold and resolve that alert on its own and send just the change.
//!
//! # Design
//!
//! ```text
//! pack TOML ─► pack::parse_pack ─► PackSet::new ─► HealthEngine::observe(samples, now)
//!              (file checks,        (references,     ─► Vec<HealthEvent> (changes only)
//!               file:line:reason)    cycles, order)  ─► tree(), open_alerts(), take_collected()
//! ```
//!
//! * [`samples`]: the engine's input — objects of a [`Class`] with numeric values and
//!   labels, built from the host and VM sources. No I/O in the engine.
//! * [`model`]: what a valid pack says, as types (monitors, rollups, rules, overrides,
//!   parameters, selectors).
//! * [`pack`]: the TOML format and everything checkable within one file (documented for
//!   authors in `docs/packs.md`).
//! * [`packset`]: packs checked together (references, duplicate ids, rollup cycles) and
//!   compiled into a health graph in evaluation order.
//! * [`state`]: [`HealthState`] with its rollup order, and WorstOf / BestOf /
//!   WorstOfPercentage.
//! * [`monitor`]: unit monitors — from a sample to a raw level, and the N-consecutive-
//!   samples window from raw levels to a state.
//! * [`overrides`]: override precedence as a total order ([`OverrideRank`]) and conflict
//!   reports.
//! * [`engine`]: [`HealthEngine`] — discovery, evaluation, alerts, collection.
//! * [`report`]: which of a round's events travel, as `health` and `alert` records.
//!
//! Validation is all-or-nothing: a pack with any error is rejected with every error's file,
//! line and reason, and the engine only ever holds a [`PackSet`] that validated, so a
//! collector never applies an invalid pack (it keeps the last good set).
//!
//! # Current limitations
//!
//! * The containment tree is flat: every object belongs to the host. Dependency rollups
//!   between other classes (a VM's disks) need sources that report such parents.
//! * The engine does no I/O: service and certificate monitors judge what the collector's
//!   sources give [`Samples::add_services`] and [`Samples::add_certificates`]; an object
//!   whose state could not be read carries an `error` label and its monitors are Unknown.
//! * The engine keeps its judgement in memory; [`HealthEngine::snapshot`] and
//!   [`HealthEngine::restore`] turn it into plain data and back, and the collector writes
//!   that to its state directory, so states, sample windows (with rate monitors' previous
//!   values) and open alerts survive a restart.
//! * Values of collect rules wait in the engine until taken ([`HealthEngine::take_collected`],
//!   after every round); at most [`engine::MAX_COLLECTED`], the oldest dropped and counted.
//! * Alerts resolve when their monitor is Healthy again (or switched off, or the object
//!   goes); a monitor stuck at Unknown keeps its alert open.

pub mod engine;
pub mod model;
pub mod monitor;
pub mod overrides;
pub mod pack;
pub mod packset;
pub mod report;
pub mod samples;
pub mod state;

use std::path::Path;

pub use engine::{
    Alert, CollectedValue, EngineSnapshot, HealthEngine, HealthEvent, HealthTree, MonitorHealth,
    ObjectHealth, ResolveReason, Wanted,
};
pub use model::Pack;
pub use overrides::{OverrideConflict, OverrideRank, Specificity};
pub use pack::{parse_pack, LoadError, PackError, PackErrors};
pub use packset::PackSet;
pub use samples::{CertificateStatus, Class, ObjectKey, ObjectSample, Samples, ServiceStatus};
pub use state::{Algorithm, HealthState};

/// The built-in pack's source.
pub const DEFAULT_PACK_TOML: &str = include_str!("default_pack.toml");

/// The built-in pack's name.
pub const DEFAULT_PACK_NAME: &str = "outpost.default";

/// The name the built-in pack's errors would carry.
const DEFAULT_PACK_FILE: &str = "health/src/default_pack.toml";

/// The built-in pack.
///
/// # Panics
///
/// Never in a released build: the built-in pack is checked by the unit tests.
#[must_use]
pub fn default_pack() -> Pack {
    match parse_pack(DEFAULT_PACK_FILE, DEFAULT_PACK_TOML) {
        Ok(pack) => pack,
        Err(e) => panic!("the built-in pack is invalid:\n{e}"),
    }
}

/// The built-in pack alone, compiled.
///
/// # Panics
///
/// Never in a released build: the built-in pack is checked by the unit tests.
#[must_use]
pub fn default_pack_set() -> PackSet {
    match PackSet::new(vec![default_pack()]) {
        Ok(set) => set,
        Err(e) => panic!("the built-in pack is invalid:\n{e}"),
    }
}

/// The built-in pack plus `packs`, checked together: what a collector applies when the
/// gateway delivers packs. A pack named like the built-in one replaces it.
///
/// # Errors
///
/// Every problem found, with file, line and reason; nothing is applied.
pub fn pack_set_with_default(packs: Vec<Pack>) -> Result<PackSet, PackErrors> {
    let mut all = packs;
    if !all.iter().any(|p| p.name == DEFAULT_PACK_NAME) {
        all.push(default_pack());
    }
    PackSet::new(all)
}

/// Reads a pack file and checks it on its own and together with the built-in pack (the
/// checks an import must pass). References to monitors of other, non-built-in packs fail
/// here; check such a pack with [`PackSet::new`] alongside the packs it refers to.
///
/// # Errors
///
/// When the file cannot be read, or the pack is invalid (every problem with file, line and
/// reason).
pub fn load_pack(path: &Path) -> Result<Pack, LoadError> {
    let pack = pack::read_pack_file(path)?;
    pack_set_with_default(vec![pack.clone()]).map_err(LoadError::Invalid)?;
    Ok(pack)
}

#[cfg(test)]
mod tests;
