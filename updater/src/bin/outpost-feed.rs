//! `outpost-feed`: the vendor's feed publisher.
fn main() {}
