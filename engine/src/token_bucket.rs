//! The one token bucket, sans-IO: a [`Rate`]'s `burst` at once, refilled at `per_second`, with
//! the clock passed in as milliseconds.
//!
//! A bucket stores only its fill and the time it was last refilled; the rate is passed to every
//! call instead, because sessions keep one bucket per rate-limited message type on every idle
//! socket and the rate is the same for all of them (it lives in the frozen protocol).

use crate::protocol::Rate;

/// One caller's (or one connection's) allowance. Lives wherever its owner does: in a session on
/// the connection's shard, or in the HTTP limiter on the shard that owns the caller's key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A bucket holding its whole burst, as a new caller is entitled to.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        TokenBucket {
            tokens: f64::from(rate.burst),
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms`; `Err(ms)` is how long until one is available.
    ///
    /// A refusal takes nothing, so a caller who keeps knocking is not pushed further back.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate.per_second * 1000.0).ceil() as u64)
        }
    }

    /// Whether the bucket would be full at `now_ms`: such a bucket is the same as no bucket,
    /// so it can be forgotten.
    pub fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        self.tokens + self.refill_since(rate, now_ms) >= f64::from(rate.burst)
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        self.tokens = (self.tokens + self.refill_since(rate, now_ms)).min(f64::from(rate.burst));
        // A clock stepped back (wall time from NTP) must not move `last_ms` back too, or the
        // same interval would be refilled twice once the clock catches up.
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn refill_since(&self, rate: Rate, now_ms: u64) -> f64 {
        now_ms.saturating_sub(self.last_ms) as f64 / 1000.0 * rate.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_PER_SECOND_BURST_3: Rate = Rate {
        per_second: 2.0,
        burst: 3,
    };

    #[test]
    fn burst_then_refill() {
        let rate = TWO_PER_SECOND_BURST_3;
        let mut b = TokenBucket::full(rate, 1_000);
        for _ in 0..3 {
            assert_eq!(b.take(rate, 1_000), Ok(()));
        }
        assert_eq!(b.take(rate, 1_000), Err(500));
        assert_eq!(b.take(rate, 1_250), Err(250));
        assert_eq!(b.take(rate, 1_500), Ok(()));
        assert_eq!(b.take(rate, 1_500), Err(500));
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let rate = TWO_PER_SECOND_BURST_3;
        let mut b = TokenBucket::full(rate, 0);
        assert_eq!(b.take(rate, 0), Ok(()));
        assert!(!b.is_full(rate, 0));
        assert!(b.is_full(rate, 500));
        // An hour idle still buys only the burst.
        for _ in 0..3 {
            assert_eq!(b.take(rate, 3_600_000), Ok(()));
        }
        assert!(b.take(rate, 3_600_000).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_the_next_whole_millisecond() {
        let rate = Rate {
            per_second: 3.0,
            burst: 1,
        };
        let mut b = TokenBucket::full(rate, 0);
        assert_eq!(b.take(rate, 0), Ok(()));
        // A third of a second is 333.3 ms: waiting 333 would still be refused.
        assert_eq!(b.take(rate, 0), Err(334));
        assert_eq!(b.take(rate, 334), Ok(()));
    }

    #[test]
    fn slow_rates_wait_long() {
        let rate = Rate {
            per_second: 0.5,
            burst: 1,
        };
        let mut b = TokenBucket::full(rate, 10_000);
        assert_eq!(b.take(rate, 10_000), Ok(()));
        assert_eq!(b.take(rate, 10_500), Err(1_500));
        assert_eq!(b.take(rate, 12_000), Ok(()));
        assert!(b.take(rate, 12_001).is_err());
    }

    #[test]
    fn time_going_backwards_refills_nothing_and_nothing_twice() {
        let rate = TWO_PER_SECOND_BURST_3;
        let mut b = TokenBucket::full(rate, 10_000);
        for _ in 0..3 {
            assert_eq!(b.take(rate, 10_000), Ok(()));
        }
        // The clock steps back 5 s: no refill, and no panic.
        assert_eq!(b.take(rate, 5_000), Err(500));
        // Back at the original time, the 5 s step must not count as elapsed.
        assert_eq!(b.take(rate, 10_000), Err(500));
        assert_eq!(b.take(rate, 10_500), Ok(()));
        assert!(b.take(rate, 10_500).is_err());
    }

    #[test]
    fn no_larger_than_the_buckets_it_replaced() {
        // Sessions hold one per rate-limited message type on every idle socket; the two
        // buckets this replaced were (f64, u64).
        assert!(std::mem::size_of::<TokenBucket>() <= std::mem::size_of::<(f64, u64)>());
    }
}
