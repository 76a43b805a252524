//! Latency samples and their percentiles. Samples are kept exactly (nanoseconds, sorted once at
//! the end); past `MAX_SAMPLES` every other sample is kept, so memory stays bounded on long runs.

const MAX_SAMPLES: usize = 20_000_000;

#[derive(Default)]
pub struct Latencies {
    samples: Vec<u64>,
    /// Keep one sample in `stride`.
    stride: u64,
    seen: u64,
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies {
            samples: Vec::with_capacity(1 << 20),
            stride: 1,
            seen: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        self.seen += 1;
        if !self.seen.is_multiple_of(self.stride) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            // Halve: keep every other sample, then take half as many from now on.
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            self.stride *= 2;
        }
        self.samples.push(ns);
    }

    /// p50, p99, p99.9 and max, formatted in milliseconds.
    pub fn summary(&mut self) -> String {
        if self.samples.is_empty() {
            return "no samples".into();
        }
        self.samples.sort_unstable();
        let at = |q: f64| {
            let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
            self.samples[i] as f64 / 1e6
        };
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            at(0.5),
            at(0.99),
            at(0.999),
            at(1.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut l = Latencies::new();
        for i in 1..=1000u64 {
            l.record(i * 1_000_000);
        }
        assert_eq!(
            l.summary(),
            "p50 501.000 ms, p99 990.000 ms, p99.9 999.000 ms, max 1000.000 ms"
        );
    }
}
