//! Web view page times (placeholder until the seeded benchmark lands).
fn main() {}
