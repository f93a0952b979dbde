//! rookery-load: a scenario-driven load generator for XMPP servers. It drives any
//! standards-compliant server (Rookery, Prosody, ejabberd, …) with open-loop load, measures
//! latency from the intended time of each action (coordinated-omission-correct), and writes
//! text, JSON (mergeable across workers) and HTML reports. docs/loadtest.md is the manual.
//!
//! Owns the whole tool: scenario files (`scenario`), schedules (`schedule`), the lean
//! per-connection client (`client`, `sasl`, `tls`, `actor`), the scenario kinds (`kinds`),
//! measurement and reports (`metrics`, `tracker`, `report`, `html`, `procstat`),
//! provisioning (`provision`, `http`) and distributed runs (`workers`). It must not depend
//! on the server's crates: it talks to servers only over the wire (rookery-xml is a plain
//! XML framer).
//!
//! Specifications: RFC 6120 (streams, STARTTLS, SASL, binding), RFC 6121 (messages,
//! presence, subscriptions, rosters), RFC 5802 and RFC 7677 (SCRAM), RFC 4616 (PLAIN),
//! XEP-0368 (direct TLS), XEP-0198 (stream management), XEP-0313 (MAM), XEP-0077
//! (in-band registration).

pub mod actor;
pub mod client;
pub mod html;
pub mod http;
pub mod kinds;
pub mod metrics;
pub mod procstat;
pub mod provision;
pub mod report;
pub mod run;
pub mod sasl;
pub mod scenario;
pub mod schedule;
pub mod tls;
pub mod tracker;
pub mod users;
pub mod workers;

pub use report::Report;
pub use run::{RunError, RunOptions, run};
pub use scenario::Scenario;
pub use users::Partition;

/// Exit status: the run completed and every pass criterion held.
pub const EXIT_PASS: u8 = 0;
/// Exit status: the run completed but a pass criterion failed.
pub const EXIT_CRITERIA_FAILED: u8 = 1;
/// Exit status: bad command line or scenario file (clap also uses 2).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the run could not take place or its output could not be written (target
/// unreachable, worker failure, unreadable report, I/O error).
pub const EXIT_RUN_ERROR: u8 = 3;

/// Writes the JSON report.
pub fn write_json(report: &Report, path: &std::path::Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Reads a JSON report written by [`write_json`].
pub fn read_json(path: &std::path::Path) -> std::io::Result<Report> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes the HTML report.
pub fn write_html(report: &Report, path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, html::render(report))
}

/// Raises the soft limit on open files to the hard limit (each connection is a file
/// descriptor). Returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
