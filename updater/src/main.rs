//! `outpost-updater`: the on-box staged update agent.
fn main() {}
