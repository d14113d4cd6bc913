//! `outpost-layout` CLI.
fn main() {}
