//! `loadgen`: replays Singles' Day traffic against Tally and measures it.

fn main() {}
