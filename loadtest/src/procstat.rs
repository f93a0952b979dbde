//! Resource sampling of the server process (`--server-pid`, Linux only): CPU time from
//! `/proc/PID/stat` (utime + stime, fields 14 and 15, in clock ticks; proc(5)) and resident
//! memory from `VmRSS` in `/proc/PID/status`.
//!
//! Owns reading and parsing those files and the clock-tick rate. It must not touch anything
//! but procfs and `getconf`. The tick rate comes from `getconf CLK_TCK` (the value of
//! `sysconf(_SC_CLK_TCK)`) once at start; the crate forbids `unsafe`, which rules out
//! calling `sysconf` directly.

use std::path::PathBuf;

/// utime + stime in clock ticks from the contents of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes from the contents of `/proc/PID/status`.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let mult = match it.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(n * mult)
}

/// Clock ticks per second, from `getconf CLK_TCK`; 100 (the Linux value on every common
/// architecture) with a warning when `getconf` is unavailable.
pub fn clk_tck() -> u64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output();
    match out.ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(t) if t > 0 => t,
        _ => {
            tracing::warn!(event = "clk_tck_unknown", assumed = 100, "getconf CLK_TCK failed; assuming 100 ticks/s");
            100
        }
    }
}

/// Reads one process's CPU and memory.
pub struct ProcSampler {
    pub pid: u32,
    pub clk_tck: u64,
    stat: PathBuf,
    status: PathBuf,
    start_ticks: u64,
}

/// One reading: CPU seconds since the sampler was created, and RSS bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

impl ProcSampler {
    /// Fails when the process does not exist or procfs is not readable.
    pub fn new(pid: u32) -> std::io::Result<ProcSampler> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let stat = base.join("stat");
        let status = base.join("status");
        let start_ticks = parse_stat_ticks(&std::fs::read_to_string(&stat)?)
            .ok_or_else(|| std::io::Error::other(format!("cannot parse {}", stat.display())))?;
        Ok(ProcSampler { pid, clk_tck: clk_tck(), stat, status, start_ticks })
    }

    /// `None` once the process is gone.
    pub fn read(&self) -> Option<Reading> {
        let ticks = parse_stat_ticks(&std::fs::read_to_string(&self.stat).ok()?)?;
        let rss_bytes = parse_status_rss(&std::fs::read_to_string(&self.status).ok()?)?;
        Some(Reading { cpu_s: ticks.saturating_sub(self.start_ticks) as f64 / self.clk_tck as f64, rss_bytes })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat_ticks(stat), Some(731 + 269));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\trookery\nVmPeak:\t  900 kB\nVmRSS:\t   51200 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(status), Some(51_200 * 1024));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = ProcSampler::new(std::process::id()).unwrap();
        assert!(s.clk_tck >= 1);
        // Burn CPU until the tick counter moves (it has a granularity of 1/CLK_TCK s).
        let mut x = 0u64;
        let t = std::time::Instant::now();
        let r = loop {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let r = s.read().unwrap();
            if r.cpu_s > 0.0 || t.elapsed() > std::time::Duration::from_secs(20) {
                break r;
            }
        };
        assert!(x != 1);
        assert!(r.rss_bytes > 1024 * 1024, "rss {}", r.rss_bytes);
        assert!(r.cpu_s > 0.0, "cpu {}", r.cpu_s);
        assert!(ProcSampler::new(u32::MAX).is_err());
    }
}
