//! Open-loop arrival schedules: when each action of a scenario is *meant* to happen.
//!
//! Owns the pure arithmetic of phases (ramp, steady, cool-down) and arrival processes
//! (evenly spaced or Poisson with a seed), and the [`Pacer`] that hands out arrivals that are
//! due. It must not touch clocks, sockets or tasks: callers pass "now" in, so the functions
//! are tested without wall time.
//!
//! A phase runs for `duration` with a rate that moves linearly from `from` to `to` (events
//! per second). Its expected event count up to local time `t` is
//! `Λ(t) = from·t + (to − from)·t² / (2·duration)`. Arrivals are placed where the cumulative
//! count, carried over from phase to phase, crosses its targets:
//! - constant: targets 0, 1, 2, … (so `ceil(Λ_total)` arrivals, the first at time 0);
//! - Poisson: targets are the partial sums of unit-mean exponential gaps, which by the
//!   time-rescaling theorem gives a (non-homogeneous) Poisson process with rate `λ(t)`.
//!
//! Coordinated omission: arrivals are fixed in advance and never wait for responses. A
//! sender that falls behind takes every overdue arrival from [`Pacer::take_due`] with its
//! *intended* time, and latency is charged from that time.

use std::time::Duration;

/// How arrivals are spread within the rate envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Evenly spaced at the instantaneous rate.
    Constant,
    /// Poisson arrivals with the instantaneous rate; the seed makes them reproducible.
    Poisson { seed: u64 },
}

/// One phase of the rate envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePhase {
    pub duration: Duration,
    /// Rate at the start of the phase, events per second.
    pub from: f64,
    /// Rate at the end of the phase, events per second.
    pub to: f64,
}

impl RatePhase {
    pub fn steady(duration: Duration, rate: f64) -> Self {
        RatePhase { duration, from: rate, to: rate }
    }

    pub fn ramp(duration: Duration, from: f64, to: f64) -> Self {
        RatePhase { duration, from, to }
    }

    /// Expected number of events in the whole phase.
    pub fn expected(&self) -> f64 {
        self.duration.as_secs_f64() * (self.from + self.to) / 2.0
    }

    /// Local time (seconds since the phase start) at which `m` events are expected:
    /// the inverse of `Λ`. `m` must lie in `[0, expected()]`.
    fn inverse(&self, m: f64) -> f64 {
        let d = self.duration.as_secs_f64();
        if d <= 0.0 || m <= 0.0 {
            return 0.0;
        }
        let a = self.from;
        let c = (self.to - self.from) / (2.0 * d);
        // t = (-a + sqrt(a² + 4cm)) / 2c, written so that c → 0 is stable.
        let disc = (a * a + 4.0 * c * m).max(0.0);
        let denom = a + disc.sqrt();
        if denom <= 0.0 {
            return d;
        }
        (2.0 * m / denom).clamp(0.0, d)
    }
}

/// A complete schedule: phases played back to back with one arrival process.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub phases: Vec<RatePhase>,
    pub process: Process,
}

impl Schedule {
    pub fn new(phases: Vec<RatePhase>, process: Process) -> Self {
        Schedule { phases, process }
    }

    /// Total length of all phases.
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Expected number of arrivals (exact for `Constant` up to rounding up).
    pub fn expected(&self) -> f64 {
        self.phases.iter().map(RatePhase::expected).sum()
    }

    /// The arrivals, as offsets from the start of the first phase, in increasing order.
    pub fn arrivals(&self) -> Arrivals {
        let mut rng = SplitMix64::new(match self.process {
            Process::Poisson { seed } => seed,
            Process::Constant => 0,
        });
        let target = match self.process {
            Process::Constant => 0.0,
            Process::Poisson { .. } => rng.exp1(),
        };
        Arrivals { phases: self.phases.clone(), process: self.process, idx: 0, start: 0.0, lam_start: 0.0, target, rng }
    }
}

/// Iterator over the arrival offsets of a [`Schedule`].
#[derive(Debug, Clone)]
pub struct Arrivals {
    phases: Vec<RatePhase>,
    process: Process,
    idx: usize,
    /// Start of phase `idx`, seconds from the schedule start.
    start: f64,
    /// Cumulative expected count at the start of phase `idx`.
    lam_start: f64,
    /// Cumulative count at which the next arrival happens.
    target: f64,
    rng: SplitMix64,
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            let phase = *self.phases.get(self.idx)?;
            let lam_end = self.lam_start + phase.expected();
            if self.target < lam_end {
                let local = phase.inverse(self.target - self.lam_start);
                // A local time equal to the phase length belongs to the next phase.
                if local < phase.duration.as_secs_f64() {
                    let at = self.start + local;
                    self.target += match self.process {
                        Process::Constant => 1.0,
                        Process::Poisson { .. } => self.rng.exp1(),
                    };
                    return Some(Duration::from_secs_f64(at));
                }
            }
            self.idx += 1;
            self.start += phase.duration.as_secs_f64();
            self.lam_start = lam_end;
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough for arrival jitter;
/// chosen so a seed gives the same schedule on every platform and in every worker.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean 1.
    pub fn exp1(&mut self) -> f64 {
        -self.unit().ln()
    }
}

/// Hands out arrivals as they fall due. The caller asks with its own notion of "now"
/// (an offset from the schedule start), so a stalled caller receives every overdue arrival,
/// each still carrying its intended time.
#[derive(Debug, Clone)]
pub struct Pacer<I: Iterator<Item = Duration>> {
    arrivals: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Duration>> Pacer<I> {
    pub fn new(arrivals: I) -> Self {
        Pacer { arrivals: arrivals.peekable() }
    }

    /// When the next arrival is due; `None` when the schedule is exhausted.
    pub fn next_due(&mut self) -> Option<Duration> {
        self.arrivals.peek().copied()
    }

    /// Every arrival due at or before `now`, at most `max` of them, in order.
    pub fn take_due(&mut self, now: Duration, max: usize) -> Vec<Duration> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.arrivals.peek() {
                Some(&t) if t <= now => {
                    out.push(t);
                    self.arrivals.next();
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn close(a: Duration, b: f64) -> bool {
        (a.as_secs_f64() - b).abs() < 1e-6
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let s = Schedule::new(vec![RatePhase::steady(secs(10.0), 100.0)], Process::Constant);
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 1000);
        for (k, t) in a.iter().enumerate() {
            assert!(close(*t, k as f64 * 0.01), "arrival {k} at {t:?}");
        }
        // A fractional expected count rounds up: 2.5 events/s for 1 s → t = 0, 0.4, 0.8.
        let s = Schedule::new(vec![RatePhase::steady(secs(1.0), 2.5)], Process::Constant);
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 3);
        assert!(close(a[1], 0.4) && close(a[2], 0.8));
    }

    #[test]
    fn ramp_places_arrivals_on_the_quadratic() {
        // 0 → 100/s over 10 s: Λ(t) = 5t², 500 arrivals at t_k = sqrt(k/5).
        let s = Schedule::new(vec![RatePhase::ramp(secs(10.0), 0.0, 100.0)], Process::Constant);
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 500);
        for k in [0usize, 1, 5, 80, 245, 499] {
            assert!(close(a[k], (k as f64 / 5.0).sqrt()), "arrival {k} at {:?}", a[k]);
        }
        // Rate 100 → 0 (cool-down): Λ(t) = 100t − 5t², so t_k = 10 − sqrt(100 − k/5).
        let s = Schedule::new(vec![RatePhase::ramp(secs(10.0), 100.0, 0.0)], Process::Constant);
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 500);
        for k in [0usize, 1, 100, 499] {
            let expect = 10.0 - (100.0 - k as f64 / 5.0).sqrt();
            assert!(close(a[k], expect), "arrival {k} at {:?}, expected {expect}", a[k]);
        }
        assert!(a.windows(2).all(|w| w[0] < w[1]), "arrivals are increasing");
    }

    #[test]
    fn phases_play_back_to_back() {
        let s = Schedule::new(
            vec![
                RatePhase::ramp(secs(10.0), 0.0, 100.0),
                RatePhase::steady(secs(10.0), 100.0),
                RatePhase::ramp(secs(10.0), 100.0, 0.0),
            ],
            Process::Constant,
        );
        assert_eq!(s.duration(), secs(30.0));
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 2000);
        // The steady phase starts exactly at 10 s with the 500th arrival, spaced by 10 ms.
        assert!(close(a[500], 10.0) && close(a[501], 10.01) && close(a[1499], 19.99));
        assert!(close(a[1500], 20.0));
        assert!(a.iter().all(|t| *t < secs(30.0)));
        // A zero-rate phase in the middle produces nothing and shifts what follows.
        let s = Schedule::new(
            vec![
                RatePhase::steady(secs(1.0), 10.0),
                RatePhase::steady(secs(5.0), 0.0),
                RatePhase::steady(secs(1.0), 10.0),
            ],
            Process::Constant,
        );
        let a: Vec<_> = s.arrivals().collect();
        assert_eq!(a.len(), 20);
        assert!(close(a[9], 0.9) && close(a[10], 6.0));
    }

    #[test]
    fn poisson_is_reproducible_and_has_the_right_rate() {
        let phases = vec![RatePhase::steady(secs(100.0), 100.0)];
        let a: Vec<_> = Schedule::new(phases.clone(), Process::Poisson { seed: 7 }).arrivals().collect();
        let b: Vec<_> = Schedule::new(phases.clone(), Process::Poisson { seed: 7 }).arrivals().collect();
        let c: Vec<_> = Schedule::new(phases, Process::Poisson { seed: 8 }).arrivals().collect();
        assert_eq!(a, b, "same seed, same schedule");
        assert_ne!(a, c, "another seed, another schedule");
        // 10 000 expected, σ = 100: allow 5σ.
        assert!((a.len() as i64 - 10_000).abs() < 500, "{} arrivals", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.iter().all(|t| *t < secs(100.0)));
        // Exponential gaps: the coefficient of variation of the gaps is close to 1
        // (evenly spaced arrivals would give 0).
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.01).abs() < 0.0005, "mean gap {mean}");
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05, "cv {}", var.sqrt() / mean);
    }

    #[test]
    fn poisson_follows_a_ramp() {
        // 0 → 200/s over 100 s: Λ(50 s) = 2500 of 10 000, so a quarter fall in the first half.
        let s = Schedule::new(vec![RatePhase::ramp(secs(100.0), 0.0, 200.0)], Process::Poisson { seed: 99 });
        let a: Vec<_> = s.arrivals().collect();
        let first_half = a.iter().filter(|t| **t < secs(50.0)).count();
        assert!((a.len() as i64 - 10_000).abs() < 500, "{}", a.len());
        assert!((first_half as i64 - 2_500).abs() < 250, "{first_half} in the first half");
    }

    #[test]
    fn pacer_hands_out_overdue_arrivals_with_their_intended_times() {
        let s = Schedule::new(vec![RatePhase::steady(secs(1.0), 10.0)], Process::Constant);
        let mut p = Pacer::new(s.arrivals());
        assert_eq!(p.take_due(secs(0.0), usize::MAX), vec![secs(0.0)]);
        assert_eq!(p.next_due(), Some(secs(0.1)));
        assert!(p.take_due(secs(0.05), usize::MAX).is_empty());
        // The caller stalls until 0.55 s: five arrivals are overdue and come out at once.
        let late = p.take_due(secs(0.55), usize::MAX);
        assert_eq!(late.len(), 5);
        assert!(close(late[0], 0.1) && close(late[4], 0.5));
        assert_eq!(p.take_due(secs(10.0), 2).len(), 2, "max is honoured");
        assert_eq!(p.take_due(secs(10.0), usize::MAX).len(), 2);
        assert_eq!(p.next_due(), None);
    }
}
