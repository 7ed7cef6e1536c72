//! Model-checks the admission gate with loom: every interleaving of two submitters and
//! a shutdown. Run: `RUSTFLAGS="--cfg loom" cargo test -p tally-engine --test loom_gate --release`
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use tally_engine::gate::Gate;

/// Interleavings in which a submitter got in, and in which one was refused: the model
/// must explore both, or its assertions prove nothing.
static ADMITTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// No submitter is ever inside the gate once `close` has returned, and a submitter that
/// got in is always waited for: so a drain that starts after `close` sees every push.
#[test]
fn close_waits_for_every_admitted_submitter_and_admits_none_after() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let closed_returned = Arc::new(AtomicBool::new(false));
        let pushes = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let (gate, closed_returned, pushes) = (
                    Arc::clone(&gate),
                    Arc::clone(&closed_returned),
                    Arc::clone(&pushes),
                );
                thread::spawn(move || {
                    if let Some(pass) = gate.enter() {
                        assert!(
                            !closed_returned.load(Ordering::SeqCst),
                            "pushed after close returned"
                        );
                        pushes.fetch_add(1, Ordering::SeqCst);
                        drop(pass);
                        ADMITTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        gate.close();
        closed_returned.store(true, Ordering::SeqCst);
        let pushes_seen_by_drain = pushes.load(Ordering::SeqCst);
        for submitter in submitters {
            submitter.join().expect("submitter");
        }
        assert_eq!(
            pushes.load(Ordering::SeqCst),
            pushes_seen_by_drain,
            "a push landed after the drain began"
        );
        assert!(gate.enter().is_none());
    });
    let admitted = ADMITTED.load(std::sync::atomic::Ordering::Relaxed);
    let refused = REFUSED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        admitted > 0 && refused > 0,
        "submitters admitted {admitted} times, refused {refused} times"
    );
}
