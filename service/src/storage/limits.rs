//! How long a transfer may take, and how long to pause before trying again.
//!
//! One attempt at moving `n` bytes may take [`ATTEMPT_FLOOR`] (the round trip
//! and the server's own work) plus the time `n` bytes need at
//! [`MIN_THROUGHPUT`]: a small object that does not answer within seconds is
//! retried soon, and a large pack on a slow uplink still gets its time. A
//! request gives up after [`MAX_ATTEMPTS`] attempts, and never later than
//! [`operation_time`] after it began.

use std::time::Duration;

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// Limit on establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The part of an attempt's limit that does not depend on its size.
pub const ATTEMPT_FLOOR: Duration = Duration::from_secs(30);
/// The slowest transfer still taken for progress, in bytes per second
/// (1 Mbit/s: a home uplink shared by a few parallel uploads).
pub const MIN_THROUGHPUT: u64 = 128 * 1024;
/// First pause before another attempt; it doubles with each attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before another attempt (the SDK's own limit).
pub const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// Limit on one attempt that moves `bytes` bytes.
pub fn attempt_time(bytes: u64) -> Duration {
    ATTEMPT_FLOOR + Duration::from_millis(bytes.saturating_mul(1000) / MIN_THROUGHPUT)
}

/// Limit on a whole request moving `bytes` bytes: every attempt at its
/// limit, and the longest pauses between them.
pub fn operation_time(bytes: u64) -> Duration {
    let pauses: Duration = (1..MAX_ATTEMPTS).map(backoff_limit).sum();
    attempt_time(bytes) * MAX_ATTEMPTS + pauses
}

/// The pause before attempt `attempt + 1`: "full jitter", a uniformly random
/// time up to [`INITIAL_BACKOFF`] doubled `attempt - 1` times, so that
/// clients that failed together do not come back together.
pub fn backoff(attempt: u32) -> Duration {
    backoff_limit(attempt).mul_f64(rand::random::<f64>())
}

/// The longest pause [`backoff`] makes after attempt `attempt`.
fn backoff_limit(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_with_the_size_and_stay_bounded() {
        assert_eq!(attempt_time(0), ATTEMPT_FLOOR);
        assert_eq!(
            attempt_time(16 * 1024 * 1024),
            ATTEMPT_FLOOR + Duration::from_secs(128)
        );
        assert!(attempt_time(u64::MAX) > Duration::from_secs(1_000_000));
        // 5 attempts of 30 s, and pauses of at most 1 + 2 + 4 + 8 s.
        assert_eq!(operation_time(0), Duration::from_secs(165));
        for attempt in 1..40 {
            let pause = backoff(attempt);
            assert!(pause <= backoff_limit(attempt) && pause <= MAX_BACKOFF);
        }
        assert_eq!(backoff_limit(1), INITIAL_BACKOFF);
        assert_eq!(backoff_limit(30), MAX_BACKOFF);
    }
}
