//! The short bounded fuzz run for CI (stable Rust): every committed corpus file under
//! `fuzz/corpus/TARGET/` goes through the same `tally_testkit::fuzz` function that
//! libFuzzer drives on nightly, plus a few hundred seeded random inputs per target.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use tally_testkit::SeededRng;
use tally_testkit::fuzz::TARGETS;

#[test]
fn every_committed_corpus_file_passes_its_target() {
    // This crate sits at crates/tally-testkit; the corpus at the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        // A missing corpus would make this test pass on nothing: it is an error.
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{name}: no corpus at {}: {error}", dir.display()));
        let mut paths: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: corpus file {} fails",
                path.display()
            );
            total += 1;
        }
    }
    assert!(total > 0, "no corpus file replayed");
    println!("replayed {total} corpus files");
}

#[test]
fn seeded_random_inputs_pass_every_target() {
    for (name, target) in TARGETS {
        for seed in 0..200u64 {
            let mut rng = SeededRng::new(seed ^ 0xC0FF_EE00);
            let len = rng.below(512) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: seed {seed} fails");
        }
    }
}
