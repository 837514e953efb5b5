//! The `mixed` workload's `/work` costs: their weights, and the seeded generator that draws
//! them (the same seed gives the same sequence of requests).

/// The `/work` costs of the `mixed` workload: (weight out of 1000, microseconds of CPU).
/// Most requests are cheap, a few are expensive: mean 77 us, 1% cost 5 ms.
pub const MIXED_COSTS: [(u32, u64); 3] = [(900, 10), (90, 200), (10, 5000)];

/// A tiny xorshift64* generator: reproducible costs without a dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x2545_F491_4F6C_DD1D
        } else {
            seed
        })
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A `/work` cost drawn from [`MIXED_COSTS`].
    pub fn mixed_cost(&mut self) -> u64 {
        let total: u32 = MIXED_COSTS.iter().map(|c| c.0).sum();
        let mut pick = (self.next_u64() % u64::from(total)) as u32;
        for (weight, us) in MIXED_COSTS {
            if pick < weight {
                return us;
            }
            pick -= weight;
        }
        MIXED_COSTS[0].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_costs_follow_the_weights_and_the_seed() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        let draws: Vec<u64> = (0..100_000).map(|_| a.mixed_cost()).collect();
        assert!(draws.iter().all(|&d| d == b.mixed_cost()));
        let expensive = draws.iter().filter(|&&d| d == 5000).count();
        assert!((700..1300).contains(&expensive), "{expensive}");
        let cheap = draws.iter().filter(|&&d| d == 10).count();
        assert!((88_000..92_000).contains(&cheap), "{cheap}");
    }
}
