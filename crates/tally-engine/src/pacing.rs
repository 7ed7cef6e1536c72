//! Group commit pacing that follows the host.
//!
//! The log thread commits as soon as anything waits: a group is whatever arrived while
//! the sync before it ran, so a lone payment is synced at once and a burst shares syncs
//! in proportion to the load and the disk's sync latency. Each `fdatasync` also costs
//! the host CPU, and a host that caps a machine's CPU time stops the whole machine for
//! milliseconds once too many syncs a second have used up its allowance (measured in
//! docs/performance.md, "Group commit pacing"). The log thread sees such a stop as a
//! commit or a pause that overran by far; [`CommitPacer`] then makes the next commit
//! after a shared one wait out an interval, doubled on every stop seen and shrunk by a
//! quarter for each calm spell, within [`crate::Config::commit_interval_min`] and
//! [`crate::Config::commit_interval_max`].

use std::time::{Duration, Instant};

/// A commit or pause overrunning by at least this much means the machine stood still
/// (a host's CPU cap stops it for 13–15 ms): far above a sync's p99 on any disk where
/// pacing matters, far below the stops it guards against.
pub(crate) const STALL_MIN: Duration = Duration::from_millis(4);
/// A commit taking this many times the typical one also counts as a stop (a large group
/// legitimately takes long; a stop makes one take far longer than its peers).
const STALL_TIMES_TYPICAL: u32 = 8;
/// The interval a first stop sets (then doubled on each one after).
pub(crate) const INTERVAL_FIRST: Duration = Duration::from_micros(125);
/// A spell this long without a stop shrinks the interval by a quarter.
pub(crate) const CALM_SPELL: Duration = Duration::from_millis(100);

/// The pacing interval and what it learned from the commits it saw.
#[derive(Debug)]
pub(crate) struct CommitPacer {
    min: Duration,
    max: Duration,
    interval: Duration,
    /// When the interval last changed (or the pacer started).
    changed_at: Instant,
    /// A commit's typical duration (append and sync), a moving average in microseconds.
    commit_us_typical: f64,
    stalls: u64,
}

impl CommitPacer {
    /// A pacer whose interval starts at `min` and stays within `min..=max`.
    pub fn new(min: Duration, max: Duration, now: Instant) -> Self {
        assert!(min <= max, "pacing bounds {min:?} > {max:?}");
        CommitPacer {
            min,
            max,
            interval: min,
            changed_at: now,
            commit_us_typical: 0.0,
            stalls: 0,
        }
    }

    /// The least time from the start of a commit that several submissions shared to the
    /// start of the next one, after letting a calm spell that ended by `now` relax it.
    pub fn interval(&mut self, now: Instant) -> Duration {
        let calm = now.saturating_duration_since(self.changed_at);
        let spells = calm.as_nanos() / CALM_SPELL.as_nanos();
        if spells == 0 {
            return self.interval;
        }
        // One step per spell that passed; from the ceiling, a few dozen reach the floor.
        for _ in 0..spells.min(64) {
            let relaxed = self.interval - self.interval / 4;
            // Below the first step, relaxing would only crawl: drop to the floor.
            self.interval = if relaxed < INTERVAL_FIRST {
                self.min
            } else {
                relaxed.max(self.min)
            };
        }
        self.changed_at = now;
        self.interval
    }

    /// A commit (append and sync) took `took`, ending at `now`.
    pub fn commit_took(&mut self, took: Duration, now: Instant) {
        let took_us = took.as_secs_f64() * 1e6;
        if self.commit_us_typical == 0.0 {
            // The first commit has no peers to be judged against.
            self.commit_us_typical = took_us;
            return;
        }
        let typical = Duration::from_secs_f64(self.commit_us_typical / 1e6);
        if took >= STALL_MIN && took >= typical * STALL_TIMES_TYPICAL {
            self.stalled(now);
        }
        // Every commit moves the typical, a stop by at most its threshold: commits that
        // grew for good (larger groups) stop counting as stops after a few of them.
        let bounded_us = took_us.min(self.commit_us_typical * f64::from(STALL_TIMES_TYPICAL));
        self.commit_us_typical = 0.9 * self.commit_us_typical + 0.1 * bounded_us;
    }

    /// A pause meant to last until `deadline` ended at `now`.
    pub fn paused_until(&mut self, deadline: Instant, now: Instant) {
        if now.saturating_duration_since(deadline) >= STALL_MIN {
            self.stalled(now);
        }
    }

    /// Stops seen since the pacer started.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    fn stalled(&mut self, now: Instant) {
        self.stalls += 1;
        self.interval = (self.interval * 2)
            .max(INTERVAL_FIRST)
            .clamp(self.min, self.max);
        self.changed_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// `count` commits back to back, each taking `took`.
    fn commits(pacer: &mut CommitPacer, at: &mut Instant, took: Duration, count: u32) {
        for _ in 0..count {
            *at += took;
            pacer.commit_took(took, *at);
        }
    }

    fn calm_commits(pacer: &mut CommitPacer, at: &mut Instant, count: u32) {
        commits(pacer, at, 200 * US, count);
    }

    #[test]
    fn commits_are_not_paced_until_the_machine_stands_still() {
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        calm_commits(&mut pacer, &mut at, 10_000);
        assert_eq!(pacer.interval(at), Duration::ZERO);
        assert_eq!(pacer.stalls(), 0);
    }

    #[test]
    fn each_stop_doubles_the_interval_up_to_the_ceiling() {
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        calm_commits(&mut pacer, &mut at, 100);
        let mut seen = Vec::new();
        for _ in 0..5 {
            at += 14 * MS;
            pacer.commit_took(14 * MS, at);
            seen.push(pacer.interval(at));
        }
        assert_eq!(seen, [125 * US, 250 * US, 500 * US, MS, MS]);
        // A pause that overran as much counts the same.
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        pacer.paused_until(at, at + 3 * MS);
        assert_eq!(pacer.interval(at + 3 * MS), Duration::ZERO);
        pacer.paused_until(at, at + 5 * MS);
        assert_eq!(pacer.interval(at + 5 * MS), 125 * US);
        assert_eq!(pacer.stalls(), 1);
    }

    #[test]
    fn calm_spells_bring_the_interval_back_to_the_floor() {
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        calm_commits(&mut pacer, &mut at, 10);
        commits(&mut pacer, &mut at, 20 * MS, 4);
        assert_eq!(pacer.interval(at), MS);
        // Not within a spell: the interval holds.
        assert_eq!(pacer.interval(at + CALM_SPELL - US), MS);
        let mut intervals = Vec::new();
        for _ in 0..12 {
            at += CALM_SPELL;
            intervals.push(pacer.interval(at));
        }
        assert_eq!(intervals[0], 750 * US);
        assert!(intervals.windows(2).all(|pair| pair[1] <= pair[0]));
        assert_eq!(intervals.last(), Some(&Duration::ZERO));
    }

    #[test]
    fn commits_that_grew_for_good_soon_stop_counting_as_stops() {
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        calm_commits(&mut pacer, &mut at, 100);
        // From one-payment groups to full batches: 125 times longer, from then on.
        commits(&mut pacer, &mut at, 25 * MS, 100);
        assert!(pacer.stalls() <= 10, "{} stops", pacer.stalls());
        assert_eq!(pacer.interval(at + 20 * CALM_SPELL), Duration::ZERO);
    }

    #[test]
    fn a_commit_long_like_its_peers_is_no_stop() {
        // Large groups that each take 10 ms: long, but typical.
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO, MS, at);
        commits(&mut pacer, &mut at, 10 * MS, 1_001);
        assert_eq!(pacer.stalls(), 0);
        commits(&mut pacer, &mut at, 200 * MS, 1);
        assert_eq!(pacer.stalls(), 1);
    }

    #[test]
    fn equal_bounds_pace_at_a_fixed_interval() {
        let mut at = Instant::now();
        let mut pacer = CommitPacer::new(MS, MS, at);
        assert_eq!(pacer.interval(at), MS);
        at += 50 * MS;
        pacer.commit_took(50 * MS, at);
        assert_eq!(pacer.interval(at), MS);
        assert_eq!(pacer.interval(at + 10 * CALM_SPELL), MS);
        // With a floor, a stop doubles from it and calm returns to it.
        let mut pacer = CommitPacer::new(200 * US, 2 * MS, at);
        pacer.paused_until(at, at + 5 * MS);
        assert_eq!(pacer.interval(at + 5 * MS), 400 * US);
        assert_eq!(pacer.interval(at + 5 * MS + 20 * CALM_SPELL), 200 * US);
    }
}
