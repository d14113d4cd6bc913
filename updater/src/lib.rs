//! # outpost-updater
//!
//! Staged updates for Outpost appliances: the vendor's feed publisher (`outpost-feed`) and
//! the on-box agent (`outpost-updater`) that mirrors the feed over 5723, serves it to the
//! VMs on the box, installs into the inactive A/B slot and restarts inside the VAR's window.

// Distribution half: bundle format, TUF feed, mirror, local server.
pub mod bundle;
pub mod feed;
pub mod mirror;
pub mod serve;

// Install half: slots, boot counting, windows, the agent.
pub mod agent;
pub mod bootcount;
pub mod config;
pub mod slots;
pub mod windows;
