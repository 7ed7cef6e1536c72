//! What the log's benches share.

/// The `p` quantile (0 to 1) of `sorted_ns`, nanoseconds in ascending order, in
/// microseconds; 0 when empty.
pub fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let index = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[index] as f64 / 1_000.0
}
