//! The `mixed` workload's `/work` costs: their distribution ([`WorkMix`], `--work`), and the
//! seeded generator that draws them (the same seed gives the same sequence of requests).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The default `mixed` distribution: most requests are cheap, a few are expensive (mean
/// 77 us, 1% cost 5 ms).
pub const DEFAULT_WORK: &str = "90:10us,9:200us,1:5ms";
/// The most one `/work` request burns (the server's cap).
const MAX_COST: Duration = crate::http::MAX_WORK;
/// Weights are kept in hundredths of a percent.
const WHOLE: u32 = 10_000;

/// The `/work` costs of the `mixed` workload: `PERCENT:COST` pairs (`90:10us,9:200us,1:5ms`)
/// whose percentages add up to 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMix {
    /// (weight in hundredths of a percent, cost in microseconds), in the order given.
    parts: Vec<(u32, u64)>,
}

impl Default for WorkMix {
    fn default() -> Self {
        DEFAULT_WORK.parse().unwrap_or(WorkMix {
            parts: vec![(WHOLE, 10)],
        })
    }
}

impl WorkMix {
    /// A cost drawn with `rng`.
    pub fn draw(&self, rng: &mut XorShift) -> u64 {
        let mut pick = (rng.next_u64() % u64::from(WHOLE)) as u32;
        for &(weight, us) in &self.parts {
            if pick < weight {
                return us;
            }
            pick -= weight;
        }
        self.parts.last().map_or(0, |p| p.1)
    }

    /// The mean cost in microseconds.
    pub fn mean_us(&self) -> f64 {
        let total: f64 = self
            .parts
            .iter()
            .map(|&(w, us)| f64::from(w) * us as f64)
            .sum();
        total / f64::from(WHOLE)
    }
}

impl FromStr for WorkMix {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        for item in spec.split(',').map(str::trim) {
            let bad = || format!("'{item}' is not PERCENT:COST (for example 90:10us)");
            let (pct, cost) = item.split_once(':').ok_or_else(bad)?;
            let pct: f64 = pct.trim().parse().map_err(|_| bad())?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(format!(
                    "'{item}': the percentage must be more than 0, at most 100"
                ));
            }
            let cost = humantime::parse_duration(cost.trim())
                .map_err(|e| format!("'{item}': bad cost ({e}; for example 10us, 5ms)"))?;
            if cost > MAX_COST {
                return Err(format!(
                    "'{item}': a cost is at most {MAX_COST:?} (/work's limit)"
                ));
            }
            let micros = u64::try_from(cost.as_micros()).unwrap_or(u64::MAX);
            parts.push(((pct * 100.0).round() as u32, micros));
        }
        let sum: u32 = parts.iter().map(|p| p.0).sum();
        if sum != WHOLE {
            return Err(format!(
                "the percentages add up to {}, not 100",
                f64::from(sum) / 100.0
            ));
        }
        Ok(WorkMix { parts })
    }
}

impl fmt::Display for WorkMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(w, us)) in self.parts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let cost = match us {
                us if us >= 1000 && us % 1000 == 0 => format!("{}ms", us / 1000),
                us => format!("{us}us"),
            };
            write!(f, "{sep}{}:{cost}", f64::from(w) / 100.0)?;
        }
        Ok(())
    }
}

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_costs_follow_the_weights_and_the_seed() {
        let mix = WorkMix::default();
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        let draws: Vec<u64> = (0..100_000).map(|_| mix.draw(&mut a)).collect();
        assert!(draws.iter().all(|&d| d == mix.draw(&mut b)));
        let expensive = draws.iter().filter(|&&d| d == 5000).count();
        assert!((700..1300).contains(&expensive), "{expensive}");
        let cheap = draws.iter().filter(|&&d| d == 10).count();
        assert!((88_000..92_000).contains(&cheap), "{cheap}");
    }

    #[test]
    fn work_specs_parse_print_and_fail_clearly() {
        let mix: WorkMix = "90:10us, 9:200us,1:5ms".parse().unwrap();
        assert_eq!(mix, WorkMix::default());
        assert_eq!(mix.to_string(), DEFAULT_WORK);
        assert!((mix.mean_us() - 77.0).abs() < 0.01, "{}", mix.mean_us());
        let half: WorkMix = "50:1ms,50:0us".parse().unwrap();
        assert_eq!(half.to_string(), "50:1ms,50:0us");
        let err = |s: &str| s.parse::<WorkMix>().unwrap_err();
        assert_eq!(
            err("90:10us,9:200us"),
            "the percentages add up to 99, not 100"
        );
        assert!(err("90").contains("is not PERCENT:COST"), "{}", err("90"));
        assert!(err("x:10us,100:1ms").contains("is not PERCENT:COST"));
        assert!(err("100:10 parsecs").contains("bad cost"));
        assert!(err("100:2s").contains("at most"));
        assert!(err("0:1ms,100:1ms").contains("more than 0"));
    }
}
