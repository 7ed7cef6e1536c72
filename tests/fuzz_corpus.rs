//! The short bounded fuzz run for CI (stable Rust): every committed corpus file under
//! `fuzz/corpus/TARGET/` goes through the same `tally::fuzz_targets` function that
//! libFuzzer drives on nightly, plus a few hundred seeded random inputs per target.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use tally::fuzz_targets::TARGETS;

/// splitmix64: a portable seeded RNG, so a failing input can be rebuilt from its seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn every_committed_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
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
    println!("replayed {total} corpus files");
}

#[test]
fn seeded_random_inputs_pass_every_target() {
    for (name, target) in TARGETS {
        for seed in 0..200u64 {
            let mut state = seed ^ 0xC0FF_EE00;
            let len = (splitmix(&mut state) % 512) as usize;
            let data: Vec<u8> = (0..len).map(|_| splitmix(&mut state) as u8).collect();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: seed {seed} fails");
        }
    }
}
