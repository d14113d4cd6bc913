//! Outpost firmware layout: a layout file and a root file system archive become a bootable,
//! bit-for-bit reproducible GPT disk image with an ESP running systemd-boot, two A/B root slots
//! and a data partition.
//!
//! # Background
//! Image tools leave reproducibility half done: random disk and partition GUIDs, file-system
//! UUIDs and hash seeds, and inode times copied from the build tree. Here every identifier is
//! derived from the layout's seed ([`guid`]) and every time stamp is SOURCE_DATE_EPOCH.
//!
//! # Design
//! - [`config`] parses `layout.toml` (unknown keys denied); [`plan`] is the pure arithmetic
//!   (alignment, overlap, `rest`) and is property-tested; [`gpt`] encodes the table ourselves.
//! - [`fsbuild`] makes file systems from directories without mounting (`mkfs.ext4 -d` + `debugfs`
//!   time pinning, `mkfs.vfat --invariant` + mtools, `mkfs.erofs`); [`rootfs`] unpacks the archive
//!   and finds the kernel; [`entries`] writes systemd-boot's config with boot counting.
//! - [`cache`] keeps each partition's file system under the hash of its inputs, so a rebuild
//!   makes only what changed (the root slots after a new rootfs), with the same bytes.
//! - [`image`] orchestrates a build into temporary names and renames at the end; [`inspect`]
//!   reads an image back; [`qemu`] boots one under OVMF.
//!
//! # Current limitations
//! 512-byte sectors only; x86-64 UEFI only; the same bytes need the same versions of
//! e2fsprogs, dosfstools, mtools and qemu-utils (the host's mke2fs.conf is not used);
//! `boot` does not forward signals to QEMU;
//! vhdx and vmdk identifiers that qemu-img generates at random are overwritten afterwards
//! ([`formats`]), which depends on the layout qemu-img 7.2 writes.

pub mod cache;
pub mod config;
pub mod entries;
pub mod error;
pub mod formats;
pub mod fsbuild;
pub mod gpt;
pub mod guid;
pub mod image;
pub mod inspect;
pub mod plan;
pub mod qemu;
pub mod rootfs;
pub mod tools;

pub use error::LayoutError;
