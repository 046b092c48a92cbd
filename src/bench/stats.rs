//! Statistics the bench keeps per receiver and merges at the end: order and
//! completeness per publisher, and a latency histogram.

use hdrhistogram::Histogram;

use super::payload::Stamp;

/// Latencies in nanoseconds, 1 ns to 1 minute at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Checks one receiver's stream of messages against every publisher's sequence.
#[derive(Debug, Clone, Default)]
pub struct OrderCheck {
    /// Next sequence number expected from each publisher.
    next: Vec<u64>,
    /// Messages received from each publisher.
    pub received: Vec<u64>,
    /// Messages that arrived after a later one from the same publisher (or twice).
    pub reorders: u64,
    /// Messages that were not bench messages, or named an unknown publisher.
    pub malformed: u64,
}

impl OrderCheck {
    pub fn new(publishers: usize) -> Self {
        Self {
            next: vec![0; publishers],
            received: vec![0; publishers],
            reorders: 0,
            malformed: 0,
        }
    }

    /// Records one received message.
    pub fn observe(&mut self, stamp: Option<Stamp>) {
        let Some(stamp) = stamp else {
            self.malformed += 1;
            return;
        };
        let p = stamp.publisher as usize;
        let Some(next) = self.next.get_mut(p) else {
            self.malformed += 1;
            return;
        };
        if stamp.seq < *next {
            self.reorders += 1;
        } else {
            *next = stamp.seq + 1;
        }
        self.received[p] += 1;
    }

    /// Whether this receiver has as many messages as each publisher sent.
    pub fn complete(&self, sent: &[u64]) -> bool {
        self.received.iter().zip(sent).all(|(r, s)| r >= s)
    }

    /// Messages each publisher sent that this receiver never got.
    pub fn lost(&self, sent: &[u64]) -> u64 {
        self.received
            .iter()
            .zip(sent)
            .map(|(r, s)| s.saturating_sub(*r))
            .sum()
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, seq: u64) -> Option<Stamp> {
        Some(Stamp {
            publisher,
            seq,
            sent_ns: 0,
        })
    }

    #[test]
    fn in_order_and_complete() {
        let mut c = OrderCheck::new(2);
        for seq in 0..5 {
            c.observe(stamp(0, seq));
            c.observe(stamp(1, seq));
        }
        assert!(c.complete(&[5, 5]));
        assert_eq!(c.lost(&[5, 5]), 0);
        assert_eq!(c.reorders, 0);
    }

    #[test]
    fn gaps_are_loss_and_late_arrivals_are_reorders() {
        let mut c = OrderCheck::new(1);
        for seq in [0, 1, 3, 4, 2] {
            c.observe(stamp(0, seq));
        }
        assert_eq!(c.reorders, 1);
        assert_eq!(c.lost(&[5]), 0);
        let mut c = OrderCheck::new(1);
        for seq in [0, 1, 3] {
            c.observe(stamp(0, seq));
        }
        assert!(!c.complete(&[4]));
        assert_eq!(c.lost(&[4]), 1);
    }

    #[test]
    fn malformed_and_unknown_publishers_are_counted() {
        let mut c = OrderCheck::new(1);
        c.observe(None);
        c.observe(stamp(7, 0));
        assert_eq!(c.malformed, 2);
        assert_eq!(c.received, [0]);
    }

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.samples, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
    }
}
