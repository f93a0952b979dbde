//! Live measurement: latency recorders over HDR histograms and named counters.
//!
//! Owns the in-memory instruments that connection tasks write to while a run is going on
//! and the JSON form of a histogram ([`Hist`]). It must not decide what counts as lost or
//! passed (that is `report`), and it never reads clocks: callers hand in durations.
//!
//! Histograms hold microseconds from 1 µs to one hour with 3 significant digits; larger
//! values are clamped to one hour rather than dropped, so a pathological stall still shows.
//! Each recorder keeps a run-long histogram and a per-interval one that the sampler takes
//! every second for the time series.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Highest trackable value: one hour in microseconds.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// An empty histogram with the bounds used everywhere in a report (so any two can be added).
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("1 µs..1 h with 3 digits is a valid range")
}

/// Microseconds of `d`, clamped into the histogram's range.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, HIST_MAX_US)
}

struct Pair {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// A latency histogram shared by many tasks.
pub struct LatencyRecorder {
    inner: Mutex<Pair>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        LatencyRecorder { inner: Mutex::new(Pair { total: new_histogram(), interval: new_histogram() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, d: Duration) {
        let us = micros(d);
        let mut p = self.lock();
        p.total.saturating_record(us);
        p.interval.saturating_record(us);
    }

    /// The samples since the previous call, packed (and resets them).
    pub fn take_interval(&self) -> PackedHist {
        let mut p = self.lock();
        let packed = PackedHist::pack(&p.interval);
        p.interval.reset();
        packed
    }

    /// Everything recorded so far.
    pub fn total(&self) -> Histogram<u64> {
        self.lock().total.clone()
    }
}

/// Latency charged from the intended time of an action (coordinated-omission-correct): `at`
/// is when the outcome was observed, `intended` when the schedule wanted the action to
/// start, both as offsets from the same epoch. A sender that ran late is charged its delay.
pub fn charged_latency(intended: Duration, at: Duration) -> Duration {
    at.saturating_sub(intended)
}

/// Named counters, fixed at creation.
pub struct Counters {
    names: &'static [&'static str],
    values: Vec<AtomicU64>,
}

impl Counters {
    pub fn new(names: &'static [&'static str]) -> Self {
        Counters { names, values: names.iter().map(|_| AtomicU64::new(0)).collect() }
    }

    fn slot(&self, name: &str) -> Option<&AtomicU64> {
        self.names.iter().position(|n| *n == name).and_then(|i| self.values.get(i))
    }

    /// Adds to a counter; names not declared are ignored (a programming error caught by
    /// the tests of each scenario kind).
    pub fn add(&self, name: &str, n: u64) {
        if let Some(c) = self.slot(name) {
            c.fetch_add(n, Ordering::Relaxed);
        } else {
            debug_assert!(false, "undeclared counter {name}");
        }
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    pub fn get(&self, name: &str) -> u64 {
        self.slot(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn set(&self, name: &str, v: u64) {
        if let Some(c) = self.slot(name) {
            c.store(v, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.names.iter().zip(&self.values).map(|(n, v)| ((*n).to_owned(), v.load(Ordering::Relaxed))).collect()
    }
}

/// A histogram as it appears in a JSON report: a summary for people (ignored when read
/// back) and the complete histogram, V2-deflate serialized and base64 encoded, so reports
/// from several workers can be merged exactly.
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(new_histogram())
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Summary statistics of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p75_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let q = |x: f64| h.value_at_quantile(x);
        Summary {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: q(0.50),
            p75_us: q(0.75),
            p90_us: q(0.90),
            p95_us: q(0.95),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: h.max(),
        }
    }

    /// A statistic by name (`p99`, `mean`, `max`, …) in milliseconds; `None` when there are
    /// no samples or the name is unknown.
    pub fn stat_ms(&self, stat: &str) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let s = self;
        let us = match stat {
            "min" => s.min_us as f64,
            "mean" => s.mean_us,
            "p50" => s.p50_us as f64,
            "p75" => s.p75_us as f64,
            "p90" => s.p90_us as f64,
            "p95" => s.p95_us as f64,
            "p99" => s.p99_us as f64,
            "p999" => s.p999_us as f64,
            "max" => s.max_us as f64,
            _ => return None,
        };
        Some(us / 1000.0)
    }
}

impl Hist {
    pub fn summary(&self) -> Summary {
        Summary::of(&self.0)
    }

    /// A statistic by name in milliseconds (see [`Summary::stat_ms`]).
    pub fn stat_ms(&self, stat: &str) -> Option<f64> {
        self.summary().stat_ms(stat)
    }

    /// Adds another histogram's samples.
    pub fn add(&mut self, other: &Hist) -> Result<(), String> {
        self.0.add(&other.0).map_err(|e| format!("cannot merge histograms: {e:?}"))
    }

    pub fn encode(&self) -> Result<String, String> {
        let mut buf = Vec::new();
        V2DeflateSerializer::new().serialize(&self.0, &mut buf).map_err(|e| format!("{e:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(buf))
    }

    pub fn decode(s: &str) -> Result<Hist, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("histogram: {e}"))?;
        let h: Histogram<u64> =
            Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))?;
        // Re-home the samples into the standard bounds so later merges never fail.
        let mut out = new_histogram();
        out.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
        Ok(Hist(out))
    }
}

/// A histogram kept encoded, for the per-second time series: in memory, an HDR histogram
/// with the report's bounds takes about 180 KiB, while the compressed encoding of one
/// second's samples is a few hundred bytes. Same JSON form as [`Hist`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PackedHist {
    pub summary: Summary,
    /// Base64 of the V2-deflate encoding; empty for no samples.
    pub encoded: String,
}

impl PackedHist {
    pub fn pack(h: &Histogram<u64>) -> PackedHist {
        if h.is_empty() {
            return PackedHist::default();
        }
        let mut buf = Vec::new();
        let encoded = match V2DeflateSerializer::new().serialize(h, &mut buf) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(buf),
            // Serializing into a Vec cannot fail for I/O; keep the summary regardless.
            Err(_) => String::new(),
        };
        PackedHist { summary: Summary::of(h), encoded }
    }

    pub fn unpack(&self) -> Result<Hist, String> {
        if self.encoded.is_empty() { Ok(Hist::default()) } else { Hist::decode(&self.encoded) }
    }

    pub fn stat_ms(&self, stat: &str) -> Option<f64> {
        self.summary.stat_ms(stat)
    }

    /// Adds another histogram's samples (decodes both, re-encodes the sum).
    pub fn add(&mut self, other: &PackedHist) -> Result<(), String> {
        if other.summary.count == 0 {
            return Ok(());
        }
        let mut sum = self.unpack()?;
        sum.add(&other.unpack()?)?;
        *self = PackedHist::pack(&sum.0);
        Ok(())
    }
}

impl Serialize for PackedHist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistJson { summary: self.summary, encoded: self.encoded.clone() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PackedHist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PackedHist, D::Error> {
        #[derive(Deserialize)]
        struct Encoded {
            #[serde(default)]
            encoded: String,
        }
        let e = Encoded::deserialize(d)?;
        let h = PackedHist { summary: Summary::default(), encoded: e.encoded }
            .unpack()
            .map_err(serde::de::Error::custom)?;
        Ok(PackedHist::pack(&h.0))
    }
}

#[derive(Serialize, Deserialize)]
struct HistJson {
    #[serde(flatten)]
    summary: Summary,
    encoded: String,
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = self.encode().map_err(serde::ser::Error::custom)?;
        HistJson { summary: self.summary(), encoded }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        #[derive(Deserialize)]
        struct Encoded {
            encoded: String,
        }
        let e = Encoded::deserialize(d)?;
        Hist::decode(&e.encoded).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::schedule::{Pacer, Process, RatePhase, Schedule, SplitMix64};

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    /// Merged percentiles equal those of one histogram fed every sample.
    #[test]
    fn merged_histograms_equal_one_fed_everything() {
        let mut rng = SplitMix64::new(3);
        let mut all = Hist::default();
        let mut parts = [Hist::default(), Hist::default(), Hist::default()];
        for i in 0..30_000u64 {
            // A skewed mix: mostly small, a tail up to ~2 s.
            let v = 1 + (rng.exp1() * 2_000.0) as u64 + if i % 97 == 0 { rng.next_u64() % 2_000_000 } else { 0 };
            all.0.record(v).unwrap();
            parts[(rng.next_u64() % 3) as usize].0.record(v).unwrap();
        }
        let mut merged = Hist::default();
        for p in &parts {
            merged.add(p).unwrap();
        }
        assert_eq!(merged.summary(), all.summary());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.0.value_at_quantile(q), all.0.value_at_quantile(q), "quantile {q}");
        }
        // Through JSON as well: what `merge` reads back from worker files.
        let back: Vec<Hist> = serde_json::from_str(&serde_json::to_string(&parts).unwrap()).unwrap();
        let mut merged2 = Hist::default();
        for p in &back {
            merged2.add(p).unwrap();
        }
        assert_eq!(merged2, all);
    }

    #[test]
    fn hist_json_has_a_readable_summary() {
        let mut h = Hist::default();
        for v in [1_000u64, 2_000, 3_000, 50_000] {
            h.0.record(v).unwrap();
        }
        let j: serde_json::Value = serde_json::to_value(&h).unwrap();
        assert_eq!(j["count"], 4);
        assert_eq!(j["max_us"].as_u64().unwrap(), h.0.max());
        assert!(j["encoded"].as_str().unwrap().len() > 10);
        assert_eq!(h.stat_ms("p50").unwrap(), h.0.value_at_quantile(0.5) as f64 / 1000.0);
        assert_eq!(Hist::default().stat_ms("p99"), None, "no samples, no percentile");
        assert!(serde_json::from_value::<Hist>(serde_json::json!({"encoded": "!!"})).is_err());
    }

    #[test]
    fn recorder_interval_and_total() {
        let r = LatencyRecorder::new();
        r.record(ms(5));
        r.record(ms(7));
        let first = r.take_interval();
        assert_eq!(first.summary.count, 2);
        assert_eq!(first.unpack().unwrap().0.len(), 2);
        r.record(ms(9));
        assert_eq!(r.take_interval().summary.count, 1);
        let empty = r.take_interval();
        assert_eq!((empty.summary.count, empty.encoded.as_str()), (0, ""));
        assert_eq!(r.total().len(), 3);
        // Values beyond an hour are clamped, not dropped.
        r.record(Duration::from_secs(7200));
        assert_eq!(r.total().len(), 4);
        assert!(r.total().max() >= HIST_MAX_US - HIST_MAX_US / 1000);
    }

    /// Coordinated omission: a sender that stalls for a second must charge every late
    /// message from its intended send time. Here a 100/s schedule runs for 3 s with a fake
    /// clock; the sender is blocked from 1.0 s to 2.0 s; messages are delivered 1 ms after
    /// they are actually sent.
    #[test]
    fn stalled_sender_is_charged_from_intended_time() {
        let sched = Schedule::new(vec![RatePhase::steady(Duration::from_secs(3), 100.0)], Process::Constant);
        let mut pacer = Pacer::new(sched.arrivals());
        let rec = LatencyRecorder::new();
        let mut naive = new_histogram(); // what a tool measuring from the actual send would see
        let mut now = Duration::ZERO;
        let mut sent = 0;
        while pacer.next_due().is_some() {
            if now >= ms(1000) && now < ms(2000) {
                now = ms(2000); // stalled: nothing is sent during the second second
            }
            for intended in pacer.take_due(now, usize::MAX) {
                let delivered = now + ms(1);
                rec.record(charged_latency(intended, delivered));
                naive.record(micros(delivered - now)).unwrap();
                sent += 1;
            }
            now += ms(1);
        }
        let h = Hist(rec.total());
        assert_eq!(sent, 300, "open loop: nothing is skipped");
        assert_eq!(h.0.len(), 300);
        // 100 messages were meant for 1.00..1.99 s and sent at 2.0 s: charged 1 ms + 10..1000 ms.
        let late = h.0.count_between(10_000, 1_100_000);
        assert_eq!(late, 100, "every stalled message is charged its delay");
        assert!(h.stat_ms("max").unwrap() >= 1000.0, "max {:?}", h.stat_ms("max"));
        assert!(h.stat_ms("p99").unwrap() > 900.0);
        assert!(h.stat_ms("p50").unwrap() < 2.0, "most messages were on time");
        assert!(naive.max() < 2_000, "measured from the actual send the stall is invisible");
    }

    #[test]
    fn packed_histograms_are_small_and_merge_exactly() {
        let (mut a, mut b, mut all) = (new_histogram(), new_histogram(), new_histogram());
        for v in 1..=500u64 {
            a.record(v * 37).unwrap();
            b.record(v * 1_013).unwrap();
            all.record(v * 37).unwrap();
            all.record(v * 1_013).unwrap();
        }
        let mut pa = PackedHist::pack(&a);
        assert!(pa.encoded.len() < 4_000, "{} bytes", pa.encoded.len());
        pa.add(&PackedHist::pack(&b)).unwrap();
        pa.add(&PackedHist::default()).unwrap();
        assert_eq!(pa.unpack().unwrap().0, all);
        assert_eq!(pa.summary, Summary::of(&all));
        let back: PackedHist = serde_json::from_str(&serde_json::to_string(&pa).unwrap()).unwrap();
        assert_eq!(back, pa);
        let mut empty = PackedHist::default();
        empty.add(&pa).unwrap();
        assert_eq!(empty, pa);
    }

    #[test]
    fn counters() {
        let c = Counters::new(&["sent", "delivered"]);
        c.inc("sent");
        c.add("sent", 2);
        c.set("delivered", 5);
        assert_eq!(c.get("sent"), 3);
        assert_eq!(c.snapshot().get("delivered"), Some(&5));
        assert_eq!(c.get("nope"), 0);
    }
}
