//! # outpost-image: recipe to reproducible root file system
//!
//! # Background
//! A manufacturer describes an appliance in a `recipe.toml` (see `docs/recipe.md`): a Debian
//! base, overlays, files, users, services, the Outpost agents and first-boot values. This crate
//! turns it into `rootfs.tar.zst`, `manifest.json` and `sbom.spdx.json`, bit-for-bit the same
//! on every build of the same recipe; `outpost-layout` turns the archive into a disk image.
//!
//! # Design
//! - [`recipe`]: parse and validate (no I/O); [`inputs`]: read the host files it names.
//! - [`sources`]: the apt sources passed explicitly to mmdebstrap (the host's by default).
//! - [`pipeline`]: three stages cached by a hash of their inputs — `base` (mmdebstrap → tar),
//!   `customize` ([`customize`] on the in-memory [`tree`]), `finalize` ([`finalize`], [`sbom`]).
//! - The base tar is indexed, never unpacked: customisation edits an index of paths, numeric
//!   owners and byte ranges, so stage 2 and 3 run unprivileged and in sorted order.
//! - [`diff`]: compare two outputs.
//!
//! # Current limitations
//! - Extended attributes (file capabilities) of the base are not carried into the archive.
//! - Hard links are stored as separate regular files.
//! - The base cache is keyed by the recipe and sources, not by the mirror's contents: a cached
//!   base keeps its package versions until the cache is cleared or `--no-cache` is given.
//! - The package cache (`CACHE/debs/`) is never pruned.
//! - Compression is single-threaded on purpose (zstd's multi-threaded output can depend on the
//!   worker count), so `finalize` is bound by one core.

pub mod assets;
pub mod customize;
pub mod diff;
pub mod error;
pub mod finalize;
pub mod inputs;
pub mod pipeline;
pub mod recipe;
pub mod sbom;
pub mod sources;
pub mod tree;

pub use error::BuildError;
pub use recipe::{Recipe, RecipeError};
