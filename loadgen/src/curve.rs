//! The traffic curve: offered submissions per second over the run.
//!
//! The default is the shape of Alipay's Singles' Day 2016 midnight, time-compressed: a
//! quiet pre-midnight baseline, a near-vertical ramp at 00:00 to the peak (120,000
//! payments/s), a short plateau, then a decay over the following "minutes", with
//! second-scale jitter. A curve is a list of (seconds, rate) points, linearly
//! interpolated; a curve file holds one `seconds,rate` pair a line (`#` comments).

use rand::SeedableRng;
use rand_distr::{Distribution, Exp1, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::fmt;

/// Lowest rate the arrival process uses, so a zero segment never stalls it forever.
const RATE_MIN_PER_S: f64 = 1.0;

/// Why a curve is not usable.
#[derive(Debug, Clone, PartialEq)]
pub enum CurveError {
    /// Fewer than two points.
    TooFewPoints,
    /// A point's time is not after the previous point's.
    NotIncreasing {
        /// The point, counted from 1.
        line: usize,
    },
    /// A line is not `seconds,rate`.
    BadLine {
        /// The line, counted from 1.
        line: usize,
        /// The line as read.
        text: String,
    },
    /// A rate is negative or not finite.
    BadRate {
        /// The point, counted from 1.
        line: usize,
    },
}

impl fmt::Display for CurveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurveError::TooFewPoints => f.write_str("a curve needs at least two points"),
            CurveError::NotIncreasing { line } => {
                write!(f, "curve point {line}: times must strictly increase")
            }
            CurveError::BadLine { line, text } => {
                write!(
                    f,
                    "curve line {line}: expected `seconds,rate`, got {text:?}"
                )
            }
            CurveError::BadRate { line } => {
                write!(f, "curve point {line}: rate must be finite and >= 0")
            }
        }
    }
}

impl std::error::Error for CurveError {}

/// A piecewise-linear rate curve with per-second multiplicative jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// (seconds from start, submissions per second), times strictly increasing.
    points: Vec<(f64, f64)>,
    /// Multiplier for each whole second (1.0 = none).
    jitter: Vec<f64>,
}

/// Shape of the default curve, in fractions of the duration and of the peak.
/// Baseline 20% of the run at 8% of the peak; 00:00 at 20%; 1% of the run to reach the
/// peak; plateau 10%; decay to 25% of the peak by the end.
const SINGLES_DAY_SHAPE: &[(f64, f64)] = &[
    (0.00, 0.07),
    (0.20, 0.08),
    (0.21, 1.00),
    (0.31, 0.97),
    (0.40, 0.70),
    (0.55, 0.48),
    (0.75, 0.34),
    (1.00, 0.25),
];

impl Curve {
    /// Builds a curve from points; validates them.
    pub fn from_points(points: Vec<(f64, f64)>) -> Result<Curve, CurveError> {
        if points.len() < 2 {
            return Err(CurveError::TooFewPoints);
        }
        for (index, window) in points.windows(2).enumerate() {
            if window[1].0.partial_cmp(&window[0].0) != Some(std::cmp::Ordering::Greater) {
                return Err(CurveError::NotIncreasing { line: index + 2 });
            }
        }
        for (index, (time, rate)) in points.iter().enumerate() {
            if !rate.is_finite() || *rate < 0.0 || !time.is_finite() {
                return Err(CurveError::BadRate { line: index + 1 });
            }
        }
        Ok(Curve {
            points,
            jitter: Vec::new(),
        })
    }

    /// The Singles' Day shape over `duration_s`, peaking at `peak_per_s`.
    pub fn singles_day(duration_s: f64, peak_per_s: f64) -> Curve {
        let points = SINGLES_DAY_SHAPE
            .iter()
            .map(|(t, r)| (t * duration_s, r * peak_per_s))
            .collect();
        Curve {
            points,
            jitter: Vec::new(),
        }
    }

    /// A flat curve (max mode's virtual clock, tests).
    pub fn constant(duration_s: f64, rate_per_s: f64) -> Curve {
        Curve {
            points: vec![(0.0, rate_per_s), (duration_s, rate_per_s)],
            jitter: Vec::new(),
        }
    }

    /// Parses a curve file: `seconds,rate` per line, `#` comments, blank lines ignored.
    pub fn parse(text: &str) -> Result<Curve, CurveError> {
        let mut points = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || CurveError::BadLine {
                line: index + 1,
                text: raw.to_string(),
            };
            let (time, rate) = line.split_once(',').ok_or_else(bad)?;
            let time: f64 = time.trim().parse().map_err(|_| bad())?;
            let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
            points.push((time, rate));
        }
        Curve::from_points(points)
    }

    /// Rescales time so the curve lasts `duration_s` (from its first point at 0).
    pub fn with_duration(mut self, duration_s: f64) -> Curve {
        let start = self.points[0].0;
        let length = self.duration_s();
        for point in &mut self.points {
            point.0 = (point.0 - start) / length * duration_s;
        }
        self
    }

    /// Rescales rates so the highest point equals `peak_per_s`.
    pub fn with_peak(mut self, peak_per_s: f64) -> Curve {
        let max = self.points.iter().map(|p| p.1).fold(0.0, f64::max);
        if max > 0.0 {
            for point in &mut self.points {
                point.1 *= peak_per_s / max;
            }
        }
        self
    }

    /// Multiplies every rate by `factor`.
    pub fn scaled(mut self, factor: f64) -> Curve {
        for point in &mut self.points {
            point.1 *= factor;
        }
        self
    }

    /// Adds per-second multiplicative jitter: 1 + N(0, sigma), clamped to [0.5, 1.5].
    pub fn with_jitter(mut self, sigma: f64, seed: u64) -> Curve {
        let seconds = self.duration_s().ceil() as usize + 1;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x4a17_7e55);
        self.jitter = match Normal::new(1.0, sigma.max(0.0)) {
            Ok(normal) => (0..seconds)
                .map(|_| normal.sample(&mut rng).clamp(0.5, 1.5))
                .collect(),
            Err(_) => Vec::new(),
        };
        self
    }

    /// Seconds from the first to the last point.
    pub fn duration_s(&self) -> f64 {
        let first = self.points[0].0;
        let last = self.points[self.points.len() - 1].0;
        last - first
    }

    /// The highest rate of the smooth curve (without jitter).
    pub fn peak_per_s(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    /// The offered rate at `t_s` seconds, jitter included.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        let base = self.smooth_rate_at(t_s);
        let second = t_s.max(0.0) as usize;
        base * self.jitter.get(second).copied().unwrap_or(1.0)
    }

    fn smooth_rate_at(&self, t_s: f64) -> f64 {
        let t = t_s + self.points[0].0;
        let index = self.points.partition_point(|p| p.0 <= t);
        if index == 0 {
            return self.points[0].1;
        }
        if index == self.points.len() {
            return self.points[index - 1].1;
        }
        let (t0, r0) = self.points[index - 1];
        let (t1, r1) = self.points[index];
        r0 + (r1 - r0) * (t - t0) / (t1 - t0)
    }

    /// Expected submissions over the whole curve (numerical integral, jitter included).
    pub fn expected_total(&self) -> f64 {
        let step = 0.001;
        let steps = (self.duration_s() / step) as usize;
        (0..steps)
            .map(|i| self.rate_at((i as f64 + 0.5) * step) * step)
            .sum()
    }

    /// The arrival instants: a Poisson process with this curve's rate, seeded.
    pub fn arrivals(&self, seed: u64) -> Arrivals<'_> {
        Arrivals {
            curve: self,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xa771_7a15),
            t_s: 0.0,
            end_s: self.duration_s(),
        }
    }

    /// The points, for the report and chart.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }
}

/// Arrival times in nanoseconds from the start, increasing, ending with the curve.
#[derive(Debug)]
pub struct Arrivals<'a> {
    curve: &'a Curve,
    rng: Xoshiro256PlusPlus,
    t_s: f64,
    end_s: f64,
}

impl Iterator for Arrivals<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        // Exponential gaps at the current rate: the rate changes slowly compared to the
        // gaps (microseconds), so this tracks the inhomogeneous process closely.
        let rate = self.curve.rate_at(self.t_s).max(RATE_MIN_PER_S);
        let gap: f64 = Exp1.sample(&mut self.rng);
        self.t_s += gap / rate;
        if self.t_s >= self.end_s {
            return None;
        }
        Some((self.t_s * 1e9) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_in(arrivals: &[u64], from_s: f64, to_s: f64) -> usize {
        arrivals
            .iter()
            .filter(|&&t| t as f64 >= from_s * 1e9 && (t as f64) < to_s * 1e9)
            .count()
    }

    #[test]
    fn default_curve_has_baseline_vertical_ramp_plateau_and_decay() {
        let curve = Curve::singles_day(50.0, 120_000.0);
        let baseline = curve.rate_at(5.0);
        assert!(
            baseline < 0.1 * 120_000.0,
            "quiet before midnight: {baseline}"
        );
        // The ramp from 10 s (00:00) to 10.5 s: from baseline to the peak.
        assert!(curve.rate_at(10.0) < 0.1 * 120_000.0);
        assert!(curve.rate_at(10.5) > 0.99 * 120_000.0);
        // A short plateau near the peak.
        for t in [11.0, 12.0, 14.0, 15.0] {
            assert!(curve.rate_at(t) > 0.95 * 120_000.0, "plateau at {t}");
        }
        // Then a monotone decay that stays well above the baseline.
        let mut previous = curve.rate_at(15.5);
        for t in (16..50).map(f64::from) {
            let rate = curve.rate_at(t);
            assert!(rate <= previous + 1e-6, "decays at {t}");
            previous = rate;
        }
        assert!(previous > 2.0 * baseline);
        assert_eq!(curve.peak_per_s(), 120_000.0);
    }

    #[test]
    fn arrivals_follow_the_curve_and_are_seeded() {
        let curve = Curve::singles_day(20.0, 20_000.0).with_jitter(0.05, 7);
        let arrivals: Vec<u64> = curve.arrivals(1).collect();
        let again: Vec<u64> = curve.arrivals(1).collect();
        assert_eq!(arrivals, again, "same seed, same arrivals");
        assert_ne!(arrivals, curve.arrivals(2).collect::<Vec<_>>());
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
        let expected = curve.expected_total();
        let actual = arrivals.len() as f64;
        assert!(
            (actual - expected).abs() < 0.02 * expected,
            "{actual} vs {expected}"
        );
        // Rate in the plateau second vs the baseline second, within Poisson noise.
        let plateau = count_in(&arrivals, 5.0, 6.0) as f64;
        let expected_plateau = curve.rate_at(5.5);
        assert!((plateau - expected_plateau).abs() < 0.1 * expected_plateau);
        let baseline = count_in(&arrivals, 1.0, 2.0) as f64;
        assert!(baseline < 0.15 * plateau);
    }

    #[test]
    fn jitter_is_second_scale_and_bounded() {
        let curve = Curve::constant(30.0, 1000.0).with_jitter(0.05, 3);
        let rates: Vec<f64> = (0..30).map(|s| curve.rate_at(f64::from(s) + 0.5)).collect();
        assert!(rates.iter().all(|r| (500.0..=1500.0).contains(r)));
        assert!(
            rates.windows(2).any(|w| w[0] != w[1]),
            "jitter varies by second"
        );
        assert_eq!(
            curve.rate_at(3.1),
            curve.rate_at(3.9),
            "constant within a second"
        );
    }

    #[test]
    fn curve_files_parse_and_rescale() {
        let curve =
            Curve::parse("# day\n0,100\n60, 1000 # midnight\n\n120,400\n").expect("valid curve");
        let curve = curve.with_duration(12.0).with_peak(5000.0);
        assert_eq!(curve.duration_s(), 12.0);
        assert_eq!(curve.rate_at(6.0), 5000.0);
        assert_eq!(curve.rate_at(0.0), 500.0);
        assert!(matches!(
            Curve::parse("0,1\n"),
            Err(CurveError::TooFewPoints)
        ));
        assert!(matches!(
            Curve::parse("0,1\n0,2\n"),
            Err(CurveError::NotIncreasing { .. })
        ));
        assert!(matches!(
            Curve::parse("0,1\nx\n"),
            Err(CurveError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            Curve::parse("0,1\n1,-3\n"),
            Err(CurveError::BadRate { .. })
        ));
    }
}
