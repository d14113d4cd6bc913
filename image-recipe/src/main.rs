//! `outpost-image` CLI.
fn main() {}
